//! `GET /v1/ws`: every admission decision, made before the upgrade so a refused
//! client gets a plain HTTP answer (README "Connecting").
//!
//! Owns: the admission chain. `admit` runs these steps in this order; each is a
//! small function that returns what the next one needs, or a
//! [`HandshakeRefusal`] whose status, body and metric label come from
//! `crate::error` (this module spells no status or message itself):
//!
//! 1. `not_draining` (503);
//! 2. `within_ip_limit` (429): the client address's (IPv6: its /64's) budget,
//!    spent by every attempt *before* the query is parsed, so floods of
//!    malformed requests are limited too (README "Connecting"). The client
//!    address is the TCP peer, or what trusted proxies say (`client_ip`);
//! 3. `parse_query` (400);
//! 4. `find_tenant` (404);
//! 5. `check_upgrade_headers` (400, 426);
//! 6. `check_origin` (403);
//! 7. `tenant_has_room` (503), before any auth work is spent;
//! 8. `within_global_limit` (429): the budget all clients share, spent only
//!    by attempts that reach authentication, so requests that fail earlier
//!    cannot drain it from a handful of addresses;
//! 9. `authenticate` (400 without a ticket, 401);
//! 10. `open_session`: the session policy (409/503), registration, the kick of
//!     the user's oldest session, the greeting and the spawn of the session task
//!     with the tenant's frame limit applied to the socket. The session is
//!     registered before the 101 so `sys.authed` is the first frame, and
//!     unregistered by a guard if the upgrade never completes.
//!
//! Input: the HTTP request (`handle`). Output: a 101 and a spawned session
//! (`super::session::run`), or the refusal; each outcome is counted in
//! `wsprism_handshakes_total{tenant,result}`. A client that asked for
//! `refusal=close` and sent a valid upgrade gets a refusal that has a close code
//! (`HandshakeRefusal::close_code`: 4401, 4403, 4404, 4409, 4429, 4503) as a 101
//! followed at once by that Close frame (`close_after_upgrade`), because a
//! browser cannot read the status of a refused upgrade.
//! Must not: write to the socket after the 101 (the session's writer does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tracing::{Instrument, debug, debug_span};
use tungstenite::protocol::{CloseFrame, WebSocketConfig};

use super::client_ip;
use super::listener::ConnSlot;
use super::session;
use super::ws::{self, NotUpgrade, ReadBudget, Upgrade};
use crate::auth::Identity;
use crate::error::HandshakeRefusal;
use crate::realtime::broker::RegisterError;
use crate::session::Hub;
use crate::tenant::{Tenant, TenantRuntime};

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

/// Longest wait for the client's answer to a refusal's Close frame.
const REFUSAL_CLOSE_WAIT: Duration = Duration::from_secs(2);

struct Query {
    tenant: String,
    ticket: Option<String>,
}

/// Step 3: the query must decode to UTF-8 (`form_urlencoded` would replace
/// what does not, and a mangled tenant or ticket would be refused for the
/// wrong reason); `tenant` is required, `ticket` may come from the header
/// instead; `refusal`, when present, must be `close` (read before the chain
/// by [`wants_refusal_close`]).
fn parse_query(raw: Option<&str>) -> Result<Query, HandshakeRefusal> {
    // `&` and `=` are ASCII, so the whole query decodes to UTF-8 exactly when
    // every name and value does.
    if percent_encoding::percent_decode_str(raw.unwrap_or_default())
        .decode_utf8()
        .is_err()
    {
        return Err(HandshakeRefusal::MalformedQuery);
    }
    let mut tenant = None;
    let mut ticket = None;
    let mut refusal = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let slot = match &*k {
            "tenant" => &mut tenant,
            "ticket" => &mut ticket,
            "refusal" => &mut refusal,
            _ => continue,
        };
        if slot.is_some() {
            return Err(HandshakeRefusal::DuplicateParameter);
        }
        *slot = Some(v.into_owned());
    }
    if refusal.is_some_and(|r| r != "close") {
        return Err(HandshakeRefusal::BadRefusalMode);
    }
    let tenant = tenant
        .filter(|t| !t.is_empty())
        .ok_or(HandshakeRefusal::MissingTenant)?;
    Ok(Query {
        tenant,
        ticket: ticket.filter(|t| !t.is_empty()),
    })
}

