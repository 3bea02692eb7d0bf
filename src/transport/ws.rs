//! The WebSocket upgrade (RFC 6455 §4.2) and the socket type both WebSocket
//! endpoints use.
//!
//! The gateway answers the handshake itself instead of through axum's
//! `WebSocketUpgrade` so that it owns the byte stream under tungstenite:
//! [`LeanIo`] reads what the kernel has into a per-thread scratch buffer and
//! hands tungstenite small chunks, so a connection keeps a 256-byte read buffer
//! (idle memory) without paying one `recv` per 256 bytes of a large message,
//! and it bounds the bytes a peer may send without completing a message (an
//! endless stream of empty continuation frames otherwise costs CPU until the
//! idle timeout). It also keeps the TCP stream itself (taken back from hyper
//! after the switch) so a session can end with a reset that discards what the
//! kernel still buffers for a peer that cannot keep up
//! ([`LeanIo::reset_on_close`]).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tls::ClientStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

/// An accepted WebSocket (over plain TCP or TLS).
pub(crate) type Socket = WebSocketStream<LeanIo<ClientStream>>;

/// Why a request is not an acceptable WebSocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotUpgrade {
    /// Missing or wrong `Connection`/`Upgrade`/`Sec-WebSocket-Key`, or a
    /// connection that cannot be upgraded (400).
    Headers,
    /// `Sec-WebSocket-Version` other than 13 (426 with `Sec-WebSocket-Version: 13`).
    Version,
}

