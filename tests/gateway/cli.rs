//! The `wsprism` binary: `check`, `--version`, startup logs, SIGHUP, SIGTERM, and
//! that no secret or payload reaches the logs even at trace level.

use crate::common;
use crate::plugin_support;

use common::TestConfig;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use wsprism::config::{AuthMode, JwtAlgorithm};

const BIN: &str = env!("CARGO_BIN_EXE_wsprism");

/// The README's run command is `cargo run --release -- --config wsprism.yaml`:
/// run from the repository root of a workspace whose members add more binaries
/// (`wsprism-bench`, `wsprism-soak`), `cargo run` must still pick the gateway
/// (the root package is the default member and has one binary). Checked in the
/// test profile (same selection, no release build), with `check` so nothing
/// keeps running.
#[test]
fn cargo_run_starts_the_gateway() {
    let out = Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--offline",
            "--",
            "check",
            "--config",
            "wsprism.yaml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo run");
    assert!(
        out.status.success(),
        "cargo run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_and_check() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let reference = format!("{}/wsprism.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args(["check", "--config", &reference])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.ends_with("wsprism.yaml: ok (1 tenant)\n"), "{err}");

    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\ngateway:\n  listen: nowhere\n  queues: { reliable_capacity: 0 }\ntenants:\n  - id: a\n    auth: { tickets: {} }\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in [
        "gateway.listen",
        "gateway.queues.reliable_capacity",
        "tenants[0].auth.tickets",
    ] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/wsprism.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Proc {
    fn wait_line(&mut self, needle: &str) -> String {
        // Up to 60 s for the line to appear, however many lines come first (a
        // cold plugin compile logs thousands at trace level); a process that
        // exited ends the wait at once.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.log.push(line);
                    if found {
                        return self.log.last().cloned().unwrap_or_default();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let tail = self.log.len().saturating_sub(50);
        panic!(
            "no log line containing {needle:?}; last lines:\n{}",
            self.log[tail..].join("\n")
        );
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        (status, self.log)
    }
}

fn spawn(config: &std::path::Path, envs: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["--config"])
        .arg(config)
        .args(["--log-format", "json"])
        .env(
            "RUST_LOG",
            "trace,tungstenite::protocol=trace,hyper=trace,reqwest=trace",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Proc {
        child,
        lines: rx,
        log: Vec::new(),
    }
}

fn addr_in(line: &str, prefix: &str) -> String {
    let at = line.find(prefix).expect("prefix") + prefix.len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_payloads_never_reach_the_logs_and_signals_work() {
    const SECRET: &str = "s3cr3t-jwt-signing-key-do-not-log";
    const API_KEY: &str = "api-key-do-not-log-0123456789";
    const STATIC_TICKET: &str = "static-ticket-do-not-log";
    const PAYLOAD: &str = "payload-marker-do-not-log";
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("wsprism.yaml");
    let yaml = TestConfig::tenant("acme")
        .gateway(|g| {
            g.listen = "127.0.0.1:0".into();
            g.admin_listen = "127.0.0.1:0".into();
            g.drain_grace_ms = 2000;
        })
        .api_key(API_KEY)
        .auth(|a| {
            a.mode = AuthMode::Jwt;
            a.algorithm = Some(JwtAlgorithm::HS256);
            a.secret_env = Some("WSPRISM_TEST_JWT_SECRET".into());
        })
        .ext_allow(&["room:*", "chat:*"])
        .and_tenant("dev")
        .tickets(&[(STATIC_TICKET, "devuser")])
        .ext_allow(&["room:*"])
        .build();
    std::fs::write(&config, &yaml).expect("write");
    let mut p = spawn(&config, &[("WSPRISM_TEST_JWT_SECRET", SECRET)]);
    let line = p.wait_line("wsPrism gateway active at");
    let addr = addr_in(&line, "active at ");
    let line = p.wait_line("admin listener");
    let admin = addr_in(&line, "\"admin\":\"");
    p.wait_line("loaded tenant \\\"acme\\\"");

    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let jwt = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub":"alice","exp":exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    // A valid JWT session that chats a payload.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?tenant=acme&ticket={jwt}"))
            .await
            .expect("connect");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"v":1,"svc":"room","type":"join","room":"r"}).to_string(),
    ))
    .await
    .expect("send");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":PAYLOAD}}).to_string(),
    ))
    .await
    .expect("send");
    let mut got_payload = false;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if m.to_text().is_ok_and(|t| t.contains(PAYLOAD)) {
            got_payload = true;
            break;
        }
    }
    assert!(got_payload);
    // Refused tickets, a bad API key and a good one.
    let client = reqwest::Client::new();
    for t in [format!("{jwt}x"), STATIC_TICKET.to_owned()] {
        let _ =
            tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?tenant=acme&ticket={t}"))
                .await;
    }
    let (mut dev, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/v1/ws?tenant=dev&ticket={STATIC_TICKET}"
    ))
    .await
    .expect("static ticket connects");
    let _ = dev.next().await;
    let r = client
        .post(format!("http://{admin}/v1/api/tenants/acme/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"room":"r","svc":"news","type":"t","data":PAYLOAD}))
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("http://{admin}/v1/api/tenants/acme/stats"))
        .bearer_auth(format!("{API_KEY}-wrong"))
        .send()
        .await
        .expect("stats");
    assert_eq!(r.status().as_u16(), 401);

    // SIGHUP reloads (and logs it), SIGTERM drains and exits 0.
    p.signal("-HUP");
    p.wait_line("config reloaded");
    p.signal("-TERM");
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("close in time");
    assert_eq!(close, Some(1001));
    let (status, log) = tokio::task::spawn_blocking(move || p.finish())
        .await
        .expect("join");
    assert!(status.success(), "exit {status:?}");
    let all = log.join("\n");
    assert!(all.contains("gateway stopped"));
    for secret in [SECRET, API_KEY, STATIC_TICKET, PAYLOAD, jwt.as_str()] {
        let leaks: Vec<&String> = log.iter().filter(|l| l.contains(secret)).take(3).collect();
        assert!(
            leaks.is_empty(),
            "{secret:?} leaked into the logs: {leaks:#?}"
        );
    }
    // The JWT's signature part alone must not appear either.
    let sig = jwt.rsplit('.').next().expect("sig");
    assert!(!all.contains(sig));
}

