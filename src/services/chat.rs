//! Built-in `chat` service: `send` `{"msg"}` into a joined room; every member
//! (sender included) gets `chat.msg` `{"from","msg"}` with reliable delivery.

use serde::{Deserialize, Serialize};

use crate::error::{ClientCode, Refusal};
use crate::gateway::TenantRuntime;
use crate::lanes::SessionCtx;
use crate::protocol::ext::{Envelope, raw};
use crate::realtime::outbox::Qos;

/// Handles a `chat` envelope.
///
/// # Errors
/// `BAD_REQUEST` for a missing room or `msg`, `NOT_IN_ROOM` for a room the sender
/// has not joined.
pub fn handle(ctx: &SessionCtx, rt: &TenantRuntime, env: &Envelope) -> Result<(), Refusal> {
    if env.ty != "send" {
        return Err(Refusal::with_msg(
            ClientCode::BadRequest,
            "unknown chat type; use send",
        ));
    }
    let room = env
        .room
        .as_deref()
        .ok_or_else(|| Refusal::with_msg(ClientCode::BadRequest, "room is required"))?;
    #[derive(Deserialize)]
    struct Send<'a> {
        #[serde(borrow)]
        msg: std::borrow::Cow<'a, str>,
    }
    let send: Send<'_> = env
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .ok_or_else(|| Refusal::with_msg(ClientCode::BadRequest, "data.msg must be a string"))?;
    if !ctx.entry.in_room(room) {
        return Err(Refusal::new(ClientCode::NotInRoom));
    }
    #[derive(Serialize)]
    struct Msg<'a> {
        from: &'a str,
        msg: &'a str,
    }
    let data = raw(&Msg {
        from: &ctx.entry.user,
        msg: &send.msg,
    });
    super::publish_to_room(
        ctx.tenant.broker.as_ref(),
        rt,
        super::RoomPublication {
            room,
            svc: "chat",
            ty: "msg",
            data: &data,
            qos: Qos::Reliable,
            exclude: None,
        },
    )
    .map_err(|_| Refusal::new(ClientCode::PayloadTooLarge))?;
    Ok(())
}
