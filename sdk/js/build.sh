#!/usr/bin/env bash
# Builds a JavaScript wsPrism plugin into a WebAssembly component.
#
#   sdk/js/build.sh <app.js> <out.wasm> [world]
#
# Uses componentize-js (installed into sdk/js/node_modules on first use) against
# wit/wsprism-plugin.wit, world `ext-lane-plugin` (or the one given: pass
# `ext-lane-plugin-lifecycle` for a plugin that exports the `lifecycle` hooks). The gateway offers no
# wasi:http, so the HTTP and fetch-event features are disabled.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SRC="${1:?usage: build.sh <app.js> <out.wasm>}"
OUT="${2:?usage: build.sh <app.js> <out.wasm>}"
WORLD="${3:-ext-lane-plugin}"
if [ ! -x "$HERE/node_modules/.bin/componentize-js" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --silent)
fi
"$HERE/node_modules/.bin/componentize-js" "$SRC" \
  --wit "$ROOT/wit" --world-name "$WORLD" \
  -d http fetch-event \
  -o "$OUT"
