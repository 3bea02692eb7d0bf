//! WASM plugins behind the real gateway: clients speak WebSocket, plugins built
//! fresh from `sdk/examples` answer (SPEC §8, §12).

mod common;
mod plugin_support;

use std::time::Duration;

use common::{Client, TestConfig, TestGateway, eventually, eventually_within};
use plugin_support::{Captured, deploy, guest, plugin_dir, variant};
use serde_json::{Value, json};

/// Tenant `acme` (users u1..u3) routing `echo` and `vote` to their plugins, with
/// tight plugin limits and the directory watched.
fn cfg(dir: &std::path::Path) -> TestConfig {
    TestConfig::tenant("acme")
        .plugin_host(dir)
        .gateway(|g| {
            g.plugins.call_timeout_ms = 100;
            g.plugins.max_memory_bytes = 16 << 20;
        })
        .api_key("acme-key-0123456789")
        .tickets(&[("t1", "u1"), ("t2", "u2"), ("t3", "u3")])
        .ext_allow(&["room:*", "echo:*", "vote:*", "faults:*"])
        .rate_limit(10_000, 10_000)
        .route("echo", "echo")
        .route("vote", "vote")
}

async fn plugins_status(gw: &TestGateway) -> Value {
    reqwest::Client::new()
        .get(gw.admin_url("/v1/api/tenants/acme/plugins"))
        .bearer_auth("acme-key-0123456789")
        .send()
        .await
        .expect("plugins")
        .json()
        .await
        .expect("json")
}

async fn echo_roundtrip(c: &mut Client, seq: u64) {
    c.send_json(json!({"v":1,"svc":"echo","type":"ping","data":{"n":seq},"seq":seq}))
        .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["svc"], "echo", "{reply}");
    assert_eq!(reply["type"], "ping");
    assert_eq!(reply["data"]["n"], seq);
    assert_eq!(
        c.recv_json().await,
        json!({"v":1,"svc":"sys","type":"ack","seq":seq})
    );
}

#[tokio::test]
async fn echo_plugin_answers_and_broadcasts_through_websocket() {
    let dir = plugin_dir(&[("echo", "echo"), ("vote", "vote")]);
    let gw = TestGateway::start(cfg(dir.path())).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.send_json(json!({"v":1,"svc":"echo","type":"hello","data":{"x":[1,2]}}))
        .await;
    let r = a.recv_json().await;
    assert_eq!(r["v"], 1);
    assert_eq!(r["svc"], "echo");
    assert_eq!(r["type"], "hello");
    assert_eq!(r["data"], json!({"x":[1,2]}));
    a.join("r").await;
    b.join("r").await;
    a.send_json(json!({"v":1,"svc":"echo","type":"broadcast","room":"r","data":"all"}))
        .await;
    for c in [&mut a, &mut b] {
        let m = c.recv_type("broadcast").await;
        assert_eq!(m["room"], "r");
        assert_eq!(m["data"], "all");
    }
}

#[tokio::test]
async fn vote_plugin_keeps_state_in_kv_and_refusals_are_service_errors() {
    let dir = plugin_dir(&[("echo", "echo"), ("vote", "vote")]);
    let gw = TestGateway::start(cfg(dir.path())).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("poll").await;
    b.join("poll").await;
    a.send_json(json!({"v":1,"svc":"vote","type":"cast","room":"poll","data":{"option":"red"}}))
        .await;
    let t = b.recv_type("tally").await;
    assert_eq!(t["svc"], "vote");
    assert_eq!(t["data"]["counts"]["red"], 1);
    a.send_json(
        json!({"v":1,"svc":"vote","type":"cast","room":"poll","data":{"option":"red"},"seq":9}),
    )
    .await;
    let e = a.recv_type("error").await;
    assert_eq!(e["seq"], 9);
    assert_eq!(e["data"]["code"], "SERVICE_ERROR");
    // The plugin's own code, for clients to branch on (SPEC §4).
    assert_eq!(e["data"]["reason"], "ALREADY_VOTED", "{e}");
    assert!(
        e["data"]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("ALREADY_VOTED")),
        "{e}"
    );
}