/// Whether the query asks for `refusal=close`. Read before the admission chain
/// so that refusals made before the query is parsed (draining, the handshake
/// limiter) honour it too.
fn wants_refusal_close(raw: Option<&str>) -> bool {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .any(|(k, v)| k == "refusal" && v == "close")
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
    // Behind trusted proxies, the client is who they say it is.
    let remote =
        client_ip::client_addr(remote, req.headers(), &gw.config().gateway.trusted_proxies);
    // The socket's place under `max_connections` goes with it into the
    // session (or refusal) task.
    let slot = req.extensions_mut().remove::<ConnSlot>();
    let (mut upgrade, not_upgrade) = match ws::prepare(&mut req) {
        Ok(upgrade) => (Some(upgrade), None),
        Err(e) => (None, Some(e)),
    };
    let query = query.as_deref();
    let admitted = admit(
        &gw,
        remote,
        query,
        req.headers(),
        not_upgrade,
        &mut upgrade,
        slot.clone(),
    )
    .await;
    match admitted {
        Ok(resp) => resp,
        Err(Refused { tenant, refusal }) => {
            gw.metrics
                .handshakes
                .with_label_values(&[tenant.as_deref().unwrap_or("_"), refusal.id()])
                .inc();
            debug!(remote.addr = %remote, result = refusal.id(), "upgrade refused");
            match (upgrade, refusal.close_code()) {
                (Some(upgrade), Some(code)) if wants_refusal_close(query) => {
                    close_after_upgrade(&gw, upgrade, code, refusal.close_reason(), slot)
                }
                _ => refusal.into_response(),
            }
        }
    }
}

/// Answers a refusal as a 101 and a Close frame with `code` and `reason`
/// (`refusal=close`), then waits briefly for the client's Close before the
/// connection goes. No session exists; the task is tracked with the sessions
/// so a drain waits for it.
fn close_after_upgrade(
    gw: &Hub,
    upgrade: Upgrade,
    code: u16,
    reason: String,
    slot: Option<ConnSlot>,
) -> Response {
    let resp = upgrade.response();
    gw.sessions.spawn(async move {
        let _slot = slot;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(READ_BUFFER_BYTES))
            .max_frame_size(Some(READ_BUFFER_BYTES));
        let finish = async move {
            let mut socket = upgrade.accept(config, None).await.ok()?;
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            socket.close(Some(frame)).await.ok()?;
            // Read until the client's Close (or anything else ends the stream).
            while let Some(Ok(_)) = socket.next().await {}
            Some(())
        };
        let _ = tokio::time::timeout(REFUSAL_CLOSE_WAIT, finish).await;
    });
    resp
}

/// A refusal and the tenant it is counted against (`None` until the tenant is
/// known).
struct Refused {
    tenant: Option<Arc<str>>,
    refusal: HandshakeRefusal,
}

/// The admission chain, in the order of the module doc.
async fn admit(
    gw: &Arc<Hub>,
    remote: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    not_upgrade: Option<NotUpgrade>,
    upgrade: &mut Option<Upgrade>,
    slot: Option<ConnSlot>,
) -> Result<Response, Refused> {
    let anonymous = |refusal| Refused {
        tenant: None,
        refusal,
    };
    not_draining(gw).map_err(anonymous)?;
    within_ip_limit(gw, remote).map_err(anonymous)?;
    let query = parse_query(query).map_err(anonymous)?;
    let (tenant, rt) = find_tenant(gw, &query.tenant).map_err(anonymous)?;
    let of_tenant = |refusal| Refused {
        tenant: Some(Arc::clone(&tenant.id)),
        refusal,
    };
    check_upgrade_headers(not_upgrade).map_err(of_tenant)?;
    check_origin(&rt, headers).map_err(of_tenant)?;
    tenant_has_room(&tenant, &rt).map_err(of_tenant)?;
    within_global_limit(gw).map_err(of_tenant)?;
    let identity = authenticate(gw, &tenant, &rt, query.ticket, headers, remote)
        .await
        .map_err(of_tenant)?;
    open_session(gw, &tenant, &rt, identity, upgrade, slot, remote)
        .await
        .map_err(of_tenant)
}

