//! Config hot reload (SPEC §9): a valid file changes policy for new messages of
//! existing sessions; an invalid file is refused whole.

use crate::common;

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

/// Issue 12 item 6: a config mounted from a Kubernetes ConfigMap is a symlink
/// whose target changes by an atomic swap of the `..data` symlink, never
/// touching the file's own name. The watch follows it by content; an
/// unrelated file in the directory reloads nothing.
#[tokio::test]
async fn configmap_symlink_swaps_reload_and_unrelated_events_do_not() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let v1 = cfg(&["room:*"], 65536, &[("t1", "u1")]).build();
    let v2 = cfg(&["room:*"], 65536, &[("t1", "u1"), ("t2", "u2")]).build();
    std::fs::create_dir(d.join("..2026_11_30_a")).expect("mkdir");
    std::fs::write(d.join("..2026_11_30_a/wsprism.yaml"), &v1).expect("write");
    symlink("..2026_11_30_a", d.join("..data")).expect("link data");
    symlink("..data/wsprism.yaml", d.join("wsprism.yaml")).expect("link file");
    let path = d.join("wsprism.yaml");
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = wsprism::Server::bind(
        wsprism::config::load(&path).expect("config"),
        wsprism::ServerOptions {
            config_path: Some(path.clone()),
            bind: Some((loopback, loopback)),
            ..wsprism::ServerOptions::default()
        },
    )
    .await
    .expect("bind");
    let (addr, admin) = (
        server.local_addr().expect("addr"),
        server.admin_addr().expect("admin"),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    let status = |ticket: &'static str| async move {
        let url = format!("ws://{addr}/v1/ws?tenant=acme&ticket={ticket}");
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    let reloads = || async move {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        metric(&text, "wsprism_config_reloads_total{result=\"ok\"}")
    };
    assert_eq!(status("t2").await, 401);

    // An unrelated file changes: nothing is reloaded.
    std::fs::write(d.join("notes.txt"), "hello").expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(reloads().await, 0.0);

    // The kubelet's update: a new data dir, then an atomic swap of `..data`.
    std::fs::create_dir(d.join("..2026_11_30_b")).expect("mkdir");
    std::fs::write(d.join("..2026_11_30_b/wsprism.yaml"), &v2).expect("write");
    symlink("..2026_11_30_b", d.join("..data_tmp")).expect("link tmp");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    common::eventually("the swapped config to serve t2", || async {
        match status("t2").await {
            101 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(reloads().await, 1.0);
    stop.cancel();
    let _ = task.await;
}
