#!/usr/bin/env bash
# Benchmarks (BENCHMARKS.md): builds release, starts the gateway with
# bench/wsprism-bench.yaml (and bench/wsprism-bench-jwt.yaml) and the raw
# baseline servers on loopback, runs every mode RUNS times against both, and
# prints the results table (medians over runs, ratios to the baseline); with
# UPDATE=1 (the default) it also rewrites the table in BENCHMARKS.md.
#
# The servers are pinned to CPU $SERVER_CPU and the load generator to CPU
# $CLIENT_CPU (taskset), so each side has one core of a 2-core machine.
#
# Other processes on the machine skew every number, so before each run the
# script waits (up to QUIET_WAIT seconds) until the machine is quiet (less than
# QUIET_PCT percent of one core busy); every summary also records how much CPU
# other processes used during the run (`other_cpu_pct`).
#
# Knobs (environment): RUNS=3 DURATION=5 IDLE_CONNS=10000 FANOUT_RATES=...
# FANOUT_DURATION=3 ECHO_CONNS=32 CONNECT_CONC=16 SERVER_CPU=0 CLIENT_CPU=1
# QUIET_PCT=15 QUIET_WAIT=300 UPDATE=1 SKIP_BUILD=0 AWAKE=0
# ONLY="echo_hot fanout_hot ..." (a subset of the cases).
# AWAKE=1 keeps every CPU out of its idle (halt) state for the whole run by
# holding /dev/cpu_dma_latency at 0 (root): a tuned figure, not the shipped
# one, so it does not rewrite BENCHMARKS.md. On a VM, waking the halted vCPU of
# an idle load generator costs the sender several microseconds per reply over
# loopback; cases where the load generator idles (echo_js, echo_py) pay it,
# the native baseline (load generator saturated) does not. See BENCHMARKS.md
# "JavaScript and Python plugins".
#
# The JavaScript and Python cases (echo_js, echo_py) build their plugins from
# sdk/examples/echo-js and echo-py with sdk/js/build.sh and
# sdk/python/build.sh (npm / pip on first use) into $CARGO_TARGET_DIR/bench/plugins
# when missing or older than their sources, and serve them from a fourth
# gateway (bench config plus routes echo_js and echo_py).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
IDLE_CONNS=${IDLE_CONNS:-10000}
FANOUT_RATES=${FANOUT_RATES:-25,50,100,200,300,400,500,600,800,1000,1200,1500,2000}
FANOUT_DURATION=${FANOUT_DURATION:-3}
CHAT_RATE=${CHAT_RATE:-20}
ECHO_CONNS=${ECHO_CONNS:-32}
CONNECT_CONC=${CONNECT_CONC:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
QUIET_PCT=${QUIET_PCT:-15}
QUIET_WAIT=${QUIET_WAIT:-300}
UPDATE=${UPDATE:-1}
AWAKE=${AWAKE:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
ONLY=${ONLY:-echo_hot echo_ext echo_js echo_py fanout_hot fanout_chat latest idle idle_shipped connect_static connect_jwt}

GATEWAY_URL=ws://127.0.0.1:18080
JWT_URL=ws://127.0.0.1:18083
SNDBUF_URL=ws://127.0.0.1:18084
JSPY_URL=ws://127.0.0.1:18085
JSPY_ADMIN=127.0.0.1:19095
ECHO_URL=ws://127.0.0.1:18081
RELAY_URL=ws://127.0.0.1:18082

TARGET_DIR=${CARGO_TARGET_DIR:-target}
mkdir -p "$TARGET_DIR/bench/bin"
# Absolute: derived configs name directories in it, and a gateway reads a
# relative path in its config from the config file's own directory.
OUT=$(cd "$TARGET_DIR/bench" && pwd)
BIN="$OUT/bin"
RESULTS="$OUT/results.jsonl"

# 10,000 connections need 10,000 descriptors on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "== open files limit: $(ulimit -n)"

# A shared CARGO_TARGET_DIR may be used by other checkouts of this package,
# whose builds replace target/release/wsprism at any time. Copy the binaries
# right after the build and check that the copies were compiled from this
# checkout (their debug info names it as the compilation directory).
# The gateway binary names its checkout (paths it embeds at build time)
# even stripped; the load generator, stripped, names none, so only the
# gateway is checked.
ours() { grep -qaF "$PWD" "$1"; }
if [ "$SKIP_BUILD" != 1 ] || [ ! -x "$BIN/wsprism" ] || [ ! -x "$BIN/wsprism-bench" ]; then
  for attempt in 1 2 3; do
    echo "== cargo build --release -p wsprism -p wsprism-bench --bins"
    cargo build --release -p wsprism -p wsprism-bench --bins
    cp "$TARGET_DIR/release/wsprism" "$TARGET_DIR/release/wsprism-bench" "$BIN/"
    if ours "$BIN/wsprism"; then break; fi
    echo "   $TARGET_DIR/release held another checkout's binaries; building again" >&2
    if [ "$attempt" = 3 ]; then
      echo "cannot obtain this checkout's binaries from $TARGET_DIR" >&2
      exit 1
    fi
  done
fi
ours "$BIN/wsprism" || { echo "$BIN/wsprism was not built from $PWD" >&2; exit 1; }
echo "== binaries: $BIN (built from $PWD)"

# A per-run random secret unless one is given; the jwt gateway reads it from
# the environment (secret_env), the bench gets it on its command line.
export BENCH_JWT_SECRET=${BENCH_JWT_SECRET:-$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')}

# Command prefixes that pin a process to one CPU (empty without taskset or
# with a single CPU). taskset execs the program, so `$!` is the server's pid.
PIN_SERVER=()
PIN_CLIENT=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER=(taskset -c "$SERVER_CPU")
  PIN_CLIENT=(taskset -c "$CLIENT_CPU")
fi

if [ "$AWAKE" = 1 ]; then
  . scripts/hold-cpus-awake.sh
  hold_cpus_awake || exit 1
  UPDATE=0
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

wait_port() { # host port
  # Up to 120 s: the first start after a plugin rebuild compiles the JS and
  # Python demo components (seconds each on the one pinned core) before the
  # gateway listens; later starts load them from the compile cache.
  for _ in $(seq 1 2400); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "the server exited at start; see $OUT/*.log" >&2
      return 1
    fi
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2
  return 1
}

SERVER_PID=
# The gateway's environment: RUST_LOG=warn unless a case measures the
# default level (`idle_shipped` sets GW_ENV=(-u RUST_LOG)).
GW_ENV=(RUST_LOG=warn)
start_gateway() { # config port
  env "${GW_ENV[@]}" "${PIN_SERVER[@]}" "$BIN/wsprism" --config "$1" >>"$OUT/gateway.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port 127.0.0.1 "$2"
}

start_baseline() { # mode port
  "${PIN_SERVER[@]}" "$BIN/wsprism-bench" baseline --mode "$1" --listen "127.0.0.1:$2" >>"$OUT/baseline.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  wait_port 127.0.0.1 "$2"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
# Percent of one core the whole machine kept busy over the last second.
busy_pct() {
  local u n s i w q sq st b1 b2
  read -r _ u n s i w q sq st _ </proc/stat
  b1=$((u + n + s + q + sq + st))
  sleep 1
  read -r _ u n s i w q sq st _ </proc/stat
  b2=$((u + n + s + q + sq + st))
  echo $(((b2 - b1) * 100 / CLK_TCK))
}

# Waits until other processes leave the machine (almost) alone.
wait_quiet() {
  local waited=0 p
  while p=$(busy_pct) && [ "$p" -gt "$QUIET_PCT" ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
    echo "   machine busy ($p% of a core used by other processes); waiting"
    sleep 4
    waited=$((waited + 5))
  done
}

# bench CASE SERVER RUN PID MODE ARGS...: one run against server PID, its JSON
# summary appended to $RESULTS.
bench() {
  local case=$1 server=$2 run=$3 pid=$4
  shift 4
  wait_quiet
  echo "-- $case / $server / run $run: wsprism-bench $*"
  "${PIN_CLIENT[@]}" "$BIN/wsprism-bench" "$@" --pid "$pid" --json --quiet \
    --tag "case=$case" --tag "server=$server" --tag "run=$run" >>"$RESULTS" \
    2>>"$OUT/bench.log"
}

wants() { [[ " $ONLY " == *" $1 "* ]]; }

# derive_config OUT PORT ADMIN_PORT PLUGIN_DIR [SED_EXPR...]: the bench config
# listening on other ports, with an absolute plugin dir and extra edits.
derive_config() {
  local out=$1 port=$2 admin=$3 dir=$4 e
  shift 4
  local edits=()
  for e in "$@"; do edits+=(-e "$e"); done
  sed -e "s/^  listen: .*/  listen: \"127.0.0.1:$port\"/" \
      -e "s/^  admin_listen: .*/  admin_listen: \"127.0.0.1:$admin\"/" \
      -e "s#dir: ../plugins#dir: $dir#" \
      "${edits[@]}" bench/wsprism-bench.yaml >"$out"
}

: >"$RESULTS"
echo "== results -> $RESULTS (logs in $OUT/*.log)"

# --- Echo, fan-out and handshakes: all four servers stay up (idle ones cost no
# CPU) and gateway and baseline runs alternate, so both see the same machine.
start_gateway bench/wsprism-bench.yaml 18080
GW=$SERVER_PID
start_gateway bench/wsprism-bench-jwt.yaml 18083
GW_JWT=$SERVER_PID
# The bench config with a 32 KiB socket send buffer (the `latest` case's
# tuned figure beside the as-shipped one).
SNDBUF_CFG="$OUT/wsprism-bench-sndbuf.yaml"
derive_config "$SNDBUF_CFG" 18084 19094 "$PWD/plugins" \
  's/^  queues: { \(.*\) }/  queues: { \1, socket_send_buffer_bytes: 32768 }/'
start_gateway "$SNDBUF_CFG" 18084
GW_SNDBUF=$SERVER_PID
# The JavaScript and Python echo plugins: built here (seconds each) when
# missing or older than their sources, served beside the Rust `echo` by a
# gateway of their own so the other gateways load none of the large components.
GW_JSPY=
if wants echo_js || wants echo_py; then
  JSPY_PLUGINS="$OUT/plugins"
  mkdir -p "$JSPY_PLUGINS"
  stale() { # out inputs...
    local out=$1 f
    shift
    [ -f "$out" ] || return 0
    for f in "$@"; do [ "$f" -nt "$out" ] && return 0; done
    return 1
  }
  if wants echo_js && stale "$JSPY_PLUGINS/echo_js.wasm" sdk/examples/echo-js/app.js sdk/js/build.sh sdk/js/lib/*.mjs sdk/js/package.json wit/wsprism-plugin.wit; then
    echo "== sdk/js/build.sh sdk/examples/echo-js/app.js"
    sdk/js/build.sh sdk/examples/echo-js/app.js "$JSPY_PLUGINS/echo_js.wasm"
  fi
  if wants echo_py && stale "$JSPY_PLUGINS/echo_py.wasm" sdk/examples/echo-py/app.py sdk/python/build.sh sdk/python/requirements.txt wit/wsprism-plugin.wit; then
    echo "== sdk/python/build.sh sdk/examples/echo-py"
    sdk/python/build.sh sdk/examples/echo-py "$JSPY_PLUGINS/echo_py.wasm"
  fi
  # The bench config also routes `echo` (the Rust plugin); serve it here too
  # so the gateway does not warn about a route to a missing plugin.
  if [ -f plugins/echo.wasm ]; then cp plugins/echo.wasm "$JSPY_PLUGINS/"; fi
  JSPY_CFG="$OUT/wsprism-bench-jspy.yaml"
  derive_config "$JSPY_CFG" 18085 "${JSPY_ADMIN#*:}" "$JSPY_PLUGINS" \
    's/^      - { svc: echo, plugin: echo }/&\n      - { svc: echo_js, plugin: echo_js }\n      - { svc: echo_py, plugin: echo_py }/'
  start_gateway "$JSPY_CFG" 18085
  GW_JSPY=$SERVER_PID
  # A route to a plugin that did not load answers SERVICE_UNAVAILABLE at
  # native speed: measure nothing rather than that.
  for p in echo_js echo_py; do
    wants "$p" || continue
    loaded=
    for _ in $(seq 1 100); do
      if curl -s "http://$JSPY_ADMIN/metrics" \
          | grep -q "^wsprism_plugin_loads_total{plugin=\"$p\",result=\"ok\"}"; then
        loaded=1
        break
      fi
      sleep 0.1
    done
    [ -n "$loaded" ] || { echo "the plugin gateway did not load $p.wasm from $JSPY_PLUGINS (see $OUT/gateway.log)" >&2; exit 1; }
  done
fi
start_baseline echo 18081
BL_ECHO=$SERVER_PID
start_baseline relay 18082
BL_RELAY=$SERVER_PID

ECHO_ARGS=(echo -c "$ECHO_CONNS" --duration "$DURATION" --warmup 1 --payload 32)
FANOUT_ARGS=(fanout --rooms 10 --members 100 --payload 32 --duration "$FANOUT_DURATION" --drain 2)
JWT_ARGS=(connect --tenant jwt --jwt-secret "$BENCH_JWT_SECRET" -c "$CONNECT_CONC" --duration "$DURATION")
for run in $(seq 1 "$RUNS"); do
  if wants echo_hot; then
    bench echo_hot gateway "$run" "$GW" "${ECHO_ARGS[@]}" --url "$GATEWAY_URL" --lane hot
    bench echo_hot baseline "$run" "$BL_ECHO" "${ECHO_ARGS[@]}" --url "$ECHO_URL" --lane hot
  fi
  if wants echo_ext; then
    bench echo_ext gateway "$run" "$GW" "${ECHO_ARGS[@]}" --url "$GATEWAY_URL" --lane ext --svc echo --type echo
    bench echo_ext baseline "$run" "$BL_ECHO" "${ECHO_ARGS[@]}" --url "$ECHO_URL" --lane ext --svc echo --type echo
    # The gateway's native Ext path for the same round trip: chat.send into a
    # room of one (decode, service, encode once, deliver, sys.ack).
    bench echo_ext native "$run" "$GW" "${ECHO_ARGS[@]}" --url "$GATEWAY_URL" --lane ext --svc chat --type send --with-room --data-key msg
  fi
  # The same closed loop through the JavaScript / Python echo plugin (one
  # `reply` host call), with the native `chat` path measured on the same
  # gateway in the same run as its baseline.
  for lang in js py; do
    if wants "echo_$lang"; then
      bench "echo_$lang" gateway "$run" "$GW_JSPY" "${ECHO_ARGS[@]}" --url "$JSPY_URL" --lane ext --svc "echo_$lang" --type echo
      bench "echo_$lang" native "$run" "$GW_JSPY" "${ECHO_ARGS[@]}" --url "$JSPY_URL" --lane ext --svc chat --type send --with-room --data-key msg
    fi
  done
  if wants connect_static; then
    bench connect_static gateway "$run" "$GW" connect --url "$GATEWAY_URL" -c "$CONNECT_CONC" --duration "$DURATION"
    bench connect_static baseline "$run" "$BL_ECHO" connect --url "$ECHO_URL" -c "$CONNECT_CONC" --duration "$DURATION"
  fi
  if wants connect_jwt; then
    # Same client work on both sides (a token signed per connection); the
    # baseline does not verify it.
    bench connect_jwt gateway "$run" "$GW_JWT" "${JWT_ARGS[@]}" --url "$JWT_URL"
    bench connect_jwt baseline "$run" "$BL_ECHO" "${JWT_ARGS[@]}" --url "$ECHO_URL"
  fi
  if wants fanout_hot; then
    bench fanout_hot gateway "$run" "$GW" "${FANOUT_ARGS[@]}" --url "$GATEWAY_URL" --lane hot --rate "$FANOUT_RATES" --stop-on-loss
    bench fanout_hot baseline "$run" "$BL_RELAY" "${FANOUT_ARGS[@]}" --url "$RELAY_URL" --lane hot --rate "$FANOUT_RATES" --stop-on-loss
  fi
  if wants latest; then
    # A position stream at twice what the receiver drains: plain lossy relay
    # (svc 1) vs latest-wins relay (svc 4), as shipped and with SO_SNDBUF.
    bench latest shipped "$run" "$GW" latest --url "$GATEWAY_URL" --duration "$DURATION"
    bench latest gateway "$run" "$GW_SNDBUF" latest --url "$SNDBUF_URL" --duration "$DURATION"
  fi
  if wants fanout_chat; then
    bench fanout_chat gateway "$run" "$GW" "${FANOUT_ARGS[@]}" --url "$GATEWAY_URL" --lane chat --rate "$CHAT_RATE"
    bench fanout_chat baseline "$run" "$BL_RELAY" "${FANOUT_ARGS[@]}" --url "$RELAY_URL" --lane chat --rate "$CHAT_RATE"
  fi
done
for p in "$GW" "$GW_JWT" "$GW_SNDBUF" $GW_JSPY "$BL_ECHO" "$BL_RELAY"; do
  SERVER_PID=$p
  stop_server
done

# --- Idle memory: a fresh server per run, so freed-but-retained heap from an
# earlier run cannot hide the growth.
idle_runs() { # case
  for run in $(seq 1 "$RUNS"); do
    start_gateway bench/wsprism-bench.yaml 18080
    sleep 1
    bench "$1" gateway "$run" "$SERVER_PID" idle --url "$GATEWAY_URL" -n "$IDLE_CONNS" --hold 3
    stop_server
    start_baseline echo 18081
    sleep 1
    bench "$1" baseline "$run" "$SERVER_PID" idle --url "$ECHO_URL" -n "$IDLE_CONNS" --hold 3
    stop_server
  done
}
if wants idle; then
  idle_runs idle
fi

# Idle memory as users run it: no pinning for either server and the
# gateway's default log level (RUST_LOG unset), same connections as above.
if wants idle_shipped; then
  PINNED=("${PIN_SERVER[@]}")
  PIN_SERVER=()
  GW_ENV=(-u RUST_LOG)
  idle_runs idle_shipped
  PIN_SERVER=("${PINNED[@]}")
  GW_ENV=(RUST_LOG=warn)
fi

META=(
  --meta "commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  --meta "date=$(date -u +%Y-%m-%dT%H:%MZ)"
  --meta "rustc=$(rustc --version 2>/dev/null || echo unknown)"
  --meta "pinning=servers on CPU $SERVER_CPU, load generator on CPU $CLIENT_CPU (taskset)"
  --meta "cpu idle states=$([ "$AWAKE" = 1 ] && echo "held off (AWAKE=1, /dev/cpu_dma_latency 0): tuned, not as shipped" || echo "as the machine has them")"
  --meta "settings=RUNS=$RUNS DURATION=${DURATION}s ECHO_CONNS=$ECHO_CONNS CONNECT_CONC=$CONNECT_CONC IDLE_CONNS=$IDLE_CONNS FANOUT_RATES=$FANOUT_RATES FANOUT_DURATION=${FANOUT_DURATION}s CHAT_RATE=$CHAT_RATE"
)
echo "== results"
if [ "$UPDATE" = 1 ]; then
  "$BIN/wsprism-bench" results --input "$RESULTS" "${META[@]}" --update BENCHMARKS.md
else
  "$BIN/wsprism-bench" results --input "$RESULTS" "${META[@]}"
fi
