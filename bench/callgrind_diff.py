#!/usr/bin/env python3
"""Where two callgrind profiles differ, per function (self cost), per request.

    KEEP=/tmp/cg bash bench/per_request.sh      # keeps each run's callgrind output
    python3 bench/callgrind_diff.py /tmp/cg/callgrind-floor-2500.out \\
        /tmp/cg/callgrind-outrigger-on-2500.out 2500 [ROWS]

Prints, for the functions whose cost differs most, (B - A) / N, A / N and B / N: the
instructions per request each function costs in B more than in A. Inlining moves cost
between functions from one build to the next, so read a single row with care and the
total (last line) as the figure.
"""
import re
import subprocess
import sys


def load(path):
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+(.*?)\s+\[", line)
        if m:
            name = re.sub(r"^\?\?\?:", "", m.group(2))
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main():
    a, b, n = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    names = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
    print(f"{'B-A':>9} {'A':>8} {'B':>8}  function (instructions per request)")
    for k in names[:rows]:
        print(f"{(b.get(k, 0) - a.get(k, 0)) / n:9.0f} {a.get(k, 0) / n:8.0f} "
              f"{b.get(k, 0) / n:8.0f}  {k[:110]}")
    print(f"{(sum(b.values()) - sum(a.values())) / n:9.0f} {sum(a.values()) / n:8.0f} "
          f"{sum(b.values()) / n:8.0f}  total")


if __name__ == "__main__":
    main()
