#!/usr/bin/env bash
# Build deploy/Dockerfile's final stages (deploy/check/build-images.sh), run the outrigger
# image as the issue asks (host network, tight ulimits) and check that it
# becomes ready, proxies a request to a loopback backend, runs as its non-root user and
# exits cleanly, well inside its grace period, on `podman stop`.
#
# Usage: image.sh OUTRIGGER_BINARY LEGACY_BINARY   (run from the repository root, as root)
# Traffic stays on 127.0.0.1.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

outrigger_bin=$1
legacy_bin=$2
tag=ci-$$
container=outrigger-check-$$
work=$(mktemp -d)
legacy_pid=

cleanup() {
    "${podman[@]}" rm -f "$container" >/dev/null 2>&1 || true
    if [[ -n $legacy_pid ]]; then kill "$legacy_pid" 2>/dev/null || true; fi
    "${podman[@]}" rmi -f "localhost/outrigger:$tag" "localhost/outrigger-legacy:$tag" \
        >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

bash deploy/check/build-images.sh "$tag" "$outrigger_bin" "$legacy_bin"
user=$("${podman[@]}" image inspect --format '{{.Config.User}}' "localhost/outrigger:$tag")
[[ $user == 65532:65532 ]] || { echo "FAIL: image user is '$user', want 65532:65532"; exit 1; }
echo "ok: built the outrigger and legacy stages; outrigger runs as $user"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
for want in "org.opencontainers.image.title=outrigger" "org.opencontainers.image.version=$version" \
    "org.opencontainers.image.licenses=Apache-2.0" "org.opencontainers.image.revision=$(git rev-parse HEAD)"; do
    got=$("${podman[@]}" image inspect --format "{{index .Labels \"${want%%=*}\"}}" "localhost/outrigger:$tag")
    [[ $got == "${want#*=}" ]] || { echo "FAIL: label ${want%%=*} is '$got', want '${want#*=}'"; exit 1; }
done
echo "ok: OCI labels title, version $version, licenses and revision are set"

backend=$(free_port)
proxy=$(free_port)
admin=$(free_port)
LEGACY_LISTEN=127.0.0.1:$backend LEGACY_FAIL_PERCENT=0 "$legacy_bin" >"$work/legacy.log" 2>&1 &
legacy_pid=$!

# `localhost` rather than 127.0.0.1: the static binary must resolve names by itself.
"${podman[@]}" run -d --name "$container" --network host \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -e "OUTRIGGER_LISTEN=127.0.0.1:$proxy" -e "OUTRIGGER_ADMIN_LISTEN=127.0.0.1:$admin" \
    -e "OUTRIGGER_UPSTREAM=http://localhost:$backend" \
    "localhost/outrigger:$tag" >/dev/null

if ! wait_for "/ready to answer 200" status_is 200 "http://127.0.0.1:$admin/ready"; then
    "${podman[@]}" logs "$container" | tail -20
    exit 1
fi
echo "ok: /ready answers 200 inside the container"

answer=$(curl -s -D "$work/headers" "http://127.0.0.1:$proxy/hello/container")
if ! grep -q '"path":"/hello/container"' <<<"$answer" \
    || ! grep -qi '^x-outrigger-attempts: 1' "$work/headers"; then
    echo "FAIL: proxied request: $answer"
    cat "$work/headers"
    exit 1
fi
echo "ok: a request through the container reached the loopback backend"

# The baked-in config drains for 5 s after SIGTERM; podman's grace period here is 30 s.
start=$(date +%s%N)
"${podman[@]}" stop -t 30 "$container" >/dev/null
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
code=$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$container")
logs=$("${podman[@]}" logs "$container" 2>&1)
if [[ $code != 0 ]] || ((elapsed_ms > 15000)) || ! grep -q '"message":"stopped"' <<<"$logs"; then
    echo "FAIL: podman stop: exit code $code after ${elapsed_ms} ms"
    "${podman[@]}" logs "$container" | tail -20
    exit 1
fi
echo "ok: podman stop: exit code 0 after ${elapsed_ms} ms (drain_delay 5 s, grace 30 s)"
