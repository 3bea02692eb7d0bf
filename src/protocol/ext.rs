//! Ext Lane JSON envelopes (README "Ext Lane").
//!
//! `decode` turns one text frame into an [`Envelope`] or a [`DecodeError`] that
//! still carries the client's `seq` when it could be read, so refusals echo it.
//! `Outgoing` encodes gateway → client envelopes once into shareable bytes.

use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;
use tungstenite::{Message, Utf8Bytes};

use crate::error::ClientCode;

/// A decoded client envelope. `data` stays raw JSON text: services parse only what
/// they need and plugins receive it as text.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Target service.
    pub svc: String,
    /// Message type within the service.
    pub ty: String,
    /// Target room, if any.
    pub room: Option<String>,
    /// Client correlation number, echoed in ack/error.
    pub seq: Option<u64>,
    /// Raw JSON payload.
    pub data: Option<Box<RawValue>>,
}

/// Why a text frame is not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// `BAD_REQUEST` or `UNSUPPORTED_VERSION`.
    pub code: ClientCode,
    /// Static reason (no payload echo, no allocation).
    pub reason: &'static str,
    /// The client's `seq`, when it was a valid u64.
    pub seq: Option<u64>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    v: Option<&'a RawValue>,
    #[serde(borrow)]
    svc: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    ty: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<&'a RawValue>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Longest `svc`, `type` or `room` accepted.
pub const MAX_NAME_BYTES: usize = 128;

/// Whether `s` is a valid `svc`, `type` or `room`: 1 to [`MAX_NAME_BYTES`]
/// bytes, no control characters. The decoder and the plugin host imports
/// apply the same rule.
///
/// # Errors
/// Why the name is refused.
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        Err("empty name")
    } else if s.len() > MAX_NAME_BYTES {
        Err("name too long")
    } else if s.chars().any(char::is_control) {
        Err("control character in name")
    } else {
        Ok(())
    }
}

/// [`check_name`] for the names of one message: `svc`, `type` and, when
/// given, `room` (the server API and `wsprism plugin call` take them as
/// separate fields).
///
/// # Errors
/// The first field refused, and why.
pub fn check_names(
    svc: &str,
    ty: &str,
    room: Option<&str>,
) -> Result<(), (&'static str, &'static str)> {
    check_name(svc).map_err(|why| ("svc", why))?;
    check_name(ty).map_err(|why| ("type", why))?;
    room.map_or(Ok(()), |r| check_name(r).map_err(|why| ("room", why)))
}

fn name(raw: Option<&RawValue>, required: bool) -> Result<Option<String>, &'static str> {
    match raw {
        None if required => Err("missing required string field"),
        None => Ok(None),
        Some(r) if r.get() == "null" && !required => Ok(None),
        Some(r) => match serde_json::from_str::<String>(r.get()) {
            Ok(s) => check_name(&s).map(|()| Some(s)),
            Err(_) => Err("svc, type and room must be strings"),
        },
    }
}

/// Deepest `data` nesting accepted: services and plugins parse `data` again, and
/// no realtime payload needs more.
pub const MAX_DATA_DEPTH: usize = 64;

/// The code unit of the `\uXXXX` escape whose hex digits start at `at`.
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// Scans syntactically valid JSON text (as `RawValue` accepted it): returns its
/// maximum bracket depth (strings skipped), or an error for a `\u` escape that is
/// a lone UTF-16 surrogate. `RawValue` does not check surrogate pairs, but every
/// strict JSON parser downstream (services, plugins, clients) refuses them.
fn scan_data(json: &str) -> Result<usize, &'static str> {
    const HIGH: std::ops::Range<u16> = 0xD800..0xDC00;
    const LOW: std::ops::Range<u16> = 0xDC00..0xE000;
    let b = json.as_bytes();
    let (mut depth, mut max, mut in_str, mut i) = (0usize, 0usize, false, 0usize);
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' if b.get(i + 1) == Some(&b'u') => {
                    let unit = hex4(b, i + 2).ok_or("invalid escape in data")?;
                    i += 6;
                    if HIGH.contains(&unit) {
                        let pair = b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u');
                        match pair.then(|| hex4(b, i + 2)).flatten() {
                            Some(low) if LOW.contains(&low) => i += 6,
                            _ => return Err("lone surrogate escape in data"),
                        }
                    } else if LOW.contains(&unit) {
                        return Err("lone surrogate escape in data");
                    }
                    continue;
                }
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(max)
}

