//! Test harness: start a real gateway on 127.0.0.1:0 and talk to it with real
//! WebSocket clients (tokio-tungstenite) over real sockets.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod redis;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsprism::config::pattern::Pattern;
use wsprism::gateway::Gateway;
use wsprism::services::ExtService;
use wsprism::{Server, ServerOptions, config};

/// How long a test waits for any expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gw: Arc<Gateway>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
    /// Keeps the config dir alive for reload tests.
    pub dir: Option<tempfile::TempDir>,
    pub config_path: Option<PathBuf>,
}

impl TestGateway {
    pub async fn start(cfg: impl IntoYaml) -> Self {
        Self::start_with(cfg, None, false).await
    }

    /// Writes the config to a temp file so hot reload can watch it.
    pub async fn start_with_file(cfg: impl IntoYaml) -> Self {
        Self::start_with(cfg, None, true).await
    }

    pub async fn start_with(
        cfg: impl IntoYaml,
        ext: Option<Arc<dyn ExtService>>,
        file: bool,
    ) -> Self {
        let yaml = &cfg.into_yaml();
        let cfg = config::parse(yaml)
            .unwrap_or_else(|e| panic!("test config refused:\n{e}\n---\n{yaml}"));
        let (dir, config_path) = if file {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("wsprism.yaml");
            std::fs::write(&path, yaml).expect("write config");
            (Some(dir), Some(path))
        } else {
            (None, None)
        };
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = Server::bind(
            cfg,
            ServerOptions {
                config_path: config_path.clone(),
                bind: Some((loopback, loopback)),
                plugins: ext.is_none() && yaml.contains(PLUGIN_HOST_MARKER),
                ext,
            },
        )
        .await
        .expect("bind");
        let addr = server.local_addr().expect("addr");
        let admin = server.admin_addr().expect("admin addr");
        let gw = server.gateway();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            admin,
            gw,
            shutdown,
            task: Some(task),
            dir,
            config_path,
        }
    }

    pub fn ws_url(&self, tenant: &str, ticket: &str) -> String {
        format!("ws://{}/v1/ws?tenant={tenant}&ticket={ticket}", self.addr)
    }

    /// Connects and consumes `sys.authed`.
    pub async fn client(&self, tenant: &str, ticket: &str) -> Client {
        let mut c = self.connect(tenant, ticket).await.expect("connect");
        let authed = c.recv_json().await;
        assert_eq!(authed["type"], "authed", "{authed}");
        c
    }

    pub async fn connect(
        &self,
        tenant: &str,
        ticket: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(self.ws_url(tenant, ticket)).await?;
        Ok(Client { ws })
    }

    /// HTTP status of an upgrade attempt with extra headers.
    pub async fn upgrade_status(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap) {
        let url = format!("http://{}{path_and_query}", self.addr);
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
        let mut map = HeaderMap::new();
        for (k, v) in [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        .iter()
        .chain(headers.iter())
        {
            map.insert(
                HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let resp = reqwest::Client::new()
            .get(url)
            .headers(map)
            .send()
            .await
            .expect("http");
        (resp.status().as_u16(), resp.headers().clone())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body")
    }

    /// Waits until the metric sample `name{labels}` reaches `at_least`; returns
    /// its value then.
    pub async fn metric_at_least(&self, sample: &str, at_least: f64) -> f64 {
        eventually(&format!("{sample} >= {at_least}"), || async {
            let v = metric(&self.metrics().await, sample);
            if v >= at_least { Ok(v) } else { Err(v) }
        })
        .await
    }

    /// Cancels and waits for `run` to return; returns how long it took.
    pub async fn stop(&mut self) -> Duration {
        let start = tokio::time::Instant::now();
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("run returned")
                .expect("join")
                .expect("run ok");
        }
        start.elapsed()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.gw.shutdown.cancel();
    }
}

/// Reads a metric sample value (`name{labels} value`), 0 when absent.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::text(s.to_owned()))
            .await
            .expect("send");
    }

    pub async fn send_bin(&mut self, b: &[u8]) {
        self.ws
            .send(Message::binary(b.to_vec()))
            .await
            .expect("send");
    }

    /// Next data frame (pings/pongs skipped), or panics after [`WAIT`].
    pub async fn recv(&mut self) -> Message {
        self.try_recv(WAIT).await.expect("expected a frame")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return None,
                Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(m))) => return Some(m),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("json"),
            other => panic!("expected text, got {}", describe(&other)),
        }
    }

    /// Connects to any gateway URL and consumes `sys.authed`.
    pub async fn connect_url(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut c = Client { ws };
        let authed = c.recv_json().await;
        assert_eq!(authed["type"], "authed", "{authed}");
        c
    }

    /// [`Client::recv_type`] with its own time limit.
    pub async fn recv_type_within(&mut self, ty: &str, limit: Duration) -> Value {
        tokio::time::timeout(limit, self.recv_type(ty))
            .await
            .unwrap_or_else(|_| panic!("no {ty} within {limit:?}"))
    }

    /// Next JSON frame whose `type` is `ty` (others skipped).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    pub async fn recv_bin(&mut self) -> Vec<u8> {
        match self.recv().await {
            Message::Binary(b) => b.to_vec(),
            other => panic!("expected binary, got {}", describe(&other)),
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(m) = self.try_recv(wait).await {
            panic!("expected silence, got {}", describe(&m));
        }
    }

    /// Reads until the close frame; returns its code.
    pub async fn recv_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map(|f: CloseFrame| u16::from(f.code));
                }
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Joins `room` with a history position (`data.since`); returns every
    /// frame up to and including `sys.joined` (replayed publications first).
    #[allow(dead_code)]
    pub async fn join_since(&mut self, room: &str, since: Value) -> Vec<Value> {
        self.send_json(
            serde_json::json!({"v":1,"svc":"room","type":"join","room":room,"data":{"since":since}}),
        )
        .await;
        let mut frames = Vec::new();
        loop {
            let v = self.recv_json().await;
            let done = v["type"] == "joined";
            frames.push(v);
            if done {
                return frames;
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send_json(serde_json::json!({"v":1,"svc":"room","type":"join","room":room}))
            .await;
        self.recv_type("joined").await
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!("text {}", t.as_str().chars().take(200).collect::<String>()),
        Message::Binary(b) => format!("binary ({} bytes)", b.len()),
        Message::Close(c) => format!("close {c:?}"),
        other => format!("{other:?}"),
    }
}

pub fn request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    url.into_client_request().expect("request")
}

