//! A session's outbound queues (README "Delivery"): one reliable and one lossy bounded
//! queue, drained by the session's single writer.
//!
//! Owns: the overflow policy. Both queues are bounded in frames and, together, in
//! payload bytes (a frame shared by many recipients counts at its full size in
//! each queue: it stays alive as long as any queue holds it). A full reliable
//! queue marks the session a slow consumer: both queues are dropped at once and
//! the writer is asked to cut the session (4002, see `transport::writer`);
//! nothing is silently dropped while the session lives. A full lossy queue drops
//! its oldest frame and counts it. A lossy frame may carry a conflation key
//! (latest wins, SPEC §6): it then replaces, in place, a still-queued lossy
//! frame with the same key, so a receiver that falls behind gets the latest
//! state of each key, never a backlog. Producers (rooms, services, the server API)
//! push already-encoded frames whose bytes are shared between recipients; pushing
//! never awaits and never allocates once the queue has grown to its working size.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tungstenite::Message;

use crate::config::DEFAULT_QUEUE_MAX_BYTES;
use crate::error::CloseCode;

/// Longest conflation key a publisher may name (server API `key`, plugin
/// `publish-latest`), in bytes.
pub const MAX_CONFLATION_KEY_BYTES: usize = 256;

/// Whether a publisher's conflation key is acceptable: 1 to
/// [`MAX_CONFLATION_KEY_BYTES`] bytes.
pub fn valid_conflation_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_CONFLATION_KEY_BYTES
}

/// The conflation key of a lossy frame that has none.
pub const NO_KEY: u64 = 0;

/// A conflation key for `parts` (FNV-1a over each part and a separator;
/// stable across processes and builds, so every node of a cluster keys a
/// frame alike). Never [`NO_KEY`].
pub fn conflation_key(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h.max(1)
}

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
    /// Queued after dropping the oldest lossy frame (or frames, to fit the byte
    /// bound).
    DroppedOldest,
    /// The reliable queue was full (frames or bytes): the session is now cut as
    /// a slow consumer (4002).
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

impl CloseRequest {
    /// Whether this close cuts a slow consumer (README "Delivery"): the queues
    /// are gone, a write in progress is abandoned, the close frame and the
    /// peer's answer get at most `writer_send_timeout_ms`, then the connection
    /// is reset. Other closes keep the usual close handshake.
    pub fn is_cut(&self) -> bool {
        !self.flush && self.code == CloseCode::SlowConsumer
    }
}

/// The bytes a queued frame counts for: its payload, shared or not (framing
/// overhead is a few bytes and not counted).
fn frame_bytes(msg: &Message) -> usize {
    msg.len()
}

impl Queues {
    /// Empties both queues (a cut or an abort).
    fn clear(&mut self) {
        self.reliable.clear();
        self.lossy.clear();
        self.bytes = 0;
    }

