//! Instance actors and call routing per (tenant, plugin).
//!
//! Owns: the `sharded` model (a few long-lived actors per (tenant, plugin), each
//! a task owning one [`Instance`] and draining a bounded mailbox; a room's
//! messages, else a session's, always go to the same actor, so they run in
//! order), the `per_message` model (a fresh instance per call behind a
//! semaphore), recycling (new version, N calls, poisoned, idle) and crash
//! back-off. Fed by `PluginHost::call`; answers with effects or a [`PluginError`].

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Env;
use super::instance::Instance;
use super::kv::KvScope;
use super::limits::{
    BACKOFF_BASE, BACKOFF_MAX, CRASH_THRESHOLD, CRASH_WINDOW, CallLimits, INSTANCE_IDLE_TTL,
    MAILBOX_CAPACITY, MAX_CALLS_PER_INSTANCE, RECYCLE_MEMORY_PERCENT,
};
use super::loader::PluginVersion;
use crate::config::{Isolation, TenantConfig};
use crate::error::PluginError;
use crate::services::{Effect, ExtCall, SessionInfo};

/// (tenant, plugin).
pub(crate) type PoolKey = (Arc<str>, Arc<str>);

/// Call counters and crash history of one (tenant, plugin).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Calls handled.
    pub(crate) calls: AtomicU64,
    /// Calls failed (any [`PluginError`], refusals included).
    pub(crate) errors: AtomicU64,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    crashes: VecDeque<Instant>,
    backoff_until: Option<Instant>,
    /// Consecutive back-offs; doubles the period, reset by a success.
    streak: u32,
}

impl Stats {
    /// Whether calls are refused with `BackingOff` right now.
    pub(crate) fn backing_off(&self, now: Instant) -> bool {
        self.health.lock().backoff_until.is_some_and(|t| t > now)
    }

    /// Records a crash; returns the back-off period when this crash started one.
    pub(crate) fn crashed(&self, now: Instant) -> Option<std::time::Duration> {
        let mut h = self.health.lock();
        h.crashes.push_back(now);
        while h
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            h.crashes.pop_front();
        }
        if h.crashes.len() < CRASH_THRESHOLD {
            return None;
        }
        h.crashes.clear();
        let period = BACKOFF_BASE
            .saturating_mul(1u32 << h.streak.min(8))
            .min(BACKOFF_MAX);
        h.streak = h.streak.saturating_add(1);
        h.backoff_until = Some(now + period);
        Some(period)
    }

    /// A call succeeded: the next back-off starts from the base period again.
    pub(crate) fn succeeded(&self) {
        let mut h = self.health.lock();
        if h.backoff_until.is_none_or(|t| t <= Instant::now()) {
            h.streak = 0;
        }
    }

    /// A new version was loaded: forget past crashes.
    pub(crate) fn reset(&self) {
        *self.health.lock() = Health::default();
    }
}

/// Work for an actor.
enum Job {
    Message {
        call: Box<ExtCall>,
        version: Arc<PluginVersion>,
        reply: oneshot::Sender<Result<Vec<Effect>, PluginError>>,
    },
    Disconnect {
        session: SessionInfo,
        version: Arc<PluginVersion>,
    },
}

/// The actors of one (tenant, plugin).
#[derive(Debug, Default)]
pub(crate) struct Pool {
    lanes: Mutex<Vec<mpsc::Sender<Job>>>,
    /// Tenant config of the latest call, for `on-disconnect`'s backend calls.
    last_tenant_cfg: ArcSwapOption<TenantConfig>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Message { .. } => "Job::Message",
            Job::Disconnect { .. } => "Job::Disconnect",
        })
    }
}

fn lane_of(shard: ShardKey<'_>, n: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    shard.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

/// What keeps messages in order: the room, else the session.
#[derive(Hash)]
enum ShardKey<'a> {
    Room(&'a str),
    Session(u64),
}

impl Pool {
    /// The sender of lane `idx`, (re)spawning actors when the configured count
    /// changed. Resizing re-routes shards, so ordering across a resize is only
    /// per actor; resizes happen on config reload only.
    fn lane(
        &self,
        env: &Arc<Env>,
        key: &PoolKey,
        stats: &Arc<Stats>,
        shard: ShardKey<'_>,
    ) -> mpsc::Sender<Job> {
        let n = env.cfg.load().instances_per_plugin.max(1);
        let mut lanes = self.lanes.lock();
        if lanes.len() != n {
            // Dropping the old senders lets the old actors drain and exit.
            lanes.clear();
        }
        for i in 0..n {
            if i == lanes.len() {
                lanes.push(spawn_actor(env, key, stats, i));
            } else if lanes[i].is_closed() {
                lanes[i] = spawn_actor(env, key, stats, i);
            }
        }
        lanes[lane_of(shard, n)].clone()
    }
}

fn spawn_actor(
    env: &Arc<Env>,
    key: &PoolKey,
    stats: &Arc<Stats>,
    lane: usize,
) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
    let env = Arc::clone(env);
    let key = key.clone();
    let stats = Arc::clone(stats);
    let tracker = env.tracker.clone();
    tracker.spawn(async move {
        tracing::debug!(tenant = %key.0, plugin = %key.1, lane, "plugin actor started");
        actor(env, key, stats, rx).await;
    });
    tx
}

