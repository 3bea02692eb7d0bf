#!/usr/bin/env bash
# Cluster demo (README "Cluster"): a local redis-server and two gateway nodes
# built from the repository's wsprism.yaml in cluster mode.
#   node a: ws://127.0.0.1:8080  admin http://127.0.0.1:9090
#   node b: ws://127.0.0.1:8081  admin http://127.0.0.1:9091
# Connect one client to each node, join the same room, chat: messages cross.
# Ctrl-C stops all three. REDIS_PORT (default 6390) picks Redis's port.
set -euo pipefail
cd "$(dirname "$0")/.."

REDIS_PORT=${REDIS_PORT:-6390}
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is needed (apt-get install -y redis-server)" >&2
    exit 1
  fi
fi
cargo build --release
BIN=$PWD/target/release/wsprism

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
pids+=($!)

# Each node's config: the reference file with its own ports and cluster mode.
# Plugin paths stay relative to the repository (base dir = where the file is).
for node in a b; do
  case $node in a) pub=8080 adm=9090 ;; b) pub=8081 adm=9091 ;; esac
  sed -e "s/^  listen: .*/  listen: \"127.0.0.1:$pub\"/" \
      -e "s/^  admin_listen: .*/  admin_listen: \"127.0.0.1:$adm\"/" \
      -e "s/^    mode: local$/    mode: redis/" \
      -e "s#^    redis_url: .*#    redis_url: \"redis://127.0.0.1:$REDIS_PORT\"#" \
      -e "s/^    node_id: .*/    node_id: \"$node\"/" \
      wsprism.yaml >".cluster-demo-$node.yaml"
  "$BIN" --config ".cluster-demo-$node.yaml" &
  pids+=($!)
done
rm_configs() { rm -f .cluster-demo-a.yaml .cluster-demo-b.yaml; }
trap 'rm_configs; cleanup' EXIT INT TERM

for port in 8080 8081; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "node on :$port: $(curl -s "http://127.0.0.1:$port/readyz")"
done
echo "cluster demo running; Ctrl-C stops it"
wait
