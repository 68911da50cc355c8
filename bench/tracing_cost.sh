#!/usr/bin/env bash
# What tracing (SPEC §7.5) and the tower edge cost per proxied request, counted rather than
# timed: instructions of the proxy process under valgrind's callgrind, from the difference
# between a run of N1 and one of N2 sequential GETs on one keep-alive connection (start-up
# and shutdown cancel out). Counts repeat whatever else the machine is doing.
#
#   bash bench/tracing_cost.sh                                  # this tree only
#   BASELINE=/path/to/old/outrigger bash bench/tracing_cost.sh  # plus an older binary
#   KEEP=/tmp/tc bash bench/tracing_cost.sh   # also keeps each run's callgrind output
#       (python3 bench/callgrind_diff.py compares two of them per function)
#
# Rows: before (BASELINE, no tracing block), tracing off, sample_ratio 0 (every request
# unsampled: what tracing costs a request it does not record), 0.01 and 1.0. The
# traced rows export to a local OTLP sink that answers 200 to everything, so the export
# work is in the count. The 0.01 row's requests start new traces, so which of them are
# sampled is random: about 1 in 100, each costing what a 1.0 request costs, and the number
# sampled in the two runs varies by a few, which moves that row by a few hundred
# instructions from run to run. All traffic stays on 127.0.0.1; every process started here
# is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-300}
N2=${N2:-1300}
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need valgrind valgrind; need nginx nginx-light; need python3 python3
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin outrigger
  BIN=target/release/outrigger
fi
BASELINE=${BASELINE:-}
KEEP=${KEEP:-}
[ -n "$KEEP" ] && mkdir -p "$KEEP"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

ORIGIN=127.0.0.1:18580
SINK=127.0.0.1:18581
cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 10000000;
  server { listen $ORIGIN; location = /small { return 200 "ok"; } }
  server { listen $SINK; location / { return 200 ""; } }
}
NGINX
nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)

yaml() { # file extra
  printf 'listen: 127.0.0.1:18582\nadmin_listen: 127.0.0.1:18583\nupstream: { url: "http://%s" }\ndefaults:\n  retry: { attempts: 1 }\n  circuit_breaker: { enabled: false }\n%s' \
    "$ORIGIN" "$2" > "$1"
}
yaml "$WORK/off.yaml" ""
yaml "$WORK/r0.yaml" "tracing: { otlp_endpoint: \"http://$SINK\", sample_ratio: 0.0 }
"
yaml "$WORK/r001.yaml" "tracing: { otlp_endpoint: \"http://$SINK\", sample_ratio: 0.01 }
"
yaml "$WORK/r1.yaml" "tracing: { otlp_endpoint: \"http://$SINK\", sample_ratio: 1.0 }
"

cat > "$WORK/drive.py" <<'PY'
import http.client, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(600):  # wait (up to 60 s under valgrind) for the proxy to listen
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/small"); r = conn.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"nothing answers on {port}")
for _ in range(n - 1):
    conn.request("GET", "/small")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200 and body == b"ok", (r.status, body)
time.sleep(0.5)  # lets the last batch of spans leave before the process is stopped
PY

count() { # binary config n
  local out="$WORK/cg.$RANDOM"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$1" --config "$2" --threads 1 --log-level warn \
    2>/dev/null >/dev/null &
  local pid=$!
  python3 "$WORK/drive.py" 18582 "$3"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  [ -n "$KEEP" ] && cp "$out" "$KEEP/callgrind-$(basename "$2" .yaml)-$3.out"
  awk '/^totals:/ {print $2}' "$out"
}
row() { # name binary config
  local a b
  a=$(count "$2" "$3" "$N1"); b=$(count "$2" "$3" "$N2")
  printf '%-22s %12s\n' "$1" "$(awk -v a="$a" -v b="$b" -v n=$((N2 - N1)) 'BEGIN {printf "%.0f", (b - a) / n}')"
}
printf '%-22s %12s\n' row instructions/request
[ -n "$BASELINE" ] && row "before (baseline)" "$BASELINE" "$WORK/off.yaml"
row "tracing off" "$BIN" "$WORK/off.yaml"
row "sample_ratio 0" "$BIN" "$WORK/r0.yaml"
row "sample_ratio 0.01" "$BIN" "$WORK/r001.yaml"
row "sample_ratio 1.0" "$BIN" "$WORK/r1.yaml"
[ -n "$BASELINE" ] && row "before (again)" "$BASELINE" "$WORK/off.yaml"
echo "($N1 and $N2 requests per run, one keep-alive connection, --threads 1)"
