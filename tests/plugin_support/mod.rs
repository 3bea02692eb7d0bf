//! Helpers for the plugin host tests: build the guest examples once per test
//! binary, lay out plugin directories, start a `PluginHost`, register sessions
//! in a real `LocalBroker` and build `ExtCall`s and `PluginCall`s.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wsprism::config::{PluginsConfig, TenantConfig};
use wsprism::obs::metrics::Metrics;
use wsprism::plugin_host::PluginHost;
use wsprism::realtime::SessionId;
use wsprism::realtime::broker::{Broker, LocalBroker, RoomLimits, SessionEntry, SessionLimits};
use wsprism::realtime::outbox::Outbox;
use wsprism::services::{Entry, ExtService, PluginCall, PluginStatus, SessionInfo};

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `sdk/examples` for wasm32-wasip2 (once per test binary) and returns
/// the directory holding `echo.wasm`, `vote.wasm`, `faults.wasm`, `wrong_wit.wasm`,
/// `first_world.wasm`.
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ensure_wasm_target();
        let target = repo().join("target").join("wasm-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(repo().join("sdk").join("examples"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .expect("run cargo for the guest examples");
        assert!(
            out.status.success(),
            "building guest plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("wasm32-wasip2").join("release")
    })
}

/// Installs the `wasm32-wasip2` target through rustup when it is missing (a
/// fresh CI machine); a no-op when it is there or rustup is absent.
fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(out) = installed
        && !String::from_utf8_lossy(&out.stdout).contains("wasm32-wasip2")
    {
        eprintln!("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)");
        let _ = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status();
    }
}

/// Bytes of a built guest (`echo`, `vote`, `faults`, `wrong_wit`, `first_world`).
pub fn guest(name: &str) -> Vec<u8> {
    std::fs::read(guests().join(format!("{name}.wasm"))).expect("guest wasm")
}

/// `bytes` with a custom section appended: the same component, a different sha256.
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let name = b"wsprism-test";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Hex sha256 of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes a file atomically (temp file + rename), as a deploy would.
pub fn deploy(dir: &Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).expect("write temp plugin");
    std::fs::rename(&tmp, dir.join(file)).expect("rename plugin into place");
}

/// A temp plugin dir with the named guests copied in as `<as_name>.wasm`.
pub fn plugin_dir(plugins: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (guest_name, as_name) in plugins {
        std::fs::write(
            dir.path().join(format!("{as_name}.wasm")),
            guest(guest_name),
        )
        .expect("copy");
    }
    dir
}

/// Default test config over `dir`.
pub fn plugins_cfg(dir: &Path) -> PluginsConfig {
    PluginsConfig {
        dir: dir.to_string_lossy().into_owned(),
        cache_dir: compile_cache().to_string_lossy().into_owned(),
        watch: false,
        call_timeout_ms: 250,
        max_memory_bytes: 16 * 1024 * 1024,
        instances_per_plugin: 2,
        ..PluginsConfig::default()
    }
}

/// A running host and what stops it.
pub struct Host {
    pub host: Arc<PluginHost>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start(cfg: &PluginsConfig) -> Host {
    let metrics = Metrics::new();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let host = PluginHost::start(
        cfg,
        metrics.clone(),
        &wsprism::backend::BackendClient::new(),
        shutdown.clone(),
        tracker.clone(),
    )
    .await
    .expect("plugin host starts");
    Host {
        host,
        metrics,
        shutdown,
        tracker,
    }
}

/// A tenant config from YAML (`id` is filled in).
pub fn tenant(id: &str, extra_yaml: &str) -> Arc<TenantConfig> {
    let text = format!("id: {id}\n{extra_yaml}");
    Arc::new(serde_yaml::from_str(&text).expect("tenant yaml"))
}

/// One tenant's realtime state plus a way to make sessions in it.
pub struct Tenant {
    pub cfg: Arc<TenantConfig>,
    pub broker: Arc<LocalBroker>,
}

impl Tenant {
    pub fn new(id: &str) -> Self {
        Self::with_yaml(id, "")
    }

    pub fn with_yaml(id: &str, yaml: &str) -> Self {
        Self {
            cfg: tenant(id, yaml),
            broker: Arc::new(LocalBroker::new()),
        }
    }

    /// Registers a session of `user` that has joined `rooms`.
    pub fn session(&self, sid: u64, user: &str, rooms: &[&str]) -> SessionInfo {
        let sid = SessionId::new(sid);
        let entry = Arc::new(SessionEntry::new(
            sid,
            Arc::from(user),
            Arc::new(Outbox::new(64, 64)),
        ));
        self.broker
            .register(
                entry,
                SessionLimits {
                    max_sessions_total: 0,
                    max_sessions_per_user: 8,
                    kick_oldest: false,
                },
            )
            .expect("register session");
        for room in rooms {
            self.broker
                .join(sid, room, RoomLimits::default())
                .expect("join room");
        }
        SessionInfo {
            tenant: Arc::from(self.cfg.id.as_str()),
            user: Arc::from(user),
            sid,
            rooms: rooms
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .into(),
        }
    }

