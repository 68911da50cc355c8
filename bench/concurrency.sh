#!/usr/bin/env bash
# The adaptive concurrency limit side by side (issue 15, SPEC §7.3), one command:
#
#   bash bench/concurrency.sh              # about 6 minutes
#   SECONDS_RUN=5 SKIP_CPU=1 bash bench/concurrency.sh   # smoke run
#   PARTS=healthy bash bench/concurrency.sh               # only part 3 (keeps 1 and 2's files)
#
# 1. Against the SPEC §7.3 backend (8 slots x 20 ms, 503 at once when 16 already wait),
#    64 closed-loop clients pausing 50 ms after each answer: direct, haproxy (retries 2,
#    retry-on 503 conn-failure), outrigger without and with `concurrency: {}`.
#    Successful answers/s, p99 of successful answers, upstream requests per client request,
#    and the limit scraped from /metrics each second.
# 2. Capacity change: the backend goes from 8 to 16 slots half-way; the limit over time.
# 3. A healthy fast backend: instructions per request with concurrency on and off, counted
#    by callgrind (repeatable on this shared, loaded machine), plus CPU seconds per request
#    from /proc in interleaved rounds (noisy: other builds run here).
#
# Writes bench/results/concurrency/*.tsv and rewrites the issue-15 block of
# docs/resilience.md. Everything listens on 127.0.0.1; every process started here is
# stopped by its PID when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${SECONDS_RUN:-20}
WARMUP=${WARMUP:-3}
SKIP_CPU=${SKIP_CPU:-}
PARTS=${PARTS:-side capacity healthy}
part() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=bench/results/concurrency
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need haproxy haproxy; need valgrind valgrind; need python3 python3
# BIN=target/debug/outrigger for a smoke run of the script itself (figures meaningless).
BIN=${BIN:-target/release/outrigger}
[ "$BIN" = target/release/outrigger ] && cargo build --release --quiet --bin outrigger
cargo build --quiet --example capacity_bench
TOOL=target/debug/examples/capacity_bench

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

backend() { # port slots [extra args]: starts the capacity-limited backend, sets BACKEND_PID
  "$TOOL" backend --listen "127.0.0.1:$1" --slots "$2" --seconds 600 "${@:3}" 2>>"$WORK/backend.log" &
  BACKEND_PID=$!; PIDS+=($BACKEND_PID); wait_port "$1"
}

outrigger() { # port admin backend-port extra-yaml [wrapper...]: sets PROXY_PID
  printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nworker_threads: 1\nupstream: { url: "http://127.0.0.1:%s" }\n%s' \
    "$1" "$2" "$3" "$4" > "$WORK/o-$1.yaml"
  OUTRIGGER_LOG_LEVEL=warn "${@:5}" "$BIN" --config "$WORK/o-$1.yaml" >"$WORK/o-$1.log" 2>&1 &
  PROXY_PID=$!; PIDS+=($PROXY_PID); wait_port "$2"
}

haproxy_up() { # port backend-port: sets PROXY_PID
  cat > "$WORK/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 4000
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
  bind 127.0.0.1:$1
  default_backend be
backend be
  server s1 127.0.0.1:$2
HAP
  haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
  PROXY_PID=$!; PIDS+=($PROXY_PID); wait_port "$1"
}

load() { # name target-port backend-port [admin-port] [warmup] [seconds]
  local metrics=()
  [ -n "${4:-}" ] && metrics=(--metrics "http://127.0.0.1:$4/metrics")
  "$TOOL" load --target "http://127.0.0.1:$2/work" --count "http://127.0.0.1:$3/__count" \
    --clients 64 --pause-ms 50 --warmup "${5:-$WARMUP}" --seconds "${6:-$RUN}" \
    --timeline "$OUT/$1.timeline.tsv" "${metrics[@]}" | sed "s/^/name=$1 /" | tee -a "$OUT/side-by-side.txt"
}

if part side; then
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) cores: $(nproc)" | tee "$OUT/side-by-side.txt"

# 1. Side by side.
B=$(port); backend "$B" 8
load direct "$B" "$B"
stop "$BACKEND_PID"

