//! One session: the reader (inbound pipeline) and the writer, run as two futures
//! in one task. When either ends, the other is cancelled after a bounded close
//! handshake.
//!
//! Owns: the socket side of a session (close codes for protocol faults, the
//! clean close handshake); pings and the idle timeout are the heartbeat
//! sweep's (`super::heartbeat`). What opening and closing a
//! session means (registration, presence, plugin and backend notifications)
//! is `crate::session`'s: this task holds the [`SessionGuard`] and drops it
//! when the socket is done.
//!
//! A session the writer could not serve (a write failed or timed out, or a cut
//! slow consumer that did not answer its close in time) ends with a TCP reset:
//! closing normally would let the kernel trickle what it still buffers to a
//! peer that cannot keep up, for as long as that peer keeps reading.

#![allow(
    clippy::manual_async_fn,
    reason = "the session's futures are `async move` blocks: an async fn holds each argument twice for the session's life"
)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::debug;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::listener::ConnSlot;
use super::writer::{self, Sink, WriterEnd};
use super::ws::{BudgetExhausted, ReadBudget, Socket};
use crate::error::CloseCode;
use crate::lanes::{self, Flow, SessionCtx};
use crate::obs::metrics::SessionCounters;
use crate::realtime::outbox::Outbox;
use crate::session::{Greeting, SessionGuard};

/// How long to wait for the peer's Close after sending ours.
pub(crate) const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

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
pub(crate) fn close_code_for(err: &tungstenite::Error) -> Option<CloseCode> {
    match err {
        tungstenite::Error::Capacity(_) => Some(CloseCode::TooBig),
        tungstenite::Error::Utf8(_) => Some(CloseCode::InvalidPayload),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(CloseCode::ProtocolError),
        // The bytes of one unfinished message outgrew any message's size.
        tungstenite::Error::Io(e)
            if e.get_ref()
                .is_some_and(|inner| inner.is::<BudgetExhausted>()) =>
        {
            Some(CloseCode::TooBig)
        }
        _ => None,
    }
}

/// The session task: completes the upgrade (`accept`), then runs the session
/// until it ends or the gateway stops (after the drain grace period). The
/// guard is dropped (session unregistered) before the connection is closed
/// or reset, and the connection slot when the task ends.
///
/// This future stays resident for every live session, so it is built to hold
/// each piece of session state once. Written as `async move` blocks rather than
/// `async fn`s: an `async fn` keeps its arguments in the future and moves them
/// into locals, so every value passed down a level had two slots (the session
/// guard had five). Values are captured here and lent to the levels below.
pub(crate) fn run(
    accept: Pin<Box<impl Future<Output = io::Result<Socket>> + Send>>,
    guard: SessionGuard,
    greeting: Greeting,
    budget: Arc<ReadBudget>,
    expires: Option<Instant>,
    slot: Option<ConnSlot>,
) -> impl Future<Output = ()> + Send {
    async move {
        let send_timeout =
            Duration::from_millis(guard.hub().config().gateway.writer_send_timeout_ms);
        // In a block: `socket` is borrowed across the greeting's write, and a
        // borrowed local keeps its slot in the future until its scope ends, so
        // its scope ends at the split, before the session's long wait.
        let (mut sink, mut stream) = {
            // Awaited by value: the handshake's state is freed once it completes.
            let mut socket = match accept.await {
                Ok(socket) => socket,
                Err(e) => {
                    debug!(error = %e, "upgrade failed after 101");
                    return;
                }
            };
            if !greet(&mut socket, *greeting, send_timeout).await {
                debug!("could not send sys.authed");
                count_closed(&guard, WriterEnd::Failed(None).label());
                drop(guard);
                return;
            }
            socket.split()
        };
        guard.counters().out_ext.inc();
        // (At the end of a drain the task is aborted through its session entry:
        // no cancellation wait stays resident here.)
        let reset = serve(
            &mut sink,
            &mut stream,
            &guard,
            &budget,
            expires,
            send_timeout,
        )
        .await;
        drop(guard);
        if reset {
            // Both halves come from one split, so reuniting cannot fail.
            if let Ok(socket) = stream.reunite(sink) {
                socket.get_ref().reset_on_close();
            }
        }
        drop(slot);
    }
}

