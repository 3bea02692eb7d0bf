//! Cluster mode over a real `redis-server` (README "Cluster"): two gateways
//! in this process, one Redis on a free port, real WebSocket clients.

use crate::common;
use crate::plugin_support;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{RedisServer, Sentinel};
use common::{Client, TestConfig, TestGateway, eventually, eventually_within, metric};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsprism::cluster::{Node, RedisKv};
use wsprism::config::{ClusterConfig, ClusterMode, OnExceed, SentinelConfig};
use wsprism::obs::metrics::Metrics;
use wsprism::plugin_host::kv::{KvError, KvScope, KvStore, MAX_VALUE_BYTES, MemoryKv};

const KEY: &str = "acme-key-0123456789";

/// Tenant `acme` (users u1..u4, rooms, chat, Hot Lane relay 1) on node
/// `node` of the cluster in `redis`.
fn node(redis: &RedisServer, node: &str) -> TestConfig {
    let url = redis.url();
    let node = node.to_owned();
    TestConfig::tenant("acme")
        .api_key(KEY)
        .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3"), ("t4", "u4")])
        .ext_allow(&["room:*", "chat:*"])
        .hot_allow(&["1:*"])
        .hot_relay(1)
        .gateway(move |g| {
            g.cluster.mode = ClusterMode::Redis;
            g.cluster.redis_url = url;
            g.cluster.node_id = node;
            g.cluster.node_ttl_ms = 3000;
        })
}

fn room_channel(room: &str) -> String {
    format!("wsprism:room:{{acme:{room}}}")
}

fn user_channel(user: &str) -> String {
    format!("wsprism:user:{{acme:{user}}}")
}

