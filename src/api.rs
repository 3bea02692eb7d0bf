//! Server API on the admin listener (README "Server API"): the backend publishes, sends,
//! disconnects and reads presence/stats/plugin state.
//!
//! Owns: bearer-key authorization per tenant (missing or unknown key → 401, a key
//! of another tenant → 403; keys compared as SHA-256 digests in constant time,
//! every configured key checked), the throttle on failed keys per client
//! address ([`KeyFailures`]: once an address has failed more than
//! [`MAX_KEY_FAILURES`] times in a minute it gets 429 `RATE_LIMITED` with
//! `Retry-After` before any key is looked at) and the JSON shapes of each
//! endpoint. Every refusal
//! is an [`ApiError`] built from a code of the table in `crate::error`
//! ([`ApiCode`]: the API's own `UNAUTHORIZED`/`FORBIDDEN`, or a `sys.error` code
//! with its HTTP status), answered as `{"code","msg"}`.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::error::{ApiCode, ClientCode, CloseCode};
use crate::gateway::Gateway;
use crate::protocol::ext::{MAX_NAME_BYTES, Outgoing, check_names, raw};
use crate::realtime::broker::{TenantStats, capped};
use crate::realtime::outbox::{MAX_CONFLATION_KEY_BYTES, Qos, valid_conflation_key};
use crate::tenant::{Tenant, TenantRuntime};

/// Largest request body accepted by the server API.
const MAX_API_BODY_BYTES: usize = 1024 * 1024;

/// Failed key checks one client address may make per minute before it is
/// throttled: plenty for an operator's typo, nothing for guessing.
const MAX_KEY_FAILURES: u32 = 20;
/// Addresses tracked by [`KeyFailures`] at most (an address spray cannot grow
/// memory; past it, expired entries are dropped first).
const MAX_TRACKED_ADDRESSES: usize = 10_000;

/// Failed API key checks per client address (IPv6 per /64).
#[derive(Debug)]
struct KeyFailures {
    limiter: crate::policy::rate_limit::KeyedLimiter<IpAddr>,
    /// Addresses refused until the instant (they spent their failures).
    blocked: dashmap::DashMap<IpAddr, tokio::time::Instant>,
}

impl KeyFailures {
    fn new() -> Self {
        let per_minute =
            std::num::NonZeroU32::new(MAX_KEY_FAILURES).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            limiter: crate::policy::rate_limit::keyed(governor::Quota::per_minute(per_minute)),
            blocked: dashmap::DashMap::new(),
        }
    }

    fn key(ip: IpAddr) -> IpAddr {
        crate::policy::rate_limit::network_of(ip, 64)
    }

    /// Seconds the address must still wait, if it is throttled.
    fn throttled(&self, ip: IpAddr) -> Option<u64> {
        let until = *self.blocked.get(&Self::key(ip))?;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then(|| left.as_secs().max(1))
    }

    /// Counts a failed key check; past the budget the address is throttled.
    fn failed(&self, ip: IpAddr) {
        let key = Self::key(ip);
        if self.limiter.len() >= MAX_TRACKED_ADDRESSES {
            self.limiter.retain_recent();
        }
        if let Err(not_until) = self.limiter.check_key(&key) {
            use governor::clock::{Clock, DefaultClock};
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            if self.blocked.len() >= MAX_TRACKED_ADDRESSES {
                let now = tokio::time::Instant::now();
                self.blocked.retain(|_, until| *until > now);
            }
            if self.blocked.len() < MAX_TRACKED_ADDRESSES {
                self.blocked.insert(
                    key,
                    tokio::time::Instant::now() + wait.max(Duration::from_secs(1)),
                );
            }
        }
    }
}

