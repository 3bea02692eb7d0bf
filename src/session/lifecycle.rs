//! Opening and closing a session.
//!
//! Open: allocate the id and queues, register with the tenant's broker (which
//! may refuse, or name older sessions of the user to kick), tell kicked
//! sessions `sys.kicked` and close them with 4001, build the `sys.authed`
//! greeting, count the session and POST the `connect` event.
//! Close (when the [`SessionGuard`] drops, however the session ended):
//! unregister, tell the rooms it was in `member_left`, run each routed
//! plugin's `on-disconnect` in the background and apply its effects, POST the
//! `disconnect` event.

use std::sync::Arc;

use serde::Serialize;
use tungstenite::Message;

use super::Hub;
use crate::error::CloseCode;
use crate::obs::metrics::SessionCounters;
use crate::protocol::ext::{Outgoing, raw, sys_kicked};
use crate::realtime::broker::{RegisterError, SessionEntry};
use crate::realtime::outbox::{Outbox, Qos};
use crate::services::effects::{self, Target, announce_left};
use crate::services::{Entry, PluginCall, SessionInfo, SessionRooms, routed_plugins};
use crate::tenant::{Tenant, TenantRuntime};

/// The session's first frame (`sys.authed`), boxed until the writer sends it so
/// the session's futures carry a pointer rather than the frame.
pub type Greeting = Box<Message>;

/// A session just opened.
#[derive(Debug)]
pub struct Opened {
    /// Closes the session when dropped.
    pub guard: SessionGuard,
    /// `sys.authed`, to be the first frame the client gets.
    pub greeting: Greeting,
}

/// Opens a session of `user` in `tenant` under `rt`'s session limits.
///
/// # Errors
/// The broker's refusal: the user or the tenant is at its cap.
pub async fn open(
    hub: &Arc<Hub>,
    tenant: &Arc<Tenant>,
    rt: &TenantRuntime,
    user: Arc<str>,
) -> Result<Opened, RegisterError> {
    let cfg = hub.config();
    let queues = &cfg.gateway.queues;
    let sid = hub.next_sid();
    // In cluster mode the per-user cap counts every node first (and kicks
    // the oldest sessions wherever they are).
    if let Some(reserved) = tenant.broker.reserve(sid, &user, rt.policy.session_limits) {
        reserved.await?;
    }
    let counters = hub.metrics.session_counters(&tenant.id);
    let outbox = Arc::new(
        Outbox::with_counters(
            queues.reliable_capacity,
            queues.lossy_capacity,
            counters.drops.clone(),
        )
        .with_max_bytes(queues.max_bytes),
    );
    let entry = Arc::new(SessionEntry::new(sid, user, outbox));
    let kicked = tenant
        .broker
        .register(Arc::clone(&entry), rt.policy.session_limits)?;
    if !kicked.is_empty() {
        let notice = sys_kicked();
        for old in kicked {
            old.outbox.push(notice.clone(), Qos::Reliable);
            old.outbox.close(CloseCode::Replaced, "replaced", true);
        }
    }
    #[derive(Serialize)]
    struct Authed<'a> {
        tenant: &'a str,
        user: &'a str,
        sid: crate::realtime::SessionId,
    }
    let authed = raw(&Authed {
        tenant: &tenant.id,
        user: &entry.user,
        sid,
    });
    let greeting = Box::new(Outgoing::new("sys", "authed").data(Some(&authed)).encode());
    counters.active.inc();
    notify_backend(hub, tenant, &entry, Event::Connect);
    Ok(Opened {
        guard: SessionGuard {
            hub: Arc::clone(hub),
            tenant: Arc::clone(tenant),
            entry,
            counters,
        },
        greeting,
    })
}

/// A registered session; dropping it closes the session (exactly once,
/// whether the upgrade completed or not).
#[derive(Debug)]
pub struct SessionGuard {
    hub: Arc<Hub>,
    tenant: Arc<Tenant>,
    entry: Arc<SessionEntry>,
    counters: Arc<SessionCounters>,
}

impl SessionGuard {
    /// The gateway's shared state.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The session's tenant.
    pub fn tenant(&self) -> &Arc<Tenant> {
        &self.tenant
    }

    /// The session as the broker knows it.
    pub fn entry(&self) -> &Arc<SessionEntry> {
        &self.entry
    }

