#!/usr/bin/env bash
# Cross-node benchmark (BENCHMARKS.md "Cross-node"): one redis-server and two
# gateway nodes in cluster mode on this machine, plus a gateway in local mode
# for reference, all unpinned (as users run them), with bench/wsprism-bench.yaml.
#
# For each lane (chat = reliable, hot = lossy relay) it runs `wsprism-bench
# fanout` with ROOMS rooms x MEMBERS members at RATE publications/s per room:
#   local  - every member on the local-mode gateway (no Redis at all);
#   same   - every member on node a (cluster mode, nothing crosses);
#   split  - publishers on node a, odd members on node b (--peer-url), so each
#            publication crosses the bus to half of the receivers.
# Reported per run: delivery %, latency p50/p99 (split: same-node and
# cross-node receivers apart), CPU per delivery summed over the gateways and
# redis-server (from /proc) twice: over the whole run, set-up and teardown
# included, and over the publishing window only (`steady`, measured by
# wsprism-bench with --pid naming all of them), and Redis PUBLISH
# calls per publication (INFO commandstats, less the one announcement per
# join and per session close). Knobs: RUNS=3 DURATION=5 RATE=50 ROOMS=10 MEMBERS=100
# LANES="chat hot" SKIP_BUILD=0 REDIS_PORT=16390 AWAKE=0 (AWAKE=1: every CPU
# held out of its idle state through /dev/cpu_dma_latency, root; a tuned run,
# as in scripts/bench.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
RATE=${RATE:-50}
ROOMS=${ROOMS:-10}
MEMBERS=${MEMBERS:-100}
LANES=${LANES:-chat hot}
SKIP_BUILD=${SKIP_BUILD:-0}
REDIS_PORT=${REDIS_PORT:-16390}
AWAKE=${AWAKE:-0}

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install -y redis-server)" >&2; exit 1; }
if [ "$SKIP_BUILD" != 1 ]; then
  cargo build --release -p wsprism -p wsprism-bench
fi
BIN=${CARGO_TARGET_DIR:-target}/release
if [ "$AWAKE" = 1 ]; then
  . scripts/hold-cpus-awake.sh
  hold_cpus_awake || exit 1
  echo "== CPUs held out of idle states (AWAKE=1): a tuned run, not as shipped"
fi
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
pids+=("$REDIS_PID")
wait_port "$REDIS_PORT"

# A node's config: the bench config with its ports and (optionally) cluster mode.
config() { # name port admin cluster(yes/no)
  local out="$WORK/$1.yaml"
  sed -e "s/^  listen: .*/  listen: \"127.0.0.1:$2\"/" \
      -e "s/^  admin_listen: .*/  admin_listen: \"127.0.0.1:$3\"/" \
      -e "s#dir: ../plugins#dir: $PWD/plugins#" \
      bench/wsprism-bench.yaml >"$out"
  if [ "$4" = yes ]; then
    sed -i "s#^gateway:#gateway:\n  cluster: { mode: redis, redis_url: \"redis://127.0.0.1:$REDIS_PORT\", node_id: $1 }#" "$out"
  fi
  echo "$out"
}
start() { # name port admin cluster
  local cfg
  cfg=$(config "$@")
  "$BIN/wsprism" --config "$cfg" >"$WORK/$1.log" 2>&1 &
  pids+=($!)
  eval "PID_$1=$!"
  wait_port "$2"
}
start local 18090 19190 no
start a 18091 19191 yes
start b 18092 19192 yes
# Both nodes report the cluster up before measuring.
for port in 18091 18092; do
  for _ in $(seq 1 100); do
    curl -s "http://127.0.0.1:$port/readyz" | grep -q '"cluster":"up"' && break
    sleep 0.1
  done
done

cpu_ticks() { # pids... -> summed utime+stime
  local sum=0 p
  for p in "$@"; do
    set -- $(cut -d' ' -f14,15 "/proc/$p/stat")
    sum=$((sum + $1 + $2))
  done
  echo "$sum"
}
publishes() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_publish:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}
HZ=$(getconf CLK_TCK)

