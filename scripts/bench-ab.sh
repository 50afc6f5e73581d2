#!/usr/bin/env bash
# Two worker builds compared on the e2e bench's wide first pass, runs alternated (A, B, A, B …):
# on these shared 2-core machines the same build moves by a quarter or more between runs, and by
# more than a third within an hour, so a change of a few percent shows only against the other
# build measured in between. Prints each run's figures and each build's medians.
#
#   scripts/bench-ab.sh [-n RUNS] WORKER_A WORKER_B
#
# WORKER_A and WORKER_B are `tailor` binaries copied aside after each build: the bench builds
# the tree's own into $CARGO_TARGET_DIR/release/tailor (by default ~/.cache/tailor/target) at
# every run, so that path itself is refused. RUNS (default 3) runs of each. The bench's own
# variables apply to every run, e.g. TAILOR_BENCH_EVENTS=2000000 TAILOR_BENCH_PROFILES=2000000
# for a store larger than the profile cache. Each run goes through all of the first pass's
# phases (its latency and timer lateness too): about 3 minutes even for a short pass. Each
# run's whole output is kept in TAILOR_BENCH_AB_DIR (default a new temporary directory, named
# at the end). A run that fails, or whose pass did not finish before the bench's deadline, is
# reported and left out of the medians.
set -euo pipefail
usage() { echo "usage: scripts/bench-ab.sh [-n RUNS] WORKER_A WORKER_B" >&2; exit 2; }
runs=3
if [ "${1:-}" = "-n" ]; then
  [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage
  runs=$2
  shift 2
fi
[ $# -eq 2 ] || usage
# Paths as the caller gave them, before moving to the repository.
built="$(realpath -m "${CARGO_TARGET_DIR:-${TAILOR_CACHE:-$HOME/.cache/tailor}/target}/release/tailor")"
workers=()
for w in "$1" "$2"; do
  [ -f "$w" ] && [ -x "$w" ] || { echo "bench-ab.sh: $w is not an executable worker binary" >&2; exit 2; }
  w="$(realpath "$w")"
  [ "$w" != "$built" ] || { echo "bench-ab.sh: $w is what the bench rebuilds from the tree at each run; copy it aside first" >&2; exit 2; }
  workers+=("$w")
done
dir="$(realpath -m "${TAILOR_BENCH_AB_DIR:-$(mktemp -d)}")"
mkdir -p "$dir"
cd "$(dirname "$0")/.."
measured_a=() measured_b=() failed=0
for i in $(seq 1 "$runs"); do
  for j in 0 1; do
    label=$([ $j = 0 ] && echo A || echo B)
    out="$dir/$label-$i.txt"
    if ! TAILOR_BENCH_WORKER="${workers[$j]}" TAILOR_BENCH_DEEP_EVENTS=0 TAILOR_BENCH_FAILOVER=0 \
      TAILOR_BENCH_WIDE_PHASES=first scripts/bench-e2e.sh > "$out" 2>&1; then
      echo "$label run $i: failed (left out); the end of its output:"
      tail -5 "$out" | sed 's/^/    /'
      failed=$((failed + 1))
      continue
    fi
    if grep -q "^the pass did not finish before its deadline" "$out"; then
      echo "$label run $i: the pass did not finish before the bench's deadline (left out)"
      failed=$((failed + 1))
      continue
    fi
    echo "$label run $i: $(python3 scripts/bench-ab-figures.py "$out")"
    if [ $j = 0 ]; then measured_a+=("$out"); else measured_b+=("$out"); fi
  done
done
echo "medians (A: ${workers[0]}, B: ${workers[1]}):"
for label in A B; do
  if [ $label = A ]; then files=("${measured_a[@]}"); else files=("${measured_b[@]}"); fi
  if [ ${#files[@]} -eq 0 ]; then
    echo "  $label: no run measured"
  else
    echo "  $label, ${#files[@]} runs: $(python3 scripts/bench-ab-figures.py --median "${files[@]}")"
  fi
done
echo "each run's output: $dir"
[ "$failed" -eq 0 ] || { echo "bench-ab.sh: $failed run(s) left out" >&2; exit 1; }
