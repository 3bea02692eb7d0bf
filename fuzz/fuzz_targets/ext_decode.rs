//! Ext Lane envelope decoder: any text must decode to a well-formed envelope or
//! a `BAD_REQUEST` / `UNSUPPORTED_VERSION` error, never panic, and never accept
//! names or nesting the gateway promises to refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsprism::error::ClientCode;
use wsprism::protocol::ext::{self, MAX_DATA_DEPTH, MAX_NAME_BYTES};

fn check_name(name: &str) {
    assert!(!name.is_empty());
    assert!(name.len() <= MAX_NAME_BYTES);
    assert!(!name.chars().any(char::is_control));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ext::decode(text) {
        Ok(env) => {
            check_name(&env.svc);
            check_name(&env.ty);
            if let Some(room) = &env.room {
                check_name(room);
            }
            if let Some(d) = &env.data {
                // `data` is valid JSON that services can parse again, within the
                // depth limit (serde_json's own limit is 128).
                assert!(MAX_DATA_DEPTH < 128);
                // Numbers beyond f64 (`1e400`) are valid JSON text that
                // serde_json's `Value` refuses; the gateway passes them through
                // and leaves the range to the consumer. Anything else must parse.
                match serde_json::from_str::<serde_json::Value>(d.get()) {
                    Ok(v) => assert!(!v.is_null(), "null data is normalised to None"),
                    Err(e) => assert!(
                        e.to_string().contains("number out of range"),
                        "accepted data is not valid JSON: {e}"
                    ),
                }
            }
        }
        Err(e) => {
            assert!(matches!(
                e.code,
                ClientCode::BadRequest | ClientCode::UnsupportedVersion
            ));
            assert!(!e.reason.is_empty());
        }
    }
});
