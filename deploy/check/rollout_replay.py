#!/usr/bin/env python3
"""Replays, on loopback, what the kubelet does to one pod of a rendered Deployment during a
rolling update, with the real outrigger and legacy-service binaries, while pooled clients
keep sending requests through outrigger. Prints the timeline and the answers that were not
2xx. Used by deploy/check.sh (check `rollout`) and to show a manifest change before/after:

  rollout_replay.py OUTRIGGER LEGACY RENDERED.yaml [--expect-clean]

RENDERED is `kubectl kustomize` output (a ConfigMap and a Deployment). From it the replay
takes outrigger's config (the ConfigMap), terminationGracePeriodSeconds, which variant it
is (outrigger a native sidecar, i.e. an init container with restartPolicy: Always, or a
plain container) and every container's preStop hook, which it runs for real (exec commands
locally, with the pod's ports 9901 and 3000 mapped to the loopback ports used here; sleep
hooks as sleeps). The kubelet's order (Kubernetes 1.29+):

  native   t=0: preStop of each regular container, then its SIGTERM; SIGKILL at the grace
           period. Once every regular container has exited: the sidecar's preStop, then
           its SIGTERM.
  classic  t=0: every container's preStop, each followed by its SIGTERM, all in parallel.

The Service's side is modelled by ENDPOINT_DELAY: until the endpoint removal reaches the
node (1.5 s here), a client that reconnects lands on this pod again; after it, a new
connection goes to another replica, so the client leaves this pod. A pooled keep-alive
connection stays on this pod until the server closes it, as real client pools do. The app
closes its port at SIGTERM and exits APP_EXIT (2 s) later, as apps with a graceful
shutdown of their own do.
"""

import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

ENDPOINT_DELAY = 1.5  # seconds until the endpoint removal reaches the node
CLIENTS = 4  # pooled keep-alive connections sending through the Service
PAUSE = 0.02  # between two requests of one client
PATHS = ["/api/orders/{n}", "/catalogue/{n}"]
# The app as many are: at SIGTERM it stops listening at once, then takes this long to exit
# (finishing its own work). The legacy service itself exits at once; a shell around it
# adds the wait.
APP_EXIT = 2

T0 = None
events = []
lock = threading.Lock()


def now():
    return time.monotonic() - T0 if T0 is not None else 0.0