async fn actor(env: Arc<Env>, key: PoolKey, stats: Arc<Stats>, mut rx: mpsc::Receiver<Job>) {
    let mut slot: Option<Instance> = None;
    loop {
        let job = tokio::select! {
            _ = env.stop.cancelled() => return,
            j = tokio::time::timeout(INSTANCE_IDLE_TTL, rx.recv()) => match j {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    // Idle: give the linear memory back; state lives in kv.
                    slot = None;
                    continue;
                }
            },
        };
        match job {
            Job::Message {
                call,
                version,
                reply,
            } => {
                let r = run_message(&env, &key, &stats, &mut slot, &version, &call).await;
                // The caller may have gone away (session closed); fine.
                let _ = reply.send(r);
            }
            Job::Disconnect { session, version } => {
                run_disconnect(&env, &key, &stats, &mut slot, &version, &session).await;
            }
        }
    }
}

/// Makes sure `slot` holds a usable instance of `version`.
async fn ready<'a>(
    env: &Env,
    key: &PoolKey,
    stats: &Stats,
    slot: &'a mut Option<Instance>,
    version: &Arc<PluginVersion>,
    tenant_cfg: Option<Arc<TenantConfig>>,
) -> Result<&'a mut Instance, PluginError> {
    let memory_cap = env.cfg.load().max_memory_bytes / 100 * RECYCLE_MEMORY_PERCENT;
    if slot.as_ref().is_some_and(|i| {
        i.poisoned
            || i.memory_peak() > memory_cap
            // A newer instance may serve a job queued before a reload; an
            // older one is replaced (recycle on reload).
            || i.version.generation < version.generation
            || i.calls >= MAX_CALLS_PER_INSTANCE
    }) {
        *slot = None;
    }
    if slot.is_none() {
        let cfg = env.cfg.load_full();
        let limits = CallLimits::for_instantiate(&cfg, tenant_cfg.as_deref());
        let scope = KvScope {
            tenant: Arc::clone(&key.0),
            plugin: Arc::clone(&key.1),
        };
        let fresh = Instance::new(
            env,
            Arc::clone(version),
            scope,
            Arc::clone(&env.kv),
            tenant_cfg,
            &limits,
        );
        match tokio::time::timeout(limits.wall, fresh).await {
            Ok(Ok(i)) => *slot = Some(i),
            Ok(Err(e)) => {
                if !matches!(e, PluginError::Overloaded) {
                    note_crash(key, stats, &e);
                }
                return Err(e);
            }
            Err(_) => {
                note_crash(key, stats, &PluginError::Timeout);
                return Err(PluginError::Timeout);
            }
        }
    }
    slot.as_mut()
        .ok_or_else(|| PluginError::Trap("instance vanished".into()))
}

fn note_crash(key: &PoolKey, stats: &Stats, e: &PluginError) {
    tracing::debug!(tenant = %key.0, plugin = %key.1, reason = e.label(), error = %e, "plugin instance dropped");
    if let Some(period) = stats.crashed(Instant::now()) {
        tracing::warn!(tenant = %key.0, plugin = %key.1, backoff_ms = period.as_millis() as u64, "plugin keeps crashing; backing off");
    }
}

async fn run_message(
    env: &Env,
    key: &PoolKey,
    stats: &Stats,
    slot: &mut Option<Instance>,
    version: &Arc<PluginVersion>,
    call: &ExtCall,
) -> Result<Vec<Effect>, PluginError> {
    let instance = ready(
        env,
        key,
        stats,
        slot,
        version,
        Some(Arc::clone(&call.tenant_cfg)),
    )
    .await?;
    let limits = CallLimits::for_call(&env.cfg.load(), Some(&call.tenant_cfg));
    let r = match tokio::time::timeout(limits.wall, instance.on_message(call, &limits)).await {
        Ok(r) => r,
        Err(_) => {
            // Cut mid-call (a slow backend loop): the store is unusable.
            instance.poisoned = true;
            Err(PluginError::Timeout)
        }
    };
    if instance.poisoned {
        *slot = None;
        if let Err(e) = &r {
            note_crash(key, stats, e);
        }
    } else if r.is_ok() {
        stats.succeeded();
    }
    r
}

