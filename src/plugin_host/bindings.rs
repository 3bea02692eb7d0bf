//! Host side of `wit/wsprism-plugin.wit`: generated bindings, the per-store state
//! ([`HostState`]) and the host imports a guest can call.
//!
//! Owns: what each import does and which per-call rule it enforces. Effect
//! imports (`reply`, `publish`, `send-to-user`, `join`, `leave`) only validate
//! and append to the current call's effect list (which of them an entry point
//! may use is [`EntryKind::allows`]); `members`, `kv` and `backend`
//! answer immediately. Soft failures are `host-error` results; exhausting a
//! per-call budget traps the guest ([`BudgetTrap`]) so a flooding plugin is cut
//! at once. Input: a store prepared by `instance.rs`; output: the effects and the
//! first rule violation, read back by `instance.rs` when the call returns.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreLimits};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::backend;
use super::call::{EntryKind, RealtimeImport};
use super::kv::{KvError, KvScope, KvStore};
use super::limits::{
    ENVELOPE_OVERHEAD_BYTES, MAX_HOST_CALLS_PER_CALL, MAX_LOG_LINE_BYTES,
    MAX_PUBLISHED_BYTES_PER_CALL,
};
use super::output::GuestOutput;
use crate::config::TenantConfig;
use crate::error::{OutputRule, PluginError};
use crate::obs::metrics::Metrics;
use crate::realtime::broker::Broker;
use crate::realtime::outbox::{MAX_CONFLATION_KEY_BYTES, Qos, valid_conflation_key};
use crate::services::{Effect, SessionInfo as GatewaySession};

// Bound to world `plugin`: its imports are a superset of `ext-lane-plugin`'s
// (the `types` interface it uses carries the `session` resource), so one
// linker serves components of either world. Exports are looked up per
// component by `loader.rs` and called as typed functions by `instance.rs`.
wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
    imports: {
        // kv and backend may wait on I/O (a Redis kv, an HTTP upstream).
        "wsprism:plugin/kv": async | trappable,
        "wsprism:plugin/backend": async | trappable,
        // Every import may trap, but only to end a guest that exhausted a
        // per-call budget; ordinary failures are `host-error` results.
        default: trappable,
    },
    exports: { default: async },
    with: { "wsprism:plugin/types.session": SessionHandle },
});

/// The host side of the WIT `session` resource (world `ext-lane-plugin`). A
/// call is about exactly one session, kept in [`CallCtx::session`], so the
/// handle carries nothing: every accessor reads the current call's session,
/// as the `session` interface of world `plugin` does without a handle.
/// Handles are only ever lent to the guest (`borrow<session>`) for the length
/// of one call.
#[allow(unreachable_pub)] // `pub`: the generated bindings re-export it
pub struct SessionHandle;

impl SessionHandle {
    /// The borrowed handle passed to every entry point.
    pub(crate) fn lend() -> wasmtime::component::Resource<Self> {
        wasmtime::component::Resource::new_borrow(0)
    }
}

pub(crate) use self::wsprism::plugin::types::HostError;

/// The generated WIT types the rest of the host uses, under one prefix:
/// `wit::Refusal` is a guest's refusal (not `crate::error::Refusal`),
/// `wit::Message` the message a guest gets (not a WebSocket message).
pub(crate) mod wit {
    pub(crate) use super::{Message, Refusal};
}

/// Why the host ended a guest call from inside an import or the epoch callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BudgetTrap {
    /// More than [`MAX_HOST_CALLS_PER_CALL`] imports in one call.
    #[error("host call budget exceeded ({MAX_HOST_CALLS_PER_CALL} calls)")]
    HostCalls,
    /// More than [`MAX_PUBLISHED_BYTES_PER_CALL`] bytes of effects in one call.
    #[error("published bytes budget exceeded ({MAX_PUBLISHED_BYTES_PER_CALL} bytes)")]
    PublishedBytes,
    /// The CPU budget (epoch deadline) ran out.
    #[error("cpu budget exhausted")]
    Cpu,
}

impl From<BudgetTrap> for PluginError {
    fn from(b: BudgetTrap) -> Self {
        match b {
            BudgetTrap::HostCalls => Self::BadOutput(OutputRule::HostCalls),
            BudgetTrap::PublishedBytes => Self::BadOutput(OutputRule::PublishedBytes),
            BudgetTrap::Cpu => Self::Timeout,
        }
    }
}

