#!/usr/bin/env python3
"""Run outrigger in front of the flaky legacy service, let a real Prometheus scrape it, and
check what operators will rely on:

- `/metrics` passes `promtool check metrics` with no lint output;
- Prometheus loads deploy/prometheus/alerts.yml and every rule is healthy;
- every query of deploy/grafana/outrigger.json (panels and template variables) parses and
  returns data, after traffic with retries, skipped retries, fallbacks, stale copies, an
  open circuit and a failed health check;
- a scraped counter equals the number of requests sent.

Usage: live_prometheus.py OUTRIGGER_BINARY LEGACY_BINARY
All traffic stays on 127.0.0.1; every process started here is ended here, by its PID.
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTED_REQUESTS = 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", body=None, timeout=10):
    """Returns (status, body) for any HTTP answer; raises on no answer."""
    req = urllib.request.Request(url, method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_until(what, check, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"FAIL: timed out waiting for {what}")


class Processes:
    """Processes started here, ended by PID on the way out."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.started = []

    def start(self, name, argv, env=None):
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=self.workdir)
        self.started.append((name, proc))
        return proc

    def stop_all(self):
        for _, proc in reversed(self.started):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                print(f"{name} did not stop on SIGTERM; killed", file=sys.stderr)

    def show_logs(self):
        for name, _ in self.started:
            path = os.path.join(self.workdir, f"{name}.log")
            with open(path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            print(f"--- last lines of {name}.log ---\n{tail}", file=sys.stderr)


def outrigger_config(legacy_port, listen, admin):
    """A config with one route per behaviour the dashboard shows."""
    return f"""
listen: 127.0.0.1:{listen}
admin_listen: 127.0.0.1:{admin}
upstream:
  url: http://127.0.0.1:{legacy_port}
  health_check: {{ path: /healthz, interval: 250ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
defaults:
  retry: {{ backoff: {{ base: 5ms, max: 20ms }} }}
  circuit_breaker: {{ min_requests: 10, failure_ratio: 0.5, open_duration: 1s }}
routes:
  - name: conversations
    match: {{ path_prefix: /conversations }}
    retry: {{ budget: {{ ratio: 0.05, min_per_second: 1, adaptive: false }} }}
    stale_if_error: {{ max_age: 5m }}
  - name: feed
    match: {{ path_prefix: /feed }}
    fallback: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{"items": []}}' }}
  - name: orders
    match: {{ path_prefix: /orders }}
    hedge: {{ delay: 20ms, max_ratio: 0.5 }}
  - name: counted
    match: {{ path_prefix: /counted }}
    circuit_breaker: {{ enabled: false }}
    retry: {{ attempts: 5 }}
"""


def prometheus_config(workdir, admin):
    """deploy/prometheus/prometheus.yml with its target on loopback and a 1 s interval."""
    with open(os.path.join(DEPLOY, "prometheus", "prometheus.yml")) as f:
        text = f.read()
    if '"outrigger:9901"' not in text:
        sys.exit("FAIL: prometheus.yml no longer scrapes outrigger:9901; update this check")
    text = text.replace('"outrigger:9901"', f'"127.0.0.1:{admin}"')
    text = re.sub(r"(scrape_interval|evaluation_interval): \S+", r"\1: 1s", text)
    with open(os.path.join(workdir, "prometheus.yml"), "w") as f:
        f.write(text)
    shutil.copy(os.path.join(DEPLOY, "prometheus", "alerts.yml"), workdir)


def send_traffic(proxy, legacy):
    base = f"http://127.0.0.1:{proxy}"
    for i in range(300):
        request(f"{base}/conversations/{i % 10}")
        request(f"{base}/feed")
        if i % 5 == 0:
            request(f"{base}/orders", method="POST", body=b'{"item": 1}')
    # Break the backend: retries fail, the circuits open, stale copies and fallbacks are
    # served, and the health check reports the upstream down.
    request(f"http://127.0.0.1:{legacy}/admin/break", method="POST", body=b"")
    deadline = time.monotonic() + 4
    i = 0
    while time.monotonic() < deadline:
        request(f"{base}/conversations/{i % 10}")
        request(f"{base}/feed")
        i += 1
        time.sleep(0.01)
    request(f"http://127.0.0.1:{legacy}/admin/heal", method="POST", body=b"")
    time.sleep(1.5)
    for i in range(100):
        request(f"{base}/conversations/{i % 10}")
        request(f"{base}/feed")
    counted_ok = 0
    for i in range(COUNTED_REQUESTS):
        status, _ = request(f"{base}/counted/{i}")
        counted_ok += status == 200
    return counted_ok


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = request(url)
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        return None, answer.get("error", body[:300])
    return answer["data"]["result"], None


def dashboard_queries():
    with open(os.path.join(DEPLOY, "grafana", "outrigger.json")) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f'panel "{panel["title"]}" {target["refId"]}', target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            q = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            yield f'variable "{variable["name"]}"', q


def substitute(expr):
    """What Grafana does before sending a query: fill in variables."""
    return (expr.replace("$__rate_interval", "1m")
                .replace("$job", ".+")
                .replace("$route", ".+"))


# Panels whose series this check's single process cannot produce: they must still parse,
# and each says what would feed it. Their features are checked by their own tests
# (tests/hedge.rs, tests/concurrency.rs, tests/shared_redis.rs, tests/grpc.rs).
NOT_FED_HERE = {
    "Hedges by result": "a slow tail on a route that hedges GETs",
    "Concurrency limit and attempts in flight (issue 15)": "a route with concurrency under load",
    "Rejected for concurrency (overloaded)": "requests beyond a concurrency limit",
    "Share of requests rejected for concurrency": "requests beyond a concurrency limit",
    "Shared store (Redis) in use": "a Redis server (shared:)",
    "Shared store errors by operation": "a Redis server (shared:)",
    "Shared store p99 latency by operation": "a Redis server (shared:)",
    "gRPC answers by grpc-status": "a gRPC server and client",
}


def check_dashboard(prom):
    failures = []
    count = 0
    for name, expr in dashboard_queries():
        count += 1
        expr = substitute(expr)
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr)
        if m:
            selector, label = m.groups()
            url = (f"http://127.0.0.1:{prom}/api/v1/label/{label}/values?"
                   + urllib.parse.urlencode({"match[]": selector}))
            _, body = request(url)
            answer = json.loads(body)
            if answer.get("status") != "success" or not answer["data"]:
                failures.append(f"{name}: {expr}: no values ({answer})")
            continue
        result, error = query(prom, expr)
        if error is not None:
            failures.append(f"{name}: does not parse: {error}\n    {expr}")
            continue
        values = [float(r["value"][1]) for r in result]
        title = name.split('"')[1] if name.startswith("panel ") else ""
        if title in NOT_FED_HERE:
            print(f"parses, not fed here (needs {NOT_FED_HERE[title]}): {name}")
            continue
        if not any(math.isfinite(v) for v in values):
            failures.append(f"{name}: no data (result {result})\n    {expr}")
    return count, failures


