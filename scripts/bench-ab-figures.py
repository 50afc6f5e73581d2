"""The figures scripts/bench-ab.sh compares, read from the e2e bench's output of a wide first pass.

    python3 scripts/bench-ab-figures.py OUTPUT            one run's figures, on one line
    python3 scripts/bench-ab-figures.py --median OUT...   the median of each over the runs

A figure a run did not print (no steady slice in a short pass, no timer due at the catch-up) is
left out of that run's line and of the median; bench-ab.sh leaves out a pass that did not finish.
"""

import re
import statistics
import sys

# (name, pattern, unit): the first number the pattern captures in the bench's output.
FIGURES = [
    ("first pass", r"^worker \(.*= ([0-9.]+) events/s", "events/s"),
    ("steady", r"^steady rate .*: median ([0-9.]+) events/s", "events/s"),
    ("worker CPU, pass and catch-up", r"^the pass and its catch-up together: .*= ([0-9.]+) µs per event or timer fired", "µs per event or timer fired"),
    ("minor page faults", r"^worker CPU in the pass: .* = ([0-9.]+) per event$", "per event"),
    ("catch-up", r"^timers due at catch-up: ([0-9.]+) fired in ([0-9.]+)s", "timers fired/s"),
]


def figures(path):
    found = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            for name, pattern, _ in FIGURES:
                m = re.search(pattern, line.strip())
                if m and name not in found:
                    if name == "catch-up":
                        secs = float(m.group(2))
                        if secs > 0:
                            found[name] = float(m.group(1)) / secs
                    else:
                        found[name] = float(m.group(1))
    return found


def show(values):
    parts = []
    for name, _, unit in FIGURES:
        if name in values:
            v = values[name]
            number = f"{v:,.2f}" if v < 100 else f"{v:,.0f}"
            parts.append(f"{name} {number} {unit}")
    return "; ".join(parts) if parts else "no figures (see its output)"


def main(args):
    if args[:1] == ["--median"]:
        runs = [figures(p) for p in args[1:]]
        median = {}
        for name, _, _ in FIGURES:
            seen = [r[name] for r in runs if name in r]
            if seen:
                median[name] = statistics.median(seen)
        print(show(median))
    elif len(args) == 1:
        print(show(figures(args[0])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
