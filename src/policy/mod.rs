//! Policy: allowlists, rate limits and the per-tenant compiled policy.
//!
//! Owns: the decision whether a message may pass. [`TenantPolicy`] is compiled
//! once per config version from a tenant's config; sessions hold their own
//! connection-scoped limiters (messages, inbound bytes) and error budget in
//! [`SessionPolicy`]. Nothing here writes to a session: `lanes` turn refusals
//! into frames.

pub mod allowlist;
pub mod rate_limit;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;

use self::allowlist::{ExtAllowlist, HotAllowlist};
use self::rate_limit::{
    DirectLimiter, KeyedLimiter, SessionLimiter, direct, keyed, per_session, quota, windowed,
};
use crate::config::{HotServiceConfig, OnExceed, RateLimitScope, SessionMode, TenantConfig};
use crate::realtime::broker::{RoomLimits, SessionLimits};
use crate::realtime::history::HistoryPolicy;

/// A tenant's policy, compiled for the hot path.
#[derive(Debug)]
pub struct TenantPolicy {
    /// Ext Lane allowlist.
    pub ext_allow: ExtAllowlist,
    /// Hot Lane allowlist.
    pub hot_allow: HotAllowlist,
    /// Native Hot Lane services indexed by `svc_id`.
    hot_services: Box<[Option<HotServiceConfig>]>,
    /// Ext Lane `svc` → plugin name.
    routes: HashMap<String, Arc<str>>,
    /// Message quota (both lanes).
    pub message_quota: Quota,
    /// Bucket scope.
    pub scope: RateLimitScope,
    /// Inbound byte quota per connection, `None` when `max_bytes_per_sec` is 0.
    pub byte_quota: Option<Quota>,
    /// Shared bucket per user (`scope: user`).
    user_limiter: Option<KeyedLimiter<Arc<str>>>,
    /// Shared bucket for the tenant (`scope: tenant`).
    tenant_limiter: Option<DirectLimiter>,
    /// Error budget quota, `None` when disabled.
    pub error_quota: Option<Quota>,
    /// Session caps for registration.
    pub session_limits: SessionLimits,
    /// Room caps for joins.
    pub room_limits: RoomLimits,
    /// `rooms.presence_events`: members hear `member_joined` / `member_left`.
    pub presence_events: bool,
    /// What a room publication must respect (frame limit, room history for
    /// recovery; no history when `rooms.history_size` is 0).
    pub publish: PublishLimits,
}

/// What a room publication must respect: the frame limit, and whether (and
/// how) reliable publications are recorded for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// The tenant's `max_frame_bytes`: no payload is sent larger.
    pub max_frame_bytes: usize,
    /// Room history; `None` when the tenant keeps none.
    pub history: Option<HistoryPolicy>,
}

impl TenantPolicy {
    /// Compiles a tenant's policy.
    pub fn compile(t: &TenantConfig) -> Self {
        Self::compile_for_queue(t, crate::config::DEFAULT_QUEUE_MAX_BYTES)
    }

    /// [`TenantPolicy::compile`] for recipients whose queues hold
    /// `queue_max_bytes` (`gateway.queues.max_bytes`): one sender's byte burst
    /// is capped at half of it, so a burst into a room cannot fill the
    /// members' queues before their writers run.
    pub fn compile_for_queue(t: &TenantConfig, queue_max_bytes: usize) -> Self {
        let p = &t.policy;
        let message_quota = quota(p.rate_limit_rps, p.rate_limit_burst);
        let mut hot_services = vec![None; 256].into_boxed_slice();
        for s in &t.hot_services {
            hot_services[usize::from(s.id)] = Some(s.clone());
        }
        Self {
            ext_allow: ExtAllowlist::compile(&p.ext_allowlist),
            hot_allow: HotAllowlist::compile(&p.hot_allowlist),
            hot_services,
            routes: t
                .routes
                .iter()
                .map(|r| (r.svc.clone(), Arc::from(r.plugin.as_str())))
                .collect(),
            message_quota,
            scope: p.rate_limit_scope,
            byte_quota: byte_quota(
                p.max_bytes_per_sec,
                t.limits.max_frame_bytes,
                queue_max_bytes,
            ),
            user_limiter: (p.rate_limit_scope == RateLimitScope::User)
                .then(|| keyed(message_quota)),
            tenant_limiter: (p.rate_limit_scope == RateLimitScope::Tenant)
                .then(|| direct(message_quota)),
            error_quota: (p.error_budget.max_errors > 0).then(|| {
                windowed(
                    p.error_budget.max_errors,
                    Duration::from_millis(p.error_budget.window_ms),
                )
            }),
            session_limits: SessionLimits {
                max_sessions_total: t.limits.max_sessions_total,
                max_sessions_per_user: match p.sessions.mode {
                    SessionMode::Single => 1,
                    SessionMode::Multi => p.sessions.max_sessions_per_user,
                },
                kick_oldest: p.sessions.on_exceed == OnExceed::KickOldest,
            },
            room_limits: RoomLimits {
                max_rooms_total: t.limits.max_rooms_total,
                max_users_per_room: t.limits.max_users_per_room,
                max_rooms_per_user: t.limits.max_rooms_per_user,
            },
            presence_events: t.rooms.presence_events,
            publish: PublishLimits {
                max_frame_bytes: t.limits.max_frame_bytes,
                history: (t.rooms.history_size > 0).then(|| HistoryPolicy {
                    size: t.rooms.history_size,
                    ttl: Duration::from_millis(t.rooms.history_ttl_ms),
                }),
            },
        }
    }

    /// The native service for a Hot Lane `svc_id`.
    #[inline]
    pub fn hot_service(&self, svc_id: u8) -> Option<&HotServiceConfig> {
        self.hot_services[usize::from(svc_id)].as_ref()
    }

