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
python="${PYTHON:-python3}"
requirements="$here/requirements.txt"
stamp="$venv/.horde-lora-fixtures-requirements"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment in $venv" >&2
    "$python" -m venv "$venv"
fi
if ! cmp -s "$requirements" "$stamp"; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        torch_version="$(sed -n 's/^torch==//p' "$requirements")"
        "$venv/bin/pip" install --index-url "$TORCH_INDEX_URL" "torch==$torch_version"
    fi
    "$venv/bin/pip" install -r "$requirements"
    cp "$requirements" "$stamp"
fi

checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/horde-target}"
HORDE_SD_FIXTURES_CHECKPOINTS="$checkpoints" flock "${CARGO_LOCK:-/tmp/horde-cargo.lock}" \
    cargo test -p horde-diffusion --test diffusers_numbers write_checkpoints_for_the_fixture_tool \
    -- --ignored --exact --nocapture
"$venv/bin/python" -W ignore::UserWarning -W ignore::FutureWarning "$here/generate.py" "$checkpoints" "$@"
