#!/usr/bin/env bash
# Set up .venv if needed (scripts/setup_env.sh: the versions of constraints.txt), print the environment report
# (python -m tencentpretrain.env), then run the test suite.
# Extra arguments go to pytest. UPGRADE=1 VENV=.venv-upgrade bash scripts/run_tests.sh tries the newest versions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
"${VENV:-.venv}/bin/python" -m tencentpretrain.env  # versions, CPU features, native kernel: what a failure is read with
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
