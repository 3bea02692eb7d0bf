//! The one wasmtime [`Engine`] of the process and its epoch ticker.
//!
//! Owns: engine configuration (component model, epoch interruption, compiled
//! artifact cache, pooling allocator probed with an on-demand fallback, the
//! opt-in profiler agent of [`PROFILER_ENV`]) and the ticker thread that
//! advances the epoch. Used by `PluginHost::start`.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

use super::limits::{EPOCH_TICK, POOLING_MIN_MAX_MEMORY_BYTES, POOLING_TOTAL_INSTANCES};
use crate::config::PluginsConfig;

/// The engine and what it was built with.
#[derive(Clone)]
pub(crate) struct EngineInfo {
    /// The engine.
    pub(crate) engine: Engine,
    /// Largest linear memory an instance can get, when the pooling allocator is
    /// used (`None` = on-demand allocation, no fixed ceiling).
    pub(crate) pooling_max_memory: Option<usize>,
    /// Whether compiled artifacts are cached on disk.
    pub(crate) cached: bool,
}

/// The compiled-code cache directory for plugins in `plugins_dir`: `configured`
/// when set, else a private per-user directory (`$XDG_CACHE_HOME/wsprism/plugins`,
/// `$HOME/.cache/wsprism/plugins`, or `<tmp>/wsprism-<uid>/plugins`). Cached
/// artifacts are native code the gateway runs, so the directory must never be
/// writable by anyone who could not already run code as this user: it is
/// created 0700, and refused when it lies inside the plugin folder (whoever
/// may drop a `.wasm` could plant native code), is owned by another user, or
/// is writable by group or others.
///
/// # Errors
/// Why the directory cannot be used; the caller runs without a cache.
pub(crate) fn cache_dir(configured: &str, plugins_dir: &Path) -> Result<PathBuf, String> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = if configured.is_empty() {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .unwrap_or_else(|| std::env::temp_dir().join(format!("wsprism-{uid}")));
        base.join("wsprism").join("plugins")
    } else {
        PathBuf::from(configured)
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    let plugins = plugins_dir
        .canonicalize()
        .unwrap_or_else(|_| plugins_dir.to_path_buf());
    if dir.starts_with(&plugins) {
        return Err(format!(
            "{} is inside the plugin folder {}; set gateway.plugins.cache_dir elsewhere",
            dir.display(),
            plugins.display()
        ));
    }
    let meta =
        std::fs::metadata(&dir).map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
    if meta.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not this process's uid {uid}",
            dir.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}); chmod 700 it",
            dir.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(dir)
}

/// Environment variable that turns on wasmtime's profiler agent for guest
/// code, so a native profiler names the functions of the plugins (JIT code has
/// no symbols otherwise): `perfmap` writes `/tmp/perf-<pid>.map` for `perf
/// report`, `jitdump` writes `jit-<pid>.dump` for `perf inject --jit`. Unset
/// (or `none`) in production: the agent costs a little at every compile and
/// the map file grows with every plugin (re)load.
pub(crate) const PROFILER_ENV: &str = "WSPRISM_WASM_PROFILER";

/// The profiling strategy an operator asked for in [`PROFILER_ENV`].
///
/// # Errors
/// A value that names no strategy, with the ones that exist.
fn profiler(value: Option<&str>) -> Result<ProfilingStrategy, String> {
    match value.map(str::trim).map(str::to_ascii_lowercase).as_deref() {
        None | Some("" | "none") => Ok(ProfilingStrategy::None),
        Some("perfmap") => Ok(ProfilingStrategy::PerfMap),
        Some("jitdump") => Ok(ProfilingStrategy::JitDump),
        Some(other) => Err(format!(
            "{PROFILER_ENV}={other:?} names no profiler; use perfmap, jitdump or none"
        )),
    }
}

fn base_config(cache_dir: Option<&Path>) -> (Config, bool) {
    let mut config = Config::new();
    config.wasm_component_model(true);
    let wanted = std::env::var(PROFILER_ENV).ok();
    match profiler(wanted.as_deref()) {
        Ok(ProfilingStrategy::None) => {}
        Ok(strategy) => {
            tracing::info!(
                ?strategy,
                "plugin guest code is registered with a profiler ({PROFILER_ENV})"
            );
            config.profiler(strategy);
        }
        Err(e) => tracing::warn!(error = %e, "plugin profiler not enabled"),
    }
    config.epoch_interruption(true);
    // Plugins are WASI p2 components that make plain (synchronous-ABI) calls;
    // without the component-model-async machinery `call_async` runs the guest
    // directly on a fiber instead of through a per-call concurrent task loop,
    // several microseconds less per message. A component that needs the async
    // ABI fails to load (and is reported) instead.
    config.concurrency_support(false);
    let mut cached = false;
    if let Some(dir) = cache_dir {
        // wasmtime's own cache keys artifacts by the wasm bytes, the compiler
        // settings and the wasmtime version, so a restart (or a reload of a file
        // seen before) skips compilation. Our own `Component::serialize` cache
        // would need `Component::deserialize`, which is `unsafe` (the crate
        // forbids it), so the built-in cache is used instead.
        let mut cc = wasmtime::CacheConfig::new();
        cc.with_directory(dir);
        match wasmtime::Cache::new(cc) {
            Ok(cache) => {
                config.cache(Some(cache));
                cached = true;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "plugin compile cache disabled")
            }
        }
    }
    (config, cached)
}

