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

use super::client_ip;
use super::tls::ClientStream;
use crate::session::Hub;

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

/// What the public listener checks at accept, from the config in force (a
/// reload changes it for the next connection): the open-socket bound
/// (`gateway.max_connections`) and whether a PROXY header is expected.
#[derive(Debug)]
pub(crate) struct PublicAccept {
    hub: Arc<Hub>,
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
    refused: IntCounterVec,
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

impl PublicAccept {
    /// Checks for `hub`'s public listener, reporting to the
    /// `wsprism_connections_*` families.
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self {
            gauge: hub.metrics.connections_open.clone(),
            refused: hub.metrics.connections_refused.clone(),
            open: Arc::default(),
            hub,
        }
    }

    /// The TLS acceptor in force (`gateway.tls`), if TLS is on.
    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.hub
            .tls
            .load_full()
            .map(tokio_rustls::TlsAcceptor::from)
    }

    /// Applies `gateway.queues.socket_send_buffer_bytes` to a client socket.
    fn size_send_buffer(&self, stream: &tokio::net::TcpStream) {
        let bytes = self.hub.config().gateway.queues.socket_send_buffer_bytes;
        if bytes > 0
            && let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(bytes)
        {
            debug!(error = %e, "SO_SNDBUF not applied");
        }
    }

    /// Whether a connection from `peer` must start with a PROXY header.
    fn expects_proxy_header(&self, peer: SocketAddr) -> bool {
        let cfg = self.hub.config();
        cfg.gateway.proxy_protocol && client_ip::is_trusted(peer.ip(), &cfg.gateway.trusted_proxies)
    }

    /// Counts the new connection and decides its fate: served up to the cap
    /// (0 = none), answered 503 up to the margin above it (a sixteenth of the
    /// cap, at least 64), closed beyond.
    fn admit(&self) -> Admission {
        let max = self.hub.config().gateway.max_connections;
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

/// One open client socket, counted against [`PublicAccept`] until the last
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
/// The public listener passes its [`PublicAccept`] checks: open sockets are
/// bounded as the module doc says, and trusted proxies' PROXY headers read.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    public: Option<PublicAccept>,
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
        let slot = match public.as_ref().map(PublicAccept::admit) {
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
        if let Some(p) = &public {
            p.size_send_buffer(&stream);
        }
        let app = app.clone();
        let stop = stop.clone();
        let proxy_header = public
            .as_ref()
            .is_some_and(|p| p.expects_proxy_header(remote));
        let tls = public.as_ref().and_then(PublicAccept::tls);
        conns.spawn(async move {
            let mut stream = stream;
            let remote = if proxy_header {
                match client_ip::read_proxy_header(&mut stream, remote).await {
                    Ok(client) => client,
                    Err(e) => {
                        debug!(remote.addr = %remote, error = ?e, "PROXY header refused; closing");
                        return;
                    }
                }
            } else {
                remote
            };
            let stream = match tls {
                None => ClientStream::Plain(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            debug!(remote.addr = %remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(remote.addr = %remote, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            serve_connection(stream, remote, app, stop, slot).await;
        });
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
    stream: ClientStream,
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
