//! Pre-upgrade decisions (SPEC §3): every HTTP refusal, `sys.authed`, session
//! policies.

use crate::common;

use common::{FrozenClock, TestConfig, TestGateway, WAIT, eventually, metric};
use serde_json::json;
use std::time::Duration;
use wsprism::config::{OnExceed, SessionMode, TenantConfig};

/// Tenant `acme` (users u1..u3, rooms allowed), edited by `edit`, and tenant
/// `other` (user ux).
fn acme(edit: impl FnOnce(&mut TenantConfig)) -> TestConfig {
    TestConfig::tenant("acme")
        .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
        .ext_allow(&["room:*"])
        .with_tenant(edit)
        .and_tenant("other")
        .tickets(&[("x", "ux")])
}

fn plain() -> TestConfig {
    acme(|_| {})
}

#[tokio::test]
async fn authed_is_the_first_frame() {
    let gw = TestGateway::start(plain()).await;
    let mut c = gw.connect("acme", "t1").await.expect("connect");
    let v = c.recv_json().await;
    assert_eq!(v["v"], 1);
    assert_eq!(v["svc"], "sys");
    assert_eq!(v["type"], "authed");
    assert_eq!(v["data"]["tenant"], "acme");
    assert_eq!(v["data"]["user"], "u1");
    let sid = v["data"]["sid"].as_str().expect("sid string");
    assert_eq!(sid.len(), 16);
}

#[tokio::test]
async fn bearer_header_works_for_non_browser_clients() {
    let gw = TestGateway::start(plain()).await;
    let mut req = common::request(&format!("ws://{}/v1/ws?tenant=acme", gw.addr));
    req.headers_mut()
        .insert("Authorization", "Bearer t2".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let mut c = common::Client {
        ws: {
            use futures_util::StreamExt;
            let first = ws.next().await.expect("frame").expect("ok");
            let v: serde_json::Value =
                serde_json::from_str(first.to_text().expect("text")).expect("json");
            assert_eq!(v["data"]["user"], "u2");
            ws
        },
    };
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":"r"}))
        .await;
    assert_eq!(c.recv_json().await["type"], "joined");
}

#[tokio::test]
async fn refusals_have_spec_statuses() {
    let gw = TestGateway::start(plain()).await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case<'_>] = &[
        ("/v1/ws", &[], 400),
        ("/v1/ws?tenant=acme", &[], 400),
        ("/v1/ws?ticket=t1", &[], 400),
        ("/v1/ws?tenant=acme&tenant=acme&ticket=t1", &[], 400),
        // A query that does not decode to UTF-8 is malformed, not an unknown
        // tenant or a wrong ticket.
        ("/v1/ws?tenant=%FF&ticket=t1", &[], 400),
        ("/v1/ws?tenant=acme&ticket=t1%C3", &[], 400),
        ("/v1/ws?tenant=nope&ticket=t1", &[], 404),
        ("/v1/ws?tenant=acme&ticket=wrong", &[], 401),
        // A ticket of another tenant is not valid here.
        ("/v1/ws?tenant=acme&ticket=x", &[], 401),
        (
            "/v1/ws?tenant=acme&ticket=t1",
            &[("Sec-WebSocket-Version", "8")],
            426,
        ),
    ];
    for (path, headers, want) in cases {
        let (status, h) = gw.upgrade_status(path, headers).await;
        assert_eq!(status, *want, "{path} {headers:?}");
        if *want == 426 {
            assert_eq!(
                h.get("sec-websocket-version")
                    .map(|v| v.to_str().unwrap_or("")),
                Some("13")
            );
        }
    }
    // A plain GET without upgrade headers.
    let status = reqwest::get(format!("http://{}/v1/ws?tenant=acme&ticket=t1", gw.addr))
        .await
        .expect("get")
        .status();
    assert_eq!(status.as_u16(), 400);
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "wsprism_handshakes_total{result=\"unauthorized\",tenant=\"acme\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "wsprism_handshakes_total{result=\"unknown_tenant\",tenant=\"_\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn origin_allowlist_is_exact() {
    let gw = TestGateway::start(acme(|t| {
        t.allowed_origins = vec!["https://good.example".into()]
    }))
    .await;
    let path = "/v1/ws?tenant=acme&ticket=t1";
    for (origin, want) in [
        ("https://good.example", 101),
        ("https://good.example.evil.com", 403),
        ("http://good.example", 403),
        ("null", 403),
        ("https://GOOD.example", 403),
    ] {
        let (status, _) = gw.upgrade_status(path, &[("Origin", origin)]).await;
        assert_eq!(status, want, "{origin}");
    }
    // No Origin header (non-browser client) is allowed.
    assert_eq!(gw.upgrade_status(path, &[]).await.0, 101);
}

#[tokio::test]
async fn handshake_rate_limit_answers_429_with_retry_after() {
    let gw = TestGateway::start(plain().gateway(|g| {
        g.handshake_limit.enabled = true;
        g.handshake_limit.per_ip_rps = 1;
        g.handshake_limit.per_ip_burst = 2;
        g.handshake_limit.global_rps = 1000;
        g.handshake_limit.global_burst = 1000;
    }))
    .await;
    let path = "/v1/ws?tenant=acme&ticket=t1";
    assert_eq!(gw.upgrade_status(path, &[]).await.0, 101);
    assert_eq!(gw.upgrade_status(path, &[]).await.0, 101);
    let (status, headers) = gw.upgrade_status(path, &[]).await;
    assert_eq!(status, 429);
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!(retry >= 1);
}

#[tokio::test]
async fn tenant_session_cap_answers_503() {
    let gw = TestGateway::start(acme(|t| t.limits.max_sessions_total = 2)).await;
    let _a = gw.client("acme", "t1").await;
    let _b = gw.client("acme", "t2").await;
    let (status, _) = gw.upgrade_status("/v1/ws?tenant=acme&ticket=t3", &[]).await;
    assert_eq!(status, 503);
    // Other tenants are unaffected.
    let _c = gw.client("other", "x").await;
    drop(_a);
    // The slot frees once the session ends.
    eventually("the ended session's slot to admit t3 (101)", || async {
        let status = gw
            .upgrade_status("/v1/ws?tenant=acme&ticket=t3", &[])
            .await
            .0;
        if status == 101 { Ok(()) } else { Err(status) }
    })
    .await;
}

#[tokio::test]
async fn session_policy_deny_answers_409() {
    let gw = TestGateway::start(acme(|t| {
        let s = &mut t.policy.sessions;
        s.mode = SessionMode::Multi;
        s.max_sessions_per_user = 2;
        s.on_exceed = OnExceed::Deny;
    }))
    .await;
    let _a = gw.client("acme", "t1").await;
    let _b = gw.client("acme", "t1").await;
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=t1", &[])
            .await
            .0,
        409
    );
    // Another user is fine.
    let _c = gw.client("acme", "t2").await;
}

