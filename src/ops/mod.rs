//! Operational endpoints: `/healthz` and `/readyz` on the public listener,
//! `/metrics` and the status page on the admin listener.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::gateway::Gateway;
use crate::session::Hub;

/// Liveness: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Readiness: 503 once a drain has started. In cluster mode a node whose
/// Redis links are down stays in the load balancer (200) but says
/// `"degraded"`: an outage of the shared Redis must not take every node out.
pub(crate) async fn readyz(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    if hub.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        );
    }
    let body = match &hub.cluster {
        None => json!({"status": "ready"}),
        Some(node) if node.is_up() => json!({"status": "ready", "cluster": "up"}),
        Some(_) => json!({"status": "degraded", "cluster": "down"}),
    };
    (StatusCode::OK, Json(body))
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
