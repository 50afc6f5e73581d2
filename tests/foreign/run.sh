#!/usr/bin/env bash
# Foreign-client interop tests: Python producers and consumers (fastavro, confluent-kafka) that
# share no code with Tailor talk to the real `tailor` binary through a real broker.
#
#   TAILOR_TEST_BROKERS=127.0.0.1:19092 TAILOR_BIN=target/debug/tailor tests/foreign/run.sh [pytest args]
#
# Creates a virtualenv at ${TAILOR_CACHE:-~/.cache/tailor}/venv when missing, installs
# tests/foreign/requirements.txt into it (only when the requirements changed since the last
# install), and runs pytest on tests/foreign. TAILOR_BIN defaults to the debug build in
# ${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}; TAILOR_TEST_BROKERS is required (scripts/test.sh sets
# it after starting its broker).
set -euo pipefail
# A relative TAILOR_BIN is relative to the caller's directory.
if [ -n "${TAILOR_BIN:-}" ]; then TAILOR_BIN="$(realpath -m -- "$TAILOR_BIN")"; fi
cd "$(dirname "$0")/../.."

TAILOR_CACHE="${TAILOR_CACHE:-$HOME/.cache/tailor}"
VENV="$TAILOR_CACHE/venv"
REQS=tests/foreign/requirements.txt

: "${TAILOR_TEST_BROKERS:?set TAILOR_TEST_BROKERS to a running broker (scripts/test.sh does), e.g. 127.0.0.1:19092}"
export TAILOR_TEST_BROKERS
export TAILOR_BIN="${TAILOR_BIN:-${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}/debug/tailor}"
[ -x "$TAILOR_BIN" ] || { echo "run.sh: TAILOR_BIN=$TAILOR_BIN is not an executable (build tailor first)" >&2; exit 1; }

command -v python3 >/dev/null || { echo "run.sh: python3 is required" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "run.sh: need root to run: $*" >&2; exit 1
  fi
}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  # Debian and Ubuntu ship the venv module (and its ensurepip) in a separate package.
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if command -v apt-get >/dev/null; then
      echo "run.sh: installing python3-venv" >&2
      as_root apt-get update -qq >&2
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
    else
      echo "run.sh: the python3 venv module is missing; install it and run again" >&2
      exit 1
    fi
  fi
  echo "run.sh: creating virtualenv $VENV" >&2
  rm -rf "$VENV"
  mkdir -p "$TAILOR_CACHE"
  python3 -m venv "$VENV"
fi

# Install only when the requirements (or the interpreter) changed since the last install.
STAMP="$VENV/.tailor-requirements.sha256"
WANT="$( { cat "$REQS"; "$VENV/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "run.sh: installing $REQS into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS" >&2
  echo "$WANT" >"$STAMP"
fi

echo "== foreign-client interop tests (broker $TAILOR_TEST_BROKERS, binary $TAILOR_BIN)"
# No .pytest_cache or __pycache__ left in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/foreign "$@"
