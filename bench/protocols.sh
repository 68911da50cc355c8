#!/usr/bin/env bash
# Throughput through outrigger to the same nginx origin over plain HTTP/1.1, h2c, HTTPS
# (HTTP/1.1) and HTTPS with HTTP/2 by ALPN, in one run, interleaved rounds.
#
#   bash bench/protocols.sh      # needs wrk, nginx, curl, openssl
#
# Loopback only; every process started here is stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
need() { command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk; need nginx nginx-light; need curl curl; need openssl openssl
cargo build --release --quiet
BIN=target/release/outrigger
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# A throwaway CA and a leaf certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$WORK/ca-key.pem" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$WORK/leaf.ext" -out "$WORK/cert.pem" 2>/dev/null

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18080; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:18084 http2; location / { return 200 "ok"; } }
  server {
    listen 127.0.0.1:18443 ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    location / { return 200 "ok"; }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/ >/dev/null && break; sleep 0.05; done

declare -A UPSTREAM=(
  [http1]="url: http://127.0.0.1:18080"
  [h2c]="url: http://127.0.0.1:18084
  http2: true"
  [https]="url: https://127.0.0.1:18443
  tls: { ca_file: $WORK/ca.pem }"
  [https-h2]="url: https://127.0.0.1:18443
  http2: true
  tls: { ca_file: $WORK/ca.pem }"
)
PORT=18100
for name in http1 h2c https https-h2; do
  PORT=$((PORT + 1))
  printf 'listen: 127.0.0.1:%s\nadmin_listen: 127.0.0.1:%s\nupstream:\n  %s\n' "$PORT" $((PORT + 100)) "${UPSTREAM[$name]}" > "$WORK/$name.yaml"
  "$BIN" --config "$WORK/$name.yaml" --threads 1 --log-level warn > "$WORK/$name.log" 2>&1 & PIDS+=($!)
  eval "PID_${name//-/_}=$!; PORT_${name//-/_}=$PORT"
done
sleep 0.5
for name in http1 h2c https https-h2; do
  port_var="PORT_${name//-/_}"
  body=$(curl -s "http://127.0.0.1:${!port_var}/")
  [ "$body" = ok ] || { echo "$name does not answer: $body"; cat "$WORK/$name.log"; exit 1; }
done

echo "wrk -t1 -c64 -d${DURATION}s, ${ROUNDS} interleaved rounds; proxy with --threads 1 on 2 shared cores"
printf '%-10s %10s %9s %10s\n' upstream "req/s" p99 "cpu_us/req"
for round in $(seq "$ROUNDS"); do
  for name in http1 h2c https https-h2; do
    port_var="PORT_${name//-/_}"; pid_var="PID_${name//-/_}"
    before=$(awk '{print $14+$15}' "/proc/${!pid_var}/stat")
    out=$(wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:${!port_var}/")
    after=$(awk '{print $14+$15}' "/proc/${!pid_var}/stat")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    printf '%-10s %10s %9s %10s\n' "$name" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
      "$(awk '$1=="99%" {print $2}' <<<"$out")" \
      "$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')"
  done
done