/// Serves the session; `true` when the connection must be reset (see the
/// module docs). At `expires` (a JWT's `exp` with `auth.close_at_expiry`) the
/// session is closed with 4005 after its queued reliable messages.
fn serve<'a>(
    sink: &'a mut Sink,
    stream: &'a mut Stream,
    guard: &'a SessionGuard,
    budget: &'a ReadBudget,
    expires: Option<Instant>,
    send_timeout: Duration,
) -> impl Future<Output = bool> + Send + 'a {
    async move {
        let Some(mut ctx) = SessionCtx::new(
            Arc::clone(&guard.hub().pipeline),
            Arc::clone(guard.tenant()),
            Arc::clone(guard.entry()),
            guard.counters().clone(),
        ) else {
            return false;
        };
        // Borrowed, not cloned: every byte here stays resident for the session.
        let outbox = &guard.entry().outbox;
        let counters = guard.counters();
        debug!("session started");

        let (end, writer_end) = {
            let reader = read_loop(stream, &mut ctx, budget);
            let writer = writer::run(sink, outbox, counters, send_timeout);
            tokio::pin!(reader, writer);
            // Boxed and only when set: most sessions have no expiry.
            let mut expiry = expires.map(|at| Box::pin(tokio::time::sleep_until(at)));
            loop {
                tokio::select! {
                    end = &mut reader => break (end, None),
                    done = &mut writer => break (ReaderEnd::Gone, Some(done)),
                    () = async {
                        if let Some(at) = expiry.as_mut() {
                            at.await;
                        }
                    }, if expiry.is_some() => {
                        expiry = None;
                        debug!("token expired; closing");
                        outbox.close(CloseCode::TokenExpired, "token expired", true);
                    }
                }
            }
        };
        // The close paths run once per session: boxed, so the future every live
        // session keeps resident holds only the reader and the writer.
        let (reason, reset) = Box::pin(finish(
            sink,
            stream,
            outbox,
            counters,
            send_timeout,
            end,
            writer_end,
        ))
        .await;
        // A close the gateway requested names the reason, whichever half noticed
        // the end first.
        let reason = outbox.close_code().map_or(reason, CloseCode::label);
        count_closed(guard, reason);
        debug!(reason, reset, "session ended");
        reset
    }
}

/// Counts the session's end in `sessions_closed_total{reason}`.
fn count_closed(guard: &SessionGuard, reason: &str) {
    guard
        .hub()
        .metrics
        .sessions_closed
        .with_label_values(&[&guard.tenant().id, reason])
        .inc();
}

/// Writes the greeting (`sys.authed`, a text frame) to the socket beneath
/// tungstenite, before tungstenite writes anything: tungstenite would keep
/// the frame's buffer (≈ 100 bytes) for the session's life, and most idle
/// sessions never send another frame but pings. `false` if the write failed
/// or did not finish within `send_timeout`.
async fn greet(socket: &mut Socket, greeting: Message, send_timeout: Duration) -> bool {
    let mut frame = Vec::new();
    let encoded =
        Frame::message(greeting.into_data(), OpCode::Data(Data::Text), true).format(&mut frame);
    if encoded.is_err() {
        return false;
    }
    let io = socket.get_mut();
    let sent = tokio::time::timeout(send_timeout, async {
        io.write_all(&frame).await?;
        io.flush().await
    })
    .await;
    matches!(sent, Ok(Ok(())))
}

/// The session's read half.
pub(crate) type Stream = futures_util::stream::SplitStream<Socket>;

