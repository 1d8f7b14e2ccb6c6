#!/usr/bin/env bash
# Offline self-test of this compatibility check (no horde server needed):
#   1. check_shapes.py: horde-sdk's models accept/reject AI-Horde-shaped bodies as recorded;
#   2. roundtrip.py against fake_horde.py (a stdlib stand-in answering like AI Horde), with and without --r2.
# Usage: selftest.sh [VENV_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="$("$HERE/setup.sh" "$@" | tail -n 1)"
KEY="selftestkey0123456789a"   # 22 characters, like a real AI Horde key
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

"$PY" "$HERE/check_shapes.py"

"$PY" "$HERE/fake_horde.py" --port "$PORT" --apikey "$KEY" &
FAKE_PID=$!
trap 'kill "$FAKE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/api/v2/status/heartbeat', timeout=1)" 2>/dev/null && break
    sleep 0.1
done

"$PY" "$HERE/roundtrip.py" --url "http://127.0.0.1:$PORT" --apikey "$KEY"
"$PY" "$HERE/roundtrip.py" --url "http://127.0.0.1:$PORT" --apikey "$KEY" --r2
echo "selftest: all passed"
