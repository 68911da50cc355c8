#!/usr/bin/env python3
"""Turns bench/results/retry-harness.tsv into a table and a text chart, prints them and
rewrites the issue-14 block of docs/resilience.md (creating the file if needed).

    python3 bench/retry-report.py bench/results/retry-harness.tsv docs/resilience.md
"""
import csv
import datetime
import os
import sys

BEGIN, END = "<!-- BEGIN issue-14 -->", "<!-- END issue-14 -->"
PHASES = {"flap": ["flaky", "outage", "healthy"]}
GOALS = {
    ("flaky-50", "0"): "success >= 99.0%, upstream <= 1.26, p99 <= 50 ms",
    ("flaky-1000", "0"): "success >= 99.0%, upstream <= 1.26, p99 <= 50 ms",
    ("outage", "0"): "success 0%, upstream <= 1.05",
    ("flap", "1"): "upstream <= 1.05 during the outage",
    ("flap", "2"): ">= 99% again within 10 s of recovery",
    ("slow-tail", "0"): "hedged p99 <= 1/5 of unhedged, upstream <= 1.10",
}


def rows(path):
    with open(path) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            sent = int(r["sent"]) or 1
            r["success"] = 100.0 * int(r["ok"]) / sent
            r["per_client"] = int(r["upstream"]) / sent
            names = PHASES.get(r["scenario"])
            r["label"] = r["scenario"] + (f" ({names[int(r['phase'])]})" if names else "")
            yield r


def table(data):
    out = [
        "| scenario | rate | target | success | upstream per client request | p50 ms | p99 ms | recovered after | SPEC goal |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in data:
        rec = r["recovered_s"] + " s" if r["scenario"] == "flap" and r["phase"] == "2" else ""
        goal = GOALS.get((r["scenario"], r["phase"]), "")
        out.append(
            f"| {r['label']} | {r['rate']}/s | {r['target']} | {r['success']:.1f}% | "
            f"{r['per_client']:.3f} | {float(r['p50_ms']):.1f} | {float(r['p99_ms']):.1f} | {rec} | {goal} |"
        )
    return "\n".join(out)


def chart(data, key, title, unit, width=40):
    top = max((float(r[key]) for r in data), default=1.0) or 1.0
    lines = [title]
    for r in data:
        v = float(r[key])
        bar = "#" * max(1 if v > 0 else 0, round(width * v / top))
        lines.append(f"  {r['label'][:22]:22} {r['target'][:15]:15} {bar} {v:.2f}{unit}")
    return "\n".join(lines)


def block(data):
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else ["?"]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        BEGIN,
        "## Retries side by side: outrigger and haproxy (issue 14)",
        "",
        f"One run of `bash bench/retry-harness.sh` on {when}, loopback, one worker thread per",
        "proxy, breaker off, open-loop load at a fixed rate (latency counted from when each",
        "request was due). The machine (2 cores) was shared with other builds: load average",
        f"{' '.join(load)} at the end of the run, so latencies are noisy; the shares are not.",
        "haproxy: `retries 2`, `retry-on 503 conn-failure`. outrigger: built-in defaults",
        "(adaptive budget, 10 ms backoff base); `outrigger+hedge` adds",
        "`hedge: { delay: auto, max_ratio: 0.1 }`. outrigger is a release build; the backend and",
        f"the load generator are {os.environ.get('TOOLS', 'release')} builds (`TOOLS=`).",
        "",
        table(data),
        "",
        "```text",
        chart(data, "per_client", "upstream requests per client request", ""),
        "",
        chart(data, "p99_ms", "client p99 (ms)", " ms"),
        "```",
        END,
    ])


def main():
    tsv, doc = sys.argv[1], sys.argv[2]
    data = list(rows(tsv))
    text = block(data)
    print(text)
    old = open(doc).read() if os.path.exists(doc) else "# Resilience measured\n\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    with open(doc, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
