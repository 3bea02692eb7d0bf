#!/usr/bin/env bash
# The whole test suite, with every set-up step it needs, on a fresh machine.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean run gains nothing from incremental compilation, and its caches
# (about 2 GB for the gateway's test binaries) are what a small CI disk
# runs out of first.
export CARGO_INCREMENTAL=0
# A clean run's target/ peaks near 6 GB (plus the apt, npm and pip
# downloads); say so before a build fails halfway with "No space left".
free_mb=$(df -Pm . 2>/dev/null | awk 'NR == 2 { print $4 }')
if [ -n "$free_mb" ] && [ "$free_mb" -lt 7000 ]; then
  echo "note: ${free_mb} MB free on this disk; a clean run needs about 7 GB" >&2
fi

echo "== toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# WASM plugin tests build the guests in sdk/examples from source.
rustup target add wasm32-wasip2
# The status page is tested in headless Chromium; cluster tests start real
# redis-server processes.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} not installed and not root; the status page test skips without chromium, the cluster tests fail without redis-server" >&2
  fi
fi
# apt starts a redis-server service on 6379; the tests start their own on free
# ports and never use it.

echo "== format"
cargo fmt --all --check

echo "== lint"
cargo clippy --workspace --all-targets -- -D warnings

# --workspace: the gateway and the tools under tools/ (the load generator's
# smoke test runs every bench mode against an in-process gateway).
echo "== tests"
cargo test --workspace --all-targets

# The TypeScript client SDK (sdk/client-ts): built, then tested against the
# gateway binary the step above built, and its browser bundle in Chromium.
echo "== client sdk"
(
  export WSPRISM_BIN="$PWD/target/debug/wsprism"
  cd sdk/client-ts && npm ci --no-audit --no-fund && npm test
)
