//! Unit tests for ticket authentication: static map, the JWT matrix (HS/RS/ES,
//! PEM, JWKS file, JWKS URL with rotation) and the webhook, against local axum
//! servers on 127.0.0.1. Keys are the throwaway fixtures in `tests/fixtures/keys/`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::jwks::JWKS_REFRESH_INTERVAL;
use super::*;
use crate::backend::BackendClient;
use crate::config::{AuthConfig, AuthMode, JwtAlgorithm, TenantConfig, UpstreamConfig};

// ---------------------------------------------------------------- helpers

const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
const SECRET_ENV: &str = "ACME_JWT_SECRET";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

const RSA_A_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa_a.pem");
const RSA_A_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa_a.pub.pem");
const RSA_B_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa_b.pem");
const EC_A_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/keys/ec_a.pem");
const RSA_A_JWK: &str = include_str!("../../tests/fixtures/keys/rsa_a.jwk.json");
const RSA_B_JWK: &str = include_str!("../../tests/fixtures/keys/rsa_b.jwk.json");
const EC_A_JWK: &str = include_str!("../../tests/fixtures/keys/ec_a.jwk.json");

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn tenant(auth: AuthConfig) -> TenantConfig {
    let mut t: TenantConfig = serde_yaml::from_str("id: acme").expect("minimal tenant parses");
    t.auth = auth;
    t
}

fn test_env(name: &str) -> Result<String, std::env::VarError> {
    match name {
        SECRET_ENV => Ok(SECRET.to_owned()),
        "EMPTY_SECRET" => Ok(String::new()),
        _ => Err(std::env::VarError::NotPresent),
    }
}

fn try_build(t: &TenantConfig, dir: &Path) -> Result<Authenticator, String> {
    Authenticator::build(t, dir, BackendClient::new().http(), &test_env)
}

fn build(t: &TenantConfig) -> Authenticator {
    try_build(t, &keys_dir()).unwrap_or_else(|e| panic!("authenticator refused: {e}"))
}

fn jwt_auth(alg: JwtAlgorithm) -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        algorithm: Some(alg),
        ..AuthConfig::default()
    }
}

fn hs256() -> AuthConfig {
    AuthConfig {
        secret_env: Some(SECRET_ENV.to_owned()),
        ..jwt_auth(JwtAlgorithm::HS256)
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims valid for the next hour, user `u1`.
fn claims() -> Value {
    json!({"sub": "u1", "exp": now() + 3600})
}

fn sign_with(header: &Header, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(header, claims, key).expect("test token signs")
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    sign_with(&Header::new(alg), key, claims)
}

fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    sign_with(&header, key, claims)
}

fn hs(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret)
}

fn rsa_a() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_A_PRIVATE).expect("fixture rsa_a")
}

fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_B_PRIVATE).expect("fixture rsa_b")
}

fn ec_a() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_A_PRIVATE).expect("fixture ec_a")
}