#[tokio::test]
async fn session_policy_kick_oldest_sends_kicked_and_4001() {
    let gw = TestGateway::start(acme(|t| {
        t.policy.sessions.mode = SessionMode::Single;
        t.policy.sessions.on_exceed = OnExceed::KickOldest;
    }))
    .await;
    let mut old = gw.client("acme", "t1").await;
    let mut new = gw.client("acme", "t1").await;
    let kicked = old.recv_json().await;
    assert_eq!(kicked["svc"], "sys");
    assert_eq!(kicked["type"], "kicked");
    assert_eq!(old.recv_close().await, Some(4001));
    // The new session works.
    assert_eq!(new.join("r").await["data"]["members"], 1);
}

#[tokio::test]
async fn draining_gateway_refuses_upgrades_with_503() {
    let gw = TestGateway::start(plain()).await;
    gw.gw.start_drain();
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=t1", &[])
            .await
            .0,
        503
    );
    let ready = reqwest::get(format!("http://{}/readyz", gw.addr))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
}

/// A request head never finished is cut at the 10 s head timeout, not before
/// (frozen clock: the gateway's timer runs in this runtime).
#[tokio::test]
async fn slow_request_heads_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(plain()).await;
    let clock = FrozenClock::freeze();
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /v1/ws?tenant=acme&ticket=t1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    let mut until_closed = async |s: &mut tokio::net::TcpStream| {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    };
    clock.advance(Duration::from_millis(9_900)).await;
    let early = clock
        .real_timeout(Duration::from_millis(200), until_closed(&mut s))
        .await;
    assert!(early.is_none(), "cut before the 10 s head timeout");
    clock.advance(Duration::from_millis(200)).await;
    let cut = clock.real_timeout(WAIT, until_closed(&mut s)).await;
    assert!(cut.is_some(), "slow request head kept the connection open");
    // Healthy clients are unaffected.
    let c = clock.real_timeout(WAIT, gw.client("acme", "t1")).await;
    assert!(c.is_some(), "a healthy client got no answer");
}

