#!/usr/bin/env bash
# How much timed CPU-per-request figures move on this machine when nothing changes: one
# build against itself (outrigger-on's config twice), both driven at once, N runs. A ratio
# far from 1.00 here means the timed comparisons of bench/compare.sh and
# bench/resilience_cost.sh cannot resolve a difference of that size; bench/per_request.sh
# counts instructions instead (docs/benchmarks.md, "Cost of resilience, counted and timed").
#
#   bash bench/aa_noise.sh              # 8 runs of 3 s, 32 connections each
#   N=20 D=5 CONNS=64 bash bench/aa_noise.sh
#
# CPU read in nanoseconds from /proc/PID/task/*/schedstat. All traffic stays on 127.0.0.1;
# every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-8}
D=${D:-3}
CONNS=${CONNS:-32}

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl
cargo build --release --quiet
BIN=target/release/outrigger

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18680
cat > "$WORK/origin.conf" <<NGINX
worker_processes 2;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen $ORIGIN; location = /small { return 200 "ok"; } }
}
NGINX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

start() { # name port
  printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\ndefaults:\n  retry: { attempts: 3 }\n  stale_if_error: { max_age: 5m }\n' \
    "$2" $(($2 + 100)) "$ORIGIN" > "$WORK/$1.yaml"
  "$BIN" --config "$WORK/$1.yaml" --threads 1 --log-level warn > /dev/null 2>"$WORK/$1.err" & PIDS+=($!)
  eval "PID_$1=$!"
}
start a 18681
start b 18682
for port in 18681 18682; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/small" && break; sleep 0.05; done
done

cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
both() { # seconds: drives both at once, results in $WORK/a and $WORK/b
  wrk -t1 -c"$CONNS" -d"$1s" http://127.0.0.1:18681/small > "$WORK/a" 2>&1 & local w=$!
  wrk -t1 -c"$CONNS" -d"$1s" http://127.0.0.1:18682/small > "$WORK/b" 2>&1
  wait "$w"
}
both 1   # warm both
echo "one build against itself, both at once, $CONNS connections each, runs of ${D}s"
for i in $(seq "$N"); do
  a0=$(cpu_ns "$PID_a"); b0=$(cpu_ns "$PID_b")
  both "$D"
  a1=$(cpu_ns "$PID_a"); b1=$(cpu_ns "$PID_b")
  na=$(awk '/requests in/ {print $1}' "$WORK/a"); nb=$(awk '/requests in/ {print $1}' "$WORK/b")
  awk -v i="$i" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v na="$na" -v nb="$nb" \
    'BEGIN {pa = a / na; pb = b / nb; printf "  run %2d  A %7d req %7.0f ns/req   B %7d req %7.0f ns/req   B/A %.3f\n", i, na, pa, nb, pb, pb / pa}'
done
