#!/usr/bin/env bash
# The whole test suite, with every set-up step it needs, on a fresh machine.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# WASM plugin tests build the guests in sdk/examples from source.
rustup target add wasm32-wasip2
# The status page is tested in headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not installed and not root; the status page test will skip" >&2
  fi
fi

echo "== format"
cargo fmt --all --check

echo "== lint"
cargo clippy --workspace --all-targets -- -D warnings

# --workspace: the gateway and the tools under tools/ (the load generator's
# smoke test runs every bench mode against an in-process gateway).
echo "== tests"
cargo test --workspace --all-targets