/// Upgrades `/v1/ws?{query}` with `headers` and returns the Close frame that
/// must come first (`refusal=close`): code and reason.
async fn refused_with_close(
    gw: &TestGateway,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut req = common::request(&format!("ws://{}/v1/ws?{query}", gw.addr));
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .unwrap_or_else(|e| panic!("{query}: expected an upgrade, got {e}"));
    assert_eq!(resp.status().as_u16(), 101, "{query}");
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            (u16::from(frame.code), frame.reason.as_str().to_owned())
        }
        other => panic!("{query}: expected a Close frame first, got {other:?}"),
    }
}

/// SPEC §3: with `refusal=close` a browser can read why it was refused: each
/// refusal with a status of 401/403/404/409/503 becomes a 101 and a Close with
/// 4000 + status and the refusal id; the rest stay plain HTTP, and without the
/// parameter nothing changes.
#[tokio::test]
async fn refusal_close_answers_with_close_codes() {
    let gw = TestGateway::start(acme(|t| {
        t.allowed_origins = vec!["https://good.example".into()];
        t.limits.max_sessions_total = 2;
        let s = &mut t.policy.sessions;
        s.mode = SessionMode::Multi;
        s.max_sessions_per_user = 1;
        s.on_exceed = OnExceed::Deny;
    }))
    .await;
    let _a = gw.client("acme", "t1").await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: &[Case<'_>] = &[
        (
            "tenant=nope&ticket=t1&refusal=close",
            &[],
            4404,
            "unknown_tenant",
        ),
        (
            "tenant=acme&ticket=wrong&refusal=close",
            &[],
            4401,
            "unauthorized",
        ),
        (
            "refusal=close&tenant=acme&ticket=t2",
            &[("origin", "https://evil.example")],
            4403,
            "forbidden_origin",
        ),
        (
            "tenant=acme&ticket=t1&refusal=close",
            &[],
            4409,
            "user_limit",
        ),
    ];
    for (query, headers, code, reason) in cases {
        let got = refused_with_close(&gw, query, headers).await;
        assert_eq!(got, (*code, (*reason).to_owned()), "{query}");
    }
    let _b = gw.client("acme", "t2").await;
    let got = refused_with_close(&gw, "tenant=acme&ticket=t3&refusal=close", &[]).await;
    assert_eq!(got, (4503, "tenant_full".to_owned()));

    // Refusals without a close code, a bad mode, and no parameter: plain HTTP.
    for (path, want) in [
        ("/v1/ws?ticket=t1&refusal=close", 400),
        ("/v1/ws?tenant=acme&ticket=t3&refusal=yes", 400),
        (
            "/v1/ws?tenant=acme&ticket=t3&refusal=close&refusal=close",
            400,
        ),
        ("/v1/ws?tenant=nope&ticket=t1", 404),
        ("/v1/ws?tenant=acme&ticket=t3", 503),
    ] {
        assert_eq!(gw.upgrade_status(path, &[]).await.0, want, "{path}");
    }
    // Counted like any refusal.
    let m = gw.metrics().await;
    for result in [
        "unknown_tenant",
        "unauthorized",
        "forbidden_origin",
        "user_limit",
    ] {
        let tenant = if result == "unknown_tenant" {
            "_"
        } else {
            "acme"
        };
        let sample = format!("wsprism_handshakes_total{{result=\"{result}\",tenant=\"{tenant}\"}}");
        assert!(metric(&m, &sample) >= 1.0, "{sample}\n{m}");
    }
    // The two sessions admitted are still the only ones.
    assert_eq!(
        gw.gw.tenant("acme").map(|t| t.broker.stats().sessions),
        Some(2)
    );
}

