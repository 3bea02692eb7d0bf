//! RFC 6455 conformance with a raw-frame client, mirroring the Autobahn
//! TestSuite's key categories (scripts/autobahn.sh runs the real suite when
//! Python 2.7 is available): framing faults close with 1002, text that is not
//! UTF-8 (whole or split across fragments) with 1007, close codes are checked,
//! and closes are clean in both directions. Every case runs against both
//! `/v1/echo` (the raw diagnostics echo) and `/v1/ws` (the gateway proper).

use crate::common;

use std::time::Duration;

use common::{TestConfig, TestGateway, eventually};
use raw_ws::{BINARY, CLOSE, CONT, Eof, PING, PONG, RawWs, TEXT, close_payload, frame, masked};

fn cfg() -> TestConfig {
    TestConfig::tenant("acme")
        .gateway(|g| g.diagnostics.echo = true)
        .tickets(&[("t1", "u1")])
        .ext_allow(&["room:*"])
        .rate_limit(10_000, 10_000)
        .policy(|p| p.sessions.max_sessions_per_user = 1000)
}

/// How long the server has to end the TCP connection after the close handshake.
const EOF_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Echo,
    Ws,
}

const BOTH: [Endpoint; 2] = [Endpoint::Echo, Endpoint::Ws];

fn key() -> Option<[u8; 4]> {
    Some(rand::random())
}

async fn open(gw: &TestGateway, ep: Endpoint) -> RawWs {
    match ep {
        Endpoint::Echo => RawWs::connect(gw.addr, "/v1/echo").await,
        Endpoint::Ws => {
            let mut ws = RawWs::connect(gw.addr, "/v1/ws?tenant=acme&ticket=t1").await;
            let authed = ws.read_data().await;
            assert!(authed.text().contains("\"authed\""), "{authed:?}");
            ws
        }
    }
}

/// A valid text message for the endpoint and a check of its answer.
fn probe_text(ep: Endpoint, room: &str) -> String {
    match ep {
        Endpoint::Echo => format!("probe {room}"),
        Endpoint::Ws => format!(r#"{{"v":1,"svc":"room","type":"join","room":"{room}"}}"#),
    }
}

fn check_probe_answer(ep: Endpoint, room: &str, got: &raw_ws::Frame) {
    assert_eq!(got.opcode, TEXT, "{got:?}");
    match ep {
        Endpoint::Echo => assert_eq!(got.text(), format!("probe {room}")),
        Endpoint::Ws => {
            let v: serde_json::Value = serde_json::from_slice(&got.payload).expect("json");
            assert_eq!(v["type"], "joined", "{v}");
            assert_eq!(v["room"], room, "{v}");
        }
    }
}

/// Sends `bytes` and asserts the server fails the connection with `code`, then
/// that it ends the TCP connection once we answer the close.
async fn expect_fail(gw: &TestGateway, ep: Endpoint, what: &str, bytes: &[u8], code: u16) {
    let mut ws = open(gw, ep).await;
    ws.send(bytes).await;
    let got = ws.close_code().await;
    assert_eq!(got, Some(Some(code)), "{ep:?}: {what}");
    let eof = ws.finish_close(EOF_WAIT).await;
    assert_ne!(
        eof,
        Eof::Open,
        "{ep:?}: {what}: the server kept the TCP connection"
    );
}

#[tokio::test]
async fn unmasked_client_frames_close_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        let text = probe_text(ep, "r");
        expect_fail(
            &gw,
            ep,
            "unmasked text",
            &frame(true, 0, TEXT, text.as_bytes(), None),
            1002,
        )
        .await;
        expect_fail(
            &gw,
            ep,
            "unmasked ping",
            &frame(true, 0, PING, b"hi", None),
            1002,
        )
        .await;
    }
}

#[tokio::test]
async fn reserved_bits_close_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        for rsv in 1..=7u8 {
            let f = frame(true, rsv, TEXT, b"{}", key());
            expect_fail(&gw, ep, &format!("rsv {rsv:03b}"), &f, 1002).await;
        }
        expect_fail(
            &gw,
            ep,
            "rsv on ping",
            &frame(true, 4, PING, b"", key()),
            1002,
        )
        .await;
    }
}

#[tokio::test]
async fn reserved_opcodes_close_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            let f = frame(true, 0, op, b"x", key());
            expect_fail(&gw, ep, &format!("opcode {op:#x}"), &f, 1002).await;
        }
    }
}

