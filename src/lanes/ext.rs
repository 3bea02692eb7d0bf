//! Ext Lane pipeline: size → rate limit → decode → allowlist → service →
//! effects → ack.
//!
//! Built-in `room` and `chat` run inline; any other `svc` goes to the plugin the
//! tenant routes it to, through [`crate::services::ExtService`]. Every service
//! answers with effects, applied here by [`effects::apply`] after the service
//! returned, each payload wrapped in an envelope carrying the service's own
//! `svc`. A client's join and leave also ask the `on-join` / `on-leave` hooks of
//! the tenant's routed plugins.

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use super::{Flow, SessionCtx};
use crate::error::{ClientCode, CloseCode, Refusal, ToRefusal};
use crate::protocol::ext::{self, Envelope, sys_ack, sys_pong};
use crate::realtime::outbox::Qos;
use crate::services::effects::{self, Target};
use crate::services::room::{self, Request};
use crate::services::{
    Caller, Effect, Entry, PluginCall, SessionInfo, SessionRooms, chat, routed_plugins,
};
use crate::tenant::TenantRuntime;

/// Handles one text frame.
pub async fn handle(ctx: &mut SessionCtx, text: Utf8Bytes) -> Flow {
    ctx.counters.in_ext.inc();
    let Some(rt) = ctx.refresh() else {
        return Flow::Close(CloseCode::GoingAway);
    };
    if text.len() > rt.cfg.limits.max_frame_bytes {
        return Flow::Close(CloseCode::TooBig);
    }
    if !ctx.admit(text.len()) {
        return ctx.refuse_ext(&Refusal::new(ClientCode::RateLimited), None);
    }
    let env = match ext::decode(text.as_str()) {
        Ok(env) => env,
        Err(e) => return ctx.refuse_ext(&Refusal::with_msg(e.code, e.reason), e.seq),
    };
    // The application-level liveness probe (browsers cannot send WebSocket
    // pings): always allowed, rate limited like any message, answered at once.
    if env.svc == "sys" && env.ty == "ping" {
        ctx.entry.outbox.push(sys_pong(env.seq), Qos::Reliable);
        return Flow::Continue;
    }
    if !rt.policy.ext_allow.allows(&env.svc, &env.ty) {
        return ctx.refuse_ext(&Refusal::new(ClientCode::NotAllowed), env.seq);
    }
    let seq = env.seq;
    let outcome = match env.svc.as_str() {
        "room" => room_request(ctx, &rt, &env).await,
        "chat" => chat::handle(Caller::new(&ctx.entry), &env)
            .and_then(|effects| effects::apply(target(ctx, &rt), "chat", effects)),
        _ => call_plugin(ctx, &rt, env).await,
    };
    match outcome {
        Ok(()) => {
            if let Some(seq) = seq {
                ctx.entry.outbox.push(sys_ack(seq), Qos::Reliable);
            }
            Flow::Continue
        }
        Err(refusal) => ctx.refuse_ext(&refusal, seq),
    }
}

/// Where this session's effects land.
fn target<'a>(ctx: &'a SessionCtx, rt: &'a TenantRuntime) -> Target<'a> {
    Target {
        broker: ctx.tenant.broker.as_ref(),
        policy: &rt.policy,
        caller: Some(&ctx.entry),
    }
}

