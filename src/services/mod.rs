//! Ext Lane services.
//!
//! Owns: the [`ExtService`] seam through which routed (non-built-in) services
//! are called with one [`PluginCall`] record, the built-in `room` and `chat`
//! services, and [`effects::apply`], the one function that turns a service's
//! [`Effect`]s into frames in outboxes. A service never writes to a socket or
//! an outbox: built-in services see the caller through the narrow [`Caller`]
//! view and, like plugins, return effects, which the lane applies after the
//! call, so a failed call emits nothing half-done.

pub(crate) mod chat;
pub(crate) mod effects;
pub(crate) mod room;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::TenantConfig;
use crate::error::PluginError;
use crate::realtime::SessionId;
use crate::realtime::broker::{Broker, SessionEntry};
use crate::realtime::history::Since;
use crate::realtime::outbox::Qos;

pub(crate) use effects::publish_to_room;

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
    /// Conflation key of a lossy publication (latest wins, SPEC §6).
    pub key: Option<&'a str>,
    /// Session left out of the fan-out.
    pub exclude: Option<SessionId>,
}

/// The calling session as a built-in service sees it: who it is and which
/// rooms it is in, nothing it could write to.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    entry: &'a SessionEntry,
}

impl<'a> Caller<'a> {
    /// A view of `entry`.
    pub fn new(entry: &'a SessionEntry) -> Self {
        Self { entry }
    }

    /// The session's id.
    pub fn sid(&self) -> SessionId {
        self.entry.sid
    }

    /// The authenticated user.
    pub fn user(&self) -> &'a str {
        &self.entry.user
    }

    /// Whether the session is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.entry.in_room(room)
    }
}

/// Each plugin the tenant routes to, once, in route order, with the `svc` of
/// the first route that names it (the `svc` its lifecycle entries' effects
/// are wrapped in).
pub fn routed_plugins(cfg: &TenantConfig) -> impl Iterator<Item = (&str, &str)> {
    cfg.routes.iter().enumerate().filter_map(|(i, r)| {
        let first = !cfg.routes[..i].iter().any(|p| p.plugin == r.plugin);
        first.then_some((r.plugin.as_str(), r.svc.as_str()))
    })
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
    pub sid: SessionId,
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

/// One call into a routed service: which entry point, for whom, and where its
/// effects go. The same record carries every entry point from the lane down to
/// the plugin instance; only [`Entry`] tells them apart.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// The entry point and its arguments.
    pub entry: Entry,
    /// The session the call is about. For [`Entry::Disconnect`] its rooms are
    /// empty (the session has left every room); for [`Entry::Join`] they are as
    /// before the join, for [`Entry::Leave`] as after the leave.
    pub session: SessionInfo,
    /// Plugin file stem the tenant's route names.
    pub plugin: Arc<str>,
    /// The `svc` wrapped around the call's effects: the message's own `svc`,
    /// or for lifecycle entries the first of the tenant's routes that names the
    /// plugin.
    pub svc: String,
    /// The tenant's config at the time of the call (upstreams, limits).
    pub tenant_cfg: Arc<TenantConfig>,
    /// The tenant's realtime state, for read-only queries such as room members.
    pub broker: Arc<dyn Broker>,
}

/// A plugin entry point (the WIT exports) with its arguments.
#[derive(Debug, Clone)]
pub enum Entry {
    /// `on-message`: a client's Ext Lane message routed to the plugin.
    Message {
        /// `type`.
        ty: String,
        /// `room`, if any.
        room: Option<String>,
        /// `seq`, if any.
        seq: Option<u64>,
        /// `data` as JSON text (`null` when absent).
        data: Box<RawValue>,
    },
    /// `on-disconnect`: the session closed (effects: `publish`, `send-to-user`).
    Disconnect,
    /// `on-join`: asked before a client joins `room`; may refuse it.
    Join {
        /// The room.
        room: String,
    },
    /// `on-leave`: told after a client left `room`.
    Leave {
        /// The room.
        room: String,
    },
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
        /// Conflation key (lossy only): latest wins per key in each
        /// receiver's queue.
        key: Option<String>,
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
    /// Make the calling session join a room (subject to room limits); it gets
    /// `sys.joined`, preceded by the retained publications after `since`.
    Join {
        /// Room to join.
        room: String,
        /// `seq` echoed in `sys.joined`.
        seq: Option<u64>,
        /// The client's last position in the room, for recovery.
        since: Option<Since>,
    },
    /// Make the calling session leave a room; it gets `sys.left`.
    Leave {
        /// Room to leave.
        room: String,
        /// `seq` echoed in `sys.left`.
        seq: Option<u64>,
    },
    /// A `sys` frame to the calling session. Only built-in services produce it:
    /// the plugin host has no import that makes one, so a plugin cannot forge
    /// `sys` frames.
    Sys {
        /// `type` of the envelope.
        ty: &'static str,
        /// `room`, if any.
        room: Option<String>,
        /// `seq` echoed.
        seq: Option<u64>,
        /// `data` (JSON).
        data: Box<RawValue>,
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
    /// Runs one entry point of `call.plugin`: a future resolving to the effects
    /// to apply, or to why the call failed. A lifecycle entry
    /// ([`Entry::Disconnect`], [`Entry::Join`], [`Entry::Leave`]) of a plugin
    /// that is not loaded or does not export it resolves to no effects; a
    /// message to a missing plugin fails.
    fn call(&self, call: PluginCall) -> BoxFuture<Result<Vec<Effect>, PluginError>>;

    /// Reports a plugin's state for a tenant.
    fn status(&self, tenant: &str, plugin: &str) -> PluginStatus;

    /// A config reload changed `gateway.plugins`; new calls use the new limits.
    fn config_changed(&self, _cfg: &crate::config::PluginsConfig) {}

    /// Re-reads the plugin folder now (SIGHUP): for mounts whose changes the
    /// directory watch does not see (some network filesystems), or `watch: false`.
    fn rescan(&self) -> BoxFuture<()> {
        Box::pin(std::future::ready(()))
    }
}

impl std::fmt::Debug for dyn ExtService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtService")
    }
}

/// The service used when no plugin host is running: every routed message
/// answers `SERVICE_UNAVAILABLE`; lifecycle entries have nothing to run.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPlugins;

impl ExtService for NoPlugins {
    fn call(&self, call: PluginCall) -> BoxFuture<Result<Vec<Effect>, PluginError>> {
        let result = match call.entry {
            Entry::Message { .. } => Err(PluginError::Missing(call.plugin.to_string())),
            Entry::Disconnect | Entry::Join { .. } | Entry::Leave { .. } => Ok(Vec::new()),
        };
        Box::pin(std::future::ready(result))
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
