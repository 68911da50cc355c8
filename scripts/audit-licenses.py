#!/usr/bin/env python3
"""Checks the licence of every crate in the build (from `cargo metadata`, offline) against
the licences this project accepts, and prints one line per licence expression.

    python3 scripts/audit-licenses.py

Exits 1 when a crate's licence is not covered. Known-vulnerability advisories cannot be
checked on this machine: the advisory databases (RustSec) are fetched from outside the
package registries, which this workplace cannot reach.
"""
import json
import re
import subprocess
import sys
from collections import defaultdict

ACCEPTED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016", "CC0-1.0", "MPL-2.0", "0BSD",
    "CDLA-Permissive-2.0", "Unlicense",
}

meta = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--locked"], text=True))


def covered(expr: str) -> bool:
    """True when some OR-branch of the expression has only accepted licences."""
    expr = expr.replace("/", " OR ")
    for branch in re.split(r"\s+OR\s+", expr.replace("(", "").replace(")", "")):
        parts = [p.strip() for p in re.split(r"\s+AND\s+", branch)]
        if all(p in ACCEPTED for p in parts):
            return True
    return False


by_licence = defaultdict(list)
bad = []
for pkg in meta["packages"]:
    licence = pkg.get("license") or "(none: " + (pkg.get("license_file") or "no licence") + ")"
    by_licence[licence].append(f"{pkg['name']} {pkg['version']}")
    if pkg["name"] != "outrigger" and not covered(licence):
        bad.append(f"{pkg['name']} {pkg['version']}: {licence}")

for licence, pkgs in sorted(by_licence.items(), key=lambda kv: -len(kv[1])):
    print(f"{len(pkgs):4d}  {licence}")
print(f"{len(meta['packages'])} crates")
if bad:
    print("not covered by the accepted licences:")
    print("\n".join("  " + b for b in bad))
    sys.exit(1)
print("every licence is accepted")
