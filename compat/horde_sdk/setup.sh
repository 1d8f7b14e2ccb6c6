#!/usr/bin/env bash
# Create (or reuse) a Python 3.12 venv with the pinned horde-sdk + pillow used by roundtrip.py.
# Usage: setup.sh [VENV_DIR]   (default: $HOME/.cache/horde/sdk-venv)
# Idempotent: if the venv already has exactly the pinned versions, nothing is installed.
# The last line printed is the venv's python path.
set -euo pipefail

HORDE_SDK_VERSION="0.33.3"
PILLOW_VERSION="13.0.0"

VENV_DIR="${1:-$HOME/.cache/horde/sdk-venv}"

is_python312() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' >/dev/null 2>&1
}

find_python312() {
    # A pyenv shim may be on PATH yet refuse to run ("pyenv: python3.12: command not found")
    # when 3.12 is not the selected version, so every candidate is actually executed.
    local cand root="${PYENV_ROOT:-$HOME/.pyenv}"
    local -a cands=()
    if cand="$(command -v python3.12 2>/dev/null)"; then cands+=("$cand"); fi
    # newest 3.12.x first
    while IFS= read -r cand; do cands+=("$cand"); done < <(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -rV)
    cands+=(/usr/local/bin/python3.12 /usr/bin/python3.12)
    for cand in "${cands[@]}"; do
        if [ -x "$cand" ] && is_python312 "$cand"; then echo "$cand"; return 0; fi
    done
    return 1
}

VENV_PY="$VENV_DIR/bin/python"

versions_ok() {
    [ -x "$VENV_PY" ] || return 1
    "$VENV_PY" - "$HORDE_SDK_VERSION" "$PILLOW_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
want_sdk, want_pil = sys.argv[1], sys.argv[2]
ok = sys.version_info[:2] == (3, 12) and version("horde-sdk") == want_sdk and version("pillow") == want_pil
sys.exit(0 if ok else 1)
PYEOF
}

if versions_ok; then
    echo "horde-sdk==$HORDE_SDK_VERSION and pillow==$PILLOW_VERSION already present in $VENV_DIR" >&2
else
    if [ ! -x "$VENV_PY" ] || ! is_python312 "$VENV_PY"; then
        PY312="$(find_python312)" || {
            echo "error: python3.12 not found (neither on PATH nor under \${PYENV_ROOT:-\$HOME/.pyenv}/versions/3.12*)" >&2
            exit 1
        }
        echo "creating venv $VENV_DIR with $PY312" >&2
        rm -rf "$VENV_DIR"
        mkdir -p "$(dirname "$VENV_DIR")"
        "$PY312" -m venv "$VENV_DIR"
    fi
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check \
        "horde-sdk==$HORDE_SDK_VERSION" "pillow==$PILLOW_VERSION" >&2
    versions_ok || { echo "error: venv $VENV_DIR does not have the pinned versions after install" >&2; exit 1; }
fi

echo "$VENV_PY"