/// Why a text frame did not parse as an envelope, in words a client developer
/// can act on (the code is `BAD_REQUEST` either way).
fn parse_reason(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => "invalid JSON",
        // serde's wording for a key given twice ("duplicate field `svc`");
        // only reached on this error path.
        Category::Data if e.to_string().starts_with("duplicate field") => {
            "duplicate key in the envelope"
        }
        Category::Data => "not a JSON envelope object",
    }
}

/// Decodes one Ext Lane text frame.
///
/// # Errors
/// `BAD_REQUEST` for anything that is not an envelope object with string `svc` and
/// `type`; `UNSUPPORTED_VERSION` for a numeric `v` other than 1.
pub fn decode(text: &str) -> Result<Envelope, DecodeError> {
    let bad = |reason, seq| DecodeError {
        code: ClientCode::BadRequest,
        reason,
        seq,
    };
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| bad(parse_reason(&e), None))?;
    let seq = match wire.seq {
        None => None,
        Some(r) if r.get() == "null" => None,
        Some(r) => Some(
            serde_json::from_str::<u64>(r.get())
                .map_err(|_| bad("seq must be an unsigned integer", None))?,
        ),
    };
    match wire
        .v
        .map(|r| serde_json::from_str::<serde_json::Number>(r.get()))
    {
        None => return Err(bad("missing v", seq)),
        Some(Ok(n)) if n.as_u64() == Some(1) => {}
        Some(Ok(_)) => {
            return Err(DecodeError {
                code: ClientCode::UnsupportedVersion,
                reason: "unsupported version",
                seq,
            });
        }
        Some(Err(_)) => return Err(bad("v must be a number", seq)),
    }
    let svc = name(wire.svc, true).map_err(|r| bad(r, seq))?;
    let ty = name(wire.ty, true).map_err(|r| bad(r, seq))?;
    let room = name(wire.room, false).map_err(|r| bad(r, seq))?;
    let data = wire.data.filter(|r| r.get() != "null");
    if let Some(d) = data {
        match scan_data(d.get()) {
            Err(reason) => return Err(bad(reason, seq)),
            Ok(depth) if depth > MAX_DATA_DEPTH => {
                return Err(bad("data nested too deeply", seq));
            }
            Ok(_) => {}
        }
    }
    let data = data.map(|r| r.to_owned());
    match (svc, ty) {
        (Some(svc), Some(ty)) => Ok(Envelope {
            svc,
            ty,
            room,
            seq,
            data,
        }),
        _ => Err(bad("missing svc or type", seq)),
    }
}

/// A gateway → client envelope, borrowed for encoding.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Outgoing<'a> {
    /// Always 1.
    pub v: u8,
    /// Service that speaks.
    pub svc: &'a str,
    /// Message type.
    #[serde(rename = "type")]
    pub ty: &'a str,
    /// Room the message concerns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// Echoed client `seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// History offset of a reliable room publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// History epoch of the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<&'a str>,
    /// Payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
}

impl<'a> Outgoing<'a> {
    /// An envelope with no room, seq or data.
    pub fn new(svc: &'a str, ty: &'a str) -> Self {
        Self {
            v: 1,
            svc,
            ty,
            room: None,
            seq: None,
            offset: None,
            epoch: None,
            data: None,
        }
    }

    /// Sets `room`.
    pub fn room(mut self, room: Option<&'a str>) -> Self {
        self.room = room;
        self
    }

    /// Sets `seq`.
    pub fn seq(mut self, seq: Option<u64>) -> Self {
        self.seq = seq;
        self
    }

    /// Sets `offset` (room history position).
    pub fn offset(mut self, offset: Option<u64>) -> Self {
        self.offset = offset;
        self
    }

