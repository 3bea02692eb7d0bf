//! Instance lanes and call routing per (tenant, plugin).
//!
//! Owns: the `sharded` model (a few long-lived instances per (tenant, plugin),
//! each behind one [`InstanceLane`]; a room's messages, else a session's, always go to
//! the same lane, which runs them one at a time in arrival order), the
//! `per_message` model (a fresh instance per call behind a semaphore), recycling
//! (new version, N calls, poisoned, idle), and charging faults to their session
//! or version (the back-offs themselves live in `health.rs`). Fed by
//! `PluginHost::run` with a [`PluginCall`] of any entry point; answers with
//! effects or a [`PluginError`].
//!
//! # Why lanes, not actor tasks
//! A lane is a fair (FIFO) async mutex around an instance slot, and a call runs
//! on the caller's own task while it holds the lane. Compared with an actor task
//! fed by a mailbox this saves, per message, a channel send, a reply channel, two
//! task wake-ups (often across worker threads) and a timer; the guarantees are
//! the same: one call at a time per instance, calls of one shard in the order
//! they reached the lane, a bounded queue (`MAILBOX_CAPACITY`, then
//! `Overloaded`), and a guest that yields to tokio at every epoch tick. The one
//! difference: a caller dropped mid-call (its session ended) cuts that call, so
//! the instance is marked poisoned and replaced on the next call, exactly as
//! after a wall-clock timeout. Idle instances are dropped by one sweeper task per
//! host ([`sweep_idle`]), not by a timer per lane.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use parking_lot::Mutex;
use prometheus::{Histogram, IntCounter};
use tokio::time::Instant;

use super::HostCore;
use super::call::Shard;
use super::health::Culprit;
pub(crate) use super::health::Stats;
use super::instance::Instance;
use super::kv::KvScope;
use super::limits::{
    CallLimits, MAILBOX_CAPACITY, MAX_CALLS_PER_INSTANCE,
    MAX_CONCURRENT_FRESH_INSTANCES_PER_TENANT, RECYCLE_MEMORY_PERCENT,
};
use super::loader::PluginVersion;
use crate::config::{Isolation, TenantConfig};
use crate::error::PluginError;
use crate::services::Effect;
use crate::services::PluginCall;

/// (tenant, plugin).
pub(crate) type PoolKey = (Arc<str>, Arc<str>);

/// Per-call metric handles of one (tenant, plugin), resolved once so a call
/// never hashes label values.
#[derive(Debug, Clone)]
pub(crate) struct CallMetrics {
    /// `wsprism_plugin_calls_total{tenant,plugin}`.
    pub(crate) calls: IntCounter,
    /// `wsprism_plugin_call_duration_seconds{tenant,plugin}`.
    pub(crate) duration: Histogram,
}

/// The lanes, stats and metric handles of one (tenant, plugin).
#[derive(Debug)]
pub(crate) struct Pool {
    /// Counters and crash history (outlive the pool: kept across reloads).
    pub(crate) stats: Arc<Stats>,
    /// Metric handles.
    pub(crate) metrics: CallMetrics,
    lanes: Mutex<Vec<Arc<InstanceLane>>>,
}

/// One instance slot, taken by one call at a time.
#[derive(Debug, Default)]
pub(crate) struct InstanceLane {
    /// `tokio::sync::Mutex` is fair: calls get the slot in the order they
    /// asked for it, which is the order of the shard's messages.
    slot: tokio::sync::Mutex<Occupant>,
    /// Calls holding or waiting for `slot` (the bounded "mailbox").
    queued: AtomicUsize,
}

#[derive(Default)]
struct Occupant {
    instance: Option<Instance>,
    /// Calls run in this lane so far, and the value the idle sweeper saw last.
    uses: u64,
    swept_at: u64,
}

impl std::fmt::Debug for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Occupant")
            .field("live", &self.instance.is_some())
            .field("uses", &self.uses)
            .finish()
    }
}

