//! The WASM plugin host: Ext Lane services implemented as WebAssembly components
//! (README "Writing a plugin").
//!
//! Owns: the process's one wasmtime engine, the plugin registry loaded from
//! `gateway.plugins.dir` (with hot reload), the instance lanes of every
//! (tenant, plugin), and the [`ExtService`] implementation the Ext Lane calls.
//! Input: a [`PluginCall`] of one entry point (a message routed by the
//! tenant's `routes`, a closed session, a join or leave) through
//! [`PluginHost::run`]; output: the [`Effect`]s the plugin queued, which the
//! lane applies, or a [`PluginError`]. It never writes to a socket and never
//! touches another tenant's state.
//!
//! Layout: `call.rs` (the call record and the per-entry-point rules),
//! `engine.rs` (engine, epoch ticker), `bindings.rs` (WIT bindings and
//! host imports), `limits.rs` (budgets), `instance.rs` (one store, one call),
//! `pool.rs` (lanes, routing, idle sweep), `health.rs` (call counters, faults
//! charged to their session, the per-session and plugin-wide back-offs), `loader.rs` (load, reload,
//! watch), `kv.rs` (plugin key-value store), `backend.rs` (upstream HTTP
//! calls), `output.rs` (guest stdout/stderr to `tracing`).
//!
//! # Execution model
//! Guests run as async wasmtime calls on the caller's tokio task, one call at a
//! time per instance (see `pool.rs` for why lanes beat actor tasks here). The
//! engine is built without component-model-async support, so a call is a plain
//! fiber switch rather than a concurrent task loop. The epoch advances every
//! 10 ms on a dedicated thread and the store's epoch callback yields to tokio at
//! every tick, so a busy guest never holds a worker for more than about one tick
//! and its CPU budget (`call_timeout_ms`) is counted in ticks. An outer
//! `tokio::time::timeout` bounds wall-clock time, which also covers host calls
//! such as `backend`, during which the CPU budget does not advance. This beats
//! running guests on blocking threads: no thread per instance, host imports are
//! plain async code, and cancellation is a dropped future.
//!
//! # Status
//! `status()` reports `failed to load` whenever the newest file of a plugin
//! failed to load — even while an older version keeps serving (its `sha256` and
//! `loaded_at` are then shown next to `last_error`), so the operator sees that
//! the deploy did not take. Otherwise `backing off` (the version failed to
//! instantiate, or faulted for several users, repeatedly; a session backed off
//! alone does not change the plugin's state), `serving`, or `missing`.

mod backend;
mod bindings;
pub mod call;
mod engine;
mod health;
mod instance;
pub mod kv;
mod limits;
mod loader;
mod output;
mod pool;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use wasmtime::component::Linker;

use crate::config::PluginsConfig;
use crate::error::PluginError;
use crate::obs::metrics::Metrics;
use crate::services::{BoxFuture, Effect, ExtService, PluginCall, PluginStatus};
use bindings::HostState;
pub use call::EntryKind;

/// The plugin name of a file in the plugin folder (its stem, when the name is
/// `<name>.wasm` with a valid name), as the loader sees it.
pub fn plugin_name(path: &std::path::Path) -> Option<String> {
    loader::plugin_name(path)
}
use kv::{KvStore, MemoryKv};
use pool::{Pool, PoolKey, Stats};

