//! Graceful drain (SPEC §1), heartbeats and idle timeout (SPEC §6).

mod common;

use std::time::Duration;

use common::TestGateway;
use serde_json::json;

fn cfg(gateway: &str) -> String {
    format!(
        r#"version: 1
gateway:
  handshake_limit: {{ enabled: false }}
{gateway}
tenants:
  - id: acme
    api_keys: ["acme-key-0123456789"]
    auth:
      tickets: {{ t1: u1, t2: u2 }}
    policy:
      ext_allowlist: ["room:*", "chat:*"]
      sessions: {{ max_sessions_per_user: 100 }}
"#
    )
}

#[tokio::test]
async fn drain_flushes_reliable_then_closes_1001_and_returns_within_grace() {
    let mut gw = TestGateway::start(&cfg("  drain_grace_ms: 3000")).await;
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
    let mut gw = TestGateway::start(&cfg("  drain_grace_ms: 500")).await;
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
}

#[tokio::test]
async fn idle_sessions_are_closed_with_4003() {
    let gw = TestGateway::start(&cfg("  ping_interval_ms: 200\n  idle_timeout_ms: 600")).await;
    let mut c = gw.client("acme", "t1").await;
    // The client library answers pings automatically only while it reads; a
    // client that reads gets pings and its pongs keep it alive.
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
    // A silent client (reads nothing, so sends no pongs) is cut with 4003.
    let mut silent = gw.client("acme", "t2").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(silent.recv_close().await, Some(4003));
}