async fn readyz(gw: &TestGateway) -> (u16, Value) {
    let resp = reqwest::get(format!("http://{}/readyz", gw.addr))
        .await
        .expect("readyz");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

/// Waits until the node reports both Redis links up.
async fn cluster_up(gw: &TestGateway) {
    eventually("cluster up", || async {
        let (status, body) = readyz(gw).await;
        status == 200 && body == json!({"status": "ready", "cluster": "up"})
    })
    .await;
}

/// Nodes `a` and `b` of the cluster in `redis`, each with `edit` applied to
/// [`node`]'s config, both with their Redis links up.
async fn two_nodes(
    redis: &RedisServer,
    edit: impl Fn(TestConfig) -> TestConfig,
) -> (TestGateway, TestGateway) {
    let a = TestGateway::start(edit(node(redis, "a"))).await;
    let b = TestGateway::start(edit(node(redis, "b"))).await;
    cluster_up(&a).await;
    cluster_up(&b).await;
    (a, b)
}

/// Waits until `n` nodes subscribe `channel`.
async fn subscribed(redis: &RedisServer, channel: &str, n: u64) {
    eventually(&format!("{n} subscribers of {channel}"), || async {
        redis.subscribers(channel) == n
    })
    .await;
}

async fn api(gw: &TestGateway, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.admin_url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("api");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn chat(c: &mut Client, room: &str, msg: &str) {
    c.send_json(json!({"v":1,"svc":"chat","type":"send","room":room,"data":{"msg":msg}}))
        .await;
}

/// Reads until a chat message arrives and returns its text.
async fn chat_msg(c: &mut Client) -> String {
    let m = c.recv_type("msg").await;
    m["data"]["msg"].as_str().expect("msg text").to_owned()
}

#[tokio::test]
async fn rooms_relay_and_user_sends_reach_every_node() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, |cfg| cfg).await;

    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    u1.join("lobby").await;
    u2.join("lobby").await;
    subscribed(&redis, &room_channel("lobby"), 2).await;

    // Chat both ways.
    chat(&mut u1, "lobby", "from a").await;
    assert_eq!(chat_msg(&mut u2).await, "from a");
    assert_eq!(chat_msg(&mut u1).await, "from a", "the sender's own copy");
    chat(&mut u2, "lobby", "from b").await;
    assert_eq!(chat_msg(&mut u1).await, "from b");
    assert_eq!(chat_msg(&mut u2).await, "from b", "the sender's own copy");

    // A Hot Lane relay frame crosses as sent, and not back to its sender.
    let frame = [1u8, 9, 0x01, 0xde, 0xad];
    u1.send_bin(&frame).await;
    assert_eq!(u2.recv_bin().await, frame.to_vec());
    u1.expect_silence(Duration::from_millis(200)).await;

    // Server API on node b: a room publish reaches node a's member ...
    let (status, _) = api(
        &b,
        "/v1/api/tenants/acme/publish",
        json!({"room":"lobby","svc":"news","type":"flash","data":{"n":1}}),
    )
    .await;
    assert_eq!(status, 200);
    for c in [&mut u1, &mut u2] {
        let m = c.recv_type("flash").await;
        assert_eq!(m["data"], json!({"n":1}), "{m}");
    }

    // ... a send to a user on the other node arrives ...
    subscribed(&redis, &user_channel("u2"), 1).await;
    let (status, _) = api(
        &a,
        "/v1/api/tenants/acme/users/u2/send",
        json!({"svc":"notify","type":"dm","data":{"hi":true}}),
    )
    .await;
    assert_eq!(status, 200);
    let m = u2.recv_type("dm").await;
    assert_eq!(m["data"], json!({"hi":true}));

    // ... and a disconnect closes the user's session there with 4004.
    let (status, _) = api(
        &a,
        "/v1/api/tenants/acme/users/u2/disconnect",
        json!({"reason":"banned"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(u2.recv_close().await, Some(4004));

    // Node b unsubscribes the room once its last member is gone.
    subscribed(&redis, &room_channel("lobby"), 1).await;
    subscribed(&redis, &user_channel("u2"), 0).await;
    let m = metric(&b.metrics().await, "wsprism_cluster_bus_received_total");
    assert!(m >= 3.0, "node b received the bus messages: {m}");
    // A healthy link stays up: no reconnect, no resync for u1.
    u1.expect_silence(Duration::from_millis(1500)).await;
    for gw in [&a, &b] {
        let text = gw.metrics().await;
        assert_eq!(
            metric(&text, "wsprism_cluster_reconnects_total{link=\"pubsub\"}"),
            0.0
        );
        assert_eq!(metric(&text, "wsprism_cluster_up"), 1.0);
    }
}

#[tokio::test]
async fn rooms_without_members_on_a_node_are_not_sent_there() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, |cfg| cfg).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u3 = a.client("acme", "t3").await;
    let mut u2 = b.client("acme", "t2").await;
    u1.join("here").await;
    u3.join("here").await;
    u2.join("there").await;
    subscribed(&redis, &room_channel("here"), 1).await;
    subscribed(&redis, &room_channel("there"), 1).await;
    chat(&mut u1, "here", "local").await;
    assert_eq!(chat_msg(&mut u3).await, "local");
    u2.expect_silence(Duration::from_millis(200)).await;
    let received = metric(&b.metrics().await, "wsprism_cluster_bus_received_total");
    assert_eq!(received, 0.0, "node b has no member of `here`");
}

#[tokio::test]
async fn redis_outage_keeps_local_service_and_recovers() {
    let mut redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, |cfg| cfg).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u3 = a.client("acme", "t3").await;
    let mut u2 = b.client("acme", "t2").await;
    for c in [&mut u1, &mut u3, &mut u2] {
        c.join("lobby").await;
    }
    subscribed(&redis, &room_channel("lobby"), 2).await;

    redis.kill();
    eventually("node a degraded", || async {
        readyz(&a).await == (200, json!({"status": "degraded", "cluster": "down"}))
    })
    .await;
    assert_eq!(
        metric(&a.metrics().await, "wsprism_cluster_up"),
        0.0,
        "wsprism_cluster_up"
    );
    // Local delivery goes on, and new sessions are admitted.
    chat(&mut u1, "lobby", "during").await;
    assert_eq!(chat_msg(&mut u3).await, "during");
    let mut u4 = a.client("acme", "t4").await;
    u4.join("lobby").await;
    chat(&mut u4, "lobby", "newcomer").await;
    assert_eq!(chat_msg(&mut u1).await, "during", "own copy");
    assert_eq!(chat_msg(&mut u1).await, "newcomer");

    redis.restart();
    let back = tokio::time::Instant::now();
    eventually_within(
        Duration::from_secs(5),
        "both nodes resubscribed",
        || async { redis.subscribers(&room_channel("lobby")) == 2 },
    )
    .await;
    // Members were told they may have missed publications.
    let resync = u2.recv_type("resync").await;
    assert_eq!(resync["room"], "lobby", "{resync}");
    let resync = u3.recv_type("resync").await;
    assert_eq!(resync["room"], "lobby", "{resync}");
    eventually_within(Duration::from_secs(5), "readyz up again", || async {
        readyz(&a).await.1["cluster"] == "up"
    })
    .await;
    chat(&mut u2, "lobby", "after").await;
    // Nobody was taken for dead although every record went stale during
    // the failover: u1 saw no member_left up to the new message.
    loop {
        let m = u1.recv_json().await;
        assert_ne!(m["type"], "member_left", "{m}");
        if m["type"] == "msg" && m["data"]["msg"] == "after" {
            break;
        }
    }
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "cross-node delivery back after {:?}",
        back.elapsed()
    );
    assert!(
        metric(
            &a.metrics().await,
            "wsprism_cluster_reconnects_total{link=\"pubsub\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_killed_pubsub_link_is_detected_and_repaired() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, |cfg| cfg).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    u1.join("lobby").await;
    u2.join("lobby").await;
    subscribed(&redis, &room_channel("lobby"), 2).await;
    // Each node's bus link is one RESP3 connection (subscriptions and
    // publications share it).
    let clients: String = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert_eq!(
        clients
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == "resp=3"))
            .count(),
        2,
        "{clients}"
    );

    let killed: u64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed, 2, "both nodes' pub/sub links");
    eventually_within(Duration::from_secs(5), "resubscribed", || async {
        redis.subscribers(&room_channel("lobby")) == 2
    })
    .await;
    assert_eq!(u1.recv_type("resync").await["room"], "lobby");
    assert_eq!(u2.recv_type("resync").await["room"], "lobby");
    chat(&mut u1, "lobby", "again").await;
    assert_eq!(chat_msg(&mut u2).await, "again");
}

