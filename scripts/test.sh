#!/usr/bin/env bash
# Runs every test: unit tests of the core and integration tests against a real Kafka-compatible
# broker (started here on a loopback port of its own, stopped at the end).
#
#   scripts/test.sh [extra cargo test args]
#
# Installs what it needs (the C toolchain's libclang for RocksDB's bindings, the broker, and for
# the foreign-client tests a Python virtualenv with fastavro and confluent-kafka, and Java's Avro:
# Debian's libavro-java, with a JDK when there is none).
# Builds go to $CARGO_TARGET_DIR (default ~/.cache/tailor/target) so repeated runs and CI reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_build_deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}"
PORT="${TAILOR_TEST_BROKER_PORT:-19092}"

scripts/broker.sh start "$PORT"
trap 'scripts/broker.sh stop "$PORT" >/dev/null' EXIT
export TAILOR_TEST_BROKERS="127.0.0.1:$PORT"

echo "== cargo test (broker at $TAILOR_TEST_BROKERS)"
cargo test --workspace --all-targets "$@"

# Foreign clients: Python fastavro + confluent-kafka (from PyPI, in a virtualenv of their own)
# produce to and consume from the real binary through the same broker, sharing no code with it.
TAILOR_BIN="$CARGO_TARGET_DIR/debug/tailor" tests/foreign/run.sh

# The chaos run, small: the UCI sample (about 6,000 events of three families with identity
# stitching), a worker killed twice; no loss allowed. scripts/chaos.sh alone runs the full one.
echo "== chaos (small; scripts/chaos.sh for 20 kills over the whole data set)"
TAILOR_BIN="$CARGO_TARGET_DIR/debug/tailor" CHAOS_MIN_KILLS=1 \
  scripts/chaos.sh 2 "" samples/uci-online-retail-sample.csv
