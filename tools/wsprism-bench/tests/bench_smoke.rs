//! Smoke test of the `wsprism-bench` binary: every client mode runs briefly
//! against an in-process gateway, and against the raw baseline server, and its
//! counts add up. No timing is asserted: this keeps the load generator working,
//! the numbers themselves come from `scripts/bench.sh` on a release build.
//!
//! The gateway comes from the `wsprism` library (a dev-dependency of this
//! crate); the binary under test is this crate's own, so Cargo builds it before
//! the test and names it in `CARGO_BIN_EXE_wsprism-bench`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use wsprism::{Server, ServerOptions, config};

const BENCH: &str = env!("CARGO_BIN_EXE_wsprism-bench");

/// A gateway serving on `127.0.0.1:0` in this process until dropped.
struct TestGateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestGateway {
    /// Parses `yaml` (panicking with the validation errors) and starts serving.
    async fn start(yaml: &str) -> Self {
        let cfg = config::parse(yaml).unwrap_or_else(|e| panic!("test config refused:\n{e}"));
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let opts = ServerOptions {
            bind: Some((loopback, loopback)),
            ..ServerOptions::default()
        };
        let server = Server::bind(cfg, opts).await.expect("bind the gateway");
        let addr = server.local_addr().expect("gateway address");
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        Self { addr, shutdown }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Limits raised like `bench/wsprism-bench.yaml`. The `jwt` tenant takes its
/// HS256 secret from `PATH`: tests cannot set environment variables (unsafe
/// code is forbidden), and `PATH` is always set and readable by the bench.
const CONFIG: &str = r#"version: 1
gateway:
  handshake_limit: { enabled: false }
  drain_grace_ms: 1000
tenants:
  - id: acme
    auth:
      tickets: { dev: "user:dev" }
    policy:
      rate_limit_rps: 1000000
      rate_limit_burst: 1000000
      max_bytes_per_sec: 0
      sessions: { max_sessions_per_user: 100000 }
      error_budget: { max_errors: 0 }
      ext_allowlist: ["*"]
      hot_allowlist: ["*"]
    rooms: { presence_events: false }
    routes:
      - { svc: echo, plugin: echo }
    hot_services:
      - { id: 1, kind: relay }
      - { id: 2, kind: echo }
      - { id: 4, kind: relay, conflate: true }
  - id: jwt
    auth: { mode: jwt, algorithm: HS256, secret_env: PATH }
    policy:
      rate_limit_rps: 1000000
      rate_limit_burst: 1000000
"#;

/// Runs the bench with `--json --quiet` and returns its summary.
async fn bench(args: &[&str]) -> Value {
    let mut cmd = Command::new(BENCH);
    cmd.args(args)
        .args(["--json", "--quiet"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("wsprism-bench {args:?} did not finish"))
        .expect("spawn wsprism-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wsprism-bench {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

fn check_echo(r: &Value, expect_error: Option<&str>) {
    assert_eq!(n(r, "connection_errors"), 0, "{r}");
    let trips = n(r, "round_trips");
    assert!(trips > 0, "{r}");
    match expect_error {
        None => assert_eq!(n(r, "ok"), trips, "{r}"),
        Some(code) => assert_eq!(r["errors"][code].as_u64(), Some(trips), "{r}"),
    }
    assert!(r["rtt_p50_us"].is_u64(), "{r}");
}

fn check_fanout(r: &Value, recipients: u64) {
    assert_eq!(n(r, "recipients_per_publish"), recipients, "{r}");
    assert_eq!(n(r, "unexpected_frames"), 0, "{r}");
    let step = &r["steps"][0];
    let published = n(step, "published");
    assert!(published > 0, "{r}");
    assert_eq!(n(step, "expected"), published * recipients, "{r}");
    assert_eq!(n(step, "delivered"), n(step, "expected"), "{r}");
}

const FANOUT: [&str; 12] = [
    "fanout",
    "--rooms",
    "2",
    "--members",
    "3",
    "--rate",
    "20",
    "--duration",
    "1",
    "--drain",
    "3",
    "--payload",
];

async fn fanout(url: &str, lane: &str, extra: &[&str]) -> Value {
    let mut args: Vec<&str> = FANOUT.to_vec();
    args.extend(["32", "--lane", lane, "--url", url]);
    args.extend(extra);
    bench(&args).await
}

async fn echo(url: &str, lane: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "echo",
        "--url",
        url,
        "--lane",
        lane,
        "-c",
        "2",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
    ];
    args.extend(extra);
    bench(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_runs_against_the_gateway() {
    let gw = TestGateway::start(CONFIG).await;
    let url = format!("ws://{}", gw.addr);
    let pid = std::process::id().to_string();

    let r = echo(&url, "hot", &["--pid", &pid]).await;
    check_echo(&r, None);
    assert!(r["server_cpu_us_per_msg"].is_number(), "{r}");
    // Split into user and system time; the two make up the total (each is
    // rounded to 0.01 µs).
    let part = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    let total = part("server_cpu_us_per_msg");
    let (user, system) = (
        part("server_user_us_per_msg"),
        part("server_system_us_per_msg"),
    );
    assert!(total > 0.0 && user >= 0.0 && system >= 0.0, "{r}");
    assert!((user + system - total).abs() <= 0.02, "{r}");
    // No plugin host in this test: the routed `echo` svc answers with an error,
    // which still ends each round trip.
    let r = echo(&url, "ext", &[]).await;
    check_echo(&r, Some("SERVICE_UNAVAILABLE"));

    // Several pids count as one server (a cluster's nodes and Redis).
    let r = fanout(&url, "hot", &["--pid", &format!("{pid},{pid}")]).await;
    check_fanout(&r, 2);
    assert!(
        r["steps"][0]["server_cpu_us_per_delivery"].is_number(),
        "{r}"
    );
    assert!(
        r["steps"][0]["server_user_us_per_delivery"].is_number()
            && r["steps"][0]["server_system_us_per_delivery"].is_number(),
        "{r}"
    );
    let r = fanout(&url, "chat", &[]).await;
    check_fanout(&r, 3);

    let r = bench(&[
        "idle", "--url", &url, "-n", "20", "--hold", "0.2", "--pid", &pid,
    ])
    .await;
    assert_eq!(n(&r, "authenticated"), 20, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert_eq!(n(&r, "closed_during_hold"), 0, "{r}");
    assert!(r["server_rss_after_kib"].is_u64(), "{r}");

    let r = bench(&["connect", "--url", &url, "-c", "4", "--total", "20"]).await;
    assert_eq!(n(&r, "handshakes"), 20, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");

    // A short position stream on both relays; the receiver reads what it can.
    let r = bench(&[
        "latest",
        "--url",
        &url,
        "--rate",
        "200",
        "--drain",
        "100",
        "--warmup",
        "0.2",
        "--duration",
        "0.5",
        "--payload",
        "64",
    ])
    .await;
    for relay in ["plain", "latest"] {
        assert!(n(&r, &format!("{relay}_sent")) > 0, "{r}");
        assert!(n(&r, &format!("{relay}_frames")) > 0, "{r}");
        assert!(r[format!("{relay}_age_p50_us")].is_u64(), "{r}");
    }

    let secret = std::env::var("PATH").expect("PATH is set");
    let r = bench(&[
        "connect",
        "--url",
        &url,
        "--tenant",
        "jwt",
        "--jwt-secret",
        &secret,
        "-c",
        "4",
        "--total",
        "20",
    ])
    .await;
    assert_eq!(n(&r, "handshakes"), 20, "{r}");
    assert_eq!(n(&r, "failed"), 0, "{r}");
    assert!(r["auth"].as_str().is_some_and(|a| a.starts_with("jwt")));
}

/// Starts `wsprism-bench baseline` on a free port; returns it and its URL.
async fn baseline(mode: &str) -> (Child, String) {
    let mut child = Command::new(BENCH)
        .args(["baseline", "--mode", mode, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn baseline");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("baseline announces its address")
    .expect("read stdout");
    let addr = line.trim().rsplit(' ').next().expect("address").to_owned();
    (child, format!("ws://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_server_echoes_and_relays() {
    let (mut echo_srv, url) = baseline("echo").await;
    let pid = echo_srv.id().expect("pid").to_string();
    let r = echo(&url, "hot", &["--pid", &pid]).await;
    check_echo(&r, None);
    let r = echo(&url, "ext", &[]).await;
    check_echo(&r, None);
    let r = bench(&["connect", "--url", &url, "-c", "4", "--total", "20"]).await;
    assert_eq!(n(&r, "handshakes"), 20, "{r}");
    let r = bench(&[
        "idle", "--url", &url, "-n", "20", "--hold", "0.2", "--pid", &pid,
    ])
    .await;
    assert_eq!(n(&r, "authenticated"), 20, "{r}");
    let _ = echo_srv.kill().await;

    let (mut relay_srv, url) = baseline("relay").await;
    let r = fanout(&url, "hot", &[]).await;
    check_fanout(&r, 2);
    let r = fanout(&url, "chat", &[]).await;
    check_fanout(&r, 3);
    let _ = relay_srv.kill().await;
}