/// Config text for [`TestGateway::start`]: literal YAML or a [`TestConfig`].
pub trait IntoYaml {
    fn into_yaml(self) -> String;
}

impl IntoYaml for &str {
    fn into_yaml(self) -> String {
        self.to_owned()
    }
}

impl IntoYaml for String {
    fn into_yaml(self) -> String {
        self
    }
}

impl IntoYaml for &String {
    fn into_yaml(self) -> String {
        self.clone()
    }
}

impl IntoYaml for TestConfig {
    fn into_yaml(self) -> String {
        self.build()
    }
}

impl IntoYaml for &TestConfig {
    fn into_yaml(self) -> String {
        self.build()
    }
}

/// Builds the YAML of a test config, stating only what a test changes.
///
/// The default is `version: 1` with the handshake limiter off (tests open many
/// upgrades from one address) and the tenants the test names, each with schema
/// defaults. Sections are edited through the real schema types
/// (`.policy(|p| p.rate_limit_rps = 1)`), so a misspelt field does not compile;
/// the output holds only the fields that differ from the schema defaults and goes
/// through [`config::parse`] like any user's file (strict schema, validation).
/// `.yaml(...)` and `.tenant_yaml(...)` merge raw YAML for anything unusual.
///
/// ```ignore
/// TestConfig::tenant("acme")
///     .tickets(&[("t1", "u1")])
///     .ext_allow(&["room:*"])
///     .policy(|p| p.rate_limit_burst = 5)
///     .and_tenant("other")
///     .tickets(&[("x", "ux")]);
/// ```
#[derive(Clone)]
#[must_use]
pub struct TestConfig {
    gateway: config::GatewayConfig,
    tenants: Vec<config::TenantConfig>,
    /// Raw YAML merged into the current tenant, by tenant index.
    tenant_yaml: Vec<(usize, String)>,
    /// Raw YAML merged into the whole document, last.
    yaml: Vec<String>,
    plugin_host: bool,
}

