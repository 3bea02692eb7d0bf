//! Operational endpoints: `/healthz` and `/readyz` on the public listener,
//! `/metrics` on the admin listener.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::gateway::Gateway;

/// Liveness: the process answers.
pub(crate) async fn healthz() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

/// Readiness: 503 once a drain has started.
pub(crate) async fn readyz(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    if gw.is_draining() {
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
