#!/usr/bin/env bash
# The head experiment of issue #15: `seed_wrn(n = 2, k = 2, alpha = 0.25)` with the seed's mixing head
# (`mix = true`) and its first per-branch head (`mix = false`), and the plain α = 0 network, each with
# seeds 1 and 2, on the fixed 10 000-image subset of the real CIFAR-10 (`--train-limit 10000`), 10 epochs,
# evaluated on the full test set (10 000 images) after every epoch.
#
# Schedule: the seed's (lr 0.1, ×0.2 at epochs 100 and 150), i.e. a constant lr 0.1 over these 10
# epochs — the regime in which the seed saw its plateau — batch 128, momentum 0.9, weight decay 5e-4,
# flip + crop augmentation. Same seed ⇒ same data order and augmentation for every network.
#
# Usage: [OCTCONV=path/to/octconv] docs/reproduction/head-mix/run.sh [RUN_ROOT]
# (default runs/head-mix; re-running resumes: finished runs are kept, an interrupted one continues.)
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=${1:-runs/head-mix}
# OCTCONV: the binary to use (default the release build; a copy keeps rebuilds from touching the runs).
bin=${OCTCONV:-target/release/octconv}
data=folder:../shared/data/cifar10-jpeg.tar.gz
# The two heads first (both seeds), then the baseline, so that an interrupted session still has the
# comparison the issue asks for.
for job in mix:1 branch:1 mix:2 branch:2 plain:1 plain:2; do
  net=${job%:*} seed=${job#*:}
  {
    case $net in
      mix)    call='seed_wrn(n = 2, k = 2, alpha = 0.25, mix = true)' ;;
      branch) call='seed_wrn(n = 2, k = 2, alpha = 0.25, mix = false)' ;;
      plain)  call='seed_wrn(n = 2, k = 2, alpha = 0)' ;;
    esac
    dir=$root/$net-seed$seed
    if [ -f "$dir/final.safetensors" ]; then echo "done: $dir"; continue; fi
    resume=(); [ -f "$dir/checkpoint.safetensors" ] && resume=(--resume)
    echo "$(date -u +%H:%M:%S) start $dir"
    "$bin" train "$call" --data "$data" --run-dir "$dir" --epochs 10 --seed "$seed" \
      --train-limit 10000 "${resume[@]}"
  }
done
echo "$(date -u +%H:%M:%S) all done"
