#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS_PER_TARGET, default 60) from the
# committed seed corpus. Needs the nightly toolchain and cargo-fuzz (installed if missing).
# A crash leaves its input under fuzz/artifacts/TARGET/; turn it into a regression test.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in config units headers; do
  echo "== fuzz $target for ${SECONDS_PER_TARGET}s"
  # A scratch copy of the seeds, so that a run does not grow the committed corpus.
  work=$(mktemp -d)
  cp -r "corpus/$target/." "$work/"
  cargo +nightly fuzz run "$target" "$work" -- -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 2>&1 | tail -n 3
  rm -rf "$work"
done