    /// The plugin an Ext Lane `svc` is routed to.
    pub fn route(&self, svc: &str) -> Option<&Arc<str>> {
        self.routes.get(svc)
    }

    /// Housekeeping for keyed limiters (drops idle users' buckets).
    pub fn prune(&self) {
        if let Some(l) = &self.user_limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Seconds of `max_bytes_per_sec` a connection may send at once (SPEC §13):
/// room for a client to catch up after a stall.
pub const BYTE_BURST_SECS: u32 = 2;

/// `max_bytes_per_sec` with a burst of [`BYTE_BURST_SECS`] worth, capped at
/// half of a recipient's queue (`queue_max_bytes`): a sender's whole burst
/// lands in every member's queue at once, faster than any writer drains it,
/// and a burst past the queue's size would make every member of the room a
/// slow consumer (4002). Never less than one frame of `max_frame_bytes` (a
/// smaller burst would refuse full-size frames forever); `None` for 0 (no
/// byte limit).
fn byte_quota(per_sec: u32, max_frame_bytes: usize, queue_max_bytes: usize) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    let frame = u32::try_from(max_frame_bytes).unwrap_or(u32::MAX);
    let half_queue = u32::try_from(queue_max_bytes / 2).unwrap_or(u32::MAX);
    let burst = per_sec
        .saturating_mul(BYTE_BURST_SECS)
        .min(half_queue)
        .max(frame);
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

/// Per-session policy state: the connection buckets (messages, inbound bytes)
/// and the error budget, rebuilt when the tenant's policy changes (config
/// reload).
#[derive(Debug)]
pub struct SessionPolicy {
    policy: Arc<TenantPolicy>,
    conn_limiter: Option<SessionLimiter>,
    byte_limiter: Option<SessionLimiter>,
    error_budget: Option<SessionLimiter>,
}

impl SessionPolicy {
    /// State for a session under `policy`.
    pub fn new(policy: Arc<TenantPolicy>) -> Self {
        Self {
            conn_limiter: (policy.scope == RateLimitScope::Connection)
                .then(|| per_session(policy.message_quota)),
            byte_limiter: policy.byte_quota.map(per_session),
            error_budget: policy.error_quota.map(per_session),
            policy,
        }
    }

    /// Switches to a newer policy, keeping buckets when their quota did not change.
    pub fn refresh(&mut self, policy: &Arc<TenantPolicy>) {
        if Arc::ptr_eq(&self.policy, policy) {
            return;
        }
        let same_rate =
            self.policy.message_quota == policy.message_quota && self.policy.scope == policy.scope;
        let same_bytes = self.policy.byte_quota == policy.byte_quota;
        let same_budget = self.policy.error_quota == policy.error_quota;
        let fresh = Self::new(Arc::clone(policy));
        if !same_rate {
            self.conn_limiter = fresh.conn_limiter;
        }
        if !same_bytes {
            self.byte_limiter = fresh.byte_limiter;
        }
        if !same_budget {
            self.error_budget = fresh.error_budget;
        }
        self.policy = Arc::clone(policy);
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<TenantPolicy> {
        &self.policy
    }

    /// Spends one message from the bucket of the configured scope.
    #[inline]
    pub fn admit_message(&self, user: &Arc<str>) -> bool {
        match self.policy.scope {
            RateLimitScope::Connection => {
                self.conn_limiter.as_ref().is_none_or(|l| l.check().is_ok())
            }
            RateLimitScope::User => self
                .policy
                .user_limiter
                .as_ref()
                .is_none_or(|l| l.check_key(user).is_ok()),
            RateLimitScope::Tenant => self
                .policy
                .tenant_limiter
                .as_ref()
                .is_none_or(|l| l.check().is_ok()),
        }
    }

    /// Spends `bytes` of inbound payload from the connection's byte bucket;
    /// false when they do not fit (the frame is refused, nothing is spent).
    #[inline]
    pub fn admit_bytes(&self, bytes: usize) -> bool {
        let Some(limiter) = &self.byte_limiter else {
            return true;
        };
        let Some(n) = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX)) else {
            return true;
        };
        matches!(limiter.check_n(n), Ok(Ok(())))
    }

    /// Records one refusal; false when the error budget is exhausted (close 1008).
    pub fn record_error(&self) -> bool {
        self.error_budget.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(yaml: &str) -> SessionPolicy {
        let t: TenantConfig = serde_yaml::from_str(&format!("id: t\n{yaml}")).expect("tenant yaml");
        SessionPolicy::new(Arc::new(TenantPolicy::compile(&t)))
    }

    #[test]
    fn inbound_bytes_pass_up_to_a_two_second_burst() {
        let p = session("");
        let frame = 60 * 1024;
        let passed = (0..100).take_while(|_| p.admit_bytes(frame)).count();
        // 512 KiB of burst (half the default 1 MiB queue, below 2 s of
        // 1 MiB/s), give or take what refills while the loop runs.
        assert!((8..=10).contains(&passed), "{passed} frames passed");
        assert!(!p.admit_bytes(frame));
        assert!(p.admit_bytes(0), "an empty frame costs nothing");
    }

    #[test]
    fn a_full_size_frame_always_fits_the_burst() {
        let p = session("policy: { max_bytes_per_sec: 1000 }\nlimits: { max_frame_bytes: 65536 }");
        assert!(p.admit_bytes(65_536));
        assert!(!p.admit_bytes(1_000));
    }

    #[test]
    fn zero_means_no_byte_limit() {
        let p = session("policy: { max_bytes_per_sec: 0 }");
        assert!((0..1000).all(|_| p.admit_bytes(65_536)));
    }
}
