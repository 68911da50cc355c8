#!/usr/bin/env bash
# Issue 16: what `scope: shared` costs and how well it holds, against a real redis-server.
#
#   bash bench/shared.sh                       # uses target/debug/outrigger (cargo build)
#   BIN=target/release/outrigger bash bench/shared.sh
#
# Prints, for one replica driven by wrk (4 connections, DURATION seconds, rate limit far
# above what is reached so every request is admitted): requests/s, CPU microseconds per
# request (utime+stime of the outrigger process / requests), wrk's p99, and Redis commands
# per request (INFO commandstats), for `scope: local` and `scope: shared`. Then three
# replicas at a shared 100/s (burst 200) for 20 s: admitted against rate x T + burst +
# 3 x batch. Then Redis frozen (SIGSTOP) during a shared run: p99 and non-2xx answers.
# Everything on 127.0.0.1; every process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need redis-server redis-server; need curl curl
if [[ -z ${BIN:-} ]]; then cargo build --quiet --bin outrigger; BIN=target/debug/outrigger; fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ORIGIN=127.0.0.1:$(port)
cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen $ORIGIN; location / { return 200 "ok"; } } }
NGINX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

REDIS_PORT=$(port)
redis-server --save '' --appendonly no --port "$REDIS_PORT" --bind 127.0.0.1 >/dev/null & REDIS_PID=$!
PIDS+=($REDIS_PID)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.05; done

# start NAME SCOPE RATE BURST -> sets LISTEN_<NAME>, ADMIN_<NAME>, PID_<NAME>
start() {
    local name=$1 scope=$2 rate=$3 burst=$4 listen admin
    listen=127.0.0.1:$(port); admin=127.0.0.1:$(port)
    cat > "$WORK/$name.yaml" <<YAML
upstream: { url: http://$ORIGIN }
shared: { redis: "redis://127.0.0.1:$REDIS_PORT/0", namespace: bench, timeout: 20ms }
defaults:
  retry: { attempts: 1 }
  rate_limit: { rate: $rate, burst: $burst, scope: $scope }
YAML
    "$BIN" --config "$WORK/$name.yaml" --listen "$listen" --admin-listen "$admin" \
        --threads 1 --log-level warn >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PID_$name" %s $!; printf -v "LISTEN_$name" %s "$listen"; printf -v "ADMIN_$name" %s "$admin"
    until curl -fs "http://$admin/ready" >/dev/null; do sleep 0.05; done
    if [[ $scope == shared ]]; then
        until curl -fs "http://$admin/metrics" | grep -q '^outrigger_shared_store_up 1'; do sleep 0.05; done
    fi
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Round trips: script calls (GCRA refills and the announcements; commands inside a script
# are counted by Redis too, so they are left out) plus top-level GET/SET (none here).
redis_calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ {n += $3} END {print n + 0}'; }
ok_count() { curl -fs "http://$1/metrics" | awk '/^outrigger_requests_total/ && /code="200"/ {n += $NF} END {print n + 0}'; }

one() {   # one NAME SCOPE
    local name=$1 scope=$2 pid listen c0 c1 r0 r1 out reqs p99
    start "$name" "$scope" 1000000/s 1000000
    pid=PID_$name; pid=${!pid}; listen=LISTEN_$name; listen=${!listen}
    wrk -t1 -c4 -d1s "http://$listen/small" >/dev/null   # warm-up
    c0=$(cpu_ticks "$pid"); r0=$(redis_calls)
    out=$(wrk -t1 -c4 -d"${DURATION}s" --latency "http://$listen/small")
    c1=$(cpu_ticks "$pid"); r1=$(redis_calls)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    python3 - "$scope" "$reqs" "$DURATION" "$c0" "$c1" "$r0" "$r1" "$p99" "$(getconf CLK_TCK)" <<'PY'
import sys
scope, reqs, dur, c0, c1, r0, r1, p99, hz = sys.argv[1:]
reqs = int(reqs)
cpu_us = (int(c1) - int(c0)) / int(hz) * 1e6 / reqs
print(f"{scope:7} {reqs/float(dur):8.0f} req/s  {cpu_us:6.1f} us CPU/request  p99 {p99:>8}  "
      f"Redis round trips/request {(int(r1)-int(r0))/reqs:.4f}")
PY
    kill "$pid"
}

echo "== one replica, wrk -c4 for ${DURATION}s, every request admitted ($BIN)"
one l1 local; one s1 shared; one l2 local; one s2 shared

echo "== three replicas, shared 100/s burst 200, 20 s"
start a shared 100/s 200; start b shared 100/s 200; start c shared 100/s 200
t0=$(date +%s.%N)
for n in a b c; do l=LISTEN_$n; wrk -t1 -c2 -d20s "http://${!l}/q" >/dev/null & done
wait_wrk() { while pgrep -P $$ wrk >/dev/null; do sleep 0.2; done; }
wait_wrk
t1=$(date +%s.%N)
admitted=$(( $(ok_count "$ADMIN_a") + $(ok_count "$ADMIN_b") + $(ok_count "$ADMIN_c") ))
python3 - "$admitted" "$t0" "$t1" <<'PY'
import sys
n, t0, t1 = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
T = t1 - t0
bound = 100 * T + 200 + 3 * 2
print(f"admitted {n} in {T:.1f} s; bound rate x T + burst + 3 x batch(2) = {bound:.0f}; "
      f"{n / (100 * T + 200):.3f} of rate x T + burst")
PY
for n in a b c; do p=PID_$n; kill "${!p}"; done

echo "== Redis frozen (SIGSTOP) 2 s into a 10 s shared run, timeout 20ms"
start h shared 1000000/s 1000000
( sleep 2; kill -STOP "$REDIS_PID" ) &
out=$(wrk -t1 -c4 -d10s --latency "http://$LISTEN_h/small")
kill -CONT "$REDIS_PID"
echo "$out" | grep -E "requests in|Non-2xx|Socket errors|^ +(50|99)%"
echo "non-2xx absent above = zero errors"
curl -fs "http://$ADMIN_h/metrics" | grep -E '^outrigger_shared_store_(up|errors_total)'
