//! Ext Lane (SPEC §4): envelope checks, error codes with `seq`, acks, allowlist,
//! rate limits, error budget, built-in `room` and `chat`.

use crate::common;

use std::time::Duration;

use common::{TestConfig, TestGateway, metric};
use serde_json::json;
use wsprism::config::RateLimitScope;

/// Tenant `acme` with users u1..u3 (tickets t1..t3).
fn acme() -> TestConfig {
    TestConfig::tenant("acme").tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
}

/// [`acme`] allowing rooms only.
fn rooms_only() -> TestConfig {
    acme().ext_allow(&["room:*"])
}

/// [`acme`] with rooms, `chat:send`, an `echo` route to a plugin (not loaded:
/// no plugin host) and an unrouted `ghost`.
fn open() -> TestConfig {
    acme()
        .ext_allow(&["room:*", "chat:send", "echo:*", "ghost:*"])
        .rooms(|r| r.presence_events = true)
        .route("echo", "echo")
}

async fn expect_error(c: &mut common::Client, code: &str, seq: Option<u64>) {
    let e = c.recv_type("error").await;
    assert_eq!(e["svc"], "sys");
    assert_eq!(e["data"]["code"], code, "{e}");
    assert!(e["data"]["msg"].is_string());
    match seq {
        Some(s) => assert_eq!(e["seq"], s, "{e}"),
        None => assert!(e.get("seq").is_none(), "{e}"),
    }
}

