#!/usr/bin/env bash
# Regenerate the textual-inversion fixtures in crates/horde-diffusion/tests/fixtures/ti/ (see
# README.md). Only needed to change the fixtures; the Rust tests read the committed files and
# never need Python.
#
#   tools/ti-fixtures/generate.sh [--out DIR]
#
# 1. The Rust writer writes the text encoders' checkpoints (the tiny SD 1.x, SD 2.x and SDXL
#    checkpoints, and two encoders of CLIP-L's and OpenCLIP-H's widths) into a temporary folder
#    outside the clone (the ignored test `write_encoders_for_the_fixture_tool` of
#    tests/ti_numbers.rs, built in the shared target dir under the cargo lock).
# 2. generate.py writes tiny random embeddings in each format, loads them (and the real ones of
#    $REAL_EMBEDDINGS) with diffusers' `load_textual_inversion` and records the conditioning.
#
# Environment:
#   PYTHON               interpreter for the virtual environment (default: python3, tested 3.11)
#   TI_FIXTURES_VENV     where the virtual environment lives (default: the one of
#                        tools/sd-fixtures, $HOME/.cache/horde/sd-fixtures-venv: the same pins)
#   TORCH_INDEX_URL      optional extra wheel index to take torch from first (a CPU-only build)
#   REAL_EMBEDDINGS      the real embeddings (default: ../shared/reference/image/embeddings)
#   CLIP_BPE             CLIP's BPE vocabulary (default: the copy in the instant-clip-tokenizer
#                        crate in cargo's registry)
#   CARGO_TARGET_DIR     cargo's target dir (default: $HOME/.cache/horde-target)
#   CARGO_LOCK           lock file serialising cargo runs (default: /tmp/horde-cargo.lock)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TI_FIXTURES_VENV:-$HOME/.cache/horde/sd-fixtures-venv}"
real="${REAL_EMBEDDINGS:-$root/../shared/reference/image/embeddings}"

source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" ti-fixtures

bpe="${CLIP_BPE:-$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt | head -n 1)}"
checkpoints="$(mktemp -d)"
trap 'rm -rf "$checkpoints"' EXIT
cd "$root"
run_writer HORDE_TI_FIXTURES_CHECKPOINTS "$checkpoints" ti_numbers write_encoders_for_the_fixture_tool
"$venv/bin/python" -W ignore::UserWarning -W ignore::FutureWarning "$here/generate.py" "$checkpoints" \
    --bpe "$bpe" --real "$real" "$@"
