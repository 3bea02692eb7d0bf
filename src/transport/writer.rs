//! The single writer of a session: the only code that touches the socket's
//! write half.
//!
//! Drains the session's outbox in batches (reliable first), feeds every frame of a
//! batch and flushes once, so a burst of small frames costs one socket write.
//! Sends the greeting first, pings when the outbox says one is due (the
//! session's reader keeps the schedule), and the close frame when the outbox
//! asks for one.

use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

use super::ws::Socket;
use crate::error::CloseCode;
use crate::obs::metrics::SessionCounters;
use crate::realtime::outbox::{Batch, Outbox};

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
}

impl WriterEnd {
    /// Metric label for why the session ended.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Closed(code) | Self::Failed(Some(code)) => code.label(),
            Self::Failed(None) => "write_failed",
        }
    }
}

/// Writes until the session must end: a requested close was sent, or the socket
/// failed or timed out.
///
/// # Cancel safety
/// Frames taken from the outbox are lost if this future is dropped mid-write; the
/// session only drops it when it is ending anyway.
pub(crate) async fn run(
    sink: &mut Sink,
    outbox: &Outbox,
    counters: &SessionCounters,
    greeting: Option<Box<Message>>,
    send_timeout: Duration,
) -> WriterEnd {
    // The greeting (`sys.authed`) goes straight to the socket: an idle session
    // then never allocates outbox or batch buffers.
    if let Some(first) = greeting {
        if !send_one(sink, *first, send_timeout).await {
            return WriterEnd::Failed(None);
        }
        counters.out_ext.inc();
    }
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
        let closing = close.as_ref().map(|c| c.code);
        if !write_batch(sink, &mut batch, counters, send_timeout).await {
            return WriterEnd::Failed(closing);
        }
        if let Some(c) = close {
            let frame = Message::Close(Some(CloseFrame {
                code: c.code.code().into(),
                reason: Utf8Bytes::from_static(c.reason),
            }));
            return if send_one(sink, frame, send_timeout).await {
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

/// Sends one control frame within `send_timeout`. Boxed: pings and closes are
/// rare, and the writer's resident future should not carry their state.
async fn send_one(sink: &mut Sink, msg: Message, send_timeout: Duration) -> bool {
    let sent = Box::pin(tokio::time::timeout(send_timeout, sink.send(msg))).await;
    matches!(sent, Ok(Ok(())))
}

/// Feeds every frame of `batch` and flushes once, within `send_timeout`.
async fn write_batch(
    sink: &mut Sink,
    batch: &mut Vec<Message>,
    counters: &SessionCounters,
    send_timeout: Duration,
) -> bool {
    if batch.is_empty() {
        return true;
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
    let mut write = std::future::poll_fn(|cx| poll_write(sink, batch, &mut fed, cx));
    // Most batches go out without the socket pushing back: a send timer is armed
    // (and its state allocated) only when the first attempt could not finish.
    let ok = match futures_util::poll!(&mut write) {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => matches!(
            Box::pin(tokio::time::timeout(send_timeout, write)).await,
            Ok(Ok(()))
        ),
    };
    batch.clear();
    counters.out_ext.inc_by(text);
    counters.out_hot.inc_by(binary);
    ok
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
