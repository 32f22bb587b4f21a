#!/usr/bin/env bash
# GPU check on an H100/H200: (1) full-size PiD net, torch eager vs the CUDA-graph runtime at 1024², 2048² (and
# 4096x3072 within the time budget): agreement, ms/decode, peak memory, TFLOP/s; (2) where TensorRT imports: tiny bf16,
# fp8 and teacher engines built here, `pid-trt parity`, the C++ runtime (pidtrt-decode built with TensorRT) against
# the Python one, teacher decodes under CUDA graphs. Parts that cannot run are reported as skipped, with the reason.
# Results: $OUT/gpu_check.json when OUT is set. Hard limit 12 minutes. `--smoke` checks part 1's logic on the CPU.
# Usage: bash scripts/gpu_check.sh [--smoke] [--size WxH ...] [--budget-s S] [--trt-budget-s S]  (PYTHON=... picks
# the interpreter; default: .venv/bin/python when present, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
exec timeout 720 "$PYTHON" scripts/gpu_check.py "$@"
