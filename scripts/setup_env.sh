#!/usr/bin/env bash
# Create (or reuse) .venv with a CPU build of PyTorch and this package installed editable with its extras.
# Usage: bash scripts/setup_env.sh            (VENV=path to use another location)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# Torch first (TORCH_SPEC, default the CPU build torch==2.13.0): a plain `torch` requirement with nothing
# installed would pull a multi-GB CUDA build. A torch already in the venv (e.g. a CUDA build you chose) is kept.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    $PIP install "${TORCH_SPEC:-torch==2.13.0}"
fi
$PIP install -e ".[test,deepspeed,logging]"