/// Refuses throttled addresses before any key is checked, and counts the
/// 401 / 403 answers per address.
async fn throttle_key_failures(
    State(failures): State<Arc<KeyFailures>>,
    req: Request,
    next: Next,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(ip) = ip
        && let Some(secs) = failures.throttled(ip)
    {
        let mut resp = ApiError::client(
            ClientCode::RateLimited,
            "too many failed API key checks from this address; wait Retry-After seconds",
        )
        .into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return resp;
    }
    let resp = next.run(req).await;
    if let Some(ip) = ip
        && matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    {
        failures.failed(ip);
    }
    resp
}

/// The server API routes (mounted on the admin router).
pub(crate) fn router() -> Router<Arc<Gateway>> {
    let failures = Arc::new(KeyFailures::new());
    Router::new()
        .route("/v1/api/tenants/{t}/publish", post(publish))
        .route("/v1/api/tenants/{t}/users/{u}/send", post(send))
        .route("/v1/api/tenants/{t}/users/{u}/disconnect", post(disconnect))
        .route("/v1/api/tenants/{t}/rooms/{r}/presence", get(presence))
        .route("/v1/api/tenants/{t}/stats", get(stats))
        .route("/v1/api/tenants/{t}/plugins", get(plugins))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_API_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            failures,
            throttle_key_failures,
        ))
}

/// An API failure: a code from the table in `crate::error` plus a safe message.
/// Its status and body come from the code; nothing here spells either.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ApiCode,
    msg: Cow<'static, str>,
}

impl ApiError {
    /// The code with its generic message from the table.
    fn new(code: impl Into<ApiCode>) -> Self {
        let code = code.into();
        Self {
            code,
            msg: Cow::Borrowed(code.message()),
        }
    }

    /// A `sys.error` code with a specific safe message.
    fn client(code: ClientCode, msg: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: ApiCode::Client(code),
            msg: msg.into(),
        }
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status(),
            Json(json!({"code": self.code.as_str(), "msg": self.msg})),
        )
            .into_response();
        if self.code == ApiCode::Unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Constant-time comparison of the keys' SHA-256 digests: no early exit on the
/// first differing byte or on a length mismatch, so the time a check takes
/// says nothing about how much of a key matched or how long it is.
fn same_key(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether `key` is one of `keys`, checking every one (no early exit on a match).
fn any_key(keys: &[String], key: &str) -> bool {
    keys.iter().fold(false, |found, k| found | same_key(k, key))
}

/// Resolves the tenant and checks the bearer key.
fn authorize(
    gw: &Gateway,
    tenant_id: &str,
    headers: &HeaderMap,
) -> Result<(Arc<Tenant>, Arc<TenantRuntime>), ApiError> {
    let unauthorized = || ApiError::new(ApiCode::Unauthorized);
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .filter(|k| !k.is_empty())
        .ok_or_else(unauthorized)?;
    let target = gw
        .tenant(tenant_id)
        .and_then(|t| t.runtime().map(|rt| (t, rt)));
    if let Some((t, rt)) = &target
        && any_key(&rt.cfg.api_keys, key)
    {
        return Ok((Arc::clone(t), Arc::clone(rt)));
    }
    let other_tenants_key = gw
        .tenants()
        .iter()
        .any(|t| t.runtime().is_some_and(|rt| any_key(&rt.cfg.api_keys, key)));
    if other_tenants_key {
        return Err(ApiError::new(ApiCode::Forbidden));
    }
    // An unknown tenant answers 401 like a wrong key, so tenant ids cannot be
    // probed without a valid key.
    Err(unauthorized())
}

fn count(gw: &Gateway, endpoint: &'static str, status: StatusCode) {
    gw.metrics
        .api_requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::client(
                ClientCode::PayloadTooLarge,
                format!("request body exceeds {MAX_API_BODY_BYTES} bytes"),
            )
        } else {
            Self::client(ClientCode::BadRequest, "cannot read the request body")
        }
    }
}

