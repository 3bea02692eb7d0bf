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
//!
//! The public listener counts its open sockets ([`ConnectionCap`],
//! `gateway.max_connections`): each accepted connection holds a [`ConnSlot`]
//! that handlers find in the request's extensions and move into the task that
//! serves an upgraded socket, so a slot is freed when the socket closes,
//! whether it stayed HTTP or became a WebSocket. At the cap a new connection is
//! answered 503 (`over_capacity`) and closed; past a margin above the cap it is
//! closed at accept without reading a byte. The admin listener has no cap and
//! its own accept loop, so it keeps answering while the public one is full.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::net::{TcpListener, TcpStream};
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

/// Time allowed to send a request head to a connection that will be refused
/// for `max_connections`.
const OVER_CAPACITY_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// The open-socket bound of a listener (`gateway.max_connections`).
pub(crate) struct ConnectionCap {
    open: Arc<AtomicUsize>,
    /// The bound in force, read at each accept (a reload changes it).
    max: Box<dyn Fn() -> u64 + Send + Sync>,
    gauge: IntGauge,
    refused: IntCounterVec,
}

impl std::fmt::Debug for ConnectionCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCap")
            .field("open", &self.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What to do with an accepted connection.
enum Admission {
    /// Serve it.
    Serve(ConnSlot),
    /// Answer 503 and close.
    Refuse(ConnSlot),
    /// Close it without reading.
    Close,
}

impl ConnectionCap {
    /// A cap reading its bound from `max` (0 = none), reporting to the
    /// `wsprism_connections_*` families.
    pub(crate) fn new(
        max: impl Fn() -> u64 + Send + Sync + 'static,
        gauge: IntGauge,
        refused: IntCounterVec,
    ) -> Self {
        Self {
            open: Arc::default(),
            max: Box::new(max),
            gauge,
            refused,
        }
    }

    /// Counts the new connection and decides its fate: served up to the cap,
    /// answered 503 up to the margin above it (a sixteenth of the cap, at
    /// least 64), closed beyond.
    fn admit(&self) -> Admission {
        let max = (self.max)();
        let open = self.open.fetch_add(1, Ordering::AcqRel) as u64;
        let slot = ConnSlot {
            _guard: Arc::new(SlotGuard {
                open: Arc::clone(&self.open),
                gauge: self.gauge.clone(),
            }),
        };
        self.gauge.inc();
        if max == 0 || open < max {
            Admission::Serve(slot)
        } else if open < max.saturating_add((max / 16).max(64)) {
            self.refused.with_label_values(&["over_capacity"]).inc();
            Admission::Refuse(slot)
        } else {
            self.refused.with_label_values(&["closed_at_accept"]).inc();
            Admission::Close
        }
    }
}

/// One open client socket, counted against [`ConnectionCap`] until the last
/// clone is dropped (the HTTP connection task holds one, and the task serving
/// an upgraded socket takes another from the request's extensions).
#[derive(Clone, Debug)]
pub(crate) struct ConnSlot {
    _guard: Arc<SlotGuard>,
}

#[derive(Debug)]
struct SlotGuard {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// Serves `app` on `listener` until `stop` is cancelled, then lets in-flight HTTP
/// requests finish (upgraded WebSockets are tracked by the gateway, not here).
/// With a `cap`, open sockets are bounded as the module doc says.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    cap: Option<ConnectionCap>,
) {
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
        let slot = match cap.as_ref().map(ConnectionCap::admit) {
            None => None,
            Some(Admission::Serve(slot)) => Some(slot),
            Some(Admission::Refuse(slot)) => {
                conns.spawn(refuse_connection(stream, slot));
                continue;
            }
            Some(Admission::Close) => {
                // Dropping the stream closes it (and undoes the count).
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let stop = stop.clone();
        conns.spawn(serve_connection(stream, remote, app, stop, slot));
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conns.wait()).await;
}

/// Answers every request on `stream` with the `over_capacity` 503 and closes.
async fn refuse_connection(stream: TcpStream, slot: ConnSlot) {
    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(crate::error::HandshakeRefusal::OverCapacity.into_response())
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(OVER_CAPACITY_HEAD_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(2 * OVER_CAPACITY_HEAD_TIMEOUT, conn).await;
    drop(slot);
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    stop: CancellationToken,
    slot: Option<ConnSlot>,
) {
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        if let Some(slot) = &slot {
            req.extensions_mut().insert(slot.clone());
        }
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
    (
        axum::http::StatusCode::URI_TOO_LONG,
        [(axum::http::header::CONNECTION, "close")],
        "request target too long\n",
    )
        .into_response()
}
