#!/usr/bin/env bash
# Regenerate the pickled-checkpoint fixtures in crates/horde-diffusion/tests/fixtures/pickled/
# (see README.md). Only needed to change the fixtures; the Rust tests read the committed files
# and never need Python.
#
#   tools/ckpt-fixtures/generate.sh [--out DIR]
#
# 1. The Rust writer writes the tiny SD 1.5 checkpoint (seed 22) into a temporary folder outside
#    the clone (the ignored test `write_tiny_sd15_for_the_fixture_tool` of tests/pickled.rs).
# 2. make_ckpt.py writes the pickles with torch.save, and the expected .safetensors beside them.
#
# Environment:
#   PYTHON               interpreter for the virtual environment (default: python3, tested 3.11)
#   CKPT_FIXTURES_VENV   where the virtual environment lives (default: the one of
#                        tools/sd-fixtures, $HOME/.cache/horde/sd-fixtures-venv, whose pins it
#                        uses: only torch and safetensors are imported)
#   TORCH_INDEX_URL      optional extra wheel index to take torch from first (a CPU-only build)
#   CARGO_TARGET_DIR     cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK           lock file serialising cargo runs (default: /tmp/horde-cargo.lock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${CKPT_FIXTURES_VENV:-$HOME/.cache/horde/sd-fixtures-venv}"

source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$root/tools/sd-fixtures/requirements.txt" sd-fixtures

checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
run_writer HORDE_CKPT_FIXTURES_CHECKPOINTS "$checkpoints" pickled write_tiny_sd15_for_the_fixture_tool
"$venv/bin/python" "$here/make_ckpt.py" "$checkpoints" "$@"