/// `refusal=close` also covers refusals made before the query is parsed: the
/// handshake limiter (4429, with the delay in the reason) and a draining
/// gateway (4503).
#[tokio::test]
async fn refusal_close_covers_rate_limit_and_drain() {
    let gw = TestGateway::start(plain().gateway(|g| {
        g.handshake_limit.enabled = true;
        g.handshake_limit.per_ip_rps = 1;
        g.handshake_limit.per_ip_burst = 1;
        g.handshake_limit.global_rps = 1000;
        g.handshake_limit.global_burst = 1000;
    }))
    .await;
    let _a = gw.client("acme", "t1").await;
    let (code, reason) = refused_with_close(&gw, "tenant=acme&ticket=t2&refusal=close", &[]).await;
    assert_eq!(code, 4429);
    assert!(reason.starts_with("rate_limited; retry after "), "{reason}");
    gw.gw.start_drain();
    let (code, reason) = refused_with_close(&gw, "tenant=acme&ticket=t2&refusal=close", &[]).await;
    assert_eq!((code, reason.as_str()), (4503, "draining"));
}

/// A gateway behind a load balancer on loopback: `trusted_proxies` covers
/// 127.0.0.0/8; per-IP burst 1, global budget 2.
fn behind_proxy(proxy_protocol: bool) -> TestConfig {
    plain().gateway(|g| {
        g.trusted_proxies = vec!["127.0.0.0/8".into()];
        g.proxy_protocol = proxy_protocol;
        g.handshake_limit.enabled = true;
        g.handshake_limit.per_ip_rps = 1;
        g.handshake_limit.per_ip_burst = 1;
        g.handshake_limit.global_rps = 1;
        g.handshake_limit.global_burst = 4;
    })
}

/// Issue 11 item 6: per-IP limits see the client named by a trusted proxy's
/// `X-Forwarded-For` (rightmost untrusted hop), IPv6 clients per /64, and an
/// untrusted peer's header is ignored.
#[tokio::test]
async fn forwarded_clients_are_limited_per_client_and_per_ipv6_network() {
    let gw = TestGateway::start(behind_proxy(false)).await;
    let path = "/v1/ws?tenant=acme&ticket=t1";
    let status = |xff: &'static str| {
        let gw = &gw;
        async move { gw.upgrade_status(path, &[("x-forwarded-for", xff)]).await.0 }
    };
    assert_eq!(status("198.51.100.7").await, 101);
    // Another client behind the same proxy has its own budget.
    assert_eq!(status("198.51.100.8").await, 101);
    // The first one again: its budget (1) is spent. A forged left entry
    // changes nothing: the rightmost untrusted hop is the client.
    assert_eq!(status("203.0.113.1, 198.51.100.7").await, 429);
    // IPv6: one budget per /64.
    assert_eq!(status("2001:db8:1:2::1").await, 101);
    assert_eq!(status("2001:db8:1:2::ffff").await, 429);

    // Without trusted proxies the header is ignored: every attempt is
    // loopback's.
    let gw = TestGateway::start(behind_proxy(false).gateway(|g| g.trusted_proxies.clear())).await;
    let first = gw
        .upgrade_status(path, &[("x-forwarded-for", "198.51.100.7")])
        .await
        .0;
    let second = gw
        .upgrade_status(path, &[("x-forwarded-for", "198.51.100.8")])
        .await
        .0;
    assert_eq!((first, second), (101, 429));
}

/// Issue 11 item 6: with `proxy_protocol`, a trusted proxy's connection starts
/// with a PROXY v1/v2 header and the client it names is the one limited; a
/// connection without one is closed unanswered.
#[tokio::test]
async fn proxy_protocol_names_the_client() {
    use raw_ws::{http_exchange, upgrade_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(behind_proxy(true)).await;
    let addr = gw.addr;
    let req = upgrade_request(addr, "/v1/ws?tenant=acme&ticket=t1", "");
    let v1 = |src: &str| format!("PROXY TCP4 {src} 10.0.0.1 4711 8080\r\n").into_bytes();
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x12, 0x67, 0x1f, 0x90,
    ]);
    for (what, header, want) in [
        ("v1 client A", v1("198.51.100.7"), 101),
        ("v1 client B", v1("198.51.100.8"), 101),
        ("v2 client C", v2, 101),
        ("v1 client A again", v1("198.51.100.7"), 429),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&header).await.expect("write header");
        let (status, head, _) = http_exchange(&mut s, &req).await;
        assert_eq!(status, want, "{what}: {head}");
    }
    // No PROXY header from a trusted peer: closed without an answer.
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&req).await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
}

