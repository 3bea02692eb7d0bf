//! WASM Ext Lane: the plugin host driven through `ExtService` with real guest
//! components built from `sdk/examples/` and a real `LocalBroker`.

mod plugin_support;

use std::sync::Arc;
use std::time::Duration;

use plugin_support::*;
use wsprism::config::{Isolation, PluginsConfig};
use wsprism::error::{ClientCode, OutputRule, PluginError, ToRefusal};
use wsprism::plugin_host::EntryKind;
use wsprism::realtime::outbox::Qos;
use wsprism::services::{Effect, Entry, ExtService};

fn reply_of(effects: &[Effect]) -> (&str, &str) {
    match effects {
        [Effect::Reply { ty, data }] => (ty.as_str(), data.get()),
        other => panic!("expected one reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_replies_to_the_sender() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    let effects = h
        .host
        .call(t.call(&s, "echo", "hello", None, r#"{"msg":"hi","n":[1,2]}"#))
        .await
        .expect("echo call");
    assert_eq!(reply_of(&effects), ("hello", r#"{"msg":"hi","n":[1,2]}"#));

    let st = h.host.status("acme", "echo");
    assert_eq!(st.state, "serving");
    assert_eq!(st.sha256.as_deref(), Some(sha256(&guest("echo")).as_str()));
    assert_eq!(st.calls, 1);
    assert_eq!(st.errors, 0);
    assert!(
        st.loaded_at
            .as_deref()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20)
    );
    assert!(
        h.metrics
            .render()
            .contains("wsprism_plugin_calls_total{plugin=\"echo\",tenant=\"acme\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_broadcast_publishes_to_a_joined_room() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &["lobby"]);
    let effects = h
        .host
        .call(t.call(&s, "echo", "broadcast", Some("lobby"), r#"{"x":1}"#))
        .await
        .expect("broadcast");
    match effects.as_slice() {
        [
            Effect::Publish {
                room,
                ty,
                data,
                qos,
                key: None,
                exclude_sender,
            },
        ] => {
            assert_eq!(
                (room.as_str(), ty.as_str(), data.get()),
                ("lobby", "broadcast", r#"{"x":1}"#)
            );
            assert_eq!(*qos, Qos::Reliable);
            assert!(!exclude_sender);
        }
        other => panic!("expected a publish, got {other:?}"),
    }
    // Not a member of the room: the plugin refuses, the client sees SERVICE_ERROR.
    let err = h
        .host
        .call(t.call(&s, "echo", "broadcast", Some("elsewhere"), "null"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, PluginError::Refused { code, .. } if code == "NOT_IN_ROOM"),
        "{err:?}"
    );
    assert_eq!(err.to_refusal().code, ClientCode::ServiceError);

    // `publish-latest`: lossy, keyed by the sender, the sender left out.
    let effects = h
        .host
        .call(t.call(&s, "echo", "position", Some("lobby"), r#"{"x":2}"#))
        .await
        .expect("position");
    match effects.as_slice() {
        [
            Effect::Publish {
                room,
                ty,
                data,
                qos: Qos::Lossy,
                key: Some(key),
                exclude_sender: true,
            },
        ] => {
            assert_eq!(
                (room.as_str(), ty.as_str(), data.get(), key.as_str()),
                ("lobby", "position", r#"{"x":2}"#, "u1")
            );
        }
        other => panic!("expected a keyed publish, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugin_is_missing() {
    let dir = plugin_dir(&[]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    let err = h
        .host
        .call(t.call(&s, "nope", "x", None, "null"))
        .await
        .expect_err("missing");
    assert_eq!(err, PluginError::Missing("nope".into()));
    assert_eq!(err.to_refusal().code, ClientCode::ServiceUnavailable);
    assert_eq!(h.host.status("acme", "nope").state, "missing");
}

/// Each fault fails its own call with the expected kind, while an echo call
/// running at the same time succeeds, and the faulty plugin serves again
/// right after (its instance is rebuilt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_fails_only_its_own_call() {
    let dir = plugin_dir(&[("echo", "echo"), ("faults", "faults")]);
    // A CPU budget far above what the memory bomb needs to reach the memory cap,
    // so a loaded machine cannot turn the expected trap into a timeout.
    let mut cfg = plugins_cfg(dir.path());
    cfg.call_timeout_ms = 1_000;
    let h = start(&cfg).await;
    type Check = fn(&PluginError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("loop", |e| matches!(e, PluginError::Timeout)),
        ("oom", |e| matches!(e, PluginError::Memory)),
        // The shadow stack lives in linear memory: overflowing it is an
        // out-of-bounds access (or a wasm stack overflow), a trap either way.
        ("recurse", |e| matches!(e, PluginError::Trap(_))),
        ("flood", |e| {
            matches!(e, PluginError::BadOutput(OutputRule::HostCalls))
        }),
        ("huge-publish", |e| {
            matches!(e, PluginError::BadOutput(OutputRule::PublishedBytes))
        }),
        ("big-publish", |e| matches!(e, PluginError::PayloadTooLarge)),
        ("bad-json", |e| {
            matches!(e, PluginError::BadOutput(OutputRule::InvalidJson))
        }),
        ("panic", |e| matches!(e, PluginError::Trap(_))),
        (
            "refuse",
            |e| matches!(e, PluginError::Refused { code, .. } if code == "NOPE"),
        ),
    ];
    for (i, (fault, expected)) in cases.iter().enumerate() {
        // One tenant per fault, so crash back-off of one case cannot leak into the next.
        let t = Tenant::new(&format!("t{i}"));
        let s = t.session(1, "u1", &["r"]);
        let faulty = h.host.call(t.call(&s, "faults", fault, Some("r"), "null"));
        let other = h
            .host
            .call(t.call(&s, "echo", "ping", None, r#"{"ok":true}"#));
        let (faulty, other) = tokio::join!(faulty, other);
        let err = faulty.expect_err(fault);
        assert!(expected(&err), "{fault}: unexpected error {err:?}");
        assert_eq!(
            reply_of(&other.expect("concurrent echo")),
            ("ping", r#"{"ok":true}"#)
        );
        let again = h
            .host
            .call(t.call(&s, "faults", "echo", Some("r"), r#""after""#))
            .await
            .unwrap_or_else(|e| panic!("{fault}: plugin does not recover: {e:?}"));
        assert_eq!(reply_of(&again), ("echo", r#""after""#));
    }
    let m = h.metrics.render();
    assert!(
        m.contains(
            "wsprism_plugin_errors_total{plugin=\"faults\",reason=\"timeout\",tenant=\"t0\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("reason=\"trap\""));
    assert!(m.contains(
        "wsprism_plugin_errors_total{plugin=\"faults\",reason=\"memory\",tenant=\"t1\"} 1"
    ));
}

/// A guest that grows its memory past `max_memory_bytes` fails its call with
/// `Memory` (not a generic trap): SERVICE_UNAVAILABLE to the client, counted
/// as `reason="memory"`, and the instance is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_hit_is_a_memory_error() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.max_memory_bytes = 16 * 1024 * 1024;
    // Far more CPU than reaching 16 MiB takes, so a loaded machine cannot
    // turn the memory hit into a timeout.
    cfg.call_timeout_ms = 2_000;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &["r"]);
    let e = h
        .host
        .call(t.call(&s, "faults", "oom", Some("r"), "null"))
        .await
        .expect_err("over the memory cap");
    assert!(matches!(e, PluginError::Memory), "{e:?}");
    assert_eq!(e.to_refusal().code, ClientCode::ServiceUnavailable);
    assert!(h.metrics.render().contains(
        "wsprism_plugin_errors_total{plugin=\"faults\",reason=\"memory\",tenant=\"acme\"} 1"
    ));
    let e = h
        .host
        .call(t.call(&s, "faults", "count", Some("r"), "null"))
        .await
        .expect("a fresh instance serves");
    assert_eq!(reply_of(&e).1, r#"{"n":1}"#, "the instance was replaced");
}

/// A guest that spins fails its call with `Timeout` once its CPU budget
/// (`call_timeout_ms`) is spent, in `on-message` and in a room hook alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guest_is_a_timeout() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.call_timeout_ms = 200;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    let started = tokio::time::Instant::now();
    let e = h
        .host
        .call(t.call(&s, "faults", "loop", None, "null"))
        .await
        .expect_err("spins");
    assert!(matches!(e, PluginError::Timeout), "{e:?}");
    assert_eq!(e.to_refusal().code, ClientCode::ServiceUnavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let e = h
        .host
        .run(t.plugin_call(
            Entry::Join {
                room: "loop-1".into(),
            },
            &s,
            "faults",
        ))
        .await
        .expect_err("on-join spins");
    assert!(matches!(e, PluginError::Timeout), "{e:?}");
}

/// Every entry point goes through `PluginHost::run` with one record: the
/// rules of `Entry` decide what an absent plugin answers and what is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_runs_through_one_call() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &["lobby"]);
    let run = |entry: Entry, plugin: &str| h.host.run(t.plugin_call(entry, &s, plugin));
    let message = || Entry::Message {
        ty: "echo".into(),
        room: Some("lobby".into()),
        seq: Some(1),
        data: serde_json::value::RawValue::from_string("[1]".into()).expect("json"),
    };
    let effects = run(message(), "faults").await.expect("on-message");
    assert_eq!(reply_of(&effects), ("echo", "[1]"));

    let effects = run(
        Entry::Join {
            room: "hook-1".into(),
        },
        "faults",
    )
    .await
    .expect("on-join");
    let (ty, data) = reply_of(&effects);
    assert_eq!(ty, "welcome");
    let welcome: serde_json::Value = serde_json::from_str(data).expect("json");
    assert_eq!(welcome["rooms_before"], serde_json::json!(["lobby"]));
    assert_eq!(welcome["may_join"], false, "join is not allowed in on-join");
    let e = run(
        Entry::Join {
            room: "vip-1".into(),
        },
        "faults",
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "VIP_ONLY"),
        "{e:?}"
    );
    let effects = run(
        Entry::Leave {
            room: "hook-1".into(),
        },
        "faults",
    )
    .await
    .expect("on-leave");
    assert!(
        matches!(effects.as_slice(), [Effect::Publish { room, ty, .. }] if room == "hook-1" && ty == "bye"),
        "{effects:?}"
    );
    let effects = run(Entry::Disconnect, "faults")
        .await
        .expect("on-disconnect");
    assert_eq!(effects.len(), 2, "{effects:?}");

    // A plugin that is not loaded: a message needs it, a hook has nothing to do.
    assert!(!h.host.exports("nope", EntryKind::Join));
    let e = run(message(), "nope").await.expect_err("missing");
    assert_eq!(e, PluginError::Missing("nope".into()));
    for hook in [
        Entry::Disconnect,
        Entry::Join { room: "r".into() },
        Entry::Leave { room: "r".into() },
    ] {
        let effects = run(hook, "nope").await.expect("absent hook");
        assert!(effects.is_empty());
    }
    for kind in [
        EntryKind::Message,
        EntryKind::Disconnect,
        EntryKind::Join,
        EntryKind::Leave,
    ] {
        assert!(h.host.exports("faults", kind), "{kind:?}");
    }
    // Only messages are counted (one success; the refused join is not).
    let st = h.host.status("acme", "faults");
    assert_eq!((st.calls, st.errors), (1, 0), "{st:?}");
}

/// A plugin of the first world (`ext-lane-plugin-lifecycle`: every entry point
/// takes a borrowed `session`) still loads beside world-`plugin` ones and runs
/// every entry point, its handle answering for the call's session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_world_plugins_still_run_every_entry_point() {
    let dir = plugin_dir(&[("first_world", "first"), ("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 1;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(0x2a, "alice", &["lobby", "arena"]);
    let json = |data: &str| serde_json::from_str::<serde_json::Value>(data).expect("json");
    let run = |entry: Entry| h.host.run(t.plugin_call(entry, &s, "first"));

    let effects = h
        .host
        .call(t.call(&s, "first", "hello", None, "null"))
        .await
        .expect("on-message");
    let (ty, data) = reply_of(&effects);
    assert_eq!(ty, "whoami");
    assert_eq!(
        json(data),
        serde_json::json!({"tenant": "acme", "user": "alice", "sid": 42,
            "rooms": ["lobby", "arena"], "type": "hello"})
    );

    let effects = run(Entry::Join {
        room: "hall".into(),
    })
    .await
    .expect("on-join");
    let (ty, data) = reply_of(&effects);
    assert_eq!((ty, json(data)["type"].as_str()), ("welcome", Some("join")));
    assert_eq!(json(data)["rooms"], serde_json::json!(["lobby", "arena"]));
    let e = run(Entry::Join {
        room: "vip-1".into(),
    })
    .await
    .expect_err("refused");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "VIP_ONLY"),
        "{e:?}"
    );
    let effects = run(Entry::Leave {
        room: "arena".into(),
    })
    .await
    .expect("on-leave");
    assert!(
        matches!(effects.as_slice(), [Effect::Publish { room, ty, data, .. }]
            if room == "arena" && ty == "bye" && json(data.get())["user"] == "alice"),
        "{effects:?}"
    );
    let effects = h
        .host
        .call(t.closed(&s, "first"))
        .await
        .expect("on-disconnect");
    match effects.as_slice() {
        [Effect::Publish { room, ty, data, .. }] => {
            assert_eq!((room.as_str(), ty.as_str()), ("lobby", "left"));
            let d = json(data.get());
            assert_eq!(
                (d["user"].as_str(), d["sid"].as_u64()),
                (Some("alice"), Some(42))
            );
            assert_eq!(
                d["rooms"],
                serde_json::json!([]),
                "a closed session is in no room"
            );
        }
        other => panic!("expected one publish, got {other:?}"),
    }
    for kind in [
        EntryKind::Message,
        EntryKind::Disconnect,
        EntryKind::Join,
        EntryKind::Leave,
    ] {
        assert!(h.host.exports("first", kind), "{kind:?}");
    }
    // The world-`plugin` component beside it is served by the same host.
    let effects = h
        .host
        .call(t.call(&s, "faults", "echo", None, "[2]"))
        .await
        .expect("world plugin");
    assert_eq!(reply_of(&effects), ("echo", "[2]"));
    let st = h.host.status("acme", "first");
    assert_eq!((st.calls, st.errors), (1, 0), "{st:?}");
}

/// Faults are charged to their session (issue 11): after
/// `max_faults_per_session` the session alone is refused; other sessions of
/// the tenant, even of the same user, are served; one user's many sessions are
/// one strike; faults of several users back the whole plugin off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_faults_back_off_the_session_then_the_plugin() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let trap = |s: &wsprism::services::SessionInfo| {
        h.host.call(t.call(s, "faults", "panic", None, "null"))
    };
    let echo =
        |s: &wsprism::services::SessionInfo| h.host.call(t.call(s, "faults", "echo", None, "1"));
    let s = t.session(1, "u1", &[]);
    for _ in 0..3 {
        let e = trap(&s).await.expect_err("trap");
        assert!(matches!(e, PluginError::Trap(_)), "{e:?}");
    }
    let e = echo(&s).await.expect_err("session backing off");
    assert_eq!(e, PluginError::SessionBackingOff);
    assert_eq!(h.host.status("acme", "faults").state, "serving");
    // The session's join hooks are refused too; its leaves are still told.
    let e = h
        .host
        .call(t.room_hook(true, &s, "faults", "plain"))
        .await
        .expect_err("join refused");
    assert_eq!(e, PluginError::SessionBackingOff);
    h.host
        .call(t.room_hook(false, &s, "faults", "plain"))
        .await
        .expect("leave told");
    // Another session of the same user is served, and so is another user.
    let s_again = t.session(2, "u1", &[]);
    echo(&s_again).await.expect("same user, other session");
    // One user with many sessions is one strike: no plugin-wide back-off.
    for sid in 3..9 {
        trap(&t.session(sid, "u1", &[])).await.expect_err("trap");
    }
    echo(&t.session(20, "u2", &[]))
        .await
        .expect("other user served");
    // Faults of five distinct users (u1 already counts) back the plugin off.
    for (sid, user) in [(21, "u2"), (22, "u3"), (23, "u4"), (24, "u5")] {
        trap(&t.session(sid, user, &[])).await.expect_err("trap");
    }
    let e = echo(&t.session(30, "u6", &[]))
        .await
        .expect_err("backing off");
    assert_eq!(e, PluginError::BackingOff);
    assert_eq!(h.host.status("acme", "faults").state, "backing off");
    // Another tenant is not affected.
    let other = Tenant::new("other");
    let s2 = other.session(2, "u2", &[]);
    h.host
        .call(other.call(&s2, "faults", "echo", None, "1"))
        .await
        .expect("other tenant serves");
    // Room hooks are still asked while the plugin backs off: a crash-looping
    // on-message does not lock the tenant's joins, and the gate still gates.
    let s7 = t.session(40, "u7", &[]);
    let join = |room: &str| h.host.call(t.room_hook(true, &s7, "faults", room));
    assert!(join("plain").await.expect("join allowed").is_empty());
    let e = join("vip-1").await.expect_err("refused");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "VIP_ONLY"),
        "{e:?}"
    );
}

/// Two tenants using the same plugin share neither kv nor instance memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_kv_or_instances() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 1;
    let h = start(&cfg).await;
    let a = Tenant::new("a");
    let b = Tenant::new("b");
    let sa = a.session(1, "u", &["r"]);
    let sb = b.session(1, "u", &["r"]);
    for expected in 1..=3 {
        let e = h
            .host
            .call(a.call(&sa, "faults", "count", Some("r"), "null"))
            .await
            .expect("a");
        assert_eq!(reply_of(&e).1, format!(r#"{{"n":{expected}}}"#));
        let e = h
            .host
            .call(a.call(&sa, "faults", "kv-count", Some("r"), "null"))
            .await
            .expect("a kv");
        assert_eq!(reply_of(&e).1, format!(r#"{{"n":{expected}}}"#));
    }
    let e = h
        .host
        .call(b.call(&sb, "faults", "count", Some("r"), "null"))
        .await
        .expect("b");
    assert_eq!(
        reply_of(&e).1,
        r#"{"n":1}"#,
        "tenant b saw tenant a's instance memory"
    );
    let e = h
        .host
        .call(b.call(&sb, "faults", "kv-count", Some("r"), "null"))
        .await
        .expect("b kv");
    assert_eq!(reply_of(&e).1, r#"{"n":1}"#, "tenant b saw tenant a's kv");
}

/// Messages of one room go to one instance, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rooms_messages_run_in_order_on_one_instance() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 4;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let sessions: Vec<_> = (1..=5)
        .map(|i| t.session(i, &format!("u{i}"), &["room-1"]))
        .collect();
    let calls = (0..40).map(|i| {
        h.host
            .call(t.call(&sessions[i % 5], "faults", "count", Some("room-1"), "null"))
    });
    let results = futures_util::future::join_all(calls).await;
    let ns: Vec<String> = results
        .iter()
        .map(|r| reply_of(r.as_ref().expect("count")).1.to_owned())
        .collect();
    let expected: Vec<String> = (1..=40).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(ns, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_isolation_uses_a_fresh_instance_per_call() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.isolation = Isolation::PerMessage;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &["r"]);
    for expected_kv in 1..=3 {
        let e = h
            .host
            .call(t.call(&s, "faults", "count", Some("r"), "null"))
            .await
            .expect("count");
        assert_eq!(reply_of(&e).1, r#"{"n":1}"#);
        let e = h
            .host
            .call(t.call(&s, "faults", "kv-count", Some("r"), "null"))
            .await
            .expect("kv");
        assert_eq!(reply_of(&e).1, format!(r#"{{"n":{expected_kv}}}"#));
    }
    let e = h
        .host
        .call(t.call(&s, "faults", "loop", None, "null"))
        .await
        .expect_err("timeout");
    assert_eq!(e, PluginError::Timeout);
}

/// Issue 11 item 7: in `per_message` mode one tenant's burst of slow calls
/// (here: 40 calls parked on a backend that does not answer) holds at most its
/// own share of fresh instances, so another tenant's call is served at once
/// instead of waiting for the shared budget until it times out (Overloaded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_budget_is_per_tenant() {
    use axum::routing::get;
    let release = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new().route(
        "/hold",
        get({
            let release = Arc::clone(&release);
            move || async move {
                release.notified().await;
                "ok"
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
    let dir = plugin_dir(&[("faults", "faults"), ("echo", "echo")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.isolation = Isolation::PerMessage;
    cfg.call_timeout_ms = 3_000;
    let h = start(&cfg).await;
    let noisy = Tenant::with_yaml(
        "noisy",
        &format!(
            "backend: {{ upstreams: {{ main: {{ url: 'http://{addr}', timeout_ms: 3000 }} }} }}"
        ),
    );
    let mut parked = Vec::new();
    for i in 0..40u64 {
        let host = Arc::clone(&h.host);
        let call = noisy.call(
            &noisy.session(i + 1, &format!("u{i}"), &[]),
            "faults",
            "backend",
            None,
            r#"{"upstream":"main","path":"/hold"}"#,
        );
        parked.push(tokio::spawn(async move { host.call(call).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let quiet = Tenant::new("quiet");
    let s = quiet.session(100, "q", &[]);
    let e = h
        .host
        .call(quiet.call(&s, "echo", "t", None, r#"{"x":1}"#))
        .await
        .expect("the quiet tenant is served while the noisy one holds its share");
    assert_eq!(reply_of(&e), ("t", r#"{"x":1}"#));
    release.notify_waiters();
    for p in parked {
        let _ = p.await;
    }
}

/// Issue 12 items 5 and 6: a symlinked plugin file is loaded (mounted
/// volumes, release directories), and a `.wasm` whose name is not a plugin
/// name (`dice.v2.wasm`) is logged at WARN instead of silently ignored.
#[tokio::test]
async fn symlinked_plugins_load_and_ignored_names_are_logged() {
    let (captured, _guard) = plugin_support::Captured::warnings();
    let dir = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let echo = guests().join("echo.wasm");
    std::fs::copy(&echo, elsewhere.path().join("echo-v7.wasm")).expect("copy");
    std::os::unix::fs::symlink(
        elsewhere.path().join("echo-v7.wasm"),
        dir.path().join("echo.wasm"),
    )
    .expect("symlink");
    std::fs::copy(&echo, dir.path().join("dice.v2.wasm")).expect("copy");
    let h = start(&plugins_cfg(dir.path())).await;
    assert_eq!(h.host.plugins(), vec!["echo".to_owned()]);
    let lines = captured.warn_lines("plugin file ignored");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("dice.v2.wasm"), "{}", lines[0]);
}

/// Rough per-call cost of echo on a warm instance (`cargo test -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn echo_warm_call_cost() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 1;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &["r"]);
    for _ in 0..200 {
        h.host
            .call(t.call(&s, "echo", "w", Some("r"), r#"{"a":1}"#))
            .await
            .expect("warm");
    }
    let n = 20_000u32;
    let start = tokio::time::Instant::now();
    for _ in 0..n {
        h.host
            .call(t.call(&s, "echo", "w", Some("r"), r#"{"msg":"hello"}"#))
            .await
            .expect("echo");
    }
    let per = start.elapsed() / n;
    eprintln!("echo warm sharded call: {per:?} per call over {n} calls");
    let mut cfg2 = cfg.clone();
    cfg2.isolation = Isolation::PerMessage;
    h.host.update_config(&cfg2);
    let n2 = 2_000u32;
    let start = tokio::time::Instant::now();
    for _ in 0..n2 {
        h.host
            .call(t.call(&s, "echo", "w", Some("r"), r#"{"msg":"hello"}"#))
            .await
            .expect("echo");
    }
    eprintln!(
        "echo per_message call: {:?} per call over {n2} calls",
        start.elapsed() / n2
    );
}

/// Hot reload through the directory watcher: replace → new sha serves; broken
/// file → old version keeps serving and status says so; wrong WIT → refused at
/// `instantiate_pre`; delete → Missing; re-add → serving again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_replace_break_wrong_wit_delete() {
    let dir = plugin_dir(&[("echo", "echo")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.watch = true;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    let v1 = sha256(&guest("echo"));
    assert_eq!(
        h.host.status("acme", "echo").sha256.as_deref(),
        Some(v1.as_str())
    );

    // Replace (atomic rename) with a new build.
    let v2_bytes = variant(&guest("echo"), "v2");
    let v2 = sha256(&v2_bytes);
    deploy(dir.path(), "echo.wasm", &v2_bytes);
    let st = wait_status(&h.host, "acme", "echo", "v2 to serve", |s| {
        s.sha256.as_deref() == Some(v2.as_str())
    })
    .await;
    assert_eq!(st.state, "serving");
    h.host
        .call(t.call(&s, "echo", "a", None, "1"))
        .await
        .expect("v2 serves");

    // A file that is not a component: v2 keeps serving.
    std::fs::write(dir.path().join("echo.wasm"), b"\0asm garbage").expect("write");
    let st = wait_status(&h.host, "acme", "echo", "failed to load", |s| {
        s.state == "failed to load"
    })
    .await;
    assert_eq!(st.sha256.as_deref(), Some(v2.as_str()));
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid component")),
        "{st:?}"
    );
    let e = h
        .host
        .call(t.call(&s, "echo", "still", None, "2"))
        .await
        .expect("old version serves");
    assert_eq!(reply_of(&e), ("still", "2"));
    assert!(
        h.metrics
            .render()
            .contains("wsprism_plugin_loads_total{plugin=\"echo\",result=\"error\"} 1")
    );

    // A component built against another WIT: refused when linking.
    deploy(dir.path(), "echo.wasm", &guest("wrong_wit"));
    let st = wait_status(&h.host, "acme", "echo", "wrong wit refused", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("imports do not match"))
    })
    .await;
    assert_eq!(st.state, "failed to load");
    assert_eq!(st.sha256.as_deref(), Some(v2.as_str()));
    h.host
        .call(t.call(&s, "echo", "x", None, "3"))
        .await
        .expect("old version still serves");

    // Back to a good file: the failure clears.
    deploy(dir.path(), "echo.wasm", &guest("echo"));
    wait_status(&h.host, "acme", "echo", "v1 again", |s| {
        s.state == "serving" && s.sha256.as_deref() == Some(v1.as_str())
    })
    .await;

    // Delete: routes answer Missing (SERVICE_UNAVAILABLE).
    std::fs::remove_file(dir.path().join("echo.wasm")).expect("delete");
    wait_status(&h.host, "acme", "echo", "missing", |s| s.state == "missing").await;
    let e = h
        .host
        .call(t.call(&s, "echo", "gone", None, "4"))
        .await
        .expect_err("missing");
    assert_eq!(e, PluginError::Missing("echo".into()));

    // A new file appears.
    deploy(dir.path(), "echo.wasm", &guest("echo"));
    wait_status(&h.host, "acme", "echo", "serving again", |s| {
        s.state == "serving"
    })
    .await;
    h.host
        .call(t.call(&s, "echo", "back", None, "5"))
        .await
        .expect("serves again");
}

/// A plugin built against the wrong WIT never starts serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_wit_component_is_refused_at_startup() {
    let dir = plugin_dir(&[("wrong_wit", "wrong")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let st = h.host.status("acme", "wrong");
    assert_eq!(st.state, "failed to load");
    assert_eq!(st.sha256, None);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("imports do not match")),
        "{st:?}"
    );
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &[]);
    let e = h
        .host
        .call(t.call(&s, "wrong", "x", None, "1"))
        .await
        .expect_err("not loaded");
    assert_eq!(e, PluginError::Missing("wrong".into()));
}

/// In-flight calls finish on the version they started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_calls_finish_on_the_old_version() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.call_timeout_ms = 400;
    let h = std::sync::Arc::new(start(&cfg).await);
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &["r"]);
    // A call that runs (and times out) while the file is replaced and reloaded.
    let slow = {
        let h = std::sync::Arc::clone(&h);
        let call = t.call(&s, "faults", "loop", Some("r"), "null");
        tokio::spawn(async move { h.host.call(call).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    deploy(dir.path(), "faults.wasm", &variant(&guest("faults"), "v2"));
    h.host.reload().await;
    assert_eq!(
        slow.await.expect("join").expect_err("old call times out"),
        PluginError::Timeout
    );
    let e = h
        .host
        .call(t.call(&s, "faults", "echo", Some("r"), "7"))
        .await
        .expect("new version serves");
    assert_eq!(reply_of(&e), ("echo", "7"));
}

/// The vote example keeps its tallies in kv: they survive a reload (which
/// recycles every instance) and refusals reach the client as SERVICE_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_state_in_kv_survives_a_reload() {
    let dir = plugin_dir(&[("vote", "vote")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let alice = t.session(1, "alice", &["poll-1"]);
    let bob = t.session(2, "bob", &["poll-1"]);
    let e = h
        .host
        .call(t.call(
            &alice,
            "vote",
            "cast",
            Some("poll-1"),
            r#"{"option":"tea"}"#,
        ))
        .await
        .expect("alice votes");
    match e.as_slice() {
        [
            Effect::Publish {
                room,
                ty,
                data,
                qos: Qos::Reliable,
                ..
            },
        ] => {
            assert_eq!((room.as_str(), ty.as_str()), ("poll-1", "tally"));
            assert_eq!(
                data.get(),
                r#"{"room":"poll-1","counts":{"tea":1},"total":1}"#
            );
        }
        other => panic!("expected a tally publish, got {other:?}"),
    }
    let again = h
        .host
        .call(t.call(
            &alice,
            "vote",
            "cast",
            Some("poll-1"),
            r#"{"option":"tea"}"#,
        ))
        .await
        .expect_err("second vote refused");
    assert!(matches!(&again, PluginError::Refused { code, .. } if code == "ALREADY_VOTED"));

    deploy(dir.path(), "vote.wasm", &variant(&guest("vote"), "v2"));
    h.host.reload().await;
    let v2 = sha256(&variant(&guest("vote"), "v2"));
    assert_eq!(
        h.host.status("acme", "vote").sha256.as_deref(),
        Some(v2.as_str())
    );

    h.host
        .call(t.call(
            &bob,
            "vote",
            "cast",
            Some("poll-1"),
            r#"{"option":"coffee"}"#,
        ))
        .await
        .expect("bob votes after reload");
    let e = h
        .host
        .call(t.call(&bob, "vote", "tally", Some("poll-1"), "null"))
        .await
        .expect("tally");
    assert_eq!(
        reply_of(&e),
        (
            "tally",
            r#"{"room":"poll-1","counts":{"coffee":1,"tea":1},"total":2}"#
        )
    );
    // Another tenant's poll with the same room name is separate.
    let other = Tenant::new("other");
    let carol = other.session(3, "carol", &["poll-1"]);
    let e = h
        .host
        .call(other.call(&carol, "vote", "tally", Some("poll-1"), "null"))
        .await
        .expect("other tally");
    assert_eq!(reply_of(&e).1, r#"{"room":"poll-1","counts":{},"total":0}"#);
}

/// `backend` reaches the tenant's named upstream only, and `members` answers
/// from the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_calls_reach_only_configured_upstreams() {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hi from backend" }))
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::temporary("http://127.0.0.2:9/elsewhere") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::with_yaml(
        "acme",
        &format!(
            "backend: {{ upstreams: {{ main: {{ url: 'http://{addr}', timeout_ms: 2000 }} }} }}"
        ),
    );
    let s = t.session(1, "u1", &["room-a"]);
    t.session(2, "u2", &["room-a"]);
    let e = h
        .host
        .call(t.call(
            &s,
            "faults",
            "backend",
            None,
            r#"{"upstream":"main","path":"/hello"}"#,
        ))
        .await
        .expect("backend call");
    assert_eq!(
        reply_of(&e),
        ("backend", r#"{"body":"hi from backend","status":200}"#)
    );
    let e = h
        .host
        .call(t.call(
            &s,
            "faults",
            "backend",
            None,
            r#"{"upstream":"other","path":"/hello"}"#,
        ))
        .await
        .expect("unknown upstream is a result, not a trap");
    assert_eq!(reply_of(&e).0, "backend-error");
    assert!(reply_of(&e).1.contains("UnknownUpstream"));
    let e = h
        .host
        .call(t.call(
            &s,
            "faults",
            "backend",
            None,
            r#"{"upstream":"main","path":"@evil.example/x"}"#,
        ))
        .await
        .expect("escaping path is a result");
    assert!(reply_of(&e).1.contains("InvalidArgument"), "{e:?}");
    // Redirects are handed to the guest, not followed.
    let e = h
        .host
        .call(t.call(
            &s,
            "faults",
            "backend",
            None,
            r#"{"upstream":"main","path":"/redirect"}"#,
        ))
        .await
        .expect("redirect answer");
    assert_eq!(reply_of(&e), ("backend", r#"{"body":"","status":307}"#));
    let e = h
        .host
        .call(t.call(&s, "faults", "members", Some("room-a"), "null"))
        .await
        .expect("members");
    assert_eq!(reply_of(&e), ("members", r#"["u1","u2"]"#));
    assert!(
        h.metrics.render().contains(
            "wsprism_backend_calls_total{kind=\"plugin\",result=\"ok\",tenant=\"acme\"} 2"
        )
    );
}

/// `init` runs once per new instance (with the tenant) and `on-disconnect`
/// runs for a closed session without disturbing the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_hooks_run() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 1;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "alice", &[]);
    let kv_get = |key: &'static str| {
        let call = t.call(&s, "faults", "kv-get", None, &format!("\"{key}\""));
        let host = &h.host;
        async move {
            reply_of(&host.call(call).await.expect("kv-get"))
                .1
                .to_owned()
        }
    };
    h.host
        .call(t.call(&s, "faults", "count", None, "null"))
        .await
        .expect("count");
    assert_eq!(
        kv_get("inits").await,
        r#""1""#,
        "init ran once for this tenant"
    );
    // A trap recycles the instance: the next call initializes a new one.
    h.host
        .call(t.call(&s, "faults", "panic", None, "null"))
        .await
        .expect_err("trap");
    assert_eq!(kv_get("inits").await, r#""2""#);

    let effects = h
        .host
        .call(t.closed(&s, "faults"))
        .await
        .expect("on-disconnect runs");
    assert_eq!(kv_get("disconnects").await, r#""1""#);
    assert_eq!(kv_get("last-disconnect").await, r#""alice""#);
    // A closed session: reply, join and leave answer `not-allowed` (a result,
    // not a trap); publish and send-to-user come back as effects.
    assert_eq!(kv_get("disconnect-refused").await, r#""[true,true,true]""#);
    match effects.as_slice() {
        [
            Effect::Publish {
                room,
                ty,
                data,
                qos,
                ..
            },
            Effect::SendToUser {
                user,
                ty: ty2,
                data: data2,
            },
        ] => {
            assert_eq!(
                (room.as_str(), ty.as_str(), data.get(), *qos),
                ("lobby", "left", r#"{"user":"alice"}"#, Qos::Reliable)
            );
            assert_eq!(
                (user.as_str(), ty2.as_str(), data2.get()),
                ("watcher", "left", r#"{"user":"alice"}"#)
            );
        }
        other => panic!("expected a publish and a send-to-user, got {other:?}"),
    }
    assert!(
        h.host
            .call(t.closed(&s, "missing"))
            .await
            .is_ok_and(|effects| effects.is_empty()),
        "nothing runs for a plugin that is not loaded"
    );
    let e = h
        .host
        .call(t.call(&s, "faults", "count", None, "null"))
        .await
        .expect("count");
    assert_eq!(
        reply_of(&e).1,
        r#"{"n":1}"#,
        "the instance survived on-disconnect"
    );
    assert_eq!(
        kv_get("inits").await,
        r#""2""#,
        "no new instance for on-disconnect"
    );
}

/// Config reload changes the call budget for new calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_config_applies_to_new_calls() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let cfg = plugins_cfg(dir.path());
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &[]);
    let started = tokio::time::Instant::now();
    let e = h
        .host
        .call(t.call(&s, "faults", "loop", None, "null"))
        .await
        .expect_err("timeout");
    assert_eq!(e, PluginError::Timeout);
    let short = started.elapsed();
    let mut longer = cfg.clone();
    longer.call_timeout_ms = 2_000;
    h.host.update_config(&longer);
    let started = tokio::time::Instant::now();
    let e = h
        .host
        .call(t.call(&s, "faults", "loop", None, "null"))
        .await
        .expect_err("timeout");
    assert_eq!(e, PluginError::Timeout);
    let long = started.elapsed();
    assert!(
        long > Duration::from_millis(1_500),
        "new budget applies: {short:?} -> {long:?}"
    );
    assert!(short < Duration::from_millis(1_500), "{short:?}");
}

/// The demo builds committed in `plugins/` load with the current WIT, and the
/// compiled artifacts land in `cache_dir`, never in the plugin folder (issue
/// 11: write access to `plugins/` must not amount to planting native code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_demo_plugins_load_and_are_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["echo", "vote"] {
        let src = repo().join("plugins").join(format!("{name}.wasm"));
        std::fs::copy(&src, dir.path().join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("{} (run scripts/build-plugins.sh): {e}", src.display()));
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let cfg = PluginsConfig {
        cache_dir: cache.path().join("cc").display().to_string(),
        ..plugins_cfg(dir.path())
    };
    let h = start(&cfg).await;
    assert_eq!(h.host.plugins(), vec!["echo".to_owned(), "vote".to_owned()]);
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &[]);
    let e = h
        .host
        .call(t.call(&s, "echo", "t", None, r#"{"d":1}"#))
        .await
        .expect("echo");
    assert_eq!(reply_of(&e), ("t", r#"{"d":1}"#));
    fn count_files(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            count_files(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    assert!(
        count_files(&cache.path().join("cc")) >= 2,
        "compiled artifacts are cached"
    );
    assert_eq!(
        count_files(dir.path()),
        2,
        "only the two .wasm files in the plugin dir"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(cache.path().join("cc"))
        .expect("cache dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "cache dir is private: {mode:o}");
    drop(h);
    // A restart over the same dir serves the same versions (from the cache).
    let h = start(&cfg).await;
    assert_eq!(h.host.status("acme", "vote").state, "serving");
}

/// A slow upstream is cut at the upstream's `timeout_ms` and the guest gets an
/// error result (not a trap); the call itself still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_is_bounded_by_the_upstream_timeout() {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            "late"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::with_yaml(
        "acme",
        &format!(
            "backend: {{ upstreams: {{ main: {{ url: 'http://{addr}', timeout_ms: 300 }} }} }}"
        ),
    );
    let s = t.session(1, "u1", &[]);
    let started = tokio::time::Instant::now();
    let e = h
        .host
        .call(t.call(
            &s,
            "faults",
            "backend",
            None,
            r#"{"upstream":"main","path":"/slow"}"#,
        ))
        .await
        .expect("a slow backend is an error result for the guest");
    assert_eq!(reply_of(&e).0, "backend-error");
    assert!(reply_of(&e).1.contains("Unavailable"), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
}

/// An instance whose memory grew past 75% of `max_memory_bytes` is recycled
/// after the call that grew it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_is_recycled_after_a_memory_high_water_mark() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.instances_per_plugin = 1;
    cfg.max_memory_bytes = 16 * 1024 * 1024;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u", &["r"]);
    let count = |expected: &'static str| {
        let call = t.call(&s, "faults", "count", Some("r"), "null");
        let host = &h.host;
        async move {
            let e = host.call(call).await.expect("count");
            assert_eq!(reply_of(&e).1, expected);
        }
    };
    count(r#"{"n":1}"#).await;
    count(r#"{"n":2}"#).await;
    h.host
        .call(t.call(&s, "faults", "grow", Some("r"), "null"))
        .await
        .expect("grow stays under the cap");
    count(r#"{"n":1}"#).await;
}

/// Shutdown stops every task the host spawned (ticker thread aside, which
/// checks the same token): the idle sweeper, the watcher, per-message work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_tracked_task() {
    let dir = plugin_dir(&[("echo", "echo"), ("faults", "faults")]);
    let mut cfg = plugins_cfg(dir.path());
    cfg.watch = true;
    let h = start(&cfg).await;
    let t = Tenant::new("acme");
    for sid in 0..6 {
        let s = t.session(sid, "u", &[]);
        h.host
            .call(t.call(&s, "echo", "x", None, "1"))
            .await
            .expect("echo");
        h.host
            .call(t.call(&s, "faults", "count", None, "1"))
            .await
            .expect("count");
        h.host
            .call(t.closed(&s, "faults"))
            .await
            .expect("on-disconnect");
    }
    h.shutdown.cancel();
    h.tracker.close();
    tokio::time::timeout(Duration::from_secs(10), h.tracker.wait())
        .await
        .expect("all plugin tasks stop on shutdown");
    let s = t.session(99, "u", &[]);
    let e = h
        .host
        .call(t.call(&s, "echo", "x", None, "1"))
        .await
        .expect_err("stopped");
    assert!(
        matches!(e, PluginError::Overloaded | PluginError::Trap(_)),
        "{e:?}"
    );
}