#[tokio::test]
async fn control_frames_over_125_bytes_or_fragmented_close_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        expect_fail(&gw, ep, "ping 126 B", &masked(PING, &[b'p'; 126]), 1002).await;
        expect_fail(&gw, ep, "pong 126 B", &masked(PONG, &[b'p'; 126]), 1002).await;
        let mut close = close_payload(1000, &[b'r'; 124]);
        assert_eq!(close.len(), 126);
        expect_fail(&gw, ep, "close 126 B", &masked(CLOSE, &close), 1002).await;
        close.truncate(125);
        // 125 bytes is the limit: a valid close, answered with the same code.
        let mut ws = open(&gw, ep).await;
        ws.send(&masked(CLOSE, &close)).await;
        assert_eq!(ws.close_code().await, Some(Some(1000)), "{ep:?}");
        expect_fail(
            &gw,
            ep,
            "fragmented ping",
            &frame(false, 0, PING, b"a", key()),
            1002,
        )
        .await;
        let mut two = frame(false, 0, PING, b"a", key());
        two.extend(frame(true, 0, CONT, b"b", key()));
        expect_fail(&gw, ep, "ping + continuation", &two, 1002).await;
    }
}

#[tokio::test]
async fn continuation_without_start_and_interleaved_messages_close_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        expect_fail(
            &gw,
            ep,
            "lone final continuation",
            &frame(true, 0, CONT, b"x", key()),
            1002,
        )
        .await;
        expect_fail(
            &gw,
            ep,
            "lone continuation",
            &frame(false, 0, CONT, b"x", key()),
            1002,
        )
        .await;
        let mut interleaved = frame(false, 0, TEXT, b"ab", key());
        interleaved.extend(frame(true, 0, TEXT, b"cd", key()));
        expect_fail(&gw, ep, "text inside a fragmented text", &interleaved, 1002).await;
        let mut interleaved = frame(false, 0, BINARY, b"ab", key());
        interleaved.extend(frame(false, 0, TEXT, b"cd", key()));
        expect_fail(
            &gw,
            ep,
            "text inside a fragmented binary",
            &interleaved,
            1002,
        )
        .await;
    }
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let gw = TestGateway::start(cfg()).await;
    let cases: [(&str, &[u8]); 5] = [
        ("lone continuation byte", b"a\x80b"),
        ("overlong encoding", b"\xc0\xaf"),
        ("surrogate", b"\xed\xa0\x80"),
        ("beyond U+10FFFF", b"\xf4\x90\x80\x80"),
        ("truncated sequence", b"ab\xce"),
    ];
    for ep in BOTH {
        for (what, bytes) in cases {
            expect_fail(&gw, ep, what, &masked(TEXT, bytes), 1007).await;
        }
    }
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        // Each fragment alone could be a prefix of valid UTF-8; together they are not.
        let mut split = frame(false, 0, TEXT, b"ab\xce", key());
        split.extend(frame(true, 0, CONT, b"\x28cd", key()));
        expect_fail(
            &gw,
            ep,
            "bad continuation in the next fragment",
            &split,
            1007,
        )
        .await;
        // A message that ends inside a code point.
        let mut split = frame(false, 0, TEXT, b"ab", key());
        split.extend(frame(true, 0, CONT, b"\xe2\x82", key()));
        expect_fail(&gw, ep, "message ends mid code point", &split, 1007).await;
        // Fail fast: an invalid first fragment is refused before the message ends.
        expect_fail(
            &gw,
            ep,
            "invalid first fragment",
            &frame(false, 0, TEXT, b"a\xff", key()),
            1007,
        )
        .await;
    }
}

#[tokio::test]
async fn valid_utf8_split_inside_a_code_point_with_a_ping_between_fragments_is_accepted() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        let mut ws = open(&gw, ep).await;
        let room = "caf\u{e9}-\u{1F600}";
        let text = probe_text(ep, room);
        let bytes = text.as_bytes();
        // Cut inside the 4-byte emoji.
        let cut = text.find('\u{1F600}').expect("emoji") + 2;
        ws.send(&frame(false, 0, TEXT, &bytes[..cut], key())).await;
        ws.send(&frame(true, 0, PING, b"mid", key())).await;
        ws.send(&frame(true, 0, CONT, &bytes[cut..], key())).await;
        let pong = ws.read_frame().await.expect("pong");
        assert_eq!(
            (pong.opcode, pong.payload.as_slice()),
            (PONG, &b"mid"[..]),
            "{ep:?}"
        );
        let answer = ws.read_data().await;
        check_probe_answer(ep, room, &answer);
        // Many tiny fragments (one byte each) reassemble too.
        let text = probe_text(ep, "tiny");
        let b = text.as_bytes();
        for (i, byte) in b.iter().enumerate() {
            let op = if i == 0 { TEXT } else { CONT };
            ws.send(&frame(i + 1 == b.len(), 0, op, &[*byte], key()))
                .await;
        }
        check_probe_answer(ep, "tiny", &ws.read_data().await);
    }
}

