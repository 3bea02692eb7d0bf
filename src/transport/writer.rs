//! The single writer of a session: the only code that touches the socket's
//! write half.
//!
//! Drains the session's outbox in batches (reliable first), feeds every frame of a
//! batch and flushes once, so a burst of small frames costs one socket write.
//! Sends pings when the outbox says one is due (the heartbeat sweep keeps the
//! schedule) and the close frame when the outbox asks for one. (The greeting,
//! `sys.authed`, is written before the writer starts: see
//! `super::session::run`.)
//!
//! A slow consumer is *cut* (README "Delivery"): when the outbox drops its
//! queues, a write the peer is holding up is abandoned at once (the frames of the
//! batch not yet handed to the socket are dropped), and the close frame gets at
//! most `writer_send_timeout_ms`, together with the peer's answer; the session
//! then resets the connection ([`WriterEnd::resets`]).

#![allow(
    clippy::manual_async_fn,
    reason = "the writer's futures are `async move` blocks: an async fn holds each argument twice for the session's life"
)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::time::Instant;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use super::ws::Socket;
use crate::error::CloseCode;
use crate::obs::metrics::SessionCounters;
use crate::realtime::outbox::{Batch, CloseRequest, Outbox};

/// Frames taken from the outbox per socket write.
const MAX_BATCH: usize = 64;
/// Batch capacity kept between wake-ups (idle sessions are the common case).
const IDLE_BATCH_CAPACITY: usize = 8;

/// The session's write half.
pub(crate) type Sink = SplitSink<Socket, Message>;

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// A close frame with this code was sent.
    Closed(CloseCode),
    /// The socket failed or a write timed out, while closing with this code if
    /// a close had been requested.
    Failed(Option<CloseCode>),
    /// The session was cut as a slow consumer. `answer_by`: the close frame
    /// was written and the peer's Close is awaited until then; `None`: it could
    /// not be written in time.
    Cut {
        /// Close code attempted.
        code: CloseCode,
        /// End of the close attempt, if the frame went out.
        answer_by: Option<Instant>,
    },
}

impl WriterEnd {
    /// Metric label for why the session ended.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Closed(code) | Self::Failed(Some(code)) | Self::Cut { code, .. } => code.label(),
            Self::Failed(None) => "write_failed",
        }
    }

    /// Whether the connection must be reset rather than closed: the socket
    /// failed or timed out, so what the kernel still buffers would only trickle
    /// to a peer that cannot keep up. (A cut resets unless the peer answers its
    /// close in time, which the session checks.)
    pub(crate) fn resets(self) -> bool {
        matches!(self, Self::Failed(_) | Self::Cut { .. })
    }
}

/// How a batch write ended.
enum Written {
    /// Every frame reached the socket.
    Done,
    /// The socket failed or the write timed out.
    Failed,
    /// The session was cut while the peer held the write up.
    Cut,
}

/// Writes until the session must end: a requested close was sent, or the socket
/// failed or timed out.
///
/// # Cancel safety
/// Frames taken from the outbox are lost if this future is dropped mid-write; the
/// session only drops it when it is ending anyway.
pub(crate) fn run<'a>(
    sink: &'a mut Sink,
    outbox: &'a Outbox,
    counters: &'a SessionCounters,
    send_timeout: Duration,
) -> impl Future<Output = WriterEnd> + Send + 'a {
    async move {
        let mut batch: Vec<Message> = Vec::new();
        loop {
            let close = match outbox.next_batch(&mut batch, MAX_BATCH).await {
                Batch::Frames => None,
                Batch::Close(c) => Some(c),
                Batch::Ping => {
                    if !send_one(sink, Message::Ping(Bytes::new()), send_timeout).await {
                        return WriterEnd::Failed(None);
                    }
                    continue;
                }
            };
            if let Some(c) = close.as_ref().filter(|c| c.is_cut()) {
                // A cut: the outbox dropped the queues, nothing is left to write.
                batch.clear();
                return Box::pin(cut(sink, c, send_timeout)).await;
            }
            let closing = close.as_ref().map(|c| c.code);
            match write_batch(sink, &mut batch, outbox, counters, send_timeout).await {
                Written::Done => {}
                Written::Failed => return WriterEnd::Failed(closing),
                // The next batch is the cut's close request.
                Written::Cut => continue,
            }
            if let Some(c) = close {
                return if send_one(sink, close_frame(&c), send_timeout).await {
                    WriterEnd::Closed(c.code)
                } else {
                    WriterEnd::Failed(Some(c.code))
                };
            }
            // An idle session should not keep a batch-sized buffer alive; a busy
            // one re-grows it at most once per batch.
            if batch.capacity() > IDLE_BATCH_CAPACITY {
                batch = Vec::new();
            }
        }
    }
}