/// A fixture JWK with `kid` (and optionally `alg`/`use`) added.
fn jwk(fixture: &str, kid: &str) -> Value {
    let mut v: Value = serde_json::from_str(fixture).expect("fixture jwk");
    v["kid"] = json!(kid);
    v
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

async fn expect_user(auth: &Authenticator, ticket: &str, user: &str) {
    match auth.authenticate(ticket, CLIENT_IP).await {
        Ok(u) => assert_eq!(&*u, user),
        Err(e) => panic!("expected user {user}, got {e:?}"),
    }
}

async fn expect_err(auth: &Authenticator, ticket: &str) -> AuthError {
    match auth.authenticate(ticket, CLIENT_IP).await {
        Ok(u) => panic!("expected a refusal, got user {u}"),
        Err(e) => {
            assert_eq!(e.http_status(), 401);
            e
        }
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}

// ---------------------------------------------------------------- static

fn static_auth() -> Authenticator {
    let tickets = BTreeMap::from([
        ("dev".to_owned(), "user:dev".to_owned()),
        ("ops-ticket".to_owned(), "user:ops".to_owned()),
    ]);
    build(&tenant(AuthConfig {
        mode: AuthMode::Static,
        tickets,
        ..AuthConfig::default()
    }))
}

#[tokio::test]
async fn static_known_tickets_map_to_their_users() {
    let auth = static_auth();
    assert_eq!(auth.mode(), AuthMode::Static);
    expect_user(&auth, "dev", "user:dev").await;
    expect_user(&auth, "ops-ticket", "user:ops").await;
}

#[tokio::test]
async fn static_unknown_tickets_are_invalid() {
    let auth = static_auth();
    for ticket in ["nope", "de", "dev ", "DEV", "ops-ticket2", ""] {
        let e = expect_err(&auth, ticket).await;
        assert_eq!(e.label(), "invalid", "ticket {ticket:?}");
    }
}

#[tokio::test]
async fn oversize_tickets_are_refused_unparsed_in_every_mode() {
    let big = "a".repeat(MAX_TICKET_BYTES + 1);
    assert_eq!(expect_err(&static_auth(), &big).await, AuthError::TooLarge);
    assert_eq!(
        expect_err(&build(&tenant(hs256())), &big).await,
        AuthError::TooLarge
    );
    // A token that is otherwise valid is refused once it crosses the limit.
    let mut fat = claims();
    fat["pad"] = json!("x".repeat(MAX_TICKET_BYTES));
    let token = sign(Algorithm::HS256, &hs(SECRET.as_bytes()), &fat);
    assert!(token.len() > MAX_TICKET_BYTES);
    let e = expect_err(&build(&tenant(hs256())), &token).await;
    assert_eq!(e, AuthError::TooLarge);
    assert_eq!(e.label(), "too_large");
}

// ---------------------------------------------------------------- HS*

#[tokio::test]
async fn hs256_valid_token_admits_sub() {
    let auth = build(&tenant(hs256()));
    assert_eq!(auth.mode(), AuthMode::Jwt);
    let token = sign(Algorithm::HS256, &hs(SECRET.as_bytes()), &claims());
    expect_user(&auth, &token, "u1").await;
}

#[tokio::test]
async fn hs384_and_hs512_verify_with_their_own_algorithm() {
    for (cfg_alg, alg) in [
        (JwtAlgorithm::HS384, Algorithm::HS384),
        (JwtAlgorithm::HS512, Algorithm::HS512),
    ] {
        let auth = build(&tenant(AuthConfig {
            secret_env: Some(SECRET_ENV.to_owned()),
            ..jwt_auth(cfg_alg)
        }));
        let token = sign(alg, &hs(SECRET.as_bytes()), &claims());
        expect_user(&auth, &token, "u1").await;
        // Same secret, other HS variant: the algorithm is pinned.
        let other = sign(Algorithm::HS256, &hs(SECRET.as_bytes()), &claims());
        assert_eq!(
            expect_err(&auth, &other).await,
            AuthError::Invalid("algorithm not allowed")
        );
    }
}

#[tokio::test]
async fn hs256_expired_token_is_refused() {
    let auth = build(&tenant(hs256()));
    let token = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": now() - 120}),
    );
    let e = expect_err(&auth, &token).await;
    assert_eq!(e, AuthError::Expired);
    assert_eq!(e.label(), "expired");
}

#[tokio::test]
async fn hs256_exp_within_leeway_is_admitted() {
    let auth = build(&tenant(hs256()));
    let token = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": now() - 5}),
    );
    expect_user(&auth, &token, "u1").await;
}

#[tokio::test]
async fn hs256_missing_exp_is_refused() {
    let auth = build(&tenant(hs256()));
    let token = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1"}),
    );
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Invalid("missing exp")
    );
    let token = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": "tomorrow"}),
    );
    assert_eq!(expect_err(&auth, &token).await.label(), "invalid");
}

#[tokio::test]
async fn hs256_nbf_is_honoured() {
    let auth = build(&tenant(hs256()));
    let future = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": now() + 3600, "nbf": now() + 600}),
    );
    let e = expect_err(&auth, &future).await;
    assert_eq!(e, AuthError::NotYetValid);
    assert_eq!(e.label(), "not_yet_valid");
    let past = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": now() + 3600, "nbf": now() - 600}),
    );
    expect_user(&auth, &past, "u1").await;
}

#[tokio::test]
async fn hs256_wrong_secret_is_refused() {
    let auth = build(&tenant(hs256()));
    let token = sign(
        Algorithm::HS256,
        &hs(b"another-secret-another-secret-xx"),
        &claims(),
    );
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Invalid("bad signature")
    );
}

#[tokio::test]
async fn hs256_tampered_payload_is_refused() {
    let auth = build(&tenant(hs256()));
    let token = sign(Algorithm::HS256, &hs(SECRET.as_bytes()), &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64url(
        json!({"sub": "admin", "exp": now() + 3600})
            .to_string()
            .as_bytes(),
    );
    parts[1] = &forged;
    assert_eq!(
        expect_err(&auth, &parts.join(".")).await,
        AuthError::Invalid("bad signature")
    );
}

#[tokio::test]
async fn hs256_audience_is_checked_when_configured() {
    let auth = build(&tenant(AuthConfig {
        audience: Some("wsprism".to_owned()),
        ..hs256()
    }));
    let key = hs(SECRET.as_bytes());
    let good = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "u1", "exp": now() + 60, "aud": "wsprism"}),
    );
    expect_user(&auth, &good, "u1").await;
    let list = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "u1", "exp": now() + 60, "aud": ["other", "wsprism"]}),
    );
    expect_user(&auth, &list, "u1").await;
    let wrong = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "u1", "exp": now() + 60, "aud": "someone-else"}),
    );
    assert_eq!(
        expect_err(&auth, &wrong).await,
        AuthError::Invalid("wrong audience")
    );
    let missing = sign(Algorithm::HS256, &key, &claims());
    assert_eq!(
        expect_err(&auth, &missing).await,
        AuthError::Invalid("missing aud")
    );
}

