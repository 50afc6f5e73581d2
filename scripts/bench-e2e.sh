#!/usr/bin/env bash
# End-to-end benchmark: a local broker, topics pre-filled with events made from the real samples,
# the release worker with its default configuration. Prints events/s and peak memory.
#
#   TAILOR_BENCH_EVENTS=1000000 TAILOR_BENCH_PROFILES=1000000 scripts/bench-e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}"
PORT="${TAILOR_BENCH_BROKER_PORT:-19093}"
# The bench stops its broker when it ends: a second bench sharing it would lose it mid-run (the
# worker then waits for the broker, as it should, and the bench hangs until its deadline).
if scripts/broker.sh status "$PORT" >/dev/null; then
  echo "bench-e2e.sh: a broker already runs on port $PORT (another bench?); wait for it to end, or set TAILOR_BENCH_BROKER_PORT" >&2
  exit 1
fi
scripts/broker.sh start "$PORT"
trap 'scripts/broker.sh stop "$PORT" >/dev/null' EXIT
TAILOR_BENCH_BROKERS="127.0.0.1:$PORT" TAILOR_BENCH_BROKER_PID="$(cat "$TAILOR_CACHE/broker-$PORT.pid")" \
  cargo bench --bench e2e
