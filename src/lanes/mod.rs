//! The two lanes: per-message pipelines from decoded frames to services.
//!
//! Owns: [`SessionCtx`], the per-session state every inbound message passes
//! through (the tenant's current policy, the session's rate-limit buckets and
//! error budget), and the one place where a refusal becomes a client-visible
//! frame or a close. Input comes from the session's reader (`session`);
//! output is pushed to outboxes through the tenant's broker.

pub mod ext;
pub mod hot;

use std::sync::Arc;

use crate::config::HotErrorMode;
use crate::error::{ClientCode, CloseCode, Refusal};
use crate::obs::metrics::{Metrics, SessionCounters};
use crate::policy::SessionPolicy;
use crate::protocol::ext::sys_error;
use crate::realtime::broker::SessionEntry;
use crate::realtime::outbox::Qos;
use crate::services::{ExtService, SessionInfo, SessionRooms};
use crate::tenant::{Tenant, TenantRuntime};

/// What the lanes use besides the session's tenant: the routed services and
/// the metric families refusals are counted in. One per gateway, shared by
/// every session.
#[derive(Debug)]
pub struct Pipeline {
    /// Routed Ext Lane services (the plugin host, or
    /// [`crate::services::NoPlugins`]).
    pub ext: Arc<dyn ExtService>,
    /// Metric families.
    pub metrics: Metrics,
}

/// What the reader does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the session with this code.
    Close(CloseCode),
}

/// Lane a refusal happened on (metric label and reporting rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Binary frames.
    Hot,
    /// JSON envelopes.
    Ext,
}

impl Lane {
    fn label(self) -> &'static str {
        match self {
            Self::Hot => "hot",
            Self::Ext => "ext",
        }
    }
}

/// Per-session state of the inbound pipeline.
#[derive(Debug)]
pub struct SessionCtx {
    /// Routed services and metrics.
    pub pipeline: Arc<Pipeline>,
    /// The session's tenant.
    pub tenant: Arc<Tenant>,
    /// The session in the broker.
    pub entry: Arc<SessionEntry>,
    /// Metric handles (the tenant's).
    pub counters: Arc<SessionCounters>,
    runtime: Arc<TenantRuntime>,
    policy: SessionPolicy,
}

impl SessionCtx {
    /// Context for a session; `None` if the tenant was removed meanwhile.
    pub fn new(
        pipeline: Arc<Pipeline>,
        tenant: Arc<Tenant>,
        entry: Arc<SessionEntry>,
        counters: Arc<SessionCounters>,
    ) -> Option<Self> {
        let runtime = tenant.runtime()?;
        Some(Self {
            policy: SessionPolicy::new(Arc::clone(&runtime.policy)),
            runtime,
            pipeline,
            tenant,
            entry,
            counters,
        })
    }

    /// Loads the tenant's current config (picking up reloads); `None` when the
    /// tenant was removed.
    #[inline]
    pub fn refresh(&mut self) -> Option<Arc<TenantRuntime>> {
        let current = self.tenant.runtime()?;
        if !Arc::ptr_eq(&current, &self.runtime) {
            self.policy.refresh(&current.policy);
            self.runtime = Arc::clone(&current);
        }
        Some(current)
    }

    /// The session's rate-limit and error-budget state.
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    /// Spends one message from the rate limit and `bytes` of payload from the
    /// connection's byte rate (`max_bytes_per_sec`); false (nothing more
    /// spent) at the first that does not allow it.
    #[inline]
    pub fn admit(&self, bytes: usize) -> bool {
        self.policy.admit_message(&self.entry.user) && self.policy.admit_bytes(bytes)
    }

    /// A Ping or Pong from the client: counted against the rate limit so a
    /// control-frame flood is cut like any other.
    pub fn control_frame(&mut self) -> Flow {
        if self.refresh().is_none() {
            return Flow::Close(CloseCode::GoingAway);
        }
        // Control payloads are at most 125 bytes: counted as messages only.
        if self.admit(0) {
            Flow::Continue
        } else {
            self.count_refusal(Lane::Ext, ClientCode::RateLimited);
            self.spend_error_budget()
        }
    }

    /// Who this session is, for services.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            tenant: Arc::clone(&self.tenant.id),
            user: Arc::clone(&self.entry.user),
            sid: self.entry.sid,
            rooms: SessionRooms::Live(Arc::clone(&self.entry)),
        }
    }

    fn count_refusal(&self, lane: Lane, code: ClientCode) {
        self.pipeline
            .metrics
            .policy_refusals
            .with_label_values(&[&self.tenant.id, lane.label(), code.label()])
            .inc();
    }

    fn spend_error_budget(&self) -> Flow {
        if self.policy.record_error() {
            Flow::Continue
        } else {
            tracing::debug!("error budget exhausted");
            Flow::Close(CloseCode::Policy)
        }
    }

    /// Reports an Ext Lane refusal: `sys.error` (with `seq`), counted, charged to
    /// the error budget.
    pub fn refuse_ext(&self, refusal: &Refusal, seq: Option<u64>) -> Flow {
        self.count_refusal(Lane::Ext, refusal.code);
        self.entry.outbox.push(
            sys_error(refusal.code, &refusal.msg, refusal.reason.as_deref(), seq),
            Qos::Reliable,
        );
        self.spend_error_budget()
    }

    /// Reports a Hot Lane refusal according to `hot_error_mode`.
    pub fn refuse_hot(&self, code: ClientCode, mode: HotErrorMode) -> Flow {
        self.count_refusal(Lane::Hot, code);
        match mode {
            HotErrorMode::Silent => {}
            HotErrorMode::Error => {
                self.entry
                    .outbox
                    .push(sys_error(code, code.message(), None, None), Qos::Reliable);
            }
            HotErrorMode::Close => return Flow::Close(CloseCode::Policy),
        }
        self.spend_error_budget()
    }
}
