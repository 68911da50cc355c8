#!/usr/bin/env bash
# A profile-guided build of outrigger (issue 17): build it instrumented, run it through the
# training below, merge the counts, build again with them. The result is
# target/pgo/x86_64-unknown-linux-gnu/release/outrigger; compare it with the plain build by
# passing it as BIN to bench/per_request.sh or to bench/compare.sh (with BASELINE= the plain
# build). Tried and not shipped: docs/benchmarks.md, "a profile-guided build".
#
#   bash bench/pgo.sh            # about 20 minutes on 2 cores (two fat-LTO builds)
#   TRAIN_ONLY=1 bash bench/pgo.sh   # retrain and rebuild, keeping the instrumented build
#
# The training covers more than the benchmarks' hot GET, because a profile marks what it
# never saw as cold and an untrained path can come out slower than with no profile at all:
# plain, resilient and all-features configurations, 2 B and 4 KiB answers, a 20% flaky
# origin, an origin answering only 503 (retries and fallback; an open breaker), distinct
# queries (store writes), POST bodies, HTTP/2 (h2c), the admin endpoints, the access log.
# llvm-profdata must come from the same LLVM as rustc; it is installed (Debian's llvm-N)
# when missing. All traffic stays on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
PROF=$PWD/target/pgo-data
LLVM=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need "llvm-profdata-$LLVM" "llvm-$LLVM"; need wrk wrk; need nginx nginx-light; need curl curl

# 1. The instrumented build. --target keeps the flags off build scripts and proc macros.
if [ -z "${TRAIN_ONLY:-}" ]; then
  RUSTFLAGS="-Cprofile-generate=$PROF/raw" cargo build --release --quiet --target "$TARGET" --target-dir target/pgo-gen
fi
GEN=target/pgo-gen/$TARGET/release/outrigger
rm -rf "$PROF"; mkdir -p "$PROF/raw"

# 2. Training.
WORK=$(mktemp -d)
PIDS=()
TRAINEE=""   # the proxy being trained, while it runs
cleanup() { for p in "${PIDS[@]}" $TRAINEE; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ORIGIN=127.0.0.1:18580
source bench/origin.sh
start_origin "$ORIGIN" 2048
cat > "$WORK/distinct.lua" <<'LUA'
local n = 0
request = function() n = n + 1; return wrk.format("GET", "/small?n=" .. n) end
LUA
head -c 10240 /dev/zero | tr "\\0" p > "$WORK/body"

# train NAME LOG-LEVEL DEFAULTS: one instrumented proxy through the whole workload.
train() {
  printf 'listen: 127.0.0.1:18582\nadmin_listen: 127.0.0.1:18583\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\n%s' \
    "$ORIGIN" "$3" > "$WORK/$1.yaml"
  LLVM_PROFILE_FILE="$PROF/raw/$1-%m_%p.profraw" "$GEN" --config "$WORK/$1.yaml" --threads 1 --log-level "$2" > /dev/null &
  local pid=$!; TRAINEE=$pid
  for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18582/small && break; sleep 0.1; done
  curl -sf -o /dev/null http://127.0.0.1:18582/small || { echo "$1: the proxy does not answer" >&2; exit 1; }
  local p=http://127.0.0.1:18582
  wrk -t1 -c64 -d8s "$p/small" > /dev/null
  wrk -t1 -c64 -d3s "$p/4k" > /dev/null
  wrk -t1 -c64 -d3s "$p/flaky" > /dev/null
  wrk -t1 -c16 -d2s -s "$WORK/distinct.lua" "$p" > /dev/null
  wrk -t1 -c16 -d2s "$p/fail" > /dev/null
  for _ in $(seq 100); do curl -s -o /dev/null --data-binary @"$WORK/body" "$p/post"; done
  # One URL per curl: curl 7.88 fails (exit 16) reusing a prior-knowledge HTTP/2
  # connection for a second URL, against nginx as well.
  for u in small 4k flaky "small?q=1" small small; do curl -s -o /dev/null --http2-prior-knowledge "$p/$u"; done
  for _ in $(seq 20); do curl -s -o /dev/null http://127.0.0.1:18583/metrics -o /dev/null http://127.0.0.1:18583/health; done
  kill -TERM "$pid"; wait "$pid" || true   # a clean exit writes the profile
  TRAINEE=""
}
train on warn "defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
"
train off warn "defaults:
  retry: { attempts: 1 }
  circuit_breaker: { enabled: false }
"
train all info "defaults:
  retry: { attempts: 3, budget: { adaptive: true } }
  stale_if_error: { max_age: 5m }
  concurrency: { initial: 16, min: 2, max: 512 }
  rate_limit: { rate: 1000000/s, burst: 1000000 }
  hedge: { delay: 1s, max_ratio: 0.05 }
"
train fallback warn "defaults:
  retry: { attempts: 3, backoff: { base: 1ms, max: 1ms, jitter: none }, budget: { adaptive: false, ratio: 10.0, min_per_second: 100000 } }
  stale_if_error: { max_age: 5m }
  circuit_breaker: { enabled: false }
  fallback: { status: 200, body: fallback }
"

# 3. Merge, 4. the optimised build.
"llvm-profdata-$LLVM" merge -o "$PROF/merged.profdata" "$PROF"/raw/*.profraw
RUSTFLAGS="-Cprofile-use=$PROF/merged.profdata" cargo build --release --quiet --target "$TARGET" --target-dir target/pgo
echo "built target/pgo/$TARGET/release/outrigger from $(ls "$PROF"/raw | wc -l) profiles"
