#!/usr/bin/env bash
# Builds a Python wsPrism plugin into a WebAssembly component.
#
#   sdk/python/build.sh <app dir containing app.py> <out.wasm> [world]
#
# Uses componentize-py 0.25.x (installed with pip on first use) against
# wit/wsprism-plugin.wit, world `plugin` (or the one given: `plugin-with-hooks`
# for a plugin that exports the `hooks`; the first worlds `ext-lane-plugin` and
# `ext-lane-plugin-lifecycle` still build and load).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
APP_DIR="${1:?usage: build.sh <app dir> <out.wasm> [world]}"
OUT="${2:?usage: build.sh <app dir> <out.wasm> [world]}"
WORLD="${3:-plugin}"
if ! command -v componentize-py >/dev/null 2>&1; then
  python3 -m pip install --quiet -r "$HERE/requirements.txt"
fi
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$APP_DIR"
componentize-py -d "$ROOT/wit" -w "$WORLD" componentize app -o "$OUT"
