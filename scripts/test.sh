#!/usr/bin/env bash
# The whole test suite, with every set-up step it needs, on a fresh machine.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== toolchain"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# WASM plugin tests build the guests in sdk/examples from source.
rustup target add wasm32-wasip2

echo "== format"
cargo fmt --check

echo "== lint"
cargo clippy --all-targets -- -D warnings

echo "== tests"
cargo test --all-targets
