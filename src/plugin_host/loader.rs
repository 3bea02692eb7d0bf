//! Plugin versions: loading `*.wasm` files, the registry of what serves, and
//! hot reload.
//!
//! Owns: the load pipeline (read → sha256, unchanged skips → compile on a
//! blocking thread → `instantiate_pre`, which type-checks every import so a
//! plugin built against another WIT fails here → smoke instantiation (+ `init`)
//! → swap), the per-plugin [`Registered`] (`ArcSwap` of the serving
//! [`PluginVersion`] plus the last load failure), and the debounced directory
//! watcher. A failed load never replaces what serves; in-flight calls keep their
//! `Arc<PluginVersion>` and finish on it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, InstancePre};

use super::HostCore;
use super::call::EntryKind;
use super::instance::Instance;
use super::kv::{KvScope, MemoryKv};
use super::limits::{CallLimits, MAX_PLUGIN_FILE_BYTES};

/// Quiet period after the last file event before the directory is rescanned.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(200);

/// Which plugin world a component was built for (`wit/wsprism-plugin.wit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum World {
    /// `plugin` / `plugin-with-hooks`: exports `handle` (and `hooks`); reads
    /// the session through the imported `session` interface.
    Plugin,
    /// `ext-lane-plugin` / `ext-lane-plugin-lifecycle`: exports `on-message`
    /// (and `lifecycle`); every entry point takes a borrowed `session`.
    ExtLanePlugin,
}

impl World {
    /// The message entry point's export name.
    pub(crate) const fn message_export(self) -> &'static str {
        match self {
            Self::Plugin => "handle",
            Self::ExtLanePlugin => "on-message",
        }
    }

    /// The world a component of this one must not mix in.
    const fn other(self) -> Self {
        match self {
            Self::Plugin => Self::ExtLanePlugin,
            Self::ExtLanePlugin => Self::Plugin,
        }
    }

    /// The optional hooks interface's export name.
    const fn hooks_export(self) -> &'static str {
        match self {
            Self::Plugin => "wsprism:plugin/hooks@0.2.0",
            Self::ExtLanePlugin => "wsprism:plugin/lifecycle@0.2.0",
        }
    }
}

/// The entry points found on a component; their types are checked when the
/// smoke instance takes typed handles to them.
#[derive(Debug, Clone)]
pub(crate) struct Exports {
    /// The world, by the message export found.
    pub(crate) world: World,
    /// `handle` or `on-message`.
    pub(crate) message: ComponentExportIndex,
    /// `init` of `hooks` / `lifecycle`.
    pub(crate) init: Option<ComponentExportIndex>,
    /// `on-disconnect` of `hooks` / `lifecycle`.
    pub(crate) on_disconnect: Option<ComponentExportIndex>,
    /// `on-join` of `hooks` / `lifecycle`.
    pub(crate) on_join: Option<ComponentExportIndex>,
    /// `on-leave` of `hooks` / `lifecycle`.
    pub(crate) on_leave: Option<ComponentExportIndex>,
}

impl Exports {
    /// Finds the world's entry points; a component of neither world, of both,
    /// or with the other world's hooks is refused with what it lacks.
    fn of(component: &Component) -> Result<Self, String> {
        let plain = component.get_export_index(None, World::Plugin.message_export());
        let borrowed = component.get_export_index(None, World::ExtLanePlugin.message_export());
        let (world, message) = match (plain, borrowed) {
            (Some(i), None) => (World::Plugin, i),
            (None, Some(i)) => (World::ExtLanePlugin, i),
            (Some(_), Some(_)) => {
                return Err("exports both `handle` (world plugin) and `on-message` \
                     (world ext-lane-plugin); build it for one world"
                    .into());
            }
            (None, None) => {
                return Err("exports neither `handle` (world plugin) nor `on-message` \
                     (world ext-lane-plugin) of wsprism:plugin@0.2.0"
                    .into());
            }
        };
        let other = world.other();
        if component
            .get_export_index(None, other.hooks_export())
            .is_some()
        {
            return Err(format!(
                "exports `{}` with `{}`: the hooks of the other world; build it for one world",
                other.hooks_export(),
                world.message_export()
            ));
        }
        let iface = component.get_export_index(None, world.hooks_export());
        let hook = |name: &str| {
            iface
                .as_ref()
                .and_then(|i| component.get_export_index(Some(i), name))
        };
        Ok(Self {
            world,
            message,
            init: hook("init"),
            on_disconnect: hook("on-disconnect"),
            on_join: hook("on-join"),
            on_leave: hook("on-leave"),
        })
    }
}

