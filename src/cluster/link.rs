//! The node's three Redis links, each a task that reconnects on its own with
//! back-off capped at [`MAX_BACKOFF`]:
//! - the **publisher** drains queued bus messages and sends each batch as one
//!   pipeline (one round trip however many publications queued meanwhile);
//! - the **subscriber** owns the pub/sub connection: it (un)subscribes room
//!   and user channels as local membership changes, delivers what arrives,
//!   pings to detect a dead link, and after a loss resubscribes everything in
//!   batches and sends `sys.resync` to local rooms (what they missed meanwhile
//!   is unknown);
//! - the **heartbeat** refreshes this node's record every
//!   `node_ttl_ms / 5` (at most once a second apart), measures the round
//!   trip, counts the live nodes, and removes the record on shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::wire::BusMessage;
use super::{Node, Outgoing, Recheck, Topic};

/// Longest wait between reconnect attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// First wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Any single Redis call slower than this counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE when resubscribing.
const SUBSCRIBE_BATCH: usize = 512;
/// Publications per pipeline.
const PUBLISH_BATCH: usize = 512;
/// How often the subscriber pings an idle pub/sub link.
const PUBSUB_PING: Duration = Duration::from_secs(1);

/// Exponential back-off between reconnect attempts.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(MIN_BACKOFF)
    }

    fn reset(&mut self) {
        self.0 = MIN_BACKOFF;
    }

    /// Waits the current delay (or until `stop`); false when stopped.
    async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// A command connection that reconnects on use; calls fail fast (the
/// callers decide what a failure costs).
async fn commands(node: &Node) -> redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(0)
        .set_max_delay(MAX_BACKOFF);
    ConnectionManager::new_lazy_with_config(node.client.clone(), cfg)
}

/// Sends queued publications, a batch per round trip. While the link is
/// down the batch is dropped (counted as errors; local delivery already
/// happened) and the rooms it was for get `Resync` once the link is back.
pub(super) async fn publisher(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut conn = match commands(&node).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(node = %node.id, error = %e, "cluster publisher cannot start");
            return;
        }
    };
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
    // Rooms whose publications were lost while Redis was unreachable.
    let mut lost: HashSet<String> = HashSet::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            note_lost(&node, &mut lost, batch.drain(..));
            continue;
        }
        let mut pipe = redis::pipe();
        for o in &batch {
            pipe.cmd("PUBLISH").arg(&o.channel).arg(&o.payload).ignore();
        }
        let resyncs: Vec<String> = lost.drain().collect();
        for ch in &resyncs {
            pipe.cmd("PUBLISH")
                .arg(ch)
                .arg(BusMessage::Resync.encode(node.nonce))
                .ignore();
        }
        match timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {
                node.metrics.published.inc_by(batch.len() as u64);
                batch.clear();
                retry_at = None;
            }
            failed => {
                if let Ok(Err(e)) = &failed {
                    tracing::debug!(node = %node.id, error = %e, "cluster publish failed");
                }
                lost.extend(resyncs);
                note_lost(&node, &mut lost, batch.drain(..));
                // Do not hammer a Redis that is down: drop what comes in the
                // next few hundred milliseconds without trying.
                retry_at = Some(Instant::now() + Duration::from_millis(250));
            }
        }
    }
}

/// Counts dropped publications and remembers their rooms.
fn note_lost(node: &Node, lost: &mut HashSet<String>, dropped: impl Iterator<Item = Outgoing>) {
    let mut n = 0;
    for o in dropped {
        n += 1;
        if matches!(node.parse_channel(&o.channel), Some((Topic::Room, _, _))) {
            lost.insert(o.channel);
        }
    }
    node.metrics.error("publish", n);
}

