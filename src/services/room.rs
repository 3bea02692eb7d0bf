//! Built-in `room` service: `join`, `leave`, `presence` (SPEC §4).
//!
//! Replies go to the caller as `sys.joined` / `sys.left` / `sys.presence`; with
//! `rooms.presence_events` the other members get `room.member_joined` /
//! `room.member_left`. The most recently joined room is the session's active room.

use serde::Serialize;

use crate::error::{ClientCode, Refusal, ToRefusal};
use crate::gateway::{Tenant, TenantRuntime};
use crate::lanes::SessionCtx;
use crate::protocol::ext::{Envelope, Outgoing, raw};
use crate::realtime::outbox::Qos;

/// Handles a `room` envelope.
///
/// # Errors
/// The refusal to report to the client.
pub fn handle(ctx: &SessionCtx, rt: &TenantRuntime, env: &Envelope) -> Result<(), Refusal> {
    let room = env
        .room
        .as_deref()
        .ok_or_else(|| Refusal::with_msg(ClientCode::BadRequest, "room is required"))?;
    match env.ty.as_str() {
        "join" => join(ctx, rt, room, env.seq),
        "leave" => leave(ctx, rt, room, env.seq),
        "presence" => presence(ctx, room, env.seq),
        _ => Err(Refusal::with_msg(
            ClientCode::BadRequest,
            "unknown room type; use join, leave or presence",
        )),
    }
}

#[derive(Serialize)]
struct MemberEvent<'a> {
    user: &'a str,
    peer: u32,
}

/// Joins the calling session to `room` and answers `sys.joined`.
///
/// # Errors
/// `ROOM_FULL` / `ROOM_LIMIT` from the broker.
pub fn join(
    ctx: &SessionCtx,
    rt: &TenantRuntime,
    room: &str,
    seq: Option<u64>,
) -> Result<(), Refusal> {
    let joined = ctx
        .tenant
        .broker
        .join(ctx.entry.sid, room, rt.policy.room_limits)
        .map_err(|e| e.to_refusal())?;
    #[derive(Serialize)]
    struct Joined<'a> {
        room: &'a str,
        peer: u32,
        members: usize,
    }
    let data = raw(&Joined {
        room,
        peer: joined.peer,
        members: joined.members,
    });
    ctx.entry.outbox.push(
        Outgoing::new("sys", "joined")
            .room(Some(room))
            .seq(seq)
            .data(Some(&data))
            .encode(),
        Qos::Reliable,
    );
    if joined.new && rt.cfg.rooms.presence_events {
        let data = raw(&MemberEvent {
            user: &ctx.entry.user,
            peer: joined.peer,
        });
        let msg = Outgoing::new("room", "member_joined")
            .room(Some(room))
            .data(Some(&data))
            .encode();
        ctx.tenant
            .broker
            .publish(room, &msg, Qos::Reliable, Some(ctx.entry.sid));
    }
    Ok(())
}

/// Removes the calling session from `room` and answers `sys.left`.
///
/// # Errors
/// `NOT_IN_ROOM` when the session is not a member.
pub fn leave(
    ctx: &SessionCtx,
    rt: &TenantRuntime,
    room: &str,
    seq: Option<u64>,
) -> Result<(), Refusal> {
    let peer = ctx
        .tenant
        .broker
        .leave(ctx.entry.sid, room)
        .map_err(|e| e.to_refusal())?;
    let data = raw(&serde_json::json!({ "room": room }));
    ctx.entry.outbox.push(
        Outgoing::new("sys", "left")
            .room(Some(room))
            .seq(seq)
            .data(Some(&data))
            .encode(),
        Qos::Reliable,
    );
    announce_left(&ctx.tenant, rt, room, &ctx.entry.user, peer);
    Ok(())
}

/// Tells the remaining members that `user` (as `peer`) left, when the tenant has
/// presence events on.
pub fn announce_left(tenant: &Tenant, rt: &TenantRuntime, room: &str, user: &str, peer: u32) {
    if !rt.cfg.rooms.presence_events {
        return;
    }
    let data = raw(&MemberEvent { user, peer });
    let msg = Outgoing::new("room", "member_left")
        .room(Some(room))
        .data(Some(&data))
        .encode();
    tenant.broker.publish(room, &msg, Qos::Reliable, None);
}

fn presence(ctx: &SessionCtx, room: &str, seq: Option<u64>) -> Result<(), Refusal> {
    if !ctx.entry.in_room(room) {
        return Err(Refusal::new(ClientCode::NotInRoom));
    }
    #[derive(Serialize)]
    struct Presence<'a> {
        room: &'a str,
        users: Vec<String>,
    }
    let data = raw(&Presence {
        room,
        users: ctx.tenant.broker.presence(room),
    });
    ctx.entry.outbox.push(
        Outgoing::new("sys", "presence")
            .room(Some(room))
            .seq(seq)
            .data(Some(&data))
            .encode(),
        Qos::Reliable,
    );
    Ok(())
}
