#!/usr/bin/env bash
# Builds the `octconv` binary with CUDA (`--features cuda`) on a machine without a CUDA toolkit or
# driver, using NVIDIA's CUDA 13 toolkit from PyPI. The result runs on the GPU machines (driver 580,
# CUDA 13) with scripts/gpu-check.sh.
#
#   scripts/cuda-build.sh                 # release build for compute capability 9.0 (H100/H200)
#   CUDA_COMPUTE_CAP=80 scripts/cuda-build.sh
#   FEATURES=cudnn scripts/cuda-build.sh  # also cuDNN (needs nvidia-cudnn-cu13 on the GPU machine)
#
# Output: target/cuda/release/octconv (its own target directory, so the CPU build is untouched), a
# stripped copy in target/cuda-dist/octconv (octconv-cudnn for FEATURES=cudnn), its xz archive for the
# trip to the GPU machine, and the libraries it needs in target/cuda-dist/libs.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
FEATURES="${FEATURES:-cuda}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
# nvidia-cuda-cccl provides include/cccl (libcu++'s <nv/target>, which cuda_fp16.h includes).
# The toolkit must not be newer than the GPU machine's driver: the H200 machines run driver 580
# (CUDA 13.0), which refuses PTX from a newer nvcc ("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided
# PTX was compiled with an unsupported toolchain", seen there with 13.4 on 2026-12-04). candle's
# kernels travel as PTX, so build with CUDA 13.0 and tell cudarc 0.19 (which knows 13.0 to 13.4).
CUDA_PIP_VERSION="${CUDA_PIP_VERSION:-13.0.*}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
VENV="$(realpath -m "${CUDA_VENV:-target/cuda-venv-${CUDA_PIP_VERSION%.\*}}")"

step() { printf '\n== %s\n' "$*"; }

step "CUDA toolkit from PyPI into $VENV"
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q \
  "nvidia-cuda-nvcc==$CUDA_PIP_VERSION" "nvidia-nvvm==$CUDA_PIP_VERSION" "nvidia-cuda-crt==$CUDA_PIP_VERSION" \
  "nvidia-cuda-runtime==$CUDA_PIP_VERSION" \
  "nvidia-cuda-nvrtc==$CUDA_PIP_VERSION" "nvidia-cuda-cccl==$CUDA_PIP_VERSION" "nvidia-cublas" "nvidia-curand"
if [ "$FEATURES" = cudnn ]; then "$VENV/bin/pip" install -q nvidia-cudnn-cu13; fi
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$CU/bin/nvcc" ] || { echo "error: no nvcc under $CU/bin" >&2; exit 1; }
export PATH="$CU/bin:$PATH"
export CUDA_ROOT="$CU" CUDA_PATH="$CU" CUDA_TOOLKIT_ROOT_DIR="$CU"
nvcc --version | tail -2

step "link directory: unversioned library names and a stub libcuda"
# The wheels ship only versioned names (libcublas.so.13); the linker looks for libcublas.so.
LINK="$PWD/target/cuda-link"
mkdir -p "$LINK"
for lib in cublas cublasLt curand nvrtc cudart cudnn; do
  for f in "$CU"/lib/lib"$lib".so.* "$VENV"/lib/python3*/site-packages/nvidia/cudnn/lib/lib"$lib".so.*; do
    [ -e "$f" ] && ln -sf "$f" "$LINK/lib$lib.so" && break
  done
done
# libcuda.so belongs to the GPU driver, which build machines do not have. As NVIDIA's own toolkit
# does (lib64/stubs), link against a stub with the same soname (libcuda.so.1) that defines every
# driver entry point cudarc declares; at run time the driver's real libcuda.so.1 is loaded instead.
CUDARC="$(cargo metadata --format-version 1 --features "$FEATURES" 2>/dev/null | "$VENV/bin/python" -c '
import json, sys, os
pk = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
print(os.path.dirname(pk[0]["manifest_path"]) if pk else "")')"
[ -n "$CUDARC" ] || { echo "error: cudarc not found by cargo metadata (run cargo fetch)" >&2; exit 1; }
grep -ohE '\bfn cu[A-Za-z0-9_]+' "$CUDARC"/src/driver/sys/*.rs | sed 's/^fn //' | sort -u \
  | sed 's/.*/void &(void) {}/' > "$LINK/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"
echo "stub libcuda.so with $(wc -l < "$LINK/cuda_stub.c") symbols"
export LIBRARY_PATH="$LINK:$CU/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$LINK -L native=$CU/lib"

step "cargo build --release --features $FEATURES (compute capability $CUDA_COMPUTE_CAP)"
start=$(date +%s)
cargo build --release --bin octconv --features "$FEATURES"
echo "built in $(( $(date +%s) - start )) s"

step "result"
NAME=octconv; [ "$FEATURES" = cudnn ] && NAME=octconv-cudnn
mkdir -p target/cuda-dist
cp "$CARGO_TARGET_DIR/release/octconv" "target/cuda-dist/$NAME"
strip "target/cuda-dist/$NAME"
xz -T2 -6 -kf "target/cuda-dist/$NAME"
ls -l "target/cuda-dist/$NAME" "target/cuda-dist/$NAME.xz"
readelf -d "target/cuda-dist/$NAME" | grep NEEDED | tee "target/cuda-dist/libs-$NAME.txt"
echo "run it on a GPU machine with scripts/gpu-check.sh (LD_LIBRARY_PATH must reach the CUDA 13 libraries)"
