#!/usr/bin/env bash
# The cost of resilience configured but not triggered (issue 17): CPU per request of
# outrigger with retries, breaker and stale copies configured (bench/compare.sh's
# outrigger-on) against outrigger with them off (outrigger-off), in paired rounds.
#
#   bash bench/resilience_cost.sh                 # 12 pairs of 4 s runs, about 2 minutes
#   PAIRS=20 DURATION=5 bash bench/resilience_cost.sh
#   AA=8 PAIRS=0 bash bench/resilience_cost.sh    # only how far the timing drifts (below)
#
# AA=N first runs outrigger-on against a second outrigger-on, both driven at once, N times:
# one build timed against itself. Ratios far from 1.00 there mean these timed pairs cannot
# resolve a difference of that size; bench/per_request.sh counts instructions instead
# (docs/benchmarks.md, "Cost of resilience, counted and timed"). PAIRS=0 skips the pairs
# and leaves docs/ alone.
#
# Each pair runs both, in alternating order (off-on, on-off, ...) so that drift of the
# machine falls on both alike; a pair's ratio is on/off of CPU per request, the CPU read in
# nanoseconds from /proc/PID/task/*/schedstat (every thread of the process). Prints each
# pair, then the mean ratio with its 95% interval (Student's t over the pairs), writes
# bench/results/resilience_cost.tsv and rewrites docs/benchmarks.md's resilience-cost block.
# All traffic stays on 127.0.0.1; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-12}
AA=${AA:-0}
DURATION=${DURATION:-4}
CONNS=${CONNS:-64}
OUT=bench/results
mkdir -p "$OUT"

need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl; need python3 python3
cargo build --release --quiet
BIN=target/release/outrigger

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18580
cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
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

# The configurations of bench/compare.sh's outrigger-off and outrigger-on.
start() { # name port defaults
  printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nlimits: { max_concurrent_requests: 40000 }\nupstream: { url: "http://%s", pool_max_idle: 128 }\n%s' \
    "$2" $(($2 + 100)) "$ORIGIN" "$3" > "$WORK/$1.yaml"
  "$BIN" --config "$WORK/$1.yaml" --threads 1 --log-level warn > /dev/null 2>"$WORK/$1.err" & PIDS+=($!)
  eval "PID_$1=$!"
}
start off 18581 "defaults:
  retry: { attempts: 1 }
  circuit_breaker: { enabled: false }
"
ON="defaults:
  retry: { attempts: 3 }
  stale_if_error: { max_age: 5m }
"
start on 18582 "$ON"
[ "$AA" -gt 0 ] && start on2 18583 "$ON"
declare -A PORT=([off]=18581 [on]=18582 [on2]=18583)
declare -A PID=([off]=$PID_off [on]=$PID_on [on2]=${PID_on2:-})
TARGETS="off on"; [ "$AA" -gt 0 ] && TARGETS="off on on2"
for t in $TARGETS; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:${PORT[$t]}/small" && break; sleep 0.05; done
  [ "$(curl -s "http://127.0.0.1:${PORT[$t]}/small")" = ok ] || { echo "outrigger-$t does not answer"; exit 1; }
done

cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }

run() { # target: prints nanoseconds of CPU per request
  local pid=${PID[$1]} before after out reqs
  before=$(cpu_ns "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${PORT[$1]}/small" 2>&1)
  after=$(cpu_ns "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v a="$before" -v b="$after" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) / n}'
}

if [ "$AA" -gt 0 ]; then
  echo "one build against itself (outrigger-on twice), both at once, $CONNS connections each, ${DURATION}s runs"
  for i in $(seq "$AA"); do
    a0=$(cpu_ns "${PID[on]}"); b0=$(cpu_ns "${PID[on2]}")
    wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${PORT[on]}/small" > "$WORK/a" 2>&1 & w=$!
    wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${PORT[on2]}/small" > "$WORK/b" 2>&1
    wait "$w"
    a1=$(cpu_ns "${PID[on]}"); b1=$(cpu_ns "${PID[on2]}")
    na=$(awk '/requests in/ {print $1}' "$WORK/a"); nb=$(awk '/requests in/ {print $1}' "$WORK/b")
    awk -v i="$i" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v na="$na" -v nb="$nb" \
      'BEGIN {pa = a / na; pb = b / nb; printf "  run %2d  A %7d req %7.0f ns/req   B %7d req %7.0f ns/req   B/A %.3f\n", i, na, pa, nb, pb, pb / pa}'
  done
fi
[ "$PAIRS" -gt 0 ] || exit 0

for t in off on; do run "$t" >/dev/null; done   # warm both (pools, allocator)
TSV="$OUT/resilience_cost.tsv"
printf 'pair\toff_ns_per_req\ton_ns_per_req\tratio\n' > "$TSV"
echo "pairs of ${DURATION}s runs, $CONNS connections, GET of 2 bytes; CPU per request in ns"
for pair in $(seq "$PAIRS"); do
  if [ $((pair % 2)) = 1 ]; then off=$(run off); on=$(run on); else on=$(run on); off=$(run off); fi
  ratio=$(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.4f", a / b}')
  printf '%s\t%s\t%s\t%s\n' "$pair" "$off" "$on" "$ratio" >> "$TSV"
  printf '  pair %2s  off %8s  on %8s  on/off %s\n' "$pair" "$off" "$on" "$ratio"
done

python3 - "$TSV" docs/benchmarks.md "$DURATION" "$CONNS" "$(git describe --always --dirty --abbrev=7)" <<'PY'
import csv, math, statistics, sys
tsv, md, duration, conns, rev = sys.argv[1:6]
ratios = [float(r["ratio"]) for r in csv.DictReader(open(tsv), delimiter="\t")]
n = len(ratios)
mean = statistics.mean(ratios)
sd = statistics.stdev(ratios) if n > 1 else float("nan")
# Student's t, two-sided 95%, for n - 1 degrees of freedom (a table: no scipy here).
T = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
     10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 19: 2.09, 24: 2.06, 29: 2.05}
half = float("nan")
if n > 1:
    t = T.get(n - 1) or T[max(k for k in T if k <= n - 1)]
    half = t * sd / math.sqrt(n)
lo, hi = (mean - half - 1) * 100, (mean + half - 1) * 100
line = (f"{n} pairs: resilience costs {100 * (mean - 1):+.1f}% CPU per request "
        f"(95% interval {lo:+.1f}% to {hi:+.1f}%; pair ratios from {min(ratios):.3f} to {max(ratios):.3f})")
print(line)
block = ["<!-- BEGIN resilience-cost -->", "## Cost of resilience configured, not triggered (bench/resilience_cost.sh)", "",
         f"outrigger-on (retries, breaker, stale copies) against outrigger-off, CPU per request from",
         f"/proc/PID/task/*/schedstat, {n} pairs of {duration} s runs at {conns} connections in",
         f"alternating order. Built from {rev}.", "", f"- {line}.",
         "<!-- END resilience-cost -->"]
text = open(md).read()
b, e = "<!-- BEGIN resilience-cost -->", "<!-- END resilience-cost -->"
if b in text and e in text:
    text = text[:text.index(b)] + "\n".join(block) + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
open(md, "w").write(text)
PY
echo "wrote $TSV and docs/benchmarks.md's resilience-cost block"