#[tokio::test]
async fn hot_reload_under_traffic_drops_nothing() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let gw = TestGateway::start(cfg(dir.path())).await;
    let before = plugins_status(&gw).await["plugins"][0]["sha256"].clone();
    let mut clients = Vec::new();
    for t in ["t1", "t2", "t3"] {
        clients.push(gw.client("acme", t).await);
    }
    let echo = guest("echo");
    let path = dir.path().to_path_buf();
    let swapper = tokio::spawn(async move {
        for i in 0..5 {
            deploy(&path, "echo.wasm", &variant(&echo, &format!("v{i}")));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            for seq in 0..150u64 {
                echo_roundtrip(&mut c, seq).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c
        }));
    }
    swapper.await.expect("swapper");
    for t in tasks {
        let mut c = t
            .await
            .expect("client task: a reply was lost or the session dropped");
        echo_roundtrip(&mut c, 999).await;
    }
    // Compiling a new version can take seconds on a loaded machine.
    eventually_within(
        Duration::from_secs(30),
        "a new plugin version to serve (sha256 changes)",
        || async { plugins_status(&gw).await["plugins"][0]["sha256"] != before },
    )
    .await;
}

#[tokio::test]
async fn broken_and_deleted_plugins() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let gw = TestGateway::start(cfg(dir.path())).await;
    let mut c = gw.client("acme", "t1").await;
    echo_roundtrip(&mut c, 1).await;
    // A file that is not a component leaves the old version serving.
    deploy(dir.path(), "echo.wasm", b"\0asm garbage");
    eventually("the garbage file's load error to be reported", || async {
        let state = plugins_status(&gw).await["plugins"][0].clone();
        if state["last_error"].is_string() {
            Ok(())
        } else {
            Err(state)
        }
    })
    .await;
    echo_roundtrip(&mut c, 2).await;
    // Deleting the file takes the route down: SERVICE_UNAVAILABLE.
    std::fs::remove_file(dir.path().join("echo.wasm")).expect("rm");
    let session = tokio::sync::Mutex::new((c, 10u64));
    let code = eventually("a call to the deleted plugin to be refused", || async {
        let (c, seq) = &mut *session.lock().await;
        *seq += 1;
        c.send_json(json!({"v":1,"svc":"echo","type":"x","seq":*seq}))
            .await;
        let v = c.recv_json().await;
        if v["type"] == "error" {
            return Ok(v["data"]["code"].clone());
        }
        c.recv_type("ack").await;
        Err(v)
    })
    .await;
    assert_eq!(code, "SERVICE_UNAVAILABLE");
}

