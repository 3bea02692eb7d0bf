//! Hot Lane (SPEC §5) and delivery classes (SPEC §6).

use crate::common;

use std::time::Duration;

use common::{TestConfig, TestGateway, eventually, metric};
use serde_json::json;
use wsprism::config::{HotErrorMode, HotServiceConfig, HotServiceKind};

/// Tenant `acme` (users u1..u3) with Hot Lane services 1 (relay), 2 (echo) and
/// 3 (relay, stamped, sender included), allowing `1:*`, `2:*` and `3:7`.
fn cfg() -> TestConfig {
    TestConfig::tenant("acme")
        .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
        .ext_allow(&["room:*", "chat:*"])
        .hot_allow(&["1:*", "2:*", "3:7"])
        .hot_relay(1)
        .hot_echo(2)
        .with_tenant(|t| {
            t.hot_services.push(HotServiceConfig {
                id: 3,
                kind: HotServiceKind::Relay,
                include_sender: true,
                stamp_sender: true,
                conflate: false,
            });
        })
}

/// [`cfg`] without rate limits (messages or bytes), with queues and writer
/// timeout as given.
fn flood(writer_send_timeout_ms: u64, reliable: usize, lossy: usize) -> TestConfig {
    cfg()
        .rate_limit(100_000, 100_000)
        .policy(|p| p.max_bytes_per_sec = 0)
        .gateway(|g| {
            g.writer_send_timeout_ms = writer_send_timeout_ms;
            g.queues.reliable_capacity = reliable;
            g.queues.lossy_capacity = lossy;
        })
}

#[tokio::test]
async fn relay_forwards_bytes_to_the_other_members() {
    let gw = TestGateway::start(cfg()).await;
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
    let gw = TestGateway::start(cfg()).await;
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

/// Issue 11 item 9: a client cannot set the stamped flag (0x80) itself and
/// make a relay that forwards bytes as sent deliver a forged peer number.
#[tokio::test]
async fn client_set_stamp_flag_is_refused() {
    let gw = TestGateway::start(cfg().policy(|p| p.hot_error_mode = HotErrorMode::Error)).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("m").await;
    b.join("m").await;
    for svc in [1u8, 2, 3] {
        let op = if svc == 3 { 7 } else { 9 };
        // `flags|0x80`, then a "peer" of 42 and a payload.
        a.send_bin(&[svc, op, 0x81, 42, 0, 0, 0, 0xEE]).await;
        assert_eq!(
            a.recv_type("error").await["data"]["code"],
            "BAD_REQUEST",
            "svc {svc}"
        );
    }
    b.expect_silence(Duration::from_millis(200)).await;
    // Without the flag the same frame is relayed.
    a.send_bin(&[1, 9, 0x01, 42, 0, 0, 0, 0xEE]).await;
    assert_eq!(b.recv_bin().await, vec![1, 9, 0x01, 42, 0, 0, 0, 0xEE]);
}

#[tokio::test]
async fn echo_and_active_room_requirement() {
    let gw = TestGateway::start(cfg().policy(|p| p.hot_error_mode = HotErrorMode::Error)).await;
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
    let gw = TestGateway::start(cfg().policy(|p| p.hot_error_mode = HotErrorMode::Error)).await;
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
    let gw = TestGateway::start(cfg()).await;
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
    let gw = TestGateway::start(cfg().policy(|p| p.hot_error_mode = HotErrorMode::Close)).await;
    let mut a = gw.client("acme", "t1").await;
    a.join("r").await;
    a.send_bin(&[9, 1, 0]).await;
    assert_eq!(a.recv_close().await, Some(1008));
}

#[tokio::test]
async fn allowlisted_svc_without_a_native_service_is_unknown() {
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .tickets(&[("t1", "u1")])
            .ext_allow(&["room:*"])
            .hot_allow(&["*"])
            .policy(|p| p.hot_error_mode = HotErrorMode::Error)
            .hot_relay(1),
    )
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
    let gw = TestGateway::start(flood(60_000, 64, 4)).await;
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
    gw.metric_at_least(
        "wsprism_drops_total{reason=\"lossy_overflow\",tenant=\"acme\"}",
        1.0,
    )
    .await;
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
    let gw = TestGateway::start(flood(60_000, 64, 8)).await;
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
    let closed = gw
        .metric_at_least(
            "wsprism_sessions_closed_total{reason=\"slow_consumer\",tenant=\"acme\"}",
            1.0,
        )
        .await;
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
    let gw = TestGateway::start(flood(300, 100_000, 100_000)).await;
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
    eventually(
        "the stuck session to be dropped (1 session left)",
        || async {
            match tenant.broker.stats().sessions {
                1 => Ok(()),
                n => Err(format!("{n} sessions")),
            }
        },
    )
    .await;
    drop(stuck);
    sender
        .send_json(json!({"v":1,"svc":"room","type":"presence","room":"r"}))
        .await;
    assert_eq!(
        sender.recv_type("presence").await["data"]["users"],
        json!(["u1"])
    );
}

