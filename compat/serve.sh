# Sourced by the compatibility harnesses (compat/*/against_server.sh): starts our coordinator
# on a free loopback port with a throw-away data directory and waits until it answers.
#   start_coordinator BIN [extra `horde serve` arguments...]
# Sets URL, DATA (the data directory) and LOG (the server's output); stops the server and
# removes DATA on exit.
start_coordinator() {
    local bin="$1"
    shift
    DATA="$(mktemp -d)"
    LOG="$DATA/server.log"
    # Port 0: the kernel picks a free port as the server binds (no window in which another
    # process can take a port chosen beforehand); the server prints the address it got.
    "$bin" serve --listen "127.0.0.1:0" --data-dir "$DATA" "$@" >"$LOG" 2>&1 &
    SERVER_PID=$!
    trap 'kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; rm -rf "$DATA"' EXIT
    URL=""
    for _ in $(seq 300); do
        URL="$(grep -o 'listening on http://[0-9.:]*' "$LOG" | head -n 1 | sed 's/listening on //')" || true
        [ -n "$URL" ] && curl -sf "$URL/api/v2/status/heartbeat" >/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; cat "$LOG"; exit 1; }
        sleep 0.1
    done
    echo "the server did not answer within 30 s:"; cat "$LOG"; exit 1
}
