//! `GET /v1/ws`: every admission decision, made before the upgrade so a refused
//! client gets a plain HTTP answer (SPEC §3).
//!
//! Order: draining (503) → handshake limit (429) → query (400) → tenant (404) →
//! WebSocket headers (400/426) → Origin (403) → tenant cap (503) → auth (401) →
//! session policy (409/503) → upgrade with the tenant's frame limit applied to
//! the socket. The session is registered before the 101 so `sys.authed` is the
//! first frame, and unregistered by a guard if the upgrade never completes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use tracing::{Instrument, debug, info_span};
use tungstenite::protocol::WebSocketConfig;

use super::session;
use super::ws::{self, NotUpgrade, ReadBudget, Upgrade};
use crate::realtime::broker::RegisterError;
use crate::session::Hub;

/// Longest ticket accepted from the query or header.
const MAX_TICKET_BYTES: usize = 8 * 1024;
/// Read buffer chunk. tungstenite allocates it per connection up front, keeps it
/// while idle and zero-fills it on every read, so it is small: 256 B holds a
/// typical Ext envelope or several Hot frames per read, and costs idle sessions
/// 256 B instead of 4 KiB (a large frame is read in 256 B chunks into a buffer
/// reserved for its full length).
const READ_BUFFER_BYTES: usize = 256;
/// Bytes beyond twice the frame limit a peer may send without completing a
/// message (see [`ReadBudget`]).
const UNFINISHED_MESSAGE_SLACK: u64 = 64 * 1024;
/// Bytes buffered before a write reaches the socket; the writer flushes each batch.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// A refusal before the upgrade.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    /// Metric label.
    result: &'static str,
    msg: &'static str,
    retry_after: Option<u64>,
}

