#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from src/app.py with
# componentize-py, in this folder, for world `{{world}}` of wit/wsprism-plugin.wit
# (for the hooks, build for world plugin-with-hooks: see README.md).
#
#   ./build.sh
#
# Needs python3 with pip. componentize-py (the version in requirements.txt,
# the one the wsPrism SDK pins) is installed on first use into .toolchain/
# here, or into $WSPRISM_PY_TOOLCHAIN when set (share one toolchain between
# plugin projects); nothing is installed system-wide.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${WSPRISM_PY_TOOLCHAIN:-$HERE/.toolchain}"
if ! command -v python3 >/dev/null 2>&1; then
  echo "build.sh: python3 not found; install Python 3.10 or later" >&2
  exit 1
fi
if [ ! -d "$TOOLS/componentize_py" ] || ! cmp -s "$HERE/requirements.txt" "$TOOLS/requirements.txt"; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "build.sh: pip not found for python3; install it (e.g. python3 -m ensurepip)" >&2
    exit 1
  fi
  mkdir -p "$TOOLS"
  python3 -m pip install --quiet --disable-pip-version-check --upgrade \
    --target "$TOOLS" -r "$HERE/requirements.txt"
  cp "$HERE/requirements.txt" "$TOOLS/requirements.txt"
fi
# The app directory is the component's Python path: keep only sources in src/.
cd "$HERE/src"
PYTHONPATH="$TOOLS" python3 -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
  -d "$HERE/wit" -w {{world}} componentize app -o "$HERE/{{name}}.wasm"
echo "built $HERE/{{name}}.wasm"
