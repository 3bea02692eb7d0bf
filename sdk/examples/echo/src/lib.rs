//! `echo` (README "Writing a plugin"): `{"svc":"echo","type":T,"data":D}` answers the sender with
//! `{"v":1,"svc":"echo","type":T,"data":D}`. With `"type":"broadcast"` and a
//! `room` the sender has joined, every member of the room gets it instead.
//! With `"type":"position"` the other members get it latest-wins per sender
//! (`publish_latest`, keyed by the sender's user): one that falls behind
//! gets each player's newest position, not a backlog.

use wsprism_plugin::{Message, Plugin, Qos, Refusal, Session, export_plugin, realtime};

struct Echo;

impl Plugin for Echo {
    fn on_message(session: &Session, msg: Message) -> Result<(), Refusal> {
        if msg.type_ == "broadcast" || msg.type_ == "position" {
            let Some(room) = msg.room.as_deref() else {
                return Err(Refusal::new("NO_ROOM", "broadcast needs a room"));
            };
            if !session.in_room(room) {
                return Err(Refusal::new("NOT_IN_ROOM", "join the room before broadcasting"));
            }
            if msg.type_ == "position" {
                let data: serde_json::Value = msg.json()?;
                realtime::publish_latest(room, &session.user(), "position", &data, true)?;
            } else {
                realtime::publish_raw(room, &msg.type_, &msg.data, Qos::Reliable, false)?;
            }
        } else {
            realtime::reply_raw(&msg.type_, &msg.data)?;
        }
        Ok(())
    }
}

export_plugin!(Echo);

/// Native tests through the SDK's in-memory host (`cargo test -p echo`).
#[cfg(test)]
mod tests {
    use super::Echo;
    use wsprism_plugin::Qos;
    use wsprism_plugin::testing::{Effect, TestHost, message, room_message};

    #[test]
    fn replies_with_the_messages_own_type_and_data() {
        let mut host = TestHost::new().user("alice");
        let out = host.on_message::<Echo>(message("hello", r#"{"n":[1,2]}"#));
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(out.replies(), [("hello", r#"{"n":[1,2]}"#)]);
    }

    #[test]
    fn broadcast_publishes_to_a_joined_room() {
        let mut host = TestHost::new().in_room("lobby");
        let out = host.on_message::<Echo>(room_message("broadcast", "lobby", "\"hi\""));
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(
            out.effects,
            [Effect::Publish {
                room: "lobby".into(),
                ty: "broadcast".into(),
                data: "\"hi\"".into(),
                qos: Qos::Reliable,
                key: None,
                exclude_sender: false,
            }]
        );
    }

    #[test]
    fn positions_are_latest_wins_per_sender() {
        let mut host = TestHost::new().user("alice").in_room("arena");
        let out = host.on_message::<Echo>(room_message("position", "arena", r#"{"x":3}"#));
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(
            out.effects,
            [Effect::Publish {
                room: "arena".into(),
                ty: "position".into(),
                data: r#"{"x":3}"#.into(),
                qos: Qos::Lossy,
                key: Some("alice".into()),
                exclude_sender: true,
            }]
        );
    }

    #[test]
    fn broadcast_is_refused_outside_the_room_and_without_one() {
        let mut host = TestHost::new().in_room("lobby");
        let out = host.on_message::<Echo>(room_message("broadcast", "other", "1"));
        assert_eq!(out.refusal().map(|r| r.code.as_str()), Some("NOT_IN_ROOM"));
        let out = host.on_message::<Echo>(message("broadcast", "1"));
        assert_eq!(out.refusal().map(|r| r.code.as_str()), Some("NO_ROOM"));
        assert!(out.effects.is_empty());
    }
}
