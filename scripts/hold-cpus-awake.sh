# Sourced by scripts/bench.sh and scripts/bench-cluster.sh for AWAKE=1.
#
# hold_cpus_awake: keeps every CPU out of its idle (halt) state until the
# calling script exits, by holding /dev/cpu_dma_latency open at 0 (root). A
# tuned setting, not as shipped: on a VM, waking a halted vCPU costs the
# waker several microseconds, which a loopback bench charges to the server
# (see BENCHMARKS.md "JavaScript and Python plugins").
hold_cpus_awake() {
  # The request stays in force while the file is open.
  if ! exec {AWAKE_FD}>/dev/cpu_dma_latency 2>/dev/null; then
    echo "AWAKE=1 needs write access to /dev/cpu_dma_latency (root)" >&2
    return 1
  fi
  printf '\0\0\0\0' >&"$AWAKE_FD"
}
