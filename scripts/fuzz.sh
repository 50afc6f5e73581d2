#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo fuzz) of the rule parser and every input
# decoder: each target runs for a bounded time, one after the other.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed here if missing). The targets
# depend on the core crate only, so no C library is built. Crashes are saved under
# fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and add it as a regression test of the code it broke.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(rules definitions decode_avro decode_json decode_confluent repartition)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR="${TAILOR_FUZZ_TARGET_DIR:-$TAILOR_CACHE/fuzz-target}"

echo "== seeds"
cargo +nightly run --quiet --manifest-path fuzz/Cargo.toml --example seeds

failed=()
for t in "${TARGETS[@]}"; do
  echo "== fuzzing $t for ${SECONDS_PER_TARGET}s"
  mkdir -p "fuzz/corpus/$t"
  # -rss_limit_mb: a decoder must not allocate without bound on garbage.
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      2>&1 | tee "/tmp/tailor-fuzz-$t.log" | grep -E '^(#[0-9]+.*(DONE|pulse)|INFO: Running|==[0-9]+==|SUMMARY|stat::number_of_executed_units|stat::peak_rss_mb)' ; then
    :
  fi
  if grep -qE 'ERROR: libFuzzer|panicked|SUMMARY: (Address|Leak|libFuzzer)' "/tmp/tailor-fuzz-$t.log"; then
    failed+=("$t")
    echo "!! $t found a failure: see /tmp/tailor-fuzz-$t.log and fuzz/artifacts/$t/"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failures in: ${failed[*]}"
  exit 1
fi
echo "== no failure in ${TARGETS[*]} (${SECONDS_PER_TARGET}s each)"
