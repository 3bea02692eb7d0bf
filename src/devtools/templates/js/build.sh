#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from src/app.js with
# componentize-js, in this folder, for world `{{world}}` of wit/wsprism-plugin.wit.
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
if ! command -v node >/dev/null 2>&1; then
  echo "build.sh: node not found; install Node.js 20 or later (https://nodejs.org)" >&2
  exit 1
fi
if [ ! -f "$TOOLS/node_modules/@bytecodealliance/componentize-js/src/cli.js" ] \
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
# lib/register.mjs rewrites the bindings componentize-js generates on their
# way into the component (no `await` of a plain return value, no debug-log
# calls: cheaper calls, same behaviour; see lib/bindings.mjs). The gateway
# offers no wasi:http: the HTTP and fetch-event features are off. For the
# hooks, build for world plugin-with-hooks (see README.md).
node --import "$HERE/lib/register.mjs" "$TOOLS/node_modules/@bytecodealliance/componentize-js/src/cli.js" \
  "$HERE/src/app.js" \
  --wit "$HERE/wit" --world-name {{world}} \
  -d http fetch-event \
  -o "$HERE/{{name}}.wasm"
echo "built $HERE/{{name}}.wasm"
