#!/usr/bin/env bash
# Loopback measurements for backend protection: what the micro-cache spares a hot key's
# backend, what coalescing saves on a cold key, and the memory of 100,000 rate-limit keys.
#
#   bash bench/protection.sh      # needs wrk, nginx, curl, python3
#
# Loopback only; every process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl
cargo build --release --quiet
BIN=target/release/outrigger

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ORIGIN=127.0.0.1:18080
SLOW=127.0.0.1:18082
PROXY=127.0.0.1:18081
ADMIN=127.0.0.1:18091

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen $ORIGIN; location / { return 200 "hot value"; } } }
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)

# A slow origin (200 ms per answer) so that concurrent misses really overlap.
cat > "$WORK/slow.py" <<'PY'
import asyncio, sys
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(0.2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\ncold value")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    host, port = sys.argv[1].split(":")
    server = await asyncio.start_server(handle, host, int(port), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
python3 "$WORK/slow.py" "$SLOW" & PIDS+=($!)

# 1,000 clients each sending one GET at the same moment.
cat > "$WORK/burst.py" <<'PY'
import asyncio, sys
async def one(host, port, path, start):
    await start.wait()
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    return data.split(b" ", 2)[1]
async def main():
    host, port = sys.argv[1].split(":")
    start = asyncio.Event()
    tasks = [asyncio.create_task(one(host, int(port), sys.argv[2], start)) for _ in range(int(sys.argv[3]))]
    await asyncio.sleep(0.5)
    start.set()
    codes = await asyncio.gather(*tasks)
    print(sum(1 for c in codes if c == b"200"))
asyncio.run(main())
PY
for _ in $(seq 100); do curl -sf "http://$ORIGIN/" >/dev/null && break; sleep 0.05; done

start_proxy() {
  printf 'listen: %s\nadmin_listen: %s\nlimits: { max_concurrent_requests: 4096 }\n%s' "$PROXY" "$ADMIN" "$1" > "$WORK/o.yaml"
  ulimit -n 8192
  "$BIN" --config "$WORK/o.yaml" --threads 1 --log-level warn > "$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!; PIDS+=($PROXY_PID)
  for _ in $(seq 100); do curl -sf "http://$ADMIN/ready" >/dev/null && return; sleep 0.05; done
  cat "$WORK/proxy.log"; exit 1
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; }
attempts() { curl -s "http://$ADMIN/metrics" | awk '/^outrigger_upstream_attempts_total/ {a += $NF} END {print a + 0}'; }
requests() { curl -s "http://$ADMIN/metrics" | awk '/^outrigger_requests_total/ {a += $NF} END {print a + 0}'; }

echo "hot key, wrk 1 thread 64 connections 5 s: backend requests per second"
for cache in "" "  cache: { ttl: 1s }"; do
  start_proxy "upstream: { url: http://$ORIGIN }
defaults:
$cache
"
  wrk -t1 -c64 -d5s "http://$PROXY/hot" >/dev/null
  printf '  %-22s clients %8d req  backend %6d req  = %7.1f backend req/s\n' "${cache:-  no cache}" "$(requests)" "$(attempts)" "$(awk -v a="$(attempts)" 'BEGIN {print a / 5}')"
  stop_proxy
done

echo "cold key, 1,000 concurrent GETs, origin answers in 200 ms: backend requests"
for coalesce in true false; do
  start_proxy "upstream: { url: http://$SLOW }
defaults:
  cache: { ttl: 5s, coalesce: $coalesce }
"
  ok=$(python3 "$WORK/burst.py" "$PROXY" /cold 1000)
  printf '  coalesce %-5s  %4d of 1000 answered 200, backend saw %4d requests\n' "$coalesce" "$ok" "$(attempts)"
  stop_proxy
done

echo "memory with 100,000 rate-limit keys (header:x-api-key, a new key per request)"
start_proxy "upstream: { url: http://$ORIGIN }
defaults:
  rate_limit: { rate: 1000/s, burst: 1000, key: \"header:x-api-key\", max_keys: 100000 }
"
before=$(awk '/VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
cat > "$WORK/keys.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/k", { ["x-api-key"] = "key-" .. n .. "-" .. math.random(1, 1e9) })
end
LUA
for _ in 1 2 3 4 5 6; do
  wrk -t1 -c32 -d3s -s "$WORK/keys.lua" "http://$PROXY/" >/dev/null
  [ "$(requests)" -ge 120000 ] && break
done
after=$(awk '/VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
printf '  %d requests with distinct keys: RSS %.1f MiB before, %.1f MiB after (table capped at 100,000 keys)\n' "$(requests)" "$(awk -v k="$before" 'BEGIN {print k/1024}')" "$(awk -v k="$after" 'BEGIN {print k/1024}')"
stop_proxy