def event(text):
    with lock:
        events.append((now(), text))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    pod = deployment["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    native = any(c["name"] == "outrigger" for c in sidecars)
    return pod, configmap["data"]["outrigger.yaml"], native


def pre_stop(container, ports):
    """The container's preStop as a callable that blocks until the hook is done."""
    hook = (container.get("lifecycle") or {}).get("preStop")
    if not hook:
        return None, "none"
    if "sleep" in hook:
        seconds = hook["sleep"]["seconds"]
        return (lambda deadline: time.sleep(max(0, min(seconds, deadline - time.monotonic())))), \
            f"sleep {seconds}"
    command = [mapped(part, ports) for part in hook["exec"]["command"]]

    def run(deadline):
        proc = subprocess.Popen(command, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = shlex.join(hook["exec"]["command"]).splitlines()
    return run, lines[0] + (" ..." if len(lines) > 1 else "")


def mapped(text, ports):
    for pod_port, local in ports.items():
        text = text.replace(f":{pod_port}", f":{local}")
    return text


def stop_container(name, proc, hook, deadline):
    """What the kubelet does to one container: preStop, SIGTERM, SIGKILL at the deadline."""
    run, what = hook
    if run:
        event(f"{name}: preStop starts ({what})")
        run(deadline)
        event(f"{name}: preStop done")
    if proc.poll() is not None:
        event(f"{name}: SIGTERM skipped, already exited ({proc.returncode})")
        return
    event(f"{name}: SIGTERM")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        event(f"{name}: SIGKILL (grace period over)")
        proc.kill()
        proc.wait()
    event(f"{name}: exited ({proc.returncode})")


def reason(status, body):
    """outrigger's REASON from an error answer's JSON body, if it made the answer."""
    if 200 <= status < 300:
        return ""
    try:
        return json.loads(body).get("reason", "")
    except ValueError:
        return ""


def client(port, results, retried, stop):
    """One pooled client: keep-alive requests until it is moved to another replica.

    Like Go's http.Transport or an HTTP/1.1 client following RFC 9112 section 9.3.1, it
    sends a GET again on a new connection when a reused connection was closed before any
    answer came (the server closed it while idle, the request crossing the close); those
    are counted apart, in `retried`."""
    conn, n, reused = None, 0, False
    while not stop.is_set():
        if conn is None:
            if T0 is not None and now() > ENDPOINT_DELAY:
                return  # a new connection now reaches another replica
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            reused = False
        n += 1
        started = now()
        try:
            conn.request("GET", PATHS[n % 2].format(n=n % 50))
            resp = conn.getresponse()
            body = resp.read()
            results.append((started, resp.status, reason(resp.status, body)))
            close, reused = resp.will_close, True
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            conn.close()
            conn = None
            if reused:
                retried.append((started, type(e).__name__))
                continue
            results.append((started, type(e).__name__, ""))
            close = False
        except (OSError, http.client.HTTPException) as e:
            results.append((started, type(e).__name__, ""))
            close = True
        if close and conn is not None:
            conn.close()
            conn = None
        time.sleep(PAUSE)


def watch_ready(admin, stop):
    """Records /ready's transitions (200, 503, gone) as seen by the kubelet's probe."""
    last = None
    while not stop.is_set():
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            c.request("GET", "/ready")
            state = str(c.getresponse().status)
            c.close()
        except OSError:
            state = "refused"
        if state != last and T0 is not None:
            event(f"outrigger: /ready {state}")
        last = state
        time.sleep(0.05)


def wait_ready(admin, proxy):
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                c = http.client.HTTPConnection("127.0.0.1", proxy, timeout=5)
                c.request("GET", "/api/warm")
                if c.getresponse().status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("FAIL: outrigger never became ready")


def start(outrigger, legacy, config_text, tmp):
    app, proxy, admin = free_port(), free_port(), free_port()
    config = os.path.join(tmp, "outrigger.yaml")
    with open(config, "w") as f:
        f.write(config_text)
    log = open(os.path.join(tmp, "outrigger.log"), "w")
    env = dict(os.environ, LEGACY_LISTEN=f"127.0.0.1:{app}", LEGACY_FAIL_PERCENT="0",
               LEGACY_SLOW_PERCENT="2", LEGACY_SLOW_MS="800")
    wrapper = (f'"$0" & pid=$!; trap \'kill -TERM $pid; wait $pid; sleep {APP_EXIT}; exit 0\' '
               'TERM; wait $pid')
    app_proc = subprocess.Popen(["bash", "-c", wrapper, legacy], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, OUTRIGGER_CONFIG=config, OUTRIGGER_LISTEN=f"127.0.0.1:{proxy}",
               OUTRIGGER_ADMIN_LISTEN=f"127.0.0.1:{admin}",
               OUTRIGGER_UPSTREAM=f"http://127.0.0.1:{app}")
    sidecar = subprocess.Popen([outrigger], env=env, stdout=log, stderr=subprocess.STDOUT)
    return app_proc, sidecar, {3000: app, 9901: admin}, proxy, admin


def terminate(pod, native, procs, ports):
    """The kubelet's termination of the pod; returns when every container has exited."""
    deadline = time.monotonic() + pod.get("terminationGracePeriodSeconds", 30)
    containers = {c["name"]: c for c in pod.get("containers", []) + pod.get("initContainers", [])}
    hooks = {name: pre_stop(c, ports) for name, c in containers.items()}
    event(f"pod deleted ({'native sidecar' if native else 'classic'}, grace "
          f"{pod.get('terminationGracePeriodSeconds', 30)} s); endpoint removal reaches the "
          f"node at t={ENDPOINT_DELAY}")
    first = ["app"] if native else ["app", "outrigger"]
    threads = [threading.Thread(target=stop_container, args=(n, procs[n], hooks[n], deadline))
               for n in first]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if native:
        stop_container("outrigger", procs["outrigger"], hooks["outrigger"], deadline)


def report(results):
    bad = [(t, s, r) for t, s, r in results if not (isinstance(s, int) and 200 <= s < 300)]
    print(f"requests: {len(results)}; not 2xx: {len(bad)}")
    if bad:
        counts = {}
        for _, s, r in bad:
            key = f"{s} {r}".strip()
            counts[key] = counts.get(key, 0) + 1
        for key, count in sorted(counts.items()):
            print(f"  {count:5} x {key}")
        print(f"  first at t={bad[0][0]:.2f}, last at t={bad[-1][0]:.2f}")
    return len(bad)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    global T0
    outrigger, legacy, rendered = sys.argv[1:4]
    pod, config_text, native = load(rendered)
    with tempfile.TemporaryDirectory() as tmp:
        app_proc, sidecar, ports, proxy, admin = start(outrigger, legacy, config_text, tmp)
        procs = {"app": app_proc, "outrigger": sidecar}
        stop = threading.Event()
        results, retried = [], []
        try:
            wait_ready(admin, proxy)
            watcher = threading.Thread(target=watch_ready, args=(admin, stop))
            clients = [threading.Thread(target=client, args=(proxy, results, retried, stop))
                       for _ in range(CLIENTS)]
            for t in clients + [watcher]:
                t.start()
            time.sleep(1)  # steady traffic before the rollout reaches this pod
            T0 = time.monotonic()
            results.clear()
            retried.clear()
            terminate(pod, native, procs, ports)
        finally:
            stop.set()
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for t in clients + [watcher]:
            t.join(timeout=15)
    print(f"== rollout replay: {rendered}")
    for t, text in sorted(events):
        print(f"  t={t:6.2f}  {text}")
    bad = report(sorted(results))
    if retried:
        print(f"  sent again on a new connection after a keep-alive close (not counted): "
              f"{len(retried)}, at t=" + ", ".join(f"{t:.2f}" for t, _ in sorted(retried)))
    if "--expect-clean" in sys.argv and bad:
        print("FAIL: clients got answers that were not 2xx during the rollout")
        sys.exit(1)


if __name__ == "__main__":
    main()
