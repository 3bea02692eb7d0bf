//! Per-call and per-instance limits of the plugin host, with their rationale.
//!
//! Owns: the tuning constants (budgets, caps, back-off) and the arithmetic that
//! turns `gateway.plugins` plus a tenant's config into the bounds of one call.
//! It does no I/O; `instance.rs` and `bindings.rs` enforce what it computes.

use std::time::Duration;

use crate::config::{PluginsConfig, TenantConfig};

/// Epoch ticker period. Every tick a running guest yields to tokio once, so a
/// guest never holds a worker thread much longer than this, and the CPU budget
/// is counted in these units.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Host calls one `on-message` may make. Generous for real plugins (a vote
/// publishing to a room makes ~5), small enough that a flooding guest is cut
/// long before it could pile up memory in the effects list.
pub(crate) const MAX_HOST_CALLS_PER_CALL: u32 = 1_000;

/// Bytes of `data` one call may queue across reply/publish/send-to-user.
pub(crate) const MAX_PUBLISHED_BYTES_PER_CALL: usize = 1024 * 1024;

/// An instance is recycled after this many calls, bounding what a slow leak in
/// guest memory can accumulate (guest memory is only a cache). Growth past
/// [`RECYCLE_MEMORY_PERCENT`] recycles sooner, so this only has to catch what
/// stays under it. A Python instance costs milliseconds to replace
/// (instantiation, then faulting its heap back in): at 10,000 calls,
/// recycling added ~0.4 µs per message to the Python echo bench; at a million
/// it is amortised to nothing (60,000 calls/s over two lanes recycle each
/// lane about every half minute).
pub(crate) const MAX_CALLS_PER_INSTANCE: u64 = 1_000_000;

/// An instance whose linear memory grew past this share (percent) of
/// `max_memory_bytes` is recycled after its call: guest allocators rarely give
/// memory back, and a fresh instance starts small.
pub(crate) const RECYCLE_MEMORY_PERCENT: usize = 75;

/// Calls running or waiting per instance lane; past it calls answer
/// `Overloaded` instead of piling up behind a slow plugin.
pub(crate) const MAILBOX_CAPACITY: usize = 256;

/// Period of the idle sweeper: an instance that served no call for a whole
/// period is dropped (with its linear memory), so idle instances go after one
/// to two periods; the next message instantiates again from the cached
/// `InstancePre`. One task per host does this, not a timer per call.
pub(crate) const INSTANCE_IDLE_TTL: Duration = Duration::from_secs(300);

/// Plugin-wide strikes within [`CRASH_WINDOW`] that put a (tenant, plugin)
/// into back-off. A strike is an instantiation failure, or a user whose calls
/// faulted (trap, timeout, memory or budget kill), counted once however many
/// sessions and faults it has (see `health.rs`): five users hitting faults
/// within seconds point at the version, one user at its own input.
pub(crate) const CRASH_THRESHOLD: usize = 5;
/// Window in which [`CRASH_THRESHOLD`] strikes, or a session's
/// `max_faults_per_session` faults, trigger a back-off (SPEC §8: 10 s).
pub(crate) const CRASH_WINDOW: Duration = Duration::from_secs(10);
/// Sessions with a fault record kept per (tenant, plugin). A record is small
/// (a few timestamps) and goes stale one window after its last fault or
/// back-off; past this many live records a session's fault still counts as
/// its user's plugin-wide strike, so the table cannot grow without bound under
/// a flood of faulting sessions.
pub(crate) const MAX_FAULTY_SESSIONS: usize = 10_000;
/// First back-off period (plugin-wide or of one session); doubles on each
/// consecutive back-off.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// Longest back-off period.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// CPU budget for instantiation plus `init`: language runtimes (JS, Python)
/// need more than a message handler does, so instantiation gets at least this.
pub(crate) const MIN_INSTANTIATE_BUDGET: Duration = Duration::from_secs(1);

/// Wall-clock slack on top of the CPU budget for scheduling noise: the epoch
/// check only fires at tick boundaries and a yielding guest waits for a worker.
pub(crate) const WALL_CLOCK_SLACK: Duration = Duration::from_millis(250);

/// Fresh instances alive at once in `per_message` mode, over all tenants:
/// bounds the memory a burst of calls can claim.
pub(crate) const MAX_CONCURRENT_FRESH_INSTANCES: usize = 32;
/// The share of [`MAX_CONCURRENT_FRESH_INSTANCES`] one tenant may hold, so one
/// tenant's burst queues on its own budget and other tenants' calls still
/// find instances.
pub(crate) const MAX_CONCURRENT_FRESH_INSTANCES_PER_TENANT: usize = 8;

/// Largest plugin file accepted (JS and Python components are 10–40 MiB).
pub(crate) const MAX_PLUGIN_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Largest backend response body handed to a guest.
pub(crate) const MAX_BACKEND_BODY_BYTES: usize = 1024 * 1024;

