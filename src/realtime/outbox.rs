//! A session's outbound queues (README "Delivery"): one reliable and one lossy bounded
//! queue, drained by the session's single writer.
//!
//! Owns: the overflow policy. A full reliable queue marks the session a slow
//! consumer (closed with 4002, nothing silently dropped); a full lossy queue drops
//! its oldest frame and counts it. Producers (rooms, services, the server API) push
//! already-encoded frames whose bytes are shared between recipients; pushing never
//! awaits and never allocates once the queue has grown to its working size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tungstenite::Message;

use crate::error::CloseCode;

/// Delivery class of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos {
    /// In order; overflow closes the session with 4002.
    #[default]
    Reliable,
    /// Overflow drops the oldest queued lossy frame.
    Lossy,
}

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the writer.
    Queued,
    /// Queued after dropping the oldest lossy frame.
    DroppedOldest,
    /// The reliable queue was full: the session is now closing with 4002.
    SlowConsumer,
    /// The session is closing; nothing was queued.
    Closed,
}

impl Pushed {
    /// Whether the frame will be written.
    pub fn delivered(self) -> bool {
        matches!(self, Self::Queued | Self::DroppedOldest)
    }
}

/// A request to end the session with a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// Close code sent to the peer.
    pub code: CloseCode,
    /// Close reason (short, safe text).
    pub reason: &'static str,
    /// Write queued reliable frames before the close frame.
    pub flush: bool,
}

#[derive(Debug, Default)]
struct Queues {
    reliable: VecDeque<Message>,
    lossy: VecDeque<Message>,
    close: Option<CloseRequest>,
    /// The session asked for a ping (see [`Outbox::request_ping`]).
    ping: bool,
}

/// What the writer takes from the outbox in one wake-up.
#[derive(Debug)]
pub enum Batch {
    /// Frames to write, reliable first, in queue order.
    Frames,
    /// Write the frames (if any), then this close frame, then stop.
    Close(CloseRequest),
    /// Nothing is queued and a ping is due: send one.
    Ping,
}

/// Metric handles an outbox bumps when its overflow policy drops something.
#[derive(Debug, Clone)]
pub struct DropCounters {
    /// Lossy frames dropped to make room (`drops_total{reason="lossy_overflow"}`).
    pub lossy_overflow: prometheus::IntCounter,
    /// Sessions cut because their reliable queue overflowed
    /// (`drops_total{reason="slow_consumer"}`).
    pub slow_consumer: prometheus::IntCounter,
}

/// A session's outbound queues.
#[derive(Debug)]
pub struct Outbox {
    queues: Mutex<Queues>,
    notify: Notify,
    reliable_capacity: usize,
    lossy_capacity: usize,
    lossy_dropped: AtomicU64,
    counters: Option<DropCounters>,
}