impl Refused {
    fn new(status: StatusCode, result: &'static str, msg: &'static str) -> Self {
        Self {
            status,
            result,
            msg,
            retry_after: None,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: &'static str,
            msg: &'static str,
        }
        let mut resp = (
            self.status,
            axum::Json(Body {
                error: self.result,
                msg: self.msg,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UPGRADE_REQUIRED {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}

struct Query {
    tenant: String,
    ticket: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<Query, &'static str> {
    let mut tenant = None;
    let mut ticket = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let slot = match &*k {
            "tenant" => &mut tenant,
            "ticket" => &mut ticket,
            _ => continue,
        };
        if slot.is_some() {
            return Err("duplicate query parameter");
        }
        *slot = Some(v.into_owned());
    }
    let tenant = tenant
        .filter(|t| !t.is_empty())
        .ok_or("missing tenant query parameter")?;
    Ok(Query {
        tenant,
        ticket: ticket.filter(|t| !t.is_empty()),
    })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The `/v1/ws` handler.
pub(crate) async fn handle(
    State(gw): State<Arc<Hub>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let upgrade = ws::prepare(&mut req);
    match admit(&gw, remote, query.as_deref(), req.headers(), upgrade).await {
        Ok(resp) => resp,
        Err((tenant, refused)) => {
            gw.metrics
                .handshakes
                .with_label_values(&[tenant.as_deref().unwrap_or("_"), refused.result])
                .inc();
            debug!(remote.addr = %remote, result = refused.result, "upgrade refused");
            refused.into_response()
        }
    }
}

type AdmitError = (Option<String>, Refused);

async fn admit(
    gw: &Arc<Hub>,
    remote: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    upgrade: Result<Upgrade, NotUpgrade>,
) -> Result<Response, AdmitError> {
    let fail = |tenant: Option<&str>, r: Refused| (tenant.map(str::to_owned), r);
    if gw.is_draining() {
        return Err(fail(
            None,
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "gateway is draining",
            ),
        ));
    }
    if let Err(t) = gw.handshake_limiter().check(remote.ip()) {
        let mut r = Refused::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many connection attempts",
        );
        r.retry_after = Some(t.retry_after_secs);
        return Err(fail(None, r));
    }
    let q = parse_query(query).map_err(|msg| {
        fail(
            None,
            Refused::new(StatusCode::BAD_REQUEST, "bad_request", msg),
        )
    })?;
    let Some(tenant) = gw.tenant(&q.tenant) else {
        return Err(fail(
            None,
            Refused::new(StatusCode::NOT_FOUND, "unknown_tenant", "unknown tenant"),
        ));
    };
    let tid = Some(&*tenant.id);
    let Some(rt) = tenant.runtime() else {
        return Err(fail(
            None,
            Refused::new(StatusCode::NOT_FOUND, "unknown_tenant", "unknown tenant"),
        ));
    };
    let upgrade = upgrade.map_err(|e| match e {
        NotUpgrade::Version => fail(
            tid,
            Refused::new(
                StatusCode::UPGRADE_REQUIRED,
                "bad_upgrade",
                "unsupported Sec-WebSocket-Version; use 13",
            ),
        ),
        NotUpgrade::Headers => fail(
            tid,
            Refused::new(
                StatusCode::BAD_REQUEST,
                "bad_upgrade",
                "not a WebSocket upgrade request",
            ),
        ),
    })?;
    if !rt.cfg.allowed_origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
    {
        let ok = origin
            .to_str()
            .is_ok_and(|o| rt.cfg.allowed_origins.iter().any(|a| a == o));
        if !ok {
            return Err(fail(
                tid,
                Refused::new(
                    StatusCode::FORBIDDEN,
                    "forbidden_origin",
                    "origin not allowed",
                ),
            ));
        }
    }
    let limits = rt.policy.session_limits;
    if limits.max_sessions_total > 0
        && tenant.broker.stats().sessions as u64 >= limits.max_sessions_total
        && !limits.kick_oldest
    {
        return Err(fail(
            tid,
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_full",
                "tenant is at capacity",
            ),
        ));
    }
    let ticket = q.ticket.or_else(|| bearer(headers)).ok_or_else(|| {
        fail(
            tid,
            Refused::new(StatusCode::BAD_REQUEST, "bad_request", "missing ticket"),
        )
    })?;
    if ticket.len() > MAX_TICKET_BYTES {
        return Err(fail(
            tid,
            Refused::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid ticket"),
        ));
    }
    let user = rt
        .auth
        .authenticate(&ticket, remote.ip())
        .await
        .map_err(|e| {
            gw.metrics
                .backend_calls
                .with_label_values(&[&tenant.id, "auth", e.label()])
                .inc();
            fail(
                tid,
                Refused::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid ticket"),
            )
        })?;
    drop(ticket);

    let opened = crate::session::open(gw, &tenant, &rt, user).map_err(|e| match e {
        RegisterError::UserLimit => fail(
            tid,
            Refused::new(
                StatusCode::CONFLICT,
                "user_limit",
                "too many sessions for this user",
            ),
        ),
        RegisterError::TenantFull => fail(
            tid,
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_full",
                "tenant is at capacity",
            ),
        ),
    })?;
    // From here on the guard closes the session whatever happens.
    let crate::session::Opened { guard, greeting } = opened;
    let sid = guard.entry().sid;
    gw.metrics
        .handshakes
        .with_label_values(&[&tenant.id, "ok"])
        .inc();

    let max_frame = rt.cfg.limits.max_frame_bytes;
    let span = info_span!("session", tenant = %tenant.id, sid = %sid, remote.addr = %remote);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + 2 * max_frame + 64 * 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    // Room for the largest message in any fragmentation plus frame headers; a
    // peer past it without completing a message is cut with 1009.
    let budget = Arc::new(ReadBudget::new(
        2 * max_frame as u64 + UNFINISHED_MESSAGE_SLACK,
    ));
    let resp = upgrade.response();
    gw.sessions.spawn(
        async move {
            let socket = match upgrade.accept(config, Some(Arc::clone(&budget))).await {
                Ok(socket) => socket,
                Err(e) => {
                    debug!(error = %e, "upgrade failed after 101");
                    return;
                }
            };
            let (sink, stream) = socket.split();
            session::run(sink, stream, guard, greeting, budget).await;
        }
        .instrument(span),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("tenant=acme&ticket=a%20b&x=1")).expect("valid");
        assert_eq!(q.tenant, "acme");
        assert_eq!(q.ticket.as_deref(), Some("a b"));
        assert!(parse_query(Some("ticket=x")).is_err());
        assert!(parse_query(None).is_err());
        assert!(parse_query(Some("tenant=a&tenant=b&ticket=x")).is_err());
        assert!(parse_query(Some("tenant=a&ticket=x&ticket=y")).is_err());
        assert!(
            parse_query(Some("tenant=a"))
                .expect("header ticket later")
                .ticket
                .is_none()
        );
    }

    #[test]
    fn bearer_header() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
