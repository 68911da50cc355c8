#!/usr/bin/env bash
# Work per proxied request, counted rather than timed, so the figures repeat whatever else
# the machine is doing: instructions (valgrind's callgrind) and heap allocations (valgrind's
# DHAT) of the proxy process, for outrigger with resilience off and on, the minimal hyper
# proxy of bench/peers/floor.rs, and nginx. Each target runs twice, with N1 and N2 sequential
# GETs on one keep-alive connection; per request = (count at N2 - count at N1) / (N2 - N1),
# which cancels start-up and shutdown.
#
#   bash bench/per_request.sh            # N1=500 N2=2500, about 5 minutes
#   BIN=/path/to/old/outrigger bash bench/per_request.sh   # the same for another binary
#       (allocations counted on BIN itself, or on COUNT_BIN: a plain-malloc build of it)
#       (run once per binary for a before/after; bench/tracing_cost.sh adds traced rows)
#   TARGETS=outrigger-on bash bench/per_request.sh   # only these rows; docs left alone
#       (outrigger-on+log, outrigger-on with its access log, is counted only when named)
#   KEEP=/tmp/cg bash bench/per_request.sh   # also keeps each run's callgrind/DHAT output;
#       python3 bench/callgrind_diff.py compares two of them per function
#   DISTINCT=1 TARGETS=outrigger-on bash bench/per_request.sh   # every GET for a new
#       query (/small?n=1, 2, ...), so each response with a store behind it is a store
#       write (outrigger-on keeps stale copies), which a hot key does at most once a second;
#       writes bench/results/per_request_distinct.tsv and leaves docs alone
#   FAIL=1 bash bench/per_request.sh   # the failure path: the origin answers 503, so each
#       GET is three attempts (1 ms apart) and then the fallback body (outrigger-fail:
#       outrigger-on's retries with a fixed 1 ms backoff, budget and breaker set so that
#       every request makes all three, fallback on), the only target this mode counts (the floor and nginx would
#       pass the 503 through once: nothing to compare); writes
#       bench/results/per_request_fail.tsv and leaves docs alone.
#       An outage is when the proxy must stay cheap, and no other script counts this path.
#   LOAD=64 bash bench/per_request.sh   # instructions per request under load instead:
#       wrk keeps LOAD keep-alive connections busy for D1 and then D2 seconds (15 and 45),
#       per request = (instructions at D2 - at D1) / (requests at D2 - at D1); floor,
#       outrigger-off and outrigger-on by default, about three minutes each; writes
#       bench/results/per_request_loaded.tsv and leaves docs alone. One request at a time
#       hides what many in flight cost (batched wake-ups, deep bursts of allocations),
#       which is what bench/compare.sh's timed runs see. Under callgrind each connection
#       carries a request about every 60 ms rather than every few ms, so a connection's
#       timers (the watchdog's looks) count for more per request than natively.
#   CACHE=1 LOAD=64 bash bench/per_request.sh   # the same under cachegrind's simulated
#       caches (--cache-sim=yes, the host's L1 sizes): instructions, L1 instruction misses
#       and L1 data misses (reads and writes) per request; writes
#       bench/results/per_request_cache.tsv and leaves docs alone.
#
# Prints a table, writes bench/results/per_request.tsv and rewrites its block of
# docs/benchmarks.md (bench/report.py carries the block over when compare.sh regenerates). All traffic stays on 127.0.0.1;
# every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}
N2=${N2:-2500}
LOAD=${LOAD:-}
CACHE=${CACHE:-}
[ -z "$CACHE" ] || [ -n "$LOAD" ] || { echo "CACHE=1 counts under load: give LOAD too" >&2; exit 2; }
DISTINCT=${DISTINCT:-}
FAIL=${FAIL:-}
if [ -n "$FAIL" ]; then
  [ -z "${LOAD:-}" ] || { echo "FAIL=1 counts one request at a time; it does not combine with LOAD" >&2; exit 2; }
  TARGETS=outrigger-fail   # the only target the mode counts (any TARGETS given is replaced)
fi
D1=${D1:-15}
D2=${D2:-45}
OUT=bench/results
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need valgrind valgrind; need nginx nginx-light; need curl curl; need python3 python3
if [ -n "$LOAD" ]; then need wrk wrk; fi
# DHAT counts calls to malloc, and the binary's own cache of freed blocks (src/alloc.rs)
# takes most of them before malloc sees them: allocations are counted on a build without
# it (feature plain-malloc, its own target directory), instructions on the real one.
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/outrigger
  if [ -z "$LOAD" ]; then
    cargo build --release --quiet --features plain-malloc --target-dir target/plain-malloc
    COUNT_BIN=target/plain-malloc/release/outrigger
  fi