#[tokio::test]
async fn nodes_heartbeat_and_leave_on_stop() {
    let redis = RedisServer::start();
    let (a, mut b) = two_nodes(&redis, |cfg| cfg).await;
    a.metric_at_least("wsprism_cluster_nodes", 2.0).await;
    // Server-API stats count the cluster and each node.
    let _u1 = a.client("acme", "t1").await;
    let _u2 = b.client("acme", "t2").await;
    let _u3 = b.client("acme", "t3").await;
    let stats = eventually("stats count both nodes", || async {
        let resp = reqwest::Client::new()
            .get(a.admin_url("/v1/api/tenants/acme/stats"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("stats");
        let body: Value = resp.json().await.expect("json");
        (body["sessions"] == 3).then_some(body)
    })
    .await;
    assert_eq!(
        stats["nodes"][0],
        json!({"id":"a","sessions":1,"users":1,"rooms":0})
    );
    assert_eq!(
        stats["nodes"][1],
        json!({"id":"b","sessions":2,"users":2,"rooms":0})
    );
    assert_eq!(stats["users"], 3);
    let record: String = redis.cmd(&["GET", "wsprism:node:{b}"]);
    let record: Value = serde_json::from_str(&record).expect("node record");
    assert_eq!(record["id"], "b");
    let ttl: i64 = redis.cmd(&["PTTL", "wsprism:node:{b}"]);
    assert!(
        ttl > 0 && ttl <= 3000,
        "record expires with node_ttl_ms: {ttl}"
    );
    b.stop().await;
    let gone: u64 = redis.cmd(&["EXISTS", "wsprism:node:{b}"]);
    assert_eq!(gone, 0, "a stopped node removes its record");
    eventually("node a sees one node", || async {
        metric(&a.metrics().await, "wsprism_cluster_nodes") == 1.0
    })
    .await;
}

/// A cluster node outside any gateway, for the kv store alone.
async fn bare_node(redis: &RedisServer, stop: &CancellationToken) -> Arc<Node> {
    let cfg = ClusterConfig {
        mode: ClusterMode::Redis,
        redis_url: redis.url(),
        node_id: "kv-node".into(),
        node_ttl_ms: 3000,
        ..ClusterConfig::default()
    };
    let node = Node::start(&cfg, &Metrics::new(), stop.clone(), &TaskTracker::new()).expect("node");
    eventually("node up", || async { node.is_up() }).await;
    node
}

/// The same script of kv operations against a store, with every result.
async fn kv_script(kv: &dyn KvStore) -> Vec<String> {
    let a = KvScope {
        tenant: "acme".into(),
        plugin: "vote".into(),
    };
    let b = KvScope {
        tenant: "other".into(),
        plugin: "vote".into(),
    };
    let mut out = Vec::new();
    out.push(format!("{:?}", kv.incr(&a, "n", 2).await));
    out.push(format!("{:?}", kv.incr(&a, "n", 3).await));
    out.push(format!("{:?}", kv.get(&a, "n").await));
    out.push(format!("{:?}", kv.get(&b, "n").await));
    out.push(format!("{:?}", kv.set(&a, "s", "x".into(), None).await));
    out.push(format!("{:?}", kv.incr(&a, "s", 1).await));
    out.push(format!("{:?}", kv.incr(&a, "n", i64::MAX).await));
    out.push(format!("{:?}", kv.delete(&a, "s").await));
    out.push(format!("{:?}", kv.delete(&a, "s").await));
    out.push(format!(
        "{:?}",
        kv.set(&a, "big", "x".repeat(MAX_VALUE_BYTES + 1), None)
            .await
    ));
    out.push(format!("{:?}", kv.get(&a, &"k".repeat(300)).await));
    out.push(format!(
        "{:?}",
        kv.set(&a, "t", "1".into(), Some(Duration::from_millis(150)))
            .await
    ));
    out.push(format!("{:?}", kv.incr(&a, "t", 1).await));
    tokio::time::sleep(Duration::from_millis(400)).await;
    out.push(format!("{:?} after ttl", kv.get(&a, "t").await));
    out.push(format!("{:?}", kv.incr(&a, "t", 1).await));
    out
}

#[tokio::test]
async fn redis_kv_behaves_like_the_local_store_and_fails_visibly_without_redis() {
    let mut redis = RedisServer::start();
    let stop = CancellationToken::new();
    let node = bare_node(&redis, &stop).await;
    let kv = RedisKv::new(Arc::clone(&node));
    let local = kv_script(&MemoryKv::new()).await;
    assert_eq!(kv_script(&kv).await, local);
    let key: String = redis.cmd(&["GET", "wsprism:kv:{acme:vote}:n"]);
    assert_eq!(key, "5", "keys carry the prefix and a hash tag per scope");

    redis.kill();
    let scope = KvScope {
        tenant: "acme".into(),
        plugin: "vote".into(),
    };
    eventually("kv unavailable", || async {
        matches!(kv.get(&scope, "n").await, Err(KvError::Unavailable(_)))
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn plugin_kv_is_shared_by_every_node() {
    let redis = RedisServer::start();
    let dir = plugin_support::plugin_dir(&[("vote", "vote")]);
    let with_vote = |n: &str| {
        node(&redis, n)
            .plugin_host(dir.path())
            .ext_allow(&["room:*", "chat:*", "vote:*"])
            .route("vote", "vote")
    };
    let a = TestGateway::start(with_vote("a")).await;
    let b = TestGateway::start(with_vote("b")).await;
    cluster_up(&a).await;
    cluster_up(&b).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    u1.join("poll").await;
    u2.join("poll").await;
    subscribed(&redis, &room_channel("poll"), 2).await;
    u1.send_json(json!({"v":1,"svc":"vote","type":"cast","room":"poll","data":{"option":"red"}}))
        .await;
    assert_eq!(u2.recv_type("tally").await["data"]["counts"]["red"], 1);
    assert_eq!(
        u1.recv_type("tally").await["data"]["counts"]["red"],
        1,
        "own vote"
    );
    u2.send_json(json!({"v":1,"svc":"vote","type":"cast","room":"poll","data":{"option":"red"}}))
        .await;
    let t = u1.recv_type("tally").await;
    assert_eq!(
        t["data"]["counts"]["red"], 2,
        "node b counted node a's vote: {t}"
    );
    // The same user on the other node has already voted there too.
    let mut u1_on_b = b.client("acme", "t1").await;
    u1_on_b.join("poll").await;
    u1_on_b
        .send_json(json!({"v":1,"svc":"vote","type":"cast","room":"poll","data":{"option":"blue"},"seq":4}))
        .await;
    let e = u1_on_b.recv_type("error").await;
    assert_eq!(e["seq"], 4);
    assert!(
        e["data"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("ALREADY_VOTED")),
        "{e}"
    );
}

/// Peer numbers of `room` members as the other node sees them.
async fn presence_api(gw: &TestGateway, room: &str) -> Vec<String> {
    let resp = reqwest::Client::new()
        .get(gw.admin_url(&format!("/v1/api/tenants/acme/rooms/{room}/presence")))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("presence");
    let body: Value = resp.json().await.expect("json");
    serde_json::from_value(body["users"].clone()).expect("users")
}

fn with_events(cfg: TestConfig) -> TestConfig {
    cfg.rooms(|r| r.presence_events = true)
}

#[tokio::test]
async fn presence_events_and_peer_numbers_are_cluster_wide() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, with_events).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    let j1 = u1.join("lobby").await;
    subscribed(&redis, &room_channel("lobby"), 1).await;
    let j2 = u2.join("lobby").await;
    let (p1, p2) = (&j1["data"]["peer"], &j2["data"]["peer"]);
    assert_ne!(p1, p2, "peer numbers are unique across nodes");
    assert_eq!(
        j2["data"]["members"], 2,
        "node b counts node a's member: {j2}"
    );
    let joined = u1.recv_type("member_joined").await;
    assert_eq!(joined["data"], json!({"user":"u2","peer":p2}));

    // Both nodes list both users: room.presence on a, the server API on b.
    eventually("node a lists u2", || async {
        presence_api(&a, "lobby").await == ["u1", "u2"]
    })
    .await;
    u1.send_json(json!({"v":1,"svc":"room","type":"presence","room":"lobby"}))
        .await;
    assert_eq!(
        u1.recv_type("presence").await["data"]["users"],
        json!(["u1", "u2"])
    );
    assert_eq!(presence_api(&b, "lobby").await, ["u1", "u2"]);
    let hash: std::collections::HashMap<String, String> =
        redis.cmd(&["HGETALL", "wsprism:presence:{acme:lobby}"]);
    assert_eq!(hash.len(), 2, "one record per member: {hash:?}");

    // A leave on b: a's members hear it and a's presence drops the user.
    u2.send_json(json!({"v":1,"svc":"room","type":"leave","room":"lobby"}))
        .await;
    let left = u1.recv_type("member_left").await;
    assert_eq!(left["data"], json!({"user":"u2","peer":p2}));
    eventually("node a forgets u2", || async {
        presence_api(&a, "lobby").await == ["u1"]
    })
    .await;
    let records: u64 = redis.cmd(&["HLEN", "wsprism:presence:{acme:lobby}"]);
    assert_eq!(records, 1);
}

/// A gateway binary run as its own process, killed with SIGKILL.
struct Process {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(cfg: TestConfig) -> Self {
        Self::start_with_env(cfg, &[])
    }

    fn start_with_env(cfg: TestConfig, env: &[(&str, &std::path::Path)]) -> Self {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("wsprism.yaml");
        let yaml = cfg
            .gateway(|g| {
                g.listen = "127.0.0.1:0".into();
                g.admin_listen = "127.0.0.1:0".into();
            })
            .build();
        std::fs::write(&path, yaml).expect("write config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsprism"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("gateway exited before listening")
                .expect("read log");
            if let Some(at) = line.find("active at ") {
                break line[at + "active at ".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
            }
        };
        // Keep draining the log so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self {
            child,
            addr,
            _dir: dir,
        }
    }

    async fn client(&self, ticket: &str) -> Client {
        let url = format!("ws://{}/v1/ws?tenant=acme&ticket={ticket}", self.addr);
        Client::connect_url(&url).await
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One session per user across the cluster, `on_exceed` as given.
fn single(cfg: TestConfig, on_exceed: OnExceed) -> TestConfig {
    cfg.policy(move |p| {
        p.sessions.max_sessions_per_user = 1;
        p.sessions.on_exceed = on_exceed;
    })
}

/// HTTP status of an upgrade: 101 when admitted (the session stays open
/// while the client lives), else the refusal's status.
async fn admitted(gw: &TestGateway, ticket: &str) -> (u16, Option<Client>) {
    match gw.connect("acme", ticket).await {
        Ok(c) => (101, Some(c)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test]
async fn the_per_user_cap_counts_every_node() {
    let redis = RedisServer::start();
    // kick_oldest: a newer session on b replaces the one on a (4001).
    let (a, b) = two_nodes(&redis, |cfg| single(cfg, OnExceed::KickOldest)).await;
    let mut old = a.client("acme", "t1").await;
    let mut new = b.client("acme", "t1").await;
    assert_eq!(old.recv_type("kicked").await["type"], "kicked");
    assert_eq!(old.recv_close().await, Some(4001));
    new.send_json(json!({"v":1,"svc":"room","type":"join","room":"r","seq":1}))
        .await;
    assert_eq!(
        new.recv_type("joined").await["seq"],
        1,
        "the newer session lives"
    );
    // ... and back: a session on a replaces the one on b.
    let _newest = a.client("acme", "t1").await;
    assert_eq!(new.recv_close().await, Some(4001));
}

#[tokio::test]
async fn concurrent_connects_to_two_nodes_never_pass_a_deny_cap() {
    let redis = RedisServer::start();
    let cap = |cfg: TestConfig| {
        cfg.policy(|p| {
            p.sessions.max_sessions_per_user = 2;
            p.sessions.on_exceed = OnExceed::Deny;
        })
    };
    let (a, b) = two_nodes(&redis, cap).await;
    let attempts = (0..12).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        admitted(gw, "t1")
    });
    let results = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 101).count(),
        2,
        "exactly the cap is admitted: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 101 || *s == 409),
        "{statuses:?}"
    );
    // Closing the admitted sessions frees their slots on every node.
    drop(results);
    eventually("slots freed", || async {
        let (s, _c) = admitted(&b, "t1").await;
        s == 101
    })
    .await;
}

#[tokio::test]
async fn a_crashed_node_leaves_presence_within_node_ttl() {
    let redis = RedisServer::start();
    let a = TestGateway::start(single(with_events(node(&redis, "a")), OnExceed::Deny)).await;
    cluster_up(&a).await;
    let mut crashed = Process::start(single(with_events(node(&redis, "crashed")), OnExceed::Deny));
    let mut u1 = a.client("acme", "t1").await;
    u1.join("lobby").await;
    let mut u2 = crashed.client("t2").await;
    u2.join("lobby").await;
    eventually("node a sees the other node's member", || async {
        presence_api(&a, "lobby").await == ["u1", "u2"]
    })
    .await;
    assert_eq!(
        admitted(&a, "t2").await.0,
        409,
        "u2's one slot is taken on the other node"
    );

    crashed.kill9();
    let killed = tokio::time::Instant::now();
    let left = u1
        .recv_type_within("member_left", Duration::from_secs(10))
        .await;
    assert_eq!(left["data"]["user"], "u2");
    // node_ttl_ms is 3 s and a heartbeats every 600 ms: buried within about
    // 3.6 s of the last heartbeat (5 s leaves room for a loaded machine).
    assert!(
        killed.elapsed() < Duration::from_millis(5000),
        "member_left after {:?}",
        killed.elapsed()
    );
    assert_eq!(presence_api(&a, "lobby").await, ["u1"]);
    // The burial goes on in Redis after the members here were told: the
    // dead node's presence records go, then its session records, so u2's
    // only slot is free again.
    eventually("the dead node's presence records are gone", || async {
        redis.cmd::<u64>(&["HLEN", "wsprism:presence:{acme:lobby}"]) == 1
    })
    .await;
    eventually("the dead node's seats are given back", || async {
        redis.cmd::<u64>(&["ZCARD", "wsprism:seats:{acme}:lobby"]) == 1
            && redis.cmd::<Option<u64>>(&["HGET", "wsprism:rooms:{acme}", "lobby"]) == Some(1)
    })
    .await;
    eventually("u2 admitted once the dead node is buried", || async {
        admitted(&a, "t2").await.0 == 101
    })
    .await;
    let left: Vec<String> = redis.cmd(&["KEYS", "wsprism:*{crashed}*"]);
    assert!(
        left.is_empty(),
        "nothing of the dead node is left: {left:?}"
    );
}

/// Fills one scope with 64 KiB values until the store says it is full;
/// returns how many fit and what deleting one and expiring one give back.
async fn fill_scope(kv: &dyn KvStore, tenant: &str) -> Vec<String> {
    let a = KvScope {
        tenant: tenant.into(),
        plugin: "big".into(),
    };
    let value = "v".repeat(MAX_VALUE_BYTES);
    let mut out = Vec::new();
    let mut fitted = 0;
    for i in 0..2_000 {
        match kv.set(&a, &format!("k{i:05}"), value.clone(), None).await {
            Ok(()) => fitted += 1,
            Err(e) => {
                out.push(format!("full after {fitted}: {e:?}"));
                break;
            }
        }
    }
    out.push(format!("{:?}", kv.incr(&a, "counter", 1).await));
    out.push(format!("{:?}", kv.delete(&a, "k00001").await));
    out.push(format!(
        "{:?}",
        kv.set(&a, "after-delete", value.clone(), None).await
    ));
    out.push(format!(
        "{:?}",
        kv.set(&a, "one-more", value.clone(), None).await
    ));
    // Replacing a key with a value of its size fits while full; once that
    // one expires, its room is free again.
    let ttl = Some(Duration::from_millis(300));
    out.push(format!(
        "{:?}",
        kv.set(&a, "k00002", value.clone(), ttl).await
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    out.push(format!(
        "{:?} after ttl",
        kv.set(&a, "one-more", value, None).await
    ));
    out
}

/// Issue 11 item 7: a kv scope holds at most 64 MiB on every store, and the
/// Redis store counts it atomically for all nodes (the same results as the
/// in-process store); another scope is not affected.
#[tokio::test]
async fn kv_scopes_are_bounded_in_bytes_in_redis_too() {
    let redis = RedisServer::start();
    let stop = CancellationToken::new();
    let node = bare_node(&redis, &stop).await;
    let kv = RedisKv::new(Arc::clone(&node));
    let local = fill_scope(&MemoryKv::new(), "acme").await;
    assert!(local[0].starts_with("full after "), "{local:?}");
    assert_eq!(
        local[1..],
        [
            "Ok(1)",
            "Ok(true)",
            "Ok(())",
            "Err(Full)",
            "Ok(())",
            "Ok(()) after ttl"
        ],
        "a counter fits in what remains; a delete and an expiry free room"
    );
    assert_eq!(fill_scope(&kv, "acme").await, local);
    let other = KvScope {
        tenant: "other".into(),
        plugin: "big".into(),
    };
    assert_eq!(kv.set(&other, "k", "x".into(), None).await, Ok(()));
    stop.cancel();
}

/// [`node`] with room history (100 publications, 10 minutes) and room for
/// bursts of chat.
fn with_history(cfg: TestConfig) -> TestConfig {
    cfg.policy(|p| p.rate_limit_burst = 1000).rooms(|r| {
        r.history_size = 100;
        r.history_ttl_ms = 600_000;
    })
}

/// Reads `n` chat messages as (offset, epoch, text); fails on `sys.resync`
/// (nothing may be missed) and skips other frames.
async fn recorded(c: &mut Client, n: usize) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv_json().await;
        assert_ne!(v["type"], "resync", "nothing was to be missed: {v}");
        if v["type"] == "msg" {
            out.push((
                v["offset"].as_u64().expect("offset"),
                v["epoch"].as_str().expect("epoch").to_owned(),
                v["data"]["msg"].as_str().expect("text").to_owned(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn history_is_one_sequence_across_nodes_and_recovers_on_any_node() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, with_history).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    let j1 = u1.join("lobby").await;
    let j2 = u2.join("lobby").await;
    let epoch = j1["data"]["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(j2["data"]["epoch"], epoch.as_str(), "one epoch per room");
    assert_eq!(j2["data"]["offset"], 0);
    subscribed(&redis, &room_channel("lobby"), 2).await;

    // Both nodes publish at once: one offset sequence, seen in one order.
    for i in 0..4 {
        chat(&mut u1, "lobby", &format!("a{i}")).await;
        chat(&mut u2, "lobby", &format!("b{i}")).await;
    }
    let seen1 = recorded(&mut u1, 8).await;
    let seen2 = recorded(&mut u2, 8).await;
    assert_eq!(seen1, seen2, "same frames in the same order on both nodes");
    let offsets: Vec<u64> = seen1.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(offsets, (1..=8).collect::<Vec<_>>(), "gap-free: {seen1:?}");
    assert!(seen1.iter().all(|(_, e, _)| *e == epoch));

    // Recovery on either node, whichever node published.
    let mut u3 = b.client("acme", "t3").await;
    let frames = u3
        .join_since("lobby", json!({"epoch": epoch, "offset": 2}))
        .await;
    let (joined, replay) = frames.split_last().expect("joined");
    assert_eq!(joined["data"]["recovered"], true, "{frames:?}");
    assert_eq!(joined["data"]["offset"], 8);
    let replayed: Vec<(u64, String)> = replay
        .iter()
        .map(|v| {
            (
                v["offset"].as_u64().expect("offset"),
                v["data"]["msg"].as_str().expect("msg").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(u64, String)> = seen1[2..].iter().map(|(o, _, t)| (*o, t.clone())).collect();
    assert_eq!(replayed, expected);
    let mut u4 = a.client("acme", "t4").await;
    let frames = u4
        .join_since("lobby", json!({"epoch": epoch, "offset": 7}))
        .await;
    assert_eq!(frames.len(), 2, "offset 8, then joined: {frames:?}");
    assert_eq!(frames[0]["offset"], 8);
    assert_eq!(frames[1]["data"]["recovered"], true);
    // The whole history is in Redis: one stream per room.
    let len: u64 = redis.cmd(&["XLEN", "wsprism:history:{acme:lobby}"]);
    assert_eq!(len, 8);

    // Redis loses its data: the next publication starts a new epoch on
    // every node, and positions in the old one cannot be recovered.
    let _: () = redis.cmd(&["FLUSHALL"]);
    chat(&mut u2, "lobby", "fresh").await;
    let after = recorded(&mut u1, 1).await;
    let (offset, new_epoch, text) = &after[0];
    assert_eq!((*offset, text.as_str()), (1, "fresh"));
    assert_ne!(*new_epoch, epoch, "a new epoch after the flush");
    assert_eq!(recorded(&mut u2, 1).await, after);
    let mut late = a.client("acme", "t3").await;
    let frames = late
        .join_since("lobby", json!({"epoch": epoch, "offset": 8}))
        .await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["data"]["recovered"], false);
    assert_eq!(frames[0]["data"]["epoch"], new_epoch.as_str());
}

#[tokio::test]
async fn a_node_that_missed_recorded_publications_repairs_them_from_redis() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, with_history).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    let mut u4 = b.client("acme", "t4").await;
    for c in [&mut u1, &mut u2, &mut u4] {
        c.join("lobby").await;
    }
    subscribed(&redis, &room_channel("lobby"), 2).await;
    subscribed(&redis, &user_channel("u4"), 1).await;

    // Cut node b's pub/sub link only: it is the one subscribed to three
    // channels (the room and two users; node a has the room and one user).
    let clients: String = redis.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let id = clients
        .lines()
        .find(|l| l.contains(" sub=3 "))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("node b's pub/sub client in {clients}"))
        .to_owned();
    let killed: u64 = redis.cmd(&["CLIENT", "KILL", "ID", &id]);
    assert_eq!(killed, 1);
    // Node a goes on publishing while b reconnects (≥ 50 ms back-off):
    // some of these reach Redis while b is not subscribed.
    for i in 0..30 {
        chat(&mut u1, "lobby", &format!("m{i}")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let on_a = recorded(&mut u1, 30).await;
    // b's members get every one, in order, and no resync: b repaired the
    // gap from the room's stream when it resubscribed.
    assert_eq!(recorded(&mut u2, 30).await, on_a);
    assert_eq!(recorded(&mut u4, 30).await, on_a);
    let offsets: Vec<u64> = on_a.iter().map(|(o, _, _)| *o).collect();
    assert_eq!(offsets, (1..=30).collect::<Vec<_>>());
    assert!(
        metric(
            &b.metrics().await,
            "wsprism_cluster_reconnects_total{link=\"pubsub\"}"
        ) >= 1.0,
        "node b's link was cut and restored"
    );
}

#[tokio::test]
async fn history_during_a_redis_outage_is_local_and_members_resync_after() {
    let mut redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, with_history).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u3 = a.client("acme", "t3").await;
    let mut u2 = b.client("acme", "t2").await;
    for c in [&mut u1, &mut u3, &mut u2] {
        c.join("lobby").await;
    }
    subscribed(&redis, &room_channel("lobby"), 2).await;
    chat(&mut u1, "lobby", "before").await;
    let before = recorded(&mut u3, 1).await;
    assert_eq!(recorded(&mut u2, 1).await, before);
    let shared = before[0].1.clone();

    redis.kill();
    eventually("node a degraded", || async {
        readyz(&a).await.1["cluster"] == "down"
    })
    .await;
    // Local members still get recorded publications, under an epoch of
    // node a's own: no client can mistake them for the shared sequence.
    chat(&mut u1, "lobby", "during").await;
    let during = recorded(&mut u3, 1).await;
    assert_eq!(during[0].2, "during");
    assert_ne!(during[0].1, shared, "a local epoch while Redis is away");
    let mut u4 = b.client("acme", "t4").await;
    let frames = u4
        .join_since(
            "lobby",
            json!({"epoch": during[0].1, "offset": during[0].0 - 1}),
        )
        .await;
    assert_eq!(frames.last().expect("joined")["data"]["recovered"], false);

    redis.restart();
    // Redis came back empty: every member is told to resync to the new
    // shared position.
    let r3 = u3.recv_type("resync").await;
    let r2 = u2.recv_type("resync").await;
    let epoch = r3["data"]["epoch"].as_str().expect("epoch").to_owned();
    assert_ne!(epoch, during[0].1);
    assert_ne!(epoch, shared, "Redis lost its data: a new epoch");
    assert_eq!(r2["data"]["epoch"], epoch.as_str(), "{r2}");
    cluster_up(&a).await;
    cluster_up(&b).await;
    chat(&mut u2, "lobby", "after").await;
    assert_eq!(u2.recv_type("msg").await["data"]["msg"], "after");
    let m = loop {
        let m = u1.recv_type("msg").await;
        if m["data"]["msg"] == "after" {
            break m;
        }
    };
    assert_eq!(m["epoch"], epoch.as_str());
    assert_eq!(m["offset"], 1);
}

#[tokio::test]
async fn tenant_and_room_caps_count_every_node() {
    let redis = RedisServer::start();
    let caps = |cfg: TestConfig| {
        cfg.limits(|l| {
            l.max_sessions_total = 3;
            l.max_users_per_room = 2;
            l.max_rooms_total = 2;
        })
    };
    let (a, b) = two_nodes(&redis, caps).await;

    // max_sessions_total: three sessions over two nodes fill the tenant;
    // concurrent connects to both nodes never pass it.
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    let attempts = (0..6).map(|i| admitted(if i % 2 == 0 { &a } else { &b }, "t3"));
    let results = futures_util::future::join_all(attempts).await;
    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 101).count(),
        1,
        "one slot was left: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 101 || *s == 503),
        "{statuses:?}"
    );
    let mut u3 = results
        .into_iter()
        .find_map(|(_, c)| c)
        .expect("the admitted one");

    // max_users_per_room: two members, one per node, fill the room.
    u1.join("r1").await;
    u2.join("r1").await;
    u3.send_json(json!({"v":1,"svc":"room","type":"join","room":"r1","seq":7}))
        .await;
    let refused = u3.recv_type("error").await;
    assert_eq!(refused["data"]["code"], "ROOM_FULL", "{refused}");
    assert_eq!(refused["seq"], 7);
    // max_rooms_total: r1 and r2 exist (on different nodes' members), so a
    // third room is refused wherever it is asked for.
    u3.join("r2").await;
    u1.send_json(json!({"v":1,"svc":"room","type":"join","room":"r3","seq":8}))
        .await;
    let refused = u1.recv_type("error").await;
    assert_eq!(refused["data"]["code"], "ROOM_LIMIT", "{refused}");
    let rooms: std::collections::HashMap<String, u64> =
        redis.cmd(&["HGETALL", "wsprism:rooms:{acme}"]);
    assert_eq!(rooms.get("r1"), Some(&2), "{rooms:?}");
    assert_eq!(rooms.get("r2"), Some(&1), "{rooms:?}");

    // Leaving frees the seat on every node; a room with no member left
    // frees its place among the rooms.
    u2.send_json(json!({"v":1,"svc":"room","type":"leave","room":"r1"}))
        .await;
    let mut seated = false;
    for _ in 0..50 {
        u3.send_json(json!({"v":1,"svc":"room","type":"join","room":"r1"}))
            .await;
        let v = loop {
            let v = u3.recv_json().await;
            if v["type"] == "joined" || v["type"] == "error" {
                break v;
            }
        };
        if v["type"] == "joined" {
            seated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seated, "the seat u2 left was freed");
    u3.send_json(json!({"v":1,"svc":"room","type":"leave","room":"r2"}))
        .await;
    eventually("room freed", || async {
        let rooms: std::collections::HashMap<String, u64> =
            redis.cmd(&["HGETALL", "wsprism:rooms:{acme}"]);
        !rooms.contains_key("r2")
    })
    .await;
    u1.send_json(json!({"v":1,"svc":"room","type":"join","room":"r3","seq":9}))
        .await;
    assert_eq!(u1.recv_type("joined").await["seq"], 9);

    // A closed session frees its tenant slot on every node.
    drop(u2);
    eventually("tenant slot freed", || async {
        let (s, _c) = admitted(&a, "t4").await;
        s == 101
    })
    .await;
}

#[tokio::test]
async fn nodes_reach_redis_over_tls() {
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    // The nodes verify Redis's certificate against the CA the environment
    // names (SSL_CERT_FILE), as a deployment with a private CA would.
    let ca = redis.ca_file();
    let a = Process::start_with_env(node(&redis, "a"), &[("SSL_CERT_FILE", &ca)]);
    let b = Process::start_with_env(node(&redis, "b"), &[("SSL_CERT_FILE", &ca)]);
    let mut u1 = a.client("t1").await;
    let mut u2 = b.client("t2").await;
    u1.join("lobby").await;
    u2.join("lobby").await;
    subscribed(&redis, &room_channel("lobby"), 2).await;
    chat(&mut u1, "lobby", "over tls").await;
    assert_eq!(chat_msg(&mut u2).await, "over tls");
    let nodes: Vec<String> = redis.cmd(&["ZRANGE", "wsprism:{nodes}", "0", "-1"]);
    assert_eq!(nodes, ["a", "b"]);
}

#[tokio::test]
async fn nodes_behind_sentinel_follow_a_failover() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_replica(&master);
    // The master is declared down after 3.5 s, longer than the nodes'
    // node_ttl_ms (3 s): every heartbeat record is stale by the time the
    // replica takes over, and still nobody may be buried.
    let s1 = Sentinel::start(&master, 1, 3500, 1);
    let s2 = Sentinel::start(&master, 1, 3500, 1);
    eventually("the sentinels know each other", || async {
        s1.peers() == 1 && s2.peers() == 1
    })
    .await;
    let sentinels = vec![s1.url(), s2.url()];
    let via_sentinel = |cfg: TestConfig| {
        let urls = sentinels.clone();
        cfg.gateway(move |g| {
            // Only the scheme, credentials and database of redis_url apply:
            // nothing listens on this address.
            g.cluster.redis_url = "redis://127.0.0.1:1".into();
            g.cluster.sentinel = Some(SentinelConfig {
                master_name: Sentinel::MASTER.into(),
                urls,
            });
        })
    };
    let (a, b) = two_nodes(&master, |cfg| with_events(via_sentinel(cfg))).await;
    let mut u1 = a.client("acme", "t1").await;
    let mut u2 = b.client("acme", "t2").await;
    u1.join("lobby").await;
    u2.join("lobby").await;
    subscribed(&master, &room_channel("lobby"), 2).await;
    chat(&mut u1, "lobby", "before").await;
    assert_eq!(chat_msg(&mut u2).await, "before");
    assert_eq!(chat_msg(&mut u1).await, "before", "own copy");
    let nodes: Vec<String> = master.cmd(&["ZRANGE", "wsprism:{nodes}", "0", "-1"]);
    assert_eq!(nodes, ["a", "b"]);
    let moves = "wsprism_cluster_reconnects_total{link=\"sentinel\"}";
    assert_eq!(
        metric(&a.metrics().await, moves),
        1.0,
        "the first master found"
    );

    master.kill();
    eventually_within(Duration::from_secs(30), "the replica promoted", || async {
        s1.master_port() == Some(replica.port) && s2.master_port() == Some(replica.port)
    })
    .await;
    let promoted = tokio::time::Instant::now();
    eventually_within(
        Duration::from_secs(10),
        "both nodes subscribed on the new master",
        || async { replica.subscribers(&room_channel("lobby")) == 2 },
    )
    .await;
    cluster_up(&a).await;
    cluster_up(&b).await;
    // The pub/sub link was lost: members may have missed publications.
    let resync = u2.recv_type("resync").await;
    assert_eq!(resync["room"], "lobby", "{resync}");
    chat(&mut u2, "lobby", "after").await;
    assert_eq!(chat_msg(&mut u1).await, "after");
    // README "Cluster": within 5 s of Redis being back (here: of the
    // Sentinels naming the new master).
    assert!(
        promoted.elapsed() < Duration::from_secs(5),
        "cross-node delivery back {:?} after the promotion",
        promoted.elapsed()
    );
    eventually("heartbeats reach the new master", || async {
        let mut nodes: Vec<String> = replica.cmd(&["ZRANGE", "wsprism:{nodes}", "0", "-1"]);
        nodes.sort();
        nodes == ["a", "b"]
    })
    .await;
    // The first node back found the other's record stale; had it buried
    // it, that node's member would be gone from its view.
    for gw in [&a, &b] {
        let mut users = presence_api(gw, "lobby").await;
        users.sort();
        assert_eq!(users, ["u1", "u2"]);
    }
    for gw in [&a, &b] {
        let moved = metric(&gw.metrics().await, moves);
        assert!(moved >= 2.0, "{moves} = {moved}");
    }
}
