#!/usr/bin/env bash
# Create .venv with pid-trt and its test dependencies. torch 2.13.0 is installed first and pinned so that no
# other package can pull a multi-GB CUDA build (on a GPU box an existing CUDA torch in the venv is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import pid_trt, torch, onnxruntime; print('pid-trt', pid_trt.__version__, '| torch', torch.__version__)"
