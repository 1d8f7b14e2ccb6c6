#!/usr/bin/env bash
# Regenerate the post-processing fixtures in crates/horde-postprocess/tests/fixtures/: the
# upscalers with spandrel (README.md), then face detection (README-face_detection.md), GFPGAN
# (README-gfpgan.md), CodeFormer and RestoreFormer (README-codeformer.md) and background removal
# (README-background.md), each from its PyTorch reference. Only needed to change the fixtures;
# the Rust tests read the committed files and never need Python.
#
#   tools/postprocess-fixtures/generate.sh [--out DIR]   (DIR: the upscalers' folder only)
#
# Environment:
#   PYTHON                     interpreter for the virtual environment (default: python3, tested 3.11)
#   POSTPROCESS_FIXTURES_VENV  where the virtual environment lives
#                              (default: $HOME/.cache/horde/postprocess-fixtures-venv)
#   TORCH_INDEX_URL            optional extra wheel index to take torch and torchvision from first,
#                              e.g. PyTorch's CPU-only index; without it torch comes from PyPI with
#                              its CUDA libraries (about 3 GB of downloads, unused here).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${POSTPROCESS_FIXTURES_VENV:-$HOME/.cache/horde/postprocess-fixtures-venv}"
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"
stamp="$venv/.horde-postprocess-fixtures-requirements"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment in $venv" >&2
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
fi

if ! cmp -s "$requirements" "$stamp"; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        torch_version="$(sed -n 's/^torch==//p' "$requirements")"
        torchvision_version="$(sed -n 's/^torchvision==//p' "$requirements")"
        "$venv/bin/pip" install --index-url "$TORCH_INDEX_URL" \
            "torch==$torch_version" "torchvision==$torchvision_version"
    fi
    "$venv/bin/pip" install -r "$requirements"
    "$venv/bin/pip" install --no-deps -r "$here/requirements-nodeps.txt"
    cp "$requirements" "$stamp"
fi

cd "$root"
"$venv/bin/python" -W ignore::UserWarning "$here/generate.py" "$@"
# Reload every fixture through spandrel, compare, and confirm the mis-wired variants fail.
out_dir="crates/horde-postprocess/tests/fixtures/upscalers"
if [ "${1:-}" = "--out" ] && [ -n "${2:-}" ]; then out_dir="$2"; fi
"$venv/bin/python" -W ignore::UserWarning "$here/check_fixtures.py" "$out_dir"
# The other families, each writing its own folder (and checking itself where it has a checker).
for family in face_detection gfpgan codeformer restoreformer background background_check; do
    echo "== $family" >&2
    "$venv/bin/python" -W ignore::UserWarning "$here/$family.py"
done