RESULTS="$WORK/results.jsonl"
for run in $(seq 1 "$RUNS"); do
  for lane in $LANES; do
    for layout in local same split; do
      case $layout in
        local) args=(--url ws://127.0.0.1:18090); procs=("$PID_local") ;;
        same) args=(--url ws://127.0.0.1:18091); procs=("$PID_a" "$PID_b" "$REDIS_PID") ;;
        split) args=(--url ws://127.0.0.1:18091 --peer-url ws://127.0.0.1:18092); procs=("$PID_a" "$PID_b" "$REDIS_PID") ;;
      esac
      room_prefix="r$run-$lane-$layout"
      c0=$(cpu_ticks "${procs[@]}"); p0=$(publishes)
      "$BIN/wsprism-bench" fanout "${args[@]}" --lane "$lane" --rooms "$ROOMS" \
        --members "$MEMBERS" --rate "$RATE" --duration "$DURATION" --drain 2 \
        --room-prefix "$room_prefix" --pid "$(IFS=,; echo "${procs[*]}")" \
        --json --quiet >"$WORK/out.json"
      # Closing sessions announce their leave after the bench exits.
      sleep 1
      c1=$(cpu_ticks "${procs[@]}"); p1=$(publishes)
      # Every join and every session close in cluster mode announces itself
      # on the room channel (one PUBLISH each): not publications.
      presence=0
      [ "$layout" = local ] || presence=$((2 * ROOMS * MEMBERS))
      python3 - "$WORK/out.json" "$lane" "$layout" "$run" "$((c1 - c0))" "$HZ" "$((p1 - p0 - presence))" >>"$RESULTS" <<'EOF'
import json, sys
out, lane, layout, run, ticks, hz, pubs = sys.argv[1:]
s = json.load(open(out))
row = s["steps"][0] if "steps" in s else s["rows"][0]
delivered = row["delivered"] or 1
print(json.dumps({
    "lane": lane, "layout": layout, "run": int(run),
    "delivery_pct": row["delivery_pct"],
    "p50_us": row.get("latency_p50_us"), "p99_us": row.get("latency_p99_us"),
    "same_p99_us": row.get("latency_same_p99_us"), "cross_p99_us": row.get("latency_cross_p99_us"),
    "same_p50_us": row.get("latency_same_p50_us"), "cross_p50_us": row.get("latency_cross_p50_us"),
    "cpu_us_per_delivery": round(int(ticks) * 1e6 / int(hz) / delivered, 3),
    "steady_cpu_us_per_delivery": row.get("server_cpu_us_per_delivery"),
    "redis_publish_per_publication": round(int(pubs) / max(row["published"], 1), 3),
}))
EOF
    done
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None
print(f"{'lane':5} {'layout':6} {'deliv%':>7} {'p50us':>8} {'p99us':>8} {'same p99':>9} {'cross p99':>9} {'cross-same p99':>14} {'cpu us/deliv':>12} {'steady cpu':>10} {'PUBLISH/pub':>11}")
for lane in dict.fromkeys(r["lane"] for r in rows):
    for layout in ("local", "same", "split"):
        rs = [r for r in rows if r["lane"] == lane and r["layout"] == layout]
        if not rs:
            continue
        diff = med([r["cross_p99_us"] - r["same_p99_us"] for r in rs if r["cross_p99_us"] is not None and r["same_p99_us"] is not None])
        print(f"{lane:5} {layout:6} {med([r['delivery_pct'] for r in rs]):>7} {med([r['p50_us'] for r in rs]):>8} {med([r['p99_us'] for r in rs]):>8} "
              f"{str(med([r['same_p99_us'] for r in rs])):>9} {str(med([r['cross_p99_us'] for r in rs])):>9} {str(diff):>14} "
              f"{med([r['cpu_us_per_delivery'] for r in rs]):>12} {str(med([r['steady_cpu_us_per_delivery'] for r in rs])):>10} {med([r['redis_publish_per_publication'] for r in rs]):>11}")
    runs = len(set(r['run'] for r in rows))
    for key, what in (("cpu_us_per_delivery", "whole run, set-up included"),
                      ("steady_cpu_us_per_delivery", "publishing window")):
        loc = med([r[key] for r in rows if r["lane"] == lane and r["layout"] == "local"])
        spl = med([r[key] for r in rows if r["lane"] == lane and r["layout"] == "split"])
        # Each run measures local and split a few seconds apart: the median
        # of those per-run ratios is steadier on a noisy machine than the
        # ratio of the two medians.
        per_run = []
        for run in sorted(set(r["run"] for r in rows)):
            l = [r[key] for r in rows if r["lane"] == lane and r["layout"] == "local" and r["run"] == run]
            s = [r[key] for r in rows if r["lane"] == lane and r["layout"] == "split" and r["run"] == run]
            if l and s and l[0] and s[0]:
                per_run.append(s[0] / l[0])
        if loc and spl:
            print(f"{lane}: CPU per delivery ({what}), split cluster vs local mode: {round(spl / loc, 2)}x "
                  f"(medians of {runs} runs); per-run ratios {[round(x, 2) for x in per_run]}, median {med(per_run)}x")
EOF
