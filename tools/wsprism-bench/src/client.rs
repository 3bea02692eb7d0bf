//! The client side every mode shares: where to connect, how to authenticate,
//! which loopback source address each socket binds, the WebSocket handshake and
//! the `sys.authed` / `room.join` exchanges.
//!
//! Client sockets use the gateway's buffer settings (4 KiB read chunk, 8 KiB
//! write buffer), so 10,000 idle client connections cost the load generator tens
//! of MiB, not tungstenite's default 128 KiB read buffer each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// A client WebSocket over plain TCP.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// How long a handshake, `sys.authed` or `sys.joined` may take before the bench
/// gives up on that connection.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Path appended to a `--url` without one.
const DEFAULT_PATH: &str = "/v1/ws";
/// Connections per loopback source address when `--src-ips` is automatic: well
/// under the ~28,000 ephemeral ports Linux gives one (source, destination) pair.
const CONNS_PER_SOURCE_IP: usize = 5_000;
/// Lifetime of client-signed JWTs.
const JWT_TTL_SECS: u64 = 3_600;
/// Client socket buffers: the gateway's own settings (`transport::upgrade`).
const READ_BUFFER_BYTES: usize = 4 * 1024;
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Where to connect and as whom.
#[derive(Args, Debug, Clone)]
pub(crate) struct TargetArgs {
    /// Gateway or baseline URL; `/v1/ws` is appended when the URL has no path.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub(crate) url: String,
    /// Tenant id, sent as `?tenant=`.
    #[arg(long, default_value = "acme")]
    pub(crate) tenant: String,
    /// Static ticket, sent as `?ticket=` (unused with --jwt-secret).
    #[arg(long, default_value = "dev")]
    pub(crate) ticket: String,
    /// Sign a fresh HS256 JWT per connection with this secret instead of using
    /// --ticket (claims: sub = "<jwt-sub-prefix>-<n>", exp = now + 1 h).
    #[arg(long)]
    pub(crate) jwt_secret: Option<String>,
    /// `sub` prefix of client-signed JWTs; each connection gets its own user.
    #[arg(long, default_value = "bench")]
    pub(crate) jwt_sub_prefix: String,
    /// Bind client sockets to this many loopback source addresses (127.0.0.2,
    /// 127.0.0.3, ...) in turn; 0 lets the OS choose. Default: 0 below 1,000
    /// connections, else one address per 5,000 connections (at least 2).
    #[arg(long)]
    pub(crate) src_ips: Option<usize>,
    /// Handshakes in flight at once while opening connections.
    #[arg(long, default_value_t = 64)]
    pub(crate) connect_concurrency: usize,
}

enum Auth {
    Ticket(String),
    Jwt { key: EncodingKey, prefix: String },
}

/// Opens authenticated connections to one target.
pub(crate) struct Connector {
    /// `ws://host:port/path` without the query.
    endpoint: String,
    addr: SocketAddr,
    tenant: String,
    auth: Auth,
    sources: Vec<Ipv4Addr>,
    next_source: AtomicUsize,
    config: WebSocketConfig,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint)
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// The socket settings the gateway applies to its side of the connection.
pub(crate) fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES + 2 * MAX_FRAME_BYTES + 64 * 1024)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

