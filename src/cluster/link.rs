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
//!   trip, counts the live nodes, buries nodes silent past `node_ttl_ms`
//!   (not in the first `node_ttl_ms` after its own outage), and removes the
//!   record on shutdown.
//!
//! Behind Sentinel, a failed heartbeat or pub/sub link asks the Sentinels
//! for the master ([`Node::relocate`]); when it moved, every link follows.

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
/// Channels per SUBSCRIBE (and rooms per presence snapshot).
pub(super) const SUBSCRIBE_BATCH: usize = 512;
/// Publications per pipeline.
const PUBLISH_BATCH: usize = 512;
/// How long a reconnected subscriber retries the presence and history
/// snapshot.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(2);
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

/// A command connection that connects on first use and reconnects on
/// failure; calls fail fast (the callers decide what a failure costs).
pub(super) fn commands(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_number_of_retries(0)
        .set_max_delay(MAX_BACKOFF);
    ConnectionManager::new_lazy_with_config(client.clone(), cfg)
}

/// A link's own command connection (the publisher's: its pipelines never
/// queue behind other callers' commands), renewed when the endpoint moves to
/// another server.
#[derive(Default)]
struct OwnConnection {
    generation: u64,
    conn: Option<ConnectionManager>,
}

impl OwnConnection {
    fn get(&mut self, node: &Node) -> redis::RedisResult<&mut ConnectionManager> {
        let generation = node.endpoint.generation();
        if self.generation != generation {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(commands(&node.endpoint.target()?.client)?);
            self.generation = generation;
        }
        Ok(self.conn.as_mut().expect("set above"))
    }
}

/// One Redis call bounded by [`CALL_TIMEOUT`].
pub(super) async fn call<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Sends queued publications, a batch per round trip. While the link is
/// down the batch is dropped (counted as errors; local delivery already
/// happened) and the rooms it was for get `Resync` once the link is back.
pub(super) async fn publisher(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut own = OwnConnection::default();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
    // Rooms whose publications were lost while Redis was unreachable.
    let mut lost: HashSet<String> = HashSet::new();
    let mut retry_at: Option<Instant> = None;
    // An idle link is pinged, so a dead connection is replaced before the
    // next publication needs it and lost rooms get their resync.
    let mut idle = tokio::time::interval(PUBSUB_PING);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ping = tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return } else { false },
            _ = idle.tick() => true,
        };
        // Skip Redis for a moment after a failure, unless the heartbeat has
        // seen it answer since (it is back: try at once).
        if retry_at.is_some_and(|t| Instant::now() < t) && !node.is_up() {
            note_lost(&node, &mut lost, batch.drain(..));
            continue;
        }
        let mut pipe = redis::pipe();
        let mut published = 0;
        for o in &mut batch {
            match o {
                Outgoing::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(&*channel).arg(&*payload).ignore();
                    published += 1;
                }
                // Moved into the pipeline: a lost command is not retried
                // (presence and sessions are re-asserted when the link is back).
                Outgoing::Command(cmd) => {
                    pipe.add_command(std::mem::replace(cmd, redis::Cmd::new()))
                        .ignore();
                }
                // One script call: offset, stream, publish.
                Outgoing::Recorded(r) => {
                    pipe.add_command(node.record_cmd(r)).ignore();
                    published += 1;
                }
            }
        }
        let resyncs: Vec<String> = lost.drain().collect();
        for ch in &resyncs {
            pipe.cmd("PUBLISH")
                .arg(ch)
                .arg(BusMessage::Resync.encode(node.nonce))
                .ignore();
        }
        if ping {
            pipe.cmd("PING").ignore();
        } else {
            idle.reset();
        }
        // A connection found dead is replaced by the manager on that error:
        // one more try goes out on the new one.
        let mut result = match own.get(&node) {
            Ok(conn) => call(pipe.query_async::<()>(conn)).await,
            Err(e) => Err(e),
        };
        if result.as_ref().is_err_and(|e| {
            e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
        }) && let Ok(conn) = own.get(&node)
        {
            result = call(pipe.query_async::<()>(conn)).await;
        }
        match result {
            Ok(()) => {
                node.metrics.published.inc_by(published);
                batch.clear();
                retry_at = None;
            }
            Err(e) => {
                tracing::debug!(node = %node.id, error = %e, "cluster publish failed");
                lost.extend(resyncs);
                note_lost(&node, &mut lost, batch.drain(..));
                // Do not hammer a Redis that is down: drop what comes in the
                // next few hundred milliseconds without trying.
                retry_at = Some(Instant::now() + Duration::from_millis(250));
            }
        }
    }
}

