//! Cluster mode over Redis (README "Cluster"): many gateway processes behave
//! as one.
//!
//! Owns: this process's [`Node`] (its id, its Redis links, the channels it is
//! subscribed to and its heartbeat) and [`ClusterBroker`], the [`Broker`]
//! every tenant gets in `cluster.mode: redis`. Input: local broker operations
//! (publish, send-to-user, disconnect, joins and leaves) and bus messages
//! from Redis; output: the same operations applied on every node. Must not:
//! make a client wait on Redis for unrecorded traffic (local delivery happens
//! first, the bus publish is queued), or stop local service when Redis is
//! down.
//!
//! Channels are named per room and per user, each with a `{hash tag}` over
//! tenant and name, under `cluster.prefix`:
//! `<prefix>:room:{<tenant>:<room>}` and `<prefix>:user:{<tenant>:<user>}`.
//! A node subscribes to a room channel while the room has local members and
//! to a user channel while the user has local sessions, so each node receives
//! a publication once however many local members it has.
//!
//! Room history (tenants with `rooms.history_size`) is one sequence per room
//! in Redis, whichever node publishes: a script assigns the offset (a
//! counter in `<prefix>:history-meta:{…}` beside the room's epoch), appends
//! the frame to the stream `<prefix>:history:{…}` (trimmed to
//! `history_size`, expiring after `history_ttl_ms`) and publishes it, all in
//! one command. Every node delivers recorded frames as they come from Redis,
//! the publisher too, so members everywhere see offsets in one order; each
//! node mirrors the stream of its subscribed rooms for recovery. When Redis
//! is unreachable a node records under an epoch of its own (clients that
//! recover elsewhere start over); when it is back, rooms are synced from the
//! stream: missed frames are delivered, or members get `sys.resync`.
//!
//! [`Broker`]: crate::realtime::broker::Broker

mod broker;
mod endpoint;
mod kv;
mod link;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use broker::ClusterBroker;
pub use kv::RedisKv;

use crate::config::ClusterConfig;
use crate::error::CloseCode;
use crate::error::RoomError;
use crate::obs::metrics::Metrics;
use crate::protocol::ext::{Outgoing as ExtFrame, member_event, raw, sys_kicked};
use crate::realtime::SessionId;
use crate::realtime::broker::{
    BoxFuture, Broker as _, LocalBroker, RegisterError, RoomLimits, SessionLimits, TenantStats,
};
use crate::realtime::history::{HistoryPolicy, Retained, Synced};
use crate::realtime::outbox::Qos;
use broker::{RemoteMember, Shard};
use wire::{BusMessage, RecordedTemplate};

/// Publications queued for Redis before new ones are dropped (counted as
/// errors): a node cut off from Redis must not grow without bound.
const PUBLISH_QUEUE: usize = 65_536;

/// Why the cluster link cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis_url` is not usable.
    #[error("gateway.cluster.redis_url: {0}")]
    Url(String),
    /// A metric family could not be registered.
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The kind of a bus channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topic {
    /// Members of a room.
    Room,
    /// Sessions of a user.
    User,
}

impl Topic {
    fn label(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::User => "user",
        }
    }
}

/// The cluster's metric families (README "Metrics").
#[derive(Debug, Clone)]
pub(crate) struct ClusterMetrics {
    /// 1 while both Redis links work.
    pub up: IntGauge,
    /// Bus messages handed to Redis.
    pub published: IntCounter,
    /// Bus messages received from other nodes.
    pub received: IntCounter,
    /// Failures by operation.
    pub errors: IntCounterVec,
    /// Re-established Redis links by link (`sentinel`: moves to a master
    /// the Sentinels named).
    pub reconnects: IntCounterVec,
    /// Heartbeat round trip to Redis.
    pub rtt: Histogram,
    /// Live nodes in the last heartbeat.
    pub nodes: IntGauge,
}

impl ClusterMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let up = IntGauge::new(
            "wsprism_cluster_up",
            "1 while this node's Redis links (commands and bus) work.",
        )?;
        let published = IntCounter::new(
            "wsprism_cluster_bus_published_total",
            "Bus messages this node published to Redis.",
        )?;
        let received = IntCounter::new(
            "wsprism_cluster_bus_received_total",
            "Bus messages this node received from other nodes.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "wsprism_cluster_bus_errors_total",
                "Cluster bus failures, by operation.",
            ),
            &["op"],
        )?;
        let reconnects = IntCounterVec::new(
            Opts::new(
                "wsprism_cluster_reconnects_total",
                "Redis links re-established after a loss, by link (sentinel: moved to the master the Sentinels name).",
            ),
            &["link"],
        )?;
        let rtt = Histogram::with_opts(
            HistogramOpts::new(
                "wsprism_cluster_redis_rtt_seconds",
                "Round trip of this node's heartbeat to Redis.",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0,
            ]),
        )?;
        let nodes = IntGauge::new(
            "wsprism_cluster_nodes",
            "Live gateway nodes seen in the last heartbeat.",
        )?;
        metrics.register(Box::new(up.clone()))?;
        metrics.register(Box::new(published.clone()))?;
        metrics.register(Box::new(received.clone()))?;
        metrics.register(Box::new(errors.clone()))?;
        metrics.register(Box::new(reconnects.clone()))?;
        metrics.register(Box::new(rtt.clone()))?;
        metrics.register(Box::new(nodes.clone()))?;
        Ok(Self {
            up,
            published,
            received,
            errors,
            reconnects,
            rtt,
            nodes,
        })
    }

    fn error(&self, op: &str, n: u64) {
        self.errors.with_label_values(&[op]).inc_by(n);
    }
}

/// One queued item for the publisher.
#[derive(Debug)]
enum Outgoing {
    /// A bus message for `channel`.
    Publish {
        /// The channel.
        channel: String,
        /// The encoded [`BusMessage`].
        payload: Vec<u8>,
    },
    /// A state write (presence) sent in the same pipeline.
    Command(redis::Cmd),
    /// A publication to record in a room's history and publish (one
    /// script call).
    Recorded(Box<Recorded>),
}