fi
COUNT_BIN=${COUNT_BIN:-$BIN}
cargo build --release --quiet --example floor
FLOOR=target/release/examples/floor

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18380
cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen $ORIGIN;
    location = /small { return 200 "ok"; }
    location = /fail { return 503 "down"; }
  }
}
NGINX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

# nginx as the proxy: one process (no master), so valgrind sees all of its work.
cat > "$WORK/nginx.conf" <<NGINX
master_process off;
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream origin { server $ORIGIN; keepalive 16; }
  server {
    listen 127.0.0.1:18381;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

# The configurations of bench/compare.sh's outrigger-off and outrigger-on.
outrigger_yaml() { # file defaults
  printf 'listen: 127.0.0.1:18382\nadmin_listen: 127.0.0.1:18482\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\n%s' \
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
# Everything that can be on and not change what a request does (issue 17: the figures with
# the later issues' features on): outrigger-on plus the adaptive concurrency limit, a rate
# limit never reached, and hedging with a delay never reached (its timer is armed on every
# request). outrigger-shared is the same with the rate limit and the stale copies shared
# through a real redis-server. Not here: the fresh cache, which answers these GETs from
# memory (another path, not a cost on this one), and tracing (bench/tracing_cost.sh).
ALL="defaults:
  retry: { attempts: 3, budget: { adaptive: true } }
  stale_if_error: { max_age: 5m }
  concurrency: { initial: 16, min: 2, max: 512 }
  rate_limit: { rate: 1000000/s, burst: 1000000 }
  hedge: { delay: 1s, max_ratio: 0.05 }
"
outrigger_yaml "$WORK/all.yaml" "$ALL"
# The failure path (FAIL=1): outrigger-on's three attempts with a short fixed backoff (the
# default's waits would only stretch the run), a static budget with room for every retry
# (the adaptive one learns that retries fail and stops granting them, so attempts per
# request would drift with the run's length), no breaker (an open one would stop the
# attempts too), a fallback body to answer with: the dearest a failing GET can be.
outrigger_yaml "$WORK/fail.yaml" "defaults:
  retry: { attempts: 3, backoff: { base: 1ms, max: 1ms, jitter: none }, budget: { adaptive: false, ratio: 10.0, min_per_second: 100000 } }
  stale_if_error: { max_age: 5m }
  circuit_breaker: { enabled: false }
  fallback: { status: 200, body: fallback }
"
REDIS_PORT=18383
outrigger_yaml "$WORK/shared.yaml" "$(printf '%s' "$ALL" | sed 's/burst: 1000000 }/burst: 1000000, scope: shared }/; s/max_age: 5m }/max_age: 5m, scope: shared }/')
shared: { redis: \"redis://127.0.0.1:$REDIS_PORT/0\" }
"
case " ${TARGETS:-floor outrigger-off outrigger-on outrigger-all outrigger-shared nginx} " in
  *" outrigger-shared "*)
    need redis-server redis-server
    redis-server --save '' --appendonly no --port "$REDIS_PORT" --bind 127.0.0.1 >/dev/null & PIDS+=($!) ;;
esac

cat > "$WORK/drive.py" <<'PY'
import http.client, os, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
distinct = bool(os.environ.get("DISTINCT"))
path, want = ("/fail", b"fallback") if os.environ.get("FAIL") else ("/small", b"ok")
for _ in range(600):  # wait (up to 60 s under valgrind) for the proxy to listen
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/small"); r = conn.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"nothing answers on {port}")
for i in range(n - 1):
    conn.request("GET", f"{path}?n={i}" if distinct else path)
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200 and body == want, (r.status, body)
PY

# target_cmd TARGET: sets port and cmd, how TARGET listens and starts.
target_cmd() {
  case $1 in
    nginx) port=18381; cmd=(nginx -c "$WORK/nginx.conf") ;;
    floor) port=18382; cmd=("$FLOOR" 127.0.0.1:18382 "$ORIGIN") ;;
    outrigger-off) port=18382; cmd=("$BIN" --config "$WORK/off.yaml" --threads 1 --log-level warn) ;;
    outrigger-on) port=18382; cmd=("$BIN" --config "$WORK/on.yaml" --threads 1 --log-level warn) ;;
    outrigger-on+log) port=18382; cmd=("$BIN" --config "$WORK/on.yaml" --threads 1 --log-level info) ;;
    outrigger-all) port=18382; cmd=("$BIN" --config "$WORK/all.yaml" --threads 1 --log-level warn) ;;
    outrigger-shared) port=18382; cmd=("$BIN" --config "$WORK/shared.yaml" --threads 1 --log-level warn) ;;
    outrigger-fail) port=18382; cmd=("$BIN" --config "$WORK/fail.yaml" --threads 1 --log-level warn) ;;
  esac
}

