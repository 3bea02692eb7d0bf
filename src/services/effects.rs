//! Applying effects: the one place where what an Ext Lane service asked for
//! becomes frames in outboxes.
//!
//! Owns: [`apply`] (every [`Effect`] of a built-in service, a plugin's
//! `on-message`, a room hook or a closed session's `on-disconnect`), room
//! publication ([`publish_to_room`], with history offsets when the tenant
//! keeps history) and the room membership changes with their notices
//! (`sys.joined` after any recovery replay, `sys.left`, `member_joined` /
//! `member_left`). Input: the effects and a [`Target`] naming the tenant's
//! broker and policy and the calling session, if it is still live. Output:
//! frames in outboxes through the broker. Must not: await, or touch a socket.

use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Message;

use super::{Effect, RoomPublication};
use crate::error::{ClientCode, Refusal, ToRefusal};
use crate::policy::{PublishLimits, TenantPolicy};
use crate::protocol::ext::{Outgoing, member_event, raw};
use crate::realtime::broker::{Broker, Delivery, SessionEntry};
use crate::realtime::history::Since;
use crate::realtime::outbox::{Qos, conflation_key};

/// Where effects land.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The tenant's sessions and rooms.
    pub broker: &'a dyn Broker,
    /// The tenant's policy in force (frame limit, room caps, history,
    /// presence events).
    pub policy: &'a TenantPolicy,
    /// The calling session; `None` once it has closed (`on-disconnect`), when
    /// only `Publish` and `SendToUser` can be applied.
    pub caller: Option<&'a SessionEntry>,
}

/// Applies `effects` in order, each payload wrapped in an envelope with `svc`.
///
/// # Errors
/// The first effect that cannot be applied stops the rest: a payload over
/// `max_frame_bytes` (`PAYLOAD_TOO_LARGE`), a join past a room cap
/// (`ROOM_FULL` / `ROOM_LIMIT`), a leave of a room the session is not in
/// (`NOT_IN_ROOM`). Effects that need a live caller are dropped (and logged)
/// when there is none.
pub(crate) fn apply(target: Target<'_>, svc: &str, effects: Vec<Effect>) -> Result<(), Refusal> {
    let limits = target.policy.publish;
    for effect in effects {
        match effect {
            Effect::Publish {
                room,
                ty,
                data,
                qos,
                key,
                exclude_sender,
            } => {
                let exclude = target.caller.filter(|_| exclude_sender).map(|c| c.sid);
                let p = RoomPublication {
                    room: &room,
                    svc,
                    ty: &ty,
                    data: &data,
                    qos,
                    key: key.as_deref(),
                    exclude,
                };
                publish_to_room(target.broker, limits, p)
                    .map_err(|_| Refusal::new(ClientCode::PayloadTooLarge))?;
            }
            Effect::SendToUser { user, ty, data } => {
                let msg = wrap(limits, svc, &ty, &data)?;
                target.broker.send_to_user(&user, &msg, Qos::Reliable);
            }
            Effect::Reply { ty, data } => {
                if let Some(caller) = caller(target, svc) {
                    caller
                        .outbox
                        .push(wrap(limits, svc, &ty, &data)?, Qos::Reliable);
                }
            }
            Effect::Sys {
                ty,
                room,
                seq,
                data,
            } => {
                if let Some(caller) = caller(target, svc) {
                    let msg = Outgoing::new("sys", ty)
                        .room(room.as_deref())
                        .seq(seq)
                        .data(Some(&data))
                        .encode();
                    caller.outbox.push(msg, Qos::Reliable);
                }
            }
            Effect::Join { room, seq, since } => {
                if let Some(caller) = caller(target, svc) {
                    join(target, caller, &room, seq, since.as_ref())?;
                }
            }
            Effect::Leave { room, seq } => {
                if let Some(caller) = caller(target, svc) {
                    leave(target, caller, &room, seq)?;
                }
            }
        }
    }
    Ok(())
}

/// The live caller, or a log line saying why the effect is dropped.
fn caller<'a>(target: Target<'a>, svc: &str) -> Option<&'a SessionEntry> {
    if target.caller.is_none() {
        tracing::debug!(svc, "effect for a closed session dropped");
    }
    target.caller
}

/// A service's payload in its envelope, within `max_frame_bytes`.
fn wrap(limits: PublishLimits, svc: &str, ty: &str, data: &RawValue) -> Result<Message, Refusal> {
    Outgoing::new(svc, ty)
        .data(Some(data))
        .encode_within(limits.max_frame_bytes)
        .map_err(|_| Refusal::new(ClientCode::PayloadTooLarge))
}

