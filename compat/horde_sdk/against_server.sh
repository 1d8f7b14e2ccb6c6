#!/usr/bin/env bash
# Start our coordinator on a free loopback port with a throw-away data dir, create a trusted test
# user through the test-only bootstrap endpoint, run roundtrip.py with and without --r2 and
# text_roundtrip.py (a text request) and alchemy_roundtrip.py (an interrogation), then
# endpoints.py (every endpoint through horde-sdk's response models) in its normal and strict modes.
# Usage: against_server.sh [HORDE_BIN] [VENV_DIR]
#   HORDE_BIN defaults to $HORDE_BIN, then /root/.cache/horde-target/debug/horde.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-${HORDE_BIN:-/root/.cache/horde-target/debug/horde}}"
[ -x "$BIN" ] || { echo "error: horde binary not found at $BIN" >&2; exit 2; }
PY="$("$HERE/setup.sh" ${2:+"$2"} | tail -n 1)"
. "$HERE/../serve.sh"
export HORDE_API__ADMINS="[1]"  # the first user, "sdk" below, administers this horde
start_coordinator "$BIN" --enable-test-users

KEY="$(curl -sf -X POST "$URL/api/v2/dev/test-user" -H 'content-type: application/json' \
        -d '{"username":"sdk"}' | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"

status=0
"$PY" "$HERE/roundtrip.py" --url "$URL" --apikey "$KEY" || status=1
"$PY" "$HERE/roundtrip.py" --url "$URL" --apikey "$KEY" --r2 || status=1
"$PY" "$HERE/text_roundtrip.py" --url "$URL" --apikey "$KEY" || status=1
"$PY" "$HERE/alchemy_roundtrip.py" --url "$URL" --apikey "$KEY" || status=1
"$PY" "$HERE/endpoints.py" --url "$URL" --admin-key "$KEY" || status=1
"$PY" "$HERE/endpoints.py" --url "$URL" --admin-key "$KEY" --strict || status=1
if [ "$status" -ne 0 ]; then echo "--- server log (last 40 lines)"; tail -n 40 "$LOG"; fi
exit "$status"
