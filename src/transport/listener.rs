//! The accept loop shared by the public and admin listeners.
//!
//! `axum::serve` installs no hyper timer, so a client that never finishes its
//! request head would hold a connection forever; this loop serves each connection
//! with hyper's HTTP/1 builder, a header read timeout and upgrades enabled, sets
//! `TCP_NODELAY`, and hands the peer address to handlers as `ConnectInfo`.
//!
//! Oversized requests get a clear 4xx before any handler runs: a request head
//! over [`MAX_HEAD_BYTES`] gets 431 from hyper (that includes a request line
//! longer than the head limit), and a request target over [`MAX_URI_BYTES`] gets
//! 414 here (hyper's own URI limit is 64 KiB, beyond the head limit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::debug;

/// Time allowed to send a complete request head (slowloris bound).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head buffered; larger heads get 431.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Longest request target (path and query) served; longer ones get 414. Room
/// for the longest ticket (8 KiB, e.g. a JWT in the query) plus the tenant.
pub(crate) const MAX_URI_BYTES: usize = 16 * 1024;

/// Serves `app` on `listener` until `stop` is cancelled, then lets in-flight HTTP
/// requests finish (upgraded WebSockets are tracked by the gateway, not here).
pub(crate) async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        conns.spawn(serve_connection(stream, remote, app, stop));
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    app: Router,
    stop: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        let app = app.clone();
        async move {
            let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
            if target_len > MAX_URI_BYTES {
                return Ok::<_, Infallible>(uri_too_long());
            }
            Ok::<_, Infallible>(
                app.oneshot(req.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|e| match e {}),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // `max_buf_size` alone only refuses a head still incomplete when the
        // buffer fills; a larger head that arrives in one read completes first.
        // `max_header_size` also bounds a complete head.
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                debug!(error = %e, remote.addr = %remote, "http connection ended with error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// The 414 answer for a request target over [`MAX_URI_BYTES`].
fn uri_too_long() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::URI_TOO_LONG,
        [(axum::http::header::CONNECTION, "close")],
        "request target too long\n",
    )
        .into_response()
}