impl TestConfig {
    /// A config with one tenant, `id`; later tenant methods edit it.
    pub fn tenant(id: &str) -> Self {
        let mut gateway = config::GatewayConfig::default();
        gateway.handshake_limit.enabled = false;
        Self {
            gateway,
            tenants: vec![default_tenant(id)],
            tenant_yaml: Vec::new(),
            yaml: Vec::new(),
            plugin_host: false,
        }
    }

    /// Adds another tenant; later tenant methods edit it.
    pub fn and_tenant(mut self, id: &str) -> Self {
        self.tenants.push(default_tenant(id));
        self
    }

    /// Edits the `gateway` section.
    pub fn gateway(mut self, edit: impl FnOnce(&mut config::GatewayConfig)) -> Self {
        edit(&mut self.gateway);
        self
    }

    /// Starts the WASM plugin host over `dir` (other plugin settings through
    /// `.gateway(|g| g.plugins...)`).
    pub fn plugin_host(mut self, dir: &std::path::Path) -> Self {
        self.plugin_host = true;
        self.gateway.plugins.dir = dir.display().to_string();
        // The tests' shared compile cache, outside every plugin dir.
        self.gateway.plugins.cache_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/wasm-examples/compile-cache")
            .display()
            .to_string();
        self
    }

    /// Edits the current tenant as a whole.
    pub fn with_tenant(mut self, edit: impl FnOnce(&mut config::TenantConfig)) -> Self {
        edit(self.current());
        self
    }

    /// Static tickets (`ticket -> user`).
    pub fn tickets(self, tickets: &[(&str, &str)]) -> Self {
        self.auth(|a| {
            for (ticket, user) in tickets {
                a.tickets.insert((*ticket).to_owned(), (*user).to_owned());
            }
        })
    }

    pub fn auth(self, edit: impl FnOnce(&mut config::AuthConfig)) -> Self {
        self.with_tenant(|t| edit(&mut t.auth))
    }

    pub fn api_key(self, key: &str) -> Self {
        self.with_tenant(|t| t.api_keys.push(key.to_owned()))
    }

    pub fn ext_allow(self, patterns: &[&str]) -> Self {
        self.policy(|p| {
            p.ext_allowlist
                .extend(patterns.iter().map(|s| Pattern::from(*s)))
        })
    }

    pub fn hot_allow(self, patterns: &[&str]) -> Self {
        self.policy(|p| {
            p.hot_allowlist
                .extend(patterns.iter().map(|s| Pattern::from(*s)))
        })
    }

    /// Message rate limit: `rps` per second, bursts of `burst`.
    pub fn rate_limit(self, rps: u32, burst: u32) -> Self {
        self.policy(|p| {
            p.rate_limit_rps = rps;
            p.rate_limit_burst = burst;
        })
    }

    pub fn policy(self, edit: impl FnOnce(&mut config::PolicyConfig)) -> Self {
        self.with_tenant(|t| edit(&mut t.policy))
    }

    pub fn limits(self, edit: impl FnOnce(&mut config::LimitsConfig)) -> Self {
        self.with_tenant(|t| edit(&mut t.limits))
    }

    pub fn rooms(self, edit: impl FnOnce(&mut config::RoomsConfig)) -> Self {
        self.with_tenant(|t| edit(&mut t.rooms))
    }

    pub fn backend(self, edit: impl FnOnce(&mut config::BackendConfig)) -> Self {
        self.with_tenant(|t| edit(&mut t.backend))
    }

    /// Routes Ext Lane `svc` to `plugin`.
    pub fn route(self, svc: &str, plugin: &str) -> Self {
        self.with_tenant(|t| {
            t.routes.push(config::RouteConfig {
                svc: svc.to_owned(),
                plugin: plugin.to_owned(),
            });
        })
    }

