#!/usr/bin/env bash
# Builds octconv (release) and runs bench/onnxruntime_check.py with a Python that has onnxruntime.
# PYTHON=/path/to/python bench/onnxruntime_check.sh [--rounds 3] [--models wrn16,seed,unet]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import onnxruntime, numpy' 2>/dev/null; then
  echo "error: $PYTHON has no onnxruntime; install it with: $PYTHON -m pip install onnxruntime numpy" >&2
  echo "       (or point PYTHON at a virtual environment that has it)" >&2
  exit 1
fi
cargo build --release --bin octconv
exec "$PYTHON" bench/onnxruntime_check.py "$@"
