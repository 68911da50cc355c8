#!/usr/bin/env bash
# Issue 14: outrigger against haproxy in front of the same flaky backend, at a fixed request
# rate (open loop), through the SPEC §7.1 and §7.2 scenarios:
#
#   flaky-50     20% random 503, 50 req/s
#   flaky-1000   20% random 503, 1,000 req/s
#   outage       every answer 503, 100 req/s for 20 s
#   flap         20% random 503 -> all 503 -> healthy, 100 req/s
#   slow-tail    5% of answers 300 ms late, 200 req/s (outrigger with and without hedging)
#
# Prints success, upstream requests per client request and p50/p99 per target, writes
# bench/results/retry-harness.tsv and the issue-14 block of docs/resilience.md.
#
#   bash bench/retry-harness.sh            # full run, about 6 minutes
#   SECONDS_SCALE=0.25 bash bench/retry-harness.sh   # smoke run (phases 4x shorter)
#   TOOLS=debug bash bench/retry-harness.sh           # backend and load generator unoptimised
#
# Product defaults for both proxies, breaker off (SPEC §7.1 measures it so): haproxy with
# `retries 2` and `retry-on 503 conn-failure`, outrigger with its built-in retry policy
# (adaptive budget, default backoff), one worker thread each, logs at error level for
# both. Hedging uses `hedge: { delay: auto, max_ratio: 0.1 }`. Every process started here
# is stopped by its PID; all traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SECONDS_SCALE:-1}
OUT=bench/results
mkdir -p "$OUT"

command -v haproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }
# TOOLS=debug uses debug builds of the backend and the load generator (they skip compiling
# the dev-dependencies in release); outrigger itself is always the release build.
TOOLS=${TOOLS:-release}
cargo build --release --quiet --bin outrigger
if [ "$TOOLS" = release ]; then
  cargo build --release --quiet --example flaky_backend --example retry_load
else
  cargo build --quiet --example flaky_backend --example retry_load
fi
BIN=target/release/outrigger
BACKEND_BIN=target/$TOOLS/examples/flaky_backend
LOAD=target/$TOOLS/examples/retry_load

BACKEND=127.0.0.1:18181
HAPROXY=127.0.0.1:18182
OUTRIGGER=127.0.0.1:18183
ADMIN=127.0.0.1:18184
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  return 1
}

"$BACKEND_BIN" "$BACKEND" &
PIDS+=($!)
wait_port "$BACKEND"

cat > "$WORK/haproxy.cfg" <<CFG
global
  maxconn 4096
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 10s
  retries 2
  retry-on 503 conn-failure
frontend f
  bind $HAPROXY
  default_backend b
backend b
  http-reuse always
  server s1 $BACKEND
CFG

write_outrigger_config() {
  cat > "$WORK/outrigger.yaml" <<CFG
listen: $OUTRIGGER
admin_listen: $ADMIN
worker_threads: 1
upstream:
  url: http://$BACKEND
defaults:
  circuit_breaker: { enabled: false }
$1
CFG
}

# start_target NAME: starts the proxy; sets URL and TARGET_PID
start_target() {
  case $1 in
    haproxy)
      haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
      TARGET_PID=$!; URL="http://$HAPROXY/item"; wait_port "$HAPROXY" ;;
    outrigger|outrigger+hedge)
      if [ "$1" = outrigger ]; then write_outrigger_config ""
      else write_outrigger_config "  hedge: { delay: auto, max_ratio: 0.1 }"; fi
      "$BIN" --config "$WORK/outrigger.yaml" --log-level error >/dev/null 2>&1 &
      TARGET_PID=$!; URL="http://$OUTRIGGER/item"; wait_port "$OUTRIGGER" ;;
  esac
  PIDS+=("$TARGET_PID")
}

stop_target() {
  kill "$TARGET_PID" 2>/dev/null || true
  wait "$TARGET_PID" 2>/dev/null || true
}

secs() { python3 -c "print(max(1, round($1 * $SCALE)))"; }

TSV=$OUT/retry-harness.tsv
printf 'scenario\ttarget\tphase\trate\tseconds\tsent\tok\tupstream\tp50_ms\tp99_ms\trecovered_s\n' > "$TSV"

# run SCENARIO RATE TARGETS PHASE...
run() {
  local scenario=$1 rate=$2 targets=$3; shift 3
  local phases=()
  for p in "$@"; do phases+=("$(secs "${p%%:*}"):${p#*:}"); done
  for target in $targets; do
    start_target "$target"
    "$LOAD" "$URL" "http://$BACKEND" "$rate" "${phases[@]}" | while IFS=$'\t' read -r phase s sent ok up p50 p99 rec; do
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$scenario" "$target" "$phase" "$rate" "$s" "$sent" "$ok" "$up" "$p50" "$p99" "$rec" | tee -a "$TSV"
    done
    stop_target
  done
}

BOTH="haproxy outrigger"
run flaky-50 50 "$BOTH" "20:fail=20,slow=0"
run flaky-1000 1000 "$BOTH" "20:fail=20,slow=0"
run outage 100 "$BOTH" "20:fail=100,slow=0"
run flap 100 "$BOTH" "10:fail=20,slow=0" "10:fail=100,slow=0" "15:fail=0,slow=0"
run slow-tail 200 "haproxy outrigger outrigger+hedge" "20:fail=0,slow=5,slow_ms=300"

TOOLS=$TOOLS python3 bench/retry-report.py "$TSV" docs/resilience.md
