#!/usr/bin/env bash
# Try the newest versions setup.py's ranges allow and, if the whole test suite passes with them, write them to
# constraints.txt (what scripts/setup_env.sh installs by default). A fresh venv (.venv-upgrade) keeps .venv as it is.
# Usage: bash scripts/refresh_constraints.sh [pytest arguments]; then commit constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV=${VENV:-.venv-upgrade}
rm -rf "$VENV"
UPGRADE=1 bash scripts/run_tests.sh "$@"
{
    echo "# The exact versions CI last passed with (scripts/setup_env.sh installs with -c constraints.txt)."
    echo "# Refresh: bash scripts/refresh_constraints.sh (a fresh venv with the newest versions, the tests, then this file)."
    echo "# torch is not listed: scripts/setup_env.sh installs it first from TORCH_SPEC (default torch==2.13.0, the CPU build)."
    "$VENV/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^-e \|^#\|^torch=='
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt rewritten from $VENV: review and commit it"
