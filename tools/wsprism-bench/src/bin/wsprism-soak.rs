//! `wsprism-soak`: thousands of benign sessions chatting in rooms while the
//! hostile-input attacks run together against a release build of the gateway.
//! Driven by `scripts/soak.sh`; not part of CI.
//!
//! ```text
//! cargo build --release -p wsprism -p wsprism-bench
//! target/release/wsprism-soak --gateway-bin target/release/wsprism \
//!     [--sessions 10000] [--phase-secs 60] [--plugins DIR]
//! ```
//!
//! Owns: the gateway child process (started with a generated config in a temp
//! dir, killed on exit), the benign sessions, the attackers and the report.
//! The attackers' hand-made frames come from the `raw_ws` crate
//! (`tools/raw-ws`), the same client the gateway's hostile-transport tests use.
//!
//! Phases: connect every benign session (rooms of 10) → baseline (steady chat,
//! 100 probe sessions measure the round trip of their own chat message) →
//! attack (the same traffic plus slowloris, silent sockets, ping floods, lying
//! frame lengths, fragment hoarders, malformed JSON, handshake abuse, an IP
//! spray, slow consumers, trickle readers, room floods, 64 KiB chat spam into
//! benign rooms, connection floods past `max_connections`, a reload storm and,
//! with `--plugins`, plugin faults while benign sessions call the same plugin).
//! Prints benign p50/p99 per phase, benign disconnects, the benign plugin
//! calls answered, and the gateway's peak RSS (VmHWM).
//!
//! A refused or failed step panics: in the driver that ends the soak with the
//! reason, in an attack task only that attempt (see `main`'s panic hook).
#![allow(clippy::print_stdout)] // The report is the program's output.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use raw_ws::{
    BINARY, CONT, PING, RawWs, TEXT, frame, header, http_exchange, masked, upgrade_request,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const USAGE: &str = "usage: wsprism-soak [--gateway-bin target/release/wsprism] \
    [--sessions 10000] [--phase-secs 60] [--plugins DIR]\n\n\
    Starts the gateway binary with a generated config, connects the benign \
    sessions, runs a baseline phase and then an attack phase of --phase-secs \
    each, and prints the report. --plugins: a directory holding faults.wasm \
    (sdk/examples) to add plugin faults to the attacks. See scripts/soak.sh.";

/// Command line (see [`USAGE`]).
struct Args {
    gateway_bin: PathBuf,
    sessions: usize,
    phase_secs: u64,
    plugins: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        gateway_bin: PathBuf::from("target/release/wsprism"),
        sessions: 10_000,
        phase_secs: 60,
        plugins: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--gateway-bin" => a.gateway_bin = v.into(),
            "--sessions" => a.sessions = v.parse().expect("--sessions N"),
            "--phase-secs" => a.phase_secs = v.parse().expect("--phase-secs N"),
            "--plugins" => a.plugins = Some(v.into()),
            other => panic!("unknown argument {other}\n{USAGE}"),
        }
    }
    a
}

/// Connection cap of the soak gateway: room for the benign sessions and the
/// attackers' sessions, so the connection flood reaches it.
fn max_connections(sessions: usize) -> usize {
    sessions + 1_500
}

fn config(plugins: &Path, with_faults: bool, variant: u32, sessions: usize) -> String {
    let routes = if with_faults {
        "    routes:\n      - { svc: faults, plugin: faults }\n"
    } else {
        ""
    };
    format!(
        r#"version: 1
gateway:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  handshake_limit: {{ enabled: true, global_rps: 20000, global_burst: 40000, per_ip_rps: 20000, per_ip_burst: 40000, max_ip_entries: 2000 }}
  queues: {{ reliable_capacity: 256, lossy_capacity: 64 }}
  drain_grace_ms: 3000
  max_connections: {}
  plugins: {{ dir: "{}", watch: false, call_timeout_ms: 50, cache_dir: "{}" }}
tenants:
  - id: soak
    auth:
      tickets: {{ benign: benign, probe: probe, bad: attacker }}
    limits: {{ max_frame_bytes: 65536 }}
    policy:
      rate_limit_rps: 100
      rate_limit_burst: 200
      sessions: {{ max_sessions_per_user: 100000 }}
      ext_allowlist: ["room:*", "chat:*", "faults:*"]
      error_budget: {{ max_errors: 50, window_ms: 10000 }}
{routes}# reload-storm variant {variant}
"#,
        max_connections(sessions),
        plugins.display(),
        plugins.with_file_name("compile-cache").display(),
    )
}

