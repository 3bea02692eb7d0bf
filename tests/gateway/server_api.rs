//! Server API on the admin listener (SPEC §7).

use crate::common;

use common::{TestConfig, TestGateway};
use serde_json::{Value, json};

fn cfg() -> TestConfig {
    TestConfig::tenant("acme")
        .api_key("acme-key-0123456789")
        .tickets(&[("t1", "u1"), ("t2", "u2")])
        .limits(|l| l.max_frame_bytes = 1024)
        .ext_allow(&["room:*"])
        .route("echo", "echo")
        .and_tenant("other")
        .api_key("other-key-0123456789")
        .tickets(&[("t1", "u1")])
        .ext_allow(&["room:*"])
}

async fn call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = gw.admin_url(path);
    let mut req = match method {
        "GET" => client.get(url),
        _ => client.post(url),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

const KEY: Option<&str> = Some("acme-key-0123456789");

#[tokio::test]
async fn auth_401_403() {
    let gw = TestGateway::start(cfg()).await;
    let p = "/v1/api/tenants/acme/stats";
    assert_eq!(call(&gw, "GET", p, None, None).await.0, 401);
    assert_eq!(
        call(&gw, "GET", p, Some("wrong-key-0123456789"), None)
            .await
            .0,
        401
    );
    let (status, body) = call(&gw, "GET", p, Some("other-key-0123456789"), None).await;
    assert_eq!(status, 403);
    assert_eq!(body["code"], "FORBIDDEN");
    assert_eq!(call(&gw, "GET", p, KEY, None).await.0, 200);
    // The admin API is not on the public listener.
    let public = reqwest::get(format!("http://{}{p}", gw.addr))
        .await
        .expect("get");
    assert_eq!(public.status().as_u16(), 404);
}

#[tokio::test]
async fn publish_send_presence_stats() {
    let gw = TestGateway::start(cfg()).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let mut foreign = gw.client("other", "t1").await;
    a.join("lobby").await;
    b.join("lobby").await;
    foreign.join("lobby").await;

    let (status, body) = call(
        &gw,
        "POST",
        "/v1/api/tenants/acme/publish",
        KEY,
        Some(json!({"room":"lobby","svc":"news","type":"headline","data":{"t":"hi"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"delivered": 2}));
    for c in [&mut a, &mut b] {
        let m = c.recv_type("headline").await;
        assert_eq!(
            m,
            json!({"v":1,"svc":"news","type":"headline","room":"lobby","data":{"t":"hi"}})
        );
    }
    foreign
        .expect_silence(std::time::Duration::from_millis(200))
        .await;

    let (status, body) = call(
        &gw,
        "POST",
        "/v1/api/tenants/acme/users/u2/send",
        KEY,
        Some(json!({"svc":"inbox","type":"note","data":[1,2]})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    assert_eq!(b.recv_type("note").await["data"], json!([1, 2]));

    let (status, body) = call(
        &gw,
        "GET",
        "/v1/api/tenants/acme/rooms/lobby/presence",
        KEY,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["users"], json!(["u1", "u2"]));

    let (_, stats) = call(&gw, "GET", "/v1/api/tenants/acme/stats", KEY, None).await;
    assert_eq!(
        (
            stats["sessions"].as_u64(),
            stats["users"].as_u64(),
            stats["rooms"].as_u64()
        ),
        (Some(2), Some(2), Some(1))
    );

    let (_, plugins) = call(&gw, "GET", "/v1/api/tenants/acme/plugins", KEY, None).await;
    assert_eq!(plugins["plugins"][0]["name"], "echo");
    assert_eq!(plugins["plugins"][0]["state"], "missing");
}

#[tokio::test]
async fn refusals() {
    let gw = TestGateway::start(cfg()).await;
    let publish = "/v1/api/tenants/acme/publish";
    let (status, body) = call(
        &gw,
        "POST",
        publish,
        KEY,
        Some(json!({"room":"r","svc":"sys","type":"x"})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("NOT_ALLOWED")));
    let (status, body) = call(&gw, "POST", publish, KEY, Some(json!({"room":"r"}))).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("BAD_REQUEST")));
    let big = "x".repeat(2000);
    let (status, body) = call(
        &gw,
        "POST",
        publish,
        KEY,
        Some(json!({"room":"r","svc":"a","type":"b","data":big})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
    let (status, _) = call(
        &gw,
        "POST",
        "/v1/api/tenants/acme/users/u1/send",
        KEY,
        Some(json!({"svc":"sys","type":"authed"})),
    )
    .await;
    assert_eq!(status, 403);
    // A body over the API's 1 MiB limit is refused with a code from the same
    // table, not the framework's plain-text rejection.
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, body) = call(
        &gw,
        "POST",
        publish,
        KEY,
        Some(json!({"room":"r","svc":"a","type":"b","data":big})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE"))
    );
}

/// Names follow the wire's rules (1 to 128 bytes, no control characters) on
/// the API as on the Ext Lane and in plugins, and a path the router cannot
/// decode is answered in JSON like every other refusal.
#[tokio::test]
async fn names_and_paths_are_checked_like_the_wire() {
    let gw = TestGateway::start(cfg()).await;
    let publish = "/v1/api/tenants/acme/publish";
    let send = "/v1/api/tenants/acme/users/u1/send";
    let long = "r".repeat(129);
    for (path, body, field) in [
        (publish, json!({"room":"","svc":"a","type":"b"}), "room"),
        (publish, json!({"room":long,"svc":"a","type":"b"}), "room"),
        (
            publish,
            json!({"room":"r","svc":"a\u{0}","type":"b"}),
            "svc",
        ),
        (publish, json!({"room":"r","svc":"a","type":"b\n"}), "type"),
        (publish, json!({"room":"r","svc":"","type":"b"}), "svc"),
        (send, json!({"svc":"a","type":""}), "type"),
        (send, json!({"svc":"a\u{1b}","type":"b"}), "svc"),
    ] {
        let (status, answer) = call(&gw, "POST", path, KEY, Some(body.clone())).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("BAD_REQUEST")),
            "{body}"
        );
        let msg = answer["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with(&format!("{field}: ")), "{body}: {msg}");
    }
    // The longest name that is allowed still goes through.
    let max = "r".repeat(128);
    let (status, answer) = call(
        &gw,
        "POST",
        publish,
        KEY,
        Some(json!({"room":max,"svc":"a","type":"b"})),
    )
    .await;
    assert_eq!((status, answer), (200, json!({"delivered": 0})));
    let (status, answer) = call(
        &gw,
        "GET",
        "/v1/api/tenants/acme/rooms/%FF%FE/presence",
        KEY,
        None,
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{answer}"
    );
}

#[tokio::test]
async fn disconnect_closes_with_4004() {
    let gw = TestGateway::start(cfg()).await;
    let mut a1 = gw.client("acme", "t1").await;
    let mut a2 = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let (status, body) = call(
        &gw,
        "POST",
        "/v1/api/tenants/acme/users/u1/disconnect",
        KEY,
        Some(json!({"reason":"banned"})),
    )
    .await;
    assert_eq!((status, body), (200, json!({"disconnected": 2})));
    for c in [&mut a1, &mut a2] {
        let n = c.recv_type("disconnected").await;
        assert_eq!(n["data"]["reason"], "banned");
        assert_eq!(c.recv_close().await, Some(4004));
    }
    assert_eq!(b.join("r").await["type"], "joined");
    // Without a body too.
    let resp = reqwest::Client::new()
        .post(gw.admin_url("/v1/api/tenants/acme/users/u2/disconnect"))
        .bearer_auth("acme-key-0123456789")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(b.recv_close().await, Some(4004));
}

#[tokio::test]
async fn metrics_are_only_on_the_admin_listener() {
    let gw = TestGateway::start(cfg()).await;
    let _a = gw.client("acme", "t1").await;
    let text = gw.metrics().await;
    assert!(
        text.contains("wsprism_sessions_active{tenant=\"acme\"} 1"),
        "{text}"
    );
    assert!(text.contains("wsprism_handshakes_total{result=\"ok\",tenant=\"acme\"} 1"));
    let public = reqwest::get(format!("http://{}/metrics", gw.addr))
        .await
        .expect("get");
    assert_eq!(public.status().as_u16(), 404);
}

/// Issue 11 item 8: failed API keys are throttled per client address: after
/// more than 20 failures in a minute the address gets 429 with `Retry-After`
/// before any key is checked (a correct one too), while another address is
/// unaffected.
#[tokio::test]
async fn failed_api_keys_are_throttled_per_address() {
    let gw = TestGateway::start(cfg()).await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .expect("client")
    };
    let attacker = from([127, 0, 0, 2]);
    let url = gw.admin_url("/v1/api/tenants/acme/stats");
    let status = |c: &reqwest::Client, key: &'static str| {
        let req = c.get(&url).bearer_auth(key);
        async move { req.send().await.expect("request") }
    };
    // The 21st failure is the one past the budget; it is still answered.
    for i in 0..21 {
        let r = status(&attacker, "guess").await;
        assert_eq!(r.status().as_u16(), 401, "attempt {i}");
    }
    let r = status(&attacker, "guess").await;
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // Throttled means no key is looked at, a right one included.
    assert_eq!(
        status(&attacker, "acme-key-0123456789")
            .await
            .status()
            .as_u16(),
        429
    );
    // Another address is served.
    let operator = from([127, 0, 0, 3]);
    assert_eq!(
        status(&operator, "acme-key-0123456789")
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(status(&operator, "guess").await.status().as_u16(), 401);
}

/// Publishes `n` lossy messages of ~16 KiB to `room`, with `key` when given.
async fn stream(gw: &TestGateway, room: &str, key: Option<&str>, n: u32) {
    let pad = "x".repeat(16 * 1024);
    for i in 0..n {
        let mut body = json!({"room": room, "svc": "game", "type": "pos", "qos": "lossy",
                              "data": {"n": i, "pad": pad}});
        if let Some(k) = key {
            body["key"] = json!(k);
        }
        let (status, v) = call(gw, "POST", "/v1/api/tenants/acme/publish", KEY, Some(body)).await;
        assert_eq!(status, 200, "{v}");
    }
}

/// The `data.n` of every frame `c` receives until it is quiet for 500 ms.
async fn positions(c: &mut common::Client) -> Vec<u64> {
    let mut seen = Vec::new();
    while let Some(m) = c.try_recv(std::time::Duration::from_millis(500)).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("json");
            if v["type"] == "pos" {
                seen.push(v["data"]["n"].as_u64().expect("n"));
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_keyed_lossy_publish_is_latest_wins_for_a_slow_receiver() {
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .api_key("acme-key-0123456789")
            .tickets(&[("t1", "u1"), ("t2", "u2")])
            .limits(|l| l.max_frame_bytes = 64 * 1024)
            .ext_allow(&["room:*"])
            .gateway(|g| {
                g.writer_send_timeout_ms = 60_000;
                g.queues.lossy_capacity = 64;
                g.queues.max_bytes = 4 * 1024 * 1024;
            }),
    )
    .await;
    let p = "/v1/api/tenants/acme/publish";
    // A key needs lossy QoS and a sane length.
    let (status, v) = call(
        &gw,
        "POST",
        p,
        KEY,
        Some(json!({"room":"k","svc":"game","type":"pos","data":1,"key":"me"})),
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("BAD_REQUEST")),
        "{v}"
    );
    let long = "k".repeat(257);
    let (status, _) = call(
        &gw,
        "POST",
        p,
        KEY,
        Some(json!({"room":"k","svc":"game","type":"pos","data":1,"qos":"lossy","key":long})),
    )
    .await;
    assert_eq!(status, 400);

    // Two receivers stop reading: one room gets keyed positions, the other
    // the same stream without a key.
    let mut keyed = gw.client("acme", "t1").await;
    let mut plain = gw.client("acme", "t2").await;
    keyed.join("k").await;
    plain.join("u").await;
    const N: u32 = 1000;
    stream(&gw, "k", Some("player-7"), N).await;
    stream(&gw, "u", None, N).await;
    let latest = positions(&mut keyed).await;
    let backlog = positions(&mut plain).await;
    assert_eq!(
        latest.last(),
        Some(&u64::from(N - 1)),
        "the newest position arrives"
    );
    assert_eq!(backlog.last(), Some(&u64::from(N - 1)));
    assert!(latest.windows(2).all(|w| w[0] < w[1]), "in order");
    assert!(
        backlog.len() >= latest.len() + 32,
        "unkeyed {} frames, keyed {}",
        backlog.len(),
        latest.len()
    );
}
