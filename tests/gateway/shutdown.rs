//! Graceful drain (SPEC §1), heartbeats and idle timeout (SPEC §6).

use crate::common;

use std::time::Duration;

use common::{FrozenClock, TestConfig, TestGateway, WAIT};
use raw_ws::{PING, RawWs};
use serde_json::json;
use wsprism::config::GatewayConfig;

/// Tenant `acme` (users u1, u2, 100 sessions each) with a gateway edit.
fn cfg(gateway: impl FnOnce(&mut GatewayConfig)) -> TestConfig {
    TestConfig::tenant("acme")
        .api_key("acme-key-0123456789")
        .tickets(&[("t1", "u1"), ("t2", "u2")])
        .ext_allow(&["room:*", "chat:*"])
        .policy(|p| p.sessions.max_sessions_per_user = 100)
        .gateway(gateway)
}

/// Pings every 200 ms, idle timeout 600 ms.
fn heartbeat() -> TestConfig {
    cfg(|g| {
        g.ping_interval_ms = 200;
        g.idle_timeout_ms = 600;
    })
}

#[tokio::test]
async fn drain_flushes_reliable_then_closes_1001_and_returns_within_grace() {
    let mut gw = TestGateway::start(cfg(|g| g.drain_grace_ms = 3000)).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = gw
            .client("acme", if i % 2 == 0 { "t1" } else { "t2" })
            .await;
        c.join("r").await;
        clients.push(c);
    }
    // Queue reliable traffic right before the signal: it must arrive before 1001.
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/v1/api/tenants/acme/publish"))
        .bearer_auth("acme-key-0123456789")
        .json(&json!({"room":"r","svc":"news","type":"final","data":1}))
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status().as_u16(), 200);
    let stop = tokio::spawn({
        let shutdown = gw.shutdown.clone();
        async move { shutdown.cancel() }
    });
    stop.await.expect("cancel");
    let mut readers = Vec::new();
    for mut c in clients {
        readers.push(tokio::spawn(async move {
            let mut saw_final = false;
            loop {
                match c.try_recv(Duration::from_secs(5)).await {
                    Some(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                        if t.as_str().contains("\"final\"") {
                            saw_final = true;
                        }
                    }
                    Some(tokio_tungstenite::tungstenite::Message::Close(f)) => {
                        return (saw_final, f.map(|f| u16::from(f.code)));
                    }
                    Some(_) => {}
                    None => return (saw_final, None),
                }
            }
        }));
    }
    for r in readers {
        let (saw_final, code) = r.await.expect("reader");
        assert!(
            saw_final,
            "reliable message sent before the signal was lost"
        );
        assert_eq!(code, Some(1001));
    }
    let took = gw.stop().await;
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
}

#[tokio::test]
async fn drain_gives_up_after_the_grace_period() {
    let mut gw = TestGateway::start(cfg(|g| g.drain_grace_ms = 500)).await;
    // A client that never reads and never answers the close handshake.
    let _stuck = gw.client("acme", "t1").await;
    let readyz = format!("http://{}/readyz", gw.addr);
    assert_eq!(
        reqwest::get(&readyz)
            .await
            .expect("readyz")
            .status()
            .as_u16(),
        200
    );
    let took = gw.stop().await;
    assert!(took < Duration::from_secs(4), "run returned after {took:?}");
    // Its session was aborted at the end of the grace period, not left to
    // wait out the close handshake (2 s) in the background.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), gw.gw.sessions.wait())
            .await
            .is_ok(),
        "{} session tasks still running after the drain",
        gw.gw.sessions.len()
    );
    assert_eq!(
        gw.gw
            .tenant("acme")
            .expect("tenant")
            .broker
            .stats()
            .sessions,
        0
    );
}

/// A client that reads gets pings and its pongs keep it alive. Real time: the
/// gateway must see each pong before the idle deadline, which a frozen clock
/// cannot wait for (the gateway's receipt of a pong is not observable).
#[tokio::test]
async fn clients_answering_pings_stay_connected() {
    let gw = TestGateway::start(heartbeat()).await;
    let mut c = gw.client("acme", "t1").await;
    // The client library answers pings automatically only while it reads.
    let start = tokio::time::Instant::now();
    let mut pings = 0;
    use futures_util::StreamExt;
    while start.elapsed() < Duration::from_millis(1500) {
        match tokio::time::timeout(Duration::from_millis(100), c.ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => {
                panic!("closed while answering pings")
            }
            _ => {}
        }
    }
    assert!(pings >= 3, "got {pings} pings");
}

/// A silent client (reads pings, never answers) is cut with 4003 at the idle
/// timeout, not before.
#[tokio::test]
async fn silent_sessions_are_closed_with_4003_at_the_idle_timeout() {
    let gw = TestGateway::start(heartbeat()).await;
    let clock = FrozenClock::freeze();
    // A raw client: it reads frames without answering pings.
    let mut silent = RawWs::connect(gw.addr, "/v1/ws?tenant=acme&ticket=t2").await;
    clock
        .real_timeout(WAIT, silent.read_data())
        .await
        .expect("sys.authed");
    clock.advance(Duration::from_millis(550)).await;
    let mut pings = 0;
    while let Some(f) = clock
        .real_timeout(Duration::from_millis(200), silent.read_frame())
        .await
    {
        let f = f.expect("the session is open before the idle timeout");
        assert_eq!(f.opcode, PING, "only pings before the idle timeout: {f:?}");
        pings += 1;
    }
    assert_eq!(pings, 2, "pings at 200 and 400 ms");
    clock.advance(Duration::from_millis(100)).await;
    let code = clock
        .real_timeout(WAIT, silent.close_code())
        .await
        .expect("a close frame after the idle timeout");
    assert_eq!(code, Some(Some(4003)));
}
