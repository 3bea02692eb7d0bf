//! Hot Lane (SPEC §5) and delivery classes (SPEC §6).

mod common;

use std::time::Duration;

use common::{TestGateway, metric};
use serde_json::json;

fn cfg(policy: &str, hot_services: &str, gateway: &str) -> String {
    format!(
        r#"version: 1
gateway:
  handshake_limit: {{ enabled: false }}
{gateway}
tenants:
  - id: acme
    api_keys: ["acme-key-0123456789"]
    auth:
      tickets: {{ t1: u1, t2: u2, t3: u3 }}
    policy: {policy}
    hot_services: {hot_services}
"#
    )
}

const SERVICES: &str = "[ { id: 1, kind: relay }, { id: 2, kind: echo }, { id: 3, kind: relay, stamp_sender: true, include_sender: true } ]";

fn policy(extra: &str) -> String {
    format!(
        r#"{{ ext_allowlist: ["room:*", "chat:*"], hot_allowlist: ["1:*", "2:*", "3:7"] {extra} }}"#
    )
}

#[tokio::test]
async fn relay_forwards_bytes_to_the_other_members() {
    let gw = TestGateway::start(&cfg(&policy(""), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let mut c = gw.client("acme", "t3").await;
    a.join("m").await;
    b.join("m").await;
    c.join("elsewhere").await;
    let frame = [1u8, 9, 0x01, 0xde, 0xad, 0xbe, 0xef];
    a.send_bin(&frame).await;
    assert_eq!(b.recv_bin().await, frame.to_vec(), "forwarded as sent");
    a.expect_silence(Duration::from_millis(200)).await;
    c.expect_silence(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn relay_with_stamping_and_include_sender() {
    let gw = TestGateway::start(&cfg(&policy(""), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let pa = a.join("m").await["data"]["peer"].as_u64().expect("peer");
    b.join("m").await;
    a.send_bin(&[3, 7, 0x01, 0xAA]).await;
    let mut want = vec![3u8, 7, 0x81];
    want.extend_from_slice(&(pa as u32).to_le_bytes());
    want.push(0xAA);
    assert_eq!(b.recv_bin().await, want);
    assert_eq!(
        a.recv_bin().await,
        want,
        "include_sender delivers to the sender too"
    );
}

#[tokio::test]
async fn echo_and_active_room_requirement() {
    let gw = TestGateway::start(&cfg(&policy(", hot_error_mode: error"), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    a.send_bin(&[2, 1, 0, 42]).await;
    let e = a.recv_type("error").await;
    assert_eq!(e["data"]["code"], "NOT_IN_ROOM");
    a.join("r").await;
    a.send_bin(&[2, 1, 0, 42]).await;
    assert_eq!(a.recv_bin().await, vec![2, 1, 0, 42]);
    // The most recent join is the active room.
    let mut b = gw.client("acme", "t2").await;
    b.join("second").await;
    a.join("second").await;
    a.send_bin(&[1, 0, 0, 5]).await;
    assert_eq!(b.recv_bin().await, vec![1, 0, 0, 5]);
}

#[tokio::test]
async fn hot_error_modes() {
    // error: a sys.error text frame per refusal.
    let gw = TestGateway::start(&cfg(&policy(", hot_error_mode: error"), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    a.join("r").await;
    a.send_bin(&[9, 1, 0]).await;
    assert_eq!(a.recv_type("error").await["data"]["code"], "NOT_ALLOWED");
    a.send_bin(&[3, 8, 0]).await;
    assert_eq!(
        a.recv_type("error").await["data"]["code"],
        "NOT_ALLOWED",
        "3:8 is not listed"
    );
    a.send_bin(&[1, 2]).await;
    assert_eq!(a.recv_type("error").await["data"]["code"], "BAD_REQUEST");

    // silent: dropped and counted.
    let gw = TestGateway::start(&cfg(&policy(""), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    a.join("r").await;
    a.send_bin(&[9, 1, 0]).await;
    a.expect_silence(Duration::from_millis(200)).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wsprism_policy_refusals_total{lane=\"hot\",reason=\"not_allowed\",tenant=\"acme\"}"
        ),
        1.0
    );

    // close: 1008.
    let gw = TestGateway::start(&cfg(&policy(", hot_error_mode: close"), SERVICES, "")).await;
    let mut a = gw.client("acme", "t1").await;
    a.join("r").await;
    a.send_bin(&[9, 1, 0]).await;
    assert_eq!(a.recv_close().await, Some(1008));
}

#[tokio::test]
async fn allowlisted_svc_without_a_native_service_is_unknown() {
    let gw = TestGateway::start(&cfg(
        r#"{ ext_allowlist: ["room:*"], hot_allowlist: ["*"], hot_error_mode: error }"#,
        "[ { id: 1, kind: relay } ]",
        "",
    ))
    .await;
    let mut a = gw.client("acme", "t1").await;
    a.join("r").await;
    a.send_bin(&[77, 1, 0]).await;
    assert_eq!(
        a.recv_type("error").await["data"]["code"],
        "UNKNOWN_SERVICE"
    );
}

#[tokio::test]
async fn lossy_overflow_drops_oldest_and_keeps_the_session() {
    let gw = TestGateway::start(&cfg(
        &policy(", rate_limit_rps: 100000, rate_limit_burst: 100000"),
        SERVICES,
        "  writer_send_timeout_ms: 60000\n  queues: { reliable_capacity: 64, lossy_capacity: 4 }",
    ))
    .await;
    let mut sender = gw.client("acme", "t1").await;
    let mut sink = gw.client("acme", "t2").await;
    sender.join("r").await;
    sink.join("r").await;
    let mut frame = vec![1u8, 0, 0];
    frame.extend(std::iter::repeat_n(7u8, 32 * 1024));
    // Far more than the socket buffers plus the queue can hold while `sink` reads
    // nothing.
    for _ in 0..400 {
        sender.send_bin(&frame).await;
    }
    let mut dropped = 0.0;
    for _ in 0..100 {
        let m = gw.metrics().await;
        dropped = metric(
            &m,
            "wsprism_drops_total{reason=\"lossy_overflow\",tenant=\"acme\"}",
        );
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dropped > 0.0, "no lossy drops were counted");
    // The session is still alive and receives frames.
    let mut got = 0;
    while let Some(m) = sink.try_recv(Duration::from_millis(500)).await {
        if m.is_binary() {
            got += 1;
        }
    }
    assert!(got > 0 && got < 400, "received {got}");
    sink.send_json(json!({"v":1,"svc":"room","type":"presence","room":"r"}))
        .await;
    assert_eq!(
        sink.recv_type("presence").await["data"]["users"],
        json!(["u1", "u2"])
    );
}

#[tokio::test]
async fn reliable_overflow_closes_the_slow_consumer_with_4002() {
    let gw = TestGateway::start(&cfg(
        &policy(", rate_limit_rps: 100000, rate_limit_burst: 100000"),
        SERVICES,
        "  writer_send_timeout_ms: 60000\n  queues: { reliable_capacity: 64, lossy_capacity: 8 }",
    ))
    .await;
    let mut sender = gw.client("acme", "t1").await;
    let mut slow = gw.client("acme", "t2").await;
    let mut fast = gw.client("acme", "t3").await;
    sender.join("r").await;
    slow.join("r").await;
    fast.join("r").await;
    let text = "x".repeat(30 * 1024);
    let n = 300;
    // The fast member reports progress; the sender never gets more than 32
    // messages ahead of it, so only the member that reads nothing overflows.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < n {
            let m = fast.recv_type("msg").await;
            assert_eq!(m["data"]["msg"].as_str().map(str::len), Some(30 * 1024));
            count += 1;
            let _ = progress_tx.send(count);
        }
        count
    });
    // The sender is a member too and must keep reading its own copies.
    use futures_util::{SinkExt, StreamExt};
    let (mut tx, mut rx) = sender.ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    for i in 0..n {
        progress
            .wait_for(|done| i < done + 32)
            .await
            .expect("reader alive");
        let frame = json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg": text}});
        tx.send(tokio_tungstenite::tungstenite::Message::text(
            frame.to_string(),
        ))
        .await
        .expect("send");
    }
    assert_eq!(
        reader.await.expect("reader"),
        n,
        "the fast member received every message"
    );
    assert_eq!(slow.recv_close().await, Some(4002));
    drain.abort();
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wsprism_drops_total{reason=\"slow_consumer\",tenant=\"acme\"}"
        ),
        1.0
    );
    // The session ends once the client answers the close or the close handshake
    // times out (2 s); `slow` is not read any more, so allow for the timeout.
    let mut closed = 0.0;
    for _ in 0..250 {
        closed = metric(
            &gw.metrics().await,
            "wsprism_sessions_closed_total{reason=\"slow_consumer\",tenant=\"acme\"}",
        );
        if closed > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = gw.metrics().await;
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("wsprism_sessions_closed"))
        .collect();
    assert_eq!(
        closed, 1.0,
        "4002 is counted under its own reason: {lines:?}"
    );
}

#[tokio::test]
async fn a_blocked_socket_write_ends_the_session_after_writer_send_timeout() {
    let gw = TestGateway::start(&cfg(
        &policy(", rate_limit_rps: 100000, rate_limit_burst: 100000"),
        SERVICES,
        "  writer_send_timeout_ms: 300\n  queues: { reliable_capacity: 100000, lossy_capacity: 100000 }",
    ))
    .await;
    let mut sender = gw.client("acme", "t1").await;
    let mut stuck = gw.client("acme", "t2").await;
    sender.join("r").await;
    stuck.join("r").await;
    let mut frame = vec![1u8, 0, 0];
    frame.extend(std::iter::repeat_n(1u8, 60 * 1024));
    for _ in 0..300 {
        sender.send_bin(&frame).await;
    }
    // `stuck` never reads: its socket buffers fill, a write blocks past the bound
    // and the gateway drops the session.
    let tenant = gw.gw.tenant("acme").expect("tenant");
    let mut gone = false;
    for _ in 0..100 {
        if tenant.broker.stats().sessions == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the stuck session is still registered");
    drop(stuck);
    sender
        .send_json(json!({"v":1,"svc":"room","type":"presence","room":"r"}))
        .await;
    assert_eq!(
        sender.recv_type("presence").await["data"]["users"],
        json!(["u1"])
    );
}
