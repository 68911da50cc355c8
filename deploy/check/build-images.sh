#!/usr/bin/env bash
# Builds deploy/Dockerfile's two final stages with podman from binaries built on the host:
# localhost/outrigger:TAG and localhost/outrigger-legacy:TAG.
#
# Usage: build-images.sh TAG OUTRIGGER_BINARY LEGACY_BINARY   (from the repository root)
# Base images cannot be pulled here, so the binaries arrive as an image made with
# `podman import` and passed to the Dockerfile as BINARY_FROM; the final stages are built
# exactly as in a normal multi-stage build.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

tag=$1
work=$(mktemp -d)
trap 'rm -rf "$work"; "${podman[@]}" rmi -f "localhost/outrigger-binaries:$tag" >/dev/null 2>&1 || true' EXIT

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
mkdir -p "$work/out"
cp "$2" "$work/out/outrigger"
cp "$3" "$work/out/legacy-service"
strip "$work/out/outrigger" "$work/out/legacy-service"   # as the builder stage does
tar -C "$work" -c out | "${podman[@]}" import --quiet - "localhost/outrigger-binaries:$tag" >/dev/null
for target in outrigger legacy; do
    image=localhost/outrigger:$tag
    [[ $target == legacy ]] && image=localhost/outrigger-legacy:$tag
    "${podman[@]}" build --quiet --no-cache --pull=never -f deploy/Dockerfile --target "$target" \
        --build-arg "BINARY_FROM=localhost/outrigger-binaries:$tag" \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t "$image" . >/dev/null
done