/// A map keyed by names from the config (tenant, plugin), looked up on every
/// call. Clients never choose its keys, so the keyed-hash protection of
/// SipHash buys nothing here; foldhash (randomly seeded) is several times
/// cheaper per lookup.
pub(crate) type NameMap<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Shared state of the host, owned by [`PluginHost`] and borrowed by the
/// calls it runs and by its background tasks (watcher, idle sweeper).
pub(crate) struct HostCore {
    engine: engine::EngineInfo,
    linker: Linker<HostState>,
    cfg: ArcSwap<PluginsConfig>,
    dir: PathBuf,
    kv: Arc<dyn KvStore>,
    http: reqwest::Client,
    metrics: Metrics,
    tracker: TaskTracker,
    /// Cancelled on gateway shutdown or when the host is dropped.
    stop: CancellationToken,
    /// Bounds fresh instances in `per_message` mode, over all tenants.
    fresh: tokio::sync::Semaphore,
    /// Each tenant's share of `fresh`.
    fresh_per_tenant: NameMap<Arc<str>, Arc<tokio::sync::Semaphore>>,
    registry: loader::Registry,
    pools: NameMap<PoolKey, Arc<Pool>>,
    stats: NameMap<PoolKey, Arc<Stats>>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl HostCore {
    /// The pool of (tenant, plugin), created on first use with its stats and
    /// resolved metric handles.
    fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        if let Some(p) = self.pools.get(key) {
            return Arc::clone(p.value());
        }
        let stats = self.stats(key);
        let metrics = pool::CallMetrics {
            calls: self
                .metrics
                .plugin_calls
                .with_label_values(&[&*key.0, &*key.1]),
            duration: self
                .metrics
                .plugin_call_duration
                .with_label_values(&[&*key.0, &*key.1]),
        };
        Arc::clone(
            self.pools
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Pool::new(stats, metrics)))
                .value(),
        )
    }

    fn stats(&self, key: &PoolKey) -> Arc<Stats> {
        if let Some(s) = self.stats.get(key) {
            return Arc::clone(s.value());
        }
        Arc::clone(self.stats.entry(key.clone()).or_default().value())
    }

    /// Drops every lane of `plugin` (calls holding one still finish).
    fn drop_pools(&self, plugin: &str) {
        self.pools.retain(|k, _| &*k.1 != plugin);
    }

    /// A new version of `plugin` is serving: forget crash history.
    fn reset_health(&self, plugin: &str) {
        for s in self.stats.iter().filter(|s| &*s.key().1 == plugin) {
            s.value().reset();
        }
    }
}

/// The WASM plugin host (implements [`ExtService`]).
pub struct PluginHost {
    env: Arc<HostCore>,
    /// Stops the ticker, watcher and idle sweeper when the host is dropped.
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("dir", &self.env.dir)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// Builds the engine, loads every `*.wasm` in `cfg.dir`, and starts the
    /// epoch ticker and (when `cfg.watch`) the directory watcher. Every task is
    /// spawned through `tracker` and stops on `shutdown`. A plugin that fails to
    /// load is logged and reported by `status`, not fatal.
    ///
    /// Compiled artifacts are cached in `cfg.cache_dir` (see
    /// [`engine::cache_dir`]), never inside the plugin folder.
    ///
    /// # Errors
    /// The engine cannot be built or the epoch ticker cannot start. A watcher
    /// that cannot start is logged (`warn!`) and hot reload then needs
    /// [`PluginHost::reload`].
    pub async fn start(
        cfg: &PluginsConfig,
        metrics: Metrics,
        http: &crate::backend::BackendClient,
        shutdown: tokio_util::sync::CancellationToken,
        tracker: tokio_util::task::TaskTracker,
    ) -> Result<Arc<Self>, String> {
        Self::start_with_kv(
            cfg,
            metrics,
            http,
            shutdown,
            tracker,
            Arc::new(MemoryKv::new()),
        )
        .await
    }