# count TOOL TARGET N: prints the tool's total for one run of TARGET with N requests.
count() {
  local tool=$1 target=$2 n=$3 port cmd
  target_cmd "$target"
  local log="$WORK/$tool-$target-$n.log" out="$WORK/$tool-$target-$n.out"
  if [ "$tool" = dhat ] && [ "${cmd[0]}" = "$BIN" ]; then cmd[0]=$COUNT_BIN; fi
  case $tool in
    callgrind) valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" 2>"$log" >/dev/null & ;;
    dhat) valgrind --tool=dhat --dhat-out-file="$out" "${cmd[@]}" 2>"$log" >/dev/null & ;;
  esac
  local pid=$!
  python3 "$WORK/drive.py" "$port" "$n"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  # KEEP=dir keeps each run's output (for bench/callgrind_diff.py or dh_view).
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$out" "$KEEP/$tool-$target-$n.out"; fi
  case $tool in
    callgrind) awk '/^totals:/ {print $2}' "$out" ;;
    dhat) awk '/Total:/ {gsub(",", ""); print $(NF-1); exit}' "$log" ;;   # blocks allocated
  esac
}

# count_loaded TARGET D: prints "requests instructions" for one run of D seconds under wrk
# (with CACHE: "requests instructions l1i-misses l1d-misses").
count_loaded() {
  local target=$1 d=$2 port cmd
  target_cmd "$target"
  local out="$WORK/callgrind-$target-load$d.out" report="$WORK/wrk-$target-$d.txt"
  local tool=(--tool=callgrind --callgrind-out-file="$out")
  if [ -n "$CACHE" ]; then
    out="$WORK/cachegrind-$target-load$d.out"
    tool=(--tool=cachegrind --cache-sim=yes --cachegrind-out-file="$out")
  fi
  valgrind "${tool[@]}" "${cmd[@]}" 2>"$WORK/$target-load$d.log" >/dev/null &
  local pid=$!
  for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:$port/small" && break; sleep 0.1; done
  wrk -t1 -c"$LOAD" -d"${d}s" --timeout 30s "http://127.0.0.1:$port/small" > "$report"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  if grep -q 'Non-2xx\|Socket errors' "$report"; then cat "$report" >&2; echo "$target: errors under load" >&2; exit 1; fi
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$out" "$KEEP/"; fi
  local requests
  requests=$(awk '/requests in/ {print $1}' "$report")
  if [ -n "$CACHE" ]; then
    # cachegrind names its events on one line and totals them on another.
    echo "$requests $(awk '/^events:/ { for (i = 2; i <= NF; i++) at[$i] = i }
      /^summary:/ { print $at["Ir"], $at["I1mr"], $at["D1mr"] + $at["D1mw"] }' "$out")"
  else
    echo "$requests $(awk '/^totals:/ {print $2}' "$out")"
  fi
}

if [ -n "$CACHE" ]; then
  TSV="$OUT/per_request_cache.tsv"
  printf 'target\tconnections\tinstructions_per_req\tl1i_misses_per_req\tl1d_misses_per_req\n' > "$TSV"
  printf '%-15s %12s %14s %18s %18s\n' target connections instructions l1i-misses l1d-misses
  for target in ${TARGETS:-floor outrigger-off outrigger-on}; do
    first=$(count_loaded "$target" "$D1"); second=$(count_loaded "$target" "$D2")
    read -r r1 i1 m1 d1 <<< "$first"; read -r r2 i2 m2 d2 <<< "$second"
    row=$(awk -v r="$((r2 - r1))" -v i="$((i2 - i1))" -v m="$((m2 - m1))" -v d="$((d2 - d1))" \
      'BEGIN { printf "%.0f\t%.0f\t%.0f", i / r, m / r, d / r }')
    printf '%s\t%s\t%s\n' "$target" "$LOAD" "$row" >> "$TSV"
    echo "$row" | awk -F'\t' -v t="$target" -v c="$LOAD" '{ printf "%-15s %12s %14s %18s %18s\n", t, c, $1, $2, $3 }'
  done
  echo "wrote $TSV"
  exit 0
fi

