#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) in this folder.
#
#   ./build.sh
#
# Needs Rust (https://rustup.rs); the wasm32-wasip2 target is added through
# rustup when missing. CARGO_TARGET_DIR is honoured: share one between plugin
# projects to compile their dependencies once.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
if ! command -v cargo >/dev/null 2>&1; then
  echo "build.sh: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/target}"
cargo build --release --target wasm32-wasip2 --target-dir "$TARGET_DIR"
cp "$TARGET_DIR/wasm32-wasip2/release/{{lib}}.wasm" "$HERE/{{name}}.wasm"
echo "built $HERE/{{name}}.wasm"
