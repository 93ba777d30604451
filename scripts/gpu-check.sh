#!/usr/bin/env bash
# The prepared GPU run (issue #25): one script, every phase time-limited, results saved as it goes.
# Runs on a GPU machine with binaries from scripts/cuda-build.sh; needs only them, the CUDA 13
# libraries (PyTorch's nvidia/cu13 wheels have them), python3 with torch for the comparison, and the
# CIFAR-10 archive for the training run.
#
#   scripts/gpu-check.sh OUT_DIR [PHASE …]     (default: every phase, in this order)
#
# Phases:
#   info     nvidia-smi, the libraries the binary loads
#   parity   every builtin at α ∈ {0, .25, .5, .75}: CPU (our kernels) against CUDA (candle's ops),
#            eval-mode outputs and one training step's loss and gradients (relative, --tol 1e-3)
#   compare  WRN-28-10, batch 128, inference and training: `octconv bench --device cuda` alternating
#            with PyTorch (bench/gpu_compare.py) — the seed's GPU table and ours / PyTorch
#   abconv   one WRN-28-10 training step with candle's own convolution backward (A/B of device_conv.rs)
#   train    `octconv train` WRN-10-2 on the CIFAR-10 archive, 2 epochs, interrupted (SIGINT) after
#            TRAIN_FIRST_S seconds and resumed
#   cudnn    the cuDNN binary: parity of every builtin at α = .25 and the WRN-28-10 table
#   profile  ncu: GPU time by kernel of WRN-28-10 at α = .25, inference and a training step
#
# Files: OUT_DIR/gpu.md (everything printed), parity.jsonl, parity-cudnn.jsonl, compare.json,
# train-metrics.jsonl, profile-infer.csv, profile-train.csv.
# Environment: OCTCONV (CUDA binary; default gpu/octconv, unpacked from gpu/octconv.xz if needed),
# OCTCONV_CUDNN (default gpu/octconv-cudnn[.xz]), DATA (default gpu/cifar10-jpeg.tar.gz), CUDA_LIBS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: scripts/gpu-check.sh OUT_DIR [PHASE …]}"
shift
PHASES="${*:-info parity compare train abconv profile cudnn}"
# DEADLINE_S: phases not started by then are skipped, so the run ends with results, not a kill.
mkdir -p "$OUT"
LOG="$OUT/gpu.md"
T0=$(date +%s)

unpack() { # unpack NAME: gpu/NAME from gpu/NAME.xz when only the archive travelled
  local f="gpu/$1"
  if [ ! -x "$f" ] && [ -f "$f.xz" ]; then xz -dkc "$f.xz" > "$f" && chmod +x "$f"; fi
  echo "$f"
}
BIN="${OCTCONV:-$(unpack octconv)}"
BIN_CUDNN="${OCTCONV_CUDNN:-$(unpack octconv-cudnn)}"
DATA="${DATA:-gpu/cifar10-jpeg.tar.gz}"
[ -x "$BIN" ] || { echo "error: no octconv binary at $BIN (set OCTCONV=…)" >&2; exit 1; }

# The CUDA 13 libraries: $CUDA_LIBS, else PyTorch's nvidia/cu13/lib (and cuDNN's), else the system's.
if [ -z "${CUDA_LIBS:-}" ]; then
  CUDA_LIBS="$(python3 -c '
import nvidia, os
root = list(nvidia.__path__)[0]
print(":".join(p for p in (os.path.join(root, "cu13", "lib"), os.path.join(root, "cudnn", "lib")) if os.path.isdir(p)))' 2>/dev/null || true)"
fi
[ -n "${CUDA_LIBS:-}" ] && export LD_LIBRARY_PATH="$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Any library still missing: look for it where CUDA installs usually put it.
for lib in $(ldd "$BIN" "$BIN_CUDNN" 2>/dev/null | awk '/not found/ {print $1}' | sort -u); do
  f=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$lib" 2>/dev/null | head -1)
  [ -n "$f" ] && export LD_LIBRARY_PATH="$(dirname "$f"):$LD_LIBRARY_PATH"
done
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"

say() { tee -a "$LOG"; }
section() { printf '\n## %s (t = %d s)\n\n' "$*" $(( $(date +%s) - T0 )) | say; }
# limited SECONDS CMD…: runs CMD with a time limit, its output to the log; a timeout is reported.
limited() {
  local s=$1; shift
  timeout -k 5 "$s" "$@" 2>&1 | say
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "(stopped after $s s: $*)" | say
  return "$rc"
}

