//! The status page on the admin listener, rendered by headless Chromium (SPEC §9).
//! `scripts/test.sh` installs Chromium; without it this test says so and passes.

use crate::common;

use std::process::Command;

use common::redis::RedisServer;
use common::{TestConfig, TestGateway, eventually};
use wsprism::config::ClusterMode;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The DOM of `url` after the page's scripts ran in headless Chromium.
async fn render(browser: &str, url: String) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = tokio::task::spawn_blocking({
        let browser = browser.to_owned();
        let profile = profile.path().to_path_buf();
        move || {
            Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--virtual-time-budget=5000",
                    "--dump-dom",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(url)
                .output()
                .expect("run chromium")
        }
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_live_sessions_rooms_and_plugins() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no Chromium on this machine (scripts/test.sh installs it)");
        return;
    };
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .api_key("acme-key-0123456789")
            .tickets(&[("t1", "u1"), ("t2", "u2")])
            .ext_allow(&["room:*"])
            .route("echo", "echo"),
    )
    .await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("lobby").await;
    b.join("lobby").await;

    // The page itself is served with a restrictive CSP.
    let resp = reqwest::get(gw.admin_url("/")).await.expect("get /");
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    // Not on the public listener.
    let public = reqwest::get(format!("http://{}/", gw.addr))
        .await
        .expect("get");
    assert_eq!(public.status().as_u16(), 404);

    let dom = render(
        browser,
        gw.admin_url("/?tenant=acme&key=acme-key-0123456789"),
    )
    .await;
    for needle in [
        r#"id="k-sessions">2<"#,
        r#"id="k-users">2<"#,
        r#"id="k-rooms">1<"#,
        "<td>echo</td>",
        "missing",
        "<option selected=\"\">acme</option>",
    ] {
        assert!(
            dom.contains(needle),
            "{needle:?} not rendered; DOM:\n{}",
            &dom[..dom.len().min(4000)]
        );
    }
    assert!(!dom.contains("HTTP 401"), "the API key was refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_lists_the_cluster_nodes() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no Chromium on this machine (scripts/test.sh installs it)");
        return;
    };
    let redis = RedisServer::start();
    let node = |id: &'static str| {
        let url = redis.url();
        TestConfig::tenant("acme")
            .api_key("acme-key-0123456789")
            .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
            .ext_allow(&["room:*"])
            .gateway(move |g| {
                g.cluster.mode = ClusterMode::Redis;
                g.cluster.redis_url = url;
                g.cluster.node_id = id.to_owned();
                g.cluster.node_ttl_ms = 3000;
            })
    };
    let a = TestGateway::start(node("node-a")).await;
    let b = TestGateway::start(node("node-b")).await;
    let _u1 = a.client("acme", "t1").await;
    let _u2 = b.client("acme", "t2").await;
    let _u3 = b.client("acme", "t3").await;
    // Both nodes heartbeat their counts.
    let stats = || async {
        reqwest::Client::new()
            .get(a.admin_url("/v1/api/tenants/acme/stats"))
            .bearer_auth("acme-key-0123456789")
            .send()
            .await
            .expect("stats")
            .json::<serde_json::Value>()
            .await
            .expect("json")
    };
    eventually("both nodes counted", || async {
        stats().await["sessions"] == 3
    })
    .await;

    let dom = render(
        browser,
        a.admin_url("/?tenant=acme&key=acme-key-0123456789"),
    )
    .await;
    for needle in [
        "Redis up · 2 live nodes",
        "<td>node-a</td><td>1</td><td>1</td><td>0</td>",
        "<td>node-b</td><td>2</td><td>2</td><td>0</td>",
        r#"id="k-sessions">3<"#,
    ] {
        assert!(
            dom.contains(needle),
            "{needle:?} not rendered; DOM:\n{}",
            &dom[..dom.len().min(6000)]
        );
    }
}
