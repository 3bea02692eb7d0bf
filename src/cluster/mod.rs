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
//! [`Broker`]: crate::realtime::broker::Broker

mod broker;
mod kv;
mod link;
mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use broker::ClusterBroker;
pub use kv::RedisKv;

use crate::config::ClusterConfig;
use crate::obs::metrics::Metrics;
use crate::realtime::broker::{Broker as _, LocalBroker};
use wire::BusMessage;

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
    /// Re-established Redis links by link.
    pub reconnects: IntCounterVec,
    /// Heartbeat round trip to Redis.
    pub rtt: Histogram,
    /// Live nodes in the last heartbeat.
    pub nodes: IntGauge,
}

impl ClusterMetrics {
    fn register(metrics: &Metrics) -> Result<Self, prometheus::Error> {
        let r = metrics.registry();
        let up = IntGauge::new(
            "wsprism_cluster_up",
            "1 while this node's Redis links (commands and pub/sub) work.",
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
                "Redis links re-established after a loss, by link.",
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
        r.register(Box::new(up.clone()))?;
        r.register(Box::new(published.clone()))?;
        r.register(Box::new(received.clone()))?;
        r.register(Box::new(errors.clone()))?;
        r.register(Box::new(reconnects.clone()))?;
        r.register(Box::new(rtt.clone()))?;
        r.register(Box::new(nodes.clone()))?;
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

/// One queued publication: channel and encoded bus message.
#[derive(Debug)]
struct Outgoing {
    channel: String,
    payload: Vec<u8>,
}

/// A request to the subscriber: re-evaluate whether `channel` is wanted.
#[derive(Debug)]
struct Recheck(String);

/// This process as a member of the cluster.
#[derive(Debug)]
pub struct Node {
    id: String,
    /// Process nonce carried in bus messages so a node skips its own.
    nonce: u64,
    prefix: String,
    ttl: Duration,
    client: redis::Client,
    publish_tx: mpsc::Sender<Outgoing>,
    recheck_tx: mpsc::UnboundedSender<Recheck>,
    /// Tenant id → its local broker, for delivering bus messages.
    tenants: DashMap<Arc<str>, Weak<LocalBroker>>,
    commands_up: AtomicBool,
    pubsub_up: AtomicBool,
    live_nodes: AtomicU64,
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
        let info = redis::IntoConnectionInfo::into_connection_info(cfg.redis_url.as_str())
            .map_err(|e| ClusterError::Url(e.to_string()))?;
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| ClusterError::Url(e.to_string()))?;
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
            client,
            publish_tx,
            recheck_tx,
            tenants: DashMap::new(),
            commands_up: AtomicBool::new(false),
            pubsub_up: AtomicBool::new(false),
            live_nodes: AtomicU64::new(0),
            metrics: ClusterMetrics::register(metrics)?,
        });
        tracing::info!(node = %node.id, prefix = %node.prefix, "cluster node starting (redis)");
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
        self.commands_up.load(Ordering::Acquire) && self.pubsub_up.load(Ordering::Acquire)
    }

    /// Live nodes seen in the last successful heartbeat (this one included).
    pub fn live_nodes(&self) -> u64 {
        self.live_nodes.load(Ordering::Acquire)
    }

    /// Registers the local broker of tenant `id` for bus deliveries.
    fn attach(&self, id: &str, broker: &Arc<LocalBroker>) {
        self.tenants.insert(Arc::from(id), Arc::downgrade(broker));
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

    /// Key of this node's heartbeat record.
    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{{{id}}}", self.prefix)
    }

    /// Key of the node registry (a sorted set: node id by last heartbeat).
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Queues `msg` for every other node subscribed to `channel`; never
    /// waits. A full queue (Redis unreachable for long) drops it.
    fn publish(&self, channel: String, msg: &BusMessage) {
        let payload = msg.encode(self.nonce);
        if self
            .publish_tx
            .try_send(Outgoing { channel, payload })
            .is_err()
        {
            self.metrics.error("publish", 1);
        }
    }

    /// Asks the subscriber to (un)subscribe `channel` to match local state.
    fn recheck(&self, channel: String) {
        let _ = self.recheck_tx.send(Recheck(channel));
    }

    /// Whether `channel` has local recipients now.
    fn wanted(&self, channel: &str) -> bool {
        let Some((topic, tenant, name)) = self.parse_channel(channel) else {
            return false;
        };
        let Some(broker) = self.tenants.get(tenant).and_then(|b| b.upgrade()) else {
            return false;
        };
        match topic {
            Topic::Room => broker.room_size(name) > 0,
            Topic::User => broker.user_sessions(name) > 0,
        }
    }

    /// Every channel with local recipients now (after a reconnect).
    fn wanted_channels(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tenants {
            let Some(broker) = t.value().upgrade() else {
                continue;
            };
            for room in broker.room_names() {
                out.push(self.channel(Topic::Room, t.key(), &room));
            }
            for user in broker.user_names() {
                out.push(self.channel(Topic::User, t.key(), &user));
            }
        }
        out
    }

    fn set_commands_up(&self, up: bool) {
        self.commands_up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(self.is_up()));
    }

    fn set_pubsub_up(&self, up: bool) {
        self.pubsub_up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(self.is_up()));
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
        if origin == self.nonce {
            return;
        }
        self.metrics.received.inc();
        let Some((topic, tenant, name)) = self.parse_channel(channel) else {
            return;
        };
        let Some(broker) = self.tenants.get(tenant).and_then(|b| b.upgrade()) else {
            return;
        };
        match (topic, msg) {
            (Topic::Room, BusMessage::Room { qos, frame }) => {
                broker.publish(name, &frame, qos, None);
            }
            (Topic::User, BusMessage::User { qos, frame }) => {
                broker.send_to_user(name, &frame, qos);
            }
            (Topic::User, BusMessage::Disconnect { code, notice }) => {
                broker.disconnect_user(name, notice.as_ref(), code);
            }
            (Topic::Room, BusMessage::Resync) => resync(&broker, name),
            _ => self.metrics.error("decode", 1),
        }
    }

    /// After a pub/sub outage this node cannot know what its sessions
    /// missed: every local member of every room gets `sys.resync`.
    fn resync_local_rooms(&self) {
        for t in &self.tenants {
            if let Some(broker) = t.value().upgrade() {
                for room in broker.room_names() {
                    resync(&broker, &room);
                }
            }
        }
    }
}

/// Sends every local member of `room` `sys.resync` with the room's history
/// position (README "Room history and recovery"), or no position when the
/// room keeps no history: the client rejoins with `since` or reloads state.
fn resync(broker: &LocalBroker, room: &str) {
    use crate::protocol::ext::{Outgoing, raw};
    let data = match broker.history_position(room) {
        Some((epoch, offset)) => raw(&serde_json::json!({ "epoch": epoch, "offset": offset })),
        None => raw(&serde_json::json!({})),
    };
    let msg = Outgoing::new("sys", "resync")
        .room(Some(room))
        .data(Some(&data))
        .encode();
    broker.publish(room, &msg, crate::realtime::outbox::Qos::Reliable, None);
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
