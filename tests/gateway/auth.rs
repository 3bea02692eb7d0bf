//! Auth at the handshake over real sockets: the JWT matrix, the auth webhook and
//! lifecycle event webhooks (SPEC §3, §7).

use crate::common;

use std::sync::Arc;

use axum::Json;
use axum::routing::post;
use common::{TestConfig, TestGateway, eventually};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use wsprism::config::{AuthMode, JwtAlgorithm, UpstreamConfig};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(name)).expect("key")).expect("pem")
}

fn token(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).expect("sign")
}

fn jwt_cfg() -> TestConfig {
    TestConfig::tenant("acme")
        .auth(|a| {
            a.mode = AuthMode::Jwt;
            a.algorithm = Some(JwtAlgorithm::RS256);
            a.public_key_file = Some(fixture("rsa_a.pub.pem"));
            a.issuer = Some("https://issuer.test".into());
            a.audience = Some("wsprism".into());
        })
        .ext_allow(&["room:*"])
}

#[tokio::test]
async fn jwt_matrix_at_the_handshake() {
    let gw = TestGateway::start(jwt_cfg()).await;
    let good = json!({"sub":"alice","exp":now()+600,"iss":"https://issuer.test","aud":"wsprism"});
    let valid = token(Algorithm::RS256, &rsa("rsa_a.pem"), good.clone());
    let mut c = gw
        .connect("acme", &valid)
        .await
        .expect("valid token connects");
    let authed = c.recv_json().await;
    assert_eq!(authed["data"]["user"], "alice");

    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().expect("obj").remove("exp");
    let public_pem = std::fs::read(fixture("rsa_a.pub.pem")).expect("pub");
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&good)
    );
    let cases = [
        (
            "expired",
            token(Algorithm::RS256, &rsa("rsa_a.pem"), expired),
        ),
        (
            "wrong key",
            token(Algorithm::RS256, &rsa("rsa_b.pem"), good.clone()),
        ),
        (
            "wrong aud",
            token(Algorithm::RS256, &rsa("rsa_a.pem"), wrong_aud),
        ),
        (
            "wrong iss",
            token(Algorithm::RS256, &rsa("rsa_a.pem"), wrong_iss),
        ),
        ("no exp", token(Algorithm::RS256, &rsa("rsa_a.pem"), no_exp)),
        ("alg none", alg_none),
        (
            "HS256 signed with the public key",
            token(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                good.clone(),
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (name, t) in cases {
        let path = format!("/v1/ws?tenant=acme&ticket={t}");
        assert_eq!(gw.upgrade_status(&path, &[]).await.0, 401, "{name}");
    }
}

async fn start_backend(
    auth_status: u16,
    auth_body: Value,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Value)>>>) {
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let s1 = Arc::clone(&seen);
    let s2 = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/auth",
            post(move |Json(body): Json<Value>| {
                let seen = Arc::clone(&s1);
                let resp = auth_body.clone();
                async move {
                    seen.lock().await.push(("auth".into(), body));
                    (
                        axum::http::StatusCode::from_u16(auth_status).expect("status"),
                        Json(resp),
                    )
                }
            }),
        )
        .route(
            "/events",
            post(move |Json(body): Json<Value>| {
                let seen = Arc::clone(&s2);
                async move {
                    seen.lock().await.push(("event".into(), body));
                    "ok"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn webhook_cfg(backend: std::net::SocketAddr) -> TestConfig {
    let upstream = |url: String| UpstreamConfig {
        url,
        timeout_ms: 1000,
    };
    TestConfig::tenant("acme")
        .auth(|a| {
            a.mode = AuthMode::Webhook;
            a.upstream = Some("main".into());
            a.path = Some("/auth".into());
        })
        .ext_allow(&["room:*"])
        .backend(|b| {
            b.upstreams
                .insert("main".into(), upstream(format!("http://{backend}")));
            b.upstreams
                .insert("hooks".into(), upstream(format!("http://{backend}/events")));
            b.events.connect = Some("hooks".into());
            b.events.disconnect = Some("hooks".into());
        })
}

#[tokio::test]
async fn webhook_admits_and_events_are_posted() {
    let (backend, seen) = start_backend(200, json!({"user":"hooked"})).await;
    let gw = TestGateway::start(webhook_cfg(backend)).await;
    let mut c = gw.connect("acme", "opaque-ticket").await.expect("connect");
    let authed = c.recv_json().await;
    assert_eq!(authed["data"]["user"], "hooked");
    let sid = authed["data"]["sid"].clone();
    drop(c);
    let events: Vec<Value> = eventually("the connect and disconnect events", || async {
        let events: Vec<Value> = seen
            .lock()
            .await
            .iter()
            .filter(|(k, _)| k == "event")
            .map(|(_, v)| v.clone())
            .collect();
        if events.len() >= 2 {
            Ok(events)
        } else {
            Err(events)
        }
    })
    .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0],
        json!({"event":"connect","tenant":"acme","user":"hooked","sid":sid})
    );
    assert_eq!(events[1]["event"], "disconnect");
    let auth_calls: Vec<Value> = seen
        .lock()
        .await
        .iter()
        .filter(|(k, _)| k == "auth")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(auth_calls[0]["tenant"], "acme");
    assert_eq!(auth_calls[0]["ticket"], "opaque-ticket");
    assert_eq!(auth_calls[0]["ip"], "127.0.0.1");
}

#[tokio::test]
async fn webhook_refusal_and_outage_are_401() {
    let (backend, _) = start_backend(403, json!({"error":"no"})).await;
    let gw = TestGateway::start(webhook_cfg(backend)).await;
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=x", &[])
            .await
            .0,
        401
    );

    // Nothing listens on this port any more.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = TestGateway::start(webhook_cfg(dead)).await;
    assert_eq!(
        gw.upgrade_status("/v1/ws?tenant=acme&ticket=x", &[])
            .await
            .0,
        401
    );
}

/// Issue 11 item 8: with `auth.close_at_expiry` a JWT session is closed with
/// 4005 once its `exp` passes; without it a session outlives its token (the
/// token is checked at the handshake only).
#[tokio::test]
async fn jwt_sessions_close_at_expiry_when_asked() {
    let claims =
        || json!({"sub":"alice","exp":now()+2,"iss":"https://issuer.test","aud":"wsprism"});
    let gw = TestGateway::start(jwt_cfg().auth(|a| a.close_at_expiry = true)).await;
    let short = token(Algorithm::RS256, &rsa("rsa_a.pem"), claims());
    let mut c = gw.client("acme", &short).await;
    assert_eq!(c.join("r").await["data"]["members"], 1);
    assert_eq!(c.recv_close().await, Some(4005));
    drop(c);
    gw.metric_at_least(
        "wsprism_sessions_closed_total{reason=\"token_expired\",tenant=\"acme\"}",
        1.0,
    )
    .await;

    let gw = TestGateway::start(jwt_cfg()).await;
    let short = token(Algorithm::RS256, &rsa("rsa_a.pem"), claims());
    let mut c = gw.client("acme", &short).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        c.join("r").await["data"]["members"],
        1,
        "still open past exp"
    );
}
