#!/usr/bin/env bash
# The GPU checks, as run on a lent GPU machine (a CUDA build of torch, transformers, sentencepiece, pytest there):
# the GPU tests (tests/test_gpu.py: bf16/fp32 logits and greedy tokens against transformers, bf16/fp16 pretrain.py,
# the fp16 overflow skip, fused CUDA AdamW), the bf16 training benchmark and the bf16 evaluation (perplexity)
# benchmark against transformers.
# Logs go to $OUT (default: gpu_out/). Usage: bash bench/gpu_checks.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider tests/test_gpu.py "$@" 2>&1 | tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}
$PY -m bench.train --device cuda --dtype bf16 --preset gpu_1b --batch_size 8 --seq_length 2048 --rounds 3 \
    2>&1 | tee "$OUT/bench_train_bf16.log"
$PY -m bench.evaluate --device cuda --dtype bf16 --sizes 1b --tokens 32768 --seq_length 2048 --batch_size 4 \
    --repeats 3 2>&1 | tee "$OUT/bench_evaluate_bf16.log"
exit "$tests"
