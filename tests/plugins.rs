//! WASM Ext Lane: the plugin host driven through `ExtService` with real guest
//! components built from `sdk/examples/` and a real `LocalBroker`.

mod plugin_support;

use std::time::Duration;

use plugin_support::*;
use wsprism::config::Isolation;
use wsprism::error::{ClientCode, PluginError, ToRefusal};
use wsprism::realtime::outbox::Qos;
use wsprism::services::{Effect, ExtService};

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
    let h = start(&plugins_cfg(dir.path())).await;
    type Check = fn(&PluginError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("loop", |e| *e == PluginError::Timeout),
        (
            "oom",
            |e| matches!(e, PluginError::Trap(m) if m.contains("memory")),
        ),
        // The shadow stack lives in linear memory: overflowing it is an
        // out-of-bounds access (or a wasm stack overflow), a trap either way.
        ("recurse", |e| matches!(e, PluginError::Trap(_))),
        (
            "flood",
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("host call")),
        ),
        (
            "huge-publish",
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("published")),
        ),
        ("big-publish", |e| *e == PluginError::PayloadTooLarge),
        (
            "bad-json",
            |e| matches!(e, PluginError::BadOutput(m) if m.contains("JSON")),
        ),
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_crashes_back_off() {
    let dir = plugin_dir(&[("faults", "faults")]);
    let h = start(&plugins_cfg(dir.path())).await;
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &[]);
    for _ in 0..5 {
        let e = h
            .host
            .call(t.call(&s, "faults", "panic", None, "null"))
            .await
            .expect_err("trap");
        assert!(matches!(e, PluginError::Trap(_)), "{e:?}");
    }
    let e = h
        .host
        .call(t.call(&s, "faults", "echo", None, "1"))
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
    let _ = Duration::ZERO;
}
