#!/usr/bin/env bash
# Two worker builds compared on the e2e bench's wide first pass, runs alternated (A, B, A, B …):
# on these shared 2-core machines the same build moves by a quarter or more between runs, and by
# more than a third within an hour, so a change of a few percent shows only against the other
# build measured in between. Prints each run's figures and each build's medians.
#
#   scripts/bench-ab.sh [-n RUNS] WORKER_A WORKER_B
#
# WORKER_A and WORKER_B are `tailor` binaries (copy target/release/tailor aside after each
# build: `cargo build --release` overwrites it). RUNS (default 3) runs of each. The bench's own
# variables apply to every run, e.g. TAILOR_BENCH_EVENTS=2000000 TAILOR_BENCH_PROFILES=2000000
# for a store larger than the profile cache. Each run's whole output is kept in
# TAILOR_BENCH_AB_DIR (default a new temporary directory, named at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
[ $# -eq 2 ] || { echo "usage: scripts/bench-ab.sh [-n RUNS] WORKER_A WORKER_B" >&2; exit 2; }
for w in "$1" "$2"; do
  [ -x "$w" ] || { echo "bench-ab.sh: $w is not an executable worker binary" >&2; exit 2; }
done
workers=("$(realpath "$1")" "$(realpath "$2")")
dir="${TAILOR_BENCH_AB_DIR:-$(mktemp -d)}"
mkdir -p "$dir"
for i in $(seq 1 "$runs"); do
  for j in 0 1; do
    label=$([ $j = 0 ] && echo A || echo B)
    out="$dir/$label-$i.txt"
    TAILOR_BENCH_WORKER="${workers[$j]}" TAILOR_BENCH_DEEP_EVENTS=0 TAILOR_BENCH_FAILOVER=0 \
      TAILOR_BENCH_WIDE_PHASES=first scripts/bench-e2e.sh > "$out" 2>&1 \
      || { tail -20 "$out" >&2; echo "bench-ab.sh: run $i of $label failed; its output: $out" >&2; exit 1; }
    echo "$label run $i: $(python3 scripts/bench-ab-figures.py "$out")"
  done
done
echo "medians over $runs runs each (A: ${workers[0]}, B: ${workers[1]}):"
for label in A B; do
  echo "  $label: $(python3 scripts/bench-ab-figures.py --median "$dir/$label"-*.txt)"
done
echo "each run's output: $dir"
