#!/usr/bin/env bash
# Regenerate the LoRA fixtures in crates/horde-diffusion/tests/fixtures/lora/ (see README.md).
# Only needed to change the fixtures; the Rust tests read the committed files and never need
# Python.
#
#   tools/lora-fixtures/generate.sh [--out DIR]
#
# 1. The Rust writer (`horde_diffusion::tiny`) writes the tiny checkpoints of the three families
#    (seed 22) into a temporary folder: the ignored test `write_checkpoints_for_the_fixture_tool`
#    of tests/diffusers_numbers.rs, the same checkpoints as tools/sd-fixtures.
# 2. generate.py builds diffusers' and transformers' tiny models from them (with
#    tools/sd-fixtures/generate.py's conversion), writes random LoRAs in each format, and records
#    what diffusers' LoRA loading and PEFT make of them.
#
# Environment:
#   PYTHON               interpreter for the virtual environment (default: python3, tested 3.11)
#   LORA_FIXTURES_VENV   where the virtual environment lives
#                        (default: $HOME/.cache/horde/lora-fixtures-venv)
#   TORCH_INDEX_URL      optional extra wheel index to take torch from first (a CPU-only build)
#   CARGO_TARGET_DIR     cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK           lock file serialising cargo runs (default: /tmp/horde-cargo.lock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${LORA_FIXTURES_VENV:-$HOME/.cache/horde/lora-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" lora-fixtures

checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
run_writer HORDE_SD_FIXTURES_CHECKPOINTS "$checkpoints" diffusers_numbers write_checkpoints_for_the_fixture_tool
"$venv/bin/python" -W ignore::UserWarning -W ignore::FutureWarning "$here/generate.py" "$checkpoints" "$@"
