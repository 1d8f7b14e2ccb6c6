#!/usr/bin/env bash
# Run Schemathesis against our coordinator: the spec the server publishes
# (/api/swagger.json) is the contract, and every operation is called with generated requests,
# valid and invalid, with a registered key, anonymously, and as a moderator. Fails on any 5xx, any
# status or body the spec does not describe, any request valid by the spec that is refused
# and any invalid one that is accepted.
# Usage: against_server.sh [HORDE_BIN] [SECONDS_PER_RUN]   (three runs: a user, anonymous, a
# moderator)
#   HORDE_BIN defaults to $HORDE_BIN, then $CARGO_TARGET_DIR/debug/horde.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-${HORDE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/horde-target}/debug/horde}}"
SECONDS_PER_RUN="${2:-50}"
[ -x "$BIN" ] || { echo "error: horde binary not found at $BIN" >&2; exit 2; }
ST="$("$HERE/setup.sh" | tail -n 1)"
# Rate limits off: they are checked by the integration suite, and here a 429 would hide what
# the generated request would otherwise have been answered.
# HORDE_SCHEMATHESIS_DATABASE: a postgres:// URL of an empty database to run on instead of
# SQLite (a NUL byte, say, is refused by PostgreSQL alone).
. "$HERE/../serve.sh"
start_coordinator "$BIN" --enable-test-users --no-rate-limits \
    ${HORDE_SCHEMATHESIS_DATABASE:+--database "$HORDE_SCHEMATHESIS_DATABASE"}
test_user() {
    curl -sf -X POST "$URL/api/v2/dev/test-user" -H 'content-type: application/json' -d "$1"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
# Users rich enough never to run out of kudos: a plain one, a moderator, and one who receives
# the transfers.
KEY="$(test_user '{"username":"schemathesis","kudos":1000000000,"moderator":false}' | field api_key)"
MODERATOR_KEY="$(test_user '{"username":"moderator","kudos":1000000000}' | field api_key)"
TARGET_ID="$(test_user '{"username":"receiver","moderator":false}' | field user_id)"
export HORDE_SCHEMATHESIS_TARGET="receiver#$TARGET_ID"
export SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"

ON=SQLite
[ -z "${HORDE_SCHEMATHESIS_DATABASE:-}" ] || ON=PostgreSQL
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance,negative_data_rejection
run() {
    local who="$1"; shift
    echo "== schemathesis, $who, on $ON"
    # The test-user endpoint is a harness bootstrap for loopback callers, off in production.
    "$ST" run "$URL/api/swagger.json" --url "$URL" "$@" \
        --checks "$CHECKS" --phases examples,coverage,fuzzing \
        --max-time "$SECONDS_PER_RUN" --seed 1 --workers 2 \
        --exclude-path /api/v2/dev/test-user --warnings off \
        --report junit --report-dir "$DATA/report-$who"
}
status=0
run registered -H "apikey: $KEY" || status=1
run anonymous || status=1
# Last, as a moderator: the filters it adds could block the prompts of the runs above, and
# its own image requests are left out for the same reason.
run moderator -H "apikey: $MODERATOR_KEY" --exclude-operation-id generate_async || status=1
if [ "$status" -ne 0 ]; then echo "--- server log (last 40 lines)"; tail -n 40 "$LOG"; fi
exit "$status"
