#!/usr/bin/env bash
# Quick loopback measurements behind the issue notes: throughput, p99 latency and peak RSS
# of outrigger against the same origin directly, plus the retry and breaker scenarios.
#
#   bash bench/quick.sh            # needs wrk, nginx, curl (installed with apt-get if missing)
#
# Everything listens on 127.0.0.1 only; every process started here is stopped by PID at the
# end. The machine's two cores are shared by wrk, the origin and the proxy, so absolute
# figures are pessimistic; compare rows of one run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl
cargo build --release --quiet
BIN=target/release/outrigger

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18080
DOWN=127.0.0.1:18089     # nothing listens here
PROXY=127.0.0.1:18081
ADMIN=127.0.0.1:18091

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen $ORIGIN;
    keepalive_requests 1000000;
    location / { return 200 "ok"; }
    location /fail { return 503 "down"; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://$ORIGIN/" >/dev/null && break; sleep 0.05; done

start_proxy() { # $1 = yaml body appended after the listeners
  printf 'listen: %s\nadmin_listen: %s\n%s' "$PROXY" "$ADMIN" "$1" > "$WORK/o.yaml"
  "$BIN" --config "$WORK/o.yaml" --threads 1 --log-level warn > "$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!; PIDS+=($PROXY_PID)
  for _ in $(seq 100); do curl -sf "http://$ADMIN/ready" >/dev/null && return; sleep 0.05; done
  echo "proxy did not start"; cat "$WORK/proxy.log"; exit 1
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

run() { # $1 label, $2 url, $3 pid to account (or empty)
  local before after out rps p50 p99 reqs cpu rss
  [ -n "$3" ] && before=$(cpu_ticks "$3")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$2")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  cpu="-"; rss="-"
  if [ -n "$3" ]; then
    after=$(cpu_ticks "$3")
    cpu=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
    rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$3/status")
  fi
  printf '%-44s %10s %9s %9s %10s %9s\n' "$1" "$rps" "$p50" "$p99" "$cpu" "$rss"
}

printf '%-44s %10s %9s %9s %10s %9s\n' scenario "req/s" p50 p99 "cpu_us/req" "rss_MiB"
run "direct to origin (nginx, 1 worker)" "http://$ORIGIN/" ""

start_proxy "upstream: { url: http://$ORIGIN }
defaults:
  retry: { attempts: 1 }
  circuit_breaker: { enabled: false }
"
run "outrigger, retries and breaker off" "http://$PROXY/" "$PROXY_PID"
stop_proxy

start_proxy "upstream: { url: http://$ORIGIN }
"
run "outrigger, defaults (retries, breaker on)" "http://$PROXY/" "$PROXY_PID"
stop_proxy

start_proxy "upstream: { url: http://$DOWN }
defaults:
  circuit_breaker: { min_requests: 1, open_duration: 5m }
  fallback: { status: 200, body: '{\"items\": []}' }
"
curl -s "http://$PROXY/" >/dev/null
run "outrigger, circuit open, fallback" "http://$PROXY/" "$PROXY_PID"
stop_proxy

echo
echo "full outage (origin answers 503), breaker off: upstream attempts per client request"
for budget in "{ ratio: 0.2, min_per_second: 10 }" "{ ratio: 1000, min_per_second: 0 }"; do
  start_proxy "upstream: { url: http://$ORIGIN }
defaults:
  retry: { backoff: { base: 1ms, max: 5ms }, budget: $budget }
  circuit_breaker: { enabled: false }
"
  wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://$PROXY/fail" >/dev/null
  curl -s "http://$ADMIN/metrics" | awk -v b="$budget" '
    /^outrigger_upstream_attempts_total/ {a += $NF}
    /^outrigger_requests_total/ {r += $NF}
    END {printf "  budget %-36s %8d requests %8d attempts  ratio %.2f\n", b, r, a, a / r}'
  stop_proxy
done

echo
echo "recovery: origin down with the circuit open (open_duration 1s), then it comes back"
start_proxy "upstream: { url: http://$DOWN }
defaults:
  retry: { attempts: 1 }
  circuit_breaker: { min_requests: 1, open_duration: 1s }
"
curl -s "http://$PROXY/" >/dev/null
sed -e "s#listen $ORIGIN;#listen $DOWN;#" -e "s#$WORK/nginx.pid#$WORK/nginx2.pid#" "$WORK/nginx.conf" > "$WORK/nginx2.conf"
t0=$(date +%s%N)
nginx -c "$WORK/nginx2.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 1000); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/")" = 200 ] && break
  sleep 0.01
done
t1=$(date +%s%N)
echo "  first 200 through the proxy $(( (t1 - t0) / 1000000 )) ms after the origin started (open_duration 1s, then one half-open probe)"
stop_proxy