/// Reads binary frames until `c` is quiet for 500 ms; returns the counter
/// each carried (bytes 3..7 of [`counted`]).
async fn counters(c: &mut common::Client) -> Vec<u32> {
    let mut seen = Vec::new();
    while let Some(m) = c.try_recv(Duration::from_millis(500)).await {
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
            seen.push(u32::from_le_bytes([b[3], b[4], b[5], b[6]]));
        }
    }
    seen
}

/// A Hot Lane frame on `svc` carrying counter `n` and 8 KiB of padding.
fn counted(svc: u8, n: u32) -> Vec<u8> {
    let mut frame = vec![svc, 5, 0];
    frame.extend_from_slice(&n.to_le_bytes());
    frame.extend(std::iter::repeat_n(7u8, 8 * 1024));
    frame
}

#[tokio::test]
async fn a_conflating_relay_gives_a_slow_receiver_the_latest_frame_not_a_backlog() {
    let gw = TestGateway::start(flood(60_000, 64, 64).hot_allow(&["4:*"]).with_tenant(|t| {
        t.hot_services.push(HotServiceConfig {
            id: 4,
            kind: HotServiceKind::Relay,
            include_sender: false,
            stamp_sender: false,
            conflate: true,
        });
    }))
    .await;
    // Room "c" relays on the conflating service 4, room "p" on the plain
    // lossy relay 1; each receiver stops reading while its sender streams
    // far more than the socket buffers hold.
    let mut sender_c = gw.client("acme", "t1").await;
    let mut sink_c = gw.client("acme", "t2").await;
    let mut sender_p = gw.client("acme", "t3").await;
    let mut sink_p = gw.client("acme", "t1").await;
    sender_c.join("c").await;
    sink_c.join("c").await;
    sender_p.join("p").await;
    sink_p.join("p").await;
    const N: u32 = 1600;
    for n in 0..N {
        sender_c.send_bin(&counted(4, n)).await;
        sender_p.send_bin(&counted(1, n)).await;
    }
    gw.metric_at_least(
        "wsprism_messages_in_total{lane=\"hot\",tenant=\"acme\"}",
        f64::from(2 * N),
    )
    .await;
    let plain = counters(&mut sink_p).await;
    let latest = counters(&mut sink_c).await;
    // Both end on the newest frame, in order.
    assert_eq!(plain.last(), Some(&(N - 1)));
    assert_eq!(latest.last(), Some(&(N - 1)), "the latest state arrives");
    assert!(latest.windows(2).all(|w| w[0] < w[1]), "in order");
    // The plain receiver also gets the backlog its lossy queue held (up to
    // 64 frames); the conflating one held one frame for its one key.
    assert!(
        plain.len() >= latest.len() + 32,
        "plain {} frames, conflated {}",
        plain.len(),
        latest.len()
    );
    assert!(latest.len() < N as usize, "the stream outran the receiver");
}

#[tokio::test]
async fn conflate_is_refused_on_an_echo_service() {
    let cfg = TestConfig::tenant("acme")
        .tickets(&[("t1", "u1")])
        .with_tenant(|t| {
            t.hot_services.push(HotServiceConfig {
                id: 2,
                kind: HotServiceKind::Echo,
                include_sender: false,
                stamp_sender: false,
                conflate: true,
            });
        })
        .build();
    let e = wsprism::config::parse(&cfg).expect_err("conflate on echo");
    assert!(
        e.issues
            .iter()
            .any(|i| i.path == "tenants[0].hot_services[0].conflate"),
        "{e}"
    );
}