    /// [`PluginHost::start`] with an explicit kv store (a Redis store in
    /// cluster mode).
    ///
    /// # Errors
    /// As [`PluginHost::start`].
    pub async fn start_with_kv(
        cfg: &PluginsConfig,
        metrics: Metrics,
        http: &crate::backend::BackendClient,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        kv: Arc<dyn KvStore>,
    ) -> Result<Arc<Self>, String> {
        let mut dir = PathBuf::from(&cfg.dir);
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create plugin dir");
        }
        if let Ok(abs) = tokio::fs::canonicalize(&dir).await {
            dir = abs;
        }
        let cache = match engine::cache_dir(&cfg.cache_dir, &dir) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!("plugin compile cache disabled: {e}");
                None
            }
        };
        let engine = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || engine::build(&cfg, cache.as_deref()))
                .await
                .map_err(|e| format!("engine build task failed: {e}"))??
        };
        let linker = bindings::linker(&engine.engine)
            .map_err(|e| format!("cannot link plugin imports: {e}"))?;
        // Plugin backend calls share the gateway's upstream client
        // (`crate::backend`): no redirects, no proxies from the environment,
        // a connect timeout and a bounded idle pool.
        let http = http.http();
        let stop = shutdown.child_token();
        engine::start_ticker(engine.engine.clone(), stop.clone())?;
        let env = Arc::new(HostCore {
            engine,
            linker,
            cfg: ArcSwap::from_pointee(cfg.clone()),
            dir,
            kv,
            http,
            metrics,
            tracker,
            stop: stop.clone(),
            fresh: tokio::sync::Semaphore::new(limits::MAX_CONCURRENT_FRESH_INSTANCES),
            fresh_per_tenant: NameMap::default(),
            registry: loader::Registry::default(),
            pools: NameMap::default(),
            stats: NameMap::default(),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        let host = Arc::new(Self {
            env: Arc::clone(&env),
            _stop_on_drop: stop.drop_guard(),
        });
        loader::rescan(&env).await;
        spawn_idle_sweeper(&env);
        if cfg.watch
            && let Err(e) = loader::watch(&env)
        {
            // Typically the inotify watch limit. Serving the loaded plugins beats
            // refusing to start; `reload()` (SIGHUP) still picks up changes.
            tracing::warn!(error = %e, "plugin dir watcher unavailable; hot reload only on explicit reload");
        }
        tracing::info!(
            dir = %env.dir.display(),
            pooling = env.engine.pooling_max_memory.is_some(),
            cache = env.engine.cached,
            plugins = env.serving().len(),
            "plugin host started"
        );
        Ok(host)
    }

    /// Config reload: the new call timeout, memory cap, instance count and
    /// isolation apply to new calls (and new instances). `dir` and `watch` need a
    /// restart.
    pub fn update_config(&self, cfg: &PluginsConfig) {
        let old = self.env.cfg.load();
        if old.dir != cfg.dir || old.watch != cfg.watch {
            tracing::warn!("gateway.plugins.dir and .watch changes need a restart");
        }
        if let Some(max) = self.env.engine.pooling_max_memory
            && cfg.max_memory_bytes > max
        {
            tracing::warn!(
                max_memory_bytes = cfg.max_memory_bytes,
                pool_limit = max,
                "max_memory_bytes is above what the instance pool reserved; instances stay capped at the pool limit until a restart"
            );
        }
        self.env.cfg.store(Arc::new(cfg.clone()));
    }

    /// Rescans the plugin directory now (what the watcher does after a burst of
    /// file events); useful when `watch` is off.
    pub async fn reload(&self) {
        loader::rescan(&self.env).await;
    }

    /// Names of the plugins currently serving.
    pub fn plugins(&self) -> Vec<String> {
        self.env.serving()
    }

    /// Runs one plugin call, whatever its entry point, and resolves to the
    /// effects it queued. A plugin that is not loaded, or a hook its serving
    /// version does not export, answers as [`EntryKind::absent`] says.
    /// Messages are counted in the plugin metrics and the server API's
    /// `calls`/`errors` ([`EntryKind::metered`]); hooks are not.
    ///
    /// # Errors
    /// The plugin's refusal or failure as a [`PluginError`].
    ///
    /// # Cancel safety
    /// Dropping the future while the call waits for its lane is harmless;
    /// dropping it mid-call cuts the call, and the instance is replaced before
    /// the next one.
    pub fn run(&self, call: PluginCall) -> BoxFuture<Result<Vec<Effect>, PluginError>> {
        let env = Arc::clone(&self.env);
        Box::pin(async move {
            let started = Instant::now();
            let kind = call.entry.kind();
            let key: PoolKey = (Arc::clone(&call.session.tenant), Arc::clone(&call.plugin));
            let pool = env.pool(&key);
            if kind.metered() {
                pool.metrics.calls.inc();
                pool.stats.calls.fetch_add(1, Ordering::Relaxed);
            }
            let r = match env.registry.current(&key.1) {
                Some(version) if version.exports(kind) => {
                    pool::dispatch(&env, &key, &pool, version, call).await
                }
                _ => kind.absent(&key.1),
            };
            // A hook's failure is logged by the join, leave or close it belongs to.
            if kind.metered() {
                pool.metrics
                    .duration
                    .observe(started.elapsed().as_secs_f64());
                if let Err(e) = &r {
                    pool.stats.errors.fetch_add(1, Ordering::Relaxed);
                    env.metrics
                        .plugin_errors
                        .with_label_values(&[&*key.0, &*key.1, e.label()])
                        .inc();
                    tracing::debug!(tenant = %key.0, plugin = %key.1, reason = e.label(), error = %e, "plugin call failed");
                }
            }
            r
        })
    }

    /// Whether `plugin`'s serving version exports `entry`: `false` when it is
    /// not loaded. A call of an entry point it does not export has nothing to
    /// run ([`EntryKind::absent`]).
    pub fn exports(&self, plugin: &str, entry: EntryKind) -> bool {
        self.env
            .registry
            .current(plugin)
            .is_some_and(|v| v.exports(entry))
    }
}

