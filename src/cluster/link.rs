//! The node's Redis links, tasks that reconnect on their own with back-off
//! capped at [`MAX_BACKOFF`]:
//! - the **bus link** (the subscriber task) owns one RESP3 connection that
//!   carries both the node's subscriptions and its publications: it
//!   (un)subscribes room and user channels as local membership changes,
//!   pings to detect a dead link, and after a loss resubscribes everything in
//!   batches and sends `sys.resync` to local rooms (what they missed meanwhile
//!   is unknown). Messages are delivered by the connection's reader as they
//!   are parsed (RESP3 pushes), with no task hop in between; a publisher's
//!   reply and the copy of its own publication come back in one read;
//! - the **publisher** drains queued bus messages and sends each batch as one
//!   pipeline over the bus connection (one round trip however many
//!   publications queued meanwhile);
//! - the **heartbeat** refreshes this node's record every
//!   `node_ttl_ms / 5` (at most once a second apart), measures the round
//!   trip, counts the live nodes, buries nodes silent past `node_ttl_ms`
//!   (not in the first `node_ttl_ms` after its own outage), and removes the
//!   record on shutdown.
//!
//! Behind Sentinel, a failed heartbeat or bus link asks the Sentinels
//! for the master ([`Node::relocate`]); when it moved, every link follows.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
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
/// How often the subscriber pings the bus link.
const BUS_PING: Duration = Duration::from_secs(1);

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

/// One Redis call bounded by [`CALL_TIMEOUT`].
pub(super) async fn call<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// Sends queued publications over the bus connection, a batch per round
/// trip. While the bus link is down (or a batch fails) the batch is dropped
/// (counted as errors; local delivery already happened) and the rooms it was
/// for get `Resync` with the next batch once the link is back, or at the
/// latest a [`BUS_PING`] later.
pub(super) async fn publisher(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Outgoing>,
    stop: CancellationToken,
) {
    let mut bus = node.bus.subscribe();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PUBLISH_BATCH);
    // Rooms whose publications were lost while Redis was unreachable.
    let mut lost: HashSet<String> = HashSet::new();
    // Lost rooms get their resync with the next batch, or at the latest a
    // tick after the link is back (the other nodes have synced by then).
    let mut idle = tokio::time::interval_at(Instant::now() + BUS_PING, BUS_PING);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => if n == 0 { return },
            _ = idle.tick(), if !lost.is_empty() => {}
        }
        let Some(mut conn) = bus.borrow_and_update().clone() else {
            write_state(&node, &mut batch).await;
            note_lost(&node, &mut lost, batch.drain(..));
            continue;
        };
        let mut pipe = redis::pipe();
        let mut published = 0;
        for o in &mut batch {
            match o {
                Outgoing::Publish { channel, payload } => {
                    pipe.cmd("PUBLISH").arg(&*channel).arg(&*payload).ignore();
                    published += 1;
                }
                Outgoing::Command(cmd) => take_command(&mut pipe, cmd),
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
        if pipe.is_empty() {
            continue;
        }
        match call(pipe.query_async::<()>(&mut conn)).await {
            Ok(()) => {
                node.metrics.published.inc_by(published);
                batch.clear();
            }
            Err(e) => {
                // A broken connection is the bus link's to replace; what
                // this batch carried is lost either way.
                tracing::debug!(node = %node.id, error = %e, "cluster publish failed");
                lost.extend(resyncs);
                note_lost(&node, &mut lost, batch.drain(..));
            }
        }
    }
}

/// Moves a queued state write into `pipe`: a lost one is not retried
/// (presence and sessions are re-asserted when the link is back).
fn take_command(pipe: &mut redis::Pipeline, cmd: &mut redis::Cmd) {
    pipe.add_command(std::mem::replace(cmd, redis::Cmd::new()))
        .ignore();
}

