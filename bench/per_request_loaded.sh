#!/usr/bin/env bash
# Instructions per proxied request under load, counted: the proxy runs under valgrind's
# callgrind while wrk keeps C keep-alive connections busy (64 by default, as in
# bench/compare.sh) for D1 and then D2 seconds; per request = (instructions at D2 -
# instructions at D1) / (requests at D2 - requests at D1), which cancels start-up and
# shutdown. bench/per_request.sh counts one request at a time; this one shows what changes
# when many are in flight at once (batched events for the proxy, deeper bursts of
# allocations), which is what the timed runs of bench/compare.sh see.
#
#   bash bench/per_request_loaded.sh                 # floor, outrigger-off, outrigger-on
#   TARGETS=outrigger-on BIN=/path/to/outrigger bash bench/per_request_loaded.sh
#   KEEP=/tmp/cg bash bench/per_request_loaded.sh    # keeps each run's callgrind output
#
# Prints a table and writes bench/results/per_request_loaded.tsv. Under callgrind the proxy
# is about 50 times slower than natively, so wrk's timeout is raised. All traffic stays on
# 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${C:-64}
D1=${D1:-15}
D2=${D2:-45}
OUT=bench/results
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need valgrind valgrind; need nginx nginx-light; need curl curl; need wrk wrk
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/outrigger
fi
cargo build --release --quiet --example floor
FLOOR=target/release/examples/floor

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18390
cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen $ORIGIN; location = /small { return 200 "ok"; } }
}
NGINX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

# The configurations of bench/compare.sh's outrigger-off and outrigger-on.
outrigger_yaml() { # file defaults
  printf 'listen: 127.0.0.1:18392\nadmin_listen: 127.0.0.1:18492\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\n%s' \
    "$ORIGIN" "$2" > "$1"
}
outrigger_yaml "$WORK/off.yaml" "defaults:
  retry: { attempts: 1 }
  circuit_breaker: { enabled: false }
"
outrigger_yaml "$WORK/on.yaml" "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
"

# count TARGET D: prints "requests instructions" for one run of D seconds under wrk.
count() {
  local target=$1 d=$2 cmd
  case $target in
    floor) cmd=("$FLOOR" 127.0.0.1:18392 "$ORIGIN") ;;
    outrigger-off) cmd=("$BIN" --config "$WORK/off.yaml" --threads 1 --log-level warn) ;;
    outrigger-on) cmd=("$BIN" --config "$WORK/on.yaml" --threads 1 --log-level warn) ;;
  esac
  local out="$WORK/callgrind-$target-$d.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" 2>"$WORK/$target-$d.log" >/dev/null &
  local pid=$!
  for _ in $(seq 600); do curl -sf -o /dev/null http://127.0.0.1:18392/small && break; sleep 0.1; done
  wrk -t1 -c"$C" -d"${d}s" --timeout 30s http://127.0.0.1:18392/small > "$WORK/wrk-$target-$d.txt"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  if grep -q 'Non-2xx\|Socket errors' "$WORK/wrk-$target-$d.txt"; then
    cat "$WORK/wrk-$target-$d.txt" >&2; echo "$target: errors under load" >&2; exit 1
  fi
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$out" "$KEEP/"; fi
  echo "$(awk '/requests in/ {print $1}' "$WORK/wrk-$target-$d.txt") $(awk '/^totals:/ {print $2}' "$out")"
}

TSV="$OUT/per_request_loaded.tsv"
printf 'target\tconnections\tinstructions_per_req\n' > "$TSV"
printf '%-15s %12s %22s\n' target connections instructions/request
for target in ${TARGETS:-floor outrigger-off outrigger-on}; do
  first=$(count "$target" "$D1"); second=$(count "$target" "$D2")
  read -r r1 i1 <<< "$first"; read -r r2 i2 <<< "$second"
  ipr=$(awk -v a="$i1" -v b="$i2" -v r1="$r1" -v r2="$r2" 'BEGIN {printf "%.0f", (b - a) / (r2 - r1)}')
  printf '%s\t%s\t%s\n' "$target" "$C" "$ipr" >> "$TSV"
  printf '%-15s %12s %22s\n' "$target" "$C" "$ipr"
done
echo "wrote $TSV"
