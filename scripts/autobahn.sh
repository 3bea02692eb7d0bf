#!/usr/bin/env bash
# Autobahn TestSuite (fuzzingclient) against the raw diagnostics echo endpoint.
#
#   scripts/autobahn.sh            # cases 1-7, 9, 10 (12/13 need compression: excluded)
#   AUTOBAHN_CASES='["1.*","5.*"]' scripts/autobahn.sh   # a subset
#
# Starts a release build of the gateway on 127.0.0.1 (an ephemeral port) with
# `gateway.diagnostics.echo: true`, runs `wstest -m fuzzingclient` against
# ws://127.0.0.1:PORT/v1/echo and prints OK / NON-STRICT / INFORMATIONAL /
# FAILED / UNCLEAN counts from the JSON report (target/autobahn/reports/).
#
# The suite needs Python 2.7 (AUTOBAHN_PYTHON, pyenv 2.7.18, python2.7 or
# python2 on PATH). It is installed once into a virtualenv under
# ${AUTOBAHN_VENV:-~/.cache/wsprism/autobahn-py27}. Without Python 2.7 (or when
# the install fails, e.g. offline) the script says it skipped and exits 0;
# tests/gateway/conformance.rs mirrors the key categories in Rust.
#
# Exit status: 0 when no case FAILED (or skipped), 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/target/autobahn"
VENV="${AUTOBAHN_VENV:-$HOME/.cache/wsprism/autobahn-py27}"
CASES="${AUTOBAHN_CASES:-[\"1.*\",\"2.*\",\"3.*\",\"4.*\",\"5.*\",\"6.*\",\"7.*\",\"9.*\",\"10.*\"]}"

skip() {
  echo "autobahn: SKIPPED: $*"
  exit 0
}

find_python2() {
  local c
  for c in "${AUTOBAHN_PYTHON:-}" "$HOME/.pyenv/versions/2.7.18/bin/python" python2.7 python2; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (2, 7) else 1)' 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

PY2="$(find_python2)" || skip "no Python 2.7 found (set AUTOBAHN_PYTHON); see tests/gateway/conformance.rs for the Rust mirror"

if ! "$VENV/bin/python" -c 'import txaio, autobahntestsuite' >/dev/null 2>&1; then
  echo "== installing autobahntestsuite into $VENV"
  mkdir -p "$(dirname "$VENV")"
  if ! "$PY2" -m virtualenv --version >/dev/null 2>&1; then
    # virtualenv 20.22 dropped support for creating Python 2 environments.
    "$PY2" -m pip install --user -q 'virtualenv<20.22' || skip "cannot install virtualenv for Python 2.7"
  fi
  "$PY2" -m virtualenv -q "$VENV" || skip "cannot create a Python 2.7 virtualenv at $VENV"
  "$VENV/bin/pip" install -q 'autobahntestsuite==25.10.1' 'autobahn[twisted]==0.10.9' ||
    skip "cannot install autobahntestsuite (offline?)"
fi

echo "== building the gateway (release)"
(cd "$ROOT" && cargo build --release --bin wsprism)
BIN="$TARGET_DIR/release/wsprism"

rm -rf "$OUT"
mkdir -p "$OUT/reports" "$OUT/plugins"
cat >"$OUT/wsprism.yaml" <<'YAML'
version: 1
gateway:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  handshake_limit: { enabled: false }
  diagnostics: { echo: true }
  plugins: { dir: plugins, watch: false }
tenants:
  - id: conformance
    auth: { tickets: { t: conformance } }
YAML

# txaio must pick its framework before autobahntestsuite is imported.
cat >"$OUT/wstest.py" <<'PY'
import sys
import txaio
txaio.use_twisted()
from autobahntestsuite.wstest import run
sys.argv[0] = "wstest"
sys.exit(run())
PY

LOG="$OUT/gateway.log"
RUST_LOG="${RUST_LOG:-warn,wsprism=info}" "$BIN" --config "$OUT/wsprism.yaml" >"$LOG" 2>&1 &
GW_PID=$!
trap 'kill "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true' EXIT

ADDR=""
for _ in $(seq 1 100); do
  ADDR="$(sed -n 's/.*wsPrism gateway active at \([0-9.]*:[0-9]*\).*/\1/p' "$LOG" | head -n1)"
  [ -n "$ADDR" ] && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$LOG"; echo "autobahn: the gateway did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$LOG"; echo "autobahn: no listen address in the log" >&2; exit 1; }
echo "== gateway at $ADDR; running Autobahn fuzzingclient (cases $CASES)"

cat >"$OUT/fuzzingclient.json" <<JSON
{
  "outdir": "$OUT/reports",
  "servers": [{ "agent": "wsprism", "url": "ws://$ADDR/v1/echo" }],
  "cases": $CASES,
  "exclude-cases": ["12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON

START=$(date +%s)
(cd "$OUT" && "$VENV/bin/python" "$OUT/wstest.py" -m fuzzingclient -s "$OUT/fuzzingclient.json") \
  >"$OUT/wstest.log" 2>&1 || { tail -n 30 "$OUT/wstest.log"; echo "autobahn: wstest failed" >&2; exit 1; }
echo "== done in $(($(date +%s) - START)) s; report: $OUT/reports/index.html"

"$VENV/bin/python" - "$OUT/reports/index.json" <<'PY'
import json, sys
from collections import Counter
report = json.load(open(sys.argv[1]))
cases = report["wsprism"]
behavior = Counter(c["behavior"] for c in cases.values())
close = Counter(c["behaviorClose"] for c in cases.values())
unclean = sum(1 for c in cases.values() if "UNCLEAN" in (c["behavior"], c["behaviorClose"]))
print("cases:         %d" % len(cases))
for k in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"):
    print("%-14s %d" % (k + ":", behavior.get(k, 0)))
print("%-14s %d" % ("UNCLEAN:", unclean))
others = dict((k, v) for k, v in close.items() if k not in ("OK", "INFORMATIONAL"))
if others:
    print("close behaviour other than OK: %s" % json.dumps(others))
bad = sorted((k for k, c in cases.items() if c["behavior"] == "FAILED" or c["behaviorClose"] in ("FAILED", "UNCLEAN", "WRONG CODE")),
             key=lambda s: [int(x) for x in s.split(".")])
if bad:
    print("failed / unclean cases: %s" % " ".join(bad))
    sys.exit(1)
PY