    /// Drops the oldest lossy frame; `false` if there was none.
    fn drop_oldest_lossy(&mut self) -> bool {
        match self.lossy.pop_front() {
            Some((_, old)) => {
                self.bytes -= frame_bytes(&old);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Default)]
struct Queues {
    reliable: VecDeque<Message>,
    /// Lossy frames with their conflation key ([`NO_KEY`]: none).
    lossy: VecDeque<(u64, Message)>,
    /// Payload bytes held by both queues (see [`frame_bytes`]).
    bytes: usize,
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
    /// The writer's wake-up (the outbox has one consumer). A waker rather than
    /// a `Notify`: the writer's wait is a poll, not a queued waiter node, so
    /// the future every idle session keeps resident stays small.
    writer: AtomicWaker,
    reliable_capacity: usize,
    lossy_capacity: usize,
    /// Bound on [`Queues::bytes`]. One frame is always accepted into an empty
    /// queue (reliable) or as the newest lossy frame, so a frame larger than the
    /// bound is still delivered: the bound limits a backlog, not a frame.
    max_bytes: usize,
    lossy_dropped: AtomicU64,
    counters: Option<DropCounters>,
}

impl Outbox {
    /// An empty outbox with the configured capacities, bounded in bytes at the
    /// default `queues.max_bytes` (see [`Outbox::with_max_bytes`]).
    pub fn new(reliable_capacity: usize, lossy_capacity: usize) -> Self {
        Self {
            queues: Mutex::new(Queues::default()),
            writer: AtomicWaker::new(),
            reliable_capacity: reliable_capacity.max(1),
            lossy_capacity: lossy_capacity.max(1),
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            lossy_dropped: AtomicU64::new(0),
            counters: None,
        }
    }

    /// The same outbox bounded at `max_bytes` payload bytes over both queues.
    #[must_use]
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        Self {
            max_bytes: max_bytes.max(1),
            ..self
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
    ///
    /// Reliable: past `reliable_capacity` frames, or when the frame does not fit
    /// in `max_bytes` even after every lossy frame gave way, the session is a slow
    /// consumer (both queues dropped, a cut requested). Lossy: the oldest lossy
    /// frames are dropped (counted) until the frame fits both bounds.
    pub fn push(&self, msg: Message, qos: Qos) -> Pushed {
        self.push_keyed(msg, qos, NO_KEY)
    }

    /// [`Outbox::push`] of a lossy frame with a conflation `key`: a queued
    /// lossy frame with the same key is replaced in place (the new frame
    /// takes its place in the queue; nothing is counted as dropped; a larger
    /// one that would break the byte bound is queued anew instead). Without
    /// one queued (and always when `key` is [`NO_KEY`] or the frame is
    /// reliable) it is a plain push. The queue is only searched when it
    /// holds lossy frames, so an idle or keeping-up receiver pays nothing.
    pub fn push_keyed(&self, msg: Message, qos: Qos, key: u64) -> Pushed {
        let len = frame_bytes(&msg);
        let (outcome, dropped) = {
            let mut q = self.queues.lock();
            if q.close.is_some() {
                return Pushed::Closed;
            }
            let mut dropped = 0u64;
            let outcome = match qos {
                Qos::Reliable => {
                    // Lossy frames give way to reliable ones (the writer sends
                    // them last anyway).
                    while q.bytes + len > self.max_bytes && q.drop_oldest_lossy() {
                        dropped += 1;
                    }
                    let over_bytes = !q.reliable.is_empty() && q.bytes + len > self.max_bytes;
                    if q.reliable.len() >= self.reliable_capacity || over_bytes {
                        q.clear();
                        q.close = Some(CloseRequest {
                            code: CloseCode::SlowConsumer,
                            reason: "slow consumer",
                            flush: false,
                        });
                        Pushed::SlowConsumer
                    } else {
                        q.bytes += len;
                        q.reliable.push_back(msg);
                        if dropped > 0 {
                            Pushed::DroppedOldest
                        } else {
                            Pushed::Queued
                        }
                    }
                }
                Qos::Lossy => 'lossy: {
                    if key != NO_KEY
                        && let Some(at) = q.lossy.iter().rposition(|(k, _)| *k == key)
                    {
                        let old_len = frame_bytes(&q.lossy[at].1);
                        if q.bytes - old_len + len <= self.max_bytes {
                            q.lossy[at].1 = msg;
                            q.bytes = q.bytes - old_len + len;
                            break 'lossy Pushed::Queued;
                        }
                        // The newer frame is larger and does not fit where
                        // the old one was: the old one goes, the new one
                        // queues as any lossy frame.
                        q.lossy.remove(at);
                        q.bytes -= old_len;
                    }
                    if q.lossy.len() >= self.lossy_capacity && q.drop_oldest_lossy() {
                        dropped += 1;
                    }
                    while q.bytes + len > self.max_bytes && q.drop_oldest_lossy() {
                        dropped += 1;
                    }
                    q.bytes += len;
                    q.lossy.push_back((key, msg));
                    if dropped > 0 {
                        Pushed::DroppedOldest
                    } else {
                        Pushed::Queued
                    }
                }
            };
            (outcome, dropped)
        };
        self.writer.wake();
        if dropped > 0 {
            self.lossy_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(c) = &self.counters {
            c.lossy_overflow.inc_by(dropped);
            if outcome == Pushed::SlowConsumer {
                c.slow_consumer.inc();
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
                q.clear();
            }
            q.close = Some(CloseRequest {
                code,
                reason,
                flush,
            });
        }
        self.writer.wake();
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

    /// Payload bytes currently queued (both queues).
    pub fn queued_bytes(&self) -> usize {
        self.queues.lock().bytes
    }

    /// Waits until the session is cut as a slow consumer
    /// ([`CloseRequest::is_cut`]). The writer races this against a
    /// socket write that the peer is holding up, so a cut never waits for the
    /// frames already taken from the queues.
    ///
    /// # Cancel safety
    /// Cancel safe: it only observes.
    pub fn cut(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before the check, so a cut between the check and the
            // wait still wakes it (the writer is the outbox's only waiter).
            self.writer.register(cx.waker());
            let cut = self
                .queues
                .lock()
                .close
                .as_ref()
                .is_some_and(CloseRequest::is_cut);
            if cut { Poll::Ready(()) } else { Poll::Pending }
        })
    }

    /// Asks the writer to send a ping when nothing else is queued. The session's
    /// reader schedules pings on the timer it already keeps for the idle timeout,
    /// so a session needs no timer of its own in the writer.
    pub fn request_ping(&self) {
        let mut q = self.queues.lock();
        if q.close.is_none() {
            q.ping = true;
            drop(q);
            self.writer.wake();
        }
    }

    /// Waits until there is something to write, then moves it into `out` (reliable
    /// frames first, then lossy), at most `max` frames per call.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are only moved out once the wait has completed.
    pub fn next_batch<'a>(
        &'a self,
        out: &'a mut Vec<Message>,
        max: usize,
    ) -> impl Future<Output = Batch> + 'a {
        std::future::poll_fn(move |cx| {
            // Registered before the queues are read, so a frame pushed after the
            // check still wakes the writer.
            self.writer.register(cx.waker());
            self.take_batch(out, max).map_or(Poll::Pending, Poll::Ready)
        })
    }

