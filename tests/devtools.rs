//! Plugin developer tooling end to end: `wsprism new plugin` projects in each
//! language built with their own `build.sh` and answering through the plugin
//! host (JavaScript and Python ones also as their README says to add the
//! hooks), the Rust SDK's native test host under `cargo test`, and
//! `wsprism plugin call` on Rust and JavaScript components.
//!
//! Everything runs the real binary (`CARGO_BIN_EXE_wsprism`). Slow steps keep
//! their caches under `<target>/devtools/` (the target dir of this build): a
//! shared Rust target dir, one componentize-js and one componentize-py
//! install (the `WSPRISM_JS_TOOLCHAIN` / `WSPRISM_PY_TOOLCHAIN` variables the
//! generated `build.sh` honours), the plugin host's compiled-code cache, and
//! the last JavaScript / Python build keyed by the hash of the generated
//! project (the builders are not reproducible, so rebuilding identical sources
//! would defeat the compile cache; any change to the project — template,
//! WIT, SDK pins, `build.sh` — rebuilds). A missing toolchain fails the test
//! with what to install.

mod plugin_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use plugin_support::{Host, Tenant, counter_js, plugins_cfg, repo, sha256, start};
use serde_json::{Value, json};
use wsprism::error::PluginError;
use wsprism::services::{Effect, ExtService};

/// The `wsprism` binary under test: this build's, or `WSPRISM_BIN` when set
/// (as for the client SDK's tests; useful when another build shares the
/// target dir and replaces `<target>/debug/wsprism`).
fn wsprism() -> Command {
    let bin = std::env::var_os("WSPRISM_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_wsprism")),
        PathBuf::from,
    );
    Command::new(bin)
}

/// `<target>/devtools/<sub>`: caches that survive between runs.
fn work(sub: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_wsprism"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/");
    let dir = target.join("devtools").join(sub);
    std::fs::create_dir_all(&dir).expect("create devtools work dir");
    dir
}

/// A command for a nested build, without the variables of the outer one.
fn nested(mut cmd: Command) -> Command {
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    out
}

/// Fails with what to install when `cmd` is not there.
fn require(cmd: &str, args: &[&str], why: &str) {
    let ok = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "`{cmd}` is needed {why}; install it and run again");
}

/// Runs `wsprism new plugin` into a fresh temp dir and checks the layout.
fn new_project(name: &str, lang: &str) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().expect("tempdir");
    let out = run(
        wsprism()
            .args(["new", "plugin", name, "--lang", lang, "--dir"])
            .arg(parent.path()),
        "wsprism new plugin",
    );
    let project = parent.path().join(name);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&project.display().to_string()),
        "{}",
        text(&out)
    );
    let wit = std::fs::read_to_string(project.join("wit/wsprism-plugin.wit")).expect("wit");
    assert_eq!(
        wit,
        std::fs::read_to_string(repo().join("wit/wsprism-plugin.wit")).expect("repo wit"),
        "the project's WIT must be the gateway's"
    );
    let readme = std::fs::read_to_string(project.join("README.md")).expect("README");
    for needle in [
        "./build.sh",
        &format!("plugins/{name}.wasm"),
        &format!("routes: [{{ svc: {name}, plugin: {name} }}]"),
        &format!("wsprism plugin call {name}.wasm"),
    ] {
        assert!(
            readme.contains(needle),
            "README lacks `{needle}`:\n{readme}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(project.join("build.sh"))
            .expect("build.sh")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "build.sh must be executable");
    }
    (parent, project)
}

/// Hash of every file of a project (paths and contents).
fn tree_hash(root: &Path) -> String {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read project dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let rel = path.strip_prefix(root).expect("inside root");
                out.push((
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&path).expect("read project file"),
                ));
            }
        }
    }
    let mut files = Vec::new();
    walk(root, root, &mut files);
    files.sort();
    let mut all = Vec::new();
    for (path, bytes) in files {
        all.extend_from_slice(path.as_bytes());
        all.push(0);
        all.extend_from_slice(&bytes);
    }
    sha256(&all)
}

