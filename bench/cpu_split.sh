#!/usr/bin/env bash
# Where a request's CPU goes, user space or kernel: nginx, the floor (bench/peers/floor.rs)
# and outrigger-on (the resilience config of bench/compare.sh) behind the same origin, in
# interleaved rounds that go through the six orders of the three in turn (so that each
# target runs first, second and third, after each of the others, equally often in six
# rounds), after one unrecorded warm-up run each. Per round and target: requests, and the
# proxy's user and system CPU per request from /proc/PID/stat; then the median of each
# round's ratio to the floor. A run with non-2xx answers or socket errors stops the script.
# Prints only: docs/ are left alone.
#
#   bash bench/cpu_split.sh                      # 6 rounds of 5 s at 64 connections
#   CONNS=1 ROUNDS=3 bash bench/cpu_split.sh     # one request at a time
#   PIN=1 bash bench/cpu_split.sh                # proxies on CPU 1; wrk and origin on CPU 0
#       (a different setup: wrk and the origin then share one CPU)
#   BIN=/path/to/outrigger bash bench/cpu_split.sh
#
# /proc's split is the kernel's tick sampling: read user and system over several rounds,
# their sum is the firmer figure. All traffic stays on 127.0.0.1; every process started
# here is stopped by PID when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
PIN=${PIN:-}

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl; need python3 python3
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=target/release/outrigger; fi
cargo build --release --quiet --example floor

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18660
source bench/origin.sh
start_origin "$ORIGIN" 1024
start_nginx_proxy 127.0.0.1:18661 "$ORIGIN" 1024
target/release/examples/floor 127.0.0.1:18662 "$ORIGIN" & PIDS+=($!); FLOOR_PID=$!
printf 'listen: 127.0.0.1:18663\nadmin_listen: 127.0.0.1:18763\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\ndefaults:\n  retry: { attempts: 3 }\n  stale_if_error: { max_age: 5m }\n' \
  "$ORIGIN" > "$WORK/on.yaml"
"$BIN" --config "$WORK/on.yaml" --threads 1 --log-level warn > /dev/null & PIDS+=($!); ON_PID=$!
sleep 0.5
NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1 || true)
[ -n "$NGINX_WORKER" ] || { echo "nginx (the proxy) did not start: $WORK/nginx-error.log" >&2; exit 1; }
ORIGIN_MASTER=${PIDS[0]}
declare -A PORT=([nginx]=18661 [floor]=18662 [outrigger-on]=18663)
declare -A PID=([nginx]=$NGINX_WORKER [floor]=$FLOOR_PID [outrigger-on]=$ON_PID)
for t in "${!PORT[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$t]}/small" && break; sleep 0.05; done
done
WRK=(wrk)
if [ -n "$PIN" ]; then
  for p in "${PID[@]}"; do taskset -a -p -c 1 "$p" > /dev/null; done
  for p in "$ORIGIN_MASTER" $(pgrep -P "$ORIGIN_MASTER" || true); do taskset -a -p -c 0 "$p" > /dev/null; done
  WRK=(taskset -c 0 wrk)
fi

TICK=$(getconf CLK_TCK)
ORDERS=("nginx floor outrigger-on" "floor outrigger-on nginx" "outrigger-on nginx floor"
        "nginx outrigger-on floor" "outrigger-on floor nginx" "floor nginx outrigger-on")
ROWS="$WORK/rows"
load() { # target seconds: wrk's report, or the script stops when any answer was not a 2xx
  local report
  report=$("${WRK[@]}" -t1 -c"$CONNS" -d"$2s" "http://127.0.0.1:${PORT[$1]}/small")
  if grep -q 'Non-2xx\|Socket errors' <<< "$report"; then
    echo "$1 answered with errors:" >&2; echo "$report" >&2; exit 1
  fi
  echo "$report"
}
for t in nginx floor outrigger-on; do load "$t" 2 > /dev/null; done   # warm-up, not recorded
printf 'round\ttarget\trequests\tuser_us\tsys_us\n' > "$ROWS"
printf '%-5s %-13s %9s %9s %9s %9s\n' round target requests user_us sys_us total_us
for r in $(seq "$ROUNDS"); do
  for t in ${ORDERS[$(((r - 1) % 6))]}; do
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/${PID[$t]}/stat")
    req=$(load "$t" "$DURATION" | awk '/requests in/ {print $1}')
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/${PID[$t]}/stat")
    line=$(awk -v r="$r" -v t="$t" -v n="$req" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v k="$TICK" \
      'BEGIN { printf "%d\t%s\t%d\t%.2f\t%.2f", r, t, n, u / k * 1e6 / n, s / k * 1e6 / n }')
    echo "$line" >> "$ROWS"
    echo "$line" | awk -F'\t' '{ printf "%-5s %-13s %9s %9s %9s %9.2f\n", $1, $2, $3, $4, $5, $4 + $5 }'
  done
done

python3 - "$ROWS" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
by = {}
for row in rows:
    u, s = float(row["user_us"]), float(row["sys_us"])
    by.setdefault(row["round"], {})[row["target"]] = (u, s, u + s)
print("\nmedian of the rounds' ratios to the floor (user, system, total):")
for t in ("nginx", "outrigger-on"):
    ratios = [[r[t][i] / r["floor"][i] for r in by.values()] for i in range(3)]
    med = [statistics.median(x) for x in ratios]
    spread = [f"{min(x):.2f}-{max(x):.2f}" for x in ratios]
    print(f"  {t:13s} user {med[0]:.2f} ({spread[0]})  system {med[1]:.2f} ({spread[1]})  total {med[2]:.2f} ({spread[2]})")
PY
