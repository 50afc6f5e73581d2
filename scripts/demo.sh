#!/usr/bin/env bash
# The main job on a fresh machine: build Tailor, start a local Kafka-compatible broker, create the
# topics, start the worker, replay real commerce data through Kafka as the platform's events, show
# profiles, segment sizes and the audience changes streaming out, then shut everything down cleanly.
#
#   scripts/demo.sh
#
# Environment: TAILOR_DEMO_PORT (broker port, default 9092), TAILOR_CACHE (default ~/.cache/tailor).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_build_deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}"
PORT="${TAILOR_DEMO_PORT:-9092}"
HTTP_PORT="${TAILOR_DEMO_HTTP_PORT:-9464}"
WORK=.tailor/demo
TAILOR="$CARGO_TARGET_DIR/release/tailor"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building tailor (release; the first build compiles RocksDB and librdkafka: ~15 minutes on 2 cores)"
cargo build --release --bin tailor

step "Starting a local Kafka-compatible broker on 127.0.0.1:$PORT"
scripts/broker.sh start "$PORT"
WORKER_PID=""
cleanup() {
  [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null || true
  scripts/broker.sh stop "$PORT" >/dev/null || true
}
trap cleanup EXIT

rm -rf "$WORK" && mkdir -p "$WORK"
sed -e "s|\"bootstrap.servers\" = .*|\"bootstrap.servers\" = \"127.0.0.1:$PORT\"|" \
    -e "s|^path = .*|path = \"state\"|" \
    -e "s|^file = .*|file = \"$PWD/examples/segments.yaml\"|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:$HTTP_PORT\"|" \
    -e "s|^sync_writes = .*|sync_writes = true|" \
    examples/tailor.toml > "$WORK/tailor.toml"
# A local single-worker setup: short group timeouts make the first join quick.
sed -i 's|^\[kafka\]$|[kafka]\n"session.timeout.ms" = "6000"\n"heartbeat.interval.ms" = "1000"|' "$WORK/tailor.toml"
"$TAILOR" check --config "$WORK/tailor.toml"

step "Creating topics"
"$TAILOR" topics --config "$WORK/tailor.toml" --partitions 4

# History first, then the worker: it catches up on event time (timers fire at their due times in
# 2010/2019), then its clock follows the wall clock and what is still pending fires.
step "Replaying real data through Kafka: UCI Online Retail orders, then REES46 storefront clicks"
"$TAILOR" replay --config "$WORK/tailor.toml" --dataset uci-online-retail --file samples/uci-online-retail-sample.csv --rate 2000 --opted-in 30 | tee "$WORK/replay1.txt"
"$TAILOR" replay --config "$WORK/tailor.toml" --dataset rees46 --file samples/rees46-2019oct-sample.csv --rate 2000 | tee "$WORK/replay2.txt"
TOTAL=$(( $(awk '{print $2}' "$WORK/replay1.txt") + $(awk '{print $2}' "$WORK/replay2.txt") ))

step "Starting the worker: it catches up on the history (progress lines show events, profiles and segment sizes)"
"$TAILOR" run --config "$WORK/tailor.toml" 2> >(grep --line-buffered -v librdkafka >&2) &
WORKER_PID=$!
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done


step "Waiting until the worker has committed all $TOTAL events"
for _ in $(seq 1 600); do
  DONE=$(curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^tailor_stored_offset\{/ && !/repartition/ {s+=$2} END {print s+0}')
  [ "$DONE" -ge "$TOTAL" ] && break
  sleep 0.2
done
echo "committed: $DONE of $TOTAL"

step "Time: once caught up, the clock follows the wall clock and pending timers fire"
sleep 3
curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^tailor_(timers_fired_total|timers_pending|late_events_total) ' | sed 's/^/  /'

step "Journeys (triggered for the 30 % of UCI customers the replay opted in to e-mail; suppressed by reason: the public data carries no consents)"
curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^tailor_journey_(triggers|suppressed)_total' | sed 's/^/  /' || echo "  none"

step "Segment sizes (tailor_segment_members)"
curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | awk -F'[{}"= ]+' '/^tailor_segment_members\{/ {printf "  %-24s %s\n", $3, $4}'

step "Events applied, by type (tailor_events_total)"
curl -fs "http://127.0.0.1:$HTTP_PORT/metrics" | awk -F'[{}"=, ]+' '/^tailor_events_total\{/ && $6 > 0 {printf "  %-12s %-24s %s\n", $3, $5, $6}'

step "The first audience changes on audience.changes, each with the condition of its rule that flipped"
"$TAILOR" changes --config "$WORK/tailor.toml" --limit 15 | tee "$WORK/changes.txt"

CUSTOMER=$(sed -n 's/.*profile=\([^ ]*\).*/\1/p' "$WORK/changes.txt" | head -1)
step "The profile of shopper $CUSTOMER, looked up over HTTP (GET /profiles/{id}; loopback only)"
curl -fs "http://127.0.0.1:$HTTP_PORT/profiles/$CUSTOMER" | python3 -m json.tool > "$WORK/profile.json"
# (Through a file: a pipe into head would end the pipeline early and, with pipefail, the demo.)
head -60 "$WORK/profile.json"; echo "  … the whole profile: $WORK/profile.json"

SEGMENT=$(sed -n 's/^[A-Z]* *\([^ ]*\) *profile='"$CUSTOMER"' .*/\1/p' "$WORK/changes.txt" | head -1)
step "Why shopper $CUSTOMER is in $SEGMENT: the rule evaluated now (GET /profiles/{id}/explain)"
curl -fs "http://127.0.0.1:$HTTP_PORT/profiles/$CUSTOMER/explain?segment=$SEGMENT" | python3 -m json.tool > "$WORK/explain.json" || true
head -40 "$WORK/explain.json"; echo "  … the whole explanation: $WORK/explain.json"

step "Testing the example rules: shoppers' stories and what must hold when (tailor test)"
"$TAILOR" test examples/segments.yaml examples/segments.test.yaml | tail -4

step "Shutting down cleanly"
kill -TERM "$WORKER_PID"
wait "$WORKER_PID"
WORKER_PID=""
echo "worker stopped; state kept in $WORK/state"

step "The same explanation from the state on disk, for people (tailor explain; the stop flushed every commit to RocksDB's files)"
"$TAILOR" explain --config "$WORK/tailor.toml" "$CUSTOMER" "$SEGMENT" || true