    /// What [`Outbox::next_batch`] returns, if anything is due now. A due ping
    /// waits behind queued frames (they prove liveness as well) and is dropped
    /// once a close is requested.
    fn take_batch(&self, out: &mut Vec<Message>, max: usize) -> Option<Batch> {
        let mut q = self.queues.lock();
        let before = out.len();
        let take_r = q.reliable.len().min(max);
        out.extend(q.reliable.drain(..take_r));
        if q.reliable.is_empty() && q.close.is_none() {
            let take_l = q.lossy.len().min(max.saturating_sub(take_r));
            out.extend(q.lossy.drain(..take_l).map(|(_, m)| m));
        }
        let taken: usize = out[before..].iter().map(frame_bytes).sum();
        q.bytes -= taken;
        if let Some(close) = &q.close {
            if !close.flush || q.reliable.is_empty() {
                let close = close.clone();
                q.clear();
                return Some(Batch::Close(close));
            }
            return Some(Batch::Frames);
        }
        if !out.is_empty() {
            // Whatever remains is taken by the next call, which does not wait.
            return Some(Batch::Frames);
        }
        std::mem::take(&mut q.ping).then_some(Batch::Ping)
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
    async fn keyed_lossy_frames_replace_their_queued_predecessor_in_place() {
        let o = Outbox::new(8, 4);
        let (a, b) = (conflation_key(&[b"a"]), conflation_key(&[b"b"]));
        assert_ne!(a, b);
        assert_ne!(a, NO_KEY);
        o.push_keyed(bin(1), Qos::Lossy, a);
        o.push_keyed(bin(2), Qos::Lossy, b);
        o.push(bin(3), Qos::Lossy);
        // Newer states of a and b take their predecessors' places.
        for n in 4..20 {
            assert_eq!(
                o.push_keyed(bin(n), Qos::Lossy, if n % 2 == 0 { a } else { b }),
                Pushed::Queued
            );
        }
        assert_eq!(o.depth(), (0, 3), "one frame per key, plus the unkeyed one");
        assert_eq!(o.lossy_dropped(), 0, "replacing is not dropping");
        assert_eq!(o.queued_bytes(), 3);
        let mut out = Vec::new();
        o.next_batch(&mut out, 64).await;
        assert_eq!(out, vec![bin(18), bin(19), bin(3)]);
        // Once drained, the next frame of a key is queued anew.
        o.push_keyed(bin(20), Qos::Lossy, a);
        assert_eq!(o.depth(), (0, 1));
        // Reliable frames and unkeyed lossy frames never conflate.
        o.push_keyed(text("r"), Qos::Reliable, a);
        o.push_keyed(text("r"), Qos::Reliable, a);
        o.push(bin(21), Qos::Lossy);
        o.push(bin(21), Qos::Lossy);
        assert_eq!(o.depth(), (2, 3));
    }

    #[tokio::test]
    async fn a_larger_keyed_frame_that_breaks_the_byte_bound_queues_anew() {
        let o = Outbox::new(8, 8).with_max_bytes(10);
        let k = conflation_key(&[b"k"]);
        o.push_keyed(Message::Binary(Bytes::from(vec![1; 4])), Qos::Lossy, k);
        o.push(Message::Binary(Bytes::from(vec![2; 4])), Qos::Lossy);
        // 4 + 4 - 4 + 8 = 12 > 10: the old k goes, older frames give way.
        o.push_keyed(Message::Binary(Bytes::from(vec![3; 8])), Qos::Lossy, k);
        assert!(o.queued_bytes() <= 10);
        let mut out = Vec::new();
        o.next_batch(&mut out, 64).await;
        assert_eq!(out.last(), Some(&Message::Binary(Bytes::from(vec![3; 8]))));
        assert_eq!(out.len(), 1, "{out:?}");
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

    fn big(b: u8, len: usize) -> Message {
        Message::Binary(Bytes::from(vec![b; len]))
    }

    /// Regression (issue 11): queues are bounded in bytes, not only in frames. A
    /// few large frames overflow `max_bytes` while the frame limit is far away,
    /// and a broadcast frame shared with other recipients counts at its full size.
    #[tokio::test]
    async fn a_few_large_reliable_frames_overflow_max_bytes() {
        let o = Outbox::new(1024, 256).with_max_bytes(100_000);
        let shared = big(1, 40_000);
        // Clones share the bytes (a broadcast); each still counts 40,000.
        assert_eq!(o.push(shared.clone(), Qos::Reliable), Pushed::Queued);
        assert_eq!(o.push(shared.clone(), Qos::Reliable), Pushed::Queued);
        assert_eq!(o.queued_bytes(), 80_000);
        assert_eq!(o.push(shared, Qos::Reliable), Pushed::SlowConsumer);
        assert_eq!(o.depth(), (0, 0), "a slow consumer's queues are dropped");
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.push(text("late"), Qos::Reliable), Pushed::Closed);
        let mut out = Vec::new();
        match o.next_batch(&mut out, 64).await {
            Batch::Close(c) => assert!(c.code == CloseCode::SlowConsumer && !c.flush),
            other => panic!("expected a cut, got {other:?}"),
        }
        assert!(out.is_empty(), "nothing already queued is written");
    }

    #[tokio::test]
    async fn lossy_frames_over_max_bytes_drop_the_oldest_and_give_way_to_reliable() {
        let o = Outbox::new(1024, 256).with_max_bytes(100_000);
        assert_eq!(o.push(big(1, 40_000), Qos::Lossy), Pushed::Queued);
        assert_eq!(o.push(big(2, 40_000), Qos::Lossy), Pushed::Queued);
        assert_eq!(o.push(big(3, 40_000), Qos::Lossy), Pushed::DroppedOldest);
        assert_eq!(o.lossy_dropped(), 1);
        assert_eq!((o.depth(), o.queued_bytes()), ((0, 2), 80_000));
        // A reliable frame that does not fit pushes lossy frames out first.
        assert_eq!(o.push(big(9, 40_000), Qos::Reliable), Pushed::DroppedOldest);
        assert_eq!(o.lossy_dropped(), 2);
        assert_eq!((o.depth(), o.queued_bytes()), ((1, 1), 80_000));
        // The newest lossy frame is always queued, even over a reliable backlog.
        assert_eq!(o.push(big(4, 70_000), Qos::Lossy), Pushed::DroppedOldest);
        assert_eq!((o.depth(), o.queued_bytes()), ((1, 1), 110_000));
        let mut out = Vec::new();
        o.next_batch(&mut out, 64).await;
        assert_eq!(out, vec![big(9, 40_000), big(4, 70_000)]);
        assert_eq!(o.queued_bytes(), 0, "written frames free their bytes");
        assert!(!o.is_closing());
    }

    #[tokio::test]
    async fn one_frame_larger_than_max_bytes_still_goes_out() {
        let o = Outbox::new(8, 8).with_max_bytes(1_000);
        assert_eq!(o.push(big(1, 5_000), Qos::Reliable), Pushed::Queued);
        let mut out = Vec::new();
        o.next_batch(&mut out, 64).await;
        assert_eq!(out.len(), 1);
        // Behind a queued frame, it is a backlog over the bound.
        assert_eq!(o.push(big(1, 600), Qos::Reliable), Pushed::Queued);
        assert_eq!(o.push(big(1, 600), Qos::Reliable), Pushed::SlowConsumer);
    }

    #[tokio::test]
    async fn cut_resolves_on_a_slow_consumer_but_not_on_a_graceful_close() {
        for (code, flush) in [(CloseCode::GoingAway, true), (CloseCode::Normal, false)] {
            let o = Outbox::new(1, 8);
            o.close(code, "bye", flush);
            let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), o.cut()).await;
            assert!(waiting.is_err(), "{code:?} is not a slow consumer's cut");
        }
        let o = std::sync::Arc::new(Outbox::new(1, 8));
        let o2 = std::sync::Arc::clone(&o);
        let cut = tokio::spawn(async move { o2.cut().await });
        tokio::task::yield_now().await;
        o.push(text("a"), Qos::Reliable);
        o.push(text("b"), Qos::Reliable);
        tokio::time::timeout(std::time::Duration::from_secs(5), cut)
            .await
            .expect("the overflow wakes the writer")
            .expect("task");
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