B=$(port); backend "$B" 8; P=$(port); haproxy_up "$P" "$B"
load haproxy "$P" "$B"
stop "$PROXY_PID"; stop "$BACKEND_PID"

for variant in off nobreaker on; do
  case $variant in
    off) extra="" ;;
    nobreaker) extra=$'defaults:\n  circuit_breaker: { enabled: false }\n' ;;
    on) extra=$'defaults:\n  concurrency: {}\n' ;;
  esac
  B=$(port); backend "$B" 8; P=$(port); A=$(port); outrigger "$P" "$A" "$B" "$extra"
  load "outrigger-$variant" "$P" "$B" "$A"
  stop "$PROXY_PID"; stop "$BACKEND_PID"
done
fi

# 2. Capacity 8 -> 16 slots half-way (the backend counts from its own start).
if part capacity; then
HALF=$(( (RUN + WARMUP) / 2 + 5 ))
t0=$(date +%s%N)
B=$(port); backend "$B" 8 --switch-at "$HALF" --switch-slots 16
P=$(port); A=$(port); outrigger "$P" "$A" "$B" $'defaults:\n  concurrency: {}\n'
t1=$(date +%s%N)
load capacity-change "$P" "$B" "$A" 0 $(( 2 * HALF ))
# The second of the load's timeline at which the backend switched.
python3 -c "print('switch_at=%.1f' % ($HALF - ($t1 - $t0) / 1e9))" > "$OUT/capacity-change.switch"
stop "$PROXY_PID"; stop "$BACKEND_PID"
fi

# 3. Healthy fast backend: cost per request, concurrency on against off. `min: 16` with 8
# clients: the limit never sheds here, so both variants serve every request upstream.
if [ -z "$SKIP_CPU" ] && part healthy; then
  : > "$OUT/healthy.tsv"
  B=$(port); backend "$B" 0
  fast() { # variant seconds requests [wrapper...]: upstream requests served go to $WORK/n
    local extra=""; [ "$1" = on ] && extra=$'defaults:\n  concurrency: { min: 16, max: 4096 }\n'
    local before after count=()
    [ "$3" != 0 ] && count=(--requests "$3")
    P=$(port); A=$(port); outrigger "$P" "$A" "$B" "$extra" "${@:4}"
    sleep 1
    before=$(curl -s "http://127.0.0.1:$B/__count")
    "$TOOL" load --target "http://127.0.0.1:$P/work" --clients 8 --pause-ms 0 --warmup 0 --seconds "$2" "${count[@]}" >"$WORK/fast.txt"
    after=$(curl -s "http://127.0.0.1:$B/__count")
    echo $(( after - before )) > "$WORK/n"
    grep -q ' failed_pct=0.0 ' "$WORK/fast.txt" || { echo "healthy run had failures: $(cat "$WORK/fast.txt")" >&2; exit 1; }
  }
  cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  # Interleaved rounds, CPU ticks of the outrigger process per request.
  for round in 1 2 3; do
    for variant in off on; do
      fast "$variant" 5 0; n=$(cat "$WORK/n")
      ticks=$(cpu_of "$PROXY_PID"); stop "$PROXY_PID"
      printf 'cpu\t%s\t%s\t%s\t%s\n' "$round" "$variant" "$n" "$ticks" | tee -a "$OUT/healthy.tsv"
    done
  done
  # Callgrind: instructions of the whole process for two counts of requests, so that
  # start-up and shutdown cancel out.
  for requests in 2000 6000; do
    for variant in off on; do
      cg="$WORK/cg-$variant-$requests.out"
      fast "$variant" 120 "$requests" valgrind --tool=callgrind --callgrind-out-file="$cg"; n=$(cat "$WORK/n")
      stop "$PROXY_PID"
      ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$cg")
      printf 'callgrind\t%s\t%s\t%s\t%s\n' "$requests" "$variant" "$n" "$ir" | tee -a "$OUT/healthy.tsv"
    done
  done
  stop "$BACKEND_PID"
fi

python3 bench/concurrency_report.py "$OUT" docs/resilience.md