#[tokio::test]
async fn pings_get_pongs_with_the_same_payload() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        let mut ws = open(&gw, ep).await;
        for payload in [&b""[..], b"x", &[0xffu8; 125]] {
            ws.send(&masked(PING, payload)).await;
            let pong = ws.read_frame().await.expect("pong");
            assert_eq!(pong.opcode, PONG, "{ep:?}");
            assert_eq!(pong.payload, payload, "{ep:?}");
        }
        // Unsolicited pongs are ignored.
        ws.send(&masked(PONG, b"unsolicited")).await;
        ws.send(&masked(TEXT, probe_text(ep, "after-pong").as_bytes()))
            .await;
        check_probe_answer(ep, "after-pong", &ws.read_data().await);
    }
}

#[tokio::test]
async fn valid_close_codes_are_answered_with_the_same_code() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            let mut ws = open(&gw, ep).await;
            ws.send(&masked(CLOSE, &close_payload(code, b"bye"))).await;
            assert_eq!(ws.close_code().await, Some(Some(code)), "{ep:?} {code}");
            assert_eq!(ws.wait_eof(EOF_WAIT).await, Eof::Clean, "{ep:?} {code}");
        }
        // An empty close is answered with an empty close.
        let mut ws = open(&gw, ep).await;
        ws.send(&masked(CLOSE, &[])).await;
        assert_eq!(ws.close_code().await, Some(None), "{ep:?} empty close");
        assert_eq!(ws.wait_eof(EOF_WAIT).await, Eof::Clean, "{ep:?}");
    }
}

#[tokio::test]
async fn invalid_close_codes_and_payloads_are_answered_with_1002() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        // 1005 and 1006 must never be sent on the wire; 1004 and 1015 are reserved.
        for code in [
            0u16, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let mut ws = open(&gw, ep).await;
            ws.send(&masked(CLOSE, &close_payload(code, b""))).await;
            assert_eq!(ws.close_code().await, Some(Some(1002)), "{ep:?} {code}");
            assert_ne!(ws.wait_eof(EOF_WAIT).await, Eof::Open, "{ep:?} {code}");
        }
        // A one-byte close payload cannot hold a code.
        expect_fail(&gw, ep, "1-byte close", &masked(CLOSE, &[0x03]), 1002).await;
        // A close reason that is not UTF-8.
        expect_fail(
            &gw,
            ep,
            "close reason not UTF-8",
            &masked(CLOSE, &close_payload(1000, b"\xff\xfe")),
            1007,
        )
        .await;
    }
}

#[tokio::test]
async fn client_initiated_close_is_clean_and_nothing_is_answered_after_it() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        let mut ws = open(&gw, ep).await;
        let mut bytes = masked(CLOSE, &close_payload(1000, b"done"));
        // Data after our close must be ignored.
        bytes.extend(masked(TEXT, probe_text(ep, "late").as_bytes()));
        ws.send(&bytes).await;
        let f = ws.read_frame().await.expect("close reply");
        assert_eq!(
            (f.opcode, f.close_code()),
            (CLOSE, Some(1000)),
            "{ep:?}: {f:?}"
        );
        assert_ne!(ws.wait_eof(EOF_WAIT).await, Eof::Open, "{ep:?}");
    }
    // The session left the broker.
    eventually(
        "the session to be unregistered after a clean close",
        || async {
            match gw.gw.tenant("acme").map(|t| t.broker.stats().sessions) {
                Some(0) => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn server_initiated_close_is_clean_in_both_cases() {
    let gw = TestGateway::start(cfg()).await;
    for ep in BOTH {
        // Failing the connection (RFC 6455 §7.1.7): a Close frame with the
        // reason, then the server ends TCP without waiting for a reply.
        let mut ws = open(&gw, ep).await;
        ws.send(&frame(true, 0, 0x3, b"", key())).await;
        assert_eq!(ws.close_code().await, Some(Some(1002)), "{ep:?}");
        assert_eq!(ws.wait_eof(EOF_WAIT).await, Eof::Clean, "{ep:?}");
    }
    // A normal close by the gateway (drain): 1001, the TCP connection stays
    // open until the client answers, then ends cleanly.
    let mut ws = open(&gw, Endpoint::Ws).await;
    let mut silent = open(&gw, Endpoint::Ws).await;
    gw.gw.start_drain();
    assert_eq!(ws.close_code().await, Some(Some(1001)));
    assert_eq!(ws.wait_eof(Duration::from_millis(300)).await, Eof::Open);
    assert_eq!(ws.finish_close(EOF_WAIT).await, Eof::Clean);
    // A client that never answers is cut after the close-handshake timeout.
    assert_eq!(silent.close_code().await, Some(Some(1001)));
    assert_ne!(silent.wait_eof(EOF_WAIT).await, Eof::Open, "never cut");
}
