//! Hot Lane pipeline: size → rate limit → decode → allowlist → native service.
//!
//! No JSON, no WASM, no per-recipient allocation: a relay forwards the received
//! bytes (or one stamped copy) to every member of the sender's active room.

use bytes::Bytes;
use tungstenite::Message;

use super::{Flow, SessionCtx};
use crate::config::HotServiceKind;
use crate::error::{ClientCode, CloseCode};
use crate::protocol::hot;
use crate::realtime::outbox::{Qos, conflation_key};

/// Handles one binary frame.
pub fn handle(ctx: &mut SessionCtx, data: Bytes) -> Flow {
    ctx.counters.in_hot.inc();
    let Some(rt) = ctx.refresh() else {
        return Flow::Close(CloseCode::GoingAway);
    };
    let mode = rt.cfg.policy.hot_error_mode;
    if data.len() > rt.cfg.limits.max_frame_bytes {
        return Flow::Close(CloseCode::TooBig);
    }
    if !ctx.admit(data.len()) {
        return ctx.refuse_hot(ClientCode::RateLimited, mode);
    }
    let Ok(frame) = hot::decode(data) else {
        return ctx.refuse_hot(ClientCode::BadRequest, mode);
    };
    // The stamped flag is the gateway's word that a peer number follows; a
    // client setting it could forge another member's peer on relays that
    // forward bytes as sent.
    if frame.flags & hot::FLAG_STAMPED != 0 {
        return ctx.refuse_hot(ClientCode::BadRequest, mode);
    }
    if !rt.policy.hot_allow.allows(frame.svc_id, frame.opcode) {
        return ctx.refuse_hot(ClientCode::NotAllowed, mode);
    }
    let Some(service) = rt.policy.hot_service(frame.svc_id) else {
        return ctx.refuse_hot(ClientCode::UnknownService, mode);
    };
    let active = ctx.entry.active_room();
    if active.is_none() && rt.cfg.policy.hot_requires_active_room {
        return ctx.refuse_hot(ClientCode::NotInRoom, mode);
    }
    match service.kind {
        HotServiceKind::Echo => {
            ctx.entry
                .outbox
                .push(Message::Binary(frame.frame), Qos::Lossy);
        }
        HotServiceKind::Relay => {
            let Some((room, peer)) = active else {
                return ctx.refuse_hot(ClientCode::NotInRoom, mode);
            };
            let msg = if service.stamp_sender {
                Message::Binary(hot::stamp(&frame, peer))
            } else {
                Message::Binary(frame.frame)
            };
            let exclude = (!service.include_sender).then_some(ctx.entry.sid);
            if service.conflate {
                // Latest wins per sender, svc and opcode.
                let key = conflation_key(&[
                    b"relay",
                    &ctx.entry.sid.get().to_le_bytes(),
                    &[frame.svc_id, frame.opcode],
                ]);
                ctx.tenant.broker.publish_latest(&room, &msg, key, exclude);
            } else {
                ctx.tenant.broker.publish(&room, &msg, Qos::Lossy, exclude);
            }
        }
    }
    Flow::Continue
}
