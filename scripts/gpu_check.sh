#!/usr/bin/env bash
# GPU check on an H100/H200 with PyTorch CUDA (no TensorRT needed): full-size PiD net, torch eager vs the CUDA-graph
# runtime at 1024², 2048² (and 4096x3072 within the time budget); agreement, ms/decode, peak memory, TFLOP/s.
# Results: $OUT/gpu_check.json when OUT is set. Hard limit 8 minutes. `--smoke` checks the logic on CPU.
# Usage: bash scripts/gpu_check.sh [--smoke] [--size WxH ...] [--budget-s S]
# Interpreter: $PYTHON when set, else the project's .venv when there is one, else the python3 on PATH (a GPU box may
# have its own CUDA torch and no venv).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec timeout 480 "$PYTHON" scripts/gpu_check.py "$@"
