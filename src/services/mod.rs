//! Ext Lane services.
//!
//! Owns: the [`ExtService`] seam through which routed (non-built-in) services are
//! called, and the built-in `room` and `chat` services. A service never writes to a
//! socket: it returns [`Effect`]s, which `lanes::ext` applies through the tenant's
//! broker after the call, so a failed call emits nothing half-done.

pub mod chat;
pub mod room;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::TenantConfig;
use crate::error::PluginError;
use crate::realtime::broker::{Broker, SessionEntry, Sid};
use crate::realtime::outbox::Qos;

/// One room publication before encoding.
#[derive(Debug, Clone, Copy)]
pub struct RoomPublication<'a> {
    /// Target room.
    pub room: &'a str,
    /// `svc` of the envelope (the publishing service's own).
    pub svc: &'a str,
    /// `type` of the envelope.
    pub ty: &'a str,
    /// `data` (JSON).
    pub data: &'a RawValue,
    /// Delivery class.
    pub qos: Qos,
    /// Session left out of the fan-out.
    pub exclude: Option<Sid>,
}

/// Publishes `{"v":1,"svc","type","room","data"}` to a room, encoding it once.
/// Reliable publications in a tenant with room history get an `offset` and the
/// room's `epoch` and are retained for recovery (SPEC §11).
///
/// # Errors
/// The encoded size when the frame would exceed the tenant's `max_frame_bytes`.
pub fn publish_to_room(
    broker: &dyn Broker,
    rt: &crate::gateway::TenantRuntime,
    p: RoomPublication<'_>,
) -> Result<crate::realtime::broker::Delivery, usize> {
    use crate::protocol::ext::Outgoing;
    let base = Outgoing::new(p.svc, p.ty)
        .room(Some(p.room))
        .data(Some(p.data));
    let max = rt.cfg.limits.max_frame_bytes;
    match (p.qos, rt.policy.history) {
        (Qos::Reliable, Some(policy)) => {
            // Check the size with the widest offset and an epoch-sized string;
            // the recorded frame is never larger.
            let widest = base.epoch(Some("0000000000000000")).offset(Some(u64::MAX));
            widest.encode_within(max)?;
            Ok(
                broker.publish_recorded(p.room, policy, p.exclude, &|offset, epoch| {
                    base.epoch(Some(epoch)).offset(Some(offset)).encode()
                }),
            )
        }
        _ => {
            let msg = base.encode_within(max)?;
            Ok(broker.publish(p.room, &msg, p.qos, p.exclude))
        }
    }
}

/// A boxed, sendable future (the trait must stay object safe).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who sent a message.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Tenant id.
    pub tenant: Arc<str>,
    /// Authenticated user.
    pub user: Arc<str>,
    /// Session id.
    pub sid: Sid,
    /// Rooms joined, in join order (last = active).
    pub rooms: SessionRooms,
}

/// A session's rooms as a service sees them. Most plugin calls never ask, so
/// a live session's list is only built when read.
#[derive(Debug, Clone)]
pub enum SessionRooms {
    /// The live session's rooms at the time they are read.
    Live(Arc<SessionEntry>),
    /// A fixed list: empty for a closed session; as before the join / after
    /// the leave for room hooks.
    Fixed(Vec<String>),
}

impl SessionRooms {
    /// The rooms, in join order (last = active).
    pub fn list(&self) -> Vec<String> {
        match self {
            Self::Live(entry) => entry.rooms(),
            Self::Fixed(rooms) => rooms.clone(),
        }
    }

    /// Whether `room` is one of them.
    pub fn contains(&self, room: &str) -> bool {
        match self {
            Self::Live(entry) => entry.in_room(room),
            Self::Fixed(rooms) => rooms.iter().any(|r| r == room),
        }
    }
}

impl From<Vec<String>> for SessionRooms {
    fn from(rooms: Vec<String>) -> Self {
        Self::Fixed(rooms)
    }
}

/// One Ext Lane message routed to a service.
#[derive(Debug, Clone)]
pub struct ExtCall {
    /// The sender.
    pub session: SessionInfo,
    /// Plugin file stem the tenant's route names.
    pub plugin: Arc<str>,
    /// `svc` as the client sent it.
    pub svc: String,
    /// `type`.
    pub ty: String,
    /// `room`, if any.
    pub room: Option<String>,
    /// `seq`, if any.
    pub seq: Option<u64>,
    /// `data` as JSON text (`null` when absent).
    pub data: Box<RawValue>,
    /// The tenant's config at the time of the call (upstreams, limits).
    pub tenant_cfg: Arc<TenantConfig>,
    /// The tenant's realtime state, for read-only queries such as room members.
    pub broker: Arc<dyn Broker>,
}

/// A session that has closed, for the `on-disconnect` hook of a plugin the
/// tenant routes to.
#[derive(Debug, Clone)]
pub struct ClosedSession {
    /// Who it was. `rooms` is empty: the session has left every room by now.
    pub session: SessionInfo,
    /// Plugin file stem.
    pub plugin: Arc<str>,
    /// The `svc` wrapped around the hook's effects: the first of the tenant's
    /// routes that names the plugin.
    pub svc: String,
    /// The tenant's config at close time (upstreams, limits).
    pub tenant_cfg: Arc<TenantConfig>,
    /// The tenant's realtime state, for read-only queries such as room members.
    pub broker: Arc<dyn Broker>,
}

