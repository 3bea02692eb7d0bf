//! The JavaScript (componentize-js) and Python (componentize-py) SDK examples:
//! the same `counter` service, and the minimal `echo` of the `echo_js` /
//! `echo_py` bench cases, built fresh, loaded by the plugin host and driven
//! through `ExtService`. Skips (with a message) when npm or pip is unavailable.

mod plugin_support;

use plugin_support::*;
use wsprism::error::PluginError;
use wsprism::realtime::outbox::Qos;
use wsprism::services::{Effect, ExtService};

async fn exercise_counter(h: &Host, plugin: &str) {
    let t = Tenant::new("acme");
    let s = t.session(1, "u1", &["r1"]);
    for n in 1..=2 {
        let effects = h
            .host
            .call(t.call(&s, plugin, "incr", Some("r1"), "null"))
            .await
            .unwrap_or_else(|e| panic!("{plugin} incr: {e:?}"));
        match effects.as_slice() {
            [
                Effect::Publish {
                    room,
                    ty,
                    data,
                    qos: Qos::Reliable,
                    key: None,
                    exclude_sender: false,
                },
            ] => {
                assert_eq!((room.as_str(), ty.as_str()), ("r1", "count"));
                assert_eq!(
                    data.get(),
                    format!(r#"{{"room":"r1","count":{n}}}"#),
                    "{plugin}"
                );
            }
            other => panic!("{plugin}: expected a publish, got {other:?}"),
        }
    }
    let effects = h
        .host
        .call(t.call(&s, plugin, "get", Some("r1"), "null"))
        .await
        .expect("get");
    match effects.as_slice() {
        [Effect::Reply { ty, data }] => {
            assert_eq!(ty, "count");
            assert_eq!(data.get(), r#"{"room":"r1","count":2}"#, "{plugin}");
        }
        other => panic!("{plugin}: expected a reply, got {other:?}"),
    }
    let e = h
        .host
        .call(t.call(&s, plugin, "incr", None, "null"))
        .await
        .expect_err("no room");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "NO_ROOM"),
        "{plugin}: {e:?}"
    );
    let e = h
        .host
        .call(t.call(&s, plugin, "incr", Some("r2"), "null"))
        .await
        .expect_err("not in room");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "NOT_IN_ROOM"),
        "{plugin}: {e:?}"
    );
    // Another tenant starts from zero.
    let other = Tenant::new("other");
    let s2 = other.session(2, "u2", &["r1"]);
    let effects = h
        .host
        .call(other.call(&s2, plugin, "get", Some("r1"), "null"))
        .await
        .expect("get");
    assert!(
        matches!(effects.as_slice(), [Effect::Reply { data, .. }] if data.get() == r#"{"room":"r1","count":0}"#)
    );
}

fn host_cfg(lang: &str) -> wsprism::config::PluginsConfig {
    let mut cfg = plugins_cfg(&jspy_dir(lang));
    // Language runtimes need more room than the Rust examples.
    cfg.max_memory_bytes = 256 * 1024 * 1024;
    cfg.call_timeout_ms = 2_000;
    cfg
}