/// A place in a lane's queue; leaving it (drop) frees the place.
struct QueueGuard<'a>(&'a AtomicUsize);

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl InstanceLane {
    /// Takes a place in the queue, or `Overloaded` past [`MAILBOX_CAPACITY`].
    fn enter(&self) -> Result<QueueGuard<'_>, PluginError> {
        let guard = QueueGuard(&self.queued);
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAILBOX_CAPACITY {
            return Err(PluginError::Overloaded);
        }
        Ok(guard)
    }
}

fn lane_of(shard: Shard<'_>, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    shard.hash(&mut h);
    (h.finish() % n as u64) as usize
}

impl Pool {
    /// An empty pool.
    pub(crate) fn new(stats: Arc<Stats>, metrics: CallMetrics) -> Self {
        Self {
            stats,
            metrics,
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// The lane of `shard` when there are `n` lanes. Resizing (a config reload
    /// of `instances_per_plugin`) starts a new set of lanes: calls in flight
    /// finish on the old ones, so ordering across a resize is only per lane.
    fn lane(&self, n: usize, shard: Shard<'_>) -> Arc<InstanceLane> {
        let n = n.max(1);
        let mut lanes = self.lanes.lock();
        if lanes.len() != n {
            *lanes = (0..n).map(|_| Arc::new(InstanceLane::default())).collect();
        }
        Arc::clone(&lanes[lane_of(shard, n)])
    }

    /// Drops the instance of every lane that ran no call since the previous
    /// sweep. Busy lanes are skipped.
    fn sweep_idle(&self) -> usize {
        let lanes: Vec<Arc<InstanceLane>> = self.lanes.lock().clone();
        let mut dropped = 0;
        for lane in lanes {
            if let Ok(mut slot) = lane.slot.try_lock() {
                if slot.uses == slot.swept_at && slot.instance.take().is_some() {
                    dropped += 1;
                }
                slot.swept_at = slot.uses;
            }
        }
        dropped
    }
}

/// One pass of the idle sweeper: an instance that served no call for a whole
/// period (`INSTANCE_IDLE_TTL`) gives its linear memory back; state lives in
/// kv, and the next message instantiates again from the cached `InstancePre`.
/// Stale session fault records go too (those of sessions that ended).
pub(crate) fn sweep_idle(env: &HostCore) {
    let now = Instant::now();
    for stats in env.stats.iter() {
        stats.value().sweep(now);
    }
    let pools: Vec<(PoolKey, Arc<Pool>)> = env
        .pools
        .iter()
        .map(|p| (p.key().clone(), Arc::clone(p.value())))
        .collect();
    for (key, pool) in pools {
        let n = pool.sweep_idle();
        if n > 0 {
            tracing::debug!(tenant = %key.0, plugin = %key.1, instances = n, "idle plugin instances dropped");
        }
    }
}

/// Makes sure `slot` holds a usable instance of `version`.
async fn ready<'a>(
    env: &HostCore,
    key: &PoolKey,
    stats: &Stats,
    slot: &'a mut Option<Instance>,
    version: &Arc<PluginVersion>,
    tenant_cfg: &Arc<TenantConfig>,
) -> Result<&'a mut Instance, PluginError> {
    if let Some(i) = slot.as_ref() {
        let memory_cap = env.cfg.load().max_memory_bytes / 100 * RECYCLE_MEMORY_PERCENT;
        if i.poisoned
            || i.memory_peak() > memory_cap
            // A newer instance may serve a call that started before a reload;
            // an older one is replaced (recycle on reload).
            || i.version.generation < version.generation
            || i.calls >= MAX_CALLS_PER_INSTANCE
        {
            *slot = None;
        }
    }
    if slot.is_none() {
        let cfg = env.cfg.load_full();
        let limits = CallLimits::for_instantiate(&cfg, Some(&**tenant_cfg));
        let scope = KvScope {
            tenant: Arc::clone(&key.0),
            plugin: Arc::clone(&key.1),
        };
        // Boxed: instantiation is rare, and its large future would otherwise
        // size (and be copied with) every call's future.
        let fresh = Box::pin(Instance::new(
            env,
            Arc::clone(version),
            scope,
            Arc::clone(&env.kv),
            Some(Arc::clone(tenant_cfg)),
            &limits,
        ));
        match tokio::time::timeout(limits.wall, fresh).await {
            Ok(Ok(i)) => *slot = Some(i),
            Ok(Err(e)) => {
                if !matches!(e, PluginError::Overloaded) {
                    note_fault(env, key, stats, Culprit::Instantiate, &e);
                }
                return Err(e);
            }
            Err(_) => {
                note_fault(env, key, stats, Culprit::Instantiate, &PluginError::Timeout);
                return Err(PluginError::Timeout);
            }
        }
    }
    slot.as_mut()
        .ok_or_else(|| PluginError::Trap("instance vanished".into()))
}

