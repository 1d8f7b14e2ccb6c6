#!/usr/bin/env bash
# Regenerate the ControlNet, canny and control-map fixtures in
# crates/horde-diffusion/tests/fixtures/controlnet/ (see README.md). Only needed to change the
# fixtures; the Rust tests read the committed files and never need Python.
#
#   tools/controlnet-fixtures/generate.sh [--out DIR]
#
# 1. The Rust writers (`horde_diffusion::tiny`) write the tiny checkpoints and tiny ControlNets
#    of the three families into a temporary folder (the ignored test
#    `write_controlnet_checkpoints_for_the_fixture_tool` of tests/controlnet_numbers.rs).
# 2. generate.py converts them with diffusers' own utilities and records diffusers'
#    ControlNetModel and UNet, OpenCV's Canny and ComfyUI's map scaling.
#
# Environment:
#   PYTHON                     interpreter for the virtual environment (default: python3, 3.11)
#   CONTROLNET_FIXTURES_VENV   where the virtual environment lives
#                              (default: $HOME/.cache/horde/controlnet-fixtures-venv)
#   CONTROLNET_FIXTURES_IMAGES folder with the two photographs (default: the copies cargo keeps
#                              of the `rust-embed` and `webp` crates' examples, see README.md)
#   TORCH_INDEX_URL            optional extra wheel index to take torch from first (CPU-only)
#   CARGO_TARGET_DIR           cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK                 lock file serialising cargo runs (default: /tmp/horde-cargo.lock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CONTROLNET_FIXTURES_VENV:-$HOME/.cache/horde/controlnet-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" controlnet-fixtures

registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
images="${CONTROLNET_FIXTURES_IMAGES:-}"
if [ -z "$images" ]; then
    images="$(mktemp -d)"
    lake="$(ls "$registry"/*/webp-0.3.1/assets/lake.jpg | head -1)"
    flower="$(ls "$registry"/*/rust-embed-8.14.0/examples/public/images/flower.jpg | head -1)"
    cp "$lake" "$flower" "$images/"
fi

checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
run_writer HORDE_CONTROLNET_FIXTURES_CHECKPOINTS "$checkpoints" controlnet_numbers write_controlnet_checkpoints_for_the_fixture_tool
"$venv/bin/python" -W ignore::UserWarning -W ignore::FutureWarning "$here/generate.py" "$checkpoints" \
    --images "$images" "$@"