async fn run_disconnect(
    env: &Env,
    key: &PoolKey,
    stats: &Stats,
    slot: &mut Option<Instance>,
    version: &Arc<PluginVersion>,
    session: &SessionInfo,
) {
    if version.lifecycle.on_disconnect.is_none() || stats.backing_off(Instant::now()) {
        return;
    }
    let tenant_cfg = env
        .pools
        .get(key)
        .and_then(|p| p.last_tenant_cfg.load_full());
    let Ok(instance) = ready(env, key, stats, slot, version, tenant_cfg.clone()).await else {
        return;
    };
    let limits = CallLimits::for_call(&env.cfg.load(), tenant_cfg.as_deref());
    let r = tokio::time::timeout(
        limits.wall,
        instance.on_disconnect(session, tenant_cfg, &limits),
    )
    .await;
    let r = r.unwrap_or(Err(PluginError::Timeout));
    if let Err(e) = r {
        *slot = None;
        note_crash(key, stats, &e);
    }
}

/// Runs one call: routed to an actor (`sharded`) or on a fresh instance
/// (`per_message`).
pub(crate) async fn dispatch(
    env: &Arc<Env>,
    key: &PoolKey,
    stats: &Arc<Stats>,
    version: Arc<PluginVersion>,
    call: ExtCall,
) -> Result<Vec<Effect>, PluginError> {
    if env.stop.is_cancelled() {
        // Draining: no new instances; the lane answers SERVICE_UNAVAILABLE.
        return Err(PluginError::Overloaded);
    }
    if stats.backing_off(Instant::now()) {
        return Err(PluginError::BackingOff);
    }
    let isolation = env.cfg.load().isolation;
    match isolation {
        Isolation::PerMessage => {
            let limits = CallLimits::for_call(&env.cfg.load(), Some(&call.tenant_cfg));
            let permit = tokio::time::timeout(limits.wall, env.fresh.acquire())
                .await
                .map_err(|_| PluginError::Overloaded)?
                .map_err(|_| PluginError::Overloaded)?;
            let mut slot = None;
            let r = run_message(env, key, stats, &mut slot, &version, &call).await;
            drop(slot);
            drop(permit);
            r
        }
        Isolation::Sharded => {
            let pool = env.pool(key);
            pool.last_tenant_cfg
                .store(Some(Arc::clone(&call.tenant_cfg)));
            let shard = match call.room.as_deref() {
                Some(room) => ShardKey::Room(room),
                None => ShardKey::Session(call.session.sid),
            };
            let tx = pool.lane(env, key, stats, shard);
            let (reply, answer) = oneshot::channel();
            tx.try_send(Job::Message {
                call: Box::new(call),
                version,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => PluginError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => PluginError::Overloaded,
            })?;
            answer
                .await
                .map_err(|_| PluginError::Trap("instance stopped (shutdown)".into()))?
        }
    }
}

/// Queues `on-disconnect` for a closed session (fire and forget).
pub(crate) fn disconnect(
    env: &Arc<Env>,
    key: &PoolKey,
    stats: &Arc<Stats>,
    version: Arc<PluginVersion>,
    session: &SessionInfo,
) {
    if version.lifecycle.on_disconnect.is_none() {
        return;
    }
    match env.cfg.load().isolation {
        Isolation::Sharded => {
            let pool = env.pool(key);
            let tx = pool.lane(env, key, stats, ShardKey::Session(session.sid));
            if tx
                .try_send(Job::Disconnect {
                    session: session.clone(),
                    version,
                })
                .is_err()
            {
                tracing::debug!(tenant = %key.0, plugin = %key.1, "on-disconnect dropped: mailbox full");
            }
        }
        Isolation::PerMessage => {
            let env2 = Arc::clone(env);
            let key = key.clone();
            let stats = Arc::clone(stats);
            let session = session.clone();
            env.tracker.spawn(async move {
                let Ok(_permit) = env2.fresh.acquire().await else {
                    return;
                };
                let mut slot = None;
                run_disconnect(&env2, &key, &stats, &mut slot, &version, &session).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_crashes_back_off_and_double() {
        let s = Stats::default();
        let now = Instant::now();
        for _ in 0..CRASH_THRESHOLD - 1 {
            assert_eq!(s.crashed(now), None);
        }
        assert_eq!(s.crashed(now), Some(BACKOFF_BASE));
        assert!(s.backing_off(now));
        assert!(!s.backing_off(now + BACKOFF_BASE));
        let later = now + BACKOFF_BASE * 2;
        for _ in 0..CRASH_THRESHOLD - 1 {
            assert_eq!(s.crashed(later), None);
        }
        assert_eq!(s.crashed(later), Some(BACKOFF_BASE * 2));
        s.reset();
        assert!(!s.backing_off(later));
    }

    #[test]
    fn crashes_outside_the_window_do_not_count() {
        let s = Stats::default();
        let mut t = Instant::now();
        for _ in 0..CRASH_THRESHOLD * 2 {
            assert_eq!(s.crashed(t), None);
            // Spaced so that a window never holds CRASH_THRESHOLD of them.
            t += CRASH_WINDOW / 2 + std::time::Duration::from_millis(1);
        }
    }

    #[test]
    fn shards_are_stable() {
        assert_eq!(
            lane_of(ShardKey::Room("r1"), 4),
            lane_of(ShardKey::Room("r1"), 4)
        );
        assert!(lane_of(ShardKey::Session(7), 3) < 3);
    }
}
