//! One plugin instance: a `Store` plus the instantiated component, and how a
//! call runs inside it under the per-call limits.
//!
//! Owns: store set-up (memory cap, epoch callback that yields every tick and
//! ends the call when the CPU budget is spent), instantiation (+ `init`), the
//! call of any entry point ([`Instance::call`], which picks the guest export),
//! and the classification of failures into [`PluginError`]. Whether an
//! instance is reused is decided by `pool.rs`; this module only reports that
//! an instance is poisoned (trap, timeout, memory hit, budget kill).

use std::sync::Arc;

use tokio::time::Instant;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Lift, Lower, Resource, TypedFunc,
};
use wasmtime::{Store, UpdateDeadline};

use super::HostCore;
use super::bindings::{BudgetTrap, CallCtx, CpuMeter, HostState, SessionHandle, wit};
use super::call::EntryKind;
use super::kv::{KvScope, KvStore};
use super::limits::{CallLimits, MAX_REFUSAL_CODE_BYTES, MAX_REFUSAL_MESSAGE_BYTES};
use super::loader::{PluginVersion, World};
use crate::config::TenantConfig;
use crate::error::PluginError;
use crate::realtime::broker::Broker;
use crate::services::{Effect, SessionInfo as GatewaySession};
use crate::services::{Entry, PluginCall};

/// An entry point of either world: `Plain` (world `plugin`, the guest reads
/// the session through the `session` interface) or `Borrowed` (world
/// `ext-lane-plugin`, a borrowed `session` handle comes first).
#[derive(Clone, Copy)]
enum Entrypoint<P, B> {
    Plain(P),
    Borrowed(B),
}

/// An entry point's typed function in either signature.
type Typed<P, R, BP, BR> = Entrypoint<TypedFunc<P, R>, TypedFunc<BP, BR>>;
type Outcome = (Result<(), wit::Refusal>,);
type Handle = Resource<SessionHandle>;
/// `handle` / `on-message`.
type OnMessage =
    Entrypoint<TypedFunc<(wit::Message,), Outcome>, TypedFunc<(Handle, wit::Message), Outcome>>;
/// `on-disconnect`.
type OnDisconnect = Entrypoint<TypedFunc<(), ()>, TypedFunc<(Handle,), ()>>;
/// `on-join`.
type OnJoin = Entrypoint<TypedFunc<(String,), Outcome>, TypedFunc<(Handle, String), Outcome>>;
/// `on-leave`.
type OnLeave = Entrypoint<TypedFunc<(String,), ()>, TypedFunc<(Handle, String), ()>>;

/// A live instance of one plugin version for one tenant.
pub(crate) struct Instance {
    /// The version it was instantiated from; a newer version replaces it.
    pub(crate) version: Arc<PluginVersion>,
    store: Store<HostState>,
    on_message: OnMessage,
    on_disconnect: Option<OnDisconnect>,
    on_join: Option<OnJoin>,
    on_leave: Option<OnLeave>,
    /// Calls served so far.
    pub(crate) calls: u64,
    /// A call trapped or was cut: the store must not be used again.
    pub(crate) poisoned: bool,
}

/// Who and what a guest call is about, for [`arm`].
struct CallFor {
    /// `None` for instantiation and `init`.
    entry: Option<EntryKind>,
    session: Option<GatewaySession>,
    tenant_cfg: Option<Arc<TenantConfig>>,
    broker: Option<Arc<dyn Broker>>,
    /// Length of the `svc` the call's effects are wrapped in.
    svc_len: usize,
}

/// Resets the per-call state and arms the CPU budget.
fn arm(store: &mut Store<HostState>, limits: &CallLimits, call: CallFor, deadline: Instant) {
    let CallFor {
        entry,
        session,
        tenant_cfg,
        broker,
        svc_len,
    } = call;
    let data = store.data_mut();
    data.cpu = CpuMeter {
        used: 0,
        budget: limits.cpu_ticks,
        exhausted: false,
    };
    data.call = CallCtx {
        entry,
        session,
        tenant_cfg,
        broker,
        max_frame_bytes: limits.max_frame_bytes,
        svc_len,
        deadline: Some(deadline),
        ..CallCtx::default()
    };
    data.output
        .begin_call(data.call.session.as_ref().map(|s| s.sid));
    store.set_epoch_deadline(1);
}

