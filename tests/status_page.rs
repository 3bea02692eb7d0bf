//! The status page on the admin listener, rendered by headless Chromium (SPEC §9).
//! `scripts/test.sh` installs Chromium; without it this test says so and passes.

mod common;

use std::process::Command;

use common::{TestConfig, TestGateway};

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

    let url = gw.admin_url("/?tenant=acme&key=acme-key-0123456789");
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
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
