#!/usr/bin/env bash
# Builds a JavaScript wsPrism plugin into a WebAssembly component.
#
#   sdk/js/build.sh <app.js> <out.wasm> [world]
#
# Uses componentize-js (installed into sdk/js/node_modules on first use) against
# wit/wsprism-plugin.wit, world `plugin` (or the one given: `plugin-with-hooks`
# for a plugin that exports the `hooks`; the first worlds `ext-lane-plugin` and
# `ext-lane-plugin-lifecycle` still build and load). The gateway offers no
# wasi:http, so the HTTP and fetch-event features are disabled. The bindings
# componentize-js generates are rewritten on the way (lib/bindings.mjs: no
# `await` of a plain return value, no debug-log calls), which makes each call
# cheaper without changing what a plugin sees.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SRC="${1:?usage: build.sh <app.js> <out.wasm> [world]}"
OUT="${2:?usage: build.sh <app.js> <out.wasm> [world]}"
WORLD="${3:-plugin}"
if [ ! -x "$HERE/node_modules/.bin/componentize-js" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --silent)
fi
node --import "$HERE/lib/register.mjs" \
  "$HERE/node_modules/@bytecodealliance/componentize-js/src/cli.js" "$SRC" \
  --wit "$ROOT/wit" --world-name "$WORLD" \
  -d http fetch-event \
  -o "$OUT"