impl Outbox {
    /// An empty outbox with the configured capacities.
    pub fn new(reliable_capacity: usize, lossy_capacity: usize) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            notify: Notify::new(),
            reliable_capacity: reliable_capacity.max(1),
            lossy_capacity: lossy_capacity.max(1),
            lossy_dropped: AtomicU64::new(0),
            counters: None,
        }
    }

    /// An outbox that also counts its drops in metrics.
    pub fn with_counters(
        reliable_capacity: usize,
        lossy_capacity: usize,
        counters: DropCounters,
    ) -> Self {
        Self {
            counters: Some(counters),
            ..Self::new(reliable_capacity, lossy_capacity)
        }
    }

    /// Queues a frame with the given delivery class.
    pub fn push(&self, msg: Message, qos: Qos) -> Pushed {
        let outcome = {
            let mut q = self.queues.lock();
            if q.close.is_some() {
                return Pushed::Closed;
            }
            match qos {
                Qos::Reliable => {
                    if q.reliable.len() >= self.reliable_capacity {
                        q.reliable.clear();
                        q.lossy.clear();
                        q.close = Some(CloseRequest {
                            code: CloseCode::SlowConsumer,
                            reason: "slow consumer",
                            flush: false,
                        });
                        Pushed::SlowConsumer
                    } else {
                        q.reliable.push_back(msg);
                        Pushed::Queued
                    }
                }
                Qos::Lossy => {
                    let dropped = if q.lossy.len() >= self.lossy_capacity {
                        q.lossy.pop_front();
                        true
                    } else {
                        false
                    };
                    q.lossy.push_back(msg);
                    if dropped {
                        self.lossy_dropped.fetch_add(1, Ordering::Relaxed);
                        Pushed::DroppedOldest
                    } else {
                        Pushed::Queued
                    }
                }
            }
        };
        self.notify.notify_one();
        if let Some(c) = &self.counters {
            match outcome {
                Pushed::DroppedOldest => c.lossy_overflow.inc(),
                Pushed::SlowConsumer => c.slow_consumer.inc(),
                Pushed::Queued | Pushed::Closed => {}
            }
        }
        outcome
    }

    /// Asks the writer to close the session. The first request wins, except that a
    /// non-flushing request (an abort) overrides a pending graceful one.
    pub fn close(&self, code: CloseCode, reason: &'static str, flush: bool) {
        {
            let mut q = self.queues.lock();
            match &q.close {
                Some(existing) if flush || !existing.flush => return,
                _ => {}
            }
            if !flush {
                q.reliable.clear();
                q.lossy.clear();
            }
            q.close = Some(CloseRequest {
                code,
                reason,
                flush,
            });
        }
        self.notify.notify_one();
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.queues.lock().close.is_some()
    }

    /// The close code requested, if any (why the gateway is ending the session).
    pub fn close_code(&self) -> Option<CloseCode> {
        self.queues.lock().close.as_ref().map(|c| c.code)
    }

    /// Lossy frames dropped so far.
    pub fn lossy_dropped(&self) -> u64 {
        self.lossy_dropped.load(Ordering::Relaxed)
    }

    /// Frames currently queued (reliable, lossy).
    pub fn depth(&self) -> (usize, usize) {
        let q = self.queues.lock();
        (q.reliable.len(), q.lossy.len())
    }

    /// Asks the writer to send a ping when nothing else is queued. The session's
    /// reader schedules pings on the timer it already keeps for the idle timeout,
    /// so a session needs no timer of its own in the writer.
    pub fn request_ping(&self) {
        let mut q = self.queues.lock();
        if q.close.is_none() {
            q.ping = true;
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Waits until there is something to write, then moves it into `out` (reliable
    /// frames first, then lossy), at most `max` frames per call.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are only moved out once the wait has completed.
    pub async fn next_batch(&self, out: &mut Vec<Message>, max: usize) -> Batch {
        // A due ping waits behind queued frames (they prove liveness as well) and
        // is dropped once a close is requested.
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.queues.lock();
                let take_r = q.reliable.len().min(max);
                out.extend(q.reliable.drain(..take_r));
                if q.reliable.is_empty() && q.close.is_none() {
                    let take_l = q.lossy.len().min(max.saturating_sub(take_r));
                    out.extend(q.lossy.drain(..take_l));
                }
                if let Some(close) = &q.close {
                    if !close.flush || (q.reliable.is_empty()) {
                        let close = close.clone();
                        q.lossy.clear();
                        return Batch::Close(close);
                    }
                    return Batch::Frames;
                }
                if !out.is_empty() {
                    if !q.reliable.is_empty() || !q.lossy.is_empty() || q.ping {
                        // More remains: make sure the next call does not sleep.
                        self.notify.notify_one();
                    }
                    return Batch::Frames;
                }
                if std::mem::take(&mut q.ping) {
                    return Batch::Ping;
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tungstenite::Utf8Bytes;

    fn text(s: &str) -> Message {
        Message::Text(Utf8Bytes::from(s.to_owned()))
    }

    fn bin(b: u8) -> Message {
        Message::Binary(Bytes::from(vec![b]))
    }

    #[tokio::test]
    async fn reliable_drains_before_lossy_in_order() {
        let o = Outbox::new(8, 8);
        o.push(bin(1), Qos::Lossy);
        o.push(text("a"), Qos::Reliable);
        o.push(bin(2), Qos::Lossy);
        o.push(text("b"), Qos::Reliable);
        let mut out = Vec::new();
        assert!(matches!(o.next_batch(&mut out, 64).await, Batch::Frames));
        assert_eq!(out, vec![text("a"), text("b"), bin(1), bin(2)]);
    }

    #[tokio::test]
    async fn lossy_overflow_drops_oldest_and_counts() {
        let o = Outbox::new(8, 2);
        assert_eq!(o.push(bin(1), Qos::Lossy), Pushed::Queued);
        assert_eq!(o.push(bin(2), Qos::Lossy), Pushed::Queued);
        assert_eq!(o.push(bin(3), Qos::Lossy), Pushed::DroppedOldest);
        assert_eq!(o.lossy_dropped(), 1);
        let mut out = Vec::new();
        o.next_batch(&mut out, 64).await;
        assert_eq!(out, vec![bin(2), bin(3)]);
    }

    #[tokio::test]
    async fn reliable_overflow_is_a_slow_consumer() {
        let o = Outbox::new(2, 2);
        assert_eq!(o.push(text("a"), Qos::Reliable), Pushed::Queued);
        assert_eq!(o.push(text("b"), Qos::Reliable), Pushed::Queued);
        assert_eq!(o.push(text("c"), Qos::Reliable), Pushed::SlowConsumer);
        assert_eq!(o.push(text("d"), Qos::Reliable), Pushed::Closed);
        let mut out = Vec::new();
        match o.next_batch(&mut out, 64).await {
            Batch::Close(c) => assert_eq!(c.code, CloseCode::SlowConsumer),
            other => panic!("expected close, got {other:?}"),
        }
        assert!(out.is_empty(), "a slow consumer is cut, not flushed");
    }

    #[tokio::test]
    async fn graceful_close_flushes_reliable_first() {
        let o = Outbox::new(8, 8);
        o.push(text("a"), Qos::Reliable);
        o.push(bin(1), Qos::Lossy);
        o.close(CloseCode::GoingAway, "draining", true);
        assert_eq!(o.push(text("late"), Qos::Reliable), Pushed::Closed);
        let mut out = Vec::new();
        match o.next_batch(&mut out, 64).await {
            Batch::Close(c) => assert_eq!(c.code, CloseCode::GoingAway),
            other => panic!("expected close, got {other:?}"),
        }
        assert_eq!(out, vec![text("a")]);
    }

    #[tokio::test]
    async fn abort_overrides_graceful_close() {
        let o = Outbox::new(8, 8);
        o.push(text("a"), Qos::Reliable);
        o.close(CloseCode::GoingAway, "draining", true);
        o.close(CloseCode::SlowConsumer, "slow", false);
        o.close(CloseCode::Normal, "later", true);
        let mut out = Vec::new();
        match o.next_batch(&mut out, 64).await {
            Batch::Close(c) => assert_eq!(c.code, CloseCode::SlowConsumer),
            other => panic!("expected close, got {other:?}"),
        }
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn pings_wait_behind_frames_and_never_follow_a_close() {
        let o = Outbox::new(8, 8);
        o.push(text("a"), Qos::Reliable);
        o.request_ping();
        let mut out = Vec::new();
        assert!(matches!(o.next_batch(&mut out, 64).await, Batch::Frames));
        assert_eq!(out, vec![text("a")]);
        out.clear();
        assert!(matches!(o.next_batch(&mut out, 64).await, Batch::Ping));
        assert!(out.is_empty());
        // Taken once: the next call waits for something new.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            o.next_batch(&mut out, 64),
        )
        .await;
        assert!(waiting.is_err(), "a ping is sent once per request");
        // An idle writer is woken by the request.
        let o = std::sync::Arc::new(Outbox::new(8, 8));
        let o2 = std::sync::Arc::clone(&o);
        let writer = tokio::spawn(async move {
            let mut out = Vec::new();
            matches!(o2.next_batch(&mut out, 64).await, Batch::Ping)
        });
        tokio::task::yield_now().await;
        o.request_ping();
        assert!(writer.await.expect("writer task"));
        // After a close, no ping.
        let o = Outbox::new(8, 8);
        o.close(CloseCode::GoingAway, "draining", true);
        o.request_ping();
        assert!(matches!(o.next_batch(&mut out, 64).await, Batch::Close(_)));
    }

    #[tokio::test]
    async fn batches_are_bounded_and_rewake() {
        let o = Outbox::new(8, 8);
        for i in 0..5 {
            o.push(bin(i), Qos::Lossy);
        }
        let mut out = Vec::new();
        o.next_batch(&mut out, 2).await;
        assert_eq!(out.len(), 2);
        out.clear();
        o.next_batch(&mut out, 2).await;
        o.next_batch(&mut out, 2).await;
        assert_eq!(out.len(), 3);
    }
}