    /// The session's metric handles (its tenant's).
    pub fn counters(&self) -> &Arc<SessionCounters> {
        &self.counters
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        close(self);
    }
}

fn close(s: &SessionGuard) {
    s.counters.active.dec();
    let left = s.tenant.broker.unregister(s.entry.sid);
    if let Some(rt) = s.tenant.runtime() {
        for (room, peer) in left {
            announce_left(
                s.tenant.broker.as_ref(),
                &rt.policy,
                &room,
                &s.entry.user,
                peer,
            );
        }
        disconnect_plugins(&s.hub, &rt, &s.tenant, &s.entry);
    }
    notify_backend(&s.hub, &s.tenant, &s.entry, Event::Disconnect);
}

/// Runs `on-disconnect` of every plugin the tenant routes to, in the
/// background (tracked by `hub.tasks`); the effects (`publish`,
/// `send-to-user`) are applied as a live session's are, wrapped in the `svc` of
/// the first route that names the plugin.
fn disconnect_plugins(
    hub: &Arc<Hub>,
    rt: &TenantRuntime,
    tenant: &Arc<Tenant>,
    entry: &SessionEntry,
) {
    if rt.cfg.routes.is_empty() {
        return;
    }
    let session = SessionInfo {
        tenant: Arc::clone(&tenant.id),
        user: Arc::clone(&entry.user),
        sid: entry.sid,
        rooms: SessionRooms::Fixed(Vec::new()),
    };
    for (plugin, svc) in routed_plugins(&rt.cfg) {
        let call = hub.ext().call(PluginCall {
            entry: Entry::Disconnect,
            session: session.clone(),
            plugin: Arc::from(plugin),
            svc: svc.to_owned(),
            tenant_cfg: Arc::clone(&rt.cfg),
            broker: Arc::clone(&tenant.broker),
        });
        let tenant = Arc::clone(tenant);
        let svc = svc.to_owned();
        let plugin = plugin.to_owned();
        hub.tasks.spawn(async move {
            let effects = match call.await {
                Ok(effects) if effects.is_empty() => return,
                Ok(effects) => effects,
                Err(e) => {
                    tracing::debug!(plugin = %plugin, reason = e.label(), error = %e, "on-disconnect failed");
                    return;
                }
            };
            let Some(rt) = tenant.runtime() else { return };
            let target = Target {
                broker: tenant.broker.as_ref(),
                policy: &rt.policy,
                caller: None,
            };
            if let Err(r) = effects::apply(target, &svc, effects) {
                tracing::debug!(
                    svc,
                    code = r.code.as_str(),
                    "on-disconnect effect refused; remaining effects dropped"
                );
            }
        });
    }
}

/// A session lifecycle event for the tenant's backend.
#[derive(Debug, Clone, Copy)]
enum Event {
    Connect,
    Disconnect,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Disconnect => "disconnect",
        }
    }
}

/// POSTs a session lifecycle event to the tenant's configured upstream, if any.
/// Runs in the background, bounded by the upstream's timeout.
fn notify_backend(hub: &Arc<Hub>, tenant: &Tenant, entry: &SessionEntry, event: Event) {
    let Some(rt) = tenant.runtime() else { return };
    let events = &rt.cfg.backend.events;
    let name = match event {
        Event::Connect => events.connect.as_ref(),
        Event::Disconnect => events.disconnect.as_ref(),
    };
    let Some(upstream) = name.and_then(|n| rt.cfg.backend.upstreams.get(n)).cloned() else {
        return;
    };
    let event = event.name();
    let body = serde_json::json!({
        "event": event,
        "tenant": &*tenant.id,
        "user": &*entry.user,
        "sid": entry.sid,
    });
    let tenant_id = Arc::clone(&tenant.id);
    let Ok(permit) = Arc::clone(&tenant.events_in_flight).try_acquire_owned() else {
        hub.metrics
            .backend_calls
            .with_label_values(&[&tenant_id, event, "dropped"])
            .inc();
        return;
    };
    let hub2 = Arc::clone(hub);
    hub.tasks.spawn(async move {
        let _permit = permit;
        let result = match hub2.backend.post_event(&upstream, &body).await {
            Ok(status) if (200..300).contains(&status) => "ok",
            Ok(_) => "http_error",
            Err(reason) => reason,
        };
        hub2.metrics
            .backend_calls
            .with_label_values(&[&tenant_id, event, result])
            .inc();
    });
}
