#!/usr/bin/env bash
# Type-checks the worker's CUDA build (`cargo check -p horde --features cuda`) on a machine
# with neither a GPU nor a CUDA install: nvcc and the CUDA headers come from NVIDIA's wheels
# on PyPI, unpacked once into ~/.cache/horde/cuda-from-pypi. This runs candle-kernels' build
# script (every CUDA kernel compiled to PTX for CUDA_COMPUTE_CAP, 90 by default) and checks
# all of our code behind the `cuda` feature. It does not link (that needs the driver's
# libcuda) and runs nothing on a GPU. About 10 minutes on 2 cores the first time.
# Usage: tools/cuda-check/run.sh   (PYTHON picks the interpreter whose pip downloads)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python3}"
CUDA="${CUDA_FROM_PYPI:-$HOME/.cache/horde/cuda-from-pypi}"
VERSION=13.2
if [ ! -x "$CUDA/bin/nvcc" ]; then
    work=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --dest "$work/wheels" \
        "nvidia-cuda-nvcc==$VERSION.*" "nvidia-nvvm==$VERSION.*" "nvidia-cuda-crt==$VERSION.*" \
        "nvidia-cuda-runtime==$VERSION.*" "nvidia-cuda-cccl"
    for wheel in "$work"/wheels/*.whl; do
        "$PY" -m zipfile -e "$wheel" "$work/unpacked"
    done
    mkdir -p "$(dirname "$CUDA")"
    rm -rf "$CUDA"
    mv "$work/unpacked/nvidia/cu13" "$CUDA"
    rm -rf "$work"
    chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*  # zip archives keep no modes
    ln -s lib "$CUDA/lib64"
fi
export PATH="$CUDA/bin:$PATH" CUDA_HOME="$CUDA" CUDA_PATH="$CUDA" CUDA_ROOT="$CUDA"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/horde-target-cuda}"
nvcc --version | tail -1
cargo check -p horde --features cuda
echo "the cuda build type-checks (nvcc $VERSION, compute capability $CUDA_COMPUTE_CAP)"
