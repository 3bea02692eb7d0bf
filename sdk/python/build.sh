#!/usr/bin/env bash
# Builds a Python wsPrism plugin into a WebAssembly component.
#
#   sdk/python/build.sh <app dir containing app.py> <out.wasm> [world]
#
# Uses componentize-py 0.25.x (installed with pip on first use) against
# wit/wsprism-plugin.wit, world `ext-lane-plugin` (or the one given: pass
# `ext-lane-plugin-lifecycle` for a plugin that exports the `lifecycle` hooks).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
APP_DIR="${1:?usage: build.sh <app dir> <out.wasm>}"
OUT="${2:?usage: build.sh <app dir> <out.wasm>}"
WORLD="${3:-ext-lane-plugin}"
if ! command -v componentize-py >/dev/null 2>&1; then
  python3 -m pip install --quiet -r "$HERE/requirements.txt"
fi
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$APP_DIR"
componentize-py -d "$ROOT/wit" -w "$WORLD" componentize app -o "$OUT"
