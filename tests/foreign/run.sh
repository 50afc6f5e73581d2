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
#
# The fingerprint tests also check Tailor against Java's own Avro (the specification's reference,
# org.apache.avro.SchemaNormalization) from Debian's libavro-java: installed here when missing (with
# default-jdk-headless when java/javac are), tests/foreign/java/Pcf.java compiled into
# $TAILOR_CACHE/java-pcf (again only when the source, the jars or javac changed), and the command
# that runs it passed to pytest as TAILOR_JAVA_PCF. Without it the tests fail, they are not skipped.
# Prometheus and promtool (Debian's prometheus package) are installed the same way when missing.
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

# as_root, apt_install, ensure_venv (the virtualenv, installed again only when the requirements
# or the interpreter changed).
source scripts/lib.sh
ensure_venv "$VENV" "$REQS"

# Java's Avro: the second reference for Parsing Canonical Form and CRC-64-AVRO fingerprints.
AVRO_JARS=(avro jackson-core-asl jackson-mapper-asl slf4j-api)
jars_present() { local j; for j in "${AVRO_JARS[@]}"; do [ -f "/usr/share/java/$j.jar" ] || return 1; done; }
if ! command -v java >/dev/null || ! command -v javac >/dev/null; then
  apt_install "a JDK (java and javac, for Java's Avro)" default-jdk-headless
  command -v java >/dev/null && command -v javac >/dev/null ||
    { echo "run.sh: default-jdk-headless is installed but java or javac is still not on PATH" >&2; exit 1; }
fi
jars_present || apt_install "Java's Avro (/usr/share/java/avro.jar)" libavro-java
jars_present || { echo "run.sh: libavro-java is installed but /usr/share/java lacks one of ${AVRO_JARS[*]/%/.jar}" >&2; exit 1; }
AVRO_CP="$(printf '/usr/share/java/%s.jar:' "${AVRO_JARS[@]}")"
# slf4j-nop (libslf4j-java, a dependency of libavro-java) only silences slf4j's warning on stderr.
if [ -f /usr/share/java/slf4j-nop.jar ]; then AVRO_CP+=/usr/share/java/slf4j-nop.jar:; fi
PCF_SRC=tests/foreign/java/Pcf.java
# One directory per (source, classpath, javac): concurrent runs and other checkouts never step on
# each other, and nothing is recompiled while none of them changes.
PCF_HASH="$( { cat "$PCF_SRC"; IFS=:; for j in $AVRO_CP; do stat -L -c '%n %s %Y' "$j"; done
  realpath "$(command -v javac)"; javac -version 2>&1; } | sha256sum | cut -c1-16)"
PCF_CLASSES="$TAILOR_CACHE/java-pcf/$PCF_HASH"
if [ ! -f "$PCF_CLASSES/Pcf.class" ]; then
  echo "run.sh: compiling $PCF_SRC into $PCF_CLASSES" >&2
  mkdir -p "$TAILOR_CACHE/java-pcf"
  PCF_TMP="$(mktemp -d "$TAILOR_CACHE/java-pcf/.build.XXXXXX")"
  javac -encoding UTF-8 -nowarn -cp "$AVRO_CP" -d "$PCF_TMP" "$PCF_SRC" >&2 ||
    { rm -rf "$PCF_TMP"; echo "run.sh: javac could not compile $PCF_SRC against $AVRO_CP" >&2; exit 1; }
  chmod 755 "$PCF_TMP"
  mv -T "$PCF_TMP" "$PCF_CLASSES" 2>/dev/null || rm -rf "$PCF_TMP"  # another run got there first
fi
JAVA="$(command -v java)"
AVRO_VERSION="$("$JAVA" -cp "$AVRO_CP$PCF_CLASSES" Pcf --version)" ||
  { echo "run.sh: $JAVA -cp $AVRO_CP$PCF_CLASSES Pcf does not run (see above)" >&2; exit 1; }
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }  # single-quoted, for Python's shlex.split
export TAILOR_JAVA_PCF="$(shq "$JAVA") -cp $(shq "$AVRO_CP$PCF_CLASSES") Pcf"

# A real Prometheus (Debian's package) scrapes a worker in test_prometheus.py; promtool checks the
# shipped configuration and alert rules.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install "Prometheus (prometheus and promtool)" prometheus
  command -v prometheus >/dev/null && command -v promtool >/dev/null ||
    { echo "run.sh: the prometheus package is installed but prometheus or promtool is not on PATH" >&2; exit 1; }
fi
# Installing the package may start its service: the tests run their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  as_root systemctl stop prometheus >/dev/null 2>&1 || true
fi

echo "== foreign-client interop tests (broker $TAILOR_TEST_BROKERS, binary $TAILOR_BIN, Java Avro $AVRO_VERSION, $(prometheus --version 2>&1 | head -1))"
# No .pytest_cache or __pycache__ left in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/foreign "$@"