def main():
    outrigger_bin, legacy_bin = (os.path.abspath(p) for p in sys.argv[1:3])
    workdir = tempfile.mkdtemp(prefix="outrigger-prom-")
    procs = Processes(workdir)
    ok = False
    try:
        legacy, proxy, admin, prom = free_port(), free_port(), free_port(), free_port()
        procs.start("legacy", [legacy_bin], {
            "LEGACY_LISTEN": f"127.0.0.1:{legacy}", "LEGACY_FAIL_PERCENT": "25",
            "LEGACY_SLOW_PERCENT": "2", "LEGACY_SLOW_MS": "200"})
        with open(os.path.join(workdir, "outrigger.yaml"), "w") as f:
            f.write(outrigger_config(legacy, proxy, admin))
        procs.start("outrigger", [outrigger_bin, "--config", "outrigger.yaml"])
        wait_until("outrigger /ready",
                   lambda: request(f"http://127.0.0.1:{admin}/ready")[0] == 200)

        _, metrics = request(f"http://127.0.0.1:{admin}/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=metrics,
                              capture_output=True)
        if lint.returncode != 0 or lint.stdout.strip() or lint.stderr.strip():
            sys.exit(f"FAIL: promtool check metrics:\n{lint.stdout.decode()}{lint.stderr.decode()}")
        print("ok: /metrics passes promtool check metrics with no lint output")

        prometheus_config(workdir, admin)
        procs.start("prometheus", [
            "prometheus", "--config.file=prometheus.yml",
            f"--storage.tsdb.path={workdir}/data",
            f"--web.listen-address=127.0.0.1:{prom}"])
        wait_until("Prometheus ready",
                   lambda: request(f"http://127.0.0.1:{prom}/-/ready")[0] == 200)

        _, body = request(f"http://127.0.0.1:{prom}/api/v1/rules")
        rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
        alerting = [r for r in rules if r["type"] == "alerting"]
        unhealthy = [r["name"] for r in rules if r.get("health") not in ("ok", "unknown")]
        if len(alerting) < 5 or unhealthy:
            sys.exit(f"FAIL: Prometheus loaded {len(alerting)} alerts; unhealthy: {unhealthy}")
        print(f"ok: Prometheus loaded {len(alerting)} alerting rules from alerts.yml")

        wait_until("a first scrape", lambda: query(prom, 'up{job="outrigger"} == 1')[0])
        counted_ok = send_traffic(proxy, legacy)
        print(f"traffic sent; {counted_ok}/{COUNTED_REQUESTS} counted requests answered 200")

        # Wait for a scrape after the last request, then compare counter and traffic.
        expr = 'sum(outrigger_requests_total{route="counted"})'
        deadline = time.monotonic() + 20
        seen = None
        while time.monotonic() < deadline:
            result, _ = query(prom, expr)
            seen = float(result[0]["value"][1]) if result else None
            if seen == COUNTED_REQUESTS:
                break
            time.sleep(0.5)
        if seen != COUNTED_REQUESTS:
            sys.exit(f"FAIL: {expr} is {seen} in Prometheus; sent {COUNTED_REQUESTS}")
        ok_expr = 'sum(outrigger_requests_total{route="counted", code="200"})'
        result, _ = query(prom, ok_expr)
        if not result or float(result[0]["value"][1]) != counted_ok:
            sys.exit(f"FAIL: {ok_expr} is {result}; {counted_ok} answers were 200")
        print(f"ok: Prometheus counts {COUNTED_REQUESTS} requests on route counted, "
              f"{counted_ok} of them 200, as sent")

        time.sleep(2)
        count, failures = check_dashboard(prom)
        if failures:
            sys.exit("FAIL: dashboard queries:\n  " + "\n  ".join(failures))
        print(f"ok: all {count} dashboard queries parse; all but those listed above return data")
        ok = True
    finally:
        procs.stop_all()
        if not ok:
            procs.show_logs()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
