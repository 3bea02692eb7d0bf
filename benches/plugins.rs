//! Per-message cost of a Rust plugin on a warm instance versus the native
//! built-in `chat` service (criterion).
//!
//! Run with `cargo bench --bench plugins` (add `-- --quick` for a fast pass).
//! Both sides enter through `lanes::ext::handle`, the function the session
//! reader calls for every text frame (size → rate limit → decode → allowlist →
//! service → ack), on a tokio worker of a two-worker runtime like the gateway's:
//! - `ext_lane/chat_send_native`: `{"svc":"chat","type":"send","room":"r",..}`;
//!   the built-in service publishes `chat.msg` to the room, whose only member is
//!   the sender;
//! - `ext_lane/echo_plugin_warm`: the same message with `"svc":"echo"`, routed
//!   to the Rust `echo` component (`sdk/examples/echo`), which replies to the
//!   sender. One instance (`instances_per_plugin: 1`), warmed before timing;
//! - `plugin_host/echo_call_warm`: `PluginHost::call` alone (no decode, no
//!   effects applied), what the `echo_warm_call_cost` test measures.
//!
//! Each iteration also drains the sender's outbox as its writer would, so both
//! Ext Lane cases end with one frame written (plus the `seq` ack). The
//! difference between the first two is what the plugin adds per message.
//!
//! The echo component is built from `sdk/examples` the way the tests build it
//! (`cargo build --release --target wasm32-wasip2` into
//! `target/wasm-examples/`); when that fails (no `wasm32-wasip2` target) the
//! committed `plugins/echo.wasm` is used instead.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use serde_json::value::RawValue;
use tokio::runtime::Runtime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tungstenite::{Message, Utf8Bytes};
use wsprism::backend::BackendClient;
use wsprism::gateway::Gateway;
use wsprism::lanes::{Flow, SessionCtx, ext};
use wsprism::obs::metrics::Metrics;
use wsprism::plugin_host::PluginHost;
use wsprism::realtime::broker::{RoomLimits, SessionEntry, SessionLimits};
use wsprism::realtime::outbox::Outbox;
use wsprism::services::{Entry, ExtService, PluginCall, SessionInfo};
use wsprism::session::HubParts;

const CHAT: &str =
    r#"{"v":1,"svc":"chat","type":"send","room":"r","seq":7,"data":{"msg":"hello there"}}"#;
const ECHO: &str =
    r#"{"v":1,"svc":"echo","type":"send","room":"r","seq":7,"data":{"msg":"hello there"}}"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The echo component: a fresh build of `sdk/examples/echo`, else the
/// committed demo build.
fn echo_wasm() -> Vec<u8> {
    let target = repo().join("target").join("wasm-examples");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .current_dir(repo().join("sdk").join("examples"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "echo",
        ])
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output();
    let fresh = target.join("wasm32-wasip2/release/echo.wasm");
    match built {
        Ok(o) if o.status.success() => {
            if let Ok(bytes) = std::fs::read(&fresh) {
                eprintln!("plugins bench: echo built from sdk/examples/echo");
                return bytes;
            }
        }
        Ok(o) => eprintln!(
            "plugins bench: building sdk/examples failed, using plugins/echo.wasm:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("plugins bench: cannot run cargo ({e}), using plugins/echo.wasm"),
    }
    std::fs::read(repo().join("plugins/echo.wasm")).expect("plugins/echo.wasm")
}

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"version: 1
gateway:
  handshake_limit: {{ enabled: false }}
  plugins: {{ dir: "{}", watch: false, call_timeout_ms: 250, instances_per_plugin: 1 }}
tenants:
  - id: acme
    auth:
      tickets: {{ t1: u1 }}
    policy:
      ext_allowlist: ["chat:*", "echo:*"]
      rate_limit_rps: 1000000000
      rate_limit_burst: 1000000000
      max_bytes_per_sec: 0
    routes:
      - {{ svc: echo, plugin: echo }}
"#,
        dir.display()
    )
}