/// Counts dropped publications and remembers their rooms (dropped presence
/// writes are re-asserted when the link is back). Recorded publications are
/// delivered locally under the node's own epoch instead (their local
/// members have not seen them yet).
fn note_lost(node: &Node, lost: &mut HashSet<String>, dropped: impl Iterator<Item = Outgoing>) {
    let mut n = 0;
    for o in dropped {
        let channel = match o {
            Outgoing::Publish { channel, .. } => channel,
            Outgoing::Recorded(r) => {
                node.record_locally(&r);
                r.channel
            }
            Outgoing::Command(_) => continue,
        };
        n += 1;
        if matches!(node.parse_channel(&channel), Some((Topic::Room, _, _))) {
            lost.insert(channel);
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
    let mut moved = node.endpoint.changes();
    loop {
        moved.mark_unchanged();
        let connected = match node.endpoint.target() {
            Ok(t) => timeout(CALL_TIMEOUT, t.client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| Err(timed_out())),
            Err(e) => Err(e),
        };
        let pubsub = match connected {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(node = %node.id, error = %e, "cluster pub/sub connect failed");
                node.metrics.error("connect", 1);
                node.relocate().await;
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Pending rechecks are covered by subscribing what is wanted now;
        // joins waiting on one go ahead (`wanted_channels` includes them).
        let mut waiting = Vec::new();
        while let Ok(r) = rechecks.try_recv() {
            waiting.extend(r.done);
        }
        node.subscribed.clear();
        let mut wanted = node.wanted_channels();
        wanted.extend(node.pending.iter().map(|p| p.key().clone()));
        wanted.sort_unstable();
        wanted.dedup();
        if let Err(e) = subscribe_all(&mut sink, &wanted).await {
            tracing::warn!(node = %node.id, error = %e, "cluster resubscribe failed");
            node.metrics.error("subscribe", 1);
            if !backoff.wait(&stop).await {
                return;
            }
            continue;
        }
        let synced = snapshot_soon(&node, &wanted).await.unwrap_or_else(|e| {
            tracing::warn!(node = %node.id, error = %e, "cluster presence snapshot failed");
            node.metrics.error("snapshot", 1);
            HashSet::new()
        });
        for ch in wanted {
            node.subscribed.insert(ch, ());
        }
        for done in waiting {
            let _ = done.send(());
        }
        backoff.reset();
        node.set_pubsub_up(true);
        if connected_before {
            node.metrics.reconnects.with_label_values(&["pubsub"]).inc();
            tracing::info!(node = %node.id, channels = node.subscribed.len(), "cluster pub/sub link restored");
            node.resync_local_rooms(&synced);
        } else {
            tracing::info!(node = %node.id, "cluster pub/sub link up");
        }
        connected_before = true;
        let mut ping = tokio::time::interval(PUBSUB_PING);
        ping.reset();
        let lost = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = moved.changed() => break "the Redis master moved",
                msg = stream.next() => match msg {
                    Some(m) => {
                        let payload = bytes::Bytes::copy_from_slice(m.get_payload_bytes());
                        node.deliver(m.get_channel_name(), payload);
                    }
                    None => break "connection closed",
                },
                Some(first) = rechecks.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < SUBSCRIBE_BATCH {
                        match rechecks.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = reconcile(&node, &mut sink, batch).await {
                        node.metrics.error("subscribe", 1);
                        tracing::debug!(node = %node.id, error = %e, "cluster subscribe failed");
                        break "subscribe failed";
                    }
                }
                _ = ping.tick() => {
                    match timeout(CALL_TIMEOUT, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        _ => break "ping failed",
                    }
                }
            }
        };
        node.set_pubsub_up(false);
        node.subscribed.clear();
        node.metrics.error("pubsub", 1);
        tracing::warn!(node = %node.id, reason = lost, "cluster pub/sub link lost; local service goes on");
        drop(stream);
        node.relocate().await;
        if !backoff.wait(&stop).await {
            return;
        }
    }
}

/// [`Node::snapshot`] after a reconnect: the command link may come back a
/// moment after the pub/sub one (Redis restarting), so failures are retried
/// for up to [`SNAPSHOT_PATIENCE`] before members are only told to resync.
async fn snapshot_soon(node: &Node, wanted: &[String]) -> redis::RedisResult<HashSet<String>> {
    let deadline = Instant::now() + SNAPSHOT_PATIENCE;
    loop {
        match node.snapshot(wanted).await {
            Ok(synced) => return Ok(synced),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(MIN_BACKOFF * 2).await,
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

/// Brings the subscriptions of the rechecked channels in line with local
/// membership, then releases the joins waiting on them.
async fn reconcile(
    node: &Node,
    sink: &mut PubSubSink,
    batch: Vec<Recheck>,
) -> redis::RedisResult<()> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let mut waiting = Vec::new();
    for Recheck { channel, done } in batch {
        waiting.extend(done);
        let want = node.wanted(&channel);
        let has = node.subscribed.contains_key(&channel);
        if want && !has && !add.contains(&channel) {
            add.push(channel);
        } else if !want && has && !remove.contains(&channel) {
            remove.push(channel);
        }
    }
    if !add.is_empty() {
        subscribe_all(sink, &add).await?;
        // A failed snapshot leaves the replica to the announcements; the
        // link itself is fine.
        if let Err(e) = node.snapshot(&add).await {
            node.metrics.error("snapshot", 1);
            tracing::debug!(node = %node.id, error = %e, "cluster presence snapshot failed");
        }
        for ch in add {
            node.subscribed.insert(ch, ());
        }
    }
    for done in waiting {
        let _ = done.send(());
    }
    if !remove.is_empty() {
        match timeout(CALL_TIMEOUT, sink.unsubscribe(&remove)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        }
        for ch in &remove {
            node.subscribed.remove(ch);
            node.unsubscribed(ch);
        }
    }
    Ok(())
}

pub(super) fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out"))
}

/// Claims (or confirms) this node's slot: the slot it holds, else the
/// lowest free one, or one whose owner stopped heartbeating. Returns 0 when
/// all 1023 are taken by live nodes.
const CLAIM_SLOT: &str = r"
local cur = tonumber(ARGV[3])
if cur > 0 and redis.call('HGET', KEYS[1], cur) == ARGV[1] then return cur end
for i = 1, 1023 do
  local owner = redis.call('HGET', KEYS[1], i)
  local free = (not owner) or owner == ARGV[1]
  if not free then
    local seen = redis.call('ZSCORE', KEYS[2], owner)
    free = (not seen) or tonumber(seen) < tonumber(ARGV[2])
  end
  if free then
    redis.call('HSET', KEYS[1], i, ARGV[1])
    return i
  end
end
return 0
";

/// Refreshes this node's record (see the module docs), claims its peer
/// slot, re-asserts its presence after Redis was away, and buries nodes
/// silent past `node_ttl_ms`.
pub(super) async fn heartbeat(node: Arc<Node>, stop: CancellationToken) {
    let every = (node.ttl / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let ttl_ms = u64::try_from(node.ttl.as_millis()).unwrap_or(u64::MAX);
    let key = node.node_key(&node.id);
    let nodes = node.nodes_key();
    let claim = redis::Script::new(CLAIM_SLOT);
    let started = now_ms();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = false;
    let mut ever_up = false;
    // After its own outage a node buries no one for one node_ttl_ms: the
    // others were likely cut off by the same outage (a Redis restart, a
    // Sentinel failover) and are reconnecting, their records stale meanwhile.
    let mut bury_from = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let oldest_live = now.saturating_sub(ttl_ms);
        let record = serde_json::json!({
            "id": node.id,
            "started_ms": started,
            "seen_ms": now,
            "tenants": node.local_stats(),
        });
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&key)
            .arg(record.to_string())
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        pipe.cmd("ZADD").arg(&nodes).arg(now).arg(&node.id).ignore();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(&nodes)
            .arg("-inf")
            .arg(format!("({oldest_live}"));
        pipe.cmd("ZCOUNT").arg(&nodes).arg(oldest_live).arg("+inf");
        if node.endpoint.target().is_err() {
            node.relocate().await;
        }
        let sent = Instant::now();
        let mut conn = node.endpoint.commands();
        let beat = match &mut conn {
            Ok(conn) => call(pipe.query_async::<(Vec<String>, u64)>(conn)).await,
            Err(e) => Err(e.clone()),
        };
        let slot = match (&beat, &mut conn) {
            (Ok(_), Ok(conn)) => {
                call(
                    claim
                        .key(node.slots_key())
                        .key(&nodes)
                        .arg(&node.id)
                        .arg(oldest_live)
                        .arg(node.slot())
                        .invoke_async::<u32>(conn),
                )
                .await
            }
            _ => Err(timed_out()),
        };
        match (beat, slot) {
            (Ok((dead, live)), Ok(slot)) => {
                node.metrics.rtt.observe(sent.elapsed().as_secs_f64());
                node.metrics
                    .nodes
                    .set(i64::try_from(live).unwrap_or(i64::MAX));
                if slot != node.slot() {
                    tracing::info!(node = %node.id, slot, "cluster peer slot claimed");
                    node.slot.store(slot, std::sync::atomic::Ordering::Release);
                }
                if !was_up {
                    if ever_up {
                        bury_from = Instant::now() + node.ttl;
                        node.metrics
                            .reconnects
                            .with_label_values(&["commands"])
                            .inc();
                    }
                    tracing::info!(node = %node.id, live_nodes = live, "cluster command link up");
                    // Redis may have restarted empty, or missed what this
                    // node wrote while it was away.
                    node.reassert_presence();
                    if let Err(e) = node.reconcile_sessions().await {
                        node.metrics.error("sessions", 1);
                        tracing::debug!(node = %node.id, error = %e, "cluster session re-assert failed");
                    }
                    if let Err(e) = node.reconcile_seats().await {
                        node.metrics.error("seats", 1);
                        tracing::debug!(node = %node.id, error = %e, "cluster seat re-assert failed");
                    }
                }
                was_up = true;
                ever_up = true;
                node.set_commands_up(true);
                let may_bury = Instant::now() >= bury_from;
                for d in dead.iter().filter(|d| may_bury && **d != node.id) {
                    match node.bury(d).await {
                        Ok(()) => {
                            if let Ok(conn) = &mut conn {
                                let _ =
                                    call(redis::Cmd::zrem(&nodes, d).query_async::<()>(conn)).await;
                            }
                        }
                        Err(e) => {
                            node.metrics.error("bury", 1);
                            tracing::debug!(node = %node.id, dead = %d, error = %e, "cluster clean-up failed");
                        }
                    }
                }
            }
            (beat, slot) => {
                if was_up {
                    tracing::warn!(node = %node.id, "cluster command link lost; local service goes on");
                }
                if let Err(e) = beat.map(|_| ()).and(slot.map(|_| ())) {
                    tracing::debug!(node = %node.id, error = %e, "cluster heartbeat failed");
                }
                node.metrics.error("heartbeat", 1);
                was_up = false;
                node.set_commands_up(false);
                // Behind Sentinel the master may have moved (or the old one
                // come back as a replica: writes fail with READONLY).
                node.relocate().await;
            }
        }
    }
    // Leave the cluster now rather than after node_ttl_ms: the record goes,
    // and a heartbeat score of 0 makes the next live node's heartbeat bury
    // this one (its members leave presence everywhere).
    let mut pipe = redis::pipe();
    pipe.cmd("DEL").arg(&key).ignore();
    pipe.cmd("ZADD").arg(&nodes).arg(0).arg(&node.id).ignore();
    if let Ok(mut conn) = node.endpoint.commands() {
        let _ = timeout(
            Duration::from_millis(500),
            pipe.query_async::<()>(&mut conn),
        )
        .await;
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