/// The plugin host over `target/.../<lang>` with `plugin` loaded and serving.
async fn serving(lang: &str, plugin: &str) -> Host {
    let h = start(&host_cfg(lang)).await;
    let st = h.host.status("acme", plugin);
    assert_eq!(st.state, "serving", "{st:?}");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_counter_example() {
    let Some(_wasm) = counter_js() else {
        return;
    };
    let h = serving("js", "counter_js").await;
    exercise_counter(&h, "counter_js").await;
}

/// The JS and Python examples export the lifecycle hooks: `on-join` refuses
/// `closed-*` rooms with the plugin's code and lets other joins through;
/// `on-leave` runs and queues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_room_hooks() {
    for (lang, plugin, wasm) in [
        ("js", "counter_js", counter_js()),
        ("python", "counter_py", counter_py()),
    ] {
        if wasm.is_none() {
            continue;
        }
        let h = start(&host_cfg(lang)).await;
        let t = Tenant::new("acme");
        let s = t.session(1, "u1", &[]);
        let hook = |join, room: &str| h.host.call(t.room_hook(join, &s, plugin, room));
        let e = hook(true, "closed-1").await.expect_err("closed room");
        assert!(
            matches!(&e, PluginError::Refused { code, message } if code == "ROOM_CLOSED" && message == "closed-1 is closed"),
            "{plugin}: {e:?}"
        );
        let effects = hook(true, "r1").await;
        assert!(
            effects.as_ref().is_ok_and(Vec::is_empty),
            "{plugin}: {effects:?}"
        );
        let effects = hook(false, "r1").await;
        assert!(
            effects.as_ref().is_ok_and(Vec::is_empty),
            "{plugin}: {effects:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_counter_example() {
    let Some(_wasm) = counter_py() else {
        return;
    };
    let h = serving("python", "counter_py").await;
    exercise_counter(&h, "counter_py").await;
}

/// The bench's minimal echo plugins (`sdk/examples/echo-js`, `echo-py`)
/// answer the sender with the message's own `type` and `data`, through one
/// `reply` and nothing else; many calls in a row on one instance keep doing
/// so (a warm instance is reused, not rebuilt, between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_echo_examples() {
    for (lang, plugin, wasm) in [
        ("js", "echo_js", echo_js()),
        ("python", "echo_py", echo_py()),
    ] {
        if wasm.is_none() {
            continue;
        }
        let mut cfg = host_cfg(lang);
        cfg.instances_per_plugin = 1;
        let h = start(&cfg).await;
        let st = h.host.status("acme", plugin);
        assert_eq!(st.state, "serving", "{st:?}");
        let t = Tenant::new("acme");
        let s = t.session(7, "u7", &["r1"]);
        // ASCII, and UTF-8 of 2, 3 and 4 bytes at the start, middle and
        // end: the JavaScript SDK encodes strings for the host in an
        // ASCII-sized buffer first and grows it when they are not ASCII.
        let pads = [
            "",
            "plain",
            "ü..",
            "..€",
            "漢字かな",
            "a😀",
            "😀",
            "é",
            "x\u{7ff}\u{800}\u{ffff}",
        ];
        for n in 0..50 {
            let pad = pads[n % pads.len()];
            let data = format!(r#"{{"n":{n},"pad":"{pad}"}}"#);
            let effects = h
                .host
                .call(t.call(&s, plugin, "echo", Some("r1"), &data))
                .await
                .unwrap_or_else(|e| panic!("{plugin} call {n}: {e:?}"));
            match effects.as_slice() {
                [Effect::Reply { ty, data: got }] => {
                    assert_eq!(
                        (ty.as_str(), got.get()),
                        ("echo", data.as_str()),
                        "{plugin}"
                    );
                }
                other => panic!("{plugin}: expected one reply, got {other:?}"),
            }
        }
    }
}

/// The JavaScript SDK rewrites componentize-js's export wrappers to await only
/// promises (sdk/js/lib/bindings.mjs). A plain return still answers at once,
/// and an export that returns a promise is still awaited: its effects after
/// the await are applied, a refusal thrown after it is a refusal, and the
/// hooks behave the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_exports_may_return_promises() {
    if async_js().is_none() {
        return;
    }
    let h = serving("js-async", "async_js").await;
    let t = Tenant::new("acme");
    let s = t.session(9, "carol", &["lobby"]);
    let call = |ty: &str, data: &str| h.host.call(t.call(&s, "async_js", ty, None, data));
    for round in 0..3 {
        let effects = call("now", "[1]").await.expect("plain return");
        assert!(
            matches!(effects.as_slice(), [Effect::Reply { ty, data }] if ty == "now" && data.get() == "[1]"),
            "round {round}: {effects:?}"
        );
        let effects = call("later", r#"{"n":2}"#).await.expect("awaited return");
        match effects.as_slice() {
            [Effect::Reply { ty, data }] => {
                assert_eq!(ty, "later");
                let v: serde_json::Value = serde_json::from_str(data.get()).expect("json");
                assert_eq!(v, serde_json::json!({"user": "carol", "data": {"n": 2}}));
            }
            other => panic!("round {round}: expected one reply, got {other:?}"),
        }
        let e = call("refuse", "null")
            .await
            .expect_err("refused after await");
        assert!(
            matches!(&e, PluginError::Refused { code, .. } if code == "LATER"),
            "round {round}: {e:?}"
        );
    }
    // Arguments the encoder's in-place path does not take: a number (its
    // TypeError reaches the plugin) and an empty type (accepted); then a
    // non-ASCII type.
    let effects = call("odd", "null").await.expect("odd arguments");
    match effects.as_slice() {
        [
            Effect::Reply { ty: t0, data: d0 },
            Effect::Reply { ty, data },
        ] => {
            assert_eq!((t0.as_str(), d0.get()), ("", "{}"));
            assert_eq!(ty, "odd-é");
            let v: serde_json::Value = serde_json::from_str(data.get()).expect("json");
            assert_eq!(
                v,
                serde_json::json!({"number": "TypeError", "none": "nothing"})
            );
        }
        other => panic!("expected two replies, got {other:?}"),
    }
    let e = h
        .host
        .run(t.room_hook(true, &s, "async_js", "closed-1"))
        .await
        .expect_err("join refused after await");
    assert!(
        matches!(&e, PluginError::Refused { code, .. } if code == "ROOM_CLOSED"),
        "{e:?}"
    );
    let effects = h
        .host
        .run(t.room_hook(true, &s, "async_js", "open-1"))
        .await
        .expect("join allowed");
    assert!(effects.is_empty(), "{effects:?}");
    let effects = h
        .host
        .call(t.closed(&s, "async_js"))
        .await
        .expect("on-disconnect");
    assert!(
        matches!(effects.as_slice(), [Effect::Publish { room, ty, data, .. }]
            if room == "lobby" && ty == "left" && data.get() == r#"{"user":"carol"}"#),
        "{effects:?}"
    );
    // Ten messages, the three refusals the only failures.
    let st = h.host.status("acme", "async_js");
    assert_eq!((st.calls, st.errors), (10, 3), "{st:?}");
}

/// A JavaScript plugin of the first world (`ext-lane-plugin-lifecycle`, every
/// entry point with a borrowed `session`) still builds with the SDK's
/// rewritten bindings and runs every entry point, each handle answering for
/// the call's session; its `init` (made synchronous by the rewrite) ran, or
/// the plugin would not be serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_first_world_plugins_still_run_every_entry_point() {
    if first_world_js().is_none() {
        return;
    }
    let h = serving("js-first", "first_world_js").await;
    let t = Tenant::new("acme");
    let s = t.session(0x2a, "alice", &["lobby", "arena"]);
    let json = |data: &str| serde_json::from_str::<serde_json::Value>(data).expect("json");
    let plugin = "first_world_js";
    for round in 0..2 {
        let effects = h
            .host
            .call(t.call(&s, plugin, "hello", None, "null"))
            .await
            .expect("on-message");
        match effects.as_slice() {
            [Effect::Reply { ty, data }] => {
                assert_eq!(ty, "whoami");
                assert_eq!(
                    json(data.get()),
                    serde_json::json!({"tenant": "acme", "user": "alice", "sid": 42,
                        "rooms": ["lobby", "arena"], "type": "hello"}),
                    "round {round}"
                );
            }
            other => panic!("round {round}: expected one reply, got {other:?}"),
        }
        let effects = h
            .host
            .run(t.room_hook(true, &s, plugin, "hall"))
            .await
            .expect("on-join");
        assert!(
            matches!(effects.as_slice(), [Effect::Reply { ty, data }]
                if ty == "welcome" && json(data.get())["user"] == "alice"),
            "round {round}: {effects:?}"
        );
        let e = h
            .host
            .run(t.room_hook(true, &s, plugin, "vip-1"))
            .await
            .expect_err("refused after an await");
        assert!(
            matches!(&e, PluginError::Refused { code, .. } if code == "VIP_ONLY"),
            "round {round}: {e:?}"
        );
        let effects = h
            .host
            .run(t.room_hook(false, &s, plugin, "arena"))
            .await
            .expect("on-leave");
        assert!(
            matches!(effects.as_slice(), [Effect::Publish { room, ty, data, .. }]
                if room == "arena" && ty == "bye" && json(data.get())["sid"] == 42),
            "round {round}: {effects:?}"
        );
    }
    let effects = h
        .host
        .call(t.closed(&s, plugin))
        .await
        .expect("on-disconnect");
    assert!(
        matches!(effects.as_slice(), [Effect::Publish { room, ty, data, .. }]
            if room == "lobby" && ty == "left" && json(data.get())["rooms"] == serde_json::json!([])),
        "{effects:?}"
    );
    let st = h.host.status("acme", plugin);
    assert_eq!((st.calls, st.errors), (2, 0), "{st:?}");
}

/// Rough warm per-call cost of the JS and Python counters and of the minimal
/// echo plugins (one `reply`; the Rust one too, for the host's own share),
/// in-process: no sockets, no gateway pipeline
/// (`cargo test --release --test plugins_js_py -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn js_and_python_warm_call_cost() {
    let rust = plugin_dir(&[("echo", "echo")]);
    for (lang, plugin, wasm, ty, what) in [
        (
            "rust",
            "echo",
            Some(rust.path().join("echo.wasm")),
            "echo",
            "one reply",
        ),
        (
            "js",
            "counter_js",
            counter_js(),
            "incr",
            "kv incr + publish",
        ),
        (
            "python",
            "counter_py",
            counter_py(),
            "incr",
            "kv incr + publish",
        ),
        ("js", "echo_js", echo_js(), "echo", "one reply"),
        ("python", "echo_py", echo_py(), "echo", "one reply"),
    ] {
        if wasm.is_none() {
            continue;
        }
        let mut cfg = if lang == "rust" {
            plugins_cfg(rust.path())
        } else {
            host_cfg(lang)
        };
        cfg.instances_per_plugin = 1;
        let h = start(&cfg).await;
        let t = Tenant::new("acme");
        let s = t.session(1, "u1", &["r1"]);
        let data = r#"{"pad":"................................"}"#;
        for _ in 0..50 {
            h.host
                .call(t.call(&s, plugin, ty, Some("r1"), data))
                .await
                .expect("warm");
        }
        // More calls for a profiler to sample: WSPRISM_WARM_CALLS=200000.
        let n: u32 = std::env::var("WSPRISM_WARM_CALLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let started = tokio::time::Instant::now();
        for _ in 0..n {
            h.host
                .call(t.call(&s, plugin, ty, Some("r1"), data))
                .await
                .expect("call");
        }
        eprintln!(
            "{plugin} warm {ty} ({what}): {:?} per call",
            started.elapsed() / n
        );
    }
}

/// The JavaScript SDK's TypeScript declarations match the WIT (regenerated
/// and compared), and the template and the example type-check against them
/// with `tsc --checkJs` (a `session.user` instead of `session.user()` fails).
#[test]
fn javascript_types_match_the_wit_and_check_the_sources() {
    // Building the example installs the SDK's npm packages when missing.
    if counter_js().is_none() {
        return;
    }
    let js = repo().join("sdk/js");
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .current_dir(&js)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("node", &["types.mjs", "--check"]);
    run("node_modules/.bin/tsc", &["-p", "."]);
}