/// Which room hook of a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomHookKind {
    /// `on-join`: asked before the join; may refuse it.
    Join,
    /// `on-leave`: told after the leave.
    Leave,
}

/// A live session joining or leaving a room through the built-in `room`
/// service, for the `on-join` / `on-leave` hook of a plugin the tenant routes to.
#[derive(Debug, Clone)]
pub struct RoomHook {
    /// Join or leave.
    pub kind: RoomHookKind,
    /// The session; `rooms` as before this join or after this leave.
    pub session: SessionInfo,
    /// The room.
    pub room: String,
    /// Plugin file stem.
    pub plugin: Arc<str>,
    /// The `svc` wrapped around the hook's effects: the first of the tenant's
    /// routes that names the plugin.
    pub svc: String,
    /// The tenant's config (upstreams, limits).
    pub tenant_cfg: Arc<TenantConfig>,
    /// The tenant's realtime state, for read-only queries such as room members.
    pub broker: Arc<dyn Broker>,
}

/// Something a service asks the gateway to do after it returns. The gateway wraps
/// every payload in an envelope whose `svc` is the calling service's own, so a
/// service cannot forge `sys` frames or reach another tenant.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send to the calling session only.
    Reply {
        /// `type` of the envelope.
        ty: String,
        /// `data` (JSON).
        data: Box<RawValue>,
    },
    /// Publish to a room.
    Publish {
        /// Target room.
        room: String,
        /// `type` of the envelope.
        ty: String,
        /// `data` (JSON).
        data: Box<RawValue>,
        /// Delivery class.
        qos: Qos,
        /// Leave the calling session out.
        exclude_sender: bool,
    },
    /// Send to every session of a user of the same tenant.
    SendToUser {
        /// Target user.
        user: String,
        /// `type` of the envelope.
        ty: String,
        /// `data` (JSON).
        data: Box<RawValue>,
    },
    /// Make the calling session join a room (subject to room limits).
    Join {
        /// Room to join.
        room: String,
    },
    /// Make the calling session leave a room.
    Leave {
        /// Room to leave.
        room: String,
    },
}

/// Health of one plugin as the server API reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginStatus {
    /// Plugin file stem.
    pub name: String,
    /// Hex SHA-256 of the serving version, if any.
    pub sha256: Option<String>,
    /// RFC 3339 time the serving version was loaded.
    pub loaded_at: Option<String>,
    /// Calls handled for this tenant.
    pub calls: u64,
    /// Failed calls for this tenant.
    pub errors: u64,
    /// `serving`, `failed to load`, `backing off` or `missing`.
    pub state: String,
    /// Last load error, if the newest file failed to load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A routed Ext Lane service (implemented by the WASM plugin host).
pub trait ExtService: Send + Sync + 'static {
    /// Handles one message.
    fn call(&self, call: ExtCall) -> BoxFuture<Result<Vec<Effect>, PluginError>>;

    /// Reports a plugin's state for a tenant.
    fn status(&self, tenant: &str, plugin: &str) -> PluginStatus;

    /// Tells the service that a session of a tenant routing to
    /// `closed.plugin` has closed. Returns the hook's work when the plugin has
    /// one: a future resolving to the effects to apply (only `Publish` and
    /// `SendToUser`; the session is gone), which the caller runs in the
    /// background. `None` when there is nothing to run.
    fn session_closed(
        &self,
        _closed: ClosedSession,
    ) -> Option<BoxFuture<Result<Vec<Effect>, PluginError>>> {
        None
    }

    /// Runs `hook.plugin`'s `on-join` / `on-leave` when its serving version
    /// exports it: a future resolving to the effects to apply after the join
    /// or leave (`Reply`, `Publish`, `SendToUser`), or to the refusal of the
    /// join. `None` when the plugin has no such hook.
    fn room_hook(&self, _hook: RoomHook) -> Option<BoxFuture<Result<Vec<Effect>, PluginError>>> {
        None
    }

    /// A config reload changed `gateway.plugins`; new calls use the new limits.
    fn config_changed(&self, _cfg: &crate::config::PluginsConfig) {}
}

/// The service used when no plugin host is running: every routed call answers
/// `SERVICE_UNAVAILABLE`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPlugins;

impl ExtService for NoPlugins {
    fn call(&self, call: ExtCall) -> BoxFuture<Result<Vec<Effect>, PluginError>> {
        let name = call.plugin.to_string();
        Box::pin(async move { Err(PluginError::Missing(name)) })
    }

    fn status(&self, _tenant: &str, plugin: &str) -> PluginStatus {
        PluginStatus {
            name: plugin.to_owned(),
            sha256: None,
            loaded_at: None,
            calls: 0,
            errors: 0,
            state: "missing".to_owned(),
            last_error: None,
        }
    }
}
