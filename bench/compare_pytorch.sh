#!/usr/bin/env bash
# Builds octconv (release) and runs bench/compare_pytorch.py with a Python that has torch.
# PYTHON=/path/to/python bench/compare_pytorch.sh [--rounds 3] [--only layer|wrn]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "error: $PYTHON has no torch; install it with: $PYTHON -m pip install torch numpy" >&2
  echo "       (or point PYTHON at a virtual environment that has it)" >&2
  exit 1
fi
cargo build --release --bin octconv --example layer_bench
exec "$PYTHON" bench/compare_pytorch.py "$@"
