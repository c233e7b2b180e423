#!/usr/bin/env bash
# Create (or reuse) .venv with a CPU build of PyTorch and this package installed editable with its extras.
# Usage: bash scripts/setup_env.sh            (VENV=path to use another location, EXTRAS=... to choose extras)
# Versions: exactly those of constraints.txt, what CI last passed with; UPGRADE=1 installs the newest versions
# setup.py's ranges allow instead (scripts/refresh_constraints.sh tests them and rewrites constraints.txt).
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
# Every extra by default, so that no test skips: EXTRAS=test,deepspeed,logging for a lighter environment (the
# tests of serve, gguf, eval and llamacpp then skip). llama-cpp-python compiles llama.cpp the first time (about
# 10 minutes on 2 cores); pip keeps the built wheel, so later environments install it in seconds.
if [ "${UPGRADE:-0}" = 1 ]; then
    PINS=(--upgrade --upgrade-strategy eager)
else
    PINS=(-c constraints.txt)
fi
$PIP install "${PINS[@]}" -e ".[${EXTRAS:-test,deepspeed,logging,serve,gguf,eval,peft,llamacpp}]"