/// Starts the one task that drops idle instances (see `pool::sweep_idle`). It
/// holds the host weakly and stops with it.
fn spawn_idle_sweeper(env: &Arc<HostCore>) {
    let weak = Arc::downgrade(env);
    let stop = env.stop.clone();
    env.tracker.spawn(async move {
        let mut tick = tokio::time::interval(limits::INSTANCE_IDLE_TTL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(env) = weak.upgrade() else { return };
            pool::sweep_idle(&env);
        }
    });
}

impl HostCore {
    /// Names of the plugins with a serving version, sorted.
    fn serving(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .registry
            .names()
            .into_iter()
            .filter(|n| self.registry.current(n).is_some())
            .collect();
        names.sort();
        names
    }
}

impl ExtService for PluginHost {
    fn call(&self, call: PluginCall) -> BoxFuture<Result<Vec<Effect>, PluginError>> {
        self.run(call)
    }

    fn status(&self, tenant: &str, plugin: &str) -> PluginStatus {
        let env = &self.env;
        let slot = env.registry.get(plugin);
        let current = slot.as_ref().and_then(|s| s.current.load_full());
        let failure = slot.as_ref().and_then(|s| s.failure.lock().clone());
        let key: PoolKey = (Arc::from(tenant), Arc::from(plugin));
        let stats = env.stats.get(&key).map(|s| Arc::clone(s.value()));
        let backing_off = stats
            .as_ref()
            .is_some_and(|s| s.backing_off(Instant::now()));
        let state = match (&current, &failure) {
            (_, Some(_)) => "failed to load",
            (None, None) => "missing",
            (Some(_), None) if backing_off => "backing off",
            (Some(_), None) => "serving",
        };
        PluginStatus {
            name: plugin.to_owned(),
            sha256: current.as_ref().map(|v| v.sha256.clone()),
            loaded_at: current.as_ref().map(|v| v.loaded_at.clone()),
            calls: stats
                .as_ref()
                .map_or(0, |s| s.calls.load(Ordering::Relaxed)),
            errors: stats
                .as_ref()
                .map_or(0, |s| s.errors.load(Ordering::Relaxed)),
            state: state.to_owned(),
            last_error: failure.map(|f| f.error),
        }
    }

    fn config_changed(&self, cfg: &PluginsConfig) {
        self.update_config(cfg);
    }

    fn rescan(&self) -> BoxFuture<()> {
        let env = Arc::clone(&self.env);
        Box::pin(async move { loader::rescan(&env).await })
    }
}