/// Maps a failed guest call to the error the caller sees.
fn classify(state: &HostState, e: &wasmtime::Error) -> PluginError {
    if state.cpu.exhausted {
        return PluginError::Timeout;
    }
    if let Some(b) = e.downcast_ref::<BudgetTrap>() {
        return PluginError::from(*b);
    }
    if state.limiter.hit {
        return PluginError::Memory;
    }
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return PluginError::Trap(t.to_string());
    }
    PluginError::Trap(e.to_string())
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// The typed handle of an export found at load time, in the signature of the
/// component's world; one that does not match the WIT fails the instance.
fn typed<P, R, BP, BR>(
    instance: &wasmtime::component::Instance,
    store: &mut Store<HostState>,
    world: World,
    idx: &ComponentExportIndex,
    what: &str,
) -> Result<Typed<P, R, BP, BR>, PluginError>
where
    P: ComponentNamedList + Lower + Send + Sync + 'static,
    R: ComponentNamedList + Lift + Send + Sync + 'static,
    BP: ComponentNamedList + Lower + Send + Sync + 'static,
    BR: ComponentNamedList + Lift + Send + Sync + 'static,
{
    match world {
        World::Plugin => instance
            .get_typed_func(&mut *store, idx)
            .map(Entrypoint::Plain),
        World::ExtLanePlugin => instance
            .get_typed_func(&mut *store, idx)
            .map(Entrypoint::Borrowed),
    }
    .map_err(|e| PluginError::Trap(format!("{what} export: {e}")))
}

/// Calls entry point `$f` of either world with `$args`; a first-world
/// component gets the borrowed session handle in front of them.
macro_rules! call_entry {
    ($f:expr, $store:expr, ($($arg:expr),*)) => {
        match $f {
            Entrypoint::Plain(f) => f.call_async($store, ($($arg,)*)).await,
            Entrypoint::Borrowed(f) => {
                f.call_async($store, (SessionHandle::lend(), $($arg,)*)).await
            }
        }
    };
}

