#!/usr/bin/env bash
# Side-by-side benchmark: outrigger against nginx and haproxy in front of the same origin,
# plus a direct run, in interleaved rounds so that machine drift is shared. Writes
# bench/results/compare.tsv and regenerates docs/benchmarks.md (tables and chart).
#
#   bash bench/compare.sh                 # full run (about 8 minutes)
#   DURATION=1 ROUNDS=1 bash bench/compare.sh   # smoke run
#   BASELINE=/path/to/old/outrigger ONLY=get bash bench/compare.sh
#       # before/after: an older binary with the same config joins the plain GET rounds as
#       # `outrigger-before`; ONLY=get runs those rounds alone and leaves docs/ untouched
#   BIN=target/pgo/x86_64-unknown-linux-gnu/release/outrigger BASELINE=target/release/outrigger \
#       ONLY=get bash bench/compare.sh   # another build as outrigger-* (bench/pgo.sh's)
#
# The machine has 2 cores shared by wrk, the origin and the proxy under test; every proxy
# gets one worker thread. All traffic stays on 127.0.0.1; every process started here is
# stopped by PID when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
BASELINE=${BASELINE:-}
ONLY=${ONLY:-all}
OUT=bench/results
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need haproxy haproxy; need curl curl; need python3 python3
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=target/release/outrigger; fi
# Another build's figures must not land in docs/ under the outrigger-* names.
if [ "$BIN" != target/release/outrigger ] && [ "$ONLY" != get ]; then
  echo "BIN= is for before/after runs: give ONLY=get (docs/ are then left alone)" >&2; exit 2
fi
cargo build --release --quiet --example floor   # bench/peers/floor.rs, the minimal hyper proxy
ulimit -n "$(ulimit -Hn)"   # the hard limit here is 20000 descriptors

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18080
source bench/origin.sh
start_origin "$ORIGIN" 20000

# nginx as a reverse proxy: one worker, upstream keep-alive.
start_nginx_proxy 127.0.0.1:18201 "$ORIGIN" 20000

# haproxy: one thread, keep-alive both sides; retries 503 like outrigger does.
cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 9000   # haproxy needs about two descriptors per connection
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
  retries 2
  retry-on 503 conn-failure
frontend fe
  bind 127.0.0.1:18202
  default_backend be
backend be
  server s1 $ORIGIN maxconn 2000
HAP
haproxy -f "$WORK/haproxy.cfg" -db > "$WORK/haproxy.log" 2>&1 & PIDS+=($!); HAPROXY_PID=$!

# The floor: a minimal hyper proxy (bench/peers/floor.rs), one current-thread runtime.
target/release/examples/floor 127.0.0.1:18209 "$ORIGIN" & PIDS+=($!); FLOOR_PID=$!

start_outrigger() { # name port yaml-extra log-level [upstream] [binary]
  printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\n%s' \
    "$2" $(($2 + 100)) "${5:-$ORIGIN}" "$3" > "$WORK/$1.yaml"
  "${6:-$BIN}" --config "$WORK/$1.yaml" --threads 1 --log-level "$4" > /dev/null 2>"$WORK/$1.err" & PIDS+=($!)
  eval "PID_$1=$!"
}
start_outrigger off 18203 "defaults:
  retry: { attempts: 1 }
  circuit_breaker: { enabled: false }
" warn
start_outrigger on 18204 "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
" warn
start_outrigger onlog 18205 "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
" info
start_outrigger fallback 18206 "defaults:
  circuit_breaker: { min_requests: 1, open_duration: 1h }
  fallback: { status: 200, body: ok }
" warn 127.0.0.1:18099
GET_TARGETS="direct nginx haproxy floor outrigger-off outrigger-on outrigger-on+log"
if [ -n "$BASELINE" ]; then
  start_outrigger before 18208 "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
" warn "$ORIGIN" "$BASELINE"
  GET_TARGETS="$GET_TARGETS outrigger-before"
fi
sleep 0.3
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1)

declare -A PORT=([direct]=18080 [nginx]=18201 [haproxy]=18202 [floor]=18209 [outrigger-off]=18203 [outrigger-on]=18204 [outrigger-on+log]=18205 [outrigger-fallback]=18206)
declare -A PID=([direct]="" [nginx]=$NGINX_WORKER [haproxy]=$HAPROXY_PID [floor]=$FLOOR_PID [outrigger-off]=$PID_off [outrigger-on]=$PID_on [outrigger-on+log]=$PID_onlog [outrigger-fallback]=$PID_fallback)
if [ -n "$BASELINE" ]; then PORT[outrigger-before]=18208; PID[outrigger-before]=$PID_before; fi

