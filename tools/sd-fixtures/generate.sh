#!/usr/bin/env bash
# Regenerate the diffusers reference fixtures of the engine's networks in
# crates/horde-diffusion/tests/fixtures/sd_numbers/ (see README.md). Only needed to change the
# fixtures; the Rust tests read the committed files and never need Python.
#
#   tools/sd-fixtures/generate.sh [--part networks|img2img|all] [--out DIR] [--img2img-out DIR]
#
# 1. The Rust writer (`horde_diffusion::tiny`) writes the tiny checkpoints of the three families
#    into a temporary folder (the ignored test `write_checkpoints_for_the_fixture_tool` of
#    tests/diffusers_numbers.rs, built in the shared target dir under the cargo lock).
# 2. generate.py converts them with diffusers' single-file utilities and records diffusers'
#    outputs: the networks' (sd_numbers/) and, with img2img.py, diffusers' img2img and
#    inpainting pipelines' (img2img/).
#
# Environment:
#   PYTHON               interpreter for the virtual environment (default: python3, tested 3.11)
#   SD_FIXTURES_VENV     where the virtual environment lives
#                        (default: $HOME/.cache/horde/sd-fixtures-venv)
#   TORCH_INDEX_URL      optional extra wheel index to take torch from first (a CPU-only build)
#   CARGO_TARGET_DIR     cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK           lock file serialising cargo runs (default: /tmp/horde-cargo.lock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${SD_FIXTURES_VENV:-$HOME/.cache/horde/sd-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" sd-fixtures

checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
run_writer HORDE_SD_FIXTURES_CHECKPOINTS "$checkpoints" diffusers_numbers write_checkpoints_for_the_fixture_tool
# The inpainting checkpoints (and the same three again) for the image-to-image fixtures.
run_writer HORDE_SD_FIXTURES_CHECKPOINTS "$checkpoints" img2img_numbers write_img2img_checkpoints_for_the_fixture_tool
"$venv/bin/python" -W ignore::UserWarning -W ignore::FutureWarning "$here/generate.py" "$checkpoints" "$@"
