#!/usr/bin/env python3
"""Turns bench/concurrency.sh's results into the issue-15 block of docs/resilience.md.

usage: concurrency_report.py RESULTS_DIR DOC

Reads side-by-side.txt, *.timeline.tsv, capacity-change.switch and healthy.tsv from
RESULTS_DIR; rewrites only the text between <!-- BEGIN issue-15 --> and <!-- END issue-15 -->
in DOC (creating DOC, or appending the block, when they are missing). Prints the block too.
"""

import os
import statistics
import sys

BEGIN, END = "<!-- BEGIN issue-15 -->", "<!-- END issue-15 -->"
NAMES = {
    "direct": "direct to the backend",
    "haproxy": "haproxy 2.6, `retries 2`, `retry-on 503 conn-failure`",
    "outrigger-off": "outrigger, defaults (3 attempts, retry budget, breaker)",
    "outrigger-nobreaker": "outrigger, defaults but `circuit_breaker: { enabled: false }`",
    "outrigger-on": "outrigger, defaults + `concurrency: {}`",
}


def side_by_side(results):
    rows, header = {}, ""
    with open(os.path.join(results, "side-by-side.txt")) as f:
        for line in f:
            if line.startswith("#"):
                header = line[1:].strip()
                continue
            fields = dict(kv.split("=", 1) for kv in line.split())
            rows[fields["name"]] = fields
    return header, rows


def timeline(results, name):
    path = os.path.join(results, name + ".timeline.tsv")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        next(f)
        for line in f:
            second, ok, failed, limit = (line.rstrip("\n").split("\t") + [""])[:4]
            out.append((int(second), int(ok), int(failed), float(limit) if limit else None))
    return out


