//! Test fixture: built against the wrong WIT (see Cargo.toml).

wit_bindgen::generate!({ path: "wit", world: "ext-lane-plugin" });

struct Wrong;

impl Guest for Wrong {
    fn on_message(msg: Message) -> u32 {
        wsprism::plugin::realtime::reply(msg.svc.len() as u32);
        1
    }
}

export!(Wrong);