/// Completes the close handshake after the reader or the writer ended; returns
/// the metric label for why the session ended and whether to reset the
/// connection.
async fn finish(
    sink: &mut Sink,
    stream: &mut Stream,
    outbox: &Outbox,
    counters: &SessionCounters,
    send_timeout: Duration,
    end: ReaderEnd,
    writer_end: Option<WriterEnd>,
) -> (&'static str, bool) {
    if let Some(done) = writer_end {
        // The writer sent a close frame (or the socket failed): give the peer a
        // moment to answer so the close handshake is clean. A cut peer gets
        // what is left of the close attempt and is reset unless it answered.
        let reset = match done {
            WriterEnd::Closed(_) => {
                await_peer_close(stream, Instant::now() + CLOSE_HANDSHAKE_TIMEOUT).await;
                false
            }
            WriterEnd::Cut {
                answer_by: Some(by),
                ..
            } => {
                let by = by.min(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
                !await_peer_close(stream, by).await
            }
            other => other.resets(),
        };
        return (done.label(), reset);
    }
    match end {
        ReaderEnd::PeerClosed => {
            // Flush tungstenite's queued Close reply.
            let _ = tokio::time::timeout(send_timeout, sink.flush()).await;
            ("peer_closed", false)
        }
        ReaderEnd::Gone => ("gone", false),
        ReaderEnd::Close(code) => {
            outbox.close(code, code.label(), code == CloseCode::GoingAway);
            let sent = tokio::time::timeout(
                CLOSE_HANDSHAKE_TIMEOUT + send_timeout,
                writer::run(sink, outbox, counters, send_timeout),
            )
            .await;
            let reset = match sent {
                Ok(WriterEnd::Closed(_)) => {
                    await_peer_close(stream, Instant::now() + CLOSE_HANDSHAKE_TIMEOUT).await;
                    false
                }
                Ok(other) => other.resets(),
                Err(_) => true,
            };
            (code.label(), reset)
        }
    }
}

/// Reads (and discards) until the peer's Close, at most until `by`; `true` if
/// the peer answered.
async fn await_peer_close(stream: &mut Stream, by: Instant) -> bool {
    tokio::time::timeout_at(by, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// Reads and dispatches inbound messages. Pings and the idle timeout are the
/// heartbeat sweep's (`super::heartbeat`): the reader only marks that
/// something arrived, so it keeps no timer and reads no clock.
fn read_loop<'a>(
    stream: &'a mut Stream,
    ctx: &'a mut SessionCtx,
    budget: &'a ReadBudget,
) -> impl Future<Output = ReaderEnd> + Send + 'a {
    async move {
        // The idle clock starts when the session is served, not when its
        // upgrade began.
        ctx.entry.liveness.heard();
        loop {
            // Matched as a temporary: nothing of the read stays in the
            // reader's future while an Ext Lane message is awaited.
            let msg = match stream.next().await {
                None => return ReaderEnd::Gone,
                Some(Err(e)) => {
                    return match close_code_for(&e) {
                        Some(code) => ReaderEnd::Close(code),
                        None => ReaderEnd::Gone,
                    };
                }
                Some(Ok(msg)) => msg,
            };
            ctx.entry.liveness.heard();
            budget.refill();
            let flow = match dispatch(ctx, msg) {
                Dispatch::Done(flow) => flow,
                Dispatch::Ext(handling) => handling.await,
                Dispatch::PeerClosed => return ReaderEnd::PeerClosed,
            };
            if let Flow::Close(code) = flow {
                return ReaderEnd::Close(code);
            }
        }
    }
}

/// What the reader does with one message.
enum Dispatch<F> {
    /// Handled at once.
    Done(Flow),
    /// An Ext Lane message: its handling, to be awaited.
    Ext(Pin<Box<F>>),
    /// The peer sent Close.
    PeerClosed,
}

/// Hands one message to its lane. A plain function, so the message is not
/// kept in the reader's future while an Ext Lane message is handled; the Ext
/// pipeline's future (plugin calls, services) is large and boxed, so it exists
/// only while a message is handled.
fn dispatch(
    ctx: &mut SessionCtx,
    msg: Message,
) -> Dispatch<impl Future<Output = Flow> + Send + '_> {
    match msg {
        Message::Text(text) => Dispatch::Ext(Box::pin(lanes::ext::handle(ctx, text))),
        Message::Binary(bytes) => Dispatch::Done(lanes::hot::handle(ctx, bytes)),
        // (`Frame` is a write-side variant; reads never yield it.)
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
            Dispatch::Done(ctx.control_frame())
        }
        Message::Close(_) => Dispatch::PeerClosed,
    }
}