/// The built-in `room` service, with the `on-join` / `on-leave` hooks of the
/// tenant's routed plugins around a client's join and leave: every hook must
/// agree to a join before it happens (the first refusal or failure refuses
/// it); leaves are told afterwards. Hook effects are applied once the join or
/// leave is done. A join of a room the session is already in runs no hooks.
async fn room_request(
    ctx: &SessionCtx,
    rt: &Arc<TenantRuntime>,
    env: &Envelope,
) -> Result<(), Refusal> {
    let req = room::parse(env)?;
    let broker = ctx.tenant.broker.as_ref();
    let effects = room::handle(Caller::new(&ctx.entry), broker, req.clone(), env.seq)?;
    let hook_room = match req {
        _ if rt.cfg.routes.is_empty() => None,
        Request::Join { room, .. } if !ctx.entry.in_room(room) => Some(room),
        Request::Leave { room } => Some(room),
        Request::Join { .. } | Request::Presence { .. } => None,
    };
    ready_for_joins(ctx, rt, &effects).await;
    let Some(name) = hook_room else {
        return effects::apply(target(ctx, rt), "room", effects);
    };
    let joining = matches!(req, Request::Join { .. });
    // The session as the hooks see it: before the join, after the leave.
    let mut session = ctx.info();
    let done = if joining {
        session.rooms = SessionRooms::Fixed(ctx.entry.rooms());
        let done = match room_hooks(ctx, rt, &session, name, true).await {
            Ok(done) => done,
            Err(refusal) => {
                broker.cancel_join(ctx.entry.sid, name);
                return Err(refusal);
            }
        };
        effects::apply(target(ctx, rt), "room", effects)?;
        done
    } else {
        effects::apply(target(ctx, rt), "room", effects)?;
        session.rooms = SessionRooms::Fixed(ctx.entry.rooms());
        room_hooks(ctx, rt, &session, name, false)
            .await
            .unwrap_or_default()
    };
    for (svc, effects) in done {
        ready_for_joins(ctx, rt, &effects).await;
        // The join or leave stands; an oversized hook payload is only logged.
        if let Err(r) = effects::apply(target(ctx, rt), svc, effects) {
            tracing::debug!(svc, code = r.code.as_str(), "room hook effect refused");
        }
    }
    Ok(())
}

/// Runs `on-join` (`joining`) or `on-leave` of every routed plugin, in route
/// order, and returns each plugin's effects with the `svc` to wrap them in. A
/// join stops at the first refusal or failure; failures of `on-leave` are
/// logged.
async fn room_hooks<'a>(
    ctx: &SessionCtx,
    rt: &'a TenantRuntime,
    session: &SessionInfo,
    room: &str,
    joining: bool,
) -> Result<Vec<(&'a str, Vec<Effect>)>, Refusal> {
    let mut out = Vec::new();
    for (plugin, svc) in routed_plugins(&rt.cfg) {
        let entry = if joining {
            Entry::Join {
                room: room.to_owned(),
            }
        } else {
            Entry::Leave {
                room: room.to_owned(),
            }
        };
        let call = PluginCall {
            entry,
            session: session.clone(),
            plugin: Arc::from(plugin),
            svc: svc.to_owned(),
            tenant_cfg: Arc::clone(&rt.cfg),
            broker: Arc::clone(&ctx.tenant.broker),
        };
        match ctx.pipeline.ext.call(call).await {
            Ok(effects) => out.push((svc, effects)),
            Err(e) => {
                tracing::debug!(plugin, room, joining, reason = e.label(), error = %e, "room hook failed");
                if joining {
                    return Err(e.to_refusal());
                }
            }
        }
    }
    Ok(out)
}

async fn call_plugin(
    ctx: &SessionCtx,
    rt: &Arc<TenantRuntime>,
    env: Envelope,
) -> Result<(), Refusal> {
    let Some(plugin) = rt.policy.route(&env.svc).cloned() else {
        return Err(Refusal::new(ClientCode::UnknownService));
    };
    let call = PluginCall {
        entry: Entry::Message {
            ty: env.ty,
            room: env.room,
            seq: env.seq,
            data: env
                .data
                .unwrap_or_else(|| ext::raw(&serde_json::Value::Null)),
        },
        session: ctx.info(),
        plugin: Arc::clone(&plugin),
        svc: env.svc,
        tenant_cfg: Arc::clone(&rt.cfg),
        broker: Arc::clone(&ctx.tenant.broker),
    };
    let svc = call.svc.clone();
    // Calls, errors and durations are counted by the service (the plugin host).
    let effects = ctx.pipeline.ext.call(call).await.map_err(|e| {
        tracing::debug!(plugin = %plugin, error = %e, "plugin call failed");
        e.to_refusal()
    })?;
    ready_for_joins(ctx, rt, &effects).await;
    effects::apply(target(ctx, rt), &svc, effects)
}

/// Waits until the broker is ready for every join of this session among
/// `effects` (in cluster mode the node first subscribes the room, learns its
/// members on other nodes and takes a seat against the cluster-wide room
/// caps, README "Cluster"); no wait in local mode.
async fn ready_for_joins(ctx: &SessionCtx, rt: &TenantRuntime, effects: &[Effect]) {
    let broker = ctx.tenant.broker.as_ref();
    for e in effects {
        if let Effect::Join { room, .. } = e
            && let Some(ready) = broker.prepare_join(ctx.entry.sid, room, rt.policy.room_limits)
        {
            ready.await;
        }
    }
}
