//! Test harness: start a real gateway on 127.0.0.1:0 and talk to it with real
//! WebSocket clients (tokio-tungstenite) over real sockets.
#![allow(dead_code, unreachable_pub, missing_docs)]

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
    pub async fn start(yaml: &str) -> Self {
        Self::start_with(yaml, None, false).await
    }

    /// Writes the config to a temp file so hot reload can watch it.
    pub async fn start_with_file(yaml: &str) -> Self {
        Self::start_with(yaml, None, true).await
    }

    pub async fn start_with(yaml: &str, ext: Option<Arc<dyn ExtService>>, file: bool) -> Self {
        let cfg = config::parse(yaml).unwrap_or_else(|e| panic!("test config refused:\n{e}"));
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
                plugins: ext.is_none() && yaml.contains("# test: start plugin host"),
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

/// A tenant config block for tests (prefixed with two spaces per level).
pub fn base_config(tenant_extra: &str) -> String {
    format!(
        r#"version: 1
gateway:
  handshake_limit: {{ enabled: false }}
  drain_grace_ms: 3000
tenants:
  - id: acme
    api_keys: ["acme-key-0123456789"]
    auth:
      tickets: {{ t1: u1, t2: u2, t3: u3, t4: u4 }}
    policy:
      ext_allowlist: ["room:*", "chat:*", "echo:*", "game:*"]
      hot_allowlist: ["1:*", "2:*"]
    hot_services:
      - {{ id: 1, kind: relay }}
      - {{ id: 2, kind: echo }}
{tenant_extra}
  - id: other
    api_keys: ["other-key-0123456789"]
    auth:
      tickets: {{ t1: u1 }}
    policy:
      ext_allowlist: ["*"]
"#
    )
}

pub fn request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    url.into_client_request().expect("request")
}
