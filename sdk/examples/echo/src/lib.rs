//! `echo` (README "Writing a plugin"): `{"svc":"echo","type":T,"data":D}` answers the sender with
//! `{"v":1,"svc":"echo","type":T,"data":D}`. With `"type":"broadcast"` and a
//! `room` the sender has joined, every member of the room gets it instead.

use wsprism_plugin::{Message, Plugin, Qos, Refusal, Session, export_plugin, realtime};

struct Echo;

impl Plugin for Echo {
    fn on_message(session: &Session, msg: Message) -> Result<(), Refusal> {
        if msg.type_ == "broadcast" {
            let Some(room) = msg.room.as_deref() else {
                return Err(Refusal::new("NO_ROOM", "broadcast needs a room"));
            };
            if !session.in_room(room) {
                return Err(Refusal::new("NOT_IN_ROOM", "join the room before broadcasting"));
            }
            realtime::publish_raw(room, &msg.type_, &msg.data, Qos::Reliable, false)?;
        } else {
            realtime::reply_raw(&msg.type_, &msg.data)?;
        }
        Ok(())
    }
}

export_plugin!(Echo);
