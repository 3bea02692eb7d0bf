//! Ext Lane pipeline: size → rate limit → decode → allowlist → service → ack.
//!
//! Built-in `room` and `chat` run inline; any other `svc` goes to the plugin the
//! tenant routes it to, through [`crate::services::ExtService`]. A plugin's
//! effects are applied here, after its call returned, each wrapped in an envelope
//! carrying the plugin's own `svc`.

use std::sync::Arc;

use tungstenite::Utf8Bytes;

use super::{Flow, SessionCtx};
use crate::error::{ClientCode, CloseCode, Refusal, ToRefusal};
use crate::gateway::{Tenant, TenantRuntime};
use crate::protocol::ext::{self, Envelope, Outgoing, sys_ack};
use crate::realtime::broker::{Broker, Sid};
use crate::realtime::outbox::Qos;
use crate::services::{
    Effect, ExtCall, RoomHook, RoomHookKind, RoomPublication, SessionRooms, chat, publish_to_room,
    room,
};

/// Handles one text frame.
pub async fn handle(ctx: &mut SessionCtx, text: Utf8Bytes) -> Flow {
    ctx.counters.in_ext.inc();
    let Some(rt) = ctx.refresh() else {
        return Flow::Close(CloseCode::GoingAway);
    };
    if text.len() > rt.cfg.limits.max_frame_bytes {
        return Flow::Close(CloseCode::TooBig);
    }
    if !ctx.admit() {
        return ctx.refuse_ext(&Refusal::new(ClientCode::RateLimited), None);
    }
    let env = match ext::decode(text.as_str()) {
        Ok(env) => env,
        Err(e) => return ctx.refuse_ext(&Refusal::with_msg(e.code, e.reason), e.seq),
    };
    if !rt.policy.ext_allow.allows(&env.svc, &env.ty) {
        return ctx.refuse_ext(&Refusal::new(ClientCode::NotAllowed), env.seq);
    }
    let seq = env.seq;
    let outcome = match env.svc.as_str() {
        "room" => room_request(ctx, &rt, &env).await,
        "chat" => chat::handle(ctx, &rt, &env),
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
    let (kind, Some(name)) = (env.ty.as_str(), env.room.as_deref()) else {
        return room::handle(ctx, rt, env);
    };
    let kind = match kind {
        "join" => RoomHookKind::Join,
        "leave" => RoomHookKind::Leave,
        _ => return room::handle(ctx, rt, env),
    };
    if rt.cfg.routes.is_empty() {
        return room::handle(ctx, rt, env);
    }
    if kind == RoomHookKind::Join && ctx.entry.in_room(name) {
        return room::handle(ctx, rt, env);
    }
    // The session as the hooks see it: before the join, after the leave.
    let mut session = ctx.info();
    let mut done = Vec::new();
    match kind {
        RoomHookKind::Join => {
            session.rooms = SessionRooms::Fixed(ctx.entry.rooms());
            done = room_hooks(ctx, rt, kind, &session, name).await?;
            room::handle(ctx, rt, env)?;
        }
        RoomHookKind::Leave => {
            room::handle(ctx, rt, env)?;
            session.rooms = SessionRooms::Fixed(ctx.entry.rooms());
            if let Ok(effects) = room_hooks(ctx, rt, kind, &session, name).await {
                done = effects;
            }
        }
    }
    for (svc, effects) in done {
        // The join or leave stands; an oversized hook payload is only logged.
        if let Err(r) = apply_effects(ctx, rt, svc, effects) {
            tracing::debug!(svc, code = r.code.as_str(), "room hook effect refused");
        }
    }
    Ok(())
}

/// Runs one room hook of every routed plugin that exports it, in route order,
/// and returns each plugin's effects with the `svc` to wrap them in. A join
/// stops at the first refusal or failure; failures of `on-leave` are logged.
async fn room_hooks<'a>(
    ctx: &SessionCtx,
    rt: &'a TenantRuntime,
    kind: RoomHookKind,
    session: &crate::services::SessionInfo,
    room: &str,
) -> Result<Vec<(&'a str, Vec<Effect>)>, Refusal> {
    let mut out = Vec::new();
    for (plugin, svc) in super::routed_plugins(&rt.cfg) {
        let hook = RoomHook {
            kind,
            session: session.clone(),
            room: room.to_owned(),
            plugin: Arc::from(plugin),
            svc: svc.to_owned(),
            tenant_cfg: Arc::clone(&rt.cfg),
            broker: Arc::clone(&ctx.tenant.broker),
        };
        let Some(call) = ctx.gw.ext.room_hook(hook) else {
            continue;
        };
        match call.await {
            Ok(effects) => out.push((svc, effects)),
            Err(e) => {
                tracing::debug!(plugin, room, ?kind, reason = e.label(), error = %e, "room hook failed");
                if kind == RoomHookKind::Join {
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
    let svc = env.svc;
    let call = ExtCall {
        session: ctx.info(),
        plugin: Arc::clone(&plugin),
        svc: svc.clone(),
        ty: env.ty,
        room: env.room,
        seq: env.seq,
        data: env
            .data
            .unwrap_or_else(|| ext::raw(&serde_json::Value::Null)),
        tenant_cfg: Arc::clone(&rt.cfg),
        broker: Arc::clone(&ctx.tenant.broker),
    };
    // Calls, errors and durations are counted by the service (the plugin host).
    let effects = ctx.gw.ext.call(call).await.map_err(|e| {
        tracing::debug!(plugin = %plugin, error = %e, "plugin call failed");
        e.to_refusal()
    })?;
    apply_effects(ctx, rt, &svc, effects)
}

/// A service's payload in its envelope, within the tenant's `max_frame_bytes`.
fn wrap(
    rt: &TenantRuntime,
    svc: &str,
    ty: &str,
    data: &serde_json::value::RawValue,
) -> Result<tungstenite::Message, Refusal> {
    Outgoing::new(svc, ty)
        .data(Some(data))
        .encode_within(rt.cfg.limits.max_frame_bytes)
        .map_err(|_| Refusal::new(ClientCode::PayloadTooLarge))
}

/// Delivers a `Publish` or `SendToUser` effect, the two that need no live
/// session (a publication that excludes the sender leaves `sender` out), and
/// hands any other effect back to the caller.
///
/// # Errors
/// `PAYLOAD_TOO_LARGE` when the wrapped payload is over `max_frame_bytes`.
fn deliver(
    broker: &dyn Broker,
    rt: &TenantRuntime,
    svc: &str,
    effect: Effect,
    sender: Option<Sid>,
) -> Result<Option<Effect>, Refusal> {
    match effect {
        Effect::Publish {
            room,
            ty,
            data,
            qos,
            exclude_sender,
        } => {
            publish_to_room(
                broker,
                rt,
                RoomPublication {
                    room: &room,
                    svc,
                    ty: &ty,
                    data: &data,
                    qos,
                    exclude: sender.filter(|_| exclude_sender),
                },
            )
            .map_err(|_| Refusal::new(ClientCode::PayloadTooLarge))?;
            Ok(None)
        }
        Effect::SendToUser { user, ty, data } => {
            broker.send_to_user(&user, &wrap(rt, svc, &ty, &data)?, Qos::Reliable);
            Ok(None)
        }
        other => Ok(Some(other)),
    }
}

/// Applies a service's effects in order. A payload over `max_frame_bytes` is
/// refused (`PAYLOAD_TOO_LARGE`) and stops the remaining effects.
pub(crate) fn apply_effects(
    ctx: &SessionCtx,
    rt: &TenantRuntime,
    svc: &str,
    effects: Vec<Effect>,
) -> Result<(), Refusal> {
    let broker = ctx.tenant.broker.as_ref();
    for effect in effects {
        match deliver(broker, rt, svc, effect, Some(ctx.entry.sid))? {
            None | Some(Effect::Publish { .. } | Effect::SendToUser { .. }) => {}
            Some(Effect::Reply { ty, data }) => {
                ctx.entry
                    .outbox
                    .push(wrap(rt, svc, &ty, &data)?, Qos::Reliable);
            }
            Some(Effect::Join { room }) => room::join(ctx, rt, &room, None, None)?,
            Some(Effect::Leave { room }) => room::leave(ctx, rt, &room, None)?,
        }
    }
    Ok(())
}

/// Applies the effects of a closed session's `on-disconnect`: room publications
/// and sends to users, as [`apply_effects`] does for a live session. The other
/// effects cannot come from the plugin host (it refuses them); any that do are
/// dropped. A payload over `max_frame_bytes` stops the remaining effects.
pub(crate) fn apply_closed_effects(tenant: &Tenant, svc: &str, effects: Vec<Effect>) {
    let Some(rt) = tenant.runtime() else { return };
    for effect in effects {
        match deliver(tenant.broker.as_ref(), &rt, svc, effect, None) {
            Ok(None) => {}
            Ok(Some(_)) => tracing::debug!(svc, "effect on a closed session dropped"),
            Err(_) => {
                tracing::debug!(
                    svc,
                    "on-disconnect payload over max_frame_bytes; remaining effects dropped"
                );
                return;
            }
        }
    }
}