/// One compiled, linked and smoke-tested version of a plugin file.
pub(crate) struct PluginVersion {
    /// File stem.
    pub(crate) name: Arc<str>,
    /// Hex SHA-256 of the file.
    pub(crate) sha256: String,
    /// RFC 3339 load time.
    pub(crate) loaded_at: String,
    /// Process-unique, increasing; instances of an older generation are
    /// recycled on their next call.
    pub(crate) generation: u64,
    /// Linked, type-checked instantiation template.
    pub(crate) pre: InstancePre<super::bindings::HostState>,
    /// Its entry points.
    pub(crate) entries: Exports,
}

impl PluginVersion {
    /// Whether this version exports `entry` (the message entry point always;
    /// a hook when its export was found at load time).
    pub(crate) fn exports(&self, entry: EntryKind) -> bool {
        let hook = match entry {
            EntryKind::Message => return true,
            EntryKind::Disconnect => &self.entries.on_disconnect,
            EntryKind::Join => &self.entries.on_join,
            EntryKind::Leave => &self.entries.on_leave,
        };
        hook.is_some()
    }
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Why the newest file of a plugin did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadFailure {
    /// Hash of the refused file (so the same bytes are not retried on every
    /// event), `None` when the file could not be read.
    pub(crate) sha256: Option<String>,
    /// What went wrong (safe for logs and the server API: no payloads).
    pub(crate) error: String,
}

/// What the registry knows about one plugin name.
#[derive(Debug, Default)]
pub(crate) struct Registered {
    /// The serving version; `None` = missing (never loaded or deleted).
    pub(crate) current: ArcSwapOption<PluginVersion>,
    /// Set while the newest file failed to load.
    pub(crate) failure: Mutex<Option<LoadFailure>>,
}

/// Every plugin name seen in the directory.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    slots: super::NameMap<String, Arc<Registered>>,
    generation: AtomicU64,
}

impl Registry {
    /// The slot of `name`, if the name was ever seen.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Registered>> {
        self.slots.get(name).map(|s| Arc::clone(s.value()))
    }

    /// The serving version of `name`.
    pub(crate) fn current(&self, name: &str) -> Option<Arc<PluginVersion>> {
        self.get(name).and_then(|s| s.current.load_full())
    }

    fn slot(&self, name: &str) -> Arc<Registered> {
        Arc::clone(self.slots.entry(name.to_owned()).or_default().value())
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.slots.iter().map(|e| e.key().clone()).collect()
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// The plugin name of a path: the stem of `<name>.wasm`, where `name` is
/// `[A-Za-z0-9_-]+` (so it is safe as a metric label and in logs).
pub(crate) fn plugin_name(path: &Path) -> Option<String> {
    if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let ok = !stem.is_empty()
        && stem.len() <= 64
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| stem.to_owned())
}

/// Current time as RFC 3339 UTC with second precision.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    rfc3339(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic
/// Gregorian calendar).
pub(crate) fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

/// The `*.wasm` files of the plugin directory, by plugin name. Symlinks are
/// followed (a plugin mounted from a ConfigMap or a release directory); a
/// `.wasm` file whose name is not a plugin name is logged, not loaded.
async fn list(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut out = Vec::new();
    let mut rd = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| format!("cannot read plugin dir {}: {e}", dir.display()))?;
    while let Ok(Some(entry)) = rd.next_entry().await {
        let path = entry.path();
        let is_file = tokio::fs::metadata(&path)
            .await
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !is_file {
            continue;
        }
        match plugin_name(&path) {
            Some(name) => out.push((name, path)),
            None if path.extension().and_then(|e| e.to_str()) == Some("wasm") => {
                tracing::warn!(
                    file = %path.display(),
                    "plugin file ignored: name it <name>.wasm with a name of 1-64 letters, digits, `_` or `-` (the name is the plugin's route target)"
                );
            }
            None => {}
        }
    }
    out.sort();
    Ok(out)
}

/// Loads every new or changed file and retires deleted ones. Rescans are
/// serialized, so two bursts of events never race on one slot.
pub(crate) async fn rescan(env: &Arc<HostCore>) {
    let _one_at_a_time = env.reload_lock.lock().await;
    let files = match list(&env.dir).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "plugin rescan failed");
            return;
        }
    };
    let present: HashSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for name in env.registry.names() {
        if !present.contains(name.as_str()) {
            retire(env, &name);
        }
    }
    for (name, path) in &files {
        load(env, name, path).await;
    }
}

