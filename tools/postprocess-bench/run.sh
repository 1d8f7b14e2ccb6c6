#!/usr/bin/env bash
# The post-processor benchmark of BENCHMARKS.md (issue 22, point 8): each case on PyTorch and on
# ours, one after the other on the same threads, the checkpoint written by the PyTorch side.
#
#   tools/postprocess-bench/run.sh [THREADS] [RUNS]      (SKIP_TILED=1: without the 10-minute case)
#
# Needs the venv of tools/postprocess-fixtures (generate.sh builds it) and a release build of
# the example (this script builds it). Prints one JSON line per side and case.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
threads="${1:-2}"
runs="${2:-3}"
python="${POSTPROCESS_FIXTURES_VENV:-$HOME/.cache/horde/postprocess-fixtures-venv}/bin/python"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"
cargo build --release -q -p horde-postprocess --example postprocess_bench
ours="$target/release/examples/postprocess_bench"

side_by_side() { # NAME PYTHON-ARGS... -- OUR-ARGS...
    local name="$1"; shift
    local py=() rs=()
    while [ "$1" != "--" ]; do py+=("$1"); shift; done
    shift; rs=("$@")
    echo "== $name" >&2
    "$python" -W ignore "$here/pytorch_bench.py" --threads "$threads" --runs "$runs" "${py[@]}"
    RAYON_NUM_THREADS="$threads" "$ours" "${rs[@]}"
}

side_by_side "RealESRGAN_x4plus 128² → 512²" esrgan --out "$work/x4.safetensors" --size 128 \
    -- esrgan "$work/x4.safetensors" 128 "$runs"
# 16 times the work of the case above: one timed run after the warm-up (SKIP_TILED=1 skips it).
[ -n "${SKIP_TILED:-}" ] || side_by_side "RealESRGAN_x4plus 512² → 2048², 256² tiles" esrgan --out "$work/x4.safetensors" \
    --size 512 --tile 256 --runs 1 -- esrgan "$work/x4.safetensors" 512 1 256
side_by_side "GFPGAN, one 512² face" gfpgan --out "$work/gfpgan.pth" \
    -- gfpgan "$work/gfpgan.pth" "$runs"
side_by_side "u2net on 512² (rembg's pipeline)" u2net --out "$work/u2net.safetensors" --size 512 \
    -- u2net "$work/u2net.safetensors" 512 "$runs"
