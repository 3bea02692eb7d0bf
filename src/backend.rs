//! Outbound HTTP to the operator's backend upstreams (`tenants[].backend.upstreams`).
//!
//! Owns: the one process-wide `reqwest::Client` (connection pool, connect timeout,
//! no proxies taken from the environment, no redirects) and the bounded helpers
//! every caller uses to talk to an upstream: [`BackendClient::post_event`] for
//! lifecycle notifications and [`read_body_limited`] for reading a reply without
//! trusting its size. The auth webhook and the JWKS fetcher (`auth`) borrow the
//! client through [`BackendClient::http`].
//!
//! Must not: log request or response bodies (they carry tickets and user data), or
//! follow redirects (a request must only ever reach the URL the config names).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::UpstreamConfig;

/// Bound on establishing a TCP (+TLS) connection to an upstream. Each request is
/// also bounded as a whole by its upstream's `timeout_ms`; this only stops a
/// black-holed host from eating that whole budget on every pooled reconnect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections are closed after this long; shorter than the common
/// 60-120 s server-side idle cut so we rarely reuse a connection the peer just closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per upstream host; enough for bursts of connect/disconnect
/// events without holding hundreds of sockets open.
const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// Largest event reply we bother draining (we only want the status; draining lets
/// the connection go back to the pool).
const MAX_EVENT_REPLY_BYTES: usize = 64 * 1024;
/// Sent on every request so backend logs can tell gateway traffic apart.
const USER_AGENT: &str = concat!("wsprism/", env!("CARGO_PKG_VERSION"));

/// The process-wide HTTP client for backend upstreams. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BackendClient {
    /// Shared pool; `reqwest::Client` is an `Arc` inside.
    client: reqwest::Client,
}

impl Default for BackendClient {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendClient {
    /// Builds the client: pooled keep-alive, [`CONNECT_TIMEOUT`], proxies from the
    /// environment ignored, redirects never followed. Build it once per process.
    pub fn new() -> Self {
        let built = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build();
        let client = match built {
            Ok(client) => client,
            Err(e) => {
                // `build` fails only if the TLS backend cannot initialise or an option
                // is invalid; ours are static. Keep serving with the least surprising
                // fallback (still no env proxies) rather than aborting the process.
                tracing::error!(
                    error = %e,
                    "cannot build the backend http client; using a minimal one"
                );
                reqwest::Client::builder()
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default()
            }
        };
        Self { client }
    }

    /// The shared client, for callers with their own request shape (auth webhook,
    /// JWKS fetch). Cloning is cheap and shares the pool.
    pub fn http(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// POSTs `body` as JSON to `upstream.url`, bounded by `upstream.timeout_ms`.
    ///
    /// Callers treat this as fire-and-forget (spawn it); the result is for metrics
    /// and a `debug!` line. Any HTTP answer counts as delivered: the status is
    /// returned and the reply body is drained (bounded) so the connection can be
    /// reused, but never read for meaning.
    ///
    /// # Errors
    /// A reason label, one of `timeout`, `connect`, `invalid_request`, `request`.
    pub async fn post_event(
        &self,
        upstream: &UpstreamConfig,
        body: &serde_json::Value,
    ) -> Result<u16, &'static str> {
        let deadline = Instant::now() + Duration::from_millis(upstream.timeout_ms);
        let send = self.client.post(&upstream.url).json(body).send();
        let resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err("timeout"),
            Ok(Err(e)) => return Err(error_label(&e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        // The status is what we came for; a slow or oversized reply body only
        // costs us the pooled connection, not the outcome.
        let _drained =
            tokio::time::timeout_at(deadline, read_body_limited(resp, MAX_EVENT_REPLY_BYTES)).await;
        Ok(status)
    }
}

/// A low-cardinality label for a failed request, for logs and metrics.
pub(crate) fn error_label(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_builder() {
        "invalid_request"
    } else {
        "request"
    }
}

/// Reads a response body, refusing it as soon as it exceeds `limit` bytes (by
/// `Content-Length` up front, or while streaming). Has no time bound of its own:
/// callers wrap it in their request deadline.
///
/// # Errors
/// `too_large` past the limit, `body` if the stream fails midway.
///
/// # Cancel safety
/// Cancelling drops the response and its connection; nothing else is held.
pub(crate) async fn read_body_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, &'static str> {
    if resp.content_length().is_some_and(|len| len > limit as u64) {
        return Err("too_large");
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| "body")? {
        if buf.len() + chunk.len() > limit {
            return Err("too_large");
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
    use parking_lot::Mutex;

    use super::*;

    type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

    async fn serve(router: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        addr
    }

    fn upstream(url: String, timeout_ms: u64) -> UpstreamConfig {
        UpstreamConfig { url, timeout_ms }
    }

    #[tokio::test]
    async fn post_event_delivers_the_json_body() {
        let seen: Seen = Arc::default();
        let router = Router::new()
            .route(
                "/events",
                post(
                    |State(seen): State<Seen>, Json(body): Json<serde_json::Value>| async move {
                        seen.lock().push(body);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(seen.clone());
        let addr = serve(router).await;
        let body = serde_json::json!({"event": "connect", "tenant": "acme", "user": "u1"});
        let status = BackendClient::new()
            .post_event(&upstream(format!("http://{addr}/events"), 2_000), &body)
            .await;
        assert_eq!(status, Ok(204));
        assert_eq!(seen.lock().as_slice(), &[body]);
    }

    #[tokio::test]
    async fn post_event_reports_non_2xx_status_as_delivered() {
        let router = Router::new().route("/events", post(|| async { StatusCode::BAD_GATEWAY }));
        let addr = serve(router).await;
        let status = BackendClient::new()
            .post_event(
                &upstream(format!("http://{addr}/events"), 2_000),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(status, Ok(502));
    }

    #[tokio::test]
    async fn post_event_times_out_within_the_upstream_timeout() {
        let router = Router::new().route(
            "/events",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }),
        );
        let addr = serve(router).await;
        let started = Instant::now();
        let status = BackendClient::new()
            .post_event(
                &upstream(format!("http://{addr}/events"), 200),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(status, Err("timeout"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn post_event_to_a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let status = BackendClient::new()
            .post_event(
                &upstream(format!("http://{addr}/events"), 2_000),
                &serde_json::json!({}),
            )
            .await;
        assert_eq!(status, Err("connect"));
    }
}
