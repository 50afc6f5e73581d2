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
scripts/broker.sh start "$PORT"
trap 'scripts/broker.sh stop "$PORT" >/dev/null' EXIT
TAILOR_BENCH_BROKERS="127.0.0.1:$PORT" cargo bench --bench e2e