    /// `session` closed: what the gateway hands `plugin`'s `on-disconnect`
    /// (routed as `svc` = `plugin`).
    pub fn closed(&self, session: &SessionInfo, plugin: &str) -> PluginCall {
        let closed = SessionInfo {
            rooms: Vec::new().into(),
            ..session.clone()
        };
        self.plugin_call(Entry::Disconnect, &closed, plugin)
    }

    /// `session` joining or leaving `room`: what the gateway hands `plugin`'s
    /// `on-join` / `on-leave` (routed as `svc` = `plugin`).
    pub fn room_hook(
        &self,
        join: bool,
        session: &SessionInfo,
        plugin: &str,
        room: &str,
    ) -> PluginCall {
        let room = room.to_owned();
        let entry = if join {
            Entry::Join { room }
        } else {
            Entry::Leave { room }
        };
        self.plugin_call(entry, session, plugin)
    }

    /// A call of `plugin`'s `entry` for `session` (routed as `svc` = `plugin`),
    /// for [`ExtService::call`].
    pub fn plugin_call(&self, entry: Entry, session: &SessionInfo, plugin: &str) -> PluginCall {
        PluginCall {
            entry,
            session: session.clone(),
            plugin: Arc::from(plugin),
            svc: plugin.to_owned(),
            tenant_cfg: Arc::clone(&self.cfg),
            broker: self.broker.clone(),
        }
    }

    /// An Ext Lane call from `session` to `plugin`.
    pub fn call(
        &self,
        session: &SessionInfo,
        plugin: &str,
        ty: &str,
        room: Option<&str>,
        data: &str,
    ) -> PluginCall {
        let entry = Entry::Message {
            ty: ty.to_owned(),
            room: room.map(str::to_owned),
            seq: Some(1),
            data: RawValue::from_string(data.to_owned()).expect("valid json"),
        };
        self.plugin_call(entry, session, plugin)
    }
}

/// Polls `status` until `pred` holds (generous bound; reload is debounced).
pub async fn wait_status(
    host: &PluginHost,
    tenant: &str,
    plugin: &str,
    what: &str,
    pred: impl Fn(&PluginStatus) -> bool,
) -> PluginStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = host.status(tenant, plugin);
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last status: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn tool_available(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build_with_script(script: &str, src: &Path, out: &Path, world: &str) -> Result<(), String> {
    let o = Command::new("bash")
        .arg(repo().join(script))
        .arg(src)
        .arg(out)
        .arg(world)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

/// wasmtime's compile cache for the tests (outside every plugin dir, reused
/// across test runs so the large JS/Python components compile once).
pub fn compile_cache() -> PathBuf {
    repo()
        .join("target")
        .join("wasm-examples")
        .join("compile-cache")
}

/// A persistent plugin dir for one of the large JS/Python components (its
/// builds are reused across test runs).
pub fn jspy_dir(lang: &str) -> PathBuf {
    let d = repo()
        .join("target")
        .join("wasm-examples")
        .join("jspy-plugins")
        .join(lang);
    std::fs::create_dir_all(&d).expect("jspy dir");
    d
}

/// Hash of the inputs of a JS/Python build: rebuilding only when they change
/// keeps the component bytes stable (the builders are not reproducible), so
/// wasmtime's compile cache hits on later runs.
fn inputs_hash(files: &[PathBuf]) -> String {
    let mut all = Vec::new();
    for f in files {
        all.extend_from_slice(f.to_string_lossy().as_bytes());
        all.extend_from_slice(&std::fs::read(f).unwrap_or_default());
    }
    sha256(&all)
}

/// The world the JS and Python examples are built for (they export the
/// hooks).
const JSPY_WORLD: &str = "plugin-with-hooks";

fn build_cached(lang: &str, file: &str, script: &str, src: PathBuf, inputs: &[PathBuf]) -> PathBuf {
    build_cached_for(JSPY_WORLD, lang, file, script, src, inputs)
}

fn build_cached_for(
    world: &str,
    lang: &str,
    file: &str,
    script: &str,
    src: PathBuf,
    inputs: &[PathBuf],
) -> PathBuf {
    let out = jspy_dir(lang).join(file);
    let stamp = out.with_extension("stamp");
    let hash = inputs_hash(inputs);
    if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == hash) {
        return out;
    }
    if let Err(e) = build_with_script(script, &src, &out, world) {
        panic!("{e}");
    }
    std::fs::write(&stamp, hash).expect("write stamp");
    out
}

/// Builds `sdk/examples/counter-js` with componentize-js (once per test binary,
/// and only when its inputs changed). `None` (with the reason printed) when
/// npm is unavailable.
pub fn counter_js() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        if !tool_available("npm", "--version") || !tool_available("node", "--version") {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must test the JavaScript SDK, but npm/node are not available"
            );
            eprintln!("SKIP: npm/node not available; the JavaScript SDK example is not tested");
            return None;
        }
        let src = repo().join("sdk/examples/counter-js/app.js");
        let inputs = sdk_inputs(src.clone(), "js", "package.json");
        Some(build_cached(
            "js",
            "counter_js.wasm",
            "sdk/js/build.sh",
            src,
            &inputs,
        ))
    })
    .clone()
}