/// A reliable room publication waiting for its offset from Redis.
#[derive(Debug)]
struct Recorded {
    tenant: Arc<str>,
    room: String,
    channel: String,
    template: RecordedTemplate,
    exclude: Option<SessionId>,
    policy: HistoryPolicy,
}

/// A request to the subscriber: re-evaluate whether `channel` is wanted,
/// and say so on `done` once it is subscribed (and its presence known).
#[derive(Debug)]
struct Recheck {
    channel: String,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// This process as a member of the cluster.
#[derive(Debug)]
pub struct Node {
    id: String,
    /// Process nonce carried in bus messages so a node skips its own.
    nonce: u64,
    prefix: String,
    ttl: Duration,
    /// The Redis server (standalone, or the master Sentinels name).
    endpoint: endpoint::Endpoint,
    publish_tx: mpsc::Sender<Outgoing>,
    recheck_tx: mpsc::UnboundedSender<Recheck>,
    /// The bus connection while the bus link is up (see [`link`]): the
    /// publisher's pipelines share it with the subscriptions.
    bus: watch::Sender<Option<MultiplexedConnection>>,
    /// Channels the bus link is subscribed to now.
    subscribed: DashMap<String, ()>,
    /// Room channels a join waits on before it is applied, by waiting joins.
    pending: DashMap<String, usize>,
    /// Tenant id → what the node reaches of it, for bus deliveries.
    tenants: DashMap<Arc<str>, Weak<Shard>>,
    /// This node's slot (1..=1023) once claimed, else 0: the high bits of
    /// the peer numbers it assigns.
    slot: Arc<AtomicU32>,
    commands_up: AtomicBool,
    /// The admission script (hashed once).
    reserve: redis::Script,
    metrics: ClusterMetrics,
}

impl Node {
    /// Joins the cluster described by `cfg`: starts the publisher, the
    /// subscriber and the heartbeat under `tasks`, all stopping with
    /// `shutdown`. Redis need not be up: the links connect (and reconnect)
    /// in the background while local service goes on.
    ///
    /// # Errors
    /// An unusable URL, or metric families already registered.
    pub fn start(
        cfg: &ClusterConfig,
        metrics: &Metrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Arc<Self>, ClusterError> {
        let endpoint = endpoint::Endpoint::new(cfg)?;
        let id = if cfg.node_id.is_empty() {
            format!("node-{:08x}", rand::random::<u32>())
        } else {
            cfg.node_id.clone()
        };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (recheck_tx, recheck_rx) = mpsc::unbounded_channel();
        let node = Arc::new(Self {
            id,
            nonce: rand::random(),
            prefix: cfg.prefix.clone(),
            ttl: Duration::from_millis(cfg.node_ttl_ms),
            endpoint,
            publish_tx,
            recheck_tx,
            bus: watch::channel(None).0,
            subscribed: DashMap::new(),
            pending: DashMap::new(),
            tenants: DashMap::new(),
            slot: Arc::new(AtomicU32::new(0)),
            commands_up: AtomicBool::new(false),
            reserve: redis::Script::new(RESERVE_SESSION),
            metrics: ClusterMetrics::register(metrics)?,
        });
        tracing::info!(
            node = %node.id,
            prefix = %node.prefix,
            sentinel = node.endpoint.is_sentinel(),
            "cluster node starting (redis)"
        );
        tasks.spawn(link::publisher(
            Arc::clone(&node),
            publish_rx,
            shutdown.clone(),
        ));
        tasks.spawn(link::subscriber(
            Arc::clone(&node),
            recheck_rx,
            shutdown.clone(),
        ));
        tasks.spawn(link::heartbeat(Arc::clone(&node), shutdown));
        Ok(node)
    }

    /// This node's id (`cluster.node_id`, or random per process).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether both Redis links work (`wsprism_cluster_up`).
    pub fn is_up(&self) -> bool {
        self.commands_up.load(Ordering::Acquire) && self.bus_up()
    }

    /// Behind Sentinel, after a link failed: asks which server is the
    /// master now and moves every link there if it changed (nothing for a
    /// standalone server).
    async fn relocate(&self) {
        match self.endpoint.resolve().await {
            Ok(Some(addr)) => {
                self.metrics
                    .reconnects
                    .with_label_values(&["sentinel"])
                    .inc();
                tracing::info!(node = %self.id, master = %addr, "cluster Redis master found (Sentinel)");
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.error("sentinel", 1);
                tracing::debug!(node = %self.id, error = %e, "cluster Sentinel lookup failed");
            }
        }
    }

    /// This node's slot in peer numbers (0 until Redis first answered).
    pub fn slot(&self) -> u32 {
        self.slot.load(Ordering::Acquire)
    }

    /// Sessions, users and rooms of `tenant` on every live node, as their
    /// last heartbeats reported them (this node's counts are read now):
    /// each node's counts by node id. A user (or room) present on two nodes
    /// counts once on each.
    ///
    /// # Errors
    /// Redis cannot be read.
    pub async fn tenant_stats(
        &self,
        tenant: &str,
    ) -> redis::RedisResult<Vec<(String, TenantStats)>> {
        let mut conn = self.endpoint.commands()?;
        let oldest_live = link::now_ms().saturating_sub(self.ttl_ms());
        let ids: Vec<String> = link::call(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.nodes_key())
                .arg(oldest_live)
                .arg("+inf")
                .query_async(&mut conn),
        )
        .await?;
        let others: Vec<&String> = ids.iter().filter(|id| **id != self.id).collect();
        let records: Vec<Option<String>> = if others.is_empty() {
            Vec::new()
        } else {
            let keys: Vec<String> = others.iter().map(|id| self.node_key(id)).collect();
            link::call(redis::cmd("MGET").arg(keys).query_async(&mut conn)).await?
        };
        let mut out = vec![(
            self.id.clone(),
            self.shard(tenant)
                .map(|s| s.local.stats())
                .unwrap_or_default(),
        )];
        for (id, record) in others.into_iter().zip(records) {
            let stats = record
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| {
                    serde_json::from_value::<TenantStats>(v["tenants"][tenant].clone()).ok()
                })
                .unwrap_or_default();
            out.push((id.clone(), stats));
        }
        Ok(out)
    }