/// Step 1: a draining gateway takes no new sessions.
pub(super) fn not_draining(gw: &Hub) -> Result<(), HandshakeRefusal> {
    if gw.is_draining() {
        Err(HandshakeRefusal::Draining)
    } else {
        Ok(())
    }
}

/// Step 2: the per-IP handshake budget.
fn within_ip_limit(gw: &Hub, remote: SocketAddr) -> Result<(), HandshakeRefusal> {
    gw.handshake_limiter()
        .check_ip(remote.ip())
        .map_err(throttled)
}

/// Step 8: the global handshake budget.
fn within_global_limit(gw: &Hub) -> Result<(), HandshakeRefusal> {
    gw.handshake_limiter().check_global().map_err(throttled)
}

/// Both handshake budgets at once, for endpoints without an admission chain
/// (`/v1/echo`).
pub(super) fn within_handshake_limit(gw: &Hub, remote: SocketAddr) -> Result<(), HandshakeRefusal> {
    gw.handshake_limiter().check(remote.ip()).map_err(throttled)
}

/// The runtime instant of a JWT `exp` (seconds since the Unix epoch).
fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(exp).saturating_sub(now);
    tokio::time::Instant::now() + left
}

fn throttled(t: crate::policy::rate_limit::Throttled) -> HandshakeRefusal {
    HandshakeRefusal::RateLimited {
        retry_after_secs: t.retry_after_secs,
    }
}

/// Step 4: a configured tenant whose config is still in force (a tenant removed
/// by a reload keeps its entry only until its sessions are gone).
fn find_tenant(gw: &Hub, id: &str) -> Result<(Arc<Tenant>, Arc<TenantRuntime>), HandshakeRefusal> {
    let tenant = gw.tenant(id).ok_or(HandshakeRefusal::UnknownTenant)?;
    let rt = tenant.runtime().ok_or(HandshakeRefusal::UnknownTenant)?;
    Ok((tenant, rt))
}

/// Step 5: a WebSocket upgrade, version 13 (`ws::prepare` found no fault).
fn check_upgrade_headers(not_upgrade: Option<NotUpgrade>) -> Result<(), HandshakeRefusal> {
    match not_upgrade {
        None => Ok(()),
        Some(NotUpgrade::Version) => Err(HandshakeRefusal::UnsupportedWsVersion),
        Some(NotUpgrade::Headers) => Err(HandshakeRefusal::NotUpgrade),
    }
}

/// Step 6: an `Origin`, when sent, must be one of the tenant's `allowed_origins`
/// (exact match); an empty list admits any.
fn check_origin(rt: &TenantRuntime, headers: &HeaderMap) -> Result<(), HandshakeRefusal> {
    let allowed = &rt.cfg.allowed_origins;
    match headers.get(header::ORIGIN) {
        Some(origin)
            if !allowed.is_empty()
                && !origin
                    .to_str()
                    .is_ok_and(|o| allowed.iter().any(|a| a == o)) =>
        {
            Err(HandshakeRefusal::ForbiddenOrigin)
        }
        _ => Ok(()),
    }
}

/// Step 7: a tenant at `max_sessions_total` refuses before spending auth work
/// (unless `kick_oldest` makes room when the session registers).
fn tenant_has_room(tenant: &Tenant, rt: &TenantRuntime) -> Result<(), HandshakeRefusal> {
    let limits = rt.policy.session_limits;
    if limits.max_sessions_total > 0
        && tenant.broker.stats().sessions as u64 >= limits.max_sessions_total
        && !limits.kick_oldest
    {
        return Err(HandshakeRefusal::TenantFull);
    }
    Ok(())
}

