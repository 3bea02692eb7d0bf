//! One session: the reader (inbound pipeline) and the writer, run as two futures
//! in one task. When either ends, the other is cancelled after a bounded close
//! handshake.
//!
//! Owns: the session lifecycle (idle timeout, close codes for protocol faults, the
//! clean close handshake) and the [`SessionGuard`] that unregisters the session,
//! emits presence and lifecycle events, and updates gauges exactly once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tracing::debug;

use super::writer::{self, WriterEnd};
use crate::error::CloseCode;
use crate::gateway::{Gateway, Tenant};
use crate::lanes::{self, Flow, SessionCtx};
use crate::obs::metrics::SessionCounters;
use crate::realtime::broker::{SessionEntry, Sid};
use crate::services::room;

/// How long to wait for the peer's Close after sending ours.
pub(crate) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Session id as clients see it.
pub(crate) fn sid_string(sid: Sid) -> String {
    format!("{sid:016x}")
}

/// Unregisters the session when dropped, whether the upgrade completed or not.
pub(crate) struct SessionGuard {
    gw: Arc<Gateway>,
    tenant: Arc<Tenant>,
    entry: Arc<SessionEntry>,
    counters: SessionCounters,
}

impl SessionGuard {
    pub(crate) fn new(
        gw: Arc<Gateway>,
        tenant: Arc<Tenant>,
        entry: Arc<SessionEntry>,
        counters: SessionCounters,
    ) -> Self {
        counters.active.inc();
        lanes::notify_backend(&gw, &tenant, &entry, "connect");
        Self {
            gw,
            tenant,
            entry,
            counters,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.counters.active.dec();
        let left = self.tenant.broker.unregister(self.entry.sid);
        if let Some(rt) = self.tenant.runtime() {
            for (room_name, peer) in left {
                room::announce_left(&self.tenant, &rt, &room_name, &self.entry.user, peer);
            }
            lanes::session_closed(&self.gw, &rt, &self.tenant, &self.entry);
        }
        lanes::notify_backend(&self.gw, &self.tenant, &self.entry, "disconnect");
    }
}

/// Why the reader stopped.
enum ReaderEnd {
    /// The peer sent Close (tungstenite queued the reply; the writer flushes it).
    PeerClosed,
    /// The stream ended or failed without a usable socket.
    Gone,
    /// We must close with this code.
    Close(CloseCode),
}

/// Maps a read error to the close code the peer should get, if any (`None`: the
/// socket is gone, nothing can be sent).
pub(crate) fn close_code_for(err: axum::Error) -> Option<CloseCode> {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => Some(CloseCode::TooBig),
        Some(tungstenite::Error::Utf8(_)) => Some(CloseCode::InvalidPayload),
        Some(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => None,
        Some(tungstenite::Error::Protocol(_)) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

/// Runs a session until it ends or the gateway stops (after the drain grace
/// period). The guard is dropped (session unregistered) when this returns.
pub(crate) async fn run(socket: WebSocket, guard: SessionGuard) {
    let stop = guard.gw.shutdown.clone();
    tokio::select! {
        () = serve(socket, guard) => {}
        () = stop.cancelled() => debug!("session aborted at the end of the drain"),
    }
}

async fn serve(socket: WebSocket, guard: SessionGuard) {
    let gw = Arc::clone(&guard.gw);
    let cfg = gw.config();
    let ping_every = Duration::from_millis(cfg.gateway.ping_interval_ms);
    let idle = Duration::from_millis(cfg.gateway.idle_timeout_ms);
    let send_timeout = Duration::from_millis(cfg.gateway.writer_send_timeout_ms);
    let Some(mut ctx) = SessionCtx::new(
        Arc::clone(&gw),
        Arc::clone(&guard.tenant),
        Arc::clone(&guard.entry),
        guard.counters.clone(),
    ) else {
        return;
    };
    let outbox = Arc::clone(&guard.entry.outbox);
    let counters = guard.counters.clone();
    debug!("session started");

    let (mut sink, mut stream) = socket.split();
    let reader = read_loop(&mut stream, &mut ctx, idle);
    let writer = writer::run(&mut sink, &outbox, &counters, ping_every, send_timeout);
    let (end, writer_end) = tokio::select! {
        end = reader => (end, None),
        done = writer => (ReaderEnd::Gone, Some(done)),
    };

    let reason;
    if let Some(done) = writer_end {
        // The writer sent a close frame (or the socket failed): give the peer a
        // moment to answer so the close handshake is clean.
        if matches!(done, WriterEnd::Closed(_)) {
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                while let Some(Ok(msg)) = stream.next().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        reason = done.label();
    } else {
        match end {
            ReaderEnd::PeerClosed => {
                // Flush tungstenite's queued Close reply.
                let _ = tokio::time::timeout(send_timeout, sink.flush()).await;
                reason = "peer_closed";
            }
            ReaderEnd::Gone => reason = "gone",
            ReaderEnd::Close(code) => {
                outbox.close(code, code.label(), code == CloseCode::GoingAway);
                reason = code.label();
                let sent = tokio::time::timeout(
                    CLOSE_HANDSHAKE_TIMEOUT + send_timeout,
                    writer::run(&mut sink, &outbox, &counters, ping_every, send_timeout),
                )
                .await;
                if matches!(sent, Ok(WriterEnd::Closed(_))) {
                    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                        while let Some(Ok(msg)) = stream.next().await {
                            if matches!(msg, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                }
            }
        }
    }
    // A close the gateway requested names the reason, whichever half noticed the
    // end first.
    let reason = outbox.close_code().map_or(reason, CloseCode::label);
    gw.metrics
        .sessions_closed
        .with_label_values(&[&guard.tenant.id, reason])
        .inc();
    debug!(reason, "session ended");
    drop(guard);
}

async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    ctx: &mut SessionCtx,
    idle: Duration,
) -> ReaderEnd {
    // One timer for the whole session: a message only records when it arrived,
    // and the timer is re-armed when it fires early (instead of a new timer per
    // message on the hot path).
    let mut last_inbound = Instant::now();
    let idle_timer = tokio::time::sleep_until(last_inbound + idle);
    tokio::pin!(idle_timer);
    loop {
        let next = tokio::select! {
            next = stream.next() => Ok(next),
            () = &mut idle_timer => Err(()),
        };
        let msg = match next {
            Err(()) => {
                let deadline = last_inbound + idle;
                if Instant::now() >= deadline {
                    return ReaderEnd::Close(CloseCode::IdleTimeout);
                }
                idle_timer.as_mut().reset(deadline);
                continue;
            }
            Ok(None) => return ReaderEnd::Gone,
            Ok(Some(Err(e))) => {
                return match close_code_for(e) {
                    Some(code) => ReaderEnd::Close(code),
                    None => ReaderEnd::Gone,
                };
            }
            Ok(Some(Ok(msg))) => msg,
        };
        last_inbound = Instant::now();
        let flow = match msg {
            Message::Text(text) => lanes::ext::handle(ctx, text).await,
            Message::Binary(bytes) => lanes::hot::handle(ctx, bytes),
            Message::Ping(_) | Message::Pong(_) => ctx.control_frame(),
            Message::Close(_) => return ReaderEnd::PeerClosed,
        };
        if let Flow::Close(code) = flow {
            return ReaderEnd::Close(code);
        }
    }
}