    /// Every tenant's counts on this node, for the heartbeat record.
    fn local_stats(&self) -> serde_json::Map<String, serde_json::Value> {
        self.shards()
            .iter()
            .map(|s| {
                (
                    s.tenant.to_string(),
                    serde_json::to_value(s.local.stats()).unwrap_or_default(),
                )
            })
            .collect()
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a tenant's shard for bus deliveries.
    fn attach(&self, shard: &Arc<Shard>) {
        self.tenants
            .insert(Arc::clone(&shard.tenant), Arc::downgrade(shard));
    }

    fn shard(&self, tenant: &str) -> Option<Arc<Shard>> {
        self.tenants.get(tenant).and_then(|s| s.upgrade())
    }

    fn shards(&self) -> Vec<Arc<Shard>> {
        self.tenants
            .iter()
            .filter_map(|s| s.value().upgrade())
            .collect()
    }

    /// The bus channel of `name` (a room or user) in `tenant`.
    fn channel(&self, topic: Topic, tenant: &str, name: &str) -> String {
        format!("{}:{}:{{{tenant}:{name}}}", self.prefix, topic.label())
    }

    /// The inverse of [`Node::channel`]: topic, tenant and name. Tenant ids
    /// contain no `:` (config validation), so the first one after the tag's
    /// `{` ends the tenant whatever the name holds.
    fn parse_channel<'a>(&self, channel: &'a str) -> Option<(Topic, &'a str, &'a str)> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?;
        let (topic, rest) = if let Some(r) = rest.strip_prefix("room:{") {
            (Topic::Room, r)
        } else {
            (Topic::User, rest.strip_prefix("user:{")?)
        };
        let inner = rest.strip_suffix('}')?;
        let (tenant, name) = inner.split_once(':')?;
        Some((topic, tenant, name))
    }

    /// Key of a node's heartbeat record.
    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{{{id}}}", self.prefix)
    }

    /// Key of the node registry (a sorted set: node id by last heartbeat).
    /// The slot table shares its hash tag, so one script reads both.
    fn nodes_key(&self) -> String {
        format!("{}:{{nodes}}", self.prefix)
    }

    /// Key of the slot table (a hash: slot → node id).
    fn slots_key(&self) -> String {
        format!("{}:{{nodes}}:slots", self.prefix)
    }

    /// Key of a room's presence (a hash: peer → `node<TAB>user`); it shares
    /// the room channel's hash tag.
    fn presence_key(&self, tenant: &str, room: &str) -> String {
        format!("{}:presence:{{{tenant}:{room}}}", self.prefix)
    }

    /// Key of a room's history stream (entry id `<offset>-1`, fields `t`:
    /// published at (ms), `p`: the bus payload); it shares the room
    /// channel's hash tag.
    fn history_key(&self, tenant: &str, room: &str) -> String {
        format!("{}:history:{{{tenant}:{room}}}", self.prefix)
    }

    /// Key of a room's history position (a hash: `epoch`, `offset`).
    fn history_meta_key(&self, tenant: &str, room: &str) -> String {
        format!("{}:history-meta:{{{tenant}:{room}}}", self.prefix)
    }

    /// The script call that records `r` and publishes it.
    fn record_cmd(&self, r: &Recorded) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        let ttl_ms = u64::try_from(r.policy.ttl.as_millis()).unwrap_or(u64::MAX);
        cmd.arg(RECORD)
            .arg(2)
            .arg(self.history_meta_key(&r.tenant, &r.room))
            .arg(self.history_key(&r.tenant, &r.room))
            .arg(&r.channel)
            .arg(&r.template.head)
            .arg(&r.template.middle)
            .arg(&r.template.tail)
            .arg(fresh_epoch())
            .arg(r.policy.size)
            .arg(ttl_ms.max(1))
            .arg(link::now_ms())
            .arg(ttl_ms.saturating_add(META_GRACE_MS));
        cmd
    }

    /// Records `r` on this node alone (Redis unreachable): an epoch of the
    /// node's own, local delivery at once.
    fn record_locally(&self, r: &Recorded) {
        if let Some(shard) = self.shard(&r.tenant) {
            shard
                .local
                .publish_diverged(&r.room, r.policy, r.exclude, &|offset, epoch| {
                    r.template.frame(offset, epoch)
                });
        }
    }

    /// Key of the presence hashes a node wrote to (a set), for clean-up
    /// after it dies.
    fn node_rooms_key(&self, id: &str) -> String {
        format!("{}:node-rooms:{{{id}}}", self.prefix)
    }

    /// Key of a user's sessions on every node (a sorted set: `<node>/<sid>`
    /// by admission time); it shares the user channel's hash tag.
    fn sessions_key(&self, tenant: &str, user: &str) -> String {
        format!("{}:sessions:{{{tenant}:{user}}}", self.prefix)
    }

    /// Key of the tenant's sessions on every node (a sorted set:
    /// `<node>/<sid>` by admission time), kept while `max_sessions_total`
    /// is set.
    fn tenant_sessions_key(&self, tenant: &str) -> String {
        format!("{}:tenant-sessions:{{{tenant}}}", self.prefix)
    }

    /// Key of the tenant's room table (a hash: room → members on every
    /// node), for `max_rooms_total`. The seat sets share its hash tag, so one
    /// script reads both.
    fn rooms_key(&self, tenant: &str) -> String {
        format!("{}:rooms:{{{tenant}}}", self.prefix)
    }

    /// Key of a room's seats (a sorted set: `<node>/<sid>` by join time),
    /// for `max_users_per_room`.
    fn seats_key(&self, tenant: &str, room: &str) -> String {
        format!("{}:seats:{{{tenant}}}:{room}", self.prefix)
    }

    /// Key of the seat sets a node wrote to (a set), for clean-up.
    fn node_seats_key(&self, id: &str) -> String {
        format!("{}:node-seats:{{{id}}}", self.prefix)
    }

    /// Key of the session sets a node wrote to (a set), for clean-up.
    fn node_users_key(&self, id: &str) -> String {
        format!("{}:node-users:{{{id}}}", self.prefix)
    }

    /// A local session as a member of its user's session set.
    fn session_member(&self, sid: SessionId) -> String {
        format!("{}/{}", self.id, sid.get())
    }

    /// The local session a member names, if it is on this node.
    fn local_sid(&self, member: &str) -> Option<SessionId> {
        let (node, sid) = member.rsplit_once('/')?;
        (node == self.id).then(|| sid.parse().ok().map(SessionId::new))?
    }

    /// Admits a session of `user` against the cluster-wide caps: the
    /// tenant's `max_sessions_total` (when set) and the per-user cap, each
    /// one script, atomic across nodes; returns the members to kick.
    async fn reserve(
        &self,
        tenant: &str,
        user: &str,
        sid: SessionId,
        limits: SessionLimits,
    ) -> redis::RedisResult<Result<Vec<String>, RegisterError>> {
        let member = self.session_member(sid);
        let mut conn = self.endpoint.commands()?;
        let total = limits.max_sessions_total;
        let tenant_key = self.tenant_sessions_key(tenant);
        // 2: over the tenant cap, admitted only if the user's cap kicks one
        // of its sessions (which frees a slot, as in local mode).
        let mut over = false;
        if total > 0 {
            let taken: u8 = link::call(
                redis::cmd("EVAL")
                    .arg(TAKE_TENANT_SLOT)
                    .arg(1)
                    .arg(&tenant_key)
                    .arg(&member)
                    .arg(total)
                    .arg(u8::from(limits.kick_oldest))
                    .arg(link::now_ms())
                    .query_async(&mut conn),
            )
            .await?;
            match taken {
                0 => return Ok(Err(RegisterError::TenantFull)),
                2 => over = true,
                _ => {}
            }
            self.index(self.node_users_key(&self.id), &tenant_key);
        }
        let key = self.sessions_key(tenant, user);
        let reply = link::call(
            self.reserve
                .key(&key)
                .arg(&member)
                .arg(limits.max_sessions_per_user.max(1))
                .arg(u8::from(limits.kick_oldest))
                .arg(link::now_ms())
                .invoke_async::<Option<Vec<String>>>(&mut conn),
        )
        .await;
        let verdict = match reply {
            Ok(None) => Err(RegisterError::UserLimit),
            Ok(Some(kicked)) if over && kicked.is_empty() => {
                // Nothing freed: the tenant slot taken above goes back.
                let mut rem = redis::cmd("ZREM");
                rem.arg(&key).arg(&member);
                self.queue(Outgoing::Command(rem));
                Err(RegisterError::TenantFull)
            }
            Ok(Some(kicked)) => Ok(kicked),
            Err(e) => {
                if total > 0 {
                    self.release_tenant_slot(tenant, sid);
                }
                return Err(e);
            }
        };
        if verdict.is_err() && total > 0 {
            self.release_tenant_slot(tenant, sid);
        }
        self.index(self.node_users_key(&self.id), &key);
        Ok(verdict)
    }

    /// Queues the removal of a closed (or refused) local session from its
    /// user's session set and the tenant's.
    fn release_session(&self, tenant: &str, user: &str, sid: SessionId) {
        let mut rem = redis::cmd("ZREM");
        rem.arg(self.sessions_key(tenant, user))
            .arg(self.session_member(sid));
        self.queue(Outgoing::Command(rem));
        self.release_tenant_slot(tenant, sid);
    }

    fn release_tenant_slot(&self, tenant: &str, sid: SessionId) {
        let mut rem = redis::cmd("ZREM");
        rem.arg(self.tenant_sessions_key(tenant))
            .arg(self.session_member(sid));
        self.queue(Outgoing::Command(rem));
    }

    /// Takes `sid`'s seat in `room` against the cluster-wide room caps
    /// (one script over the tenant's room table and the room's seats).
    async fn take_seat(
        &self,
        tenant: &str,
        room: &str,
        sid: SessionId,
        limits: RoomLimits,
    ) -> redis::RedisResult<Result<(), RoomError>> {
        let mut conn = self.endpoint.commands()?;
        let taken: i8 = link::call(
            self.seat_cmd(tenant, room, sid, limits)
                .query_async(&mut conn),
        )
        .await?;
        self.index(self.node_seats_key(&self.id), &self.seats_key(tenant, room));
        Ok(match taken {
            1 => Ok(()),
            0 => Err(RoomError::RoomFull),
            _ => Err(RoomError::RoomLimit),
        })
    }

    fn seat_cmd(&self, tenant: &str, room: &str, sid: SessionId, limits: RoomLimits) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(TAKE_SEAT)
            .arg(2)
            .arg(self.rooms_key(tenant))
            .arg(self.seats_key(tenant, room))
            .arg(self.session_member(sid))
            .arg(room)
            .arg(limits.max_users_per_room)
            .arg(limits.max_rooms_total)
            .arg(link::now_ms());
        cmd
    }

    /// Queues a seat with no cap check (the member joined without waiting:
    /// no room cap was set, or Redis was away), so the counts stay true.
    fn record_seat(&self, tenant: &str, room: &str, sid: SessionId) {
        self.queue(Outgoing::Command(self.seat_cmd(
            tenant,
            room,
            sid,
            RoomLimits::default(),
        )));
        self.index(self.node_seats_key(&self.id), &self.seats_key(tenant, room));
    }

    /// Queues the release of a seat.
    fn release_seat(&self, tenant: &str, room: &str, member: &str) {
        self.queue(Outgoing::Command(self.unseat_cmd(tenant, room, member)));
    }

    fn unseat_cmd(&self, tenant: &str, room: &str, member: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE_SEAT)
            .arg(2)
            .arg(self.rooms_key(tenant))
            .arg(self.seats_key(tenant, room))
            .arg(member)
            .arg(room);
        cmd
    }

    /// Releases every seat that `gone` picks among those the seat sets in
    /// `index` (a node's `node-seats` set) hold.
    async fn release_seats(
        &self,
        index: &str,
        gone: impl Fn(&str, &str, &str) -> bool,
    ) -> redis::RedisResult<()> {
        let mut conn = self.endpoint.commands()?;
        let keys: Vec<String> =
            link::call(redis::Cmd::smembers(index).query_async(&mut conn)).await?;
        let head = format!("{}:seats:{{", self.prefix);
        for key in keys {
            let Some((tenant, room)) = key.strip_prefix(&head).and_then(|r| r.split_once("}:"))
            else {
                continue;
            };
            let members: Vec<String> =
                link::call(redis::Cmd::zrange(&key, 0, -1).query_async(&mut conn)).await?;
            let mut pipe = redis::pipe();
            let mut any = false;
            for m in members.iter().filter(|m| gone(tenant, room, m)) {
                pipe.add_command(self.unseat_cmd(tenant, room, m)).ignore();
                any = true;
            }
            if any {
                link::call(pipe.query_async::<()>(&mut conn)).await?;
            }
        }
        Ok(())
    }

    /// Makes the seat sets agree with this node's rooms (after Redis was
    /// away): seats of members that left meanwhile go, every local member
    /// has one.
    async fn reconcile_seats(&self) -> redis::RedisResult<()> {
        let index = self.node_seats_key(&self.id);
        let mut live = std::collections::HashSet::new();
        for shard in self.shards() {
            for room in shard.local.room_names() {
                for s in shard.local.room_sessions(&room) {
                    live.insert((
                        shard.tenant.to_string(),
                        room.to_string(),
                        self.session_member(s),
                    ));
                }
            }
        }
        self.release_seats(&index, |tenant, room, m| {
            self.local_sid(m).is_some()
                && !live.contains(&(tenant.to_owned(), room.to_owned(), m.to_owned()))
        })
        .await?;
        for shard in self.shards() {
            for room in shard.local.room_names() {
                for sid in shard.local.room_sessions(&room) {
                    self.record_seat(&shard.tenant, &room, sid);
                }
            }
        }
        Ok(())
    }

    /// Closes the local sessions among `members` as replaced (4001).
    fn kick_local(&self, shard: &Shard, members: &[String]) {
        let notice = sys_kicked();
        for m in members {
            if let Some(s) = self.local_sid(m).and_then(|sid| shard.local.session(sid)) {
                s.outbox.push(notice.clone(), Qos::Reliable);
                s.outbox.close(CloseCode::Replaced, "replaced", true);
            }
        }
    }

    /// Makes the session sets agree with this node's live sessions (after
    /// Redis was away): its members of sessions that closed meanwhile go,
    /// every live session is (re)added.
    async fn reconcile_sessions(&self) -> redis::RedisResult<()> {
        let index = self.node_users_key(&self.id);
        let live: std::collections::HashSet<String> = self
            .shards()
            .iter()
            .flat_map(|s| s.local.sessions())
            .map(|s| self.session_member(s.sid))
            .collect();
        self.remove_session_members(&index, |m| self.local_sid(m).is_some() && !live.contains(m))
            .await?;
        let mut conn = self.endpoint.commands()?;
        let mut pipe = redis::pipe();
        let now = link::now_ms();
        for shard in self.shards() {
            let counted = shard.sessions_cap.load(Ordering::Acquire) > 0;
            let tenant_key = self.tenant_sessions_key(&shard.tenant);
            for s in shard.local.sessions() {
                let key = self.sessions_key(&shard.tenant, &s.user);
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg("NX")
                    .arg(now)
                    .arg(self.session_member(s.sid))
                    .ignore();
                pipe.cmd("SADD").arg(&index).arg(&key).ignore();
                if counted {
                    pipe.cmd("ZADD")
                        .arg(&tenant_key)
                        .arg("NX")
                        .arg(now)
                        .arg(self.session_member(s.sid))
                        .ignore();
                    pipe.cmd("SADD").arg(&index).arg(&tenant_key).ignore();
                }
            }
        }
        link::call(pipe.query_async::<()>(&mut conn)).await
    }

    /// Removes the members `gone` picks from every session set that `index`
    /// (a node's `node-users` set) names.
    async fn remove_session_members(
        &self,
        index: &str,
        gone: impl Fn(&str) -> bool,
    ) -> redis::RedisResult<()> {
        let mut conn = self.endpoint.commands()?;
        let keys: Vec<String> =
            link::call(redis::Cmd::smembers(index).query_async(&mut conn)).await?;
        for key in keys {
            let members: Vec<String> =
                link::call(redis::Cmd::zrange(&key, 0, -1).query_async(&mut conn)).await?;
            let picked: Vec<&String> = members.iter().filter(|m| gone(m)).collect();
            if !picked.is_empty() {
                link::call(redis::Cmd::zrem(&key, picked).query_async::<()>(&mut conn)).await?;
            }
        }
        Ok(())
    }

    /// Queues `msg` for every other node subscribed to `channel`; never
    /// waits. A full queue (Redis unreachable for long) drops it.
    fn publish(&self, channel: String, msg: &BusMessage) {
        let payload = msg.encode(self.nonce);
        self.queue(Outgoing::Publish { channel, payload });
    }

    fn queue(&self, item: Outgoing) {
        if self.publish_tx.try_send(item).is_err() {
            self.metrics.error("publish", 1);
        }
    }

    /// Queues the addition of `key` to this node's index `set` (the keys it
    /// wrote to, cleaned up by whoever buries it).
    fn index(&self, set: String, key: &str) {
        let mut add = redis::cmd("SADD");
        add.arg(set).arg(key);
        self.queue(Outgoing::Command(add));
    }

    /// Queues a recorded publication; gives it back when the queue is full.
    fn queue_recorded(&self, r: Recorded) -> Result<(), Box<Recorded>> {
        match self.publish_tx.try_send(Outgoing::Recorded(Box::new(r))) {
            Ok(()) => Ok(()),
            Err(e) => match e.into_inner() {
                Outgoing::Recorded(r) => Err(r),
                _ => unreachable!("the item sent is the one returned"),
            },
        }
    }

    /// Queues the presence record of a local member.
    fn record_member(&self, tenant: &str, room: &str, peer: u32, user: &str) {
        let key = self.presence_key(tenant, room);
        let mut set = redis::cmd("HSET");
        set.arg(&key).arg(peer).arg(format!("{}\t{user}", self.id));
        self.queue(Outgoing::Command(set));
        self.index(self.node_rooms_key(&self.id), &key);
    }

    /// Queues the removal of a local member's presence record.
    fn forget_member(&self, tenant: &str, room: &str, peer: u32) {
        let mut del = redis::cmd("HDEL");
        del.arg(self.presence_key(tenant, room)).arg(peer);
        self.queue(Outgoing::Command(del));
    }

    /// Re-writes the presence of every local member (after Redis came back,
    /// possibly empty).
    fn reassert_presence(&self) {
        for shard in self.shards() {
            for room in shard.local.room_names() {
                for (peer, user) in shard.local.members(&room) {
                    self.record_member(&shard.tenant, &room, peer, &user);
                }
            }
        }
    }

    /// Asks the subscriber to (un)subscribe `channel` to match local state.
    fn recheck(&self, channel: String) {
        let _ = self.recheck_tx.send(Recheck {
            channel,
            done: None,
        });
    }

    /// Resolves once `channel` is subscribed and its presence snapshot
    /// applied, so a join that waits on it misses no publication and counts
    /// every member; `None` when it already is, or while the bus link is
    /// down (the join then proceeds locally). Waits at most a second.
    fn subscribe_now(self: &Arc<Self>, channel: String) -> Option<BoxFuture> {
        if !self.bus_up() || self.subscribed.contains_key(&channel) {
            return None;
        }
        *self.pending.entry(channel.clone()).or_default() += 1;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.recheck_tx.send(Recheck {
            channel: channel.clone(),
            done: Some(tx),
        });
        let node = Arc::clone(self);
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
            node.pending.remove_if_mut(&channel, |_, n| {
                *n -= 1;
                *n == 0
            });
        }))
    }

    /// Whether `channel` has local recipients now.
    fn wanted(&self, channel: &str) -> bool {
        let Some((topic, tenant, name)) = self.parse_channel(channel) else {
            return false;
        };
        let Some(shard) = self.shard(tenant) else {
            return false;
        };
        match topic {
            Topic::Room => shard.local.room_size(name) > 0 || self.pending.contains_key(channel),
            Topic::User => shard.local.user_sessions(name) > 0,
        }
    }

    /// Every channel with local recipients now (after a reconnect).
    fn wanted_channels(&self) -> Vec<String> {
        let mut out = Vec::new();
        for shard in self.shards() {
            for room in shard.local.room_names() {
                out.push(self.channel(Topic::Room, &shard.tenant, &room));
            }
            for user in shard.local.user_names() {
                out.push(self.channel(Topic::User, &shard.tenant, &user));
            }
        }
        out
    }

    /// Forgets the other nodes' members of a room channel no longer
    /// subscribed.
    fn unsubscribed(&self, channel: &str) {
        if let Some((Topic::Room, tenant, room)) = self.parse_channel(channel)
            && let Some(shard) = self.shard(tenant)
        {
            shard.remote.forget(room);
        }
    }

    /// Seeds the replica of each room channel in `channels` from its
    /// presence hash, and syncs the history mirror of rooms that keep one
    /// (right after subscribing, so later announcements and publications
    /// apply on top). Returns the rooms whose history was synced: their
    /// members got what they missed, or `sys.resync`.
    async fn snapshot(
        &self,
        channels: &[String],
    ) -> redis::RedisResult<std::collections::HashSet<String>> {
        let mut synced = std::collections::HashSet::new();
        let rooms: Vec<(Arc<Shard>, &str)> = channels
            .iter()
            .filter_map(|c| match self.parse_channel(c) {
                Some((Topic::Room, tenant, room)) => Some((self.shard(tenant)?, room)),
                _ => None,
            })
            .collect();
        for chunk in rooms.chunks(link::SUBSCRIBE_BATCH) {
            let mut pipe = redis::pipe();
            let mut histories = Vec::new();
            for (shard, room) in chunk {
                pipe.cmd("HGETALL")
                    .arg(self.presence_key(&shard.tenant, room));
            }
            for (shard, room) in chunk {
                if let Some(policy) = *shard.history.lock() {
                    let ttl_ms = u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX);
                    pipe.cmd("EVAL")
                        .arg(HISTORY)
                        .arg(2)
                        .arg(self.history_meta_key(&shard.tenant, room))
                        .arg(self.history_key(&shard.tenant, room))
                        .arg(fresh_epoch())
                        .arg(ttl_ms.saturating_add(META_GRACE_MS));
                    histories.push((shard, *room, policy));
                }
            }
            let mut conn = self.endpoint.commands()?;
            let mut replies: Vec<redis::Value> = link::call(pipe.query_async(&mut conn)).await?;
            let history_replies = replies.split_off(chunk.len());
            for ((shard, room, policy), reply) in histories.into_iter().zip(history_replies) {
                let Some((epoch, last, entries)) = history_reply(reply) else {
                    self.metrics.error("snapshot", 1);
                    continue;
                };
                let outcome = shard
                    .local
                    .sync_history(room, (&epoch, last), entries, policy);
                if outcome == Synced::Reset && shard.local.room_size(room) > 0 {
                    resync(&shard.local, room);
                }
                synced.insert(self.channel(Topic::Room, &shard.tenant, room));
            }
            let replies: Vec<HashMap<u32, String>> = replies
                .into_iter()
                .map(|v| redis::from_redis_value(v).unwrap_or_default())
                .collect();
            for ((shard, room), members) in chunk.iter().zip(replies) {
                let members = members
                    .into_iter()
                    .filter_map(|(peer, v)| {
                        let (node, user) = v.split_once('\t')?;
                        (node != self.id).then(|| {
                            (
                                peer,
                                RemoteMember {
                                    user: Arc::from(user),
                                    node: Arc::from(node),
                                },
                            )
                        })
                    })
                    .collect();
                shard.remote.replace(room, members);
            }
        }
        Ok(synced)
    }

    /// A peer node stopped heartbeating: its members leave every room here
    /// (with `member_left` where the tenant announces it), and its presence
    /// records go. Any live node may run this; it is idempotent.
    async fn bury(&self, dead: &str) -> redis::RedisResult<()> {
        for shard in self.shards() {
            let announce = shard.presence_events.load(Ordering::Acquire);
            for (room, peer, user) in shard.remote.purge_node(dead) {
                if announce {
                    let msg = member_event("member_left", &room, &user, peer);
                    shard.local.publish(&room, &msg, Qos::Reliable, None);
                }
            }
        }
        let mut conn = self.endpoint.commands()?;
        let index = self.node_rooms_key(dead);
        let keys: Vec<String> =
            link::call(redis::Cmd::smembers(&index).query_async(&mut conn)).await?;
        let prefix = format!("{dead}\t");
        for key in keys {
            let entries: HashMap<String, String> =
                link::call(redis::Cmd::hgetall(&key).query_async(&mut conn)).await?;
            let fields: Vec<&String> = entries
                .iter()
                .filter(|(_, v)| v.starts_with(&prefix))
                .map(|(f, _)| f)
                .collect();
            if !fields.is_empty() {
                link::call(redis::Cmd::hdel(&key, fields).query_async::<()>(&mut conn)).await?;
            }
        }
        let users = self.node_users_key(dead);
        let prefix = format!("{dead}/");
        self.remove_session_members(&users, |m| m.starts_with(&prefix))
            .await?;
        let seats = self.node_seats_key(dead);
        self.release_seats(&seats, |_, _, m| m.starts_with(&prefix))
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&index).arg(&users).arg(&seats).ignore();
        link::call(pipe.query_async::<()>(&mut conn)).await?;
        tracing::warn!(node = %self.id, dead, "cluster node silent past node_ttl_ms; its sessions left presence");
        Ok(())
    }

    fn set_commands_up(&self, up: bool) {
        self.commands_up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(self.is_up()));
    }

    /// Hands the publisher the bus connection (`None`: the bus link is down).
    fn set_bus(&self, conn: Option<MultiplexedConnection>) {
        self.bus.send_replace(conn);
        self.metrics.up.set(i64::from(self.is_up()));
    }

    /// Whether the bus link is up (its connection is in [`Node::bus`]).
    fn bus_up(&self) -> bool {
        self.bus.borrow().is_some()
    }

    /// Delivers one message read from `channel` to local sessions.
    fn deliver(&self, channel: &str, payload: bytes::Bytes) {
        let (origin, msg) = match BusMessage::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.error("decode", 1);
                tracing::warn!(node = %self.id, channel, error = %e, "bus message refused");
                return;
            }
        };
        let own = origin == self.nonce;
        if own && !matches!(msg, BusMessage::Recorded { .. }) {
            return;
        }
        if !own {
            self.metrics.received.inc();
        }
        let Some((topic, tenant, name)) = self.parse_channel(channel) else {
            return;
        };
        let Some(shard) = self.shard(tenant) else {
            return;
        };
        let local = &shard.local;
        match (topic, msg) {
            (Topic::Room, BusMessage::Room { qos, frame }) => {
                local.publish(name, &frame, qos, None);
            }
            (Topic::User, BusMessage::User { qos, frame }) => {
                local.send_to_user(name, &frame, qos);
            }
            (Topic::User, BusMessage::Disconnect { code, notice }) => {
                local.disconnect_user(name, notice.as_ref(), code);
            }
            (Topic::Room, BusMessage::Recorded { exclude, frame }) => {
                // Session ids are per node: only the publisher's exclusion
                // means anything here.
                let exclude = (own && exclude != 0).then(|| SessionId::new(exclude));
                let policy = *shard.history.lock();
                match (wire::recorded_position(&frame), policy) {
                    (Some(position), Some(policy)) => {
                        local.publish_shared(name, position, &frame, policy, exclude);
                    }
                    _ => {
                        local.publish(name, &frame, Qos::Reliable, exclude);
                    }
                }
            }
            (Topic::Room, BusMessage::Latest { key, frame }) => {
                local.publish_latest(name, &frame, key, None);
            }
            (Topic::Room, BusMessage::Resync) => resync(local, name),
            (Topic::Room, BusMessage::Joined { peer, node, user }) => {
                let member = RemoteMember {
                    user: Arc::from(user),
                    node: Arc::from(node),
                };
                shard.remote.joined(name, peer, member);
            }
            (Topic::Room, BusMessage::Left { peer }) => shard.remote.left(name, peer),
            (Topic::User, BusMessage::Kick { members }) => self.kick_local(&shard, &members),
            _ => self.metrics.error("decode", 1),
        }
    }

    /// After a bus link outage this node cannot know what its sessions
    /// missed in rooms without history (or whose history could not be
    /// synced): every local member of those gets `sys.resync`.
    fn resync_local_rooms(&self, synced: &std::collections::HashSet<String>) {
        for shard in self.shards() {
            for room in shard.local.room_names() {
                if !synced.contains(&self.channel(Topic::Room, &shard.tenant, &room)) {
                    resync(&shard.local, &room);
                }
            }
        }
    }
}