/// Step 9: the ticket from the query, else from `Authorization: Bearer`, checked
/// by the tenant's authenticator. Returns who it names.
async fn authenticate(
    gw: &Hub,
    tenant: &Tenant,
    rt: &TenantRuntime,
    query_ticket: Option<String>,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<Identity, HandshakeRefusal> {
    let ticket = query_ticket
        .or_else(|| bearer(headers))
        .ok_or(HandshakeRefusal::MissingTicket)?;
    if ticket.len() > MAX_TICKET_BYTES {
        return Err(HandshakeRefusal::Unauthorized);
    }
    rt.auth.identify(&ticket, remote.ip()).await.map_err(|e| {
        gw.metrics
            .backend_calls
            .with_label_values(&[&tenant.id, "auth", e.label()])
            .inc();
        HandshakeRefusal::Unauthorized
    })
}

/// Step 10: opens the session (`crate::session::open`: registration under the
/// session policy, kicking the user's oldest session when the policy says so,
/// the greeting) and spawns the session task that completes the upgrade. The
/// upgrade is taken only once the session is open; a refusal leaves it for
/// `refusal=close`.
async fn open_session(
    gw: &Arc<Hub>,
    tenant: &Arc<Tenant>,
    rt: &TenantRuntime,
    identity: Identity,
    upgrade: &mut Option<Upgrade>,
    slot: Option<ConnSlot>,
    remote: SocketAddr,
) -> Result<Response, HandshakeRefusal> {
    if upgrade.is_none() {
        return Err(HandshakeRefusal::NotUpgrade);
    }
    let expires = rt
        .cfg
        .auth
        .close_at_expiry
        .then_some(identity.expires_at)
        .flatten()
        .map(expiry_instant);
    let crate::session::Opened { guard, greeting } =
        crate::session::open(gw, tenant, rt, identity.user)
            .await
            .map_err(|e| match e {
                RegisterError::UserLimit => HandshakeRefusal::UserLimit,
                RegisterError::TenantFull => HandshakeRefusal::TenantFull,
            })?;
    let Some(upgrade) = upgrade.take() else {
        return Err(HandshakeRefusal::NotUpgrade);
    };
    // From here on the guard closes the session whatever happens.
    let sid = guard.entry().sid;
    gw.metrics
        .handshakes
        .with_label_values(&[&tenant.id, "ok"])
        .inc();

    let max_frame = rt.cfg.limits.max_frame_bytes;
    // At `debug`: a span per session costs ~0.5 KiB of resident memory
    // while it is enabled (the subscriber keeps its fields formatted), and
    // the `info` events a session can cause (plugin log lines, plugin
    // faults) name their session themselves.
    let span = debug_span!("session", tenant = %tenant.id, sid = %sid, remote.addr = %remote);
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
    // Boxed: the handshake's state is large and needed only until the upgrade
    // completes, not for the session's life.
    let accept = Box::pin(upgrade.accept(config, Some(Arc::clone(&budget))));
    let entry = Arc::clone(guard.entry());
    let session = session::run(accept, guard, greeting, budget, expires, slot);
    // A disabled span (the default level) is not carried in the task.
    let task = if span.is_disabled() {
        gw.sessions.spawn(session)
    } else {
        gw.sessions.spawn(session.instrument(span))
    };
    entry.set_task(task.abort_handle());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("tenant=acme&ticket=a%20b&x=1")).expect("valid");
        assert_eq!(q.tenant, "acme");
        assert_eq!(q.ticket.as_deref(), Some("a b"));
        let refusal = |q| parse_query(q).err();
        assert_eq!(
            refusal(Some("ticket=x")),
            Some(HandshakeRefusal::MissingTenant)
        );
        assert_eq!(refusal(None), Some(HandshakeRefusal::MissingTenant));
        for malformed in [
            "tenant=%FF&ticket=x",
            "tenant=a&ticket=%C3",
            "tenant=a&x=%E2%82",
        ] {
            assert_eq!(
                refusal(Some(malformed)),
                Some(HandshakeRefusal::MalformedQuery),
                "{malformed}"
            );
        }
        let q = parse_query(Some("tenant=a&ticket=%C3%A9+%E2%9C%93")).expect("UTF-8 escapes");
        assert_eq!(q.ticket.as_deref(), Some("é ✓"));
        assert_eq!(
            refusal(Some("tenant=a&tenant=b&ticket=x")),
            Some(HandshakeRefusal::DuplicateParameter)
        );
        assert_eq!(
            refusal(Some("tenant=a&ticket=x&ticket=y")),
            Some(HandshakeRefusal::DuplicateParameter)
        );
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
