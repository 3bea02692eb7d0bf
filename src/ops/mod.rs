//! Operational endpoints: `/healthz` and `/readyz` on the public listener,
//! `/metrics` and the status page on the admin listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::gateway::Gateway;
use crate::session::Hub;

/// Liveness: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Readiness: 503 once a drain has started.
pub(crate) async fn readyz(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    if hub.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Prometheus text exposition.
pub(crate) async fn metrics(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.metrics.render(),
    )
}

/// The status page (`/` on the admin listener): one self-contained HTML file that
/// reads `/metrics` and the server API from the browser, like any other client.
pub(crate) async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        include_str!("status.html"),
    )
}
