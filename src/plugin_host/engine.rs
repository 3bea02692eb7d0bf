//! The one wasmtime [`Engine`] of the process and its epoch ticker.
//!
//! Owns: engine configuration (component model, epoch interruption, compiled
//! artifact cache, pooling allocator probed with an on-demand fallback) and the
//! ticker thread that advances the epoch. Used by `PluginHost::start`.

use std::path::Path;

use tokio_util::sync::CancellationToken;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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

fn base_config(cache_dir: Option<&Path>) -> (Config, bool) {
    let mut config = Config::new();
    config.wasm_component_model(true);
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
    fn engine_builds_with_pooling_or_falls_back() {
        let info = build(&PluginsConfig::default(), None).expect("engine");
        // Which allocator depends on the host's address-space limits; both work.
        eprintln!("pooling allocator: {}", info.pooling_max_memory.is_some());
        assert!(!info.cached);
    }
}