/// `Path`, whose refusal (a segment that is not UTF-8, say) answers like
/// every other API error: JSON with a `code`, not axum's plain text.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
struct ApiPath<T>(T);

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        let code = if e.status().is_server_error() {
            ClientCode::Internal
        } else {
            ClientCode::BadRequest
        };
        Self::client(code, format!("invalid path: {}", e.body_text()))
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::client(ClientCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// The names of a publication or a direct message, by the wire's rules
/// (`protocol::ext::check_names`, as the decoder and the plugin host apply
/// them); `sys` is the gateway's own.
fn check_api_names(svc: &str, ty: &str, room: Option<&str>) -> Result<(), ApiError> {
    if svc == "sys" {
        return Err(ApiError::client(
            ClientCode::NotAllowed,
            "svc `sys` is reserved for the gateway",
        ));
    }
    check_names(svc, ty, room).map_err(|(field, why)| {
        ApiError::client(
            ClientCode::BadRequest,
            format!("{field}: {why} (1 to {MAX_NAME_BYTES} bytes, no control characters)"),
        )
    })
}

fn too_large(len: usize, rt: &TenantRuntime) -> ApiError {
    ApiError::client(
        ClientCode::PayloadTooLarge,
        format!(
            "encoded message is {len} bytes; the tenant's max_frame_bytes is {}",
            rt.cfg.limits.max_frame_bytes
        ),
    )
}

fn status_of<T>(result: &Result<T, ApiError>) -> StatusCode {
    result
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::OK)
}

fn data_or_null(data: Option<Box<RawValue>>) -> Box<RawValue> {
    data.unwrap_or_else(|| raw(&serde_json::Value::Null))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room: String,
    svc: String,
    #[serde(rename = "type")]
    ty: String,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    qos: Qos,
    /// Conflation key (lossy only, SPEC §6).
    key: Option<String>,
}

async fn publish(
    State(gw): State<Arc<Gateway>>,
    ApiPath(t): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = async {
        let (tenant, rt) = authorize(&gw, &t, &headers)?;
        let b: PublishBody = parse(&body?)?;
        check_api_names(&b.svc, &b.ty, Some(&b.room))?;
        if let Some(key) = &b.key {
            if b.qos != Qos::Lossy {
                return Err(ApiError::client(
                    ClientCode::BadRequest,
                    "\"key\" conflates lossy publications; add \"qos\":\"lossy\"",
                ));
            }
            if !valid_conflation_key(key) {
                return Err(ApiError::client(
                    ClientCode::BadRequest,
                    format!("\"key\" must be 1 to {MAX_CONFLATION_KEY_BYTES} bytes"),
                ));
            }
        }
        let data = data_or_null(b.data);
        let d = crate::services::publish_to_room(
            tenant.broker.as_ref(),
            rt.policy.publish,
            crate::services::RoomPublication {
                room: &b.room,
                svc: &b.svc,
                ty: &b.ty,
                data: &data,
                qos: b.qos,
                key: b.key.as_deref(),
                exclude: None,
            },
        )
        .map_err(|len| too_large(len, &rt))?;
        Ok(Json(json!({"delivered": d.delivered})))
    }
    .await;
    count(&gw, "publish", status_of(&result));
    result
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    svc: String,
    #[serde(rename = "type")]
    ty: String,
    data: Option<Box<RawValue>>,
}

