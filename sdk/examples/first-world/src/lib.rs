//! Test fixture: world `ext-lane-plugin-lifecycle` (see Cargo.toml). Every
//! entry point reports what its borrowed session handle answers.
//!
//! - `on-message`: replies `whoami` with `{"tenant","user","sid","rooms","type"}`.
//! - `on-join`: refuses rooms starting `vip-` (`VIP_ONLY`), else replies
//!   `welcome` with the session as above (`rooms` = before the join).
//! - `on-leave`: publishes `bye` with the session to the room left.
//! - `on-disconnect`: publishes `left` with the session to room `lobby`.
//! - `init`: counts inits in kv key `inits`.

wit_bindgen::generate!({ path: "../../../wit", world: "ext-lane-plugin-lifecycle" });

use exports::wsprism::plugin::lifecycle;
use wsprism::plugin::types::Qos;
use wsprism::plugin::{kv, realtime};

struct FirstWorld;

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"tenant":..,"user":..,"sid":..,"rooms":[..],"type":..}` from the handle.
fn describe(session: &Session, ty: &str) -> String {
    let rooms: Vec<String> = session.rooms().iter().map(|r| quoted(r)).collect();
    format!(
        r#"{{"tenant":{},"user":{},"sid":{},"rooms":[{}],"type":{}}}"#,
        quoted(&session.tenant()),
        quoted(&session.user()),
        session.sid(),
        rooms.join(","),
        quoted(ty)
    )
}

fn host(e: wsprism::plugin::types::HostError) -> Refusal {
    Refusal {
        code: "HOST_ERROR".into(),
        message: format!("{e:?}"),
    }
}

impl Guest for FirstWorld {
    fn on_message(session: &Session, msg: Message) -> Result<(), Refusal> {
        realtime::reply("whoami", &describe(session, &msg.type_)).map_err(host)
    }
}

impl lifecycle::Guest for FirstWorld {
    fn init(_config: String) -> Result<(), String> {
        kv::incr("inits", 1).map(drop).map_err(|e| format!("{e:?}"))
    }

    fn on_disconnect(session: &Session) {
        let _ = realtime::publish("lobby", "left", &describe(session, "disconnect"), Qos::Reliable, false);
    }

    fn on_join(session: &Session, room: String) -> Result<(), Refusal> {
        if room.starts_with("vip-") {
            return Err(Refusal {
                code: "VIP_ONLY".into(),
                message: "members only".into(),
            });
        }
        realtime::reply("welcome", &describe(session, "join")).map_err(host)
    }

    fn on_leave(session: &Session, room: String) {
        let _ = realtime::publish(&room, "bye", &describe(session, "leave"), Qos::Reliable, false);
    }
}

export!(FirstWorld);