/// Charges a fault (the instance is gone) to `culprit`, and logs the back-off
/// it started, if any.
fn note_fault(env: &HostCore, key: &PoolKey, stats: &Stats, culprit: Culprit<'_>, e: &PluginError) {
    let now = Instant::now();
    // Operators see faults (rate-limited per plugin and tenant); the detail
    // is the engine's (trap kind, limit), never the message payload.
    if let Some(left_out) = stats.fault_log_slot(now) {
        match culprit {
            Culprit::Call { sid, .. } => tracing::warn!(
                tenant = %key.0,
                plugin = %key.1,
                sid = %sid,
                reason = e.label(),
                error = %e,
                faults_not_logged = left_out,
                "plugin call failed; the instance is replaced"
            ),
            Culprit::Instantiate => tracing::warn!(
                tenant = %key.0,
                plugin = %key.1,
                reason = e.label(),
                error = %e,
                faults_not_logged = left_out,
                "plugin failed to start an instance"
            ),
        }
    }
    let max_per_session = env.cfg.load().max_faults_per_session;
    let started = stats.faulted(culprit, max_per_session, now);
    if let (Some(period), Culprit::Call { sid, .. }) = (started.session, culprit) {
        // Per session, so `debug` (the session's own span names it too).
        tracing::debug!(tenant = %key.0, plugin = %key.1, sid = %sid, backoff_ms = period.as_millis() as u64, "session keeps making the plugin fault; refusing it for a back-off");
    }
    if let Some(period) = started.plugin {
        tracing::warn!(tenant = %key.0, plugin = %key.1, backoff_ms = period.as_millis() as u64, "plugin keeps failing for several users or at start-up; backing off");
    }
}

/// Runs one call on the instance in `slot` (created when needed), under the
/// per-call CPU budget and wall-clock bound.
async fn run(
    env: &HostCore,
    key: &PoolKey,
    stats: &Stats,
    slot: &mut Option<Instance>,
    version: &Arc<PluginVersion>,
    call: PluginCall,
) -> Result<Vec<Effect>, PluginError> {
    let instance = ready(env, key, stats, slot, version, &call.tenant_cfg).await?;
    let (sid, user) = (call.session.sid, Arc::clone(&call.session.user));
    let limits = CallLimits::for_call(&env.cfg.load(), Some(&*call.tenant_cfg));
    let deadline = Instant::now() + limits.wall;
    let r = {
        let call = instance.call(call, &limits, deadline);
        // Boxed once here: the guest call's future (wasmtime's fiber plumbing)
        // is several KiB, and every enclosing future would otherwise grow by as
        // much and copy it on each call.
        let mut call = Box::pin(call);
        // Most calls finish on their first poll; only a call that waits (a
        // guest yielding at an epoch tick, a kv or backend call) needs the
        // wall-clock timer, so it is armed then, against the deadline above.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(match call.as_mut().poll(cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await;
        match first {
            Some(r) => r,
            // Cut mid-call (a slow backend loop): the instance marked itself
            // poisoned when the call started and stays so.
            None => tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or(Err(PluginError::Timeout)),
        }
    };
    if slot.as_ref().is_some_and(|i| i.poisoned) {
        *slot = None;
        if let Err(e) = &r {
            note_fault(env, key, stats, Culprit::Call { sid, user: &user }, e);
        }
    } else if r.is_ok() {
        stats.succeeded();
    }
    r
}

