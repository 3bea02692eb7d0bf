//! The two lanes: per-message pipelines from decoded frames to services.
//!
//! Owns: [`SessionCtx`], the per-session state every inbound message passes
//! through (the tenant's current policy, the session's rate-limit buckets and
//! error budget), and the one place where a refusal becomes a client-visible
//! frame or a close. Input comes from `transport::session`; output is pushed to
//! outboxes through the tenant's broker.

pub mod ext;
pub mod hot;

use std::sync::Arc;

use crate::config::{HotErrorMode, TenantConfig};
use crate::error::{ClientCode, CloseCode, Refusal};
use crate::gateway::{Gateway, Tenant, TenantRuntime};
use crate::obs::metrics::SessionCounters;
use crate::policy::SessionPolicy;
use crate::protocol::ext::sys_error;
use crate::realtime::broker::SessionEntry;
use crate::realtime::outbox::Qos;
use crate::services::{ClosedSession, SessionInfo, SessionRooms};

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
    /// The gateway.
    pub gw: Arc<Gateway>,
    /// The session's tenant.
    pub tenant: Arc<Tenant>,
    /// The session in the broker.
    pub entry: Arc<SessionEntry>,
    /// Metric handles.
    pub counters: SessionCounters,
    runtime: Arc<TenantRuntime>,
    policy: SessionPolicy,
}

impl SessionCtx {
    /// Context for a session; `None` if the tenant was removed meanwhile.
    pub fn new(
        gw: Arc<Gateway>,
        tenant: Arc<Tenant>,
        entry: Arc<SessionEntry>,
        counters: SessionCounters,
    ) -> Option<Self> {
        let runtime = tenant.runtime()?;
        Some(Self {
            policy: SessionPolicy::new(Arc::clone(&runtime.policy)),
            runtime,
            gw,
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

    /// Spends one message from the rate limit.
    #[inline]
    pub fn admit(&self) -> bool {
        self.policy.admit_message(&self.entry.user)
    }

    /// A Ping or Pong from the client: counted against the rate limit so a
    /// control-frame flood is cut like any other.
    pub fn control_frame(&mut self) -> Flow {
        if self.refresh().is_none() {
            return Flow::Close(CloseCode::GoingAway);
        }
        if self.admit() {
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
        self.gw
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
        self.entry
            .outbox
            .push(sys_error(refusal.code, &refusal.msg, seq), Qos::Reliable);
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
                    .push(sys_error(code, code.message(), None), Qos::Reliable);
            }
            HotErrorMode::Close => return Flow::Close(CloseCode::Policy),
        }
        self.spend_error_budget()
    }
}

/// POSTs a session lifecycle event to the tenant's configured upstream, if any.
/// Runs in the background, bounded by the upstream's timeout.
pub(crate) fn notify_backend(
    gw: &Arc<Gateway>,
    tenant: &Tenant,
    entry: &SessionEntry,
    event: &'static str,
) {
    let Some(rt) = tenant.runtime() else { return };
    let name = match event {
        "connect" => rt.cfg.backend.events.connect.as_ref(),
        _ => rt.cfg.backend.events.disconnect.as_ref(),
    };
    let Some(upstream) = name.and_then(|n| rt.cfg.backend.upstreams.get(n)).cloned() else {
        return;
    };
    let body = serde_json::json!({
        "event": event,
        "tenant": &*tenant.id,
        "user": &*entry.user,
        "sid": crate::transport::session::sid_string(entry.sid),
    });
    let gw2 = Arc::clone(gw);
    let tenant_id = Arc::clone(&tenant.id);
    gw.tasks.spawn(async move {
        let result = match gw2.backend.post_event(&upstream, &body).await {
            Ok(status) if (200..300).contains(&status) => "ok",
            Ok(_) => "http_error",
            Err(reason) => reason,
        };
        gw2.metrics
            .backend_calls
            .with_label_values(&[&tenant_id, event, result])
            .inc();
    });
}

/// Each plugin the tenant routes to, once, in route order, with the `svc` of
/// the first route that names it (the `svc` its hooks' effects are wrapped in).
pub(crate) fn routed_plugins(cfg: &TenantConfig) -> impl Iterator<Item = (&str, &str)> {
    cfg.routes.iter().enumerate().filter_map(|(i, r)| {
        let first = !cfg.routes[..i].iter().any(|p| p.plugin == r.plugin);
        first.then_some((r.plugin.as_str(), r.svc.as_str()))
    })
}

/// Tells routed services that a session ended. A plugin's `on-disconnect` runs
/// in the background (tracked by `gw.tasks`); its effects (`publish`,
/// `send-to-user`) are applied like `on-message` effects, wrapped in the `svc`
/// of the first route that names the plugin.
pub(crate) fn session_closed(
    gw: &Arc<Gateway>,
    rt: &TenantRuntime,
    tenant: &Arc<Tenant>,
    entry: &SessionEntry,
) {
    if rt.cfg.routes.is_empty() {
        return;
    }
    let info = SessionInfo {
        tenant: Arc::clone(&tenant.id),
        user: Arc::clone(&entry.user),
        sid: entry.sid,
        rooms: SessionRooms::Fixed(Vec::new()),
    };
    for (plugin, svc) in routed_plugins(&rt.cfg) {
        let closed = ClosedSession {
            session: info.clone(),
            plugin: Arc::from(plugin),
            svc: svc.to_owned(),
            tenant_cfg: Arc::clone(&rt.cfg),
            broker: Arc::clone(&tenant.broker),
        };
        let Some(hook) = gw.ext.session_closed(closed) else {
            continue;
        };
        let tenant = Arc::clone(tenant);
        let svc = svc.to_owned();
        let plugin = plugin.to_owned();
        gw.tasks.spawn(async move {
            match hook.await {
                Ok(effects) => ext::apply_closed_effects(&tenant, &svc, effects),
                Err(e) => {
                    tracing::debug!(plugin = %plugin, reason = e.label(), error = %e, "on-disconnect failed");
                }
            }
        });
    }
}