struct Fixture {
    rt: Runtime,
    host: Arc<PluginHost>,
    ctx: Option<SessionCtx>,
    info: SessionInfo,
    gw: Arc<Gateway>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("echo.wasm"), echo_wasm()).expect("write echo.wasm");
    let cfg = wsprism::config::parse(&config(dir.path())).expect("bench config");
    let (host, gw) = rt.block_on(async {
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let backend = BackendClient::new();
        let host = PluginHost::start(
            &cfg.gateway.plugins,
            metrics.clone(),
            &backend,
            stop.clone(),
            tasks.clone(),
        )
        .await
        .expect("plugin host");
        assert_eq!(host.plugins(), ["echo"], "echo did not load");
        let ext: Arc<dyn ExtService> = host.clone();
        let parts = HubParts {
            metrics,
            backend,
            ext,
            cluster: None,
            shutdown: stop,
            tasks,
        };
        let gw = Gateway::new(cfg, repo(), parts).expect("gateway");
        (host, gw)
    });
    let tenant = gw.tenant("acme").expect("tenant");
    let sid = gw.next_sid();
    let entry = Arc::new(SessionEntry::new(
        sid,
        Arc::from("u1"),
        Arc::new(Outbox::new(1024, 256)),
    ));
    let limits = SessionLimits {
        max_sessions_total: 0,
        max_sessions_per_user: 1,
        kick_oldest: false,
    };
    if tenant.broker.register(Arc::clone(&entry), limits).is_err()
        || tenant.broker.join(sid, "r", RoomLimits::default()).is_err()
    {
        panic!("bench setup: cannot register the session");
    }
    let info = SessionInfo {
        tenant: Arc::clone(&tenant.id),
        user: Arc::clone(&entry.user),
        sid,
        rooms: vec!["r".to_owned()].into(),
    };
    let counters = gw.metrics.session_counters("acme");
    let ctx =
        SessionCtx::new(Arc::clone(&gw.pipeline), tenant, entry, counters).expect("session ctx");
    Fixture {
        rt,
        host,
        ctx: Some(ctx),
        info,
        gw,
        _dir: dir,
    }
}

/// Times `iters` messages through `lanes::ext::handle` on a runtime worker,
/// draining the outbox after each one. Checks that every message produced the
/// two frames expected (the service's output and the ack).
fn run_lane(fx: &mut Fixture, frame: &'static str, iters: u64) -> Duration {
    let mut ctx = fx.ctx.take().expect("ctx");
    let (ctx, took) = fx
        .rt
        .block_on(fx.rt.spawn(async move {
            let text = Utf8Bytes::from_static(frame);
            let mut out: Vec<Message> = Vec::with_capacity(8);
            let start = Instant::now();
            for _ in 0..iters {
                let flow = ext::handle(&mut ctx, text.clone()).await;
                debug_assert_eq!(flow, Flow::Continue);
                let _ = ctx.entry.outbox.next_batch(&mut out, 8).now_or_never();
                assert_eq!(out.len(), 2, "unexpected output: {out:?}");
                out.clear();
            }
            (ctx, start.elapsed())
        }))
        .expect("bench task");
    fx.ctx = Some(ctx);
    took
}

fn call(fx: &Fixture, data: &RawValue) -> PluginCall {
    let ctx = fx.ctx.as_ref().expect("ctx");
    let rt = ctx.tenant.runtime().expect("tenant runtime");
    PluginCall {
        entry: Entry::Message {
            ty: "send".to_owned(),
            room: Some("r".to_owned()),
            seq: Some(7),
            data: data.to_owned(),
        },
        session: fx.info.clone(),
        plugin: Arc::from("echo"),
        svc: "echo".to_owned(),
        tenant_cfg: Arc::clone(&rt.cfg),
        broker: Arc::clone(&ctx.tenant.broker),
    }
}

fn ext_lane(c: &mut Criterion) {
    let mut fx = fixture();
    // Warm: instantiate the echo instance, fill caches.
    run_lane(&mut fx, ECHO, 2_000);
    run_lane(&mut fx, CHAT, 2_000);

    let mut g = c.benchmark_group("ext_lane");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chat_send_native", |b| {
        b.iter_custom(|iters| run_lane(&mut fx, CHAT, iters))
    });
    g.bench_function("echo_plugin_warm", |b| {
        b.iter_custom(|iters| run_lane(&mut fx, ECHO, iters))
    });
    g.finish();

    let data = RawValue::from_string(r#"{"msg":"hello there"}"#.to_owned()).expect("json");
    let mut g = c.benchmark_group("plugin_host");
    g.throughput(Throughput::Elements(1));
    g.bench_function("echo_call_warm", |b| {
        b.iter_custom(|iters| {
            let calls: Vec<PluginCall> = (0..iters).map(|_| call(&fx, &data)).collect();
            let host = Arc::clone(&fx.host);
            fx.rt
                .block_on(fx.rt.spawn(async move {
                    let start = Instant::now();
                    for c in calls {
                        let effects = host.call(c).await.expect("echo call");
                        assert_eq!(effects.len(), 1);
                    }
                    start.elapsed()
                }))
                .expect("bench task")
        })
    });
    g.finish();
    fx.gw.shutdown.cancel();
}

criterion_group!(benches, ext_lane);
criterion_main!(benches);
