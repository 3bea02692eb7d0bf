//! Config hot reload (SPEC §9): a valid file changes policy for new messages of
//! existing sessions; an invalid file is refused whole.

mod common;

use common::{TestConfig, TestGateway, metric};
use serde_json::json;
use wsprism::config::{AuthMode, JwtAlgorithm};

/// Tenant `acme` allowing `allow`, with a frame limit and users (`ticket -> user`).
fn cfg(allow: &[&str], max_frame_bytes: usize, tickets: &[(&str, &str)]) -> TestConfig {
    TestConfig::tenant("acme")
        .tickets(tickets)
        .limits(|l| l.max_frame_bytes = max_frame_bytes)
        .ext_allow(allow)
}

async fn wait_for_reloads(gw: &TestGateway, result: &str, at_least: f64) {
    gw.metric_at_least(
        &format!("wsprism_config_reloads_total{{result=\"{result}\"}}"),
        at_least,
    )
    .await;
}

#[tokio::test]
async fn file_change_applies_to_existing_sessions_and_bad_files_are_refused() {
    let gw = TestGateway::start_with_file(cfg(&["room:*"], 65536, &[("t1", "u1")])).await;
    let path = gw.config_path.clone().expect("config path");
    let mut c = gw.client("acme", "t1").await;
    c.join("r").await;
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"x"},"seq":1}))
        .await;
    assert_eq!(c.recv_type("error").await["data"]["code"], "NOT_ALLOWED");

    // Allow chat and add a ticket: the existing session may chat at once.
    std::fs::write(
        &path,
        cfg(&["room:*", "chat:*"], 65536, &[("t1", "u1"), ("t2", "u2")]).build(),
    )
    .expect("write");
    wait_for_reloads(&gw, "ok", 1.0).await;
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"x"},"seq":2}))
        .await;
    assert_eq!(c.recv_type("msg").await["data"]["msg"], "x");
    let _d = gw.client("acme", "t2").await;

    // Broken YAML, an unknown key and an empty file are refused whole.
    for bad in ["version: 1\ntenants: [", "version: 1\nbogus: true\n", ""] {
        let before = metric(
            &gw.metrics().await,
            "wsprism_config_reloads_total{result=\"error\"}",
        );
        std::fs::write(&path, bad).expect("write");
        wait_for_reloads(&gw, "error", before + 1.0).await;
    }
    // The previous config still serves, sessions are intact.
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"y"},"seq":3}))
        .await;
    assert_eq!(c.recv_type("msg").await["data"]["msg"], "y");
    let _e = gw.client("acme", "t2").await;
}

#[tokio::test]
async fn explicit_reload_changes_limits_and_removes_tenants() {
    let gw = TestGateway::start_with_file(cfg(&["room:*"], 65536, &[("t1", "u1")])).await;
    let path = gw.config_path.clone().expect("path");
    let mut c = gw.client("acme", "t1").await;
    std::fs::write(&path, cfg(&["room:*"], 256, &[("t1", "u1")]).build()).expect("write");
    assert!(wsprism::reload::reload(&gw.gw, &path));
    // The new frame limit applies to the existing session's next message.
    c.send_text(&format!(
        r#"{{"v":1,"svc":"room","type":"join","room":"{}"}}"#,
        "x".repeat(300)
    ))
    .await;
    assert_eq!(c.recv_close().await, Some(1009));

    // A config without the tenant closes its sessions with 1001 and refuses new ones.
    let mut d = gw.client("acme", "t1").await;
    std::fs::write(
        &path,
        TestConfig::tenant("beta").tickets(&[("b", "ub")]).build(),
    )
    .expect("write");
    assert!(wsprism::reload::reload(&gw.gw, &path));
    assert_eq!(d.recv_close().await, Some(1001));
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=t1", &[])
            .await
            .0,
        404
    );
    let _b = gw.client("beta", "b").await;
}

#[tokio::test]
async fn a_tenant_that_fails_to_compile_refuses_the_whole_reload() {
    let gw = TestGateway::start_with_file(cfg(&["room:*"], 65536, &[("t1", "u1")])).await;
    let path = gw.config_path.clone().expect("path");
    // Valid YAML, but the JWT secret variable does not exist: refused at compile.
    let text = TestConfig::tenant("acme")
        .tickets(&[("t1", "u1"), ("t9", "u9")])
        .and_tenant("jwty")
        .auth(|a| {
            a.mode = AuthMode::Jwt;
            a.algorithm = Some(JwtAlgorithm::HS256);
            a.secret_env = Some("WSPRISM_TEST_SURELY_UNSET_VAR".into());
        })
        .build();
    std::fs::write(&path, text).expect("write");
    assert!(!wsprism::reload::reload(&gw.gw, &path));
    // t9 was not added: nothing of the refused file applies.
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=t9", &[])
            .await
            .0,
        401
    );
    let _c = gw.client("acme", "t1").await;
}