/// Runs the project's `build.sh` with the shared caches and returns the
/// component it wrote into the project folder.
fn build(project: &Path, name: &str) -> PathBuf {
    let mut cmd = nested(Command::new(project.join("build.sh")));
    cmd.current_dir(std::env::temp_dir())
        .env("CARGO_TARGET_DIR", work("rust-target"))
        .env("WSPRISM_JS_TOOLCHAIN", work("js-toolchain"))
        .env("WSPRISM_PY_TOOLCHAIN", work("py-toolchain"));
    run(&mut cmd, &format!("{name}/build.sh"));
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "build.sh did not write {}", wasm.display());
    wasm
}

/// [`build`], reusing the last build of an identical project (see the
/// module docs).
fn build_cached(project: &Path, name: &str, lang: &str) -> PathBuf {
    let kept = work("built").join(lang);
    std::fs::create_dir_all(&kept).expect("built dir");
    let wasm = kept.join(format!("{name}.wasm"));
    let stamp = kept.join(format!("{name}.stamp"));
    let hash = tree_hash(project);
    if wasm.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == hash) {
        eprintln!(
            "{lang}: project unchanged since the last run; reusing {}",
            wasm.display()
        );
        return wasm;
    }
    let built = build(project, name);
    std::fs::copy(&built, &wasm).expect("keep the build");
    std::fs::write(&stamp, hash).expect("write stamp");
    wasm
}

/// A plugin host serving `wasm` alone, as `name`, from a persistent plugin
/// dir per `slot` (its `.cache` keeps the compiled component between runs).
async fn host_with(slot: &str, name: &str, wasm: &Path) -> Host {
    let dir = work("host").join(slot);
    if dir.is_dir() {
        // Only this plugin: drop what an earlier run deployed under other names.
        for entry in std::fs::read_dir(&dir).expect("host dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "wasm") {
                std::fs::remove_file(&path).expect("remove an old plugin");
            }
        }
    }
    std::fs::create_dir_all(&dir).expect("host dir");
    std::fs::copy(wasm, dir.join(format!("{name}.wasm"))).expect("deploy");
    let mut cfg = plugins_cfg(&dir);
    // Language runtimes need more room than Rust (as in tests/plugins_js_py.rs).
    cfg.max_memory_bytes = 256 * 1024 * 1024;
    cfg.call_timeout_ms = 2_000;
    let h = start(&cfg).await;
    assert_eq!(
        h.host.plugins(),
        [name.to_owned()],
        "{slot}: the host loads the build"
    );
    h
}