struct Gateway {
    child: Child,
    addr: SocketAddr,
    config: PathBuf,
}

impl Gateway {
    fn start(bin: &Path, dir: &Path, yaml: &str) -> Self {
        let config = dir.join("wsprism.yaml");
        std::fs::write(&config, yaml).expect("write the gateway config");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "error,wsprism=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let prefix = "wsPrism gateway active at ";
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("gateway start line");
            if let Some(at) = line.find(prefix) {
                let a: String = line[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                break a.parse().expect("the start line names the listen address");
            }
        };
        // Keep draining stderr so the gateway never blocks on it.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self {
            child,
            addr,
            config,
        }
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                / 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shared counters and latency samples.
#[derive(Default)]
struct Stats {
    phase: AtomicU64,
    stopping: AtomicBool,
    benign_disconnects: AtomicU64,
    benign_received: AtomicU64,
    latencies: [Mutex<Vec<u32>>; 2],
    attacks: AtomicU64,
    attack_cut: AtomicU64,
    /// Benign calls to the plugin the fault attack also calls, and answers.
    plugin_calls: AtomicU64,
    plugin_answers: AtomicU64,
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, ticket: &str) -> Option<Ws> {
    let url = format!("ws://{addr}/v1/ws?tenant=soak&ticket={ticket}");
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true)
        .await
        .ok()?;
    Some(ws)
}

async fn join(ws: &mut Ws, room: &str) -> bool {
    let m = json!({"v":1,"svc":"room","type":"join","room":room}).to_string();
    if ws.send(Message::text(m)).await.is_err() {
        return false;
    }
    while let Some(Ok(m)) = ws.next().await {
        if m.to_text().is_ok_and(|t| t.contains("\"joined\"")) {
            return true;
        }
    }
    false
}

/// One benign session: reads everything; every ~10 s (probes: every 200 ms)
/// sends a chat message; probes time their own message's round trip.
async fn benign(ws: Ws, room: String, probe: bool, stats: Arc<Stats>) {
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    // Probes time only their own messages (other probes may share the room).
    let marker = format!("\"msg\":\"probe:{:016x}:", rand::random::<u64>());
    let reader_marker = marker.clone();
    let reader_stats = Arc::clone(&stats);
    let reader = tokio::spawn(async move {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Text(t)) => {
                    reader_stats.benign_received.fetch_add(1, Ordering::Relaxed);
                    if probe && let Some(at) = t.as_str().find(&reader_marker) {
                        let rest = &t.as_str()[at + reader_marker.len()..];
                        let nanos: String = rest.chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(sent) = nanos.parse::<u64>() {
                            let now = start.elapsed().as_micros() as u64;
                            let phase = reader_stats.phase.load(Ordering::Relaxed) as usize;
                            if phase < 2 {
                                reader_stats.latencies[phase]
                                    .lock()
                                    .push(now.saturating_sub(sent) as u32);
                            }
                        }
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !reader_stats.stopping.load(Ordering::Relaxed) {
            reader_stats
                .benign_disconnects
                .fetch_add(1, Ordering::Relaxed);
        }
    });
    let every = if probe {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(8_000 + rand::random::<u64>() % 4_000)
    };
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 2_000)).await;
    let mut tick = tokio::time::interval(every);
    while !stats.stopping.load(Ordering::Relaxed) {
        tick.tick().await;
        let msg = if probe {
            format!("{}{}", &marker[7..], start.elapsed().as_micros())
        } else {
            "hello room".to_owned()
        };
        let m = json!({"v":1,"svc":"chat","type":"send","room":room,"data":{"msg":msg}});
        if tx.send(Message::text(m.to_string())).await.is_err() {
            break;
        }
    }
    let _ = reader.await;
}

fn key() -> Option<[u8; 4]> {
    Some(rand::random())
}