async fn send(
    State(gw): State<Arc<Gateway>>,
    ApiPath((t, u)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = async {
        let (tenant, rt) = authorize(&gw, &t, &headers)?;
        let b: SendBody = parse(&body?)?;
        check_api_names(&b.svc, &b.ty, None)?;
        let data = data_or_null(b.data);
        let msg = Outgoing::new(&b.svc, &b.ty)
            .data(Some(&data))
            .encode_within(rt.cfg.limits.max_frame_bytes)
            .map_err(|len| too_large(len, &rt))?;
        let d = tenant.broker.send_to_user(&u, &msg, Qos::Reliable);
        Ok(Json(json!({"delivered": d.delivered})))
    }
    .await;
    count(&gw, "send", status_of(&result));
    result
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    reason: Option<String>,
}

async fn disconnect(
    State(gw): State<Arc<Gateway>>,
    ApiPath((t, u)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = async {
        let (tenant, _rt) = authorize(&gw, &t, &headers)?;
        let body = body?;
        let b: DisconnectBody = if body.iter().all(u8::is_ascii_whitespace) {
            DisconnectBody::default()
        } else {
            parse(&body)?
        };
        let reason = b
            .reason
            .unwrap_or_else(|| "disconnected by the server".to_owned());
        let notice = Outgoing::new("sys", "disconnected")
            .data(Some(&raw(&json!({ "reason": reason }))))
            .encode();
        let n = tenant
            .broker
            .disconnect_user(&u, Some(&notice), CloseCode::Disconnected);
        Ok(Json(json!({"disconnected": n})))
    }
    .await;
    count(&gw, "disconnect", status_of(&result));
    result
}

async fn presence(
    State(gw): State<Arc<Gateway>>,
    ApiPath((t, r)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = authorize(&gw, &t, &headers).map(|(tenant, _)| {
        let (users, truncated) = capped(tenant.broker.presence(&r));
        let mut body = json!({"room": r, "users": users});
        if truncated {
            body["truncated"] = json!(true);
        }
        Json(body)
    });
    count(&gw, "presence", status_of(&result));
    result
}

async fn stats(
    State(gw): State<Arc<Gateway>>,
    ApiPath(t): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = match authorize(&gw, &t, &headers) {
        Err(e) => Err(e),
        Ok((tenant, _)) => Ok(Json(tenant_stats(&gw, &tenant).await)),
    };
    count(&gw, "stats", status_of(&result));
    result
}

/// The tenant's counts: this node's in `local` mode; in cluster mode the sum
/// over every live node plus each node's counts (README "Cluster"), or this
/// node's with `"cluster":"down"` while Redis cannot be read.
async fn tenant_stats(gw: &Gateway, tenant: &Tenant) -> serde_json::Value {
    let local = tenant.broker.stats();
    let mut body = json!({
        "tenant": &*tenant.id,
        "sessions": local.sessions,
        "users": local.users,
        "rooms": local.rooms,
    });
    let Some(node) = &gw.cluster else {
        return body;
    };
    match node.tenant_stats(&tenant.id).await {
        Ok(nodes) => {
            let sum = |f: fn(&TenantStats) -> usize| nodes.iter().map(|(_, s)| f(s)).sum::<usize>();
            body["sessions"] = json!(sum(|s| s.sessions));
            body["users"] = json!(sum(|s| s.users));
            body["rooms"] = json!(sum(|s| s.rooms));
            body["nodes"] = nodes
                .iter()
                .map(|(id, s)| json!({"id": id, "sessions": s.sessions, "users": s.users, "rooms": s.rooms}))
                .collect();
        }
        Err(e) => {
            tracing::debug!(error = %e, "cluster stats unavailable");
            body["cluster"] = json!("down");
        }
    }
    body
}

async fn plugins(
    State(gw): State<Arc<Gateway>>,
    ApiPath(t): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let result = authorize(&gw, &t, &headers).map(|(tenant, rt)| {
        let mut names: Vec<&str> = rt.cfg.routes.iter().map(|r| r.plugin.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let list: Vec<_> = names
            .into_iter()
            .map(|p| {
                let svcs: Vec<&str> = rt
                    .cfg
                    .routes
                    .iter()
                    .filter(|r| r.plugin == p)
                    .map(|r| r.svc.as_str())
                    .collect();
                let mut v =
                    serde_json::to_value(gw.ext().status(&tenant.id, p)).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("routes".into(), json!(svcs));
                }
                v
            })
            .collect();
        Json(json!({"plugins": list}))
    });
    count(&gw, "plugins", status_of(&result));
    result
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn key_comparison() {
        assert!(same_key("abc", "abc"));
        assert!(!same_key("abc", "abd"));
        assert!(!same_key("abc", "abcd"));
        assert!(!same_key("", "a"));
    }
}
