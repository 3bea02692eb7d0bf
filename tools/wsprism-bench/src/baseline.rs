//! `baseline`: the smallest tokio-tungstenite server that does what the gateway
//! does on the measured paths, with the gateway's socket settings and nothing
//! else: no auth, no policy, no metrics, no JSON parsing beyond a `join` check.
//!
//! What it does, per connection:
//! - accepts `GET /v1/ws?...` (any other path gets 404) with `TCP_NODELAY`, a
//!   4 KiB read buffer, an 8 KiB write buffer and a 64 KiB frame/message limit,
//!   as `transport::upgrade` configures the gateway's sockets;
//! - sends `{"v":1,"svc":"sys","type":"authed","data":{..,"baseline":true}}`
//!   first, so clients share the gateway's handshake code (`tenant` and
//!   `ticket` are not checked);
//! - runs one task with a reader and a single writer, like a gateway session.
//!   The writer drains a bounded queue (256 frames, overflow drops the new frame
//!   and counts it; a mutex-guarded `VecDeque` plus `Notify`, allocated on first
//!   use) in batches of up to 64 frames per flush, like the gateway's outbox +
//!   writer;
//! - answers a text frame containing `"type":"join"` with
//!   `{"v":1,"svc":"sys","type":"joined","room":R,"data":{"room":R,"peer":N,"members":M}}`.
//!
//! `--mode echo`: every other data frame is sent back to its sender.
//! `--mode relay`: the connection is a member of the room named by `?room=`
//! (none: no room) from the upgrade on; a binary frame goes to every other member
//! (the Hot Lane relay with `include_sender: false`), a text frame to every
//! member including the sender (as `chat` does, but forwarded as received).
//! Frames are shared (`Bytes` clones), never copied per recipient.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, RwLock};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use crate::client::socket_config;

/// What the baseline does with data frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BaselineMode {
    /// Send every frame back to its sender.
    Echo,
    /// Forward frames to the other members of the `?room=` room.
    Relay,
}

/// `baseline` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct BaselineArgs {
    /// Echo or room relay.
    #[arg(long, value_enum)]
    mode: BaselineMode,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

/// Frames queued per connection, as the gateway's default `lossy_capacity`.
const QUEUE_CAPACITY: usize = 256;
/// Frames written per flush, as the gateway writer's batch.
const MAX_BATCH: usize = 64;
/// Path accepted for upgrades.
const WS_PATH: &str = "/v1/ws";

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
type Stream = SplitStream<WebSocketStream<TcpStream>>;

/// One room member as the relay sees it.
struct Member {
    id: u64,
    queue: Arc<Queue>,
}

/// A connection's outbound frames, drained by its writer. Allocates nothing
/// until a frame is queued.
#[derive(Default)]
struct Queue {
    frames: Mutex<VecDeque<Message>>,
    ready: Notify,
}

impl Queue {
    /// Queues a frame, or drops it (counted) when [`QUEUE_CAPACITY`] are queued.
    fn push(&self, state: &State, msg: Message) {
        {
            let mut q = self.frames.lock();
            if q.len() >= QUEUE_CAPACITY {
                state.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push_back(msg);
        }
        self.ready.notify_one();
    }
}

/// Server-wide state.
struct State {
    mode: BaselineMode,
    rooms: RwLock<HashMap<Arc<str>, Vec<Member>>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

/// Runs the server until SIGINT/SIGTERM.
///
/// # Errors
/// The listener cannot be bound.
pub(crate) async fn run(args: BaselineArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    // First line of stdout: scripts and tests read the bound address from it.
    println!("baseline {:?} listening on {addr}", args.mode);
    let state = Arc::new(State {
        mode: args.mode,
        rooms: RwLock::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    loop {
        let (stream, _peer) = tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        tokio::spawn(serve(stream, Arc::clone(&state)));
    }
    eprintln!(
        "baseline: stopped; {} frames dropped on full queues",
        state.dropped.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Query parameters the baseline reads.
#[derive(Default)]
struct Query {
    tenant: String,
    room: Option<Arc<str>>,
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    let mut query = Query::default();
    // The signature is tungstenite's `Callback`; its error type is an HTTP response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != WS_PATH {
            let mut e = ErrorResponse::new(Some("not found".to_owned()));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
            match &*k {
                "tenant" => query.tenant = v.into_owned(),
                "room" if !v.is_empty() => query.room = Some(Arc::from(&*v)),
                _ => {}
            }
        }
        Ok(resp)
    };
    let upgraded =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(socket_config()))
            .await;
    if let Ok(ws) = upgraded {
        session(ws, query, state).await;
    }
}

async fn session(ws: WebSocketStream<TcpStream>, query: Query, state: Arc<State>) {
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let queue = Arc::new(Queue::default());
    let authed = json!({"v": 1, "svc": "sys", "type": "authed",
        "data": {"tenant": query.tenant, "user": "baseline", "sid": format!("{id:016x}"), "baseline": true}})
    .to_string();
    queue.push(&state, Message::text(authed));
    let room = match (state.mode, query.room) {
        (BaselineMode::Relay, Some(r)) => {
            state
                .rooms
                .write()
                .entry(Arc::clone(&r))
                .or_default()
                .push(Member {
                    id,
                    queue: Arc::clone(&queue),
                });
            Some(r)
        }
        _ => None,
    };
    let (mut sink, mut stream) = ws.split();
    tokio::select! {
        () = read(&mut stream, id, &queue, room.as_deref(), &state) => {}
        () = write(&mut sink, &queue) => {}
    }
    if let Some(r) = &room {
        let mut rooms = state.rooms.write();
        if let Some(members) = rooms.get_mut(r) {
            members.retain(|m| m.id != id);
            if members.is_empty() {
                rooms.remove(r);
            }
        }
    }
    // Flush a pending Close reply, bounded.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sink.close()).await;
}

async fn read(stream: &mut Stream, id: u64, queue: &Queue, room: Option<&str>, state: &State) {
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Text(t) if t.as_str().contains(r#""type":"join""#) => {
                let r = room.unwrap_or_default();
                let members = room
                    .and_then(|r| state.rooms.read().get(r).map(Vec::len))
                    .unwrap_or(0);
                let joined = json!({"v": 1, "svc": "sys", "type": "joined", "room": r,
                    "data": {"room": r, "peer": id, "members": members}});
                queue.push(state, Message::text(joined.to_string()));
            }
            Message::Text(_) | Message::Binary(_) => match (state.mode, room) {
                (BaselineMode::Echo, _) => queue.push(state, msg),
                (BaselineMode::Relay, Some(r)) => {
                    let include_sender = matches!(msg, Message::Text(_));
                    let rooms = state.rooms.read();
                    for m in rooms.get(r).into_iter().flatten() {
                        if include_sender || m.id != id {
                            m.queue.push(state, msg.clone());
                        }
                    }
                }
                (BaselineMode::Relay, None) => {}
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

async fn write(sink: &mut Sink, queue: &Queue) {
    let mut batch = Vec::new();
    loop {
        let ready = queue.ready.notified();
        {
            let mut q = queue.frames.lock();
            let n = q.len().min(MAX_BATCH);
            batch.extend(q.drain(..n));
        }
        if batch.is_empty() {
            ready.await;
            continue;
        }
        for msg in batch.drain(..) {
            if sink.feed(msg).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}