/// Loads `wasm` as `name` into a plugin host and checks the echo: a message of
/// type T and data D comes back to the sender alone as T and D.
async fn assert_echoes(lang: &str, name: &str, wasm: &Path) {
    let h = host_with(lang, name, wasm).await;
    let t = Tenant::new("acme");
    let session = t.session(1, "alice", &[]);
    let data = r#"{"n":[1,"two",{"three":3.5}],"ok":true}"#;
    let effects = h
        .host
        .call(t.call(&session, name, "greeting", None, data))
        .await
        .unwrap_or_else(|e| panic!("{lang}: the echo call failed: {e}"));
    match effects.as_slice() {
        [Effect::Reply { ty, data: got }] => {
            assert_eq!(ty, "greeting", "{lang}: type");
            let got: Value = serde_json::from_str(got.get()).expect("json");
            let sent: Value = serde_json::from_str(data).expect("json");
            assert_eq!(got, sent, "{lang}: data");
        }
        other => panic!("{lang}: expected one reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_rust_plugin_builds_tests_natively_and_echoes() {
    require("cargo", &["--version"], "to build Rust plugins");
    let (_tmp, project) = new_project("echo-rs", "rust");
    // Its own test runs natively against the SDK's test host.
    let out = run(
        nested(Command::new(env!("CARGO")))
            .current_dir(&project)
            .args(["test", "--target-dir"])
            .arg(work("native-target")),
        "cargo test in the generated Rust project",
    );
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("tests::echoes_type_and_data_to_the_sender ... ok"),
        "{log}"
    );
    let wasm = build(&project, "echo-rs");
    assert_echoes("rust", "echo-rs", &wasm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_js_plugin_builds_with_its_own_toolchain_and_echoes() {
    require(
        "node",
        &["--version"],
        "to build JavaScript plugins (Node.js 20+)",
    );
    require("npm", &["--version"], "to install componentize-js");
    let (_tmp, project) = new_project("echo_js", "js");
    assert!(project.join("package-lock.json").is_file());
    assert!(project.join("lib/register.mjs").is_file());
    let wasm = build_cached(&project, "echo_js", "js");
    // build.sh ran componentize-js with lib/register.mjs: the component's
    // bindings (SpiderMonkey keeps the source text of the scripts it ran)
    // call `handle` through the SDK's rewrite (a plain wrapper that hands
    // only a promise to an async continuation, inside one enclosing
    // function), not with a bare `await`.
    let bytes = std::fs::read(&wasm).expect("read the build");
    for marker in [
        &b"const $wsprismRet1 = handle("[..],
        b"return export_handle$wsprismAsync($wsprismRet1, ",
        b"globalThis.export_handle = export_handle;",
    ] {
        assert!(
            contains(&bytes, marker),
            "{}: the bindings were not rewritten (is lib/register.mjs loaded by build.sh?): no {:?}",
            wasm.display(),
            String::from_utf8_lossy(marker)
        );
    }
    assert_echoes("js", "echo_js", &wasm).await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_python_plugin_builds_with_its_own_toolchain_and_echoes() {
    require(
        "python3",
        &["-m", "pip", "--version"],
        "to install componentize-py",
    );
    let (_tmp, project) = new_project("echo-py", "python");
    assert!(project.join("requirements.txt").is_file());
    let wasm = build_cached(&project, "echo-py", "python");
    assert_echoes("python", "echo-py", &wasm).await;
}

/// `src/app.js` of a project with hooks, as the README says to write it.
const JS_WITH_HOOKS: &str = r#"// @ts-check
/// <reference path="../types/plugin-with-hooks.d.ts" />
import { reply } from 'wsprism:plugin/realtime@0.2.0';
import * as session from 'wsprism:plugin/session@0.2.0';

/** @param {import('wsprism:plugin/types@0.2.0').Message} msg */
export function handle(msg) {
  reply(msg.type, JSON.stringify({ user: session.user(), rooms: session.rooms() }));
}

export const hooks = {
  /** @param {string} _config */
  init(_config) {},
  onDisconnect() {},
  /** @param {string} room */
  onJoin(room) {
    if (room.startsWith('closed-')) throw { code: 'ROOM_CLOSED', message: `${session.user()}: ${room}` };
  },
  /** @param {string} _room */
  onLeave(_room) {},
};
"#;

/// `src/app.py` of a project with hooks, as the README says to write it.
const PY_WITH_HOOKS: &str = r#"import json

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import realtime, session
from wit_world.imports.types import Message, Refusal


class WitWorld(wit_world.WitWorld):
    def handle(self, msg: Message) -> None:
        realtime.reply(msg.type, json.dumps({"user": session.user(), "rooms": session.rooms()}))


class Hooks(exports.Hooks):
    def init(self, config: str) -> None:
        pass

    def on_disconnect(self) -> None:
        pass

    def on_join(self, room: str) -> None:
        if room.startswith("closed-"):
            raise Err(Refusal(code="ROOM_CLOSED", message=f"{session.user()}: {room}"))

    def on_leave(self, room: str) -> None:
        pass
"#;

/// A new project turned into one with hooks as its README says: the world
/// in `build.sh` changed to `plugin-with-hooks` (`from` -> `to`, quoted from
/// the README) and `src/<app>` rewritten with a `hooks` export. It builds,
/// `handle` reads the session through the `session` interface, and the
/// gateway calls its `on-join` hook.
async fn assert_hooks_as_the_readme_says(
    lang: &str,
    app: &str,
    source: &str,
    from: &str,
    to: &str,
) {
    let name = format!("hooks_{lang}");
    let (_tmp, project) = new_project(&name, lang);
    let readme = std::fs::read_to_string(project.join("README.md")).expect("README");
    let step = format!("change `{from}` to\n`{to}`");
    assert!(
        readme.contains(&step),
        "{lang}: the README no longer says {step:?}:\n{readme}"
    );
    let script = project.join("build.sh");
    let build_sh = std::fs::read_to_string(&script).expect("build.sh");
    assert_eq!(
        build_sh.matches(from).count(),
        1,
        "{lang}: {from} in build.sh"
    );
    std::fs::write(&script, build_sh.replace(from, to)).expect("edit build.sh");
    std::fs::write(project.join("src").join(app), source).expect("write the app");

    let wasm = build_cached(&project, &name, lang);
    let h = host_with(&format!("{lang}-hooks"), &name, &wasm).await;
    let t = Tenant::new("acme");
    let session = t.session(7, "bob", &["r1"]);
    let effects = h
        .host
        .call(t.call(&session, &name, "who", None, "null"))
        .await
        .unwrap_or_else(|e| panic!("{lang}: handle failed: {e}"));
    match effects.as_slice() {
        [Effect::Reply { ty, data }] => {
            assert_eq!(ty, "who", "{lang}");
            let got: Value = serde_json::from_str(data.get()).expect("json");
            assert_eq!(got, json!({"user": "bob", "rooms": ["r1"]}), "{lang}");
        }
        other => panic!("{lang}: expected one reply, got {other:?}"),
    }
    let e = h
        .host
        .call(t.room_hook(true, &session, &name, "closed-1"))
        .await
        .expect_err("on-join refuses closed-*");
    assert!(
        matches!(&e, PluginError::Refused { code, message } if code == "ROOM_CLOSED" && message == "bob: closed-1"),
        "{lang}: {e:?}"
    );
    let effects = h.host.call(t.room_hook(true, &session, &name, "r2")).await;
    assert!(
        effects.as_ref().is_ok_and(Vec::is_empty),
        "{lang}: {effects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_js_and_python_plugins_take_hooks_as_their_readme_says() {
    require(
        "node",
        &["--version"],
        "to build JavaScript plugins (Node.js 20+)",
    );
    require("npm", &["--version"], "to install componentize-js");
    require(
        "python3",
        &["-m", "pip", "--version"],
        "to install componentize-py",
    );
    assert_hooks_as_the_readme_says(
        "js",
        "app.js",
        JS_WITH_HOOKS,
        "--world-name plugin",
        "--world-name plugin-with-hooks",
    )
    .await;
    assert_hooks_as_the_readme_says(
        "python",
        "app.py",
        PY_WITH_HOOKS,
        "-w plugin",
        "-w plugin-with-hooks",
    )
    .await;
}

#[test]
fn new_plugin_writes_into_the_current_dir_and_refuses_bad_names_languages_and_dirs() {
    let parent = tempfile::tempdir().expect("tempdir");
    let new = |name: &str, lang: &str| {
        wsprism()
            .args(["new", "plugin", name, "--lang", lang, "--dir"])
            .arg(parent.path())
            .output()
            .expect("run wsprism")
    };
    for bad in ["a.b", "../up", "", "with space", &"x".repeat(65)] {
        let out = new(bad, "rust");
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a plugin name"),
            "{}",
            text(&out)
        );
    }
    let out = new("fine", "go");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown language `go`"),
        "{}",
        text(&out)
    );
    std::fs::create_dir(parent.path().join("taken")).expect("mkdir");
    std::fs::write(parent.path().join("taken/notes.txt"), "mine").expect("write");
    let out = new("taken", "python");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an empty directory"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(parent.path().join("taken"))
            .expect("dir")
            .count(),
        1,
        "nothing may be written into a non-empty folder"
    );
    // No folder was created for the refused names.
    assert_eq!(std::fs::read_dir(parent.path()).expect("dir").count(), 1);

    // Without --dir the project goes into ./<name>, wherever that is.
    let out = wsprism()
        .args(["new", "plugin", "here", "--lang", "js"])
        .current_dir(parent.path())
        .output()
        .expect("run wsprism");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(parent.path().join("here/src/app.js").is_file());
    assert!(parent.path().join("here/build.sh").is_file());
}

/// The Rust SDK's test host: its own tests and the `echo` example's, natively.
#[test]
fn rust_sdk_runs_plugin_code_natively() {
    let out = run(
        nested(Command::new(env!("CARGO")))
            .current_dir(repo().join("sdk/examples"))
            .args(["test", "-p", "echo", "-p", "wsprism-plugin", "--target-dir"])
            .arg(work("native-target")),
        "cargo test in sdk/examples",
    );
    let log = String::from_utf8_lossy(&out.stdout);
    for test in [
        "tests::replies_with_the_messages_own_type_and_data ... ok",
        "tests::broadcast_publishes_to_a_joined_room ... ok",
        "tests::broadcast_is_refused_outside_the_room_and_without_one ... ok",
        "testing::tests::kv_incr_ttl_and_delete_follow_the_gateway ... ok",
        "testing::tests::joins_apply_after_success_and_members_see_them ... ok",
    ] {
        assert!(log.contains(test), "`{test}` did not pass:\n{log}");
    }
}

/// Builds the Rust examples (`echo`, `faults`) for `plugin call`.
fn rust_examples() -> PathBuf {
    let target = work("rust-target");
    run(
        nested(Command::new(env!("CARGO")))
            .current_dir(repo().join("sdk/examples"))
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "-p",
                "echo",
                "-p",
                "faults",
                "--target-dir",
            ])
            .arg(&target),
        "building sdk/examples (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`)",
    );
    target.join("wasm32-wasip2").join("release")
}