/// Publishes `{"v":1,"svc","type","room","data"}` to a room, encoding it once.
/// Reliable publications in a tenant with room history get an `offset` and the
/// room's `epoch` and are retained for recovery (README "History and
/// recovery").
///
/// # Errors
/// The encoded size when the frame would exceed `max_frame_bytes`.
pub(crate) fn publish_to_room(
    broker: &dyn Broker,
    limits: PublishLimits,
    p: RoomPublication<'_>,
) -> Result<Delivery, usize> {
    let base = Outgoing::new(p.svc, p.ty)
        .room(Some(p.room))
        .data(Some(p.data));
    match (p.qos, limits.history) {
        (Qos::Lossy, _) if let Some(key) = p.key => {
            // Latest wins per (svc, key) in every receiver's lossy queue.
            let msg = base.encode_within(limits.max_frame_bytes)?;
            let key = conflation_key(&[b"key", p.svc.as_bytes(), key.as_bytes()]);
            Ok(broker.publish_latest(p.room, &msg, key, p.exclude))
        }
        (Qos::Reliable, Some(history)) => {
            // Check the size with the widest offset and an epoch-sized string;
            // the recorded frame is never larger.
            let widest = base.epoch(Some("0000000000000000")).offset(Some(u64::MAX));
            widest.encode_within(limits.max_frame_bytes)?;
            Ok(
                broker.publish_recorded(p.room, history, p.exclude, &|offset, epoch| {
                    base.epoch(Some(epoch)).offset(Some(offset)).encode()
                }),
            )
        }
        _ => {
            let msg = base.encode_within(limits.max_frame_bytes)?;
            Ok(broker.publish(p.room, &msg, p.qos, p.exclude))
        }
    }
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

/// Joins `caller` to `room`: with room history and a `since` position the
/// retained publications after it come first, then `sys.joined` with
/// `recovered` (the broker queues both under the room's lock, so no live
/// publication slips between them); the other members hear `member_joined`
/// when the tenant has presence events on.
fn join(
    target: Target<'_>,
    caller: &SessionEntry,
    room: &str,
    seq: Option<u64>,
    since: Option<&Since>,
) -> Result<(), Refusal> {
    let policy = target.policy;
    let notice = |data: &JoinedData<'_>| {
        Outgoing::new("sys", "joined")
            .room(Some(room))
            .seq(seq)
            .data(Some(&raw(data)))
            .encode()
    };
    let joined = match policy.publish.history {
        Some(history) => target
            .broker
            .join_recovering(
                caller.sid,
                room,
                policy.room_limits,
                history,
                since,
                &|j, h| {
                    notice(&JoinedData {
                        room,
                        peer: j.peer,
                        members: j.members,
                        recovered: h.recovered,
                        epoch: Some(&h.epoch),
                        offset: Some(h.offset),
                    })
                },
            )
            .map_err(|e| e.to_refusal())?,
        None => {
            let j = target
                .broker
                .join(caller.sid, room, policy.room_limits)
                .map_err(|e| e.to_refusal())?;
            // Without history nothing can be recovered.
            caller.outbox.push(
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
    if joined.new && policy.presence_events {
        let msg = member_event("member_joined", room, &caller.user, joined.peer);
        target
            .broker
            .publish(room, &msg, Qos::Reliable, Some(caller.sid));
    }
    Ok(())
}

/// Removes `caller` from `room`, answers `sys.left` and tells the remaining
/// members.
fn leave(
    target: Target<'_>,
    caller: &SessionEntry,
    room: &str,
    seq: Option<u64>,
) -> Result<(), Refusal> {
    let peer = target
        .broker
        .leave(caller.sid, room)
        .map_err(|e| e.to_refusal())?;
    let data = raw(&serde_json::json!({ "room": room }));
    caller.outbox.push(
        Outgoing::new("sys", "left")
            .room(Some(room))
            .seq(seq)
            .data(Some(&data))
            .encode(),
        Qos::Reliable,
    );
    announce_left(target.broker, target.policy, room, &caller.user, peer);
    Ok(())
}

/// Tells the remaining members of `room` that `user` (as `peer`) left, when
/// the tenant has presence events on (a leave, or a closed session's rooms).
pub(crate) fn announce_left(
    broker: &dyn Broker,
    policy: &TenantPolicy,
    room: &str,
    user: &str,
    peer: u32,
) {
    if !policy.presence_events {
        return;
    }
    let msg = member_event("member_left", room, user, peer);
    broker.publish(room, &msg, Qos::Reliable, None);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::realtime::SessionId;
    use crate::realtime::broker::{LocalBroker, RoomLimits, SessionLimits};
    use crate::realtime::outbox::Outbox;
    use crate::services::{Caller, chat, room};

    fn policy(extra: &str) -> TenantPolicy {
        let yaml = format!(
            "version: 1\ntenants:\n  - id: t\n    auth: {{ mode: static, tickets: {{ k: u }} }}\n{extra}"
        );
        let cfg = crate::config::parse(&yaml).expect("valid config");
        TenantPolicy::compile(&cfg.tenants[0])
    }

    fn session(broker: &LocalBroker, n: u64, user: &str) -> Arc<SessionEntry> {
        let entry = Arc::new(SessionEntry::new(
            SessionId::new(n),
            Arc::from(user),
            Arc::new(Outbox::new(16, 16)),
        ));
        let limits = SessionLimits {
            max_sessions_total: 0,
            max_sessions_per_user: 4,
            kick_oldest: false,
        };
        broker
            .register(Arc::clone(&entry), limits)
            .expect("register");
        entry
    }

    /// The text frames queued for `entry` (without waiting).
    async fn drained(entry: &SessionEntry) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            entry.outbox.next_batch(&mut out, 64),
        )
        .await;
        out.iter()
            .filter_map(|m| m.to_text().ok())
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect()
    }

    fn envelope(text: &str) -> crate::protocol::ext::Envelope {
        crate::protocol::ext::decode(text).expect("envelope")
    }

    #[tokio::test]
    async fn room_and_chat_answer_with_effects_that_apply_like_a_plugins() {
        let broker = LocalBroker::new();
        let policy = policy("    rooms: { presence_events: true }\n");
        let (a, b) = (session(&broker, 1, "ann"), session(&broker, 2, "bob"));
        broker
            .join(b.sid, "r", RoomLimits::default())
            .expect("bob joins");
        let target = |caller| Target {
            broker: &broker,
            policy: &policy,
            caller: Some(caller),
        };

        // A chat to a room ann is not in is refused before any effect exists.
        let send = envelope(r#"{"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"hi"}}"#);
        let refused = chat::handle(Caller::new(&a), &send).expect_err("not in room");
        assert_eq!(refused.code, ClientCode::NotInRoom);

        let join = envelope(r#"{"v":1,"svc":"room","type":"join","room":"r","seq":3}"#);
        let req = room::parse(&join).expect("join request");
        let effects = room::handle(Caller::new(&a), &broker, req, join.seq).expect("effects");
        assert!(
            matches!(&effects[..], [Effect::Join { room, seq: Some(3), since: None }] if room == "r")
        );
        assert!(
            broker.presence("r") == ["bob"],
            "nothing happens before apply"
        );
        apply(target(&a), "room", effects).expect("join applies");
        let joined = drained(&a).await;
        assert_eq!(joined[0]["type"], "joined");
        assert_eq!(joined[0]["seq"], 3);
        assert_eq!(joined[0]["data"]["members"], 2);
        let heard = drained(&b).await;
        assert_eq!(heard[0]["type"], "member_joined");
        assert_eq!(heard[0]["data"]["user"], "ann");

        let effects = chat::handle(Caller::new(&a), &send).expect("chat effects");
        apply(target(&a), "chat", effects).expect("chat applies");
        for frames in [drained(&a).await, drained(&b).await] {
            assert_eq!(frames[0]["svc"], "chat");
            assert_eq!(frames[0]["data"]["from"], "ann");
            assert_eq!(frames[0]["data"]["msg"], "hi");
        }

        let presence = envelope(r#"{"v":1,"svc":"room","type":"presence","room":"r"}"#);
        let req = room::parse(&presence).expect("presence request");
        let effects = room::handle(Caller::new(&a), &broker, req, None).expect("presence");
        apply(target(&a), "room", effects).expect("presence applies");
        let frames = drained(&a).await;
        assert_eq!(frames[0]["svc"], "sys");
        assert_eq!(frames[0]["type"], "presence");
        assert_eq!(
            frames[0]["data"]["users"],
            serde_json::json!(["ann", "bob"])
        );

        let leave = vec![Effect::Leave {
            room: "r".into(),
            seq: None,
        }];
        apply(target(&a), "room", leave.clone()).expect("leave applies");
        assert_eq!(drained(&a).await[0]["type"], "left");
        assert_eq!(drained(&b).await[0]["type"], "member_left");
        let again = apply(target(&a), "room", leave).expect_err("not in the room any more");
        assert_eq!(again.code, ClientCode::NotInRoom);
    }

    #[tokio::test]
    async fn a_closed_session_gets_publications_through_and_nothing_else() {
        let broker = LocalBroker::new();
        let policy = policy("    limits: { max_frame_bytes: 200 }\n");
        let b = session(&broker, 2, "bob");
        broker
            .join(b.sid, "r", RoomLimits::default())
            .expect("bob joins");
        let closed = Target {
            broker: &broker,
            policy: &policy,
            caller: None,
        };
        let data = raw(&"x");
        let big = raw(&"y".repeat(300));
        let effects = vec![
            Effect::Reply {
                ty: "ignored".into(),
                data: data.clone(),
            },
            Effect::Publish {
                room: "r".into(),
                ty: "bye".into(),
                data: data.clone(),
                qos: Qos::Reliable,
                key: None,
                exclude_sender: true,
            },
            Effect::SendToUser {
                user: "bob".into(),
                ty: "dm".into(),
                data: big,
            },
            Effect::SendToUser {
                user: "bob".into(),
                ty: "never".into(),
                data,
            },
        ];
        let refused = apply(closed, "svc", effects).expect_err("oversized payload");
        assert_eq!(refused.code, ClientCode::PayloadTooLarge);
        let frames = drained(&b).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "bye");
        assert_eq!(frames[0]["svc"], "svc");
    }
}