#[tokio::test]
async fn malformed_envelopes_get_errors_and_the_session_survives() {
    let gw = TestGateway::start(open()).await;
    let mut c = gw.client("acme", "t1").await;
    c.send_text("not json").await;
    expect_error(&mut c, "BAD_REQUEST", None).await;
    c.send_text(r#"{"v":2,"svc":"room","type":"join","room":"r","seq":4}"#)
        .await;
    expect_error(&mut c, "UNSUPPORTED_VERSION", Some(4)).await;
    c.send_text(r#"{"v":1,"svc":"room","seq":5}"#).await;
    expect_error(&mut c, "BAD_REQUEST", Some(5)).await;
    c.send_text(r#"{"v":1,"svc":7,"type":"x","seq":6}"#).await;
    expect_error(&mut c, "BAD_REQUEST", Some(6)).await;
    let deep = format!(
        r#"{{"v":1,"svc":"room","type":"join","room":"r","seq":8,"data":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    c.send_text(&deep).await;
    expect_error(&mut c, "BAD_REQUEST", Some(8)).await;
    // Binary garbage on a lane that needs an allowlisted svc is refused silently by
    // default; text keeps working.
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":"r","seq":9}))
        .await;
    let joined = c.recv_type("joined").await;
    assert_eq!(joined["seq"], 9);
    let ack = c.recv_type("ack").await;
    assert_eq!(ack["seq"], 9);
    assert_eq!(ack["svc"], "sys");
}

#[tokio::test]
async fn allowlist_is_deny_by_default_and_matches_patterns() {
    let gw = TestGateway::start(open()).await;
    let mut c = gw.client("acme", "t1").await;
    c.join("r").await;
    // chat:send allowed; chat:edit is not.
    c.send_json(json!({"v":1,"svc":"chat","type":"edit","room":"r","seq":1}))
        .await;
    expect_error(&mut c, "NOT_ALLOWED", Some(1)).await;
    c.send_json(json!({"v":1,"svc":"nope","type":"x","seq":2}))
        .await;
    expect_error(&mut c, "NOT_ALLOWED", Some(2)).await;
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"hi"},"seq":3}))
        .await;
    let m = c.recv_type("msg").await;
    assert_eq!(m["data"]["msg"], "hi");
    assert_eq!(c.recv_type("ack").await["seq"], 3);

    // An empty allowlist admits nothing, not even room.
    let gw2 = TestGateway::start(acme()).await;
    let mut d = gw2.client("acme", "t1").await;
    d.send_json(json!({"v":1,"svc":"room","type":"join","room":"r","seq":1}))
        .await;
    expect_error(&mut d, "NOT_ALLOWED", Some(1)).await;
    let m = gw2.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wsprism_policy_refusals_total{lane=\"ext\",reason=\"not_allowed\",tenant=\"acme\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn unrouted_and_unloaded_services() {
    let gw = TestGateway::start(open()).await;
    let mut c = gw.client("acme", "t1").await;
    // Allowed but not routed anywhere.
    c.send_json(json!({"v":1,"svc":"ghost","type":"x","seq":1}))
        .await;
    expect_error(&mut c, "UNKNOWN_SERVICE", Some(1)).await;
    // Routed to a plugin that is not loaded (no plugin host in this test).
    c.send_json(json!({"v":1,"svc":"echo","type":"x","seq":2}))
        .await;
    expect_error(&mut c, "SERVICE_UNAVAILABLE", Some(2)).await;
}

#[tokio::test]
async fn rate_limit_counts_messages_and_refuses_the_excess() {
    let gw = TestGateway::start(
        rooms_only()
            .rate_limit(1, 5)
            .policy(|p| p.error_budget.max_errors = 0),
    )
    .await;
    let mut c = gw.client("acme", "t1").await;
    for i in 0..8u64 {
        c.send_json(json!({"v":1,"svc":"room","type":"presence","room":"r","seq":i}))
            .await;
    }
    let mut not_in_room = 0;
    let mut limited = 0;
    for _ in 0..8 {
        let e = c.recv_type("error").await;
        match e["data"]["code"].as_str() {
            Some("NOT_IN_ROOM") => not_in_room += 1,
            Some("RATE_LIMITED") => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(not_in_room, 5, "the burst passes");
    assert_eq!(limited, 3, "the rest is refused");
    // Other sessions have their own bucket (scope: connection).
    let mut d = gw.client("acme", "t2").await;
    assert_eq!(d.join("r").await["type"], "joined");
}

#[tokio::test]
async fn user_scope_shares_one_bucket_across_sessions() {
    let gw = TestGateway::start(rooms_only().rate_limit(1, 3).policy(|p| {
        p.rate_limit_scope = RateLimitScope::User;
        p.error_budget.max_errors = 0;
    }))
    .await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t1").await;
    for _ in 0..3 {
        a.send_json(json!({"v":1,"svc":"room","type":"join","room":"r"}))
            .await;
        a.recv_type("joined").await;
    }
    b.send_json(json!({"v":1,"svc":"room","type":"join","room":"r","seq":1}))
        .await;
    expect_error(&mut b, "RATE_LIMITED", None).await;
    let mut other = gw.client("acme", "t2").await;
    assert_eq!(other.join("r").await["type"], "joined");
}

#[tokio::test]
async fn repeated_abuse_closes_with_1008() {
    let gw = TestGateway::start(rooms_only().policy(|p| {
        p.error_budget.max_errors = 5;
        p.error_budget.window_ms = 60_000;
    }))
    .await;
    let mut c = gw.client("acme", "t1").await;
    let mut bystander = gw.client("acme", "t2").await;
    for _ in 0..10 {
        c.send_text("garbage").await;
    }
    assert_eq!(c.recv_close().await, Some(1008));
    assert_eq!(bystander.join("r").await["type"], "joined");
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let gw = TestGateway::start(rooms_only().limits(|l| l.max_frame_bytes = 1024)).await;
    let mut c = gw.client("acme", "t1").await;
    c.send_text(&format!(
        r#"{{"v":1,"svc":"room","type":"join","room":"{}"}}"#,
        "x".repeat(2000)
    ))
    .await;
    assert_eq!(c.recv_close().await, Some(1009));
    // Binary too.
    let mut d = gw.client("acme", "t2").await;
    d.send_bin(&vec![1u8; 5000]).await;
    assert_eq!(d.recv_close().await, Some(1009));
}

#[tokio::test]
async fn rooms_join_leave_presence_and_member_events() {
    let gw = TestGateway::start(open()).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let ja = a.join("match:1").await;
    assert_eq!(ja["svc"], "sys");
    assert_eq!(ja["room"], "match:1");
    assert_eq!(ja["data"], json!({"room":"match:1","peer":1,"members":1}));
    let jb = b.join("match:1").await;
    assert_eq!(jb["data"], json!({"room":"match:1","peer":2,"members":2}));
    let ev = a.recv_type("member_joined").await;
    assert_eq!(ev["svc"], "room");
    assert_eq!(ev["room"], "match:1");
    assert_eq!(ev["data"], json!({"user":"u2","peer":2}));

    a.send_json(json!({"v":1,"svc":"room","type":"presence","room":"match:1"}))
        .await;
    let p = a.recv_type("presence").await;
    assert_eq!(p["data"]["users"], json!(["u1", "u2"]));

    b.send_json(json!({"v":1,"svc":"room","type":"leave","room":"match:1","seq":3}))
        .await;
    let left = b.recv_type("left").await;
    assert_eq!(left["seq"], 3);
    let ev = a.recv_type("member_left").await;
    assert_eq!(ev["data"], json!({"user":"u2","peer":2}));
    b.send_json(json!({"v":1,"svc":"room","type":"leave","room":"match:1","seq":4}))
        .await;
    expect_error(&mut b, "NOT_IN_ROOM", Some(4)).await;
    b.send_json(json!({"v":1,"svc":"room","type":"presence","room":"match:1","seq":5}))
        .await;
    expect_error(&mut b, "NOT_IN_ROOM", Some(5)).await;
    b.send_json(json!({"v":1,"svc":"room","type":"join","seq":6}))
        .await;
    expect_error(&mut b, "BAD_REQUEST", Some(6)).await;

    // Disconnecting announces member_left too.
    a.join("match:2").await;
    b.join("match:2").await;
    a.recv_type("member_joined").await;
    drop(b);
    let ev = a.recv_type("member_left").await;
    assert_eq!(ev["room"], "match:2");
}

#[tokio::test]
async fn room_caps() {
    let gw = TestGateway::start(rooms_only().limits(|l| {
        l.max_rooms_total = 2;
        l.max_users_per_room = 2;
        l.max_rooms_per_user = 2;
    }))
    .await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let mut c = gw.client("acme", "t3").await;
    a.join("r1").await;
    b.join("r1").await;
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":"r1","seq":1}))
        .await;
    expect_error(&mut c, "ROOM_FULL", Some(1)).await;
    a.join("r2").await;
    a.send_json(json!({"v":1,"svc":"room","type":"join","room":"r3","seq":2}))
        .await;
    expect_error(&mut a, "ROOM_LIMIT", Some(2)).await;
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":"r3","seq":3}))
        .await;
    expect_error(&mut c, "ROOM_LIMIT", Some(3)).await;
}

#[tokio::test]
async fn chat_reaches_every_member_and_needs_membership() {
    let gw = TestGateway::start(open()).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    let mut outsider = gw.client("acme", "t3").await;
    a.join("r").await;
    b.join("r").await;
    a.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"hello"}}))
        .await;
    for c in [&mut a, &mut b] {
        let m = c.recv_type("msg").await;
        assert_eq!(
            m,
            json!({"v":1,"svc":"chat","type":"msg","room":"r","data":{"from":"u1","msg":"hello"}})
        );
    }
    outsider
        .send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"x"},"seq":1}))
        .await;
    expect_error(&mut outsider, "NOT_IN_ROOM", Some(1)).await;
    a.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":5},"seq":2}))
        .await;
    expect_error(&mut a, "BAD_REQUEST", Some(2)).await;
    outsider.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn tenant_scope_shares_one_bucket_across_users() {
    let gw = TestGateway::start(rooms_only().rate_limit(1, 2).policy(|p| {
        p.rate_limit_scope = RateLimitScope::Tenant;
        p.error_budget.max_errors = 0;
    }))
    .await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("r").await;
    b.join("r").await;
    let mut c = gw.client("acme", "t3").await;
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":"r"}))
        .await;
    expect_error(&mut c, "RATE_LIMITED", None).await;
}