/// State of the guest call in progress. Reset by `instance.rs` before each call.
#[derive(Debug, Default)]
pub(crate) struct CallCtx {
    /// Which entry point runs (`None` while instantiating and during `init`,
    /// where no realtime effect is allowed); decides the realtime imports
    /// allowed ([`EntryKind::allows`]).
    pub(crate) entry: Option<EntryKind>,
    /// The session the call is about (`None` during `init`), read by the
    /// `session` accessors.
    pub(crate) session: Option<GatewaySession>,
    /// The tenant's config at the time of the call (backend upstreams).
    pub(crate) tenant_cfg: Option<Arc<TenantConfig>>,
    /// The tenant's broker, for `members`.
    pub(crate) broker: Option<Arc<dyn Broker>>,
    /// Queued effects, in call order.
    pub(crate) effects: Vec<Effect>,
    /// Imports made so far.
    pub(crate) host_calls: u32,
    /// `data` bytes queued so far.
    pub(crate) published: usize,
    /// The tenant's `max_frame_bytes`.
    pub(crate) max_frame_bytes: usize,
    /// Length of the routed `svc`, part of every envelope.
    pub(crate) svc_len: usize,
    /// First broken rule; fails the call even if the guest returns `ok`.
    pub(crate) violation: Option<PluginError>,
    /// Wall-clock end of the call; bounds backend requests.
    pub(crate) deadline: Option<Instant>,
}

/// Epoch-based CPU accounting of the running call.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CpuMeter {
    /// Ticks the guest has run for in this call.
    pub(crate) used: u64,
    /// Ticks allowed.
    pub(crate) budget: u64,
    /// Set when the budget ran out (the call is a timeout, not a trap).
    pub(crate) exhausted: bool,
}

/// Memory accounting on top of [`StoreLimits`]: `max_memory_bytes` caps the
/// instance as a whole, every linear memory of every core module in the
/// component together (a component may hold several, and a per-memory cap
/// would multiply), and a refused grow is remembered so the resulting trap is
/// reported as a memory limit hit.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    /// The `StoreLimitsBuilder`-built per-memory cap and table limits.
    pub(crate) inner: StoreLimits,
    /// The cap over all linear memories of the instance.
    pub(crate) cap: usize,
    /// Bytes of linear memory granted so far, all memories together.
    pub(crate) total: usize,
    /// A memory or table grow was refused.
    pub(crate) hit: bool,
    /// Largest total granted so far (high-water mark).
    pub(crate) peak: usize,
}

impl MemoryLimiter {
    /// A limiter capping an instance's linear memories at `cap` bytes together.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(cap)
                .trap_on_grow_failure(true)
                .build(),
            cap,
            total: 0,
            hit: false,
            peak: 0,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.cap {
            self.hit = true;
            return Err(wasmtime::Error::msg(
                "instance memory over max_memory_bytes (all linear memories together)",
            ));
        }
        let r = self.inner.memory_growing(current, desired, maximum);
        if matches!(r, Ok(true)) {
            self.total = total;
            self.peak = self.peak.max(total);
        } else {
            self.hit = true;
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.table_growing(current, desired, maximum);
        if !matches!(r, Ok(true)) {
            self.hit = true;
        }
        r
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// The data of one `Store`: one instance of one plugin for one tenant.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory cap of the instance.
    pub(crate) limiter: MemoryLimiter,
    /// (tenant, plugin): the kv scope and the log tags. Fixed for the store's
    /// life, which is how an instance never serves two tenants.
    pub(crate) scope: KvScope,
    kv: Arc<dyn KvStore>,
    http: reqwest::Client,
    metrics: Metrics,
    /// CPU accounting of the running call.
    pub(crate) cpu: CpuMeter,
    /// The running call.
    pub(crate) call: CallCtx,
    /// Guest stdout/stderr, logged line by line within a per-call budget.
    pub(crate) output: GuestOutput,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("scope", &self.scope)
            .field("cpu", &self.cpu)
            .finish_non_exhaustive()
    }
}