for t in "${!PORT[@]}"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${PORT[$t]}/small" && break; sleep 0.05; done
done
for t in $GET_TARGETS; do
  for path in small 4k; do
    size=$(curl -s "http://127.0.0.1:${PORT[$t]}/$path" | wc -c)
    want=$([ "$path" = small ] && echo 2 || echo 4096)
    [ "$size" = "$want" ] || { echo "$t answers /$path with $size bytes, not $want"; exit 1; }
  done
done
curl -s -o /dev/null "http://127.0.0.1:${PORT[outrigger-fallback]}/small"   # opens the circuit
[ "$(curl -s "http://127.0.0.1:${PORT[outrigger-fallback]}/small")" = ok ] || { echo "fallback target is wrong"; exit 1; }

TSV="$OUT/compare.tsv"
[ "$ONLY" = get ] && TSV="$OUT/compare-get.tsv"   # a partial run leaves the full results alone
printf 'scenario\ttarget\tconns\tround\treq_per_s\tp50_ms\tp99_ms\tcpu_us_per_req\tpeak_rss_mib\terrors\tnon2xx\n' > "$TSV"
ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.3f", v}' <<<"$1"; }

run() { # scenario target path conns round
  local pid=${PID[$2]} before=0 after=0 out
  [ -n "$pid" ] && before=$(awk '{print $14+$15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c"$4" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$2]}/$3" 2>&1)
  [ -n "$pid" ] && after=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local reqs rps p50 p99 errors non2xx cpu rss
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out"); errors=${errors:-0}
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); non2xx=${non2xx:-0}
  cpu=NA; rss=NA
  if [ -n "$pid" ]; then
    cpu=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
    rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$4" "$5" "$rps" "$p50" "$p99" "$cpu" "$rss" "$errors" "$non2xx" >> "$TSV"
  printf '  %-14s %-20s c=%-5s %10s req/s  p99 %8s ms  cpu %6s us/req  rss %6s MiB  non2xx %s\n' "$1" "$2" "$4" "$rps" "$p99" "$cpu" "$rss" "$non2xx"
}

echo "machine: $(nproc) cores shared by wrk (1 thread), the origin (nginx, 1 worker) and the proxy (1 worker)"
echo "plain GET, $CONNS connections, ${ROUNDS} interleaved rounds of ${DURATION}s"
for round in $(seq "$ROUNDS"); do
  for path in small 4k; do
    for t in $GET_TARGETS; do
      run "get-$path" "$t" "$path" "$CONNS" "$round"
    done
  done
done
if [ "$ONLY" = get ]; then echo "wrote $TSV (plain GET rounds only)"; exit 0; fi
echo "fallback with the circuit open (against outrigger-on proxying)"
for round in $(seq "$ROUNDS"); do
  run fallback outrigger-fallback small "$CONNS" "$round"
  run fallback outrigger-on small "$CONNS" "$round"
done
echo "origin failing 20% with 503: client success rate"
for round in $(seq "$ROUNDS"); do
  for t in direct haproxy outrigger-on; do run flaky-20pct "$t" flaky "$CONNS" "$round"; done
done
echo "connection scaling"
for c in 16 64 256 1024; do
  for t in nginx haproxy outrigger-on; do run scaling "$t" small "$c" 1; done
done

echo "memory with 10,000 idle keep-alive connections"
cat > "$WORK/idle.py" <<'PY'
import socket, sys, time
port, n, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
socks = []
# One request at a time, then the connection stays open and idle: this measures what an
# idle keep-alive connection costs, not the peak of 10,000 requests in flight at once.
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n")
    s.recv(4096)
    socks.append(s)
time.sleep(1)
rss = []
for pid in pids:
    with open(f"/proc/{pid}/status") as f:
        rss.append(next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024)
print(" ".join(f"{r:.1f}" for r in rss))
PY
# A fresh outrigger (same config as outrigger-on), so earlier load does not count.
start_outrigger idle 18207 "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
" warn
PORT[outrigger-idle]=18207; PID[outrigger-idle]=$PID_idle
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18207/small" && break; sleep 0.05; done
# haproxy is left out: its maxconn must stay under half the descriptor limit here.
for t in nginx outrigger-idle; do
  before=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/${PID[$t]}/status")
  after=$(python3 "$WORK/idle.py" "${PORT[$t]}" 10000 "${PID[$t]}")
  printf 'idle-10k\t%s\t10000\t1\tNA\tNA\tNA\tNA\t%s\t0\t0\n' "$t" "$after" >> "$TSV"
  printf '  %-20s RSS %s MiB before, %s MiB with 10,000 idle connections\n' "$t" "$before" "$after"
  sleep 1
done

python3 bench/report.py "$TSV" docs/benchmarks.md docs/benchmarks.svg "$DURATION" "$ROUNDS" "$CONNS"
echo "wrote $TSV, docs/benchmarks.md and docs/benchmarks.svg"
