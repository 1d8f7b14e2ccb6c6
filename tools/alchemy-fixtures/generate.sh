#!/usr/bin/env bash
# Regenerate the alchemy fixtures in crates/horde-alchemy/tests/fixtures/: each writer below
# builds a tiny random checkpoint of the real architecture with transformers or diffusers, runs
# the reference implementation on small real images and records its outputs (README.md). Only
# needed to change the fixtures; the Rust tests read the committed files and never need Python.
#
#   tools/alchemy-fixtures/generate.sh [WRITER…]   (default: every writer in WRITERS)
#
# Environment:
#   PYTHON                  interpreter for the virtual environment (default: python3, tested 3.11)
#   ALCHEMY_FIXTURES_VENV   where the virtual environment lives
#                           (default: $HOME/.cache/horde/alchemy-fixtures-venv)
#   TORCH_INDEX_URL         optional extra wheel index to take torch from first (a CPU-only build)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${ALCHEMY_FIXTURES_VENV:-$HOME/.cache/horde/alchemy-fixtures-venv}"
# shellcheck source=../lib/fixture-env.sh
source "$root/tools/lib/fixture-env.sh"

# The writers, one Python script each (NAME.py), run in this order. Add yours to the list.
WRITERS=(clip safety blip)

if ! cmp -s "$here/requirements-nodeps.txt" "$venv/.horde-alchemy-fixtures-nodeps" 2>/dev/null; then
    ensure_venv "$venv" "$here/requirements.txt" alchemy-fixtures
    "$venv/bin/pip" install --no-deps -r "$here/requirements-nodeps.txt"
    cp "$here/requirements-nodeps.txt" "$venv/.horde-alchemy-fixtures-nodeps"
else
    ensure_venv "$venv" "$here/requirements.txt" alchemy-fixtures
fi

cd "$root"
if [ "$#" -gt 0 ]; then WRITERS=("$@"); fi
for writer in "${WRITERS[@]}"; do
    echo "== $writer" >&2
    "$venv/bin/python" -W ignore::UserWarning "$here/$writer.py"
done
