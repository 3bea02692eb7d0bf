//! `{{name}}`: a wsPrism plugin. It echoes: a client's
//! `{"svc":..,"type":T,"data":D}` comes back to that client as
//! `{"v":1,"svc":..,"type":T,"data":D}`.
//!
//! Edit `on_message`; the SDK (`sdk/rust`) documents what a plugin can call:
//! `realtime` (reply, publish, send to a user, join, leave, members), `kv`,
//! `backend` and `log`. The WIT in `wit/` is the reference.

use wsprism_plugin::{Message, Plugin, Refusal, Session, export_plugin, realtime};

struct App;

impl Plugin for App {
    fn on_message(_session: &Session, msg: Message) -> Result<(), Refusal> {
        // `data` is JSON text; `msg.json::<T>()` parses it.
        realtime::reply_raw(&msg.type_, &msg.data)?;
        Ok(())
    }
}

export_plugin!(App);

/// `cargo test` runs these natively: the SDK's test host stands in for the
/// gateway (kv, captured effects, a fake session).
#[cfg(test)]
mod tests {
    use super::App;
    use wsprism_plugin::testing::{TestHost, message};

    #[test]
    fn echoes_type_and_data_to_the_sender() {
        let mut host = TestHost::new().user("alice");
        let out = host.on_message::<App>(message("hello", r#"{"n":1}"#));
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(out.replies(), [("hello", r#"{"n":1}"#)]);
    }
}
