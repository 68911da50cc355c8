#!/usr/bin/env bash
# Soak: runs outrigger for SOAK_SECONDS (default 600) under steady load against a backend
# that fails, resets and stalls at random, and prints the error rate, p99 latency and RSS
# every INTERVAL seconds, so that a leak or a slow drift shows. Not part of CI.
#
#   bash bench/soak.sh                 # 10 minutes
#   SOAK_SECONDS=60 bash bench/soak.sh # a short look
#
# Loopback only; every process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${SOAK_SECONDS:-600}
INTERVAL=${INTERVAL:-30}
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need curl curl
cargo build --release --quiet
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# 80% answer at once, 10% 503, 5% reset without answering, 5% stall for 2 s.
cat > "$WORK/flaky.py" <<'PY'
import asyncio, random, sys
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            r = random.random()
            if r < 0.05:
                writer.transport.abort(); return
            if r < 0.10:
                await asyncio.sleep(2)
            status = b"503 Service Unavailable" if r > 0.90 else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
python3 "$WORK/flaky.py" 18480 & PIDS+=($!)
cat > "$WORK/o.yaml" <<YAML
listen: 127.0.0.1:18481
admin_listen: 127.0.0.1:18581
upstream: { url: "http://127.0.0.1:18480" }
defaults:
  timeout: 3s
  retry: { per_try_timeout: 500ms }
  stale_if_error: { max_age: 1m }
YAML
target/release/outrigger --config "$WORK/o.yaml" --threads 1 --log-level warn > "$WORK/o.log" 2>&1 & PIDS+=($!); PROXY=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18581/ready >/dev/null && break; sleep 0.05; done

# Requests spread over 1,000 paths, so stale copies cover only what was fetched recently.
cat > "$WORK/paths.lua" <<'LUA'
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, 1000))
end
LUA

printf '%8s %10s %10s %9s %9s\n' elapsed "req/s" "error %" "p99 ms" "rss MiB"
elapsed=0
while [ "$elapsed" -lt "$SOAK_SECONDS" ]; do
  out=$(wrk -t1 -c32 -d"${INTERVAL}s" --latency -s "$WORK/paths.lua" "http://127.0.0.1:18481/" 2>&1)
  elapsed=$((elapsed + INTERVAL))
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); bad=${bad:-0}
  errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' <<<"$out"); errs=${errs:-0}
  printf '%7ss %10s %10s %9s %9s\n' "$elapsed" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk -v b="$bad" -v e="$errs" -v n="$reqs" 'BEGIN {printf "%.3f", (b + e) / n * 100}')" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PROXY/status")"
done
kill -0 "$PROXY" && echo "outrigger still running after ${SOAK_SECONDS}s"
