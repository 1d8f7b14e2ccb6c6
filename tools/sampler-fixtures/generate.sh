#!/usr/bin/env bash
# Regenerate the sampler reference fixtures in crates/horde-diffusion/tests/fixtures/samplers/
# from k-diffusion and diffusers (see README.md). Only needed to change the fixtures; the Rust
# tests read the committed JSON and never need Python.
#
#   tools/sampler-fixtures/generate.sh [--out DIR]
#
# Environment:
#   PYTHON                 interpreter for the virtual environment (default: python3, tested 3.11)
#   SAMPLER_FIXTURES_VENV  where the virtual environment lives
#                          (default: $HOME/.cache/horde/sampler-fixtures-venv)
#   TORCH_INDEX_URL        optional extra wheel index to take torch from first, e.g. PyTorch's
#                          CPU-only index; without it torch comes from PyPI with its CUDA
#                          libraries (about 3 GB of downloads, unused here).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${SAMPLER_FIXTURES_VENV:-$HOME/.cache/horde/sampler-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" sampler-fixtures

cd "$root"
"$venv/bin/python" -W ignore::UserWarning "$here/generate.py" "$@"
# Re-derive the results from the JSON alone (plain numpy); fails on any mismatch.
out_dir="crates/horde-diffusion/tests/fixtures/samplers"
if [ "${1:-}" = "--out" ] && [ -n "${2:-}" ]; then out_dir="$2"; fi
"$venv/bin/python" "$here/check_fixtures.py" "$out_dir"
