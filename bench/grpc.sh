#!/usr/bin/env bash
# Unary gRPC calls (tonic client -> tonic server, 16-byte messages) three ways in one run,
# interleaved rounds: straight to the server, through outrigger (h2c both sides,
# upstream.http2: true), and through nginx's grpc_pass (the peer). Prints, per path and
# round, the calls per second, p50/p99 latency seen by the client, and CPU per call of the
# proxy in the middle (none for direct) and of the server. Issue 18, SPEC §7.7.
#
#   bash bench/grpc.sh            # CALLS=20000 CONCURRENCY=16 ROUNDS=3
#
# A benchmark, not a test: the numbers depend on the machine and its load. outrigger and
# nginx each get one worker thread, neither writes an access log. Loopback only; every
# process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need nginx nginx-light
cargo build --release --quiet --bin outrigger --example grpc_bench
BIN=target/release/outrigger
DRIVER=target/release/examples/grpc_bench
CALLS=${CALLS:-20000}
CONCURRENCY=${CONCURRENCY:-16}
ROUNDS=${ROUNDS:-3}
SERVER=127.0.0.1:18350 OUTRIGGER=127.0.0.1:18351 ADMIN=127.0.0.1:18352 NGINX=127.0.0.1:18353

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$DRIVER" serve "$SERVER" 1800 & SERVER_PID=$!; PIDS+=($SERVER_PID)
cat > "$WORK/outrigger.yaml" <<YAML
upstream:
  url: http://$SERVER
  http2: true
YAML
"$BIN" --config "$WORK/outrigger.yaml" --listen "$OUTRIGGER" --admin-listen "$ADMIN" --threads 1 \
  --log-level warn > /dev/null 2> "$WORK/outrigger.err" & OUTRIGGER_PID=$!; PIDS+=($OUTRIGGER_PID)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  # Keep-alive to the server, as outrigger's pool does (without it nginx connects per call).
  upstream grpc_server { server $SERVER; keepalive 64; }
  server {
    listen $NGINX http2;
    location / { grpc_pass grpc://grpc_server; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
sleep 1
NGINX_PID=$(pgrep -P "$NGINX_MASTER" | head -1)   # the one worker

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
"$DRIVER" load "$OUTRIGGER" 500 4 > /dev/null   # warm up both paths
"$DRIVER" load "$NGINX" 500 4 > /dev/null

printf 'round\tpath\tcalls_per_s\tp50_us\tp99_us\tproxy_cpu_us_per_call\tserver_cpu_us_per_call\terrors\n'
for round in $(seq "$ROUNDS"); do
  for path in direct outrigger nginx; do
    case $path in
      direct) TARGET=$SERVER MIDDLE= ;;
      outrigger) TARGET=$OUTRIGGER MIDDLE=$OUTRIGGER_PID ;;
      nginx) TARGET=$NGINX MIDDLE=$NGINX_PID ;;
    esac
    s0=$(cpu_ticks "$SERVER_PID"); m0=${MIDDLE:+$(cpu_ticks "$MIDDLE")}
    line=$("$DRIVER" load "$TARGET" "$CALLS" "$CONCURRENCY")
    s1=$(cpu_ticks "$SERVER_PID"); m1=${MIDDLE:+$(cpu_ticks "$MIDDLE")}
    get() { sed -E "s/.*$1=([0-9.]+).*/\\1/" <<<"$line"; }
    calls=$(get calls)
    proxy_cpu=-
    if [ -n "$MIDDLE" ]; then proxy_cpu=$(( (m1 - m0) * TICK_US / calls )); fi
    server_cpu=$(( (s1 - s0) * TICK_US / calls ))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$path" "$(get calls_per_s)" "$(get p50_us)" \
      "$(get p99_us)" "$proxy_cpu" "$server_cpu" "$(get errors)"
  done
done
