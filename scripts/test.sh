#!/usr/bin/env bash
# Fresh machine → the whole test suite: the C++ runtime (cmake + ctest, where cmake and nvcc exist) and Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if command -v cmake >/dev/null && command -v nvcc >/dev/null; then
  if ! dpkg -s nlohmann-json3-dev >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq nlohmann-json3-dev) >/dev/null || echo "warning: could not install nlohmann-json3-dev"
  fi
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j2 >/dev/null
  ctest --test-dir build --output-on-failure
else
  echo "cmake or nvcc not found: skipping the C++ runtime build and its ctest suite"
fi
# two workers, one per core; --dist loadfile keeps each module (and its shared ONNX exports) on one worker
.venv/bin/python -m pytest -q -ra -n 2 --dist loadfile "$@"
