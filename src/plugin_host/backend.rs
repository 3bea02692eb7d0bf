//! The `backend` import: HTTP requests from a plugin to one of its tenant's
//! configured upstreams, and nowhere else.
//!
//! Owns: URL confinement (the path is appended to the upstream URL and the result
//! must keep the upstream's scheme, host, port and base path: dot segments,
//! percent-encoded dots and backslashes are refused before parsing, and the
//! parsed path must still start with the base path), header filtering, the timeout
//! (the upstream's `timeout_ms`, cut further by the call's wall-clock deadline)
//! and the response body cap. Called from `bindings.rs`; returns typed errors
//! that become `host-error` results for the guest.

use std::time::Duration;

use tokio::time::Instant;

use super::limits::MAX_BACKEND_BODY_BYTES;
use crate::config::TenantConfig;

/// A request as the guest described it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Upstream name.
    pub(crate) upstream: String,
    /// HTTP method.
    pub(crate) method: String,
    /// Path and query, starting with `/`.
    pub(crate) path: String,
    /// Headers.
    pub(crate) headers: Vec<(String, String)>,
    /// Body.
    pub(crate) body: Vec<u8>,
}

/// The upstream's answer.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// Headers (values that are not UTF-8 are left out).
    pub(crate) headers: Vec<(String, String)>,
    /// Body, at most [`MAX_BACKEND_BODY_BYTES`].
    pub(crate) body: Vec<u8>,
}

/// Why a backend request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BackendError {
    /// The tenant has no upstream of that name.
    #[error("unknown upstream `{0}`")]
    UnknownUpstream(String),
    /// Bad method, path or header.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// Timeout, connection failure, oversized body.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

/// Headers a plugin may not set: connection management belongs to the client.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
];

/// Resolves `path` against the upstream's base URL, refusing anything that would
/// leave it (userinfo tricks, absolute URLs, scheme-relative paths, `..` and
/// its encodings, backslashes some servers read as `/`).
pub(crate) fn resolve(base: &str, path: &str) -> Result<reqwest::Url, BackendError> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(BackendError::InvalidArgument(
            "path must start with a single `/`".into(),
        ));
    }
    let path_part = path.split(['?', '#']).next().unwrap_or_default();
    let lower = path_part.to_ascii_lowercase();
    if path_part.contains('\\')
        || lower.contains("%2e")
        || lower.contains("%5c")
        || path_part.split('/').any(|seg| seg == "." || seg == "..")
    {
        return Err(BackendError::InvalidArgument(
            "path must not contain dot segments, encoded dots or backslashes".into(),
        ));
    }
    let base_url = reqwest::Url::parse(base)
        .map_err(|_| BackendError::Unavailable("upstream url is invalid".into()))?;
    let joined = format!("{}{}", base.trim_end_matches('/'), path);
    let url = reqwest::Url::parse(&joined)
        .map_err(|_| BackendError::InvalidArgument("path does not form a valid URL".into()))?;
    if url.scheme() != base_url.scheme()
        || url.host_str() != base_url.host_str()
        || url.port_or_known_default() != base_url.port_or_known_default()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(BackendError::InvalidArgument(
            "path must stay on the upstream".into(),
        ));
    }
    let base_path = base_url.path().trim_end_matches('/');
    let under_base = url
        .path()
        .strip_prefix(base_path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !under_base {
        return Err(BackendError::InvalidArgument(
            "path must stay under the upstream's base path".into(),
        ));
    }
    Ok(url)
}

/// Sends one request.
///
/// # Errors
/// [`BackendError`] for an unknown upstream, a refused request, a timeout, a
/// transport failure or a body over [`MAX_BACKEND_BODY_BYTES`].
pub(crate) async fn send(
    http: &reqwest::Client,
    tenant: &TenantConfig,
    req: Request,
    deadline: Option<Instant>,
) -> Result<Response, BackendError> {
    let upstream = tenant
        .backend
        .upstreams
        .get(&req.upstream)
        .ok_or_else(|| BackendError::UnknownUpstream(req.upstream.clone()))?;
    let url = resolve(&upstream.url, &req.path)?;
    let method = match req.method.to_ascii_uppercase().as_str() {
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        "PUT" => reqwest::Method::PUT,
        "PATCH" => reqwest::Method::PATCH,
        "DELETE" => reqwest::Method::DELETE,
        "HEAD" => reqwest::Method::HEAD,
        _ => {
            return Err(BackendError::InvalidArgument(format!(
                "unsupported method `{}`",
                req.method
            )));
        }
    };
    let mut timeout = Duration::from_millis(upstream.timeout_ms);
    if let Some(d) = deadline {
        timeout = timeout.min(d.saturating_duration_since(Instant::now()));
    }
    if timeout.is_zero() {
        return Err(BackendError::Unavailable(
            "no time left in this call".into(),
        ));
    }
    let mut builder = http.request(method, url).timeout(timeout);
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BackendError::InvalidArgument(format!("bad header name `{name}`")))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| BackendError::InvalidArgument("bad header value".into()))?;
        builder = builder.header(name, value);
    }
    if !req.body.is_empty() {
        builder = builder.body(req.body);
    }
    let work = async {
        let mut resp = builder
            .send()
            .await
            .map_err(|e| BackendError::Unavailable(transport_error(&e)))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| BackendError::Unavailable(transport_error(&e)))?
        {
            if body.len() + chunk.len() > MAX_BACKEND_BODY_BYTES {
                return Err(BackendError::Unavailable(format!(
                    "response body over {MAX_BACKEND_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    };
    // reqwest's timeout covers the body too, but keep one explicit bound so the
    // contract does not depend on the client's configuration.
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| BackendError::Unavailable("timed out".into()))?
}

/// A safe description of a transport error (no URL, which may carry a query).
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_upstream() {
        let base = "http://127.0.0.1:3000";
        assert_eq!(
            resolve(base, "/a/b?x=1").map(|u| u.to_string()),
            Ok("http://127.0.0.1:3000/a/b?x=1".to_owned())
        );
        assert!(resolve("http://127.0.0.1:3000/api/", "/v1").is_ok_and(|u| u.path() == "/api/v1"));
        for bad in ["@evil.com/", "//evil.com/x", "http://evil.com/", "x", ""] {
            assert!(resolve(base, bad).is_err(), "{bad}");
        }
    }

    /// Issue 11 item 7: a plugin confined to `http://host/game/` cannot reach
    /// `/admin` on the same host by climbing out of the base path.
    #[test]
    fn paths_cannot_leave_the_base_path() {
        let base = "http://127.0.0.1:3000/game/";
        let ok = |p: &str| resolve(base, p).map(|u| u.path().to_owned());
        assert_eq!(ok("/scores"), Ok("/game/scores".to_owned()));
        assert_eq!(ok("/a/b.c/..x?q=../.."), Ok("/game/a/b.c/..x".to_owned()));
        for bad in [
            "/../admin",
            "/a/../../admin",
            "/./x",
            "/a/..",
            "/%2e%2e/admin",
            "/%2E%2e/admin",
            "/.%2e/admin",
            "/a\\..\\..\\admin",
            "/a%5c..%5cadmin",
        ] {
            assert!(
                matches!(resolve(base, bad), Err(BackendError::InvalidArgument(_))),
                "{bad}"
            );
        }
        // A base path without a trailing slash is a prefix on a segment
        // boundary, not a string prefix.
        assert!(resolve("http://127.0.0.1:3000/game", "/x").is_ok_and(|u| u.path() == "/game/x"));
    }
}