/// Runs `attack` in a loop until the soak stops.
fn spawn_attack<F, Fut>(stats: &Arc<Stats>, copies: usize, attack: F)
where
    F: Fn(Arc<Stats>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..copies {
        let stats = Arc::clone(stats);
        let attack = attack.clone();
        tokio::spawn(async move {
            while !stats.stopping.load(Ordering::Relaxed) {
                stats.attacks.fetch_add(1, Ordering::Relaxed);
                attack(Arc::clone(&stats)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
}

async fn wait_closed(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A raw attacker session (panics on refusal; attack tasks run under a silent
/// panic hook, so a refused attempt simply ends that attempt).
async fn raw_session(addr: SocketAddr) -> RawWs {
    RawWs::connect(addr, "/v1/ws?tenant=soak&ticket=bad").await
}

/// Spawns one attack attempt so a panic (refused connection) ends only it.
async fn attempt<Fut: std::future::Future<Output = bool> + Send + 'static>(
    stats: &Stats,
    fut: Fut,
) {
    if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(30), tokio::spawn(fut)).await {
        stats.attack_cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// A benign session calling the plugin the fault attack calls (`faults:count`,
/// answered with a reply), one call in flight, counting answers within 5 s.
async fn plugin_bystander(addr: SocketAddr, stats: Arc<Stats>) {
    let Some(mut ws) = connect(addr, "benign").await else {
        return;
    };
    let _authed = ws.next().await;
    let mut seq = 0u64;
    while !stats.stopping.load(Ordering::Relaxed) {
        seq += 1;
        let m = json!({"v":1,"svc":"faults","type":"count","seq":seq}).to_string();
        if ws.send(Message::text(m)).await.is_err() {
            return;
        }
        if stats.phase.load(Ordering::Relaxed) == 1 {
            stats.plugin_calls.fetch_add(1, Ordering::Relaxed);
        }
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                let t = m.to_text().unwrap_or_default();
                if t.contains("\"svc\":\"faults\"") {
                    return true;
                }
            }
            false
        })
        .await;
        if matches!(answered, Ok(true)) && stats.phase.load(Ordering::Relaxed) == 1 {
            stats.plugin_answers.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spawn_attacks(
    addr: SocketAddr,
    stats: &Arc<Stats>,
    config_path: PathBuf,
    plugins: &Path,
    faults: bool,
    sessions: usize,
) {
    // Trickle readers: a small receive buffer in a busy room, a few bytes read
    // now and then; the gateway must cut them (slow consumer) and reset.
    spawn_attack(stats, 10, move |st| async move {
        attempt(&st, async move {
            let mut ws =
                RawWs::connect_with_recv_buffer(addr, "/v1/ws?tenant=soak&ticket=bad", 4096).await;
            let room = format!("room-{}", rand::random::<u32>() % 10);
            let join = json!({"v":1,"svc":"room","type":"join","room":room}).to_string();
            ws.send(&masked(TEXT, join.as_bytes())).await;
            let (eof, _) = ws
                .trickle_until_closed(16, Duration::from_millis(500), Duration::from_secs(60))
                .await;
            !matches!(eof, raw_ws::Eof::Open)
        })
        .await;
    });
    // Room floods: join rooms until ROOM_LIMIT.
    spawn_attack(stats, 5, move |st| async move {
        attempt(&st, async move {
            let Some(mut ws) = connect(addr, "bad").await else {
                return false;
            };
            let tag = rand::random::<u32>();
            for n in 0..1_000 {
                let m =
                    json!({"v":1,"svc":"room","type":"join","room":format!("flood-{tag:x}-{n}")});
                if ws.send(Message::text(m.to_string())).await.is_err() {
                    return true;
                }
                while let Some(Ok(m)) = ws.next().await {
                    let t = m.to_text().unwrap_or_default();
                    if t.contains("ROOM_LIMIT") {
                        return true;
                    }
                    if t.contains("\"joined\"") || t.contains("\"error\"") {
                        break;
                    }
                }
            }
            false
        })
        .await;
    });
    // 64 KiB chat spam into benign rooms, as fast as the socket takes it: one
    // spammer per room (room-0 .. room-3), each bounded by its connection's
    // inbound byte rate (`max_bytes_per_sec`).
    for target in 0..4 {
        spawn_attack(stats, 1, move |st| async move {
            attempt(&st, async move {
                let Some(mut ws) = connect(addr, "bad").await else {
                    return false;
                };
                let room = format!("room-{target}");
                if !join(&mut ws, &room).await {
                    return false;
                }
                let msg = "s".repeat(60 * 1024);
                let m = json!({"v":1,"svc":"chat","type":"send","room":room,"data":{"msg":msg}})
                    .to_string();
                let (mut tx, mut rx) = ws.split();
                let reader = tokio::spawn(async move {
                    while let Some(Ok(m)) = rx.next().await {
                        if matches!(m, Message::Close(_))
                            || m.to_text().is_ok_and(|t| t.contains("RATE_LIMITED"))
                        {
                            return true;
                        }
                    }
                    true
                });
                for _ in 0..2_000 {
                    if tx.send(Message::text(m.clone())).await.is_err() || reader.is_finished() {
                        break;
                    }
                }
                matches!(
                    tokio::time::timeout(Duration::from_secs(10), reader).await,
                    Ok(Ok(true))
                )
            })
            .await;
        });
    }
    // Connection floods: more silent sockets than the cap leaves free; the
    // ones past it must get 503 or be closed at accept.
    let flood = max_connections(sessions).saturating_sub(sessions) + 500;
    spawn_attack(stats, 1, move |st| async move {
        attempt(&st, async move {
            let mut socks = Vec::with_capacity(flood);
            for _ in 0..flood {
                if let Ok(s) = TcpStream::connect(addr).await {
                    socks.push(s);
                }
            }
            // The last ones are past the cap (and its 503 margin).
            let mut refused = false;
            for s in socks.iter_mut().rev().take(50) {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
                let mut b = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await {
                    Ok(Ok(0) | Err(_)) => refused = true,
                    Ok(Ok(n)) if b[..n].starts_with(b"HTTP/1.1 503") => refused = true,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            refused
        })
        .await;
    });
    // Slowloris: drip a request head a byte every 500 ms until cut.
    spawn_attack(stats, 200, move |st| async move {
        attempt(&st, async move {
            let Ok(mut s) = TcpStream::connect(addr).await else { return false };
            let head = b"GET /v1/ws?tenant=soak&ticket=benign HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaa";
            for i in 0.. {
                if s.write_all(&[head[i % head.len()]]).await.is_err() {
                    return true;
                }
                let mut b = [0u8; 64];
                let read = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await;
                if let Ok(Ok(0) | Err(_)) = read {
                    return true;
                }
            }
            false
        })
        .await;
    });
    // Silent sockets.
    spawn_attack(stats, 200, move |st| async move {
        attempt(&st, async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return false;
            };
            wait_closed(&mut s, Duration::from_secs(20)).await
        })
        .await;
    });
    // Ping floods without reading.
    spawn_attack(stats, 10, move |st| async move {
        attempt(&st, async move {
            let mut ws = raw_session(addr).await;
            let mut batch = Vec::new();
            for _ in 0..500 {
                batch.extend(masked(PING, &[b'p'; 125]));
            }
            for _ in 0..40 {
                if !ws.try_send(&batch).await {
                    break;
                }
            }
            ws.close_code().await.is_some()
        })
        .await;
    });
    // Frame headers declaring 2^62 bytes, and oversize frames.
    spawn_attack(stats, 5, move |st| async move {
        attempt(&st, async move {
            let mut ws = raw_session(addr).await;
            let bytes = if rand::random::<bool>() {
                header(true, 0, BINARY, 1 << 62, key())
            } else {
                masked(TEXT, &[b'x'; 70_000])
            };
            let _ = ws.try_send(&bytes).await;
            ws.close_code().await.is_some()
        })
        .await;
    });
    // Fragment hoarders: 60 KB parked in a message that never ends.
    spawn_attack(stats, 100, move |st| async move {
        attempt(&st, async move {
            let mut ws = raw_session(addr).await;
            let mut bytes = frame(false, 0, TEXT, b"{", key());
            for _ in 0..60 {
                bytes.extend(frame(false, 0, CONT, &[b' '; 1_000], key()));
            }
            let _ = ws.try_send(&bytes).await;
            ws.close_code().await.is_some()
        })
        .await;
    });
    // Malformed JSON until 1008.
    spawn_attack(stats, 20, move |st| async move {
        attempt(&st, async move {
            let Some(mut ws) = connect(addr, "bad").await else {
                return false;
            };
            let junk = [
                "{",
                "null",
                "[[[[[[[[",
                r#"{"v":"1","svc":5}"#,
                r#"{"v":1,"svc":"room","type":"join","room":{"a":1}}"#,
            ];
            for i in 0..1000 {
                if ws.send(Message::text(junk[i % junk.len()])).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        })
        .await;
    });
    // Handshake abuse: huge headers, long URIs, bad versions, duplicates.
    spawn_attack(stats, 5, move |st| async move {
        attempt(&st, async move {
            let Ok(mut s) = TcpStream::connect(addr).await else { return false };
            let big = "a".repeat(40_000);
            let req = match rand::random::<u8>() % 4 {
                0 => upgrade_request(addr, "/v1/ws?tenant=soak&ticket=bad", &format!("X-Big: {big}\r\n")),
                1 => upgrade_request(addr, &format!("/v1/ws?tenant=soak&ticket={}", &big[..20_000]), ""),
                2 => upgrade_request(addr, "/v1/ws?tenant=soak&tenant=soak&ticket=bad", ""),
                _ => b"GET /v1/ws?tenant=soak&ticket=bad HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n".to_vec(),
            };
            let (status, _, _) = http_exchange(&mut s, &req).await;
            (400..500).contains(&status)
        })
        .await;
    });
    // IP spray against the handshake limiter.
    spawn_attack(stats, 20, move |st| async move {
        attempt(&st, async move {
            let n: u32 = rand::random::<u32>() % 60_000;
            let src = Ipv4Addr::new(127, 100 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
            let Ok(sock) = TcpSocket::new_v4() else {
                return false;
            };
            if sock.bind(SocketAddr::from((src, 0))).is_err() {
                return false;
            }
            let Ok(mut s) = sock.connect(addr).await else {
                return false;
            };
            let (status, _, _) = http_exchange(
                &mut s,
                &upgrade_request(addr, "/v1/ws?tenant=soak&ticket=nope", ""),
            )
            .await;
            status == 401 || status == 429
        })
        .await;
    });
    // Slow consumers: join a busy benign room and never read.
    spawn_attack(stats, 20, move |st| async move {
        attempt(&st, async move {
            let Some(mut ws) = connect(addr, "bad").await else {
                return false;
            };
            let room = format!("room-{}", rand::random::<u32>() % 10);
            if !join(&mut ws, &room).await {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(120)).await;
            drop(ws);
            true
        })
        .await;
    });
    // Plugin faults.
    if faults {
        spawn_attack(stats, 5, move |st| async move {
            attempt(&st, async move {
                let Some(mut ws) = connect(addr, "bad").await else {
                    return false;
                };
                for ty in ["loop", "oom", "recurse", "panic", "flood", "bad-json"]
                    .iter()
                    .cycle()
                    .take(60)
                {
                    let m = json!({"v":1,"svc":"faults","type":ty}).to_string();
                    if ws.send(Message::text(m)).await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            })
            .await;
        });
    }
    // Reload storm: 20 writes per second, valid and broken in turn.
    let plugins = plugins.to_path_buf();
    let st = Arc::clone(stats);
    tokio::spawn(async move {
        let mut i = 0u32;
        while !st.stopping.load(Ordering::Relaxed) {
            i += 1;
            let text = if i.is_multiple_of(3) {
                "version: 1\ntenants: [".to_owned()
            } else {
                config(&plugins, faults, i, sessions)
            };
            let _ = tokio::fs::write(&config_path, text).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = tokio::fs::write(&config_path, config(&plugins, faults, 0, sessions)).await;
    });
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[idx]) / 1000.0
}

fn main() {
    let a = args();
    // Attack attempts that are refused end with a panic in their own task.
    // Only the driver itself (the main thread) reports panics.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("create the plugins dir");
    let mut faults = false;
    if let Some(src) = &a.plugins {
        let f = src.join("faults.wasm");
        if f.exists() {
            std::fs::copy(&f, plugins.join("faults.wasm")).expect("copy faults.wasm");
            faults = true;
        }
    }
    let gw = Gateway::start(
        &a.gateway_bin,
        dir.path(),
        &config(&plugins, faults, 0, a.sessions),
    );
    let addr = gw.addr;
    println!(
        "soak: gateway at {addr}, {} benign sessions, {} s per phase, plugin faults: {faults}",
        a.sessions, a.phase_secs
    );
    let stats = Arc::new(Stats::default());

    let started = Instant::now();
    let rooms = (a.sessions / 10).max(1);
    let mut connected = 0usize;
    let mut i = 0usize;
    while i < a.sessions {
        let n = (a.sessions - i).min(200);
        let mut batch = Vec::new();
        for k in i..i + n {
            let probe = k.is_multiple_of((a.sessions / 100).max(1));
            let room = format!("room-{}", k % rooms);
            batch.push(tokio::spawn(async move {
                let mut ws = connect(addr, if probe { "probe" } else { "benign" }).await?;
                let _authed = ws.next().await?;
                join(&mut ws, &room).await.then_some((ws, room, probe))
            }));
        }
        for b in batch {
            if let Ok(Some((ws, room, probe))) = b.await {
                connected += 1;
                tokio::spawn(benign(ws, room, probe, Arc::clone(&stats)));
            }
        }
        i += n;
    }
    if faults {
        for _ in 0..20 {
            tokio::spawn(plugin_bystander(addr, Arc::clone(&stats)));
        }
    }
    let (rss, _) = gw.rss_mib();
    println!(
        "soak: {connected}/{} benign sessions up after {:?}; gateway RSS {rss} MiB",
        a.sessions,
        started.elapsed()
    );

    let sample = |gw: &Gateway, peak: &mut u64| {
        let (rss, _) = gw.rss_mib();
        *peak = (*peak).max(rss);
    };
    let mut peak_base = 0;
    let phase_end = Instant::now() + Duration::from_secs(a.phase_secs);
    while Instant::now() < phase_end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sample(&gw, &mut peak_base);
    }
    stats.phase.store(1, Ordering::Relaxed);
    let disconnects_before = stats.benign_disconnects.load(Ordering::Relaxed);
    println!("soak: baseline done; starting attacks");
    spawn_attacks(
        addr,
        &stats,
        gw.config.clone(),
        &plugins,
        faults,
        a.sessions,
    );
    let mut peak_attack = 0;
    let phase_end = Instant::now() + Duration::from_secs(a.phase_secs);
    while Instant::now() < phase_end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        sample(&gw, &mut peak_attack);
    }
    stats.phase.store(2, Ordering::Relaxed);
    let (_, hwm) = gw.rss_mib();
    let disconnects = stats.benign_disconnects.load(Ordering::Relaxed);
    stats.stopping.store(true, Ordering::Relaxed);
    let mut base = std::mem::take(&mut *stats.latencies[0].lock());
    let mut attack = std::mem::take(&mut *stats.latencies[1].lock());
    println!("== soak results");
    println!("benign sessions:          {connected}");
    println!(
        "benign messages received: {}",
        stats.benign_received.load(Ordering::Relaxed)
    );
    println!(
        "benign chat round trip:   before p50 {:.1} ms p99 {:.1} ms ({} samples); during attacks p50 {:.1} ms p99 {:.1} ms ({} samples)",
        percentile(&mut base, 0.5),
        percentile(&mut base, 0.99),
        base.len(),
        percentile(&mut attack, 0.5),
        percentile(&mut attack, 0.99),
        attack.len()
    );
    println!("benign disconnects:       {disconnects} (before attacks: {disconnects_before})");
    if faults {
        println!(
            "benign plugin calls:      {} of {} answered during the attacks (same plugin as the faults)",
            stats.plugin_answers.load(Ordering::Relaxed),
            stats.plugin_calls.load(Ordering::Relaxed)
        );
    }
    println!(
        "attack attempts:          {} ({} ended by the gateway as expected)",
        stats.attacks.load(Ordering::Relaxed),
        stats.attack_cut.load(Ordering::Relaxed)
    );
    println!(
        "gateway RSS peak:         baseline {peak_base} MiB, during attacks {peak_attack} MiB, VmHWM {hwm} MiB"
    );
    drop(gw);
    if disconnects > 0 {
        std::process::exit(1);
    }
}