    /// Sets `epoch` (room history epoch).
    pub fn epoch(mut self, epoch: Option<&'a str>) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets `data`.
    pub fn data(mut self, data: Option<&'a RawValue>) -> Self {
        self.data = data;
        self
    }

    /// Encodes like [`Outgoing::encode`], refusing frames over `max` bytes
    /// (`PAYLOAD_TOO_LARGE`: plugin publishes and server API payloads).
    ///
    /// # Errors
    /// The encoded size when it exceeds `max`.
    pub fn encode_within(&self, max: usize) -> Result<Message, usize> {
        let msg = self.encode();
        let len = match &msg {
            Message::Text(t) => t.len(),
            _ => 0,
        };
        if len > max { Err(len) } else { Ok(msg) }
    }

    /// Encodes once into a frame whose bytes can be shared by every recipient.
    pub fn encode(&self) -> Message {
        // Serializing a struct of strings, integers and already-valid raw JSON
        // cannot fail; the fallback keeps the type honest without a panic path.
        let text = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"v":1,"svc":"sys","type":"error","data":{"code":"INTERNAL","msg":"encode failed"}}"#
                .to_owned()
        });
        Message::Text(Utf8Bytes::from(text))
    }
}

/// Encodes `data` (any serializable value) as raw JSON.
pub fn raw<T: Serialize>(data: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(data).unwrap_or_else(|_| {
        // Only non-string map keys or failing Serialize impls error; our payloads
        // are plain structs and json! values.
        RawValue::from_string("null".to_owned()).unwrap_or_default()
    })
}

/// `sys.error` for a refusal, echoing `seq`; `reason` (a plugin's own code, or
/// why a service is unavailable) only when there is one.
pub fn sys_error(code: ClientCode, msg: &str, reason: Option<&str>, seq: Option<u64>) -> Message {
    #[derive(Serialize)]
    struct Body<'a> {
        code: &'a str,
        msg: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    }
    let data = raw(&Body {
        code: code.as_str(),
        msg,
        reason,
    });
    Outgoing::new("sys", "error")
        .seq(seq)
        .data(Some(&data))
        .encode()
}

/// `sys.ack` for an accepted message with `seq`.
pub fn sys_ack(seq: u64) -> Message {
    Outgoing::new("sys", "ack").seq(Some(seq)).encode()
}

/// `sys.pong` for a client's `sys.ping`, echoing `seq`.
pub fn sys_pong(seq: Option<u64>) -> Message {
    Outgoing::new("sys", "pong").seq(seq).encode()
}

/// `room.member_joined` / `room.member_left` (`ty`) for `user` as `peer` in
/// `room`.
pub fn member_event(ty: &str, room: &str, user: &str, peer: u32) -> Message {
    #[derive(Serialize)]
    struct MemberEvent<'a> {
        user: &'a str,
        peer: u32,
    }
    Outgoing::new("room", ty)
        .room(Some(room))
        .data(Some(&raw(&MemberEvent { user, peer })))
        .encode()
}