/// Builds the engine: pooling allocator first, on-demand allocation when the
/// pool's address-space reservation is refused (small `ulimit -v`, 32-bit).
///
/// # Errors
/// Only when even the on-demand engine cannot be built.
pub(crate) fn build(cfg: &PluginsConfig, cache_dir: Option<&Path>) -> Result<EngineInfo, String> {
    let max_memory = cfg.max_memory_bytes.max(POOLING_MIN_MAX_MEMORY_BYTES);
    let (mut config, cached) = base_config(cache_dir);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOLING_TOTAL_INSTANCES)
        .total_core_instances(POOLING_TOTAL_INSTANCES * 8)
        .total_memories(POOLING_TOTAL_INSTANCES)
        .total_tables(POOLING_TOTAL_INSTANCES * 4)
        .total_stacks(POOLING_TOTAL_INSTANCES)
        .max_memory_size(max_memory)
        .max_core_instances_per_component(256)
        .max_memories_per_component(16)
        .max_tables_per_component(64)
        .max_memories_per_module(4)
        .max_tables_per_module(8)
        .table_elements(100_000)
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => {
            tracing::debug!(max_memory, "plugin engine uses the pooling allocator");
            return Ok(EngineInfo {
                engine,
                pooling_max_memory: Some(max_memory),
                cached,
            });
        }
        Err(e) => {
            tracing::info!(error = %e, "pooling allocator unavailable; plugins use on-demand allocation");
        }
    }
    let (mut config, cached) = base_config(cache_dir);
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let engine = Engine::new(&config).map_err(|e| format!("cannot build the wasm engine: {e}"))?;
    Ok(EngineInfo {
        engine,
        pooling_max_memory: None,
        cached,
    })
}

/// Starts the epoch ticker.
///
/// It is an OS thread, not a tokio task, on purpose: guests run on tokio workers
/// and only yield when the epoch advances, so a ticker that needed a free worker
/// could be starved by the very guests it must interrupt (the machine may have
/// two cores, and tests use a current-thread runtime). The thread exits when
/// `stop` is cancelled.
pub(crate) fn start_ticker(engine: Engine, stop: CancellationToken) -> Result<(), String> {
    std::thread::Builder::new()
        .name("wsprism-epoch".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the epoch ticker thread: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiler_is_opt_in_and_named() {
        assert!(matches!(profiler(None), Ok(ProfilingStrategy::None)));
        assert!(matches!(profiler(Some("")), Ok(ProfilingStrategy::None)));
        assert!(matches!(
            profiler(Some("none")),
            Ok(ProfilingStrategy::None)
        ));
        assert!(matches!(
            profiler(Some(" PerfMap ")),
            Ok(ProfilingStrategy::PerfMap)
        ));
        assert!(matches!(
            profiler(Some("jitdump")),
            Ok(ProfilingStrategy::JitDump)
        ));
        let e = profiler(Some("vtune")).expect_err("unknown");
        assert!(e.contains("\"vtune\"") && e.contains("perfmap"), "{e}");
    }

    #[test]
    fn engine_builds_with_pooling_or_falls_back() {
        let info = build(&PluginsConfig::default(), None).expect("engine");
        // Which allocator depends on the host's address-space limits; both work.
        eprintln!("pooling allocator: {}", info.pooling_max_memory.is_some());
        assert!(!info.cached);
    }

    #[test]
    fn cache_dir_is_private_and_outside_the_plugin_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        let plugins = root.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugins");
        let path = |p: &Path| p.display().to_string();

        let fresh = root.path().join("cache").join("wsprism");
        let got = cache_dir(&path(&fresh), &plugins).expect("fresh dir");
        let mode = std::fs::metadata(&got).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "created private: {mode:o}");

        let inside = cache_dir(&path(&plugins.join(".cache")), &plugins).expect_err("inside");
        assert!(inside.contains("inside the plugin folder"), "{inside}");

        let open = root.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = cache_dir(&path(&open), &plugins).expect_err("world-writable");
        assert!(err.contains("writable by group or others"), "{err}");

        // Owned by someone else (only checkable when we may chown, i.e. as root).
        let foreign = root.path().join("foreign");
        std::fs::create_dir(&foreign).expect("mkdir");
        std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        if std::os::unix::fs::chown(&foreign, Some(65534), None).is_ok() {
            let err = cache_dir(&path(&foreign), &plugins).expect_err("foreign owner");
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
    }
}
