#!/usr/bin/env bash
# Regenerate the llama.cpp reference fixtures of horde-text's numbers test in
# crates/horde-text/tests/fixtures/ (see README.md). Only needed to change the fixtures; the Rust
# test reads the committed files and never needs Python.
#
#   tools/text-fixtures/generate.sh [OUT_DIR]
#
# generate.py writes the tiny random GGUFs (F16 and Q8_0) with the `gguf` package and records
# llama.cpp's logits and greedy continuation on them through llama-cpp-python.
#
# Environment:
#   PYTHON                interpreter for the virtual environment (default: python3, tested 3.11)
#   TEXT_FIXTURES_VENV    where the virtual environment lives
#                         (default: $HOME/.cache/horde/text-fixtures-venv)
# The first run builds llama.cpp from llama-cpp-python's sdist (several minutes on 2 cores).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${TEXT_FIXTURES_VENV:-$HOME/.cache/horde/text-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/requirements.txt" text-fixtures

"$venv/bin/python" "$here/generate.py" "${1:-$root/crates/horde-text/tests/fixtures}"