/// Runs `call` in the lane of its shard (sharded) or on a fresh instance
/// (per-message).
async fn run_routed(
    env: &HostCore,
    key: &PoolKey,
    pool: &Pool,
    version: Arc<PluginVersion>,
    call: PluginCall,
) -> Result<Vec<Effect>, PluginError> {
    let cfg = env.cfg.load();
    match cfg.isolation {
        Isolation::PerMessage => {
            let limits = CallLimits::for_call(&cfg, Some(&*call.tenant_cfg));
            drop(cfg);
            // The tenant's share first: a tenant flooding calls waits on its
            // own budget and never holds the shared one while it waits.
            let tenant = env
                .fresh_per_tenant
                .entry(Arc::clone(&key.0))
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        MAX_CONCURRENT_FRESH_INSTANCES_PER_TENANT,
                    ))
                })
                .clone();
            let permits = async {
                let mine = tenant.acquire().await;
                let shared = env.fresh.acquire().await;
                (mine, shared)
            };
            let (mine, shared) = tokio::time::timeout(limits.wall, permits)
                .await
                .map_err(|_| PluginError::Overloaded)?;
            let _permits = (
                mine.map_err(|_| PluginError::Overloaded)?,
                shared.map_err(|_| PluginError::Overloaded)?,
            );
            let mut slot = None;
            run(env, key, &pool.stats, &mut slot, &version, call).await
        }
        Isolation::Sharded => {
            let n = cfg.instances_per_plugin;
            drop(cfg);
            let lane = pool.lane(n, call.shard());
            let _queued = lane.enter()?;
            // `try_lock` cannot overtake a waiter: a released slot goes to the
            // first waiter directly, so FIFO order holds either way.
            let mut slot = match lane.slot.try_lock() {
                Ok(slot) => slot,
                Err(_) => lane.slot.lock().await,
            };
            slot.uses = slot.uses.wrapping_add(1);
            run(env, key, &pool.stats, &mut slot.instance, &version, call).await
        }
    }
}

/// Runs one call of any entry point: in the lane of its room (else session)
/// in `sharded` mode, on a fresh instance in `per_message` mode. Refuses it
/// while the host drains, and while the plugin (or, for this session alone,
/// the session) backs off unless the entry point runs anyway
/// ([`EntryKind::runs_while_backing_off`],
/// [`EntryKind::runs_while_session_backs_off`]).
///
/// [`EntryKind::runs_while_backing_off`]: super::call::EntryKind::runs_while_backing_off
/// [`EntryKind::runs_while_session_backs_off`]: super::call::EntryKind::runs_while_session_backs_off
///
/// # Cancel safety
/// Dropping the future while it waits for the lane is harmless; dropping it
/// mid-call cuts the call and the instance is replaced on the next one.
pub(crate) async fn dispatch(
    env: &HostCore,
    key: &PoolKey,
    pool: &Pool,
    version: Arc<PluginVersion>,
    call: PluginCall,
) -> Result<Vec<Effect>, PluginError> {
    if env.stop.is_cancelled() {
        // Draining: no new instances; the caller answers SERVICE_UNAVAILABLE.
        return Err(PluginError::Overloaded);
    }
    let kind = call.entry.kind();
    if !kind.runs_while_backing_off() && pool.stats.backing_off_now() {
        return Err(PluginError::BackingOff);
    }
    if !kind.runs_while_session_backs_off() && pool.stats.session_backing_off_now(call.session.sid)
    {
        return Err(PluginError::SessionBackingOff);
    }
    run_routed(env, key, pool, version, call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable() {
        assert_eq!(lane_of(Shard::Room("r1"), 4), lane_of(Shard::Room("r1"), 4));
        assert!(lane_of(Shard::Session(crate::realtime::SessionId::new(7)), 3) < 3);
    }
}
