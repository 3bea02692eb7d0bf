#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for a bounded time (libFuzzer via cargo-fuzz).
#
#   scripts/fuzz.sh              # every target, 60 s each
#   scripts/fuzz.sh 300          # every target, 5 min each
#   scripts/fuzz.sh 30 ext_decode hot_decode
#
# Targets: ext_decode (wsprism::protocol::ext::decode), hot_decode
# (wsprism::protocol::hot::decode + stamp), config_parse
# (wsprism::config::parse_with_env), allowlist (wsprism::policy::allowlist,
# compared against a naive reference matcher).
#
# Needs the nightly toolchain and cargo-fuzz (installed here if missing). The
# committed seeds live in fuzz/corpus/<target>/seed-*; what libFuzzer learns goes
# to target/fuzz-corpus/<target>/ (not committed), crashes to
# fuzz/artifacts/<target>/. FUZZ_SANITIZER=address turns ASan on (slower; the
# crate forbids unsafe code, so the default is none). Exit status 1 when a
# target found a crash: turn it into a regression unit test.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ext_decode hot_decode config_parse allowlist)
SAN="${FUZZ_SANITIZER:-none}"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

cd "$ROOT"
echo "== building fuzz targets (sanitizer: $SAN)"
cargo +nightly fuzz build -O -s "$SAN"

found=0
for t in "${TARGETS[@]}"; do
  work="$ROOT/target/fuzz-corpus/$t"
  mkdir -p "$work" "$ROOT/fuzz/artifacts/$t"
  log="$ROOT/target/fuzz-corpus/$t.log"
  max_len=4096
  [ "$t" = config_parse ] && max_len=16384
  echo "== $t for ${SECS}s"
  set +e
  cargo +nightly fuzz run -O -s "$SAN" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$SECS" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
  cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -n1 || true)"
  corpus="$(find "$work" -type f | wc -l)"
  if [ "$rc" -ne 0 ]; then
    found=1
    echo "   FOUND a crash (exit $rc): see $log and fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR|Test unit written' "$log" | head -n 5 || true
  else
    echo "   ok: ${execs:-?} execs, ${cov:-cov: ?}, corpus $corpus files"
  fi
done
exit "$found"
