#!/usr/bin/env bash
# Start our coordinator on a free loopback port with a throw-away data dir, create a trusted test
# user through the test-only bootstrap endpoint, run roundtrip.py with and without --r2, then
# endpoints.py (every endpoint through horde-sdk's response models) in its normal and strict modes.
# Usage: against_server.sh [HORDE_BIN] [VENV_DIR]
#   HORDE_BIN defaults to $HORDE_BIN, then /root/.cache/horde-target/debug/horde.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-${HORDE_BIN:-/root/.cache/horde-target/debug/horde}}"
[ -x "$BIN" ] || { echo "error: horde binary not found at $BIN" >&2; exit 2; }
PY="$("$HERE/setup.sh" ${2:+"$2"} | tail -n 1)"
DATA="$(mktemp -d)"
LOG="$DATA/server.log"

# Port 0: the kernel picks a free port as the server binds (no window in which another process
# can take a port chosen beforehand); the server prints the address it got.
HORDE_TEST_APIKEYS=1 "$BIN" serve --listen "127.0.0.1:0" --data-dir "$DATA" >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

URL=""
for _ in $(seq 300); do
    URL="$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -n 1 | sed 's/listening on //')" || true
    [ -n "$URL" ] && curl -sf "$URL/api/v2/status/heartbeat" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; cat "$LOG"; exit 1; }
    sleep 0.1
done

KEY="$(curl -sf -X POST "$URL/api/v2/dev/test-user" -H 'content-type: application/json' \
        -d '{"username":"sdk"}' | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"

status=0
"$PY" "$HERE/roundtrip.py" --url "$URL" --apikey "$KEY" || status=1
"$PY" "$HERE/roundtrip.py" --url "$URL" --apikey "$KEY" --r2 || status=1
"$PY" "$HERE/endpoints.py" --url "$URL" || status=1
"$PY" "$HERE/endpoints.py" --url "$URL" --strict || status=1
if [ "$status" -ne 0 ]; then echo "--- server log (last 40 lines)"; tail -n 40 "$LOG"; fi
exit "$status"