impl HostState {
    /// Fresh state for a new store. WASI gets an empty context: no preopened
    /// directories, no environment, no arguments, no stdin, no sockets;
    /// stdout and stderr go to the logs ([`GuestOutput`]).
    pub(crate) fn new(
        scope: KvScope,
        kv: Arc<dyn KvStore>,
        http: reqwest::Client,
        metrics: Metrics,
        max_memory_bytes: usize,
    ) -> Self {
        let output = GuestOutput::new(Arc::clone(&scope.tenant), Arc::clone(&scope.plugin));
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.stdout())
            .stderr(output.stderr())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(max_memory_bytes),
            scope,
            kv,
            http,
            metrics,
            cpu: CpuMeter::default(),
            call: CallCtx::default(),
            output,
        }
    }

    /// Counts one import against the per-call budget.
    fn charge(&mut self) -> wasmtime::Result<()> {
        self.call.host_calls += 1;
        if self.call.host_calls > MAX_HOST_CALLS_PER_CALL {
            return Err(wasmtime::Error::new(BudgetTrap::HostCalls));
        }
        Ok(())
    }

    /// The current call's session. The guest only holds a handle during a call
    /// that has one, so a miss means a handle was smuggled out of its call
    /// (which the component model forbids for borrows): trap.
    fn session(&mut self) -> wasmtime::Result<&GatewaySession> {
        self.charge()?;
        self.call
            .session
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("no session in this call (`init` is about none)"))
    }

    /// Records the first violation of the call.
    fn violate(&mut self, e: PluginError) {
        if self.call.violation.is_none() {
            self.call.violation = Some(e);
        }
    }

    fn realtime_allowed(&self, import: RealtimeImport) -> Result<(), HostError> {
        match self.call.entry {
            Some(entry) => entry
                .allows(import)
                .map_err(|why| HostError::NotAllowed(why.into())),
            None => Err(HostError::NotAllowed(
                "realtime effects are not available in init".into(),
            )),
        }
    }

    /// Validates one outgoing payload: frame size, JSON, the per-call byte budget.
    fn payload(
        &mut self,
        import: RealtimeImport,
        ty: &str,
        target: &str,
        data: String,
    ) -> wasmtime::Result<Result<Box<RawValue>, HostError>> {
        if let Err(e) = self.realtime_allowed(import) {
            return Ok(Err(e));
        }
        self.call.published += data.len();
        if self.call.published > MAX_PUBLISHED_BYTES_PER_CALL {
            return Err(wasmtime::Error::new(BudgetTrap::PublishedBytes));
        }
        let frame =
            ENVELOPE_OVERHEAD_BYTES + self.call.svc_len + ty.len() + target.len() + data.len();
        if frame > self.call.max_frame_bytes {
            self.violate(PluginError::PayloadTooLarge);
            return Ok(Err(HostError::TooLarge));
        }
        match RawValue::from_string(data) {
            Ok(v) => Ok(Ok(v)),
            Err(_) => {
                self.violate(PluginError::BadOutput(OutputRule::InvalidJson));
                Ok(Err(HostError::InvalidJson))
            }
        }
    }

    /// A room name as the decoder accepts it from clients.
    fn room_arg(room: &str) -> Result<(), HostError> {
        crate::protocol::ext::check_name(room)
            .map_err(|why| HostError::InvalidArgument(format!("room: {why}")))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A linker with WASI p2 (empty context) and the wsPrism imports.
///
/// # Errors
/// Only on a duplicate definition, which would be a bug here.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

impl self::wsprism::plugin::types::Host for HostState {}

/// World `plugin`: the current call's session, no handle.
impl self::wsprism::plugin::session::Host for HostState {
    fn tenant(&mut self) -> wasmtime::Result<String> {
        Ok(self.session()?.tenant.to_string())
    }

    fn user(&mut self) -> wasmtime::Result<String> {
        Ok(self.session()?.user.to_string())
    }

    fn sid(&mut self) -> wasmtime::Result<u64> {
        Ok(self.session()?.sid.get())
    }

    fn rooms(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.session()?.rooms.list())
    }
}

/// World `ext-lane-plugin`: the same answers through the lent handle.
impl self::wsprism::plugin::types::HostSession for HostState {
    fn tenant(
        &mut self,
        _: wasmtime::component::Resource<SessionHandle>,
    ) -> wasmtime::Result<String> {
        self::wsprism::plugin::session::Host::tenant(self)
    }

    fn user(
        &mut self,
        _: wasmtime::component::Resource<SessionHandle>,
    ) -> wasmtime::Result<String> {
        self::wsprism::plugin::session::Host::user(self)
    }