/// Admits one session against its user's cap across the cluster.
/// KEYS[1]: the user's session set. ARGV: member, cap, kick (1/0), now (ms).
/// Returns the members kicked to make room, or nil when at the cap and the
/// policy denies.
const RESERVE_SESSION: &str = r"
local cap = tonumber(ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
local kicked = {}
if n >= cap then
  if ARGV[3] ~= '1' then return false end
  kicked = redis.call('ZRANGE', KEYS[1], 0, n - cap)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap)
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return kicked
";

/// Takes a slot of the tenant's `max_sessions_total`.
/// KEYS[1]: the tenant's session set. ARGV: member, cap, kick (1/0), now.
/// Returns 1 (taken), 0 (at the cap: refused) or 2 (at the cap but taken,
/// to be kept only if the user's cap kicks a session).
const TAKE_TENANT_SLOT: &str = r"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
local over = redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2])
if over and ARGV[3] ~= '1' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
if over then return 2 end
return 1
";

/// Takes a member's seat in a room against `max_users_per_room` and, for
/// a room with no member anywhere yet, `max_rooms_total` (0: no cap).
/// KEYS[1]: the tenant's room table, KEYS[2]: the room's seats. ARGV:
/// member, room, max users, max rooms, now. Returns 1 (seated), 0 (room
/// full) or -1 (too many rooms).
const TAKE_SEAT: &str = r"
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 1 end
local n = redis.call('ZCARD', KEYS[2])
local max_rooms = tonumber(ARGV[4])
if n == 0 and max_rooms > 0 and redis.call('HLEN', KEYS[1]) >= max_rooms then return -1 end
local max_users = tonumber(ARGV[3])
if max_users > 0 and n >= max_users then return 0 end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], n + 1)
return 1
";