def chart(points, height=10, mark=None, capacity=None):
    """An ASCII column chart of (second, value) points, one column per second."""
    values = [v for _, v in points if v is not None]
    if not values:
        return "(no samples)"
    top = max(values + [capacity or 0]) * 1.1
    lines = []
    for row in range(height, 0, -1):
        level = top * row / height
        label = f"{level:6.1f} |"
        cells = []
        for second, v in points:
            if mark is not None and second == mark:
                cells.append("|")
            elif v is not None and v >= level - top / height / 2:
                cells.append("#")
            elif capacity and abs(level - capacity) <= top / height / 2:
                cells.append("-")
            else:
                cells.append(" ")
        lines.append(label + "".join(cells))
    lines.append("       +" + "-" * len(points))
    ticks = "".join(str(s // 10 % 10) if s % 10 == 0 else " " for s, _ in points)
    lines.append("        " + ticks + "  (seconds, tens)")
    return "\n".join(lines)


def capacity_change(results):
    tl = timeline(results, "capacity-change")
    path = os.path.join(results, "capacity-change.switch")
    if not tl or not os.path.exists(path):
        return None
    switch = float(open(path).read().split("=")[1])
    s = int(round(switch))
    before = [l for sec, _, _, l in tl if s - 8 <= sec < s and l is not None]
    after = [l for sec, _, _, l in tl if sec >= tl[-1][0] - 8 and l is not None]
    ok_before = [ok for sec, ok, _, _ in tl if s - 8 <= sec < s]
    ok_after = [ok for sec, ok, _, _ in tl if sec >= tl[-1][0] - 8]
    if not before or not after:
        return None
    pre, post = statistics.median(before), statistics.median(after)
    goal = pre + 0.9 * (post - pre)
    reached = next((sec for sec, _, _, l in tl if sec >= s and l is not None and l >= goal), None)
    ok_goal = statistics.mean(ok_before) + 0.9 * (statistics.mean(ok_after) - statistics.mean(ok_before))
    ok_reached = next((sec for sec, ok, _, _ in tl if sec >= s and ok >= ok_goal), None)
    return {
        "ok_follow": None if ok_reached is None else ok_reached - switch,
        "switch": switch,
        "pre": pre,
        "post": post,
        "follow": None if reached is None else reached - switch,
        "ok_before": statistics.mean(ok_before),
        "ok_after": statistics.mean(ok_after),
        "chart": chart([(sec, l) for sec, _, _, l in tl], mark=s),
    }


def healthy(results):
    path = os.path.join(results, "healthy.tsv")
    if not os.path.exists(path):
        return None
    cpu = {"off": [0, 0], "on": [0, 0]}
    cg = {}
    for line in open(path):
        kind, a, variant, n, value = line.split()
        if kind == "cpu":
            cpu[variant][0] += int(n)
            cpu[variant][1] += float(value)
        else:
            cg.setdefault(variant, {})[int(a)] = (int(n), int(value))
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    out = {"cpu": {v: (t * tick / max(n, 1), n) for v, (n, t) in cpu.items()}}
    per = {}
    for variant, runs in cg.items():
        if len(runs) == 2:
            (short_n, short_ir), (long_n, long_ir) = (runs[k] for k in sorted(runs))
            if long_n > short_n:
                per[variant] = ((long_ir - short_ir) / (long_n - short_n), short_n, long_n)
    out["callgrind"] = per
    return out


def block(results):
    header, rows = side_by_side(results)
    out = [BEGIN, "", "## Adaptive concurrency limit (issue 15)", ""]
    out.append(
        "`bash bench/concurrency.sh`: the SPEC §7.3 backend (8 slots × 20 ms, 503 at once when "
        "16 already wait; 400 answers/s at most), 64 closed-loop clients pausing 50 ms after "
        "each answer, each proxy with one worker thread. Measured "
        f"{header}. The machine is shared with other builds: figures are noisy, and the load "
        "driver is a debug build."
    )
    out += ["", "| setup | successful answers/s | p99 of successful (ms) | failed | upstream requests per client request |",
            "|---|---:|---:|---:|---:|"]
    for name in ["direct", "haproxy", "outrigger-off", "outrigger-nobreaker", "outrigger-on"]:
        r = rows.get(name)
        if r:
            out.append(
                f"| {NAMES[name]} | {float(r['ok_per_s']):.0f} | {float(r['p99_ms']):.0f} | "
                f"{float(r['failed_pct']):.0f}% | {r['upstream_per_request']} |"
            )
    tl = timeline(results, "outrigger-on")
    if tl:
        limits = [l for _, _, _, l in tl if l is not None]
        tail = limits[len(limits) // 2:]
        out += ["", "`outrigger_concurrency_limit` with `concurrency: {}` (initial 16), scraped each "
                f"second (`-` marks the backend's 8 slots; median of the second half "
                f"{statistics.median(tail):.0f}, range {min(tail):.0f}-{max(tail):.0f}):", "", "```",
                chart([(s, l) for s, _, _, l in tl], capacity=8), "```"]
    cc = capacity_change(results)
    if cc:
        follow = "never" if cc["follow"] is None else f"{cc['follow']:.0f} s"
        out += ["", "**Capacity change**: the backend goes from 8 to 16 slots (and 32 waiting) at "
                f"second {cc['switch']:.0f} (`|`). The limit's median over the 8 s before was "
                f"{cc['pre']:.0f}, over the last 8 s {cc['post']:.0f}; it reached 90% of the way "
                f"{follow} after the switch. Successful answers/s: {cc['ok_before']:.0f} before, "
                f"{cc['ok_after']:.0f} at the end, 90% of the way "
                f"{'never' if cc['ok_follow'] is None else '%.0f s' % cc['ok_follow']} after the switch.",
                "", "```", cc["chart"], "```"]
    h = healthy(results)
    if h:
        out += ["", "**Healthy fast backend** (answers at once; 8 clients without pause; "
                "`concurrency: { min: 16, max: 4096 }` so that nothing is shed and both variants "
                "send every request upstream):", ""]
        cg = h["callgrind"]
        if "on" in cg and "off" in cg:
            ratio = cg["on"][0] / cg["off"][0] - 1
            out.append(
                "- callgrind, instructions of the outrigger process per request (the difference "
                "between runs of 2,000 and 6,000 requests, so start-up cancels): off "
                f"{cg['off'][0]:,.0f}, on {cg['on'][0]:,.0f} ({ratio:+.1%})."
            )
        cpu = h["cpu"]
        if cpu["off"][1] and cpu["on"][1]:
            ratio = cpu["on"][0] / cpu["off"][0] - 1
            out.append(
                "- CPU time per request from /proc, three interleaved rounds of 5 s each: off "
                f"{cpu['off'][0]:.1f} µs ({cpu['off'][1]} requests), on {cpu['on'][0]:.1f} µs "
                f"({cpu['on'][1]} requests), {ratio:+.1%}; noisy on this loaded machine, the "
                "instruction count is the figure to trust."
            )
    out += ["", END]
    return "\n".join(out)


def main():
    results, doc = sys.argv[1], sys.argv[2]
    text = block(results)
    print(text)
    existing = open(doc).read() if os.path.exists(doc) else ""
    if BEGIN in existing and END in existing:
        head, rest = existing.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = head + text + tail
    else:
        new = (existing.rstrip("\n") + "\n\n" if existing else "") + text + "\n"
    with open(doc, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
