#!/usr/bin/env bash
# Instructions per plain-HTTP request through two builds of outrigger, counted by callgrind
# (repeatable on a loaded machine, unlike wall-clock time). Issue 18 uses it to show that
# the gRPC hooks do not make the plain-HTTP request path dearer.
#
#   bash bench/callgrind-plain.sh BEFORE_BINARY AFTER_BINARY   # ROUNDS=2 N1=200 N2=1200
#
# Each run: outrigger (--threads 1, default config, nginx as an HTTP/1.1 upstream answering
# 200 "ok") under callgrind, N keep-alive GETs from one client, then SIGTERM. A run with N1
# requests and one with N2 are subtracted, so start-up and shutdown cancel out:
# instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1). The builds alternate (before,
# after, before, after, ...). Loopback only; processes started here are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1 AFTER=$2
ROUNDS=${ROUNDS:-2} N1=${N1:-200} N2=${N2:-1200}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:18360; location / { return 200 "ok"; } } }
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)

count() { # binary requests -> total instructions
  local out="$WORK/cg.$RANDOM"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$1" --upstream http://127.0.0.1:18360 \
    --listen 127.0.0.1:18361 --admin-listen 127.0.0.1:18362 --threads 1 --log-level warn \
    >/dev/null 2>"$WORK/valgrind.err" & local pid=$!
  python3 - "$2" <<'PY'
import http.client, sys, time
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 18362, timeout=5); c.request("GET", "/ready")
        if c.getresponse().status == 200: break
    except OSError: pass
    time.sleep(0.1)
c = http.client.HTTPConnection("127.0.0.1", 18361, timeout=30)
for _ in range(int(sys.argv[1])):
    c.request("GET", "/bench?x=1", headers={"user-agent": "callgrind/1"})
    r = c.getresponse(); r.read(); assert r.status == 200, r.status
PY
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$out"; rm -f "$out"
}

printf 'round\tbuild\tinstructions_per_request\n'
for round in $(seq "$ROUNDS"); do
  for build in before after; do
    bin=$BEFORE; [ "$build" = after ] && bin=$AFTER
    a=$(count "$bin" "$N1"); b=$(count "$bin" "$N2")
    printf '%s\t%s\t%s\n' "$round" "$build" $(( (b - a) / (N2 - N1) ))
  done
done
