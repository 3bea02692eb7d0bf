#!/usr/bin/env bash
# Builds the example plugins in sdk/examples/ and copies the demo builds into
# plugins/ (the gateway's drop folder).
#
#   scripts/build-plugins.sh            # Rust examples (echo, vote) + JS/Python if their tools exist
#   scripts/build-plugins.sh rust       # Rust examples only
#   scripts/build-plugins.sh js|python  # one SDK's example only
#
# Rust guests need `rustup target add wasm32-wasip2`. Test-only guests (faults,
# wrong-wit, first-world) are built too but copied to target/wasm-examples/test-plugins/,
# never to plugins/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/plugins"
TARGET_DIR="$ROOT/target/wasm-examples"
WHAT="${1:-all}"
mkdir -p "$OUT"

build_rust() {
  echo "==> Rust examples (wasm32-wasip2)"
  (cd "$ROOT/sdk/examples" && env -u CARGO_TARGET_DIR cargo build --release --target wasm32-wasip2 --target-dir "$TARGET_DIR")
  local rel="$TARGET_DIR/wasm32-wasip2/release"
  cp "$rel/echo.wasm" "$OUT/echo.wasm"
  cp "$rel/vote.wasm" "$OUT/vote.wasm"
  mkdir -p "$TARGET_DIR/test-plugins"
  cp "$rel/faults.wasm" "$rel/wrong_wit.wasm" "$rel/first_world.wasm" "$TARGET_DIR/test-plugins/"
  echo "    plugins/echo.wasm plugins/vote.wasm"
}

build_js() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "==> skipping JavaScript example: npm not found" >&2
    return 0
  fi
  echo "==> JavaScript example (componentize-js)"
  "$ROOT/sdk/js/build.sh" "$ROOT/sdk/examples/counter-js/app.js" "$OUT/counter_js.wasm" plugin-with-hooks
}

build_python() {
  if ! command -v python3 >/dev/null 2>&1; then
    echo "==> skipping Python example: python3 not found" >&2
    return 0
  fi
  echo "==> Python example (componentize-py)"
  "$ROOT/sdk/python/build.sh" "$ROOT/sdk/examples/counter-py" "$OUT/counter_py.wasm" plugin-with-hooks
}

case "$WHAT" in
  rust) build_rust ;;
  js) build_js ;;
  python) build_python ;;
  all)
    build_rust
    if [ -x "$ROOT/sdk/js/build.sh" ]; then build_js; fi
    if [ -x "$ROOT/sdk/python/build.sh" ]; then build_python; fi
    ;;
  *) echo "usage: $0 [all|rust|js|python]" >&2; exit 64 ;;
esac