/// Issue 11 item 6: requests that fail before authentication spend their
/// address's budget, never the global one, so a handful of addresses cannot
/// lock everyone out.
#[tokio::test]
async fn refusals_before_auth_do_not_drain_the_global_budget() {
    let gw = TestGateway::start(plain().gateway(|g| {
        g.trusted_proxies = vec!["127.0.0.0/8".into()];
        g.handshake_limit.enabled = true;
        g.handshake_limit.per_ip_rps = 100;
        g.handshake_limit.per_ip_burst = 100;
        g.handshake_limit.global_rps = 1;
        g.handshake_limit.global_burst = 2;
    }))
    .await;
    // Five attacking addresses, 20 failing requests each.
    for i in 0..100 {
        let xff = format!("203.0.113.{}", i % 5);
        let path = if i % 2 == 0 {
            "/v1/ws?tenant=nope&ticket=t1"
        } else {
            "/v1/ws?ticket=t1"
        };
        let status = gw
            .upgrade_status(path, &[("x-forwarded-for", &xff)])
            .await
            .0;
        assert!(status == 404 || status == 400, "{status}");
    }
    // A real client still gets in.
    let ok = gw
        .upgrade_status(
            "/v1/ws?tenant=acme&ticket=t1",
            &[("x-forwarded-for", "198.51.100.7")],
        )
        .await
        .0;
    assert_eq!(ok, 101);
}

/// Writes a fresh self-signed certificate for `localhost` / 127.0.0.1 to
/// `dir/{cert,key}.pem`; returns its DER for a client's root store.
fn write_certificate(dir: &std::path::Path) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    std::fs::write(dir.join("cert.pem"), c.cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), c.key_pair.serialize_pem()).expect("write key");
    c.cert.der().to_vec()
}

/// A `wss://` connection trusting only `root`; returns the first frame or the
/// TLS / WebSocket error.
async fn wss(addr: std::net::SocketAddr, root: &[u8]) -> Result<serde_json::Value, String> {
    use futures_util::StreamExt;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(root.to_vec()))
        .expect("root");
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let url = format!(
        "wss://localhost:{}/v1/ws?tenant=acme&ticket=t1",
        addr.port()
    );
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| format!("ws: {e}"))?;
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => {
            serde_json::from_str(m.to_text().unwrap_or("")).map_err(|e| e.to_string())
        }
        other => Err(format!("no first frame: {other:?}")),
    }
}

/// Issue 11 item 6: `gateway.tls` serves `wss://` on the public listener, a
/// plain client cannot connect there, and a config apply (reload) re-reads the
/// files so a renewed certificate serves new connections.
#[tokio::test]
async fn tls_listener_serves_wss_and_rereads_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = write_certificate(dir.path());
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let cfg = plain().gateway(|g| {
        g.tls.cert_file = Some(cert);
        g.tls.key_file = Some(key);
    });
    let gw = TestGateway::start(cfg.clone()).await;
    let authed = wss(gw.addr, &old)
        .await
        .expect("wss with the first certificate");
    assert_eq!(authed["type"], "authed", "{authed}");
    // A plain WebSocket client gets no session on a TLS port.
    assert!(gw.connect("acme", "t1").await.is_err());

    let new = write_certificate(dir.path());
    gw.gw.apply(cfg.parse()).expect("reload");
    let authed = wss(gw.addr, &new)
        .await
        .expect("wss with the renewed certificate");
    assert_eq!(authed["type"], "authed", "{authed}");
    let refused = wss(gw.addr, &old)
        .await
        .expect_err("the old certificate is gone");
    assert!(refused.starts_with("tls:"), "{refused}");

    // A reload with an unreadable key keeps the old config and certificate.
    std::fs::write(dir.path().join("key.pem"), "not a key").expect("write");
    assert!(gw.gw.apply(cfg.parse()).is_err());
    assert!(wss(gw.addr, &new).await.is_ok());
}