/// Releases a seat (KEYS and the first two ARGV as [`TAKE_SEAT`]); the
/// room leaves the table with its last seat.
const RELEASE_SEAT: &str = r"
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
local n = redis.call('ZCARD', KEYS[2])
if n == 0 then redis.call('HDEL', KEYS[1], ARGV[2]) else redis.call('HSET', KEYS[1], ARGV[2], n) end
return 1
";

/// Milliseconds a room's history position outlives its stream, so a quiet
/// room keeps its epoch a little past its last retained publication.
const META_GRACE_MS: u64 = 600_000;

/// Records one publication in a room's history and publishes it.
/// KEYS[1]: the room's position hash, KEYS[2]: its stream. ARGV: channel,
/// payload head, middle, tail (see `wire::RecordedTemplate`), a fresh epoch
/// (used when the room has none: new, expired or lost), history size,
/// history TTL (ms), now (ms), position TTL (ms). Returns the offset.
const RECORD: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local payload = ARGV[2] .. offset .. ARGV[3] .. epoch .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[6], offset .. '-1', 't', ARGV[8], 'p', payload)
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PUBLISH', ARGV[1], payload)
return offset
";

/// A room's history position and retained publications (creating the
/// position under a fresh epoch when the room has none).
/// KEYS[1]: position hash, KEYS[2]: stream. ARGV: fresh epoch, position TTL.
/// Returns {epoch, offset, XRANGE of the stream}.
const HISTORY: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {epoch, redis.call('HGET', KEYS[1], 'offset'), redis.call('XRANGE', KEYS[2], '-', '+')}
";