    fn sid(&mut self, _: wasmtime::component::Resource<SessionHandle>) -> wasmtime::Result<u64> {
        self::wsprism::plugin::session::Host::sid(self)
    }

    fn rooms(
        &mut self,
        _: wasmtime::component::Resource<SessionHandle>,
    ) -> wasmtime::Result<Vec<String>> {
        self::wsprism::plugin::session::Host::rooms(self)
    }

    fn drop(&mut self, _: wasmtime::component::Resource<SessionHandle>) -> wasmtime::Result<()> {
        // Only borrows are handed out; there is nothing to release.
        Ok(())
    }
}

impl self::wsprism::plugin::realtime::Host for HostState {
    fn reply(&mut self, ty: String, data: String) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        let data = match self.payload(RealtimeImport::Reply, &ty, "", data)? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        self.call.effects.push(Effect::Reply { ty, data });
        Ok(Ok(()))
    }

    fn publish(
        &mut self,
        room: String,
        ty: String,
        data: String,
        qos: self::wsprism::plugin::types::Qos,
        exclude_sender: bool,
    ) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        if let Err(e) = Self::room_arg(&room) {
            return Ok(Err(e));
        }
        let data = match self.payload(RealtimeImport::Publish, &ty, &room, data)? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let qos = match qos {
            self::wsprism::plugin::types::Qos::Reliable => Qos::Reliable,
            self::wsprism::plugin::types::Qos::Lossy => Qos::Lossy,
        };
        self.call.effects.push(Effect::Publish {
            room,
            ty,
            data,
            qos,
            key: None,
            exclude_sender,
        });
        Ok(Ok(()))
    }

    fn publish_latest(
        &mut self,
        room: String,
        key: String,
        ty: String,
        data: String,
        exclude_sender: bool,
    ) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        if let Err(e) = Self::room_arg(&room) {
            return Ok(Err(e));
        }
        if !valid_conflation_key(&key) {
            return Ok(Err(HostError::InvalidArgument(format!(
                "key must be 1 to {MAX_CONFLATION_KEY_BYTES} bytes"
            ))));
        }
        let data = match self.payload(RealtimeImport::Publish, &ty, &room, data)? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        self.call.effects.push(Effect::Publish {
            room,
            ty,
            data,
            qos: Qos::Lossy,
            key: Some(key),
            exclude_sender,
        });
        Ok(Ok(()))
    }

    fn send_to_user(
        &mut self,
        user: String,
        ty: String,
        data: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        if user.is_empty() {
            return Ok(Err(HostError::InvalidArgument(
                "user must not be empty".into(),
            )));
        }
        let data = match self.payload(RealtimeImport::SendToUser, &ty, "", data)? {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        self.call
            .effects
            .push(Effect::SendToUser { user, ty, data });
        Ok(Ok(()))
    }

    fn join(&mut self, room: String) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        if let Err(e) = self
            .realtime_allowed(RealtimeImport::Join)
            .and_then(|()| Self::room_arg(&room))
        {
            return Ok(Err(e));
        }
        self.call.effects.push(Effect::Join {
            room,
            seq: None,
            since: None,
        });
        Ok(Ok(()))
    }

    fn leave(&mut self, room: String) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        if let Err(e) = self
            .realtime_allowed(RealtimeImport::Leave)
            .and_then(|()| Self::room_arg(&room))
        {
            return Ok(Err(e));
        }
        self.call.effects.push(Effect::Leave { room, seq: None });
        Ok(Ok(()))
    }

    fn members(&mut self, room: String) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        self.charge()?;
        let Some(broker) = self.call.broker.as_ref() else {
            return Ok(Err(HostError::NotAllowed(
                "members is not available in init".into(),
            )));
        };
        if let Err(e) = Self::room_arg(&room) {
            return Ok(Err(e));
        }
        let (users, _truncated) = crate::realtime::broker::capped(broker.presence(&room));
        Ok(Ok(users))
    }
}

fn kv_error(e: KvError) -> HostError {
    match e {
        KvError::TooLarge => HostError::TooLarge,
        KvError::Full | KvError::NotAnInteger => HostError::InvalidArgument(e.to_string()),
        KvError::Unavailable(m) => HostError::Unavailable(m),
    }
}