impl Instance {
    /// High-water mark of the instance's linear memory, in bytes.
    pub(crate) fn memory_peak(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Instantiates `version` for `scope` and runs `init` when exported.
    ///
    /// # Errors
    /// `Timeout`/`Trap` when start-up code or `init` fails, `Overloaded` when the
    /// instance pool is exhausted.
    pub(crate) async fn new(
        env: &HostCore,
        version: Arc<PluginVersion>,
        scope: KvScope,
        kv: Arc<dyn KvStore>,
        tenant_cfg: Option<Arc<TenantConfig>>,
        limits: &CallLimits,
    ) -> Result<Self, PluginError> {
        let max_memory = env.cfg.load().max_memory_bytes;
        let state = HostState::new(
            scope.clone(),
            kv,
            env.http.clone(),
            env.metrics.clone(),
            max_memory,
        );
        let mut store = Store::new(&env.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        // Yield to tokio at every tick so a guest holds a worker for at most
        // about one tick at a time; end the call once the budget is spent.
        store.epoch_deadline_callback(|mut ctx| {
            let cpu = &mut ctx.data_mut().cpu;
            cpu.used += 1;
            if cpu.used >= cpu.budget {
                cpu.exhausted = true;
                return Err(wasmtime::Error::new(BudgetTrap::Cpu));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        arm(
            &mut store,
            limits,
            CallFor {
                entry: None,
                session: None,
                tenant_cfg,
                broker: None,
                svc_len: 0,
            },
            Instant::now() + limits.wall,
        );
        let instance = match version.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                // Pool exhaustion is a capacity problem, not a plugin fault.
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    return Err(PluginError::Overloaded);
                }
                return Err(classify(store.data(), &e));
            }
        };
        let entries = &version.entries;
        let world = entries.world;
        let on_message = typed(
            &instance,
            &mut store,
            world,
            &entries.message,
            world.message_export(),
        )?;
        if let Some(idx) = &entries.init {
            let init = instance
                .get_typed_func::<(&str,), (Result<(), String>,)>(&mut store, idx)
                .map_err(|e| PluginError::Trap(format!("init export: {e}")))?;
            let config = serde_json::json!({ "tenant": &*scope.tenant, "plugin": &*scope.plugin })
                .to_string();
            match init.call_async(&mut store, (config.as_str(),)).await {
                Ok((Ok(()),)) => {}
                Ok((Err(m),)) => {
                    return Err(PluginError::Trap(format!(
                        "init refused: {}",
                        cut(m, MAX_REFUSAL_MESSAGE_BYTES)
                    )));
                }
                Err(e) => return Err(classify(store.data(), &e)),
            }
        }
        store.data().output.end_call();
        let on_disconnect = (entries.on_disconnect.as_ref())
            .map(|i| typed(&instance, &mut store, world, i, "on-disconnect"))
            .transpose()?;
        let on_join = (entries.on_join.as_ref())
            .map(|i| typed(&instance, &mut store, world, i, "on-join"))
            .transpose()?;
        let on_leave = (entries.on_leave.as_ref())
            .map(|i| typed(&instance, &mut store, world, i, "on-leave"))
            .transpose()?;
        Ok(Self {
            version,
            store,
            on_message,
            on_disconnect,
            on_join,
            on_leave,
            calls: 0,
            poisoned: false,
        })
    }

    /// Ends a guest call: counts it, flushes its output and turns the outcome
    /// into the effects to apply or the error the caller sees. Clears
    /// `poisoned` unless the call trapped or was cut.
    fn settle(
        &mut self,
        r: wasmtime::Result<Result<(), wit::Refusal>>,
    ) -> Result<Vec<Effect>, PluginError> {
        self.calls += 1;
        self.store.data().output.end_call();
        let ctx = std::mem::take(&mut self.store.data_mut().call);
        match r {
            Ok(guest) => {
                self.poisoned = false;
                if let Some(v) = ctx.violation {
                    return Err(v);
                }
                match guest {
                    Ok(()) => Ok(ctx.effects),
                    Err(refusal) => Err(PluginError::Refused {
                        code: cut(refusal.code, MAX_REFUSAL_CODE_BYTES),
                        message: cut(refusal.message, MAX_REFUSAL_MESSAGE_BYTES),
                    }),
                }
            }
            Err(e) => Err(classify(self.store.data(), &e)),
        }
    }

    /// Runs `call`'s entry point and returns the effects to apply. A hook the
    /// instance does not export answers as [`EntryKind::absent`] without
    /// entering the guest.
    ///
    /// # Errors
    /// The guest's refusal (`on-message`, `on-join`), a rule violation
    /// recorded by an import, or a trap/timeout/memory hit (which also marks
    /// the instance poisoned).
    ///
    /// # Cancel safety
    /// Dropping the future mid-call leaves the store unusable; the caller drops
    /// the instance (the wall-clock timeout does exactly that).
    pub(crate) async fn call(
        &mut self,
        call: PluginCall,
        limits: &CallLimits,
        deadline: Instant,
    ) -> Result<Vec<Effect>, PluginError> {
        let PluginCall {
            entry,
            session,
            plugin,
            svc,
            tenant_cfg,
            broker,
        } = call;
        let kind = entry.kind();
        let ctx = CallFor {
            entry: Some(kind),
            session: Some(session),
            tenant_cfg: Some(tenant_cfg),
            broker: Some(broker),
            svc_len: svc.len(),
        };
        let r = match entry {
            Entry::Message {
                ty,
                room,
                seq,
                data,
            } => {
                self.begin(ctx, limits, deadline);
                // Everything is moved, not copied: `data` was validated by the
                // Ext Lane decoder and goes to the guest as the same buffer.
                let msg = wit::Message {
                    svc,
                    type_: ty,
                    room,
                    seq,
                    data: String::from(Box::<str>::from(data)),
                };
                call_entry!(self.on_message, &mut self.store, (msg)).map(|(r,)| r)
            }
            Entry::Disconnect => {
                let Some(f) = self.on_disconnect else {
                    return kind.absent(&plugin);
                };
                self.begin(ctx, limits, deadline);
                call_entry!(f, &mut self.store, ()).map(|()| Ok(()))
            }
            Entry::Join { room } => {
                let Some(f) = self.on_join else {
                    return kind.absent(&plugin);
                };
                self.begin(ctx, limits, deadline);
                call_entry!(f, &mut self.store, (room)).map(|(r,)| r)
            }
            Entry::Leave { room } => {
                let Some(f) = self.on_leave else {
                    return kind.absent(&plugin);
                };
                self.begin(ctx, limits, deadline);
                call_entry!(f, &mut self.store, (room)).map(|()| Ok(()))
            }
        };
        self.settle(r)
    }

    /// Starts a guest call: marks the instance poisoned (cleared by
    /// [`Instance::settle`] unless the call traps or is cut) and arms the
    /// per-call state and budget.
    fn begin(&mut self, ctx: CallFor, limits: &CallLimits, deadline: Instant) {
        self.poisoned = true;
        arm(&mut self.store, limits, ctx, deadline);
    }
}
