//! Built-in `room` service: `join`, `leave`, `presence` (README "Ext Lane").
//!
//! Reads the request and answers with effects: a join becomes
//! [`Effect::Join`] (applied as `sys.joined`, after any recovery replay, plus
//! `room.member_joined` to the others when the tenant has presence events on),
//! a leave [`Effect::Leave`] (`sys.left`, `room.member_left`), a presence
//! query an [`Effect::Sys`] `presence` reply. The most recently joined room is
//! the session's active room.

use serde::{Deserialize, Serialize};

use super::{Caller, Effect};
use crate::error::{ClientCode, Refusal};
use crate::protocol::ext::{Envelope, raw};
use crate::realtime::broker::{Broker, capped};
use crate::realtime::history::Since;

/// What a `room` request asks for, before anything is done.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request<'a> {
    /// `join`, with the client's last position for recovery.
    Join {
        /// The room.
        room: &'a str,
        /// `data.since`.
        since: Option<Since>,
    },
    /// `leave`.
    Leave {
        /// The room.
        room: &'a str,
    },
    /// `presence`.
    Presence {
        /// The room.
        room: &'a str,
    },
}

/// Reads a `room` envelope.
///
/// # Errors
/// `BAD_REQUEST` for a missing room, an unknown type or a malformed `since`.
pub(crate) fn parse(env: &Envelope) -> Result<Request<'_>, Refusal> {
    let room = env
        .room
        .as_deref()
        .ok_or_else(|| Refusal::with_msg(ClientCode::BadRequest, "room is required"))?;
    match env.ty.as_str() {
        "join" => Ok(Request::Join {
            room,
            since: parse_since(env)?,
        }),
        "leave" => Ok(Request::Leave { room }),
        "presence" => Ok(Request::Presence { room }),
        _ => Err(Refusal::with_msg(
            ClientCode::BadRequest,
            "unknown room type; use join, leave or presence",
        )),
    }
}

/// Answers a request with the effects that carry it out.
///
/// # Errors
/// `NOT_IN_ROOM` for the presence of a room the caller is not in.
pub(crate) fn handle(
    caller: Caller<'_>,
    broker: &dyn Broker,
    req: Request<'_>,
    seq: Option<u64>,
) -> Result<Vec<Effect>, Refusal> {
    Ok(vec![match req {
        Request::Join { room, since } => Effect::Join {
            room: room.to_owned(),
            seq,
            since,
        },
        Request::Leave { room } => Effect::Leave {
            room: room.to_owned(),
            seq,
        },
        Request::Presence { room } => presence(caller, broker, room, seq)?,
    }])
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

fn presence(
    caller: Caller<'_>,
    broker: &dyn Broker,
    room: &str,
    seq: Option<u64>,
) -> Result<Effect, Refusal> {
    if !caller.in_room(room) {
        return Err(Refusal::new(ClientCode::NotInRoom));
    }
    #[derive(Serialize)]
    struct Presence<'a> {
        room: &'a str,
        users: Vec<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    }
    let (users, truncated) = capped(broker.presence(room));
    Ok(Effect::Sys {
        ty: "presence",
        room: Some(room.to_owned()),
        seq,
        data: raw(&Presence {
            room,
            users,
            truncated,
        }),
    })
}