/// Builds `sdk/examples/counter-py` with componentize-py (once per test binary,
/// and only when its inputs changed). `None` (with the reason printed) when
/// python3/pip are unavailable.
pub fn counter_py() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        let has_componentize = tool_available("componentize-py", "--version");
        let has_pip = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !has_componentize && !has_pip {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must test the Python SDK, but python3/pip are not available"
            );
            eprintln!("SKIP: python3/pip not available; the Python SDK example is not tested");
            return None;
        }
        let src = repo().join("sdk/examples/counter-py");
        let inputs = sdk_inputs(src.join("app.py"), "python", "requirements.txt");
        Some(build_cached(
            "python",
            "counter_py.wasm",
            "sdk/python/build.sh",
            src,
            &inputs,
        ))
    })
    .clone()
}

/// What an SDK example's component is built from: its source, the WIT, and
/// `sdk/<sdk>/build.sh` with the SDK's dependency list `deps` (and, for
/// JavaScript, the bindings rewrite in `sdk/js/lib/`).
fn sdk_inputs(source: PathBuf, sdk: &str, deps: &str) -> Vec<PathBuf> {
    let mut inputs = vec![
        source,
        repo().join("wit/wsprism-plugin.wit"),
        repo().join(format!("sdk/{sdk}/build.sh")),
        repo().join(format!("sdk/{sdk}/{deps}")),
    ];
    if sdk == "js" {
        for lib in ["register.mjs", "hooks.mjs", "bindings.mjs"] {
            inputs.push(repo().join("sdk/js/lib").join(lib));
        }
    }
    inputs
}

/// Builds the JavaScript `source` (relative to the repository) for `world`
/// into `target/.../<dir>/<file>` once its inputs changed; `None` when the
/// JavaScript SDK cannot be built here (see [`counter_js`], which also
/// checks for the tools and installs the SDK's npm packages).
fn js_component(world: &str, dir: &str, file: &str, source: &str) -> Option<PathBuf> {
    counter_js()?;
    let src = repo().join(source);
    let inputs = sdk_inputs(src.clone(), "js", "package.json");
    Some(build_cached_for(
        world,
        dir,
        file,
        "sdk/js/build.sh",
        src,
        &inputs,
    ))
}

/// Builds `tests/fixtures/plugins/async_js.js` (exports that return promises
/// for some calls, plain values for others) into its own `js-async` dir, so
/// the other JavaScript tests do not load it; `None` when counter_js is.
pub fn async_js() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        js_component(
            "plugin-with-hooks",
            "js-async",
            "async_js.wasm",
            "tests/fixtures/plugins/async_js.js",
        )
    })
    .clone()
}

/// Builds `tests/fixtures/plugins/first_world_js.js` (world
/// `ext-lane-plugin-lifecycle`) into its own `js-first` dir; `None` when
/// counter_js is.
pub fn first_world_js() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        js_component(
            "ext-lane-plugin-lifecycle",
            "js-first",
            "first_world_js.wasm",
            "tests/fixtures/plugins/first_world_js.js",
        )
    })
    .clone()
}

/// Builds `sdk/examples/echo-js` (the minimal JavaScript plugin of the
/// `echo_js` bench case, world `plugin`) into the `js` dir, once per
/// test binary and only when its inputs changed; `None` when counter_js is.
pub fn echo_js() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        js_component(
            "plugin",
            "js",
            "echo_js.wasm",
            "sdk/examples/echo-js/app.js",
        )
    })
    .clone()
}

/// Builds `sdk/examples/echo-py` (the Python twin of [`echo_js`]) into the
/// `python` dir; `None` when counter_py is.
pub fn echo_py() -> Option<PathBuf> {
    static OUT: OnceLock<Option<PathBuf>> = OnceLock::new();
    OUT.get_or_init(|| {
        counter_py()?;
        let src = repo().join("sdk/examples/echo-py");
        let inputs = sdk_inputs(src.join("app.py"), "python", "requirements.txt");
        Some(build_cached_for(
            "plugin",
            "python",
            "echo_py.wasm",
            "sdk/python/build.sh",
            src,
            &inputs,
        ))
    })
    .clone()
}

/// A `tracing` writer into a shared buffer: a test's own subscriber of WARN
/// and above, set for the current thread (single-threaded tests keep every
/// task on it).
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures WARN and above on this thread until the guard drops.
    pub fn warnings() -> (Self, tracing::subscriber::DefaultGuard) {
        let captured = Self::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// The captured WARN lines containing `needle`.
    pub fn warn_lines(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}
