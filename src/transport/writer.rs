//! The single writer of a session: the only code that touches the socket's
//! write half.
//!
//! Drains the session's outbox in batches (reliable first), feeds every frame of a
//! batch and flushes once, so a burst of small frames costs one socket write.
//! Sends pings on schedule and the close frame when the outbox asks for one.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::CloseCode;
use crate::obs::metrics::SessionCounters;
use crate::realtime::outbox::{Batch, Outbox};

/// Frames taken from the outbox per socket write.
const MAX_BATCH: usize = 64;
/// Batch capacity kept between wake-ups (idle sessions are the common case).
const IDLE_BATCH_CAPACITY: usize = 8;

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
    sink: &mut SplitSink<WebSocket, Message>,
    outbox: &Outbox,
    counters: &SessionCounters,
    ping_every: Duration,
    send_timeout: Duration,
) -> WriterEnd {
    let mut batch: Vec<Message> = Vec::new();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = outbox.next_batch(&mut batch, MAX_BATCH) => {
                let close = match next {
                    Batch::Frames => None,
                    Batch::Close(c) => Some(c),
                };
                let closing = close.as_ref().map(|c| c.code);
                if !write_batch(sink, &mut batch, counters, send_timeout).await {
                    return WriterEnd::Failed(closing);
                }
                if let Some(c) = close {
                    let frame = Message::Close(Some(CloseFrame {
                        code: c.code.code(),
                        reason: Utf8Bytes::from_static(c.reason),
                    }));
                    let sent = tokio::time::timeout(send_timeout, sink.send(frame)).await;
                    return if matches!(sent, Ok(Ok(()))) {
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
            _ = ping.tick() => {
                let sent = tokio::time::timeout(send_timeout, sink.send(Message::Ping(bytes::Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return WriterEnd::Failed(None);
                }
            }
        }
    }
}

async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: &mut Vec<Message>,
    counters: &SessionCounters,
    send_timeout: Duration,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let (mut text, mut binary) = (0u64, 0u64);
    let write = async {
        for msg in batch.drain(..) {
            match &msg {
                Message::Text(_) => text += 1,
                Message::Binary(_) => binary += 1,
                _ => {}
            }
            sink.feed(msg).await?;
        }
        sink.flush().await
    };
    let ok = matches!(tokio::time::timeout(send_timeout, write).await, Ok(Ok(())));
    batch.clear();
    counters.out_ext.inc_by(text);
    counters.out_hot.inc_by(binary);
    ok
}
