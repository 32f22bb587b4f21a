#!/usr/bin/env bash
# Fresh machine → pid-trt in .venv (runtime dependencies and ONNX Runtime), then `pid-trt demo`: a decode recorded from NVIDIA's
# implementation reproduced through pid-trt's ONNX export, written to pid-trt-demo/. No downloads besides packages.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "setting up .venv with pid-trt (the first time takes a few minutes: torch, ONNX, ONNX Runtime) ..."
bash scripts/setup.sh onnxruntime
status=0
.venv/bin/pid-trt demo --out pid-trt-demo "$@" || status=$?
echo "pid-trt is installed in .venv: 'source .venv/bin/activate' puts pid-trt on your PATH (or run .venv/bin/pid-trt)"
exit "$status"