/// `wsprism plugin call`: exit code and the parsed report (when one was
/// printed).
fn plugin_call(args: &[&str]) -> (Option<i32>, Option<Value>, String) {
    let out = wsprism()
        .args(["plugin", "call"])
        .args(args)
        .env("XDG_CACHE_HOME", work("cache"))
        .output()
        .expect("run wsprism plugin call");
    let report = serde_json::from_slice(&out.stdout).ok();
    (out.status.code(), report, text(&out))
}

#[test]
fn plugin_call_reports_effects_refusals_and_faults() {
    let dir = rust_examples();
    let echo = dir.join("echo.wasm");
    let echo = echo.to_str().expect("utf-8 path");

    let (code, report, out) = plugin_call(&[
        echo,
        "--message",
        r#"{"type":"hello","data":{"a":[1,2]}}"#,
        "--user",
        "ann",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let report = report.expect("a JSON report");
    assert_eq!(report["plugin"], "echo");
    assert_eq!(report["ok"], true);
    assert_eq!(
        report["replies"],
        json!([{"type": "hello", "data": {"a": [1, 2]}}])
    );
    assert_eq!(report["publishes"], json!([]));
    assert_eq!(report["failure"], Value::Null);

    // The session is in exactly the rooms given.
    let broadcast = r#"{"type":"broadcast","room":"r1","data":"hi"}"#;
    let (code, report, out) = plugin_call(&[echo, "--message", broadcast]);
    assert_eq!(code, Some(3), "{out}");
    let report = report.expect("a JSON report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["failure"]["kind"], "refused");
    assert_eq!(report["failure"]["code"], "NOT_IN_ROOM");
    let (code, report, out) = plugin_call(&[echo, "--message", broadcast, "--room", "r1"]);
    assert_eq!(code, Some(0), "{out}");
    let report = report.expect("a JSON report");
    assert_eq!(
        report["publishes"],
        json!([{"room": "r1", "type": "broadcast", "data": "hi", "qos": "reliable", "exclude_sender": false}])
    );

    // Faults: the CPU budget, and guest output captured as log lines.
    let faults = dir.join("faults.wasm");
    let faults = faults.to_str().expect("utf-8 path");
    let (code, report, out) = plugin_call(&[faults, "--message", r#"{"type":"loop"}"#]);
    assert_eq!(code, Some(4), "{out}");
    assert_eq!(report.expect("a JSON report")["failure"]["kind"], "timeout");
    let (code, report, out) = plugin_call(&[faults, "--message", r#"{"type":"print"}"#]);
    assert_eq!(code, Some(0), "{out}");
    let logs = &report.expect("a JSON report")["logs"];
    assert!(
        logs.as_array().is_some_and(|l| l.contains(
            &json!({"level": "info", "source": "stdout", "message": "hello from faults stdout"})
        )),
        "{logs}"
    );

    // Calls that cannot be made.
    let (code, report, out) = plugin_call(&["/nonexistent/x.wasm", "--message", r#"{"type":"t"}"#]);
    assert_eq!((code, report), (Some(1), None), "{out}");
    let (code, _, out) = plugin_call(&[echo, "--message", "{not json"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--message"), "{out}");
}

#[test]
fn plugin_call_runs_the_javascript_counter_with_seeded_kv() {
    require(
        "npm",
        &["--version"],
        "to build the JavaScript counter example",
    );
    let wasm = counter_js().expect("the JavaScript counter example builds");
    let wasm = wasm.to_str().expect("utf-8 path");
    let limits = [
        "--max-memory-bytes",
        "268435456",
        "--call-timeout-ms",
        "2000",
    ];
    let mut args = vec![
        wasm,
        "--message",
        r#"{"type":"incr","room":"r1"}"#,
        "--room",
        "r1",
        "--kv",
        "count:r1=41",
        "--kv",
        "count:r2=7",
    ];
    args.extend(limits);
    let (code, report, out) = plugin_call(&args);
    assert_eq!(code, Some(0), "{out}");
    let report = report.expect("a JSON report");
    assert_eq!(
        report["publishes"],
        json!([{"room": "r1", "type": "count", "data": {"room": "r1", "count": 42}, "qos": "reliable", "exclude_sender": false}])
    );
    assert_eq!(
        report["kv_writes"],
        json!([{"op": "incr", "key": "count:r1", "delta": 1, "value": 42}])
    );

    let mut args = vec![
        wasm,
        "--message",
        r#"{"type":"get","room":"r2"}"#,
        "--room",
        "r2",
        "--kv",
        "count:r2=7",
    ];
    args.extend(limits);
    let (code, report, out) = plugin_call(&args);
    assert_eq!(code, Some(0), "{out}");
    let report = report.expect("a JSON report");
    assert_eq!(
        report["replies"],
        json!([{"type": "count", "data": {"room": "r2", "count": 7}}])
    );
    assert_eq!(report["kv_writes"], json!([]));

    let mut args = vec![wasm, "--message", r#"{"type":"incr","room":"r3"}"#];
    args.extend(limits);
    let (code, report, out) = plugin_call(&args);
    assert_eq!(code, Some(3), "{out}");
    let failure = &report.expect("a JSON report")["failure"];
    assert_eq!(failure["code"], "NOT_IN_ROOM", "{failure}");
}