    /// A Hot Lane `relay` service on `id` (sender excluded, not stamped).
    pub fn hot_relay(self, id: u8) -> Self {
        self.hot_service(id, config::HotServiceKind::Relay)
    }

    /// A Hot Lane `echo` service on `id`.
    pub fn hot_echo(self, id: u8) -> Self {
        self.hot_service(id, config::HotServiceKind::Echo)
    }

    fn hot_service(self, id: u8, kind: config::HotServiceKind) -> Self {
        self.with_tenant(|t| {
            t.hot_services.push(config::HotServiceConfig {
                id,
                kind,
                include_sender: false,
                stamp_sender: false,
                conflate: false,
            });
        })
    }

    /// Merges raw YAML into the current tenant (for fields a test wants to spell
    /// out, or values the schema types cannot hold).
    pub fn tenant_yaml(mut self, yaml: &str) -> Self {
        self.tenant_yaml
            .push((self.tenants.len() - 1, yaml.to_owned()));
        self
    }

    /// Merges raw YAML into the whole document, after everything else.
    pub fn yaml(mut self, yaml: &str) -> Self {
        self.yaml.push(yaml.to_owned());
        self
    }

    fn current(&mut self) -> &mut config::TenantConfig {
        self.tenants.last_mut().expect("a TestConfig has a tenant")
    }

    /// The config text.
    pub fn build(&self) -> String {
        use serde_yaml::{Mapping, Value};
        let mut doc = Mapping::new();
        doc.insert("version".into(), 1.into());
        if let Some(g) = changed(
            &value(&config::GatewayConfig::default()),
            &value(&self.gateway),
        ) {
            doc.insert("gateway".into(), g);
        }
        let mut tenants = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let mut out = Mapping::new();
            out.insert("id".into(), t.id.clone().into());
            if let Some(Value::Mapping(m)) = changed(&value(&default_tenant(&t.id)), &value(t)) {
                out.extend(m);
            }
            let mut out = Value::Mapping(out);
            for (_, raw) in self.tenant_yaml.iter().filter(|(at, _)| *at == i) {
                merge(&mut out, parse_raw(raw));
            }
            tenants.push(out);
        }
        doc.insert("tenants".into(), Value::Sequence(tenants));
        let mut doc = Value::Mapping(doc);
        for raw in &self.yaml {
            merge(&mut doc, parse_raw(raw));
        }
        let text = serde_yaml::to_string(&doc).expect("serialize test config");
        if self.yaml.is_empty() && self.tenant_yaml.is_empty() {
            // Every setting made through the schema types survives the trip.
            let back: config::Config = serde_yaml::from_str(&text)
                .unwrap_or_else(|e| panic!("test config does not read back: {e}\n{text}"));
            assert!(
                back.gateway == self.gateway && back.tenants == self.tenants,
                "test config lost a setting on the way to YAML:\n{text}"
            );
        }
        if self.plugin_host {
            format!("{PLUGIN_HOST_MARKER}\n{text}")
        } else {
            text
        }
    }

    /// Parses the text like the gateway does; panics with the text on refusal.
    pub fn parse(&self) -> config::Config {
        let text = self.build();
        config::parse(&text).unwrap_or_else(|e| panic!("test config refused:\n{e}\n---\n{text}"))
    }
}

/// Marks a config whose gateway should start the WASM plugin host.
pub const PLUGIN_HOST_MARKER: &str = "# test: start plugin host";

fn default_tenant(id: &str) -> config::TenantConfig {
    let mut t: config::TenantConfig =
        serde_yaml::from_str("id: _").expect("a tenant with only an id parses");
    t.id = id.to_owned();
    t
}

fn value<T: serde::Serialize>(v: &T) -> serde_yaml::Value {
    serde_yaml::to_value(v).expect("config types serialize")
}

fn parse_raw(yaml: &str) -> serde_yaml::Value {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("raw test YAML is not YAML: {e}\n{yaml}"))
}