#[tokio::test]
async fn a_faulting_plugin_fails_only_its_own_calls() {
    let dir = plugin_dir(&[("echo", "echo"), ("faults", "faults")]);
    // Four fault kinds, each run: the session is refused after the fourth.
    let cfg = cfg(dir.path())
        .route("faults", "faults")
        .gateway(|g| g.plugins.max_faults_per_session = 4);
    let gw = TestGateway::start(cfg).await;
    let mut bad = gw.client("acme", "t1").await;
    let mut good = gw.client("acme", "t2").await;
    let kinds = [
        ("loop", "timeout"),
        ("oom", "memory"),
        ("recurse", "trap"),
        ("panic", "trap"),
    ];
    for (seq, (ty, reason)) in kinds.into_iter().enumerate() {
        let seq = seq as u64 + 1;
        bad.send_json(json!({"v":1,"svc":"faults","type":ty,"seq":seq}))
            .await;
        echo_roundtrip(&mut good, seq).await;
        let e = bad.recv_type("error").await;
        assert_eq!(e["seq"], seq, "{ty}");
        assert_eq!(e["data"]["code"], "SERVICE_UNAVAILABLE", "{ty}: {e}");
        assert_eq!(e["data"]["reason"], reason, "{ty}: {e}");
    }
    // The plugin still serves (here: refuses) other sessions; the faulting
    // session alone is backed off.
    good.send_json(json!({"v":1,"svc":"faults","type":"refuse","seq":50}))
        .await;
    assert_eq!(
        good.recv_type("error").await["data"]["code"],
        "SERVICE_ERROR"
    );
    bad.send_json(json!({"v":1,"svc":"faults","type":"refuse","seq":51}))
        .await;
    let e = bad.recv_type("error").await;
    assert_eq!(e["data"]["code"], "SERVICE_UNAVAILABLE", "{e}");
    assert_eq!(e["data"]["reason"], "session_backing_off", "{e}");
    let m = gw.metrics().await;
    assert!(
        m.contains("wsprism_plugin_errors_total{plugin=\"faults\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_plugins_answer_through_websocket() {
    let (Some(js), Some(py)) = (plugin_support::counter_js(), plugin_support::counter_py()) else {
        return;
    };
    // A persistent dir so the compiled-artifact cache survives between runs.
    let dir = plugin_support::jspy_dir("gateway");
    for (src, name) in [(&js, "counter_js.wasm"), (&py, "counter_py.wasm")] {
        let bytes = std::fs::read(src).expect("built component");
        if std::fs::read(dir.join(name)).ok().as_deref() != Some(&bytes[..]) {
            deploy(&dir, name, &bytes);
        }
    }
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .plugin_host(&dir)
            .gateway(|g| {
                g.plugins.watch = false;
                g.plugins.call_timeout_ms = 2000;
                g.plugins.max_memory_bytes = 256 << 20;
            })
            .tickets(&[("t1", "u1"), ("t2", "u2")])
            .ext_allow(&["room:*", "counter:*", "counter_py:*"])
            .route("counter", "counter_js")
            .route("counter_py", "counter_py"),
    )
    .await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("r").await;
    b.join("r").await;
    for svc in ["counter", "counter_py"] {
        for n in 1..=2 {
            a.send_json(json!({"v":1,"svc":svc,"type":"incr","room":"r","seq":n}))
                .await;
            let m = b.recv_type("count").await;
            assert_eq!(m["svc"], svc);
            assert_eq!(m["room"], "r");
            assert_eq!(m["data"], json!({"room":"r","count":n}), "{svc}");
            assert_eq!(a.recv_type("ack").await["seq"], n);
        }
        a.send_json(json!({"v":1,"svc":svc,"type":"incr","room":"elsewhere","seq":9}))
            .await;
        let e = a.recv_type("error").await;
        assert_eq!(e["data"]["code"], "SERVICE_ERROR", "{svc}: {e}");
    }
}

/// `on-disconnect` effects reach the realtime layer like `on-message` ones: the
/// vote demo tells a voter's last room that the voter left, through a real
/// WebSocket, wrapped in the routed `svc`.
#[tokio::test]
async fn on_disconnect_publishes_to_the_room() {
    let dir = plugin_dir(&[("echo", "echo"), ("vote", "vote")]);
    let gw = TestGateway::start(cfg(dir.path())).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;
    a.join("r").await;
    b.join("r").await;
    a.send_json(json!({"v":1,"svc":"vote","type":"cast","room":"r","data":{"option":"x"}}))
        .await;
    assert_eq!(b.recv_type("tally").await["data"]["total"], 1);
    let _ = a.ws.close(None).await;
    drop(a);
    let left = tokio::time::timeout(Duration::from_secs(10), b.recv_type("left"))
        .await
        .expect("left notice from on-disconnect");
    assert_eq!(
        left,
        json!({"v":1,"svc":"vote","type":"left","room":"r","data":{"room":"r","user":"u1"}})
    );
    // A session that never used a room: its on-disconnect publishes nothing.
    let c = gw.client("acme", "t3").await;
    drop(c);
    b.expect_silence(Duration::from_millis(300)).await;
}

/// `on-join` gates a client's join (refusal → SERVICE_ERROR, trap → fail
/// closed with SERVICE_UNAVAILABLE, neither joins), sees the session as it
/// was before the join, cannot start another join, and its reply arrives after
/// `sys.joined`; `on-leave` runs after the leave and its publication reaches the
/// room. Rooms the hooks ignore join as before.
#[tokio::test]
async fn room_hooks_gate_joins_and_hear_leaves() {
    let dir = plugin_dir(&[("echo", "echo"), ("vote", "vote"), ("faults", "faults")]);
    let gw = TestGateway::start(cfg(dir.path()).route("faults", "faults")).await;
    let mut a = gw.client("acme", "t1").await;
    let mut b = gw.client("acme", "t2").await;

    a.send_json(json!({"v":1,"svc":"room","type":"join","room":"vip-1","seq":1}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(e["seq"], 1);
    assert_eq!(e["data"]["code"], "SERVICE_ERROR");
    assert_eq!(e["data"]["msg"], "VIP_ONLY: members only", "{e}");

    // A hook that traps or spins past the CPU budget fails closed; other
    // sessions keep getting answers.
    for (seq, room) in [(2, "trap-1"), (3, "loop-1")] {
        a.send_json(json!({"v":1,"svc":"room","type":"join","room":room,"seq":seq}))
            .await;
        let e = a.recv_type("error").await;
        assert_eq!(e["seq"], seq);
        assert_eq!(e["data"]["code"], "SERVICE_UNAVAILABLE", "{room}: {e}");
        echo_roundtrip(&mut b, seq).await;
    }

    // No refused join happened: presence needs membership.
    for room in ["vip-1", "trap-1", "loop-1"] {
        a.send_json(json!({"v":1,"svc":"room","type":"presence","room":room}))
            .await;
        let e = a.recv_type("error").await;
        assert_eq!(e["data"]["code"], "NOT_IN_ROOM", "{room}: {e}");
    }

    b.join("hook-1").await;
    let w = b.recv_type("welcome").await;
    assert_eq!(w["svc"], "faults");
    let joined = a.join("hook-1").await;
    assert_eq!(joined["room"], "hook-1");
    let w = a.recv_json().await;
    assert_eq!(
        w,
        json!({"v":1,"svc":"faults","type":"welcome","data":{
            "room":"hook-1","user":"u1","rooms_before":[],"may_join":false}})
    );

    // Joining a room the session is already in asks no hook again.
    a.join("hook-1").await;
    a.expect_silence(Duration::from_millis(200)).await;

    a.send_json(json!({"v":1,"svc":"room","type":"leave","room":"hook-1","seq":4}))
        .await;
    assert_eq!(a.recv_type("left").await["room"], "hook-1");
    let bye = b.recv_type("bye").await;
    assert_eq!(
        bye,
        json!({"v":1,"svc":"faults","type":"bye","room":"hook-1","data":{
            "user":"u1","rooms_after":[]}})
    );

    // A room the hooks let through untouched: sys.joined, nothing else.
    a.join("plain").await;
    a.expect_silence(Duration::from_millis(200)).await;
}

/// Issue 12 item 5: plugin faults are logged at WARN with tenant, plugin,
/// session and reason, at most once a second per (tenant, plugin); the next
/// line says how many were left out. The single-threaded runtime keeps every
/// task on this thread, under this test's subscriber.
#[tokio::test]
async fn plugin_faults_are_logged_at_warn_rate_limited() {
    let (captured, _guard) = Captured::warnings();
    let dir = plugin_dir(&[("faults", "faults"), ("echo", "echo")]);
    let gw = TestGateway::start(
        cfg(dir.path())
            .route("faults", "faults")
            .gateway(|g| g.plugins.max_faults_per_session = 100),
    )
    .await;
    let mut bad = gw.connect("acme", "t1").await.expect("connect");
    let authed = bad.recv_json().await;
    let sid = authed["data"]["sid"].as_str().expect("sid").to_owned();
    for seq in 1..=5u64 {
        bad.send_json(json!({"v":1,"svc":"faults","type":"panic","seq":seq}))
            .await;
        assert_eq!(bad.recv_type("error").await["data"]["reason"], "trap");
    }
    let lines = captured.warn_lines("plugin call failed");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    for field in [
        "tenant=acme",
        "plugin=faults",
        "reason=\"trap\"",
        "faults_not_logged=0",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(line.contains(&format!("sid={sid}")), "{line}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    bad.send_json(json!({"v":1,"svc":"faults","type":"loop","seq":9}))
        .await;
    assert_eq!(bad.recv_type("error").await["data"]["reason"], "timeout");
    let lines = captured.warn_lines("plugin call failed");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("reason=\"timeout\"") && lines[1].contains("faults_not_logged=4"),
        "{}",
        lines[1]
    );
}