DEVICE="${DEVICE:-cuda}"   # DEVICE=cpu: a dry run of this script on any machine
BUILTINS=(
  'wrn(n = 4, k = 10)' 'seed_wrn(n = 4, k = 10)' 'resnet(depth = 50)' 'resnext(depth = 50, groups = 32, width = 4)'
  'se_resnet(depth = 50, reduction = 16)' 'mobilenet_v1(width = 1.0)' 'mobilenet_v2(width = 1.0)'
  'densenet(depth = 121, growth = 32)' 'unet(base = 32, depth = 4, size = 128)'
)
# PARITY_SPECS (one call per line) replaces the list, e.g. for a dry run at small sizes.
[ -n "${PARITY_SPECS:-}" ] && mapfile -t BUILTINS <<< "$PARITY_SPECS"

# parity BIN JSONL ALPHAS DTYPES: every builtin, three at a time, each process with a share of the cores.
parity() {
  local bin=$1 jsonl=$2 alphas=$3 dtypes=$4 tmp i=0
  tmp=$(mktemp -d)
  for spec in "${BUILTINS[@]}"; do
    RAYON_NUM_THREADS=$(( ($(nproc) + 2) / 3 )) timeout -k 5 "${PARITY_S:-150}" "$bin" parity "$spec" --device "$DEVICE" \
      --alphas "$alphas" --train --batch 2 --dtype "$dtypes" --reference f64 --json > "$tmp/$i.jsonl" 2> "$tmp/$i.err" &
    i=$((i + 1))
    (( i % 3 == 0 )) && wait
  done
  wait
  for j in $(seq 0 $((i - 1))); do
    cat "$tmp/$j.jsonl" >> "$jsonl"
    [ -s "$tmp/$j.err" ] && { echo "stderr of ${BUILTINS[$j]}:"; grep -v '^ *[0-9]*: ' "$tmp/$j.err" | head -5; } | say
    [ -s "$tmp/$j.jsonl" ] || echo "NO RESULT: ${BUILTINS[$j]}" | say
  done
  python3 - "$jsonl" <<'EOF' | say
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def cells(d):
    if d is None:
        return ["–"] * 3
    g = d["worst_gradient"] or {}
    return [f"{d['output']['relative']:.1e}", f"{(d['loss'] or {}).get('relative', float('nan')):.1e}",
            f"{g.get('relative', float('nan')):.1e} ({g.get('what', '-').replace('gradient of ', '')})"]
print("Relative errors against the CPU in f64 (our kernels). Per side: eval output | train loss | worst gradient.\n")
print("| builtin | α | GPU f64 output | loss | worst gradient | GPU f32 output | loss | worst gradient "
      "| CPU f32 output | loss | worst gradient | ok |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    sides = {s["dtype"]: s for s in r["sides"]}
    row = [f"`{r['spec']}`", str(r["alpha"])] + cells(sides.get("f64")) + cells(sides.get("f32")) + cells(r["cpu_f32_baseline"])
    print("| " + " | ".join(row) + f" | {'yes' if r['ok'] else 'NO'} |")
print(f"\n{sum(r['ok'] for r in rows)} of {len(rows)} pass (f64 within 1e-3; f32 within 1e-3 or 4x the CPU's own f32 error)")
EOF
  rm -rf "$tmp"
}

for phase in $PHASES; do
  if [ $(( $(date +%s) - T0 )) -ge "${DEADLINE_S:-100000}" ]; then
    echo "(phase $phase skipped: past DEADLINE_S = $DEADLINE_S s)" | say; continue
  fi
  case "$phase" in
  info)
    { echo "# octconv on a GPU, $(date -u '+%Y-%m-%d %H:%M UTC')"; echo; echo '```'
      nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv
      echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) × $(nproc)"
      echo "CUDA libraries: ${CUDA_LIBS:-system}"
      ls -l "$BIN" "$BIN_CUDNN" 2>&1
      ldd "$BIN" | grep -E 'cuda|cublas|curand|nvrtc|cudnn|not found'
      python3 -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())'
      echo '```'; } 2>&1 | say ;;
  parity)
    section "Parity: CPU (our kernels) against CUDA (candle's ops), every builtin, batch 2"
    parity "$BIN" "$OUT/parity.jsonl" 0,0.25,0.5,0.75 f32,f64 ;;
  compare)
    section "WRN-28-10 on CUDA against PyTorch, batch 128 (seed's GPU table: 100 / 104 / 80 / 57 %)"
    limited "${COMPARE_S:-200}" python3 bench/gpu_compare.py --octconv "$BIN" --rounds "${ROUNDS:-2}" \
      --device "$DEVICE" --json "$OUT/compare.json" ${COMPARE_ARGS:-} ;;
  abconv)
    section "Training step with candle's own convolution backward (OCTCONV_DEVICE_CONV_BWD=candle), for comparison"
    OCTCONV_DEVICE_CONV_BWD=candle limited "${ABCONV_S:-60}" "$BIN" bench 'wrn(n = 4, k = 10)' --device "$DEVICE" \
      --alphas 0,0.25 --batch 128 --samples 128 --repeats 2 --train ;;
  train)
    section "Training WRN-10-2 (α = .25) on CIFAR-10 for 2 epochs, interrupted and resumed"
    RUN=/tmp/gpu-train-run; rm -rf "$RUN"
    ARGS=('wrn(n = 1, k = 2, alpha = 0.25)' --data "folder:$DATA" --run-dir "$RUN" --epochs 2 --cosine --device "$DEVICE" ${TRAIN_ARGS:-})
    # Part 1: SIGINT (as Ctrl-C) a few seconds into epoch 2, or after TRAIN_FIRST_S if epoch 1 is slower.
    s=$(date +%s)
    "$BIN" train "${ARGS[@]}" > /tmp/train1.log 2>&1 &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
      if [ "$(cat "$RUN/metrics.jsonl" 2>/dev/null | wc -l)" -ge 1 ]; then sleep "${TRAIN_INTO_2_S:-4}"; break; fi
      [ $(( $(date +%s) - s )) -ge "${TRAIN_FIRST_S:-100}" ] && break
      sleep 0.5
    done
    kill -INT $pid 2>/dev/null
    wait $pid
    rc=$?
    tr '\r' '\n' < /tmp/train1.log | grep -v '^\s*$' | tail -6 | say
    echo "(first part: exit $rc after $(( $(date +%s) - s )) s; 130 = interrupted by SIGINT, checkpoint saved)" | say
    ls -l "$RUN" 2>&1 | say
    s=$(date +%s)
    timeout -s INT -k 30 "${TRAIN_REST_S:-120}" "$BIN" train "${ARGS[@]}" --resume > /tmp/train2.log 2>&1
    rc=$?
    tr '\r' '\n' < /tmp/train2.log | grep -v '^\s*$' | tail -6 | say
    echo "(resumed part: exit $rc after $(( $(date +%s) - s )) s)" | say
    cp "$RUN/metrics.jsonl" "$OUT/train-metrics.jsonl" 2>/dev/null
    cat "$RUN/metrics.jsonl" 2>&1 | say
    [ -f "$RUN/final.safetensors" ] && limited 60 "$BIN" eval 'wrn(n = 1, k = 2, alpha = 0.25)' \
      --weights "$RUN/final.safetensors" --data "folder:$DATA" --device "$DEVICE" --json \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print("eval of final.safetensors on CUDA: accuracy", d["accuracy"])' ;;
  cudnn)
    [ -x "$BIN_CUDNN" ] || { echo "no cuDNN binary at $BIN_CUDNN: phase skipped" | say; continue; }
    section "cuDNN build: parity at α = .25, every builtin (f32 against the CPU's f64)"
    parity "$BIN_CUDNN" "$OUT/parity-cudnn.jsonl" 0.25 f32
    section "cuDNN build: WRN-28-10 inference and training, batch 128"
    for flag in "" --train; do
      limited 60 "$BIN_CUDNN" bench 'wrn(n = 4, k = 10)' --device "$DEVICE" --batch 128 --samples 256 --repeats 5 $flag
    done ;;
  profile)
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    [ -n "$NCU" ] || { echo "no ncu: phase skipped" | say; continue; }
    for mode in infer train; do
      section "Profile: ncu, kernel time by name, WRN-28-10 α = .25, batch 128, $mode"
      flag=""; [ $mode = train ] && flag=--train
      timeout -k 5 "${PROFILE_S:-45}" "$NCU" --clock-control none --csv --page raw --metrics gpu__time_duration.sum \
        --launch-count "${PROFILE_LAUNCHES:-3000}" "$BIN" bench 'wrn(n = 4, k = 10)' --alphas 0.25 --device cuda \
        --batch 128 --samples 128 --repeats 1 $flag > "$OUT/profile-$mode.csv" 2>&1
      echo "ncu exit $?" | say
      python3 bench/ncu_summary.py "$OUT/profile-$mode.csv" 2>&1 | say
    done ;;
  *) echo "unknown phase $phase" | say ;;
  esac
done
section "done"
