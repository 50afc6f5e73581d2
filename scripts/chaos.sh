#!/usr/bin/env bash
# The chaos run: real data of all three event families with identity stitching, processed by an
# undisturbed worker and by one killed with SIGKILL at random moments; the results must be equal.
#
#   scripts/chaos.sh [KILLS] [EVENTS] [FILE]
#
# KILLS (default 20): SIGKILLs of the chaos worker, each at a random moment after it is ready
# again. EVENTS (default: all): stop the replay after this many events. FILE: a UCI Online Retail
# CSV (.csv or .csv.gz); default the full data set in ../shared/data when present, else the
# sample in samples/ (about 11,000 events with the browsing sessions). The replay adds to each
# order an anonymous browsing session that signs in as the customer (storefront), the order itself
# (back office) and an opt-in profile record for 30 % of the customers (profile).
#
# Prints the kills, the outputs' duplicates (allowed only under the same id with the same content),
# losses and divergences, and the profiles that differ; exits 1 on any loss or difference. Uses its
# own broker port, a release build (or TAILOR_BIN), and the foreign tests' Python virtualenv
# (confluent-kafka and fastavro from PyPI; no code shared with Tailor).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

KILLS="${1:-20}"
EVENTS="${2:-}"
FULL=../shared/data/uci-online-retail/online_retail_2010-12-01_to_2011-12-09.csv.gz
FILE="${3:-$( [ -f "$FULL" ] && echo "$FULL" || echo samples/uci-online-retail-sample.csv )}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}"
if [ -z "${TAILOR_BIN:-}" ]; then
  ensure_build_deps
  cargo build --release --quiet --bin tailor
  TAILOR_BIN="$CARGO_TARGET_DIR/release/tailor"
fi
VENV="$TAILOR_CACHE/venv"
ensure_venv "$VENV" tests/foreign/requirements.txt

PORT="${TAILOR_CHAOS_BROKER_PORT:-19392}"
scripts/broker.sh start "$PORT" >/dev/null
WORK="$(mktemp -d)"
trap 'scripts/broker.sh stop "$PORT" >/dev/null; rm -rf "$WORK"' EXIT
echo "chaos: $KILLS kills, data $FILE${EVENTS:+ (first $EVENTS events)}, broker 127.0.0.1:$PORT, work dir $WORK"
TAILOR_BIN="$TAILOR_BIN" TAILOR_TEST_BROKERS="127.0.0.1:$PORT" CHAOS_KILLS="$KILLS" CHAOS_MIN_KILLS="${CHAOS_MIN_KILLS:-$KILLS}" \
  CHAOS_EVENTS="$EVENTS" CHAOS_FILE="$FILE" CHAOS_DIR="$WORK" "$VENV/bin/python" scripts/chaos.py ||
  { status=$?; echo "chaos: worker logs:"; tail -30 "$WORK/chaos.log" 2>/dev/null || true; exit $status; }