/// Longest plugin log line kept (the rest is cut); applies to the `log`
/// import and to lines of guest stdout/stderr.
pub(crate) const MAX_LOG_LINE_BYTES: usize = 1024;

/// Guest stdout+stderr bytes one call may put into the logs; the rest is
/// dropped (and counted in one warning). Enough for a panic message and some
/// debug prints, far too little to flood the log pipeline.
pub(crate) const MAX_OUTPUT_BYTES_PER_CALL: usize = 16 * 1024;

/// Log events (lines) of guest stdout+stderr per call, so a stream of empty
/// lines is bounded too.
pub(crate) const MAX_OUTPUT_LINES_PER_CALL: usize = 64;

/// Longest refusal code / message forwarded to a client.
pub(crate) const MAX_REFUSAL_CODE_BYTES: usize = 64;
/// See [`MAX_REFUSAL_CODE_BYTES`].
pub(crate) const MAX_REFUSAL_MESSAGE_BYTES: usize = 512;

/// Bytes the envelope adds around `data` (`{"v":1,"svc":..,"type":..,"room":..}`)
/// besides the names themselves; used for the `max_frame_bytes` check.
pub(crate) const ENVELOPE_OVERHEAD_BYTES: usize = 64;

/// Linear memory the pooling allocator reserves per slot at least. A config
/// reload can raise `max_memory_bytes` up to the value the engine was built with
/// (or this, whichever is larger) without a restart.
pub(crate) const POOLING_MIN_MAX_MEMORY_BYTES: usize = 256 * 1024 * 1024;

/// Component instances the pooling allocator can hold at once.
pub(crate) const POOLING_TOTAL_INSTANCES: u32 = 1_000;

/// Epoch ticks in `d`, rounded up, at least one.
pub(crate) fn ticks(d: Duration) -> u64 {
    let tick = EPOCH_TICK.as_millis().max(1);
    (d.as_millis().div_ceil(tick) as u64).max(1)
}

/// The bounds of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallLimits {
    /// CPU budget in epoch ticks.
    pub(crate) cpu_ticks: u64,
    /// Wall-clock bound of the whole call, host calls included.
    pub(crate) wall: Duration,
    /// The tenant's `limits.max_frame_bytes`.
    pub(crate) max_frame_bytes: usize,
}

impl CallLimits {
    /// Limits of an `on-message` call.
    ///
    /// The wall bound is twice the CPU budget plus slack plus the slowest upstream
    /// the tenant has configured: epochs do not advance a guest's budget while it
    /// waits in `backend.call`, so the wall bound must leave room for one such
    /// call, and it still ends a guest that loops on slow backend calls.
    pub(crate) fn for_call(cfg: &PluginsConfig, tenant: Option<&TenantConfig>) -> Self {
        let cpu = Duration::from_millis(cfg.call_timeout_ms.max(1));
        let slowest_upstream = tenant
            .and_then(|t| t.backend.upstreams.values().map(|u| u.timeout_ms).max())
            .map(Duration::from_millis)
            .unwrap_or_default();
        Self {
            cpu_ticks: ticks(cpu),
            wall: cpu * 2 + WALL_CLOCK_SLACK + slowest_upstream,
            max_frame_bytes: tenant
                .map(|t| t.limits.max_frame_bytes)
                .unwrap_or(crate::config::DEFAULT_MAX_FRAME_BYTES),
        }
    }

    /// Limits of instantiation (+ `init`), which may run a language runtime's
    /// start-up code.
    pub(crate) fn for_instantiate(cfg: &PluginsConfig, tenant: Option<&TenantConfig>) -> Self {
        let call = Self::for_call(cfg, tenant);
        let cpu = Duration::from_millis(cfg.call_timeout_ms).max(MIN_INSTANTIATE_BUDGET);
        Self {
            cpu_ticks: ticks(cpu),
            wall: call.wall.max(cpu * 2 + WALL_CLOCK_SLACK),
            ..call
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks(Duration::from_millis(1)), 1);
        assert_eq!(ticks(Duration::from_millis(50)), 5);
        assert_eq!(ticks(Duration::from_millis(51)), 6);
    }

    #[test]
    fn wall_bound_covers_the_slowest_upstream() {
        let cfg = PluginsConfig::default();
        let mut tenant: TenantConfig = serde_yaml::from_str(
            "id: t\nbackend: { upstreams: { a: { url: 'http://x', timeout_ms: 700 } } }",
        )
        .expect("tenant yaml");
        let l = CallLimits::for_call(&cfg, Some(&tenant));
        assert_eq!(l.cpu_ticks, 5);
        assert!(l.wall >= Duration::from_millis(700 + 100));
        tenant.backend.upstreams.clear();
        let l2 = CallLimits::for_call(&cfg, Some(&tenant));
        assert!(l2.wall < l.wall);
        let i = CallLimits::for_instantiate(&cfg, Some(&tenant));
        assert!(i.cpu_ticks >= ticks(MIN_INSTANTIATE_BUDGET));
    }
}
