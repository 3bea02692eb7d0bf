//! Operational abuse: broken config files on reload (syntax, types, unknown
//! keys, empty, half-written, alias bombs, oversize), a reload storm, and
//! SIGTERM against the real binary with 1,000 sessions and traffic (every client
//! gets what was sent before the signal, then 1001; a second SIGTERM forces the
//! exit). Loopback only.

use crate::common;
use crate::hostile_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestConfig, TestGateway, eventually, metric};
use futures_util::{SinkExt, StreamExt};
use hostile_support::bystander_answers;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsprism::config::GatewayConfig;

/// Literal YAML on purpose: the broken variants below are edits of its text.
const VALID: &str = r#"version: 1
gateway:
  handshake_limit: { enabled: false }
tenants:
  - id: acme
    auth:
      tickets: { t1: u1, by: bystander }
    policy:
      ext_allowlist: ["room:*"]
"#;

fn alias_bomb() -> String {
    let mut s = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        s.push_str(&format!(
            "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    s.push_str("version: 1\ntenants: *a9\n");
    s
}

#[tokio::test]
async fn broken_config_files_are_refused_on_reload_and_the_old_config_serves() {
    let gw = TestGateway::start_with_file(VALID).await;
    let path = gw.config_path.clone().expect("config path");
    let mut bystander = gw.client("acme", "by").await;
    let half = &VALID[..VALID.find("by: bystander").expect("cut point") + 4];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "syntax error",
            b"version: 1\ntenants: [\n  - id: acme\n".to_vec(),
        ),
        (
            "wrong type",
            VALID.replace("version: 1", "version: \"one\"").into_bytes(),
        ),
        (
            "wrong nested type",
            VALID
                .replace("tickets: { t1: u1, by: bystander }", "tickets: [t1, by]")
                .into_bytes(),
        ),
        (
            "unknown key",
            VALID
                .replace("    policy:", "    colour: blue\n    policy:")
                .into_bytes(),
        ),
        ("empty file", Vec::new()),
        ("comments only", b"# nothing here\n".to_vec()),
        ("half-written file", half.as_bytes().to_vec()),
        ("YAML alias bomb (9^9)", alias_bomb().into_bytes()),
        (
            "100,000 nested sequences",
            format!(
                "version: 1\ntenants: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
        ("not UTF-8", b"version: 1\ntenants: \xff\xfe\n".to_vec()),
        ("a NUL byte", b"version: 1\0\ntenants: []\n".to_vec()),
        (
            "tabs for indentation",
            VALID.replace("    auth:", "\tauth:").into_bytes(),
        ),
        (
            "duplicate keys",
            format!("{VALID}version: 1\n").into_bytes(),
        ),
        (
            "impossible value",
            VALID
                .replace(
                    "  handshake_limit: { enabled: false }",
                    "  queues: { reliable_capacity: 0 }",
                )
                .into_bytes(),
        ),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        std::fs::write(&path, bytes).expect("write config");
        let start = tokio::time::Instant::now();
        let gw2 = Arc::clone(&gw.gw);
        let p = path.clone();
        let applied = tokio::task::spawn_blocking(move || wsprism::reload::reload(&gw2, &p))
            .await
            .expect("reload");
        let took = start.elapsed();
        assert!(!applied, "{what}: a broken config was applied");
        // Generous for debug builds on a loaded machine. The nesting is
        // refused before the YAML scanner, whose time grows with the square
        // of the depth, reads it (this depth took 37 s in a release build
        // without that check); the alias bomb is refused at once.
        assert!(
            took < Duration::from_secs(6),
            "{what}: reload took {took:?}"
        );
        bystander_answers(&mut bystander, i as u64, Duration::from_secs(5)).await;
        // New sessions are admitted under the old config.
        let mut fresh = gw.client("acme", "t1").await;
        bystander_answers(&mut fresh, 1, Duration::from_secs(5)).await;
    }
    // Over the size limit (a sparse 5 MiB file): refused without parsing.
    let f = std::fs::File::create(&path).expect("create");
    f.set_len(5 << 20).expect("set_len");
    drop(f);
    assert!(!wsprism::reload::reload(&gw.gw, &path));
    // Through the file watcher as well.
    let errors = metric(
        &gw.metrics().await,
        "wsprism_config_reloads_total{result=\"error\"}",
    );
    std::fs::write(&path, "version: 1\ntenants: [").expect("write");
    gw.metric_at_least(
        "wsprism_config_reloads_total{result=\"error\"}",
        errors + 1.0,
    )
    .await;
    bystander_answers(&mut bystander, 999, Duration::from_secs(5)).await;
    // And a valid file still applies afterwards.
    std::fs::write(
        &path,
        VALID.replace("by: bystander", "by: bystander, t9: u9"),
    )
    .expect("write");
    eventually("the valid config to apply (t9 admitted)", || async {
        gw.connect("acme", "t9").await.map(drop)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_storm_keeps_the_gateway_responsive() {
    let gw = TestGateway::start_with_file(VALID).await;
    let path = gw.config_path.clone().expect("config path");
    let mut bystander = gw.client("acme", "by").await;
    let variants = [
        VALID.to_owned(),
        VALID.replace(
            "ext_allowlist: [\"room:*\"]",
            "ext_allowlist: [\"room:*\", \"chat:*\"]",
        ),
        "version: 1\ntenants: [".to_owned(),
        alias_bomb(),
    ];
    let writer = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            // 100 writes per second for 3 s.
            for i in 0..300 {
                std::fs::write(&path, &variants[i % variants.len()]).expect("write");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let mut worst = Duration::ZERO;
    let mut n = 0;
    while !writer.is_finished() {
        let start = tokio::time::Instant::now();
        n += 1;
        bystander_answers(&mut bystander, n, Duration::from_secs(5)).await;
        worst = worst.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.expect("writer");
    eprintln!("reload storm: {n} round trips, worst {worst:?}");
    assert!(worst < Duration::from_secs(1), "worst round trip {worst:?}");
    assert!(n >= 20, "only {n} round trips during the storm");
    // The last write wins once the storm is over.
    std::fs::write(
        &path,
        VALID.replace("by: bystander", "by: bystander, t9: u9"),
    )
    .expect("write");
    eventually("the final config to apply (t9 admitted)", || async {
        gw.connect("acme", "t9").await.map(drop)
    })
    .await;
}

const BIN: &str = env!("CARGO_BIN_EXE_wsprism");

/// The real binary, its stderr lines on a channel.
struct Proc {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(dir: &std::path::Path, yaml: &str) -> (Self, String, String) {
        let config = dir.join("wsprism.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "warn,wsprism=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsprism");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Self { child, lines: rx };
        let addr = p.addr_after("wsPrism gateway active at ");
        let admin = p.addr_after("\"admin\":\"");
        (p, addr, admin)
    }

    fn addr_after(&mut self, prefix: &str) -> String {
        for _ in 0..300 {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100))
                && let Some(at) = line.find(prefix)
            {
                return line[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
            }
        }
        panic!("no log line with {prefix:?}");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits up to `limit` for the exit; kills the process if it does not.
    async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = tokio::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tenant `acme` (user u1, 5,000 sessions, API key) on ephemeral ports, no
/// plugin watching, with a gateway edit.
fn binary_cfg(gateway: impl FnOnce(&mut GatewayConfig)) -> String {
    TestConfig::tenant("acme")
        .gateway(|g| {
            g.listen = "127.0.0.1:0".into();
            g.admin_listen = "127.0.0.1:0".into();
            g.plugins.watch = false;
            gateway(g);
        })
        .api_key("acme-key-0123456789")
        .tickets(&[("t1", "u1")])
        .ext_allow(&["room:*", "chat:*"])
        .policy(|p| p.sessions.max_sessions_per_user = 5000)
        .build()
}

async fn publish(admin: &str, room: &str, data: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/v1/api/tenants/acme/publish"))
        .bearer_auth("acme-key-0123456789")
        .json(&json!({"room":room,"svc":"news","type":"final","data":data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_1000_sessions_delivers_then_closes_1001() {
    const SESSIONS: usize = 1000;
    const ROOMS: usize = 10;
    let dir = tempfile::tempdir().expect("tmp");
    let (mut p, addr, admin) = Proc::spawn(dir.path(), &binary_cfg(|g| g.drain_grace_ms = 10_000));
    let url = format!("ws://{addr}/v1/ws?tenant=acme&ticket=t1");
    let traffic = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(SESSIONS);
    for batch in 0..SESSIONS / 100 {
        let mut connecting = Vec::new();
        for i in 0..100 {
            let url = url.clone();
            let room = format!("r{}", (batch * 100 + i) % ROOMS);
            connecting.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .expect("connect");
                ws.next().await.expect("authed").expect("authed ok");
                ws.send(Message::text(
                    json!({"v":1,"svc":"room","type":"join","room":room}).to_string(),
                ))
                .await
                .expect("join");
                loop {
                    let m = ws.next().await.expect("joined").expect("joined ok");
                    if m.to_text().is_ok_and(|t| t.contains("\"joined\"")) {
                        break;
                    }
                }
                ws
            }));
        }
        for c in connecting {
            clients.push(c.await.expect("client"));
        }
    }
    // Every session reads until its close; chatters keep traffic flowing.
    let mut readers = Vec::with_capacity(SESSIONS);
    for (i, ws) in clients.into_iter().enumerate() {
        let traffic = Arc::clone(&traffic);
        readers.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let chatter = (i < ROOMS).then(|| {
                let room = format!("r{}", i % ROOMS);
                tokio::spawn(async move {
                    for n in 0u64.. {
                        let m =
                            json!({"v":1,"svc":"chat","type":"send","room":room,"data":{"msg":n}});
                        if tx.send(Message::text(m.to_string())).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                })
            });
            let mut saw_final = false;
            let code = loop {
                match tokio::time::timeout(Duration::from_secs(20), rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        traffic.fetch_add(1, Ordering::Relaxed);
                        if t.as_str().contains("\"final\"") {
                            saw_final = true;
                        }
                    }
                    Ok(Some(Ok(Message::Close(f)))) => {
                        // Polling once more flushes our Close reply.
                        let _ = tokio::time::timeout(Duration::from_secs(3), rx.next()).await;
                        break f.map(|f| u16::from(f.code));
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break None,
                }
            };
            if let Some(c) = chatter {
                c.abort();
            }
            (saw_final, code)
        }));
    }
    eventually("chat traffic to flow", || async {
        traffic.load(Ordering::Relaxed) > 0
    })
    .await;
    // Reliable messages accepted before the signal must arrive before 1001.
    for r in 0..ROOMS {
        publish(&admin, &format!("r{r}"), json!({"room": r})).await;
    }
    let signalled = tokio::time::Instant::now();
    p.signal("-TERM");
    let mut lost = 0;
    let mut codes = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for r in readers {
        let (saw_final, code) = r.await.expect("reader");
        lost += usize::from(!saw_final);
        *codes.entry(code).or_default() += 1;
    }
    let status = p.wait_exit(Duration::from_secs(15)).await;
    eprintln!(
        "drain of {SESSIONS} sessions: codes {codes:?}, exit {status:?} after {:?}",
        signalled.elapsed()
    );
    assert_eq!(
        lost, 0,
        "{lost} sessions lost the message sent before SIGTERM"
    );
    assert_eq!(codes.get(&Some(1001)), Some(&SESSIONS), "{codes:?}");
    let status = status.expect("the gateway did not exit after the drain");
    assert!(status.success(), "exit {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(12),
        "drain took {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_forces_the_exit() {
    let dir = tempfile::tempdir().expect("tmp");
    // A long grace and a long send timeout: a client that reads nothing holds
    // the drain open.
    let (mut p, addr, admin) = Proc::spawn(
        dir.path(),
        &binary_cfg(|g| {
            g.drain_grace_ms = 60_000;
            g.writer_send_timeout_ms = 60_000;
        }),
    );
    let (mut stuck, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?tenant=acme&ticket=t1"))
            .await
            .expect("connect");
    stuck
        .send(Message::text(
            json!({"v":1,"svc":"room","type":"join","room":"r"}).to_string(),
        ))
        .await
        .expect("join");
    // The join is done before the flood (read up to `joined`; nothing after).
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = stuck.next().await {
            if m.to_text().is_ok_and(|t| t.contains("\"joined\"")) {
                return;
            }
        }
        panic!("the stream ended before `joined`");
    })
    .await
    .expect("joined in time");
    // Fill the socket buffers towards the client, which never reads.
    let big = "z".repeat(60_000);
    for _ in 0..200 {
        publish(&admin, "r", json!(big)).await;
    }
    p.signal("-TERM");
    // Still draining a while later: the stuck session holds it open.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        p.child.try_wait().expect("try_wait").is_none(),
        "the gateway exited before the second signal; nothing held the drain open"
    );
    p.signal("-TERM");
    let start = tokio::time::Instant::now();
    let status = p
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("the second SIGTERM did not force the exit");
    assert!(
        !status.success(),
        "a forced exit must not look like a clean drain: {status:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    drop(stuck);
}

/// Issue 11 item 9: lifecycle webhooks are bounded in flight per tenant. A
/// backend that never answers under a connect storm holds at most 256 event
/// requests; the rest are dropped and counted (`result="dropped"`), and
/// sessions connect as usual.
#[tokio::test]
async fn lifecycle_webhooks_are_bounded_in_flight() {
    use axum::routing::post;
    let (current, peak) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let app = axum::Router::new().route(
        "/events",
        post({
            let (current, peak) = (Arc::clone(&current), Arc::clone(&peak));
            move || async move {
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                // Never answers within the test.
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cfg = TestConfig::tenant("acme")
        .tickets(&[("t1", "u1")])
        .policy(|p| p.sessions.max_sessions_per_user = 1000)
        .backend(|b| {
            b.upstreams.insert(
                "hook".into(),
                wsprism::config::UpstreamConfig {
                    url: format!("http://{addr}/events"),
                    timeout_ms: 30_000,
                },
            );
            b.events.connect = Some("hook".into());
        });
    let gw = TestGateway::start(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(gw.client("acme", "t1").await);
    }
    let dropped = gw
        .metric_at_least(
            "wsprism_backend_calls_total{kind=\"connect\",result=\"dropped\",tenant=\"acme\"}",
            44.0,
        )
        .await;
    assert_eq!(dropped, 44.0);
    eventually("the backend to see the admitted events", || async {
        let now = current.load(Ordering::SeqCst);
        if now == 256 { Ok(()) } else { Err(now) }
    })
    .await;
    assert_eq!(peak.load(Ordering::SeqCst), 256);
}