/// A validated upgrade request: answer it with [`Upgrade::response`], then
/// await [`Upgrade::accept`] in the task that serves the socket.
#[derive(Debug)]
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Checks the handshake headers of `req` and takes its upgrade handle.
///
/// # Errors
/// [`NotUpgrade`] naming the answer the client gets.
pub(crate) fn prepare(req: &mut Request) -> Result<Upgrade, NotUpgrade> {
    let h = req.headers();
    if !has_token(h, header::CONNECTION, "upgrade") || !has_token(h, header::UPGRADE, "websocket") {
        return Err(NotUpgrade::Headers);
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(NotUpgrade::Version);
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
        .ok_or(NotUpgrade::Headers)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = HeaderValue::from_str(&accept).map_err(|_| NotUpgrade::Headers)?;
    let on_upgrade = req
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(NotUpgrade::Headers)?;
    Ok(Upgrade { on_upgrade, accept })
}

/// Whether a comma-separated header lists `token` (case-insensitive), in any of
/// its occurrences.
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl Upgrade {
    /// The `101 Switching Protocols` answer.
    pub(crate) fn response(&self) -> Response {
        let mut resp = Response::new(axum::body::Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        resp
    }

    /// Waits for the connection to switch protocols (after the 101 went out)
    /// and wraps it; `budget` bounds the bytes read without a complete message
    /// (see [`ReadBudget`]).
    ///
    /// # Errors
    /// The client went away before the switch, or the connection is not the TCP
    /// stream the listener serves (`transport::listener`).
    pub(crate) async fn accept(
        self,
        config: WebSocketConfig,
        budget: Option<Arc<ReadBudget>>,
    ) -> io::Result<Socket> {
        let upgraded = self.on_upgrade.await.map_err(io::Error::other)?;
        // Taken back from hyper so the session owns the socket itself (for
        // `reset_on_close`); bytes the client sent right behind its request
        // were read by hyper and come first. They are bounded by hyper's read
        // buffer (`listener::MAX_HEAD_BYTES`), so they are not charged to the
        // read budget.
        let parts = upgraded
            .downcast::<TokioIo<ClientStream>>()
            .map_err(|_| io::Error::other("the upgraded connection is not a client stream"))?;
        let io = LeanIo {
            inner: parts.io.into_inner(),
            pending: parts.read_buf.to_vec(),
            pos: 0,
            budget,
        };
        Ok(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await)
    }
}

/// Bytes a peer may send before it completes a message (data or control).
///
/// The session's reader calls [`ReadBudget::refill`] whenever a message
/// arrives; [`LeanIo`] spends the budget as bytes come in and fails the read
/// with [`BudgetExhausted`] when it runs out. Any honest message, fragmented or
/// not, fits in its size limit plus frame headers, so only a peer that streams
/// frames that never complete a message (empty continuations, endless
/// fragments) reaches the end.
#[derive(Debug)]
pub(crate) struct ReadBudget {
    left: AtomicU64,
    full: u64,
}

impl ReadBudget {
    /// A full budget of `bytes`.
    pub(crate) fn new(bytes: u64) -> Self {
        Self {
            left: AtomicU64::new(bytes),
            full: bytes,
        }
    }

    /// Restores the full budget (a message arrived).
    #[inline]
    pub(crate) fn refill(&self) {
        self.left.store(self.full, Ordering::Relaxed);
    }

    /// Spends `n` bytes; `false` once the budget is exhausted.
    #[inline]
    fn spend(&self, n: u64) -> bool {
        // Only the session's own read path spends, so load + store is enough.
        let left = self.left.load(Ordering::Relaxed);
        match left.checked_sub(n) {
            Some(rest) => {
                self.left.store(rest, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// The error a read fails with when the [`ReadBudget`] ran out.
#[derive(Debug, thiserror::Error)]
#[error("peer sent more bytes than any message may take without completing one")]
pub(crate) struct BudgetExhausted;

/// Bytes read from the socket per system call, into a per-thread scratch area.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A byte stream under tungstenite that keeps no read buffer while idle.
///
/// A read takes whatever the kernel has (up to 16 KiB) into a per-thread
/// scratch area and gives tungstenite as much as it asked for; the rest waits
/// in `pending`, allocated only while it holds bytes.
#[derive(Debug)]
pub(crate) struct LeanIo<T> {
    inner: T,
    pending: Vec<u8>,
    pos: usize,
    budget: Option<Arc<ReadBudget>>,
}

impl LeanIo<ClientStream> {
    /// Makes closing the socket reset the connection (`SO_LINGER` 0): the
    /// kernel discards what it still buffers for the peer instead of trickling
    /// it out before a FIN. For a peer that cannot keep up, whose close
    /// handshake did not complete (README "Delivery"). Zero linger never blocks
    /// on close.
    pub(crate) fn reset_on_close(&self) {
        if let Err(e) = self.inner.tcp().set_zero_linger() {
            tracing::debug!(error = %e, "could not set zero linger");
        }
    }
}

impl<T> LeanIo<T> {
    /// Copies pending bytes into `buf`; frees the pending buffer once drained.
    fn drain_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.pending.len() - self.pos).min(buf.remaining());
        buf.put_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.pending.len() {
            self.pending = Vec::new();
            self.pos = 0;
        }
    }

    /// Charges `n` bytes read from the socket to the read budget, if any.
    fn spend(&self, n: usize) -> io::Result<()> {
        match &self.budget {
            Some(b) if !b.spend(n as u64) => Err(io::Error::other(BudgetExhausted)),
            _ => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LeanIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            this.drain_pending(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_BYTES {
            // A large request (e.g. the rest of a big frame) needs no detour.
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            return Poll::Ready(this.spend(n));
        }
        let read = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut sbuf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut sbuf) {
                Poll::Ready(Ok(())) => {
                    let got = sbuf.filled();
                    let now = got.len().min(buf.remaining());
                    buf.put_slice(&got[..now]);
                    if now < got.len() {
                        this.pending = got[now..].to_vec();
                        this.pos = 0;
                    }
                    Poll::Ready(Ok(got.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        });
        let n = ready!(read)?;
        Poll::Ready(this.spend(n))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LeanIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn lean(
        inner: tokio::io::DuplexStream,
        budget: Option<Arc<ReadBudget>>,
    ) -> LeanIo<tokio::io::DuplexStream> {
        LeanIo {
            inner,
            pending: Vec::new(),
            pos: 0,
            budget,
        }
    }

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_free_the_rest() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let mut io = lean(io, None);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&data).await.expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while got.len() < data.len() {
            let n = io.read(&mut chunk).await.expect("read");
            assert!(n > 0 && n <= 256);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert!(
            io.pending.capacity() == 0,
            "drained pending bytes are freed"
        );
    }

    #[tokio::test]
    async fn the_budget_ends_reads_until_refilled() {
        let (mut peer, io) = tokio::io::duplex(64 * 1024);
        let budget = Arc::new(ReadBudget::new(1_000));
        let mut io = lean(io, Some(Arc::clone(&budget)));
        peer.write_all(&[7u8; 600]).await.expect("write");
        let mut buf = [0u8; 1024];
        assert_eq!(io.read(&mut buf).await.expect("within budget"), 600);
        budget.refill();
        peer.write_all(&[7u8; 600]).await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("refilled"), 600);
        peer.write_all(&[7u8; 600]).await.expect("write");
        let err = io.read(&mut buf).await.expect_err("over budget");
        assert!(
            err.get_ref()
                .is_some_and(|e| e.downcast_ref::<BudgetExhausted>().is_some())
        );
    }

    #[test]
    fn header_checks() {
        let req = |conn: &str, upgrade: &str, version: &str, key: Option<&str>| {
            let mut b = axum::http::Request::builder()
                .uri("/v1/ws")
                .header(header::CONNECTION, conn)
                .header(header::UPGRADE, upgrade)
                .header(header::SEC_WEBSOCKET_VERSION, version);
            if let Some(k) = key {
                b = b.header(header::SEC_WEBSOCKET_KEY, k);
            }
            b.body(axum::body::Body::empty()).expect("request")
        };
        let key = Some("dGhlIHNhbXBsZSBub25jZQ==");
        // No hyper upgrade handle in a hand-made request: headers pass, the
        // connection is not upgradable.
        assert_eq!(
            prepare(&mut req("keep-alive, Upgrade", "WebSocket", "13", key)).err(),
            Some(NotUpgrade::Headers)
        );
        assert_eq!(
            prepare(&mut req("keep-alive", "websocket", "13", key)).err(),
            Some(NotUpgrade::Headers)
        );
        assert_eq!(
            prepare(&mut req("upgrade", "h2c", "13", key)).err(),
            Some(NotUpgrade::Headers)
        );
        assert_eq!(
            prepare(&mut req("upgrade", "websocket", "8", key)).err(),
            Some(NotUpgrade::Version)
        );
        assert_eq!(
            prepare(&mut req("upgrade", "websocket", "13", None)).err(),
            Some(NotUpgrade::Headers)
        );
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455 §1.3 example"
        );
    }
}