if [ -n "$LOAD" ]; then
  TSV="$OUT/per_request_loaded.tsv"
  printf 'target\tconnections\tinstructions_per_req\n' > "$TSV"
  printf '%-15s %12s %22s\n' target connections instructions/request
  for target in ${TARGETS:-floor outrigger-off outrigger-on}; do
    first=$(count_loaded "$target" "$D1"); second=$(count_loaded "$target" "$D2")
    read -r r1 i1 <<< "$first"; read -r r2 i2 <<< "$second"
    ipr=$(awk -v a="$i1" -v b="$i2" -v r1="$r1" -v r2="$r2" 'BEGIN {printf "%.0f", (b - a) / (r2 - r1)}')
    printf '%s\t%s\t%s\n' "$target" "$LOAD" "$ipr" >> "$TSV"
    printf '%-15s %12s %22s\n' "$target" "$LOAD" "$ipr"
  done
  echo "wrote $TSV"
  exit 0
fi

TSV="$OUT/per_request.tsv"
[ -n "$DISTINCT" ] && TSV="$OUT/per_request_distinct.tsv"
[ -n "$FAIL" ] && TSV="$OUT/per_request_fail.tsv"
printf 'target\tinstructions_per_req\tallocations_per_req\n' > "$TSV"
printf '%-15s %22s %22s\n' target instructions/request allocations/request
for target in ${TARGETS:-floor outrigger-off outrigger-on outrigger-all outrigger-shared nginx}; do
  i1=$(count callgrind "$target" "$N1"); i2=$(count callgrind "$target" "$N2")
  a1=$(count dhat "$target" "$N1"); a2=$(count dhat "$target" "$N2")
  ipr=$(awk -v a="$i1" -v b="$i2" -v n=$((N2 - N1)) 'BEGIN {printf "%.0f", (b - a) / n}')
  apr=$(awk -v a="$a1" -v b="$a2" -v n=$((N2 - N1)) 'BEGIN {printf "%.1f", (b - a) / n}')
  [ "$target" = nginx ] && apr="$apr (malloc only; nginx pools)"
  printf '%s\t%s\t%s\n' "$target" "$ipr" "$apr" >> "$TSV"
  printf '%-15s %22s %22s\n' "$target" "$ipr" "$apr"
done
# A partial run (TARGETS), a DISTINCT or a FAIL one leaves docs/benchmarks.md alone.
[ -n "${TARGETS:-}" ] || [ -n "$DISTINCT" ] || [ -n "$FAIL" ] && exit 0
python3 - "$TSV" docs/benchmarks.md "$N1" "$N2" "$(git describe --always --dirty --abbrev=7)" <<'PY'
import csv, sys
tsv, md, n1, n2, rev = sys.argv[1:6]
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
floor = next((float(r["instructions_per_req"]) for r in rows if r["target"] == "floor"), None)
block = ["<!-- BEGIN per-request -->", "## Work per request, counted (bench/per_request.sh)", "",
         f"Instructions (valgrind callgrind) and heap allocations (valgrind DHAT; for outrigger on a",
         f"`--features plain-malloc` build, whose allocations all reach malloc) of the proxy process per",
         f"proxied GET of 2 bytes, one keep-alive connection, from the difference between runs of {n1} and {n2}",
         f"requests (start-up cancels out). User-space only: the kernel's share is not counted. These",
         f"counts repeat from run to run whatever the machine is doing, so a regression shows here first.",
         f"Built from {rev} (`-dirty`: with changes not yet committed, the ones in the commit",
         f"that records these figures). outrigger-all is outrigger-on with the later features on as well",
         f"(adaptive concurrency limit, a rate limit and a hedge delay never reached); outrigger-shared",
         f"is outrigger-all with the rate limit and stale copies shared through a local redis-server.", "",
         "| target | instructions/request | x floor | allocations/request |", "| --- | --- | --- | --- |"]
for r in rows:
    ratio = f"{float(r['instructions_per_req']) / floor:.2f}" if floor else ""
    block.append(f"| {r['target']} | {int(float(r['instructions_per_req'])):,} | {ratio} | {r['allocations_per_req']} |")
block.append("<!-- END per-request -->")
text = open(md).read()
b, e = "<!-- BEGIN per-request -->", "<!-- END per-request -->"
if b in text and e in text:
    text = text[:text.index(b)] + "\n".join(block) + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
open(md, "w").write(text)
PY
echo "wrote $TSV and docs/benchmarks.md's per-request block ($N1 and $N2 requests per run, one keep-alive connection)"