/// The close frame for `c`.
fn close_frame(c: &CloseRequest) -> Message {
    Message::Close(Some(CloseFrame {
        code: c.code.code().into(),
        reason: Utf8Bytes::from_static(c.reason),
    }))
}

/// Attempts the close frame of a cut for at most `send_timeout`; the peer's
/// answer is awaited (by the session) within the same bound, and no longer than
/// any close handshake.
async fn cut(sink: &mut Sink, c: &CloseRequest, send_timeout: Duration) -> WriterEnd {
    let answer_by = Instant::now() + send_timeout;
    let sent = send_one(sink, close_frame(c), send_timeout).await;
    WriterEnd::Cut {
        code: c.code,
        answer_by: sent.then_some(answer_by),
    }
}

/// Sends one control frame within `send_timeout`. Boxed as a whole: pings and
/// closes are rare, and the writer's resident future should not carry their
/// state (nor the frame) between them.
fn send_one(
    sink: &mut Sink,
    msg: Message,
    send_timeout: Duration,
) -> Pin<Box<impl Future<Output = bool> + Send + '_>> {
    Box::pin(async move {
        let sent = tokio::time::timeout(send_timeout, sink.send(msg)).await;
        matches!(sent, Ok(Ok(())))
    })
}

/// Feeds every frame of `batch` and flushes once, within `send_timeout`, unless
/// the session is cut while the peer holds the write up (the frames not yet fed
/// are then dropped).
fn write_batch<'a>(
    sink: &'a mut Sink,
    batch: &'a mut Vec<Message>,
    outbox: &'a Outbox,
    counters: &'a SessionCounters,
    send_timeout: Duration,
) -> impl Future<Output = Written> + Send + 'a {
    async move {
        if batch.is_empty() {
            return Written::Done;
        }
        let (mut text, mut binary) = (0u64, 0u64);
        for msg in batch.iter() {
            match msg {
                Message::Text(_) => text += 1,
                Message::Binary(_) => binary += 1,
                _ => {}
            }
        }
        let mut fed = 0;
        // Most batches go out without the socket pushing back, in one attempt
        // made here. A send timer is armed (and its state allocated) only when
        // that attempt could not finish; only then can the peer be slow enough
        // to be cut, so only then is the outbox watched for a cut.
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(match poll_write(sink, batch, &mut fed, cx) {
                Poll::Ready(Ok(())) => Some(Written::Done),
                Poll::Ready(Err(_)) => Some(Written::Failed),
                Poll::Pending => None,
            })
        })
        .await;
        let written = match first {
            Some(written) => written,
            None => {
                Box::pin(async {
                    let write = std::future::poll_fn(|cx| poll_write(sink, batch, &mut fed, cx));
                    tokio::select! {
                        biased;
                        r = tokio::time::timeout(send_timeout, write) => match r {
                            Ok(Ok(())) => Written::Done,
                            _ => Written::Failed,
                        },
                        () = outbox.cut() => Written::Cut,
                    }
                })
                .await
            }
        };
        batch.clear();
        counters.out_ext.inc_by(text);
        counters.out_hot.inc_by(binary);
        written
    }
}

/// Moves the frames of `batch` from index `fed` on into the sink, then flushes.
fn poll_write(
    sink: &mut Sink,
    batch: &mut [Message],
    fed: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<(), tungstenite::Error>> {
    while let Some(slot) = batch.get_mut(*fed) {
        ready!(sink.poll_ready_unpin(cx))?;
        let msg = std::mem::replace(slot, Message::Binary(Bytes::new()));
        *fed += 1;
        sink.start_send_unpin(msg)?;
    }
    sink.poll_flush_unpin(cx)
}