/// Runs the binary to its exit and returns the exit code and stderr. A process
/// still running after 60 s started serving instead of failing: it is killed
/// and the test fails.
fn exit_of(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // 600 polls of 100 ms: a debug build starts the plugin host in a few seconds.
    for _ in 0..600 {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status.code(), reader.join().expect("stderr reader"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "wsprism {args:?} did not exit:\n{}",
        reader.join().unwrap_or_default()
    );
}

/// `check` and `start` exit with the same code for the same bad config: a key
/// file that cannot be read (found when the tenant is compiled, after schema
/// validation) and an unknown YAML key (found by the schema). Both are config
/// errors: 64, with the YAML path in the report.
#[test]
fn bad_configs_exit_64_from_check_and_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing_key = dir.path().join("missing_key.yaml");
    std::fs::write(
        &missing_key,
        r#"version: 1
gateway:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
tenants:
  - id: acme
    auth:
      mode: jwt
      algorithm: RS256
      public_key_file: missing.pem
"#,
    )
    .expect("write");
    let unknown_key = dir.path().join("unknown_key.yaml");
    std::fs::write(
        &unknown_key,
        r#"version: 1
gateway:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  lisen_backlog: 10
tenants:
  - id: acme
    auth: { tickets: { dev: dev } }
"#,
    )
    .expect("write");
    let missing_cert = dir.path().join("missing_cert.yaml");
    std::fs::write(
        &missing_cert,
        r#"version: 1
gateway:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
  tls: { cert_file: nope.crt, key_file: nope.key }
tenants:
  - id: acme
    auth: { tickets: { dev: dev } }
"#,
    )
    .expect("write");
    for (file, path, what) in [
        (&missing_key, "tenants[0].auth", "missing.pem"),
        (&unknown_key, "gateway.lisen_backlog", "unknown field"),
        (&missing_cert, "gateway.tls.cert_file", "nope.crt"),
    ] {
        for cmd in ["check", "start"] {
            let (code, err) = exit_of(&[cmd.as_ref(), "--config".as_ref(), file.as_os_str()]);
            assert_eq!(code, Some(64), "{cmd} {}:\n{err}", file.display());
            assert!(
                err.contains(path) && err.contains(what),
                "{cmd} {}: no {path:?} / {what:?} in:\n{err}",
                file.display()
            );
        }
    }
}

/// A listen address already in use is not the config's fault: exit 1, and the
/// message names the field to change.
#[test]
fn listen_address_in_use_exits_1_naming_the_field() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("wsprism.yaml");
    std::fs::write(
        &config,
        format!(
            r#"version: 1
gateway:
  listen: "{addr}"
  admin_listen: "127.0.0.1:0"
tenants:
  - id: acme
    auth: {{ tickets: {{ dev: dev }} }}
"#
        ),
    )
    .expect("write");
    let (code, err) = exit_of(&["start".as_ref(), "--config".as_ref(), config.as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("gateway.listen") && err.contains(&addr.to_string()),
        "the message must name the field and the address:\n{err}"
    );
    drop(taken);
}