impl self::wsprism::plugin::kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, HostError>> {
        self.charge()?;
        Ok(self.kv.get(&self.scope, &key).await.map_err(kv_error))
    }

    async fn set(
        &mut self,
        key: String,
        value: String,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        self.charge()?;
        let ttl = ttl_ms.map(Duration::from_millis);
        Ok(self
            .kv
            .set(&self.scope, &key, value, ttl)
            .await
            .map_err(kv_error))
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, HostError>> {
        self.charge()?;
        Ok(self.kv.delete(&self.scope, &key).await.map_err(kv_error))
    }

    async fn incr(&mut self, key: String, delta: i64) -> wasmtime::Result<Result<i64, HostError>> {
        self.charge()?;
        Ok(self
            .kv
            .incr(&self.scope, &key, delta)
            .await
            .map_err(kv_error))
    }
}

impl self::wsprism::plugin::backend::Host for HostState {
    async fn call(
        &mut self,
        req: self::wsprism::plugin::backend::Request,
    ) -> wasmtime::Result<Result<self::wsprism::plugin::backend::Response, HostError>> {
        self.charge()?;
        let Some(tenant) = self.call.tenant_cfg.clone() else {
            return Ok(Err(HostError::NotAllowed("no tenant context".into())));
        };
        let out = backend::send(
            &self.http,
            &tenant,
            backend::Request {
                upstream: req.upstream,
                method: req.method,
                path: req.path,
                headers: req.headers,
                body: req.body,
            },
            self.call.deadline,
        )
        .await;
        let result = if out.is_ok() { "ok" } else { "error" };
        self.metrics
            .backend_calls
            .with_label_values(&[&*self.scope.tenant, "plugin", result])
            .inc();
        Ok(out
            .map(|r| self::wsprism::plugin::backend::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(|e| match e {
                backend::BackendError::UnknownUpstream(n) => HostError::UnknownUpstream(n),
                backend::BackendError::InvalidArgument(m) => HostError::InvalidArgument(m),
                backend::BackendError::Unavailable(m) => HostError::Unavailable(m),
            }))
    }
}

impl self::wsprism::plugin::log::Host for HostState {
    fn log(
        &mut self,
        level: self::wsprism::plugin::log::Level,
        message: String,
    ) -> wasmtime::Result<()> {
        use self::wsprism::plugin::log::Level;
        self.charge()?;
        let mut msg = message;
        if msg.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        let (tenant, plugin) = (&*self.scope.tenant, &*self.scope.plugin);
        // The session the call is about (none in `init`).
        let sid = self
            .call
            .session
            .as_ref()
            .map(|s| tracing::field::display(s.sid));
        match level {
            Level::Trace => {
                tracing::trace!(target: "wsprism::plugin", tenant, plugin, sid, "{msg}")
            }
            Level::Debug => {
                tracing::debug!(target: "wsprism::plugin", tenant, plugin, sid, "{msg}")
            }
            Level::Info => tracing::info!(target: "wsprism::plugin", tenant, plugin, sid, "{msg}"),
            Level::Warn => tracing::warn!(target: "wsprism::plugin", tenant, plugin, sid, "{msg}"),
            Level::Error => {
                tracing::error!(target: "wsprism::plugin", tenant, plugin, sid, "{msg}")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11 item 7: `max_memory_bytes` caps an instance, not each of its
    /// linear memories: two memories of 40 MiB under a 64 MiB cap is a hit.
    #[test]
    fn memory_cap_covers_all_memories_of_an_instance() {
        const MIB: usize = 1 << 20;
        let mut l = MemoryLimiter::new(64 * MIB);
        assert!(matches!(l.memory_growing(0, 40 * MIB, None), Ok(true)));
        assert!(
            l.memory_growing(0, 40 * MIB, None).is_err(),
            "second memory"
        );
        assert!(l.hit);
        // Growing the first memory within the total is fine.
        let mut l = MemoryLimiter::new(64 * MIB);
        assert!(matches!(l.memory_growing(0, 16 * MIB, None), Ok(true)));
        assert!(matches!(l.memory_growing(0, 16 * MIB, None), Ok(true)));
        assert!(matches!(
            l.memory_growing(16 * MIB, 48 * MIB, None),
            Ok(true)
        ));
        assert_eq!((l.total, l.peak, l.hit), (64 * MIB, 64 * MIB, false));
        assert!(l.memory_growing(16 * MIB, 17 * MIB, None).is_err());
    }
}