/// While the bus link is down, the batch's state writes (presence) still go
/// out over the shared command connection, which may be up: a bus link cut
/// alone must not leave stale presence behind.
async fn write_state(node: &Node, batch: &mut [Outgoing]) {
    let mut pipe = redis::pipe();
    for o in batch.iter_mut() {
        if let Outgoing::Command(cmd) = o {
            take_command(&mut pipe, cmd);
        }
    }
    if pipe.is_empty() {
        return;
    }
    let written = match node.endpoint.commands() {
        Ok(mut conn) => call(pipe.query_async::<()>(&mut conn)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        tracing::debug!(node = %node.id, error = %e, "cluster state write failed");
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

/// Opens the bus connection to the server `client` names: the same server
/// and settings over RESP3, so subscriptions and commands share one socket.
/// Messages on subscribed channels are delivered by the connection's own
/// reader as they are parsed (no task between Redis and the local fan-out);
/// `closed` is cancelled when the connection is lost.
async fn connect_bus(
    node: &Arc<Node>,
    client: &redis::Client,
    closed: CancellationToken,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3))?;
    // Weak: the node keeps a clone of the connection, whose reader keeps
    // this closure.
    let weak: Weak<Node> = Arc::downgrade(node);
    let on_push = move |push: PushInfo| -> Result<(), Infallible> {
        match push.kind {
            PushKind::Message => {
                if let Some(node) = weak.upgrade() {
                    on_message(&node, push.data);
                }
            }
            PushKind::Disconnection => closed.cancel(),
            // Subscription confirmations are answers to our own calls.
            _ => {}
        }
        Ok(())
    };
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        .set_push_sender(on_push);
    call(client.get_multiplexed_async_connection_with_config(&cfg)).await
}

/// A `message` push: `[channel, payload]`.
fn on_message(node: &Node, data: Vec<Value>) {
    let mut data = data.into_iter();
    match (data.next(), data.next()) {
        (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
            match std::str::from_utf8(&channel) {
                Ok(channel) => node.deliver(channel, bytes::Bytes::from(payload)),
                Err(_) => node.metrics.error("decode", 1),
            }
        }
        _ => node.metrics.error("decode", 1),
    }
}

/// Owns the bus link (see the module docs).
pub(super) async fn subscriber(
    node: Arc<Node>,
    mut rechecks: mpsc::UnboundedReceiver<Recheck>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new();
    let mut connected_before = false;
    let mut moved = node.endpoint.changes();
    // The last refusal logged at warn, so a wrong password is said once.
    let mut refused: Option<String> = None;
    loop {
        moved.mark_unchanged();
        let closed = CancellationToken::new();
        let connected = match node.endpoint.target() {
            Ok(t) => connect_bus(&node, &t.client, closed.clone()).await,
            Err(e) => Err(e),
        };
        let mut conn = match connected {
            Ok(c) => {
                refused = None;
                c
            }
            Err(e) => {
                let refusal = (!e.is_io_error() && !e.is_timeout()).then(|| e.to_string());
                if refusal.is_some() && refusal != refused {
                    // Reached, but refused: credentials, or a server older
                    // than 6.0 that cannot speak RESP3 (README: 6.2 or newer).
                    // Said once per streak; the retries go to debug.
                    tracing::warn!(node = %node.id, error = %e, "cluster bus connect refused by Redis");
                } else {
                    tracing::debug!(node = %node.id, error = %e, "cluster bus connect failed");
                }
                refused = refusal;
                node.metrics.error("connect", 1);
                node.relocate().await;
                if !backoff.wait(&stop).await {
                    return;
                }
                continue;
            }
        };
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
        if let Err(e) = subscribe_all(&mut conn, &wanted).await {
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
        // The publisher goes on once local rooms are in line with Redis.
        node.set_bus(Some(conn.clone()));
        if connected_before {
            node.metrics.reconnects.with_label_values(&["pubsub"]).inc();
            tracing::info!(node = %node.id, channels = node.subscribed.len(), "cluster bus link restored");
            node.resync_local_rooms(&synced);
        } else {
            tracing::info!(node = %node.id, "cluster bus link up");
        }
        connected_before = true;
        let mut ping = tokio::time::interval(BUS_PING);
        ping.reset();
        let lost = loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    node.set_bus(None);
                    return;
                }
                _ = moved.changed() => break "the Redis master moved",
                _ = closed.cancelled() => break "connection closed",
                Some(first) = rechecks.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < SUBSCRIBE_BATCH {
                        match rechecks.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = reconcile(&node, &mut conn, batch).await {
                        node.metrics.error("subscribe", 1);
                        tracing::debug!(node = %node.id, error = %e, "cluster subscribe failed");
                        break "subscribe failed";
                    }
                }
                _ = ping.tick() => {
                    if call(redis::cmd("PING").query_async::<Value>(&mut conn)).await.is_err() {
                        break "ping failed";
                    }
                }
            }
        };
        // Every clone goes, so the connection closes and its reader stops.
        node.set_bus(None);
        drop(conn);
        node.subscribed.clear();
        node.metrics.error("pubsub", 1);
        tracing::warn!(node = %node.id, reason = lost, "cluster bus link lost; local service goes on");
        node.relocate().await;
        if !backoff.wait(&stop).await {
            return;
        }
    }
}

/// [`Node::snapshot`] after a reconnect: the command link may come back a
/// moment after the bus link (Redis restarting), so failures are retried
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
async fn subscribe_all(
    conn: &mut MultiplexedConnection,
    channels: &[String],
) -> redis::RedisResult<()> {
    for chunk in channels.chunks(SUBSCRIBE_BATCH) {
        call(conn.subscribe(chunk)).await?;
    }
    Ok(())
}

/// Brings the subscriptions of the rechecked channels in line with local
/// membership, then releases the joins waiting on them.
async fn reconcile(
    node: &Node,
    conn: &mut MultiplexedConnection,
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
        subscribe_all(conn, &add).await?;
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
        call(conn.unsubscribe(&remove)).await?;
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