/// A plugin file is gone: its routes answer `SERVICE_UNAVAILABLE` from now on.
fn retire(env: &HostCore, name: &str) {
    let Some(slot) = env.registry.get(name) else {
        return;
    };
    let had = slot.current.swap(None).is_some();
    let failed = slot.failure.lock().take().is_some();
    if had || failed {
        env.drop_pools(name);
        tracing::info!(plugin = name, "plugin removed");
    }
}

/// Loads one file if its bytes changed.
async fn load(env: &Arc<HostCore>, name: &str, path: &Path) {
    let slot = env.registry.slot(name);
    let bytes = match read_capped(path).await {
        Ok(b) => b,
        Err(e) => {
            fail(env, name, &slot, None, e);
            return;
        }
    };
    let sha = hex::encode(Sha256::digest(&bytes));
    if slot
        .current
        .load()
        .as_ref()
        .is_some_and(|v| v.sha256 == sha)
    {
        // Unchanged (or changed back to what serves): nothing to do.
        slot.failure.lock().take();
        return;
    }
    if slot
        .failure
        .lock()
        .as_ref()
        .is_some_and(|f| f.sha256.as_deref() == Some(sha.as_str()))
    {
        return;
    }
    match build(env, name, bytes, sha.clone()).await {
        Ok(version) => {
            let generation = version.generation;
            slot.current.store(Some(Arc::new(version)));
            slot.failure.lock().take();
            env.reset_health(name);
            env.metrics
                .plugin_loads
                .with_label_values(&[name, "ok"])
                .inc();
            tracing::info!(plugin = name, sha256 = %&sha[..12], generation, "plugin loaded");
        }
        Err(e) => fail(env, name, &slot, Some(sha), e),
    }
}

fn fail(env: &HostCore, name: &str, slot: &Registered, sha256: Option<String>, error: String) {
    env.metrics
        .plugin_loads
        .with_label_values(&[name, "error"])
        .inc();
    let serving = slot.current.load().is_some();
    tracing::warn!(plugin = name, error = %error, still_serving_old_version = serving, "plugin failed to load");
    *slot.failure.lock() = Some(LoadFailure { sha256, error });
}

/// The first four bytes of every WebAssembly binary (module or component).
const WASM_MAGIC: [u8; 4] = *b"\0asm";

/// Reads a plugin file: refuses files over [`MAX_PLUGIN_FILE_BYTES`] from their
/// metadata, and files that do not start with the WebAssembly magic after reading
/// only those four bytes, so a large non-WebAssembly file dropped into the
/// directory is never read into memory.
async fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let cannot = |e: std::io::Error| format!("cannot read file: {e}");
    let mut file = tokio::fs::File::open(path).await.map_err(cannot)?;
    let len = file.metadata().await.map_err(cannot)?.len();
    if len > MAX_PLUGIN_FILE_BYTES {
        return Err(format!(
            "file is {len} bytes; the limit is {MAX_PLUGIN_FILE_BYTES}"
        ));
    }
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).await.is_err() || magic != WASM_MAGIC {
        return Err(
            "not a valid component: the file does not start with the WebAssembly magic".to_owned(),
        );
    }
    // `len` is at most MAX_PLUGIN_FILE_BYTES (256 MiB), so it fits in usize.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    bytes.extend_from_slice(&magic);
    // `take` bounds a file that grows while it is read.
    (&mut file)
        .take(MAX_PLUGIN_FILE_BYTES + 1 - 4)
        .read_to_end(&mut bytes)
        .await
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_PLUGIN_FILE_BYTES {
        return Err(format!(
            "file grew past the limit of {MAX_PLUGIN_FILE_BYTES} bytes while it was read"
        ));
    }
    Ok(bytes)
}

/// Compile → link → find the entry points → smoke-instantiate (which
/// type-checks them).
async fn build(
    env: &Arc<HostCore>,
    name: &str,
    bytes: Vec<u8>,
    sha256: String,
) -> Result<PluginVersion, String> {
    let engine = env.engine.engine.clone();
    let component = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes))
        .await
        .map_err(|e| format!("compile task failed: {e}"))?
        .map_err(|e| format!("not a valid component: {e:#}"))?;
    let pre = env
        .linker
        .instantiate_pre(&component)
        .map_err(|e| format!("imports do not match wsprism:plugin@0.2.0: {e:#}"))?;
    let entries = Exports::of(&component)?;
    let version = Arc::new(PluginVersion {
        name: Arc::from(name),
        sha256,
        loaded_at: rfc3339_now(),
        generation: env.registry.next_generation(),
        pre,
        entries,
    });
    let cfg = env.cfg.load_full();
    let limits = CallLimits::for_instantiate(&cfg, None);
    let smoke = Instance::new(
        env,
        Arc::clone(&version),
        KvScope {
            tenant: Arc::from(""),
            plugin: Arc::from(name),
        },
        Arc::new(MemoryKv::new()),
        None,
        &limits,
    );
    match tokio::time::timeout(limits.wall, smoke).await {
        Ok(Ok(instance)) => drop(instance),
        Ok(Err(e)) => return Err(format!("smoke instantiation failed: {e}")),
        Err(_) => return Err("smoke instantiation timed out".into()),
    }
    Arc::try_unwrap(version).map_err(|_| "smoke instance kept its version alive".to_owned())
}