/// `sys.kicked`: the session is being replaced by a newer one of its user
/// (Close 4001 follows).
pub fn sys_kicked() -> Message {
    Outgoing::new("sys", "kicked")
        .data(Some(&raw(
            &serde_json::json!({"reason": "replaced by a newer session"}),
        )))
        .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Message) -> String {
        match m {
            Message::Text(t) => t.as_str().to_owned(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn decodes_a_full_envelope_and_ignores_unknown_fields() {
        let e = decode(r#"{"v":1,"svc":"chat","type":"send","room":"match:1","seq":7,"data":{"msg":"hi"},"x":[1]}"#)
            .expect("valid");
        assert_eq!(e.svc, "chat");
        assert_eq!(e.ty, "send");
        assert_eq!(e.room.as_deref(), Some("match:1"));
        assert_eq!(e.seq, Some(7));
        assert_eq!(
            e.data.as_deref().map(RawValue::get),
            Some(r#"{"msg":"hi"}"#)
        );
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let e = decode(r#"{"v":1,"svc":"room","type":"presence","room":null,"data":null}"#)
            .expect("valid");
        assert_eq!(e.room, None);
        assert!(e.data.is_none());
        assert_eq!(e.seq, None);
    }

    #[test]
    fn version_errors_echo_seq() {
        let e = decode(r#"{"v":2,"svc":"a","type":"b","seq":9}"#).expect_err("v2");
        assert_eq!(e.code, ClientCode::UnsupportedVersion);
        assert_eq!(e.seq, Some(9));
        let e = decode(r#"{"svc":"a","type":"b","seq":3}"#).expect_err("no v");
        assert_eq!(e.code, ClientCode::BadRequest);
        assert_eq!(e.seq, Some(3));
        let e = decode(r#"{"v":"1","svc":"a","type":"b"}"#).expect_err("string v");
        assert_eq!(e.code, ClientCode::BadRequest);
    }

    #[test]
    fn malformed_input_is_bad_request() {
        for bad in [
            "",
            "null",
            "[]",
            "42",
            "{",
            r#"{"v":1}"#,
            r#"{"v":1,"svc":5,"type":"x"}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":-1}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":1.5}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":99999999999999999999999}"#,
            r#"{"v":1,"svc":"","type":"b"}"#,
            r#"{"v":1,"svc":"a","type":"b","room":7}"#,
            r#"{"v":1,"svc":"a","svc":"b","type":"b"}"#,
        ] {
            let e = decode(bad).expect_err(bad);
            assert_eq!(e.code, ClientCode::BadRequest, "{bad}");
        }
        for (text, reason) in [
            ("{", "invalid JSON"),
            (r#"{"v":1,"svc":"a","type":"b"} x"#, "invalid JSON"),
            ("[]", "not a JSON envelope object"),
            ("42", "not a JSON envelope object"),
            (
                r#"{"v":1,"svc":"a","svc":"b","type":"b"}"#,
                "duplicate key in the envelope",
            ),
        ] {
            assert_eq!(decode(text).expect_err(text).reason, reason, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let e = decode(&format!(r#"{{"v":1,"svc":"a","type":"b","data":{deep}}}"#))
            .map(|_| ())
            .expect_err("deep nesting");
        assert_eq!(e.code, ClientCode::BadRequest);
        let ok = format!(
            r#"{{"v":1,"svc":"a","type":"b","data":{{"s":"[[[[{{","x":{}{}}}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(decode(&ok).is_ok(), "brackets inside strings do not count");
    }

    /// Regression (fuzz target `ext_decode`, hostile-input suite): `RawValue`
    /// accepted `data` holding a lone surrogate escape such as `"\ud800"`, which
    /// every strict JSON parser downstream refuses.
    #[test]
    fn fuzz_regression_lone_surrogate_escapes_in_data_are_bad_request() {
        for bad in [
            r#"{"v":1,"svc":"a","type":"b","seq":3,"data":{"m":"\ud800"}}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":3,"data":["x\udc00y"]}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":3,"data":"\ud800\u0041"}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":3,"data":{"\udbff":1}}"#,
            r#"{"v":1,"svc":"a","type":"b","seq":3,"data":"\ud800\ud800"}"#,
        ] {
            let e = decode(bad).map(|_| ()).expect_err(bad);
            assert_eq!((e.code, e.seq), (ClientCode::BadRequest, Some(3)), "{bad}");
        }
        for good in [
            r#"{"v":1,"svc":"a","type":"b","data":"\ud83d\ude00"}"#,
            r#"{"v":1,"svc":"a","type":"b","data":"\\ud800"}"#,
            r#"{"v":1,"svc":"a","type":"b","data":{"k":"\u00e9\"\\","n":[1,{"x":"]"}]}}"#,
        ] {
            let e = decode(good).unwrap_or_else(|e| panic!("{good}: {e:?}"));
            let data = e.data.expect("data");
            serde_json::from_str::<serde_json::Value>(data.get()).expect("strict JSON");
        }
    }

    #[test]
    fn encodes_sys_frames() {
        assert_eq!(
            text(&sys_error(ClientCode::NotAllowed, "nope", None, Some(7))),
            r#"{"v":1,"svc":"sys","type":"error","seq":7,"data":{"code":"NOT_ALLOWED","msg":"nope"}}"#
        );
        assert_eq!(
            text(&sys_error(
                ClientCode::ServiceError,
                "NO: closed",
                Some("NO"),
                None
            )),
            r#"{"v":1,"svc":"sys","type":"error","data":{"code":"SERVICE_ERROR","msg":"NO: closed","reason":"NO"}}"#
        );
        assert_eq!(
            text(&sys_ack(3)),
            r#"{"v":1,"svc":"sys","type":"ack","seq":3}"#
        );
    }
}
