#!/usr/bin/env bash
# Create (or reuse) the Python 3.12 venv with the pinned Schemathesis (from PyPI) that checks our
# OpenAPI spec against the running server. Idempotent: nothing is installed when the pinned
# version is there. (On Python 3.11, Hypothesis's error reporting can crash on a flaky draw.)
# The last line printed is the venv's `st` path.
# Usage: setup.sh [VENV_DIR]   (default: $HOME/.cache/horde/schemathesis-venv)
set -euo pipefail
SCHEMATHESIS_VERSION="4.32.5"
VENV_DIR="${1:-$HOME/.cache/horde/schemathesis-venv}"
ST="$VENV_DIR/bin/st"

versions_ok() {
    [ -x "$ST" ] && "$VENV_DIR/bin/python" - "$SCHEMATHESIS_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if sys.version_info[:2] == (3, 12) and version("schemathesis") == sys.argv[1] else 1)
PYEOF
}

find_python312() {
    # A pyenv shim may be on PATH yet refuse to run, so every candidate is actually executed.
    local cand root="${PYENV_ROOT:-$HOME/.pyenv}"
    for cand in "$(command -v python3.12 2>/dev/null || true)" \
        $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV) \
        /usr/local/bin/python3.12 /usr/bin/python3.12; do
        [ -n "$cand" ] && [ -x "$cand" ] && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null &&
            { echo "$cand"; return 0; }
    done
    return 1
}

if versions_ok; then
    echo "schemathesis==$SCHEMATHESIS_VERSION already present in $VENV_DIR" >&2
else
    PY="$(find_python312)" || { echo "error: python3.12 not found" >&2; exit 1; }
    echo "creating venv $VENV_DIR with $PY" >&2
    rm -rf "$VENV_DIR"
    mkdir -p "$(dirname "$VENV_DIR")"
    "$PY" -m venv "$VENV_DIR"
    "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    versions_ok || { echo "error: $VENV_DIR lacks schemathesis==$SCHEMATHESIS_VERSION on 3.12" >&2; exit 1; }
fi
echo "$ST"
