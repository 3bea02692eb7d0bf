#!/usr/bin/env bash
# Soak (not in CI; several minutes): a release build of the gateway with
# thousands of benign sessions chatting in rooms, first alone, then while the
# hostile-input attacks run together (wsprism-soak,
# tools/wsprism-bench/src/bin/wsprism-soak.rs). Prints benign chat
# round-trip p50/p99 before and during the attacks, benign disconnects and the
# gateway's peak RSS. Exits 1 when a benign session was disconnected.
#
#   scripts/soak.sh                      # 10,000 sessions, 60 s per phase
#   scripts/soak.sh 2000 30              # sessions, seconds per phase
#
# Each benign session needs one file descriptor on each side; the script raises
# the soft `ulimit -n` as far as the hard limit allows.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SESSIONS="${1:-10000}"
PHASE_SECS="${2:-60}"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
need=$((SESSIONS + 2000))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "soak: ulimit -n is $(ulimit -n); $SESSIONS sessions need about $need" >&2
  exit 1
fi

cd "$ROOT"
echo "== building (release): gateway, soak driver, test plugins"
cargo build --release -p wsprism -p wsprism-bench --bin wsprism --bin wsprism-soak
PLUGINS=""
if rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2; then
  (cd sdk/examples && env -u CARGO_TARGET_DIR cargo build -q --release --target wasm32-wasip2 \
    --target-dir "$ROOT/target/wasm-examples") && PLUGINS="$ROOT/target/wasm-examples/wasm32-wasip2/release"
fi
echo "== soak: $SESSIONS sessions, $PHASE_SECS s baseline + $PHASE_SECS s under attack"
exec "$TARGET_DIR/release/wsprism-soak" --gateway-bin "$TARGET_DIR/release/wsprism" \
  --sessions "$SESSIONS" --phase-secs "$PHASE_SECS" ${PLUGINS:+--plugins "$PLUGINS"}