#[tokio::test]
async fn hs256_audience_is_ignored_when_not_configured() {
    let auth = build(&tenant(hs256()));
    let token = sign(
        Algorithm::HS256,
        &hs(SECRET.as_bytes()),
        &json!({"sub": "u1", "exp": now() + 60, "aud": "anything"}),
    );
    expect_user(&auth, &token, "u1").await;
}

#[tokio::test]
async fn hs256_issuer_is_checked_when_configured() {
    let auth = build(&tenant(AuthConfig {
        issuer: Some("https://id.acme.test".to_owned()),
        ..hs256()
    }));
    let key = hs(SECRET.as_bytes());
    let good = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "u1", "exp": now() + 60, "iss": "https://id.acme.test"}),
    );
    expect_user(&auth, &good, "u1").await;
    let wrong = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "u1", "exp": now() + 60, "iss": "https://evil.test"}),
    );
    assert_eq!(
        expect_err(&auth, &wrong).await,
        AuthError::Invalid("wrong issuer")
    );
    let missing = sign(Algorithm::HS256, &key, &claims());
    assert_eq!(
        expect_err(&auth, &missing).await,
        AuthError::Invalid("missing iss")
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let auth = build(&tenant(hs256()));
    let payload = b64url(claims().to_string().as_bytes());
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"typ":"JWT"}"#,
    ] {
        let unsigned = format!("{}.{payload}.", b64url(header.as_bytes()));
        let e = expect_err(&auth, &unsigned).await;
        assert_eq!(e.label(), "invalid", "header {header}");
    }
    // A correctly signed HS256 token whose header is swapped for alg none.
    let token = sign(Algorithm::HS256, &hs(SECRET.as_bytes()), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let swapped = format!("{}.{}.{}", b64url(br#"{"alg":"none"}"#), parts[1], parts[2]);
    assert_eq!(expect_err(&auth, &swapped).await.label(), "invalid");
}

#[tokio::test]
async fn garbage_tokens_are_invalid() {
    let auth = build(&tenant(hs256()));
    for token in [
        "x",
        "a.b",
        "a.b.c",
        "....",
        "eyJhbGciOiJIUzI1NiJ9..",
        "Bearer abc",
    ] {
        assert_eq!(expect_err(&auth, token).await.label(), "invalid", "{token}");
    }
}

#[tokio::test]
async fn user_claim_names_the_user() {
    let auth = build(&tenant(AuthConfig {
        user_claim: Some("uid".to_owned()),
        ..hs256()
    }));
    let key = hs(SECRET.as_bytes());
    let good = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "ignored", "uid": "player-7", "exp": now() + 60}),
    );
    expect_user(&auth, &good, "player-7").await;
    for (bad, why) in [
        (
            json!({"sub": "u1", "exp": now() + 60}),
            "missing user claim",
        ),
        (json!({"uid": "", "exp": now() + 60}), "empty user claim"),
        (
            json!({"uid": 7, "exp": now() + 60}),
            "user claim is not a string",
        ),
        (
            json!({"uid": null, "exp": now() + 60}),
            "user claim is not a string",
        ),
    ] {
        let token = sign(Algorithm::HS256, &key, &bad);
        assert_eq!(expect_err(&auth, &token).await, AuthError::Invalid(why));
    }
}

#[tokio::test]
async fn default_user_claim_is_sub_and_must_be_a_non_empty_string() {
    let auth = build(&tenant(hs256()));
    let key = hs(SECRET.as_bytes());
    for bad in [
        json!({"exp": now() + 60}),
        json!({"sub": "", "exp": now() + 60}),
        json!({"sub": 42, "exp": now() + 60}),
    ] {
        let token = sign(Algorithm::HS256, &key, &bad);
        assert_eq!(expect_err(&auth, &token).await.label(), "invalid", "{bad}");
    }
}

#[test]
fn hs_secret_env_must_be_set_and_non_empty() {
    let unset = tenant(AuthConfig {
        secret_env: Some("WSPRISM_TEST_SURELY_UNSET_7f3a9c".to_owned()),
        ..hs256()
    });
    // The real environment lookup.
    let e = Authenticator::from_config(&unset, &keys_dir(), BackendClient::new().http())
        .expect_err("unset secret env var must be refused");
    assert!(
        e.contains("WSPRISM_TEST_SURELY_UNSET_7f3a9c") && e.contains("not set"),
        "{e}"
    );
    assert!(e.contains("acme") && e.contains("auth.secret_env"), "{e}");

    let empty = tenant(AuthConfig {
        secret_env: Some("EMPTY_SECRET".to_owned()),
        ..hs256()
    });
    let e = try_build(&empty, &keys_dir()).expect_err("empty secret must be refused");
    assert!(e.contains("EMPTY_SECRET") && e.contains("empty"), "{e}");

    let none = tenant(jwt_auth(JwtAlgorithm::HS256));
    assert!(try_build(&none, &keys_dir()).is_err());
}

