#!/usr/bin/env bash
# Fresh machine → the whole test suite: Python (pytest) and, where cmake exists, the C++ runtime (ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -ra "$@"
