#!/usr/bin/env bash
# Instructions per item of each step of the core bench, counted by valgrind's cachegrind: within
# about 10 on every run of one build, where times on a shared 2-core machine move by ±10 %. For
# comparing two builds of the core (a change of a few percent shows); it says nothing about
# allocation behaviour under load or the worker's I/O, and about cache misses only when asked
# (TAILOR_ICOUNT_CACHE, below). Also the heap allocations
# per item (reallocations included), counted by the bench's allocator: each one touches memory
# that may be cold, and in the worker's profiles the allocator was a tenth of the samples.
#
#   scripts/icount.sh [STEP...]   (default: every step but apply_evaluate_deep)
#
# apply_evaluate_deep (a pass of 100,000 events over 2,000 deep shoppers whose profiles are cold
# at each event) is named to run: a few minutes under valgrind. Its cache misses are what it
# shows: with TAILOR_ICOUNT_CACHE=1 each step also gives its data cache misses per item,
# cachegrind's simulation of the first-level cache and of a 1 MiB one standing for this
# machine's per-core second level (the last level this VM reports is not a real one), a
# count of the cache lines an item brings in from further away.
#
# Each step runs twice under cachegrind, one pass and two passes over the samples; the
# difference is one pass, set-up excluded (a pass of the apply steps starts from no profiles and
# drops them at its end, which criterion's timing leaves out). Needs valgrind (not installed by
# the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_build_deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TAILOR_CACHE/target}"
command -v valgrind >/dev/null || { echo "icount.sh: valgrind is needed (e.g. apt-get install valgrind)" >&2; exit 1; }
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(decode decode_every_context apply_evaluate decode_apply_evaluate decode_apply_evaluate_50_segments state_encode state_decode)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "icount.sh: building the core bench" >&2
cargo bench --bench core --no-run --message-format=json > "$tmp/build.json" 2> "$tmp/build.log" \
  || { cat "$tmp/build.log" >&2; echo "icount.sh: the core bench did not build" >&2; exit 1; }
bin=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="core" and m.get("executable"): print(m["executable"])' \
  "$tmp/build.json" | tail -1)
[ -n "$bin" ] || { echo "icount.sh: no executable of the core bench in cargo's output" >&2; exit 1; }
count() { # step passes -> instructions and allocations
  TAILOR_ICOUNT_STEP=$1 TAILOR_ICOUNT_PASSES=$2 valgrind --tool=cachegrind "${sim[@]}" \
    --cachegrind-out-file="$tmp/out" "$bin" > "$tmp/stdout" 2> "$tmp/log" \
    || { cat "$tmp/log" >&2; exit 1; }
  local n d1 l2
  n=$(grep -oE 'I *refs: *[0-9,]+' "$tmp/log" | grep -oE '[0-9,]+$' | tr -d ,) \
    || { cat "$tmp/log" >&2; echo "icount.sh: no instruction count in cachegrind's output" >&2; exit 1; }
  d1=0 l2=0
  if [ -n "$cache" ]; then
    d1=$(grep -oE 'D1 *misses: *[0-9,]+' "$tmp/log" | grep -oE '[0-9,]+$' | tr -d ,)
    l2=$(grep -oE 'LLd misses: *[0-9,]+' "$tmp/log" | grep -oE '[0-9,]+$' | tr -d ,)
  fi
  echo "$n $(grep -oE '^allocations: [0-9]+' "$tmp/stdout" | grep -oE '[0-9]+$') $d1 $l2"
}
cache=${TAILOR_ICOUNT_CACHE:-}
[ "$cache" = 0 ] && cache=
if [ -n "$cache" ]; then sim=(--cache-sim=yes --LL=1048576,16,64); else sim=(--cache-sim=no); fi
for step in "${steps[@]}"; do
  res=$(count "$step" 1); read -r one one_allocs one_d1 one_l2 <<< "$res"
  res=$(count "$step" 2); read -r two two_allocs two_d1 two_l2 <<< "$res"
  items=$(grep -oE '^items per pass: [0-9]+' "$tmp/stdout" | grep -oE '[0-9]+$')
  [ -n "$one_allocs" ] && [ -n "$two_allocs" ] && [ -n "$items" ] \
    || { cat "$tmp/stdout" >&2; echo "icount.sh: no allocation or item count in the bench's output" >&2; exit 1; }
  allocs=$(python3 -c "print(f'{($two_allocs - $one_allocs) / $items:.2f}')")
  misses=
  [ -n "$cache" ] && misses=$(python3 -c "print(f', {($two_d1 - $one_d1) / $items:.1f} first-level and {($two_l2 - $one_l2) / $items:.1f} 1 MiB-cache data misses')")
  echo "$step: $(( (two - one) / items )) instructions, $allocs allocations$misses per item ($items items per pass)"
done
