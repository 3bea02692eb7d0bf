#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from src/app.js with
# componentize-js, in this folder.
#
#   ./build.sh
#
# Needs Node.js 20+ and npm. componentize-js is installed on first use with
# `npm ci` from package.json / package-lock.json (the versions the wsPrism SDK
# pins) into node_modules/ here, or into $WSPRISM_JS_TOOLCHAIN when set (share
# one toolchain between plugin projects).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${WSPRISM_JS_TOOLCHAIN:-$HERE}"
if [ ! -x "$TOOLS/node_modules/.bin/componentize-js" ] \
  || ! cmp -s "$HERE/package-lock.json" "$TOOLS/package-lock.json"; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "build.sh: npm not found; install Node.js 20 or later (https://nodejs.org)" >&2
    exit 1
  fi
  mkdir -p "$TOOLS"
  if [ "$TOOLS" != "$HERE" ]; then
    cp "$HERE/package.json" "$HERE/package-lock.json" "$TOOLS/"
  fi
  (cd "$TOOLS" && npm ci --no-audit --no-fund --silent)
fi
# The gateway offers no wasi:http: the HTTP and fetch-event features are off.
"$TOOLS/node_modules/.bin/componentize-js" "$HERE/src/app.js" \
  --wit "$HERE/wit" --world-name {{world}} \
  -d http fetch-event \
  -o "$HERE/{{name}}.wasm"
echo "built $HERE/{{name}}.wasm"
