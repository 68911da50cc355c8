#!/usr/bin/env bash
# A gRPC client no one here wrote (grpcio, in a venv) through the real outrigger binary to
# tonic's health service (issue 18, SPEC §7.7): Check, an error status, and Watch. Run by
# .ci/run after `cargo test`; kept out of `cargo test` so that README's test command needs
# no Python packages.
#
#   bash scripts/grpcio-interop.sh
#
# Loopback only; the processes started here are stopped by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GRPCIO_VENV:-target/grpcio-venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q grpcio grpcio-health-checking
cargo build --quiet --bin outrigger --example grpc_bench

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SERVER=127.0.0.1:$(free_port); LISTEN=127.0.0.1:$(free_port); ADMIN=127.0.0.1:$(free_port)

target/debug/examples/grpc_bench serve "$SERVER" 120 & PIDS+=($!)
cat > "$WORK/outrigger.yaml" <<YAML
upstream:
  url: http://$SERVER
  http2: true
YAML
target/debug/outrigger --config "$WORK/outrigger.yaml" --listen "$LISTEN" --admin-listen "$ADMIN" \
  --log-level warn & PIDS+=($!)
for _ in $(seq 200); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://$ADMIN/ready')" 2>/dev/null && break
  sleep 0.05
done
"$VENV/bin/python" scripts/grpcio_client.py "$LISTEN"
python3 - "$ADMIN" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
lines = [l for l in text.splitlines() if l.startswith("outrigger_grpc_responses_total")]
print("\n".join(lines))
assert any('grpc_status="0"' in l for l in lines), lines
assert any('grpc_status="5"' in l for l in lines), lines
PY
echo "grpcio through outrigger: ok"