#[test]
fn debug_output_never_shows_secrets_or_tickets() {
    let text = format!("{:?}", build(&tenant(hs256())));
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("acme"));
    let text = format!("{:?}", static_auth());
    assert!(
        !text.contains("dev\"") && !text.contains("ops-ticket"),
        "{text}"
    );
}

// ---------------------------------------------------------------- RS256 / ES256

fn rs256_pem() -> AuthConfig {
    AuthConfig {
        public_key_file: Some("rsa_a.pub.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    }
}

#[tokio::test]
async fn rs256_pem_valid_token_admits() {
    let auth = build(&tenant(rs256_pem()));
    let token = sign(Algorithm::RS256, &rsa_a(), &claims());
    expect_user(&auth, &token, "u1").await;
}

#[tokio::test]
async fn rs256_pem_refuses_other_keys_and_algorithms() {
    let auth = build(&tenant(rs256_pem()));
    let wrong_key = sign(Algorithm::RS256, &rsa_b(), &claims());
    assert_eq!(
        expect_err(&auth, &wrong_key).await,
        AuthError::Invalid("bad signature")
    );
    // Same key, another RSA algorithm: pinned.
    let rs512 = sign(Algorithm::RS512, &rsa_a(), &claims());
    assert_eq!(
        expect_err(&auth, &rs512).await,
        AuthError::Invalid("algorithm not allowed")
    );
    let expired = sign(
        Algorithm::RS256,
        &rsa_a(),
        &json!({"sub": "u1", "exp": now() - 3600}),
    );
    assert_eq!(expect_err(&auth, &expired).await, AuthError::Expired);
}

#[tokio::test]
async fn hs_rs_key_confusion_is_refused() {
    let auth = build(&tenant(rs256_pem()));
    // The classic attack: an HS256 token "signed" with the RSA public key as the
    // HMAC secret, hoping the verifier uses the key bytes it holds as a secret.
    for secret in [RSA_A_PUBLIC, RSA_A_PUBLIC.trim_ascii_end()] {
        let token = sign(Algorithm::HS256, &hs(secret), &claims());
        assert_eq!(
            expect_err(&auth, &token).await,
            AuthError::Invalid("algorithm not allowed")
        );
    }
    // And the mirror image: an HS256 tenant must not accept an RS256 token.
    let hs_auth = build(&tenant(hs256()));
    let token = sign(Algorithm::RS256, &rsa_a(), &claims());
    assert_eq!(
        expect_err(&hs_auth, &token).await,
        AuthError::Invalid("algorithm not allowed")
    );
}

#[tokio::test]
async fn es256_pem_valid_token_admits_and_rs256_is_refused() {
    let auth = build(&tenant(AuthConfig {
        public_key_file: Some("ec_a.pub.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::ES256)
    }));
    let token = sign(Algorithm::ES256, &ec_a(), &claims());
    expect_user(&auth, &token, "u1").await;
    let rs = sign(Algorithm::RS256, &rsa_a(), &claims());
    assert_eq!(
        expect_err(&auth, &rs).await,
        AuthError::Invalid("algorithm not allowed")
    );
    let expired = sign(
        Algorithm::ES256,
        &ec_a(),
        &json!({"sub": "u1", "exp": now() - 3600}),
    );
    assert_eq!(expect_err(&auth, &expired).await, AuthError::Expired);
}

#[test]
fn public_key_file_problems_are_load_errors() {
    let dir = keys_dir();
    let missing = tenant(AuthConfig {
        public_key_file: Some("nope.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    let e = try_build(&missing, &dir).expect_err("missing file");
    assert!(
        e.contains("auth.public_key_file") && e.contains("nope.pem"),
        "{e}"
    );

    let private = tenant(AuthConfig {
        public_key_file: Some("rsa_a.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    let e = try_build(&private, &dir).expect_err("private key");
    assert!(e.contains("private key"), "{e}");

    let not_pem = tenant(AuthConfig {
        public_key_file: Some("README.md".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    assert!(try_build(&not_pem, &dir).is_err());

    // An EC key for an RS256 tenant and the other way round.
    let ec_for_rs = tenant(AuthConfig {
        public_key_file: Some("ec_a.pub.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    assert!(try_build(&ec_for_rs, &dir).is_err());
    let rs_for_ec = tenant(AuthConfig {
        public_key_file: Some("rsa_a.pub.pem".to_owned()),
        ..jwt_auth(JwtAlgorithm::ES256)
    });
    assert!(try_build(&rs_for_ec, &dir).is_err());

    // Absolute paths ignore base_dir.
    let absolute = tenant(AuthConfig {
        public_key_file: Some(dir.join("rsa_a.pub.pem").display().to_string()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    assert!(try_build(&absolute, Path::new("/nonexistent")).is_ok());
}

fn write_jwks(doc: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("jwks.json"), doc.to_string()).expect("write jwks");
    dir
}

fn jwks_file(alg: JwtAlgorithm) -> AuthConfig {
    AuthConfig {
        jwks_file: Some("jwks.json".to_owned()),
        ..jwt_auth(alg)
    }
}

#[tokio::test]
async fn rs256_jwks_file_selects_keys_by_kid() {
    let mut enc = jwk(EC_A_JWK, "ec");
    enc["use"] = json!("sig");
    let mut encryption = jwk(RSA_A_JWK, "enc");
    encryption["use"] = json!("enc");
    let doc = jwks(&[
        jwk(RSA_A_JWK, "a"),
        jwk(RSA_B_JWK, "b"),
        enc,
        encryption,
        json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
        json!({"kty": "weird"}),
    ]);
    let dir = write_jwks(&doc);
    let auth = try_build(&tenant(jwks_file(JwtAlgorithm::RS256)), dir.path())
        .unwrap_or_else(|e| panic!("{e}"));

    expect_user(
        &auth,
        &sign_kid(Algorithm::RS256, &rsa_a(), "a", &claims()),
        "u1",
    )
    .await;
    expect_user(
        &auth,
        &sign_kid(Algorithm::RS256, &rsa_b(), "b", &claims()),
        "u1",
    )
    .await;
    // No kid: every key is tried.
    expect_user(&auth, &sign(Algorithm::RS256, &rsa_b(), &claims()), "u1").await;
    // Signed by b but claiming kid a.
    let liar = sign_kid(Algorithm::RS256, &rsa_b(), "a", &claims());
    assert_eq!(
        expect_err(&auth, &liar).await,
        AuthError::Invalid("bad signature")
    );
    // Unknown kid with a fixed file: nothing to refresh.
    let unknown = sign_kid(Algorithm::RS256, &rsa_a(), "zzz", &claims());
    let e = expect_err(&auth, &unknown).await;
    assert_eq!(e, AuthError::UnknownKey);
    assert_eq!(e.label(), "unknown_key");
    // The HMAC key in the set must never become usable for HS256 tokens.
    let hmac = sign_kid(Algorithm::HS256, &hs(b"secret"), "hmac", &claims());
    assert_eq!(
        expect_err(&auth, &hmac).await,
        AuthError::Invalid("algorithm not allowed")
    );
}

#[tokio::test]
async fn es256_jwks_file_verifies() {
    let dir = write_jwks(&jwks(&[jwk(RSA_A_JWK, "rsa"), jwk(EC_A_JWK, "ec")]));
    let auth = try_build(&tenant(jwks_file(JwtAlgorithm::ES256)), dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    expect_user(
        &auth,
        &sign_kid(Algorithm::ES256, &ec_a(), "ec", &claims()),
        "u1",
    )
    .await;
    // The RSA key in the set is not an ES256 key.
    let rs = sign_kid(Algorithm::ES256, &ec_a(), "rsa", &claims());
    assert_eq!(expect_err(&auth, &rs).await, AuthError::UnknownKey);
}

#[test]
fn jwks_file_problems_are_load_errors() {
    let missing = tenant(jwks_file(JwtAlgorithm::RS256));
    let e = try_build(&missing, Path::new("/nonexistent-wsprism")).expect_err("missing");
    assert!(e.contains("auth.jwks_file"), "{e}");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("jwks.json"), "{not json").expect("write");
    let e = try_build(&missing, dir.path()).expect_err("unparsable");
    assert!(e.contains("not a JWKS document"), "{e}");

    let only_ec = write_jwks(&jwks(&[jwk(EC_A_JWK, "ec")]));
    let e = try_build(&missing, only_ec.path()).expect_err("no usable key");
    assert!(e.contains("no usable RS256 key"), "{e}");

    let mut wrong_alg = jwk(RSA_A_JWK, "a");
    wrong_alg["alg"] = json!("RS512");
    let wrong = write_jwks(&jwks(&[wrong_alg]));
    assert!(try_build(&missing, wrong.path()).is_err());
}

// ---------------------------------------------------------------- JWKS URL

/// A JWKS endpoint whose document can be swapped, counting requests.
#[derive(Clone)]
struct JwksServer {
    doc: Arc<Mutex<Value>>,
    status: Arc<Mutex<StatusCode>>,
    delay: Arc<Mutex<Duration>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(doc: Value) -> (Self, SocketAddr) {
        let server = Self {
            doc: Arc::new(Mutex::new(doc)),
            status: Arc::new(Mutex::new(StatusCode::OK)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            hits: Arc::default(),
        };
        let router = Router::new()
            .route(
                "/.well-known/jwks.json",
                get(|State(s): State<JwksServer>| async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    let delay = *s.delay.lock();
                    tokio::time::sleep(delay).await;
                    let status = *s.status.lock();
                    let body = s.doc.lock().to_string();
                    (status, body).into_response()
                }),
            )
            .with_state(server.clone());
        let addr = serve(router).await;
        (server, addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn jwks_url(addr: SocketAddr) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(format!("http://{addr}/.well-known/jwks.json")),
        ..jwt_auth(JwtAlgorithm::RS256)
    }
}

fn remote(auth: &Authenticator) -> &super::jwks::RemoteJwks {
    match &auth.verifier {
        Verifier::Jwt(j) => j.remote().expect("tenant uses jwks_url"),
        _ => panic!("not a jwt tenant"),
    }
}

#[tokio::test]
async fn jwks_url_is_fetched_lazily_cached_and_refreshed_on_kid_rotation() {
    let (server, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    let auth = build(&tenant(jwks_url(addr)));
    assert_eq!(server.hits(), 0, "no fetch before first use");

    let token_a = sign_kid(Algorithm::RS256, &rsa_a(), "a", &claims());
    expect_user(&auth, &token_a, "u1").await;
    assert_eq!(server.hits(), 1);
    expect_user(&auth, &token_a, "u1").await;
    assert_eq!(server.hits(), 1, "cached");

    // The provider rotates to key b. Within 30 s of the last fetch an unknown kid
    // does not trigger another request.
    *server.doc.lock() = jwks(&[jwk(RSA_B_JWK, "b")]);
    let token_b = sign_kid(Algorithm::RS256, &rsa_b(), "b", &claims());
    assert_eq!(expect_err(&auth, &token_b).await, AuthError::UnknownKey);
    assert_eq!(expect_err(&auth, &token_b).await, AuthError::UnknownKey);
    assert_eq!(server.hits(), 1, "refresh is rate limited");

    // Once the interval has passed, the unknown kid refreshes the set.
    remote(&auth)
        .backdate(JWKS_REFRESH_INTERVAL + Duration::from_secs(1))
        .await;
    expect_user(&auth, &token_b, "u1").await;
    assert_eq!(server.hits(), 2);
    expect_user(&auth, &token_b, "u1").await;
    assert_eq!(server.hits(), 2);

    // Key a was rotated out: refused, and no extra fetch right after a refresh.
    assert_eq!(expect_err(&auth, &token_a).await, AuthError::UnknownKey);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn jwks_url_concurrent_first_use_makes_one_request() {
    let (server, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    *server.delay.lock() = Duration::from_millis(100);
    let auth = Arc::new(build(&tenant(jwks_url(addr))));
    let token = sign_kid(Algorithm::RS256, &rsa_a(), "a", &claims());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (auth, token) = (auth.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            auth.authenticate(&token, CLIENT_IP).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").as_deref(), Ok("u1"));
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn jwks_url_failure_is_unavailable_and_retried_with_backoff() {
    let (server, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    *server.status.lock() = StatusCode::INTERNAL_SERVER_ERROR;
    let auth = build(&tenant(jwks_url(addr)));
    let token = sign_kid(Algorithm::RS256, &rsa_a(), "a", &claims());
    let e = expect_err(&auth, &token).await;
    assert_eq!(e, AuthError::Unavailable("status"));
    assert_eq!(e.label(), "unavailable");
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Unavailable("status")
    );
    assert_eq!(server.hits(), 1, "a failed fetch is not retried at once");

    *server.status.lock() = StatusCode::OK;
    remote(&auth).backdate(Duration::from_secs(10)).await;
    expect_user(&auth, &token, "u1").await;
    assert_eq!(server.hits(), 2);

    // Later failures keep the working set.
    *server.status.lock() = StatusCode::INTERNAL_SERVER_ERROR;
    remote(&auth)
        .backdate(JWKS_REFRESH_INTERVAL + Duration::from_secs(1))
        .await;
    let unknown = sign_kid(Algorithm::RS256, &rsa_a(), "new", &claims());
    assert_eq!(expect_err(&auth, &unknown).await, AuthError::UnknownKey);
    assert_eq!(server.hits(), 3);
    expect_user(&auth, &token, "u1").await;
}

#[tokio::test]
async fn jwks_url_unreachable_or_slow_is_unavailable() {
    let auth = build(&tenant(jwks_url(closed_port())));
    let token = sign_kid(Algorithm::RS256, &rsa_a(), "a", &claims());
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Unavailable("connect")
    );

    let (server, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    *server.delay.lock() = Duration::from_secs(10);
    let auth = build(&tenant(jwks_url(addr)));
    let started = Instant::now();
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Unavailable("timeout")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn jwks_url_ignores_jku_and_only_fetches_the_configured_url() {
    let (configured, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    let (attacker, evil) = JwksServer::start(jwks(&[jwk(RSA_B_JWK, "evil")])).await;
    let auth = build(&tenant(jwks_url(addr)));
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("evil".to_owned());
    header.jku = Some(format!("http://{evil}/.well-known/jwks.json"));
    let token = sign_with(&header, &rsa_b(), &claims());
    assert_eq!(expect_err(&auth, &token).await, AuthError::UnknownKey);
    assert_eq!(attacker.hits(), 0);
    assert_eq!(configured.hits(), 1);
}

#[tokio::test]
async fn jwks_url_tokens_of_the_wrong_algorithm_cause_no_fetch() {
    let (server, addr) = JwksServer::start(jwks(&[jwk(RSA_A_JWK, "a")])).await;
    let auth = build(&tenant(jwks_url(addr)));
    let token = sign_kid(Algorithm::HS256, &hs(RSA_A_PUBLIC), "a", &claims());
    assert_eq!(
        expect_err(&auth, &token).await,
        AuthError::Invalid("algorithm not allowed")
    );
    assert_eq!(expect_err(&auth, "not.a.token").await.label(), "invalid");
    assert_eq!(server.hits(), 0);
}

#[test]
fn jwks_url_must_be_http() {
    let t = tenant(AuthConfig {
        jwks_url: Some("file:///etc/passwd".to_owned()),
        ..jwt_auth(JwtAlgorithm::RS256)
    });
    let e = try_build(&t, &keys_dir()).expect_err("non-http jwks_url");
    assert!(e.contains("auth.jwks_url"), "{e}");
}

// ---------------------------------------------------------------- webhook

/// An auth backend that answers by ticket and records every request body.
#[derive(Clone, Default)]
struct Backend {
    seen: Arc<Mutex<Vec<Value>>>,
}

async fn backend_auth(State(b): State<Backend>, body: String) -> axum::response::Response {
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    b.seen.lock().push(parsed.clone());
    match parsed["ticket"].as_str().unwrap_or("") {
        "good" => (StatusCode::OK, r#"{"user":"u-42","extra":true}"#).into_response(),
        "created" => (StatusCode::CREATED, r#"{"user":"u-42"}"#).into_response(),
        "forbidden" => (StatusCode::FORBIDDEN, r#"{"user":"u-42"}"#).into_response(),
        "redirect" => (StatusCode::FOUND, [("location", "/auth-elsewhere")]).into_response(),
        "not-json" => (StatusCode::OK, "user=u-42").into_response(),
        "empty-user" => (StatusCode::OK, r#"{"user":""}"#).into_response(),
        "number-user" => (StatusCode::OK, r#"{"user":42}"#).into_response(),
        "no-user" => (StatusCode::OK, r#"{"id":"u-42"}"#).into_response(),
        "huge" => {
            let pad = "x".repeat(200 * 1024);
            (
                StatusCode::OK,
                format!(r#"{{"user":"u-42","pad":"{pad}"}}"#),
            )
                .into_response()
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (StatusCode::OK, r#"{"user":"u-42"}"#).into_response()
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn start_backend() -> (Backend, SocketAddr) {
    let backend = Backend::default();
    let router = Router::new()
        .route("/auth", post(backend_auth))
        .route(
            "/auth-elsewhere",
            post(|| async { (StatusCode::OK, r#"{"user":"hijacked"}"#) }),
        )
        .with_state(backend.clone());
    let addr = serve(router).await;
    (backend, addr)
}

fn webhook_tenant(url: String, path: Option<&str>, timeout_ms: u64) -> TenantConfig {
    let mut t = tenant(AuthConfig {
        mode: AuthMode::Webhook,
        upstream: Some("main".to_owned()),
        path: path.map(str::to_owned),
        ..AuthConfig::default()
    });
    t.backend
        .upstreams
        .insert("main".to_owned(), UpstreamConfig { url, timeout_ms });
    t
}

#[tokio::test]
async fn webhook_200_with_user_admits_and_backend_sees_tenant_ticket_ip() {
    let (backend, addr) = start_backend().await;
    let auth = build(&webhook_tenant(
        format!("http://{addr}"),
        Some("/auth"),
        2_000,
    ));
    assert_eq!(auth.mode(), AuthMode::Webhook);
    expect_user(&auth, "good", "u-42").await;
    let seen = backend.seen.lock().clone();
    assert_eq!(
        seen,
        vec![json!({"tenant": "acme", "ticket": "good", "ip": "203.0.113.7"})]
    );
}

#[tokio::test]
async fn webhook_url_and_path_join_with_one_slash() {
    let (_backend, addr) = start_backend().await;
    for (url, path) in [
        (format!("http://{addr}/"), Some("auth")),
        (format!("http://{addr}/"), Some("/auth")),
        (format!("http://{addr}/auth"), None),
    ] {
        let auth = build(&webhook_tenant(url, path, 2_000));
        expect_user(&auth, "good", "u-42").await;
    }
}

#[tokio::test]
async fn webhook_refusals() {
    let (_backend, addr) = start_backend().await;
    let auth = build(&webhook_tenant(
        format!("http://{addr}"),
        Some("/auth"),
        2_000,
    ));
    let cases = [
        ("forbidden", AuthError::Refused(403)),
        ("unknown", AuthError::Refused(401)),
        ("created", AuthError::Refused(201)),
        ("redirect", AuthError::Refused(302)),
        ("not-json", AuthError::BadResponse("bad_json")),
        ("number-user", AuthError::BadResponse("bad_json")),
        ("no-user", AuthError::BadResponse("bad_json")),
        ("empty-user", AuthError::BadResponse("empty_user")),
        ("huge", AuthError::BadResponse("too_large")),
    ];
    for (ticket, want) in cases {
        assert_eq!(expect_err(&auth, ticket).await, want, "ticket {ticket}");
    }
    assert_eq!(AuthError::Refused(403).label(), "refused");
    assert_eq!(AuthError::BadResponse("bad_json").label(), "bad_response");
}

#[tokio::test]
async fn webhook_slow_backend_times_out_within_the_upstream_timeout() {
    let (_backend, addr) = start_backend().await;
    let auth = build(&webhook_tenant(
        format!("http://{addr}"),
        Some("/auth"),
        300,
    ));
    let started = Instant::now();
    assert_eq!(
        expect_err(&auth, "slow").await,
        AuthError::Unavailable("timeout")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
}

#[tokio::test]
async fn webhook_connection_refused_refuses() {
    let auth = build(&webhook_tenant(
        format!("http://{}", closed_port()),
        Some("/auth"),
        2_000,
    ));
    let e = expect_err(&auth, "good").await;
    assert_eq!(e, AuthError::Unavailable("connect"));
    assert_eq!(e.label(), "unavailable");
}

#[test]
fn webhook_needs_a_defined_upstream() {
    let mut t = webhook_tenant("http://127.0.0.1:1".to_owned(), Some("/auth"), 2_000);
    t.auth.upstream = Some("missing".to_owned());
    let e = try_build(&t, &keys_dir()).expect_err("undefined upstream");
    assert!(e.contains("auth.upstream") && e.contains("missing"), "{e}");
}

// ---------------------------------------------------------------- shape

#[test]
fn authenticator_and_its_future_can_cross_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let auth = static_auth();
    send_sync(&auth);
    send(&auth.authenticate("dev", CLIENT_IP));
}

/// Issue 11 item 8: a JWKS fetched over plain http could be swapped on the
/// path, so `jwks_url` must be https unless it names this machine; the error
/// does not quote the URL (it may carry a token from `${VAR}`).
#[test]
fn jwks_url_must_be_https_unless_loopback() {
    let with = |url: &str| {
        let mut auth = jwt_auth(JwtAlgorithm::RS256);
        auth.jwks_url = Some(url.to_owned());
        try_build(&tenant(auth), &keys_dir())
    };
    for ok in [
        "https://idp.example/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:9000/jwks.json",
    ] {
        assert!(with(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://idp.example/jwks.json?token=s3cret",
        "http://10.0.0.5/jwks.json?token=s3cret",
        "ftp://idp.example/jwks.json?token=s3cret",
    ] {
        let err = with(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
        let text = err.to_string();
        assert!(text.contains("jwks_url"), "{text}");
        assert!(!text.contains("s3cret"), "the URL is echoed: {text}");
    }
}

/// Issue 11 item 8: two tenants that verify JWTs with the same key material
/// and nothing telling their tokens apart are reported (the gateway warns at
/// load); a distinct audience or key clears it.
#[test]
fn tenants_sharing_a_jwt_key_are_reported() {
    let hs = |id: &str, env_name: &str, audience: Option<&str>| {
        let mut t = tenant(AuthConfig {
            secret_env: Some(env_name.to_owned()),
            audience: audience.map(str::to_owned),
            ..jwt_auth(JwtAlgorithm::HS256)
        });
        t.id = id.to_owned();
        t
    };
    let env = |name: &str| match name {
        "A_SECRET" | "SAME_VALUE" => Ok("the-same-secret-value-of-32-bytes!".to_owned()),
        "OTHER" => Ok("another-secret-value-of-32-bytes!!".to_owned()),
        _ => Err(std::env::VarError::NotPresent),
    };
    let pairs = |ts: &[TenantConfig]| super::shared_jwt_keys_with(ts, &keys_dir(), &env);
    let a = hs("a", "A_SECRET", None);
    // Same value under another variable name.
    assert_eq!(
        pairs(&[a.clone(), hs("b", "SAME_VALUE", None)]),
        [("a".to_owned(), "b".to_owned())]
    );
    assert!(pairs(&[a.clone(), hs("b", "OTHER", None)]).is_empty());
    assert!(pairs(&[a.clone(), hs("b", "A_SECRET", Some("game-b"))]).is_empty());
    let mut st = tenant(AuthConfig::default());
    st.id = "dev".into();
    assert!(pairs(&[a.clone(), st]).is_empty());
    // Public keys: the same file is the same key.
    let rs = |id: &str| {
        let mut t = tenant(AuthConfig {
            public_key_file: Some("rsa_a.pub.pem".into()),
            ..jwt_auth(JwtAlgorithm::RS256)
        });
        t.id = id.to_owned();
        t
    };
    assert_eq!(
        pairs(&[rs("x"), a, rs("y")]),
        [("x".to_owned(), "y".to_owned())]
    );
}