/// Watches the plugin directory and rescans it after each burst of events.
///
/// # Errors
/// The watcher cannot be created or the directory cannot be watched.
pub(crate) fn watch(env: &Arc<HostCore>) -> Result<(), String> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Any `.wasm` (ignored names too, so they are reported), or a
        // symlink swap of a mounted directory (Kubernetes' `..data`).
        let relevant = match &res {
            Ok(ev) => ev.paths.iter().any(|p| {
                p.extension().and_then(|e| e.to_str()) == Some("wasm")
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".."))
            }),
            // Overflow or watcher error: rescan to be safe.
            Err(_) => true,
        };
        if relevant {
            // A full channel already holds a pending rescan.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot create the plugin dir watcher: {e}"))?;
    watcher
        .watch(&env.dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch plugin dir {}: {e}", env.dir.display()))?;
    let env2 = Arc::clone(env);
    let stop = env.stop.clone();
    env.tracker.spawn(async move {
        let _watcher = watcher; // dropping it ends the OS watch
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => if ev.is_none() { return },
            }
            // Debounce: wait for DEBOUNCE without events (editors and `cp` emit
            // several per save).
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    ev = tokio::time::timeout(DEBOUNCE, rx.recv()) => match ev {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    },
                }
            }
            rescan(&env2).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component exporting a no-op function under each of `funcs` and an
    /// instance of the same function as `init` / `on-join` under each of
    /// `ifaces`: only the names matter to [`Exports::of`].
    fn component(funcs: &[&str], ifaces: &[&str]) -> Component {
        let mut wat = String::from(
            r#"(component
                 (core module $m (func (export "f")))
                 (core instance $i (instantiate $m))
                 (func $f (canon lift (core func $i "f")))
                 (instance $hooks (export "init" (func $f)) (export "on-join" (func $f)))"#,
        );
        for f in funcs {
            wat.push_str(&format!(r#" (export "{f}" (func $f))"#));
        }
        for i in ifaces {
            wat.push_str(&format!(r#" (export "{i}" (instance $hooks))"#));
        }
        wat.push(')');
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        Component::new(&engine, wat).expect("component")
    }

    #[test]
    fn the_world_is_told_by_the_message_export_and_mixtures_are_refused() {
        const HOOKS: &str = "wsprism:plugin/hooks@0.2.0";
        const LIFECYCLE: &str = "wsprism:plugin/lifecycle@0.2.0";
        let e = Exports::of(&component(&["handle"], &[HOOKS])).expect("world plugin");
        assert_eq!(e.world, World::Plugin);
        assert!(e.init.is_some() && e.on_join.is_some());
        assert!(e.on_disconnect.is_none() && e.on_leave.is_none());
        let e = Exports::of(&component(&["on-message"], &[LIFECYCLE])).expect("first world");
        assert_eq!(e.world, World::ExtLanePlugin);
        assert!(e.init.is_some() && e.on_join.is_some());
        let e = Exports::of(&component(&["handle"], &[])).expect("no hooks");
        assert!(e.init.is_none() && e.on_join.is_none());

        let err = |funcs: &[&str], ifaces: &[&str]| {
            Exports::of(&component(funcs, ifaces)).expect_err("refused")
        };
        assert!(err(&["handle", "on-message"], &[]).contains("exports both"));
        assert!(err(&["ping"], &[HOOKS]).contains("exports neither"));
        assert!(err(&["handle"], &[LIFECYCLE]).contains("hooks of the other world"));
        assert!(err(&["on-message"], &[HOOKS]).contains("hooks of the other world"));
    }

    #[test]
    fn names_are_safe_file_stems() {
        assert_eq!(plugin_name(Path::new("/p/echo.wasm")), Some("echo".into()));
        assert_eq!(
            plugin_name(Path::new("counter_js.wasm")),
            Some("counter_js".into())
        );
        assert_eq!(plugin_name(Path::new("echo.wasm.tmp")), None);
        assert_eq!(plugin_name(Path::new(".hidden.wasm")), None);
        assert_eq!(plugin_name(Path::new("a b.wasm")), None);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_737_600), "2026-11-27T00:00:00Z");
    }
}
