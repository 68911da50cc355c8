#!/usr/bin/env bash
# Runs the Compose demo's legacy service and outrigger with podman-compose, from images built
# by build-images.sh (tagged `dev`, the names compose.yaml uses), and walks the README's
# story: requests go through, then the backend is broken on purpose and outrigger answers
# from a stale copy and a fallback while its health check reports the upstream down, then
# the backend is healed. Prometheus and Grafana are left out: their images cannot be pulled
# here (the live Prometheus check covers the rules and the dashboard).
#
# Usage: compose-run.sh PODMAN_COMPOSE OUTRIGGER_BINARY LEGACY_BINARY   (from the repository
# root, as root). It replaces local images outrigger:dev and outrigger-legacy:dev and needs
# 127.0.0.1 ports 3000, 8080 and 9901 free. Traffic goes to those loopback ports only.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# podman-compose gets the same podman options (the runtime) through --podman-args.
compose=("$1" --podman-args="${podman[*]:1}"
    --podman-run-args="--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
    -f deploy/compose/compose.yaml)
for port in 3000 8080 9901; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "FAIL: 127.0.0.1:$port is taken; the Compose stack needs it"
        exit 1
    fi
done

bash deploy/check/build-images.sh dev "$2" "$3"
trap '"${compose[@]}" down >/dev/null 2>&1 || true' EXIT
if ! output=$("${compose[@]}" up -d --no-build legacy outrigger 2>&1); then
    echo "FAIL: podman-compose up:"
    echo "$output"
    exit 1
fi

# wait_or_show_logs WHAT COMMAND...: wait_for, showing outrigger's last log lines if it times out.
wait_or_show_logs() {
    wait_for "$@" && return 0
    "${compose[@]}" logs outrigger 2>&1 | tail -20
    exit 1
}
headers() { curl -s -D - -o /dev/null "$1"; }

wait_or_show_logs "outrigger /ready" status_is 200 http://127.0.0.1:9901/ready
wait_or_show_logs "the upstream to be healthy" status_is 200 http://127.0.0.1:9901/health
# The Compose healthcheck: `outrigger probe` inside the scratch image (no curl there).
if ! output=$("${compose[@]}" exec outrigger /usr/local/bin/outrigger probe \
    http://127.0.0.1:9901/ready 2>&1); then
    echo "FAIL: outrigger probe inside the container (the Compose healthcheck): $output"
    exit 1
fi
echo "ok: outrigger probe answers 0 inside the scratch image (the Compose healthcheck)"
for i in $(seq 20); do
    curl -s -o /dev/null "http://127.0.0.1:8080/conversations/$((i % 2))"
    curl -s -o /dev/null http://127.0.0.1:8080/feed
done
if ! grep -qi '^x-outrigger-attempts' <<<"$(headers http://127.0.0.1:8080/conversations/1)"; then
    echo "FAIL: a request through outrigger did not reach the legacy service"
    exit 1
fi
echo "ok: requests reach the legacy service through outrigger by its Compose name"

curl -s -o /dev/null -X POST http://127.0.0.1:3000/admin/break
stale=$(headers http://127.0.0.1:8080/conversations/1)
feed=$(curl -s -i http://127.0.0.1:8080/feed)
if ! grep -qi '^x-outrigger-stale' <<<"$stale" || ! grep -q '^HTTP/1.1 200' <<<"$stale"; then
    echo "FAIL: no stale copy while the backend is broken:"
    echo "$stale"
    exit 1
fi
# The body is the last line of curl -i's output.
if [[ ${feed##*$'\n'} != '{"items": []}' ]] || ! grep -qi '^x-outrigger-fallback' <<<"$feed"; then
    echo "FAIL: no fallback while the backend is broken:"
    echo "$feed"
    exit 1
fi
echo "ok: broken backend: /conversations answered from a stale copy, /feed from its fallback"
wait_or_show_logs "/health to report the upstream down" status_is 503 http://127.0.0.1:9901/health
echo "ok: the health check reports the upstream down"

curl -s -o /dev/null -X POST http://127.0.0.1:3000/admin/heal
wait_or_show_logs "/health to report the upstream healthy again" status_is 200 http://127.0.0.1:9901/health
echo "ok: healed backend: /health is 200 again"

container=$("${podman[@]}" ps -q --filter label=io.podman.compose.project=outrigger-demo \
    --filter label=com.docker.compose.service=outrigger)
"${compose[@]}" stop outrigger >/dev/null 2>&1
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$container")
if [[ $code != 0 ]]; then
    echo "FAIL: outrigger exited with $code on stop"
    exit 1
fi
echo "ok: outrigger exits 0 when Compose stops it"
