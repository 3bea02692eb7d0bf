//! Built-in `room` service: `join`, `leave`, `presence` (SPEC §4).
//!
//! Replies go to the caller as `sys.joined` / `sys.left` / `sys.presence`; with
//! `rooms.presence_events` the other members get `room.member_joined` /
//! `room.member_left`. The most recently joined room is the session's active room.

use serde::{Deserialize, Serialize};

use crate::error::{ClientCode, Refusal, ToRefusal};
use crate::gateway::{Tenant, TenantRuntime};
use crate::lanes::SessionCtx;
use crate::protocol::ext::{Envelope, Outgoing, raw};
use crate::realtime::history::Since;
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
        "join" => join(ctx, rt, room, env.seq, parse_since(env)?.as_ref()),
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

/// `data.since` of a join: the client's last position in the room.
fn parse_since(env: &Envelope) -> Result<Option<Since>, Refusal> {
    #[derive(Deserialize)]
    struct JoinData {
        since: Option<Since>,
    }
    let Some(data) = env.data.as_deref() else {
        return Ok(None);
    };
    serde_json::from_str::<JoinData>(data.get())
        .map(|d| d.since)
        .map_err(|_| {
            Refusal::with_msg(
                ClientCode::BadRequest,
                "data.since must be {\"epoch\": string, \"offset\": integer}",
            )
        })
}

#[derive(Serialize)]
struct JoinedData<'a> {
    room: &'a str,
    peer: u32,
    members: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// Joins the calling session to `room` and answers `sys.joined`. With room
/// history on and a `since` position, the retained publications after it come
/// first, then `sys.joined` with `recovered` (SPEC §11).
///
/// # Errors
/// `ROOM_FULL` / `ROOM_LIMIT` from the broker.
pub fn join(
    ctx: &SessionCtx,
    rt: &TenantRuntime,
    room: &str,
    seq: Option<u64>,
    since: Option<&Since>,
) -> Result<(), Refusal> {
    let broker = &ctx.tenant.broker;
    let sid = ctx.entry.sid;
    let notice = |data: &JoinedData<'_>| {
        Outgoing::new("sys", "joined")
            .room(Some(room))
            .seq(seq)
            .data(Some(&raw(data)))
            .encode()
    };
    let joined = match rt.policy.history {
        Some(policy) => broker
            .join_recovering(sid, room, rt.policy.room_limits, policy, since, &|j, h| {
                notice(&JoinedData {
                    room,
                    peer: j.peer,
                    members: j.members,
                    recovered: h.recovered,
                    epoch: Some(&h.epoch),
                    offset: Some(h.offset),
                })
            })
            .map_err(|e| e.to_refusal())?,
        None => {
            let j = broker
                .join(sid, room, rt.policy.room_limits)
                .map_err(|e| e.to_refusal())?;
            // Without history nothing can be recovered.
            ctx.entry.outbox.push(
                notice(&JoinedData {
                    room,
                    peer: j.peer,
                    members: j.members,
                    recovered: since.map(|_| false),
                    epoch: None,
                    offset: None,
                }),
                Qos::Reliable,
            );
            j
        }
    };
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
