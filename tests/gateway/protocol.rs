//! WebSocket-level behaviour: close codes for protocol faults, clean close
//! handshakes in both directions, and the diagnostics echo endpoint.

use crate::common;

use std::time::Duration;

use common::{TestConfig, TestGateway, eventually};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

fn cfg(echo: bool) -> TestConfig {
    TestConfig::tenant("acme")
        .tickets(&[("t1", "u1")])
        .ext_allow(&["room:*"])
        .gateway(|g| g.diagnostics.echo = echo)
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let gw = TestGateway::start(cfg(false)).await;
    let mut c = gw.client("acme", "t1").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.recv_close().await, Some(1007));
}

#[tokio::test]
async fn client_close_gets_a_close_reply() {
    let gw = TestGateway::start(cfg(false)).await;
    let mut c = gw.client("acme", "t1").await;
    c.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    // The reply arrives and then the stream ends cleanly (no reset error).
    let mut got_close = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.ws.next()).await {
            Ok(Some(Ok(Message::Close(_)))) => got_close = true,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("unclean close: {e}"),
            Ok(None) => break,
            Err(_) => panic!("no close reply"),
        }
    }
    assert!(got_close);
    // The session is gone from the broker.
    eventually("the closed session to be unregistered", || async {
        match gw.gw.tenant("acme").map(|t| t.broker.stats().sessions) {
            Some(0) => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test]
async fn gateway_close_waits_for_the_client_reply() {
    let gw = TestGateway::start(cfg(false)).await;
    let mut c = gw.client("acme", "t1").await;
    gw.gw.start_drain();
    // tokio-tungstenite answers the close automatically; the stream then ends
    // without an error, which is what a clean handshake looks like to a client.
    let mut code = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), c.ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => code = f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("unclean close: {e}"),
            Ok(None) => break,
            Err(_) => panic!("stream did not end"),
        }
    }
    assert_eq!(code, Some(1001));
}

#[tokio::test]
async fn diagnostics_echo_exists_only_when_enabled() {
    let off = TestGateway::start(cfg(false)).await;
    let status = reqwest::get(format!("http://{}/v1/echo", off.addr))
        .await
        .expect("get")
        .status();
    assert_eq!(status.as_u16(), 404);

    let on = TestGateway::start(cfg(true)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/echo", on.addr))
        .await
        .expect("connect");
    ws.send(Message::text("plain text, no envelope"))
        .await
        .expect("send");
    ws.send(Message::binary(vec![0u8, 1, 2]))
        .await
        .expect("send");
    let a = ws.next().await.expect("frame").expect("ok");
    let b = ws.next().await.expect("frame").expect("ok");
    assert_eq!(a.to_text().expect("text"), "plain text, no envelope");
    assert_eq!(b.into_data().to_vec(), vec![0u8, 1, 2]);
}

#[tokio::test]
async fn reserved_bits_close_with_1002() {
    let gw = TestGateway::start(cfg(false)).await;
    let mut c = gw.client("acme", "t1").await;
    let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.recv_close().await, Some(1002));
}

#[tokio::test]
async fn ping_floods_are_rate_limited_and_cut() {
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .tickets(&[("t1", "u1"), ("t2", "u2")])
            .ext_allow(&["room:*"])
            .rate_limit(5, 10)
            .policy(|p| {
                p.error_budget.max_errors = 20;
                p.error_budget.window_ms = 60_000;
            }),
    )
    .await;
    let mut flooder = gw.client("acme", "t1").await;
    let mut bystander = gw.client("acme", "t2").await;
    for _ in 0..200 {
        if flooder
            .ws
            .send(Message::Ping(vec![0u8; 16].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(flooder.recv_close().await, Some(1008));
    assert_eq!(bystander.join("r").await["type"], "joined");
}
