//! `auth.mode: webhook`: asks the operator's backend whether a ticket is good.
//!
//! POSTs `{"tenant","ticket","ip"}` as JSON to the URL of upstream
//! `auth.upstream` joined with `auth.path`, bounded by that upstream's
//! `timeout_ms`. Only HTTP 200 with a JSON body `{"user": "<non-empty string>"}`
//! admits; any other status, a bad or oversized body, a timeout or a connection
//! failure refuses.
//!
//! Must not: log the ticket or the reply body, or follow redirects (the shared
//! client never does).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{AuthError, Context};
use crate::backend::{error_label, read_body_limited};
use crate::config::{AuthConfig, BackendConfig};

/// Largest reply body read; `{"user": "..."}` needs a few bytes, so anything near
/// this is a misbehaving backend, not a user id.
const MAX_WEBHOOK_REPLY_BYTES: usize = 64 * 1024;

/// A tenant's auth webhook.
pub(super) struct Webhook {
    /// Sent in the request body so one backend can serve several tenants.
    tenant: Arc<str>,
    /// Upstream URL joined with `auth.path`, parsed at load.
    url: reqwest::Url,
    /// The upstream's `timeout_ms`: the whole exchange, connect to last byte.
    timeout: Duration,
    http: reqwest::Client,
}

#[derive(serde::Serialize)]
struct AskBody<'a> {
    tenant: &'a str,
    ticket: &'a str,
    ip: String,
}

#[derive(serde::Deserialize)]
struct Reply {
    user: String,
}

impl Webhook {
    pub(super) fn from_config(
        tenant: Arc<str>,
        auth: &AuthConfig,
        backend: &BackendConfig,
        http: reqwest::Client,
        ctx: Context<'_>,
    ) -> Result<Self, String> {
        let Some(name) = auth.upstream.as_deref() else {
            return Err(ctx(
                "upstream",
                "webhook auth needs an upstream name from backend.upstreams".to_owned(),
            ));
        };
        let Some(upstream) = backend.upstreams.get(name) else {
            return Err(ctx(
                "upstream",
                format!("upstream `{name}` is not defined in backend.upstreams"),
            ));
        };
        let joined = join_url(&upstream.url, auth.path.as_deref().unwrap_or(""));
        let url = reqwest::Url::parse(&joined)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                ctx(
                    "path",
                    format!("`{joined}` (upstream `{name}` url + path) is not an http(s) URL"),
                )
            })?;
        Ok(Self {
            tenant,
            url,
            timeout: Duration::from_millis(upstream.timeout_ms),
            http,
        })
    }

    /// Asks the backend about `ticket`.
    pub(super) async fn ask(&self, ticket: &str, ip: IpAddr) -> Result<Arc<str>, AuthError> {
        let body = AskBody {
            tenant: &self.tenant,
            ticket,
            ip: ip.to_string(),
        };
        let exchange = async {
            let resp = self
                .http
                .post(self.url.clone())
                .json(&body)
                .send()
                .await
                .map_err(|e| AuthError::Unavailable(error_label(&e)))?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(AuthError::Refused(status));
            }
            let bytes = read_body_limited(resp, MAX_WEBHOOK_REPLY_BYTES)
                .await
                .map_err(AuthError::BadResponse)?;
            let reply: Reply =
                serde_json::from_slice(&bytes).map_err(|_| AuthError::BadResponse("bad_json"))?;
            if reply.user.is_empty() {
                return Err(AuthError::BadResponse("empty_user"));
            }
            Ok(Arc::from(reply.user))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AuthError::Unavailable("timeout"))?
    }
}

/// `base` + `path` with exactly one `/` between them (either may carry it).
fn join_url(base: &str, path: &str) -> String {
    if path.is_empty() {
        return base.to_owned();
    }
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
