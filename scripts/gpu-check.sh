#!/usr/bin/env bash
# Run on a GPU machine with a binary from scripts/cuda-build.sh. Needs only that binary and the CUDA 13
# libraries (cudart, cublas, cublasLt, curand, nvrtc: PyTorch's nvidia/cu13 wheels have them).
#
#   OCTCONV=./octconv scripts/gpu-check.sh [OUT_DIR]
#
# Prints (and, with OUT_DIR, saves) the device, a CPU-vs-CUDA parity check of each builtin (max abs
# error of the outputs on the same seeded weights and input), and `octconv bench --device cuda` for
# WRN-28-10 at α = 0, .25, .5, .75 in the seed's table format (inference, then training steps).
set -uo pipefail
BIN="${OCTCONV:-./octconv}"
OUT="${1:-}"
BATCH="${BATCH:-128}"
SAMPLES="${SAMPLES:-1280}"
REPEATS="${REPEATS:-10}"
[ -x "$BIN" ] || { echo "error: no octconv binary at $BIN (set OCTCONV=…)" >&2; exit 1; }

# Find the CUDA 13 libraries: $CUDA_LIBS, else any Python's nvidia/cu13/lib, else the system's.
if [ -z "${CUDA_LIBS:-}" ]; then
  for py in python3 /usr/bin/python3 "$(command -v python || true)"; do
    [ -n "$py" ] || continue
    CUDA_LIBS="$("$py" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)" && [ -d "$CUDA_LIBS" ] && break
    CUDA_LIBS=""
  done
fi
[ -n "${CUDA_LIBS:-}" ] && export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

log() { if [ -n "$OUT" ]; then tee -a "$OUT/gpu-check.md"; else cat; fi; }
[ -n "$OUT" ] && mkdir -p "$OUT" && : > "$OUT/gpu-check.md"

{
  echo "# octconv GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1
  echo "CUDA libraries: ${CUDA_LIBS:-system}"
  ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc' 2>&1
  echo '```'
  echo
  echo "## CPU vs CUDA parity (eval mode, batch 2, same seeded weights and input)"
  echo
  echo '```'
} | log

status=0
for spec in 'wrn(n = 1, k = 2, alpha = 0.25)' 'wrn(n = 4, k = 10, alpha = 0.25)' 'wrn(n = 4, k = 10, alpha = 0.5)' \
            'resnet(depth = 50, alpha = 0.25)' 'mobilenet_v1(alpha = 0.25)'; do
  "$BIN" parity "$spec" --device cuda --batch 2 --tol 1e-2 2>&1 | log || status=1
done
echo '```' | log

for mode in inference train; do
  flag=""; [ "$mode" = train ] && flag="--train"
  { echo; echo "## WRN-28-10 on CUDA, $mode (seed's GPU table: relative time 100 / 104 / 80 / 57 %)"; echo; } | log
  "$BIN" bench 'wrn(n = 4, k = 10)' --device cuda --batch "$BATCH" --samples "$SAMPLES" \
      --repeats "$REPEATS" $flag 2>&1 | log || status=1
done
exit $status
