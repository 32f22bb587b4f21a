#!/usr/bin/env bash
# Fresh machine → the main job on the built-in default (no downloads): writes pid-trt-demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pid-trt demo --out pid-trt-demo "$@"
