#!/usr/bin/env bash
# Ensures the Python environment of llama-cpp-python's OpenAI-compatible server and prints its
# interpreter, for crates/horde-worker/tests/text_llama_server.rs (the text bridge against a real
# llama.cpp server on the tiny GGUF of crates/horde-text/tests/fixtures/):
#
#   HORDE_TEST_LLAMA_PYTHON="$(tools/text-fixtures/llama_server.sh)" \
#       cargo test -p horde-worker --test text_llama_server -- --include-ignored
#
# The environment is generate.sh's (llama-cpp-python 0.3.36, pinned) plus the server's extras
# (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings), pinned in
# server-requirements.txt. It lives outside the clone and is installed once: a first run builds
# llama.cpp from llama-cpp-python's sdist (several minutes on 2 cores); later runs only compare
# the pins. Everything but the interpreter's path goes to stderr.
#
# Environment:
#   PYTHON                interpreter for a new virtual environment (default: python3, tested 3.11)
#   TEXT_FIXTURES_VENV    where the virtual environment lives
#                         (default: $HOME/.cache/horde/text-fixtures-venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${TEXT_FIXTURES_VENV:-$HOME/.cache/horde/text-fixtures-venv}"
source "$here/../lib/fixture-env.sh"
ensure_venv "$venv" "$here/server-requirements.txt" llama-server >&2
"$venv/bin/python" -c "import llama_cpp.server.app" >&2
echo "$venv/bin/python"