/// Issue 12 item 6: SIGHUP also rescans the plugin folder, for mounts whose
/// changes the directory watch does not see (here `watch: false`).
#[test]
fn sighup_rescans_the_plugin_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).expect("mkdir");
    let config = dir.path().join("wsprism.yaml");
    let yaml = TestConfig::tenant("acme")
        .gateway(|g| {
            g.listen = "127.0.0.1:0".into();
            g.admin_listen = "127.0.0.1:0".into();
            g.plugins.dir = "plugins".into();
            g.plugins.watch = false;
            g.plugins.cache_dir = format!(
                "{}/target/wasm-examples/compile-cache",
                env!("CARGO_MANIFEST_DIR")
            );
        })
        .tickets(&[("t1", "u1")])
        .ext_allow(&["echo:*"])
        .route("echo", "echo")
        .build();
    std::fs::write(&config, &yaml).expect("write");
    // Info level: a cold compile of the plugin at trace level is thousands of lines.
    let mut p = spawn(&config, &[("RUST_LOG", "info")]);
    p.wait_line("route to a plugin that is not loaded");
    p.wait_line("wsPrism gateway active at");
    let echo = format!("{}/plugins/echo.wasm", env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(&echo, plugins.join("echo.wasm")).expect("copy echo.wasm");
    p.signal("-HUP");
    let line = p.wait_line("plugin loaded");
    assert!(line.contains("echo"), "{line}");
    p.signal("-TERM");
    let (status, _) = p.finish();
    assert!(status.success());
}

/// Issue 11 item 7: plugin backend calls ignore proxy environment variables
/// (a proxy set for the gateway's host must not see, or redirect, what a
/// plugin sends to its tenant's upstream).
#[tokio::test]
async fn plugin_backend_calls_ignore_proxy_environment_variables() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A "proxy" that counts who connects, and the real upstream.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy_addr = proxy.local_addr().expect("addr");
    let proxied = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&proxied);
    tokio::spawn(async move {
        while let Ok((_s, _)) = proxy.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\ndirect",
                    )
                    .await;
            });
        }
    });
    let plugins = plugin_support::plugin_dir(&[("faults", "faults")]);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("wsprism.yaml");
    let yaml = TestConfig::tenant("acme")
        .gateway(|g| {
            g.listen = "127.0.0.1:0".into();
            g.admin_listen = "127.0.0.1:0".into();
            g.plugins.dir = plugins.path().display().to_string();
            g.plugins.cache_dir = plugin_support::compile_cache().display().to_string();
        })
        .tickets(&[("t1", "u1")])
        .ext_allow(&["faults:*"])
        .route("faults", "faults")
        .backend(|b| {
            b.upstreams.insert(
                "main".into(),
                wsprism::config::UpstreamConfig {
                    url: format!("http://{upstream_addr}"),
                    timeout_ms: 2_000,
                },
            );
        })
        .build();
    std::fs::write(&config, &yaml).expect("write");
    let proxy_url = format!("http://{proxy_addr}");
    let envs: Vec<(&str, &str)> = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .map(|k| (k, proxy_url.as_str()))
        .chain([("NO_PROXY", ""), ("no_proxy", ""), ("RUST_LOG", "info")])
        .collect();
    let mut p = spawn(&config, &envs);
    let line = p.wait_line("wsPrism gateway active at");
    // Plugins are loaded before the listener is announced.
    let addr = addr_in(&line, "active at ");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?tenant=acme&ticket=t1"))
            .await
            .expect("connect");
    let _authed = ws.next().await;
    let call =
        json!({"v":1,"svc":"faults","type":"backend","data":{"upstream":"main","path":"/x"}});
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        call.to_string(),
    ))
    .await
    .expect("send");
    let reply = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .expect("frame");
        let v: serde_json::Value =
            serde_json::from_str(m.to_text().unwrap_or("{}")).unwrap_or_default();
        if v["svc"] == "faults" {
            break v;
        }
    };
    assert_eq!(reply["type"], "backend", "{reply}");
    assert_eq!(reply["data"]["body"], "direct", "{reply}");
    assert_eq!(
        proxied.load(Ordering::SeqCst),
        0,
        "the proxy saw the plugin's call"
    );
    p.signal("-TERM");
    let _ = p.finish();
}