/// `sys.ping` is the application-level liveness probe a browser client can
/// send (it cannot send WebSocket pings): answered with `sys.pong` echoing
/// `seq` under a deny-all allowlist, and never counted as a refusal, so a
/// client probing after sleep does not spend its error budget.
#[tokio::test]
async fn sys_ping_is_answered_with_pong() {
    let gw = TestGateway::start(acme().policy(|p| p.error_budget.max_errors = 2)).await;
    let mut c = gw.client("acme", "t1").await;
    for seq in 1..=5u64 {
        c.send_json(json!({"v":1,"svc":"sys","type":"ping","seq":seq}))
            .await;
        let pong = c.recv_json().await;
        assert_eq!(
            (
                pong["svc"].as_str(),
                pong["type"].as_str(),
                pong["seq"].as_u64()
            ),
            (Some("sys"), Some("pong"), Some(seq)),
            "{pong}"
        );
    }
    c.send_json(json!({"v":1,"svc":"sys","type":"ping"})).await;
    let pong = c.recv_json().await;
    assert!(
        pong["type"] == "pong" && pong.get("seq").is_none(),
        "{pong}"
    );
    // Other sys types stay refused.
    c.send_json(json!({"v":1,"svc":"sys","type":"kicked","seq":9}))
        .await;
    expect_error(&mut c, "NOT_ALLOWED", Some(9)).await;
    // Six pings and one refusal: only the refusal was counted.
    let m = gw.metrics().await;
    let refusals: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("wsprism_policy_refusals_total{") && l.contains("tenant=\"acme\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refusals, 1.0, "{m}");
}