/// The parts of `new` that differ from `base` (mappings compared key by key).
fn changed(base: &serde_yaml::Value, new: &serde_yaml::Value) -> Option<serde_yaml::Value> {
    use serde_yaml::Value;
    match (base, new) {
        (Value::Mapping(base), Value::Mapping(new)) => {
            let mut out = serde_yaml::Mapping::new();
            for (k, v) in new {
                let diff = match base.get(k) {
                    Some(b) => changed(b, v),
                    None => Some(v.clone()),
                };
                if let Some(d) = diff {
                    out.insert(k.clone(), d);
                }
            }
            (!out.is_empty()).then_some(Value::Mapping(out))
        }
        _ => (base != new).then(|| new.clone()),
    }
}

/// Deep-merges `from` into `into`: mappings key by key, anything else replaced.
fn merge(into: &mut serde_yaml::Value, from: serde_yaml::Value) {
    use serde_yaml::Value;
    match (into, from) {
        (Value::Mapping(into), Value::Mapping(from)) => {
            for (k, v) in from {
                match into.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        into.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// What [`eventually`] accepts from a check: `bool`, `Option<T>` (`Some` holds),
/// or `Result<T, E>` (`Err` is the last observation, shown on timeout).
pub trait Settled {
    type Value;
    fn settled(self) -> Result<Self::Value, Option<String>>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Debug> Settled for Result<T, E> {
    type Value = T;
    fn settled(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Polls `check` (every 20 ms) until it holds; panics after [`WAIT`] naming
/// `what` and the last observation. Returns the check's value.
pub async fn eventually<F, Fut, R>(what: &str, check: F) -> R::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Settled,
{
    eventually_within(WAIT, what, check).await
}

/// [`eventually`] with its own time limit.
pub async fn eventually_within<F, Fut, R>(limit: Duration, what: &str, mut check: F) -> R::Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R>,
    R: Settled,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match check().await.settled() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            match last {
                Some(last) => {
                    panic!("timed out after {limit:?} waiting for {what}; last saw {last}")
                }
                None => panic!("timed out after {limit:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tokio time paused and moved only by [`FrozenClock::advance`], for tests of
/// gateway timers (idle timeout, heartbeats, head timeout) over real sockets.
///
/// Plain `tokio::time::pause()` auto-advances to the next timer whenever the
/// runtime is idle, and a runtime waiting on a loopback socket is idle: a frame
/// still in the kernel would let the clock jump and fire a timeout early. A
/// blocking task in flight inhibits auto-advance (documented under
/// `tokio::time::pause`), so the clock keeps one parked until it is dropped.
/// The gateway must run in the test's runtime (a `#[tokio::test]`, current
/// thread). Waits on real I/O meanwhile need a real-time bound:
/// [`FrozenClock::real_timeout`] (tokio timers do not move).
pub struct FrozenClock {
    /// Dropping it ends the parked blocking task.
    _release: std::sync::mpsc::Sender<()>,
}

impl FrozenClock {
    pub fn freeze() -> Self {
        tokio::time::pause();
        let (release, parked) = std::sync::mpsc::channel::<()>();
        // Inhibits auto-advance from the moment it is spawned.
        drop(tokio::task::spawn_blocking(move || {
            let _ = parked.recv();
        }));
        Self { _release: release }
    }

    /// Moves time forward by `by` in 10 ms steps, letting woken tasks run at
    /// each step so timers fire in order.
    pub async fn advance(&self, by: Duration) {
        const STEP: Duration = Duration::from_millis(10);
        let mut left = by;
        while !left.is_zero() {
            let step = left.min(STEP);
            tokio::time::advance(step).await;
            left -= step;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
    }

    /// `fut`'s output, or `None` after `limit` of real (wall-clock) time.
    pub async fn real_timeout<F: std::future::Future>(
        &self,
        limit: Duration,
        fut: F,
    ) -> Option<F::Output> {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let timer = tokio::task::spawn_blocking(move || {
            let _ = done_rx.recv_timeout(limit);
        });
        let out = tokio::select! {
            out = fut => Some(out),
            _ = timer => None,
        };
        drop(done_tx);
        out
    }
}