/// Owns the pub/sub connection (see the module docs).
pub(super) async fn subscriber(
    node: Arc<Node>,
    mut rechecks: mpsc::UnboundedReceiver<Recheck>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut connected_before = false;
    loop {
        let pubsub = match timeout(CALL_TIMEOUT, node.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            failed => {
                if let Ok(Err(e)) = failed {
                    tracing::debug!(node = %node.id, error = %e, "cluster pub/sub connect failed");
                }
                node.metrics.error("connect", 1);
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Pending rechecks are covered by subscribing what is wanted now.
        while rechecks.try_recv().is_ok() {}
        let mut subscribed: HashSet<String> = HashSet::new();
        let wanted = node.wanted_channels();
        if let Err(e) = subscribe_all(&mut sink, &wanted).await {
            tracing::warn!(node = %node.id, error = %e, "cluster resubscribe failed");
            node.metrics.error("subscribe", 1);
            if !backoff.wait(&stop).await {
                return;
            }
            continue;
        }
        subscribed.extend(wanted);
        backoff.reset();
        node.set_pubsub_up(true);
        if connected_before {
            node.metrics.reconnects.with_label_values(&["pubsub"]).inc();
            tracing::info!(node = %node.id, channels = subscribed.len(), "cluster pub/sub link restored");
            node.resync_local_rooms();
        } else {
            tracing::info!(node = %node.id, "cluster pub/sub link up");
        }
        connected_before = true;
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.reset();
        let lost = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = stream.next() => match msg {
                    Some(m) => {
                        let payload = bytes::Bytes::copy_from_slice(m.get_payload_bytes());
                        node.deliver(m.get_channel_name(), payload);
                    }
                    None => break "connection closed",
                },
                Some(Recheck(first)) = rechecks.recv() => {
                    let mut channels = vec![first];
                    while channels.len() < SUBSCRIBE_BATCH {
                        match rechecks.try_recv() {
                            Ok(Recheck(c)) => channels.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = reconcile(&node, &mut sink, &mut subscribed, channels).await {
                        node.metrics.error("subscribe", 1);
                        tracing::debug!(node = %node.id, error = %e, "cluster subscribe failed");
                        break "subscribe failed";
                    }
                }
                _ = ping.tick() => {
                    match timeout(CALL_TIMEOUT, sink.ping::<String>()).await {
                        Ok(Ok(_)) => {}
                        _ => break "ping failed",
                    }
                }
            }
        };
        node.set_pubsub_up(false);
        node.metrics.error("pubsub", 1);
        tracing::warn!(node = %node.id, reason = lost, "cluster pub/sub link lost; local service goes on");
        drop(stream);
        if !backoff.wait(&stop).await {
            return;
        }
    }
}

/// Subscribes `channels` in batches.
async fn subscribe_all(sink: &mut PubSubSink, channels: &[String]) -> redis::RedisResult<()> {
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        match timeout(CALL_TIMEOUT, sink.subscribe(chunk)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        }
    }
    Ok(())
}

/// Brings the subscriptions of `channels` in line with local membership.
async fn reconcile(
    node: &Node,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
    channels: Vec<String>,
) -> redis::RedisResult<()> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for ch in channels {
        let want = node.wanted(&ch);
        if want && !subscribed.contains(&ch) && !add.contains(&ch) {
            add.push(ch);
        } else if !want && subscribed.contains(&ch) && !remove.contains(&ch) {
            remove.push(ch);
        }
    }
    if !add.is_empty() {
        subscribe_all(sink, &add).await?;
        subscribed.extend(add);
    }
    if !remove.is_empty() {
        match timeout(CALL_TIMEOUT, sink.unsubscribe(&remove)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        }
        for ch in &remove {
            subscribed.remove(ch);
        }
    }
    Ok(())
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}

/// Refreshes this node's record (see the module docs).
pub(super) async fn heartbeat(node: Arc<Node>, stop: CancellationToken) {
    let mut conn = match commands(&node).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(node = %node.id, error = %e, "cluster heartbeat cannot start");
            return;
        }
    };
    let every = (node.ttl / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let ttl_ms = u64::try_from(node.ttl.as_millis()).unwrap_or(u64::MAX);
    let key = node.node_key(&node.id);
    let nodes = node.nodes_key();
    let started = now_ms();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = false;
    let mut ever_up = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let record = serde_json::json!({ "id": node.id, "started_ms": started, "seen_ms": now });
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(record.to_string())
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        pipe.cmd("ZADD").arg(&nodes).arg(now).arg(&node.id).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&nodes)
            .arg("-inf")
            .arg(now.saturating_sub(ttl_ms))
            .ignore();
        pipe.cmd("ZCARD").arg(&nodes);
        let sent = Instant::now();
        match timeout(CALL_TIMEOUT, pipe.query_async::<(u64,)>(&mut conn)).await {
            Ok(Ok((live,))) => {
                node.metrics.rtt.observe(sent.elapsed().as_secs_f64());
                node.live_nodes
                    .store(live, std::sync::atomic::Ordering::Release);
                node.metrics
                    .nodes
                    .set(i64::try_from(live).unwrap_or(i64::MAX));
                if !was_up && ever_up {
                    node.metrics
                        .reconnects
                        .with_label_values(&["commands"])
                        .inc();
                    tracing::info!(node = %node.id, live_nodes = live, "cluster command link restored");
                } else if !was_up {
                    tracing::info!(node = %node.id, live_nodes = live, "cluster command link up");
                }
                was_up = true;
                ever_up = true;
                node.set_commands_up(true);
            }
            failed => {
                if was_up {
                    tracing::warn!(node = %node.id, "cluster command link lost; local service goes on");
                }
                if let Ok(Err(e)) = failed {
                    tracing::debug!(node = %node.id, error = %e, "cluster heartbeat failed");
                }
                node.metrics.error("heartbeat", 1);
                was_up = false;
                node.set_commands_up(false);
            }
        }
    }
    // Leave the cluster now rather than after node_ttl_ms.
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(&key).ignore();
    pipe.cmd("ZREM").arg(&nodes).arg(&node.id).ignore();
    let _ = timeout(
        Duration::from_millis(500),
        pipe.query_async::<()>(&mut conn),
    )
    .await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
