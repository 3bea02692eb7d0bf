//! Built-in `chat` service: `send` `{"msg"}` into a joined room; every member
//! (sender included) gets `chat.msg` `{"from","msg"}` with reliable delivery.
//! Answers with one [`Effect::Publish`].

use serde::{Deserialize, Serialize};

use super::{Caller, Effect};
use crate::error::{ClientCode, Refusal};
use crate::protocol::ext::{Envelope, raw};
use crate::realtime::outbox::Qos;

/// Handles a `chat` envelope.
///
/// # Errors
/// `BAD_REQUEST` for a missing room or `msg`, `NOT_IN_ROOM` for a room the sender
/// has not joined.
pub(crate) fn handle(caller: Caller<'_>, env: &Envelope) -> Result<Vec<Effect>, Refusal> {
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
    if !caller.in_room(room) {
        return Err(Refusal::new(ClientCode::NotInRoom));
    }
    #[derive(Serialize)]
    struct Msg<'a> {
        from: &'a str,
        msg: &'a str,
    }
    Ok(vec![Effect::Publish {
        room: room.to_owned(),
        ty: "msg".to_owned(),
        data: raw(&Msg {
            from: caller.user(),
            msg: &send.msg,
        }),
        qos: Qos::Reliable,
        key: None,
        exclude_sender: false,
    }])
}