impl Connector {
    /// Resolves the target for a run that will hold up to `conns` connections at
    /// once (which sizes the automatic source-address spread).
    ///
    /// # Errors
    /// A URL that is not `ws://host:port[/path]`, a host that does not resolve to
    /// IPv4, or source addresses requested for a non-loopback target.
    pub(crate) async fn new(args: &TargetArgs, conns: usize) -> Result<Arc<Self>> {
        let uri: Uri = args
            .url
            .parse()
            .with_context(|| format!("--url `{}` is not a URL", args.url))?;
        if uri.scheme_str() != Some("ws") {
            bail!(
                "--url `{}`: only ws:// is supported (the bench measures the gateway, not TLS)",
                args.url
            );
        }
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("--url `{}` has no host", args.url))?;
        let host_port = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| anyhow!("{host_port} has no IPv4 address"))?;
        let path = match uri.path() {
            "" | "/" => DEFAULT_PATH,
            p => p,
        };
        let n_sources = args.src_ips.unwrap_or(if conns < 1_000 {
            0
        } else {
            conns.div_ceil(CONNS_PER_SOURCE_IP).max(2)
        });
        if n_sources > 0 && !addr.ip().is_loopback() {
            bail!("--src-ips needs a loopback target; {addr} is not one");
        }
        if n_sources > 250 {
            bail!("--src-ips {n_sources}: at most 250 loopback addresses (127.0.0.2-127.0.0.251)");
        }
        let sources = (0..n_sources)
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
            .collect();
        let auth = match &args.jwt_secret {
            Some(secret) => Auth::Jwt {
                key: EncodingKey::from_secret(secret.as_bytes()),
                prefix: args.jwt_sub_prefix.clone(),
            },
            None => Auth::Ticket(args.ticket.clone()),
        };
        Ok(Arc::new(Self {
            endpoint: format!("ws://{host_port}{path}"),
            addr,
            tenant: args.tenant.clone(),
            auth,
            sources,
            next_source: AtomicUsize::new(0),
            config: socket_config(),
        }))
    }

    /// The endpoint, for reports.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn ticket(&self, n: u64) -> Result<String> {
        match &self.auth {
            Auth::Ticket(t) => Ok(t.clone()),
            Auth::Jwt { key, prefix } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let claims = serde_json::json!({
                    "sub": format!("{prefix}-{n}"),
                    "iat": now,
                    "exp": now + JWT_TTL_SECS,
                });
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
                    .context("cannot sign the JWT")
            }
        }
    }

    fn url(&self, n: u64, room: Option<&str>) -> Result<String> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("tenant", &self.tenant);
        q.append_pair("ticket", &self.ticket(n)?);
        if let Some(room) = room {
            // The gateway ignores unknown parameters; the baseline relay puts
            // the connection into this room.
            q.append_pair("room", room);
        }
        Ok(format!("{}?{}", self.endpoint, q.finish()))
    }

    /// TCP connect (from the next source address) and WebSocket upgrade as
    /// connection number `n`; `sys.authed` is not read yet.
    ///
    /// # Errors
    /// The TCP connect or the upgrade failed; an HTTP refusal names its status.
    pub(crate) async fn open(&self, n: u64, room: Option<&str>) -> Result<Ws> {
        self.open_with(n, room, None).await
    }

    /// [`Connector::open`] with the socket's receive buffer set to `rcvbuf`
    /// bytes (a client that reads slowly and buffers little).
    ///
    /// # Errors
    /// As for `open`.
    pub(crate) async fn open_with(
        &self,
        n: u64,
        room: Option<&str>,
        rcvbuf: Option<u32>,
    ) -> Result<Ws> {
        let request = self
            .url(n, room)?
            .into_client_request()
            .context("bad request URL")?;
        let socket = TcpSocket::new_v4().context("socket")?;
        if let Some(bytes) = rcvbuf {
            socket.set_recv_buffer_size(bytes).context("SO_RCVBUF")?;
        }
        if !self.sources.is_empty() {
            let i = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            socket
                .bind(SocketAddr::new(IpAddr::V4(self.sources[i]), 0))
                .with_context(|| format!("cannot bind source address {}", self.sources[i]))?;
        }
        let stream = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config))
                .await
                .map_err(describe_handshake_error)?;
        Ok(ws)
    }

    /// [`Connector::open`] and wait for `sys.authed`.
    ///
    /// # Errors
    /// As for `open`, or no `sys.authed` within [`HANDSHAKE_TIMEOUT`].
    pub(crate) async fn connect(&self, n: u64, room: Option<&str>) -> Result<Ws> {
        let mut ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.open(n, room))
            .await
            .map_err(|_| anyhow!("timeout: no upgrade within {HANDSHAKE_TIMEOUT:?}"))??;
        expect_text_type(&mut ws, "authed").await?;
        Ok(ws)
    }
}

fn describe_handshake_error(e: tungstenite::Error) -> anyhow::Error {
    match e {
        tungstenite::Error::Http(resp) => anyhow!("http {}", resp.status().as_u16()),
        other => anyhow!("handshake failed: {other}"),
    }
}

/// The fields of a gateway envelope the bench looks at.
#[derive(Debug, Deserialize)]
pub(crate) struct Head {
    /// `type`.
    #[serde(rename = "type", default)]
    pub(crate) ty: Option<String>,
    /// `seq` (ack, error, or an echoed envelope).
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    /// `data`.
    #[serde(default)]
    pub(crate) data: Option<serde_json::Value>,
}

/// Reads frames until a text frame of type `ty` (other frames are skipped); a
/// `sys.error` or a close fails.
///
/// # Errors
/// Close, socket error, a `sys.error`, or nothing within [`HANDSHAKE_TIMEOUT`].
pub(crate) async fn expect_text_type(ws: &mut Ws, ty: &str) -> Result<Head> {
    let wait = async {
        loop {
            match ws.next().await {
                None => bail!("connection closed while waiting for `{ty}`"),
                Some(Err(e)) => bail!("socket error while waiting for `{ty}`: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let head: Head = serde_json::from_str(t.as_str())
                        .with_context(|| format!("not an envelope while waiting for `{ty}`"))?;
                    match head.ty.as_deref() {
                        Some(got) if got == ty => return Ok(head),
                        Some("error") => bail!(
                            "sys.error while waiting for `{ty}`: {}",
                            head.data.unwrap_or_default()
                        ),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    bail!("closed while waiting for `{ty}`: {frame:?}")
                }
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow!("timeout: no `{ty}` within {HANDSHAKE_TIMEOUT:?}"))?
}

/// Joins `room` (`{"v":1,"svc":"room","type":"join","room":R}`) and waits for
/// `sys.joined`. The baseline answers the same way.
///
/// # Errors
/// As for [`expect_text_type`].
pub(crate) async fn join(ws: &mut Ws, room: &str) -> Result<()> {
    let req = serde_json::json!({"v": 1, "svc": "room", "type": "join", "room": room});
    ws.send(Message::text(req.to_string()))
        .await
        .context("cannot send join")?;
    expect_text_type(ws, "joined").await?;
    Ok(())
}

/// A short label for a connection failure, for per-reason counts.
pub(crate) fn failure_label(e: &anyhow::Error) -> String {
    let s = e.to_string();
    if s.starts_with("http ") {
        s
    } else if s.starts_with("timeout") {
        "timeout".to_owned()
    } else if s.contains("cannot connect") || s.contains("cannot bind") {
        "tcp connect".to_owned()
    } else {
        "other".to_owned()
    }
}
