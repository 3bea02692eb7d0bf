//! The per-entry call records the pool and instances still take, built from
//! one [`PluginCall`] at the host's entry point (`PluginHost::call`).

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::TenantConfig;
use crate::realtime::broker::Broker;
use crate::services::SessionInfo;

/// One Ext Lane message routed to a service.
#[derive(Debug, Clone)]
pub(crate) struct ExtCall {
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
pub(crate) struct ClosedSession {
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
pub(crate) enum RoomHookKind {
    /// `on-join`: asked before the join; may refuse it.
    Join,
    /// `on-leave`: told after the leave.
    Leave,
}

/// A live session joining or leaving a room through the built-in `room`
/// service, for the `on-join` / `on-leave` hook of a plugin the tenant routes to.
#[derive(Debug, Clone)]
pub(crate) struct RoomHook {
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