fn fresh_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Reads a [`HISTORY`] reply: epoch, newest offset and the retained frames
/// (offset, when published, frame), oldest first.
fn history_reply(reply: redis::Value) -> Option<(String, u64, Vec<Retained>)> {
    type Stream = Vec<(String, HashMap<String, Vec<u8>>)>;
    let (epoch, offset, entries): (String, u64, Stream) = redis::from_redis_value(reply).ok()?;
    let now_ms = link::now_ms();
    let now = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(entries.len());
    for (id, mut fields) in entries {
        let at: u64 = std::str::from_utf8(fields.get("t")?).ok()?.parse().ok()?;
        let payload = fields.remove("p")?;
        let offset: u64 = id.split_once('-')?.0.parse().ok()?;
        let (_, BusMessage::Recorded { frame, .. }) =
            BusMessage::decode(bytes::Bytes::from(payload)).ok()?
        else {
            return None;
        };
        let age = Duration::from_millis(now_ms.saturating_sub(at));
        out.push((offset, now.checked_sub(age).unwrap_or(now), frame));
    }
    Some((epoch, offset, out))
}

/// Sends every local member of `room` `sys.resync` with the room's history
/// position (README "Room history and recovery"), or no position when the
/// room keeps no history: the client rejoins with `since` or reloads state.
fn resync(broker: &LocalBroker, room: &str) {
    let data = match broker.history_position(room) {
        Some((epoch, offset)) => raw(&serde_json::json!({ "epoch": epoch, "offset": offset })),
        None => raw(&serde_json::json!({})),
    };
    let msg = ExtFrame::new("sys", "resync")
        .room(Some(room))
        .data(Some(&data))
        .encode();
    broker.publish(room, &msg, Qos::Reliable, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Arc<Node> {
        let cfg = ClusterConfig {
            mode: crate::config::ClusterMode::Redis,
            redis_url: "redis://127.0.0.1:1".into(),
            prefix: "wsp".into(),
            node_id: "n1".into(),
            node_ttl_ms: 15_000,
            sentinel: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _g = rt.enter();
        Node::start(
            &cfg,
            &Metrics::new(),
            CancellationToken::new(),
            &TaskTracker::new(),
        )
        .expect("node")
    }

    #[test]
    fn channels_carry_a_hash_tag_and_parse_back() {
        let n = node();
        let ch = n.channel(Topic::Room, "acme", "match:1}{x");
        assert_eq!(ch, "wsp:room:{acme:match:1}{x}");
        assert_eq!(
            n.parse_channel(&ch),
            Some((Topic::Room, "acme", "match:1}{x"))
        );
        let ch = n.channel(Topic::User, "acme", "alice");
        assert_eq!(ch, "wsp:user:{acme:alice}");
        assert_eq!(n.parse_channel(&ch), Some((Topic::User, "acme", "alice")));
        assert_eq!(n.parse_channel("other:room:{acme:x}"), None);
        assert_eq!(n.parse_channel("wsp:node:{n1}"), None);
        assert_eq!(n.node_key("n1"), "wsp:node:{n1}");
    }
}
