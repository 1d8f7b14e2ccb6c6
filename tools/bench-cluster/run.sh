#!/usr/bin/env bash
# The figures of BENCHMARKS.md's "Several coordinators on PostgreSQL": heartbeat, pop and async
# throughput on SQLite (one process), then with 1, 2 and 3 coordinators sharing one PostgreSQL
# database (Debian's server with its durable defaults: fsync and synchronous_commit on), one
# run after the other on this machine. Calls are spread over the coordinators in turn.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo build --release -p horde
bin="${CARGO_TARGET_DIR:-target}/release/horde"
export HORDE_TEST_POSTGRES_PORT=15433
url=$(HORDE_TEST_POSTGRES_DURABLE=1 .ci/postgres.sh start)
trap '.ci/postgres.sh stop' EXIT
echo "== SQLite, one coordinator"
"$bin" bench heartbeat pop-empty async
for n in 1 2 3; do
    echo "== PostgreSQL, $n coordinator(s)"
    "$bin" bench heartbeat pop-empty async --postgres "$url" --coordinators "$n"
done
