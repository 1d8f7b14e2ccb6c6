#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for the test suite: Debian's package (installed when
# missing), a new data directory under $TMPDIR, listening on 127.0.0.1 only, trust
# authentication for the `horde` role. Prints the server's URL on stdout; `stop` stops it.
#
#   url=$(.ci/postgres.sh start)     # postgres://horde@127.0.0.1:15432/postgres
#   .ci/postgres.sh stop
#
# fsync is off: the tests need a real server, not durable storage, and this halves their time.
# HORDE_TEST_POSTGRES_DURABLE=1 keeps PostgreSQL's durable defaults (for benchmarks).
set -euo pipefail
# Below the ephemeral range (32768-60999), so no client socket of a busy machine holds it.
port="${HORDE_TEST_POSTGRES_PORT:-15432}"
data="${TMPDIR:-/tmp}/horde-ci-postgres-$port"

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-start}" in
start)
    if [ -z "$(bin_dir)" ]; then
        echo "installing PostgreSQL from Debian" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    fi
    bin="$(bin_dir)"
    if [ -f "$data/postmaster.pid" ]; then
        as_postgres "$bin/pg_ctl" -D "$data" -m immediate stop >&2 || true
    fi
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres: "$data"
    as_postgres "$bin/initdb" -D "$data" -U horde -A trust --no-sync >/dev/null
    settings="-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=400"
    if [ "${HORDE_TEST_POSTGRES_DURABLE:-0}" != 1 ]; then
        settings="$settings -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -o "$settings" start >&2
    echo "postgres://horde@127.0.0.1:$port/postgres"
    ;;
stop)
    bin="$(bin_dir)"
    [ -f "$data/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$data" -m fast stop >&2
    rm -rf "$data"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
