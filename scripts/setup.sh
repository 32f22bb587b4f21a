#!/usr/bin/env bash
# Create .venv with pid-trt installed from this checkout (editable) plus the extras named in $1 ("test" for
# scripts/test.sh, "onnxruntime" for the demo). torch 2.13.0 is installed first, so that no other package pulls a multi-GB
# CUDA build (on a GPU box an existing CUDA torch in the venv is kept). pip stays quiet unless it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

quiet_pip() {
  local log
  log="$(mktemp)"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "error: pip install $* failed (its output is above)" >&2
    return 1
  fi
  rm -f "$log"
}

[ -x .venv/bin/python ] || python3 -m venv .venv
quiet_pip -U pip
.venv/bin/python -c "import torch" 2>/dev/null || quiet_pip torch==2.13.0
quiet_pip -e ".${extras:+[$extras]}"
.venv/bin/python -c "
import importlib.util, pid_trt, torch
ort = importlib.import_module('onnxruntime').__version__ if importlib.util.find_spec('onnxruntime') else 'not installed'
print(f'.venv: pid-trt {pid_trt.__version__}, torch {torch.__version__}, onnxruntime {ort}')"
