//! The shared state of one running gateway: config, tenants, metrics, drain flag.
//!
//! Owns: the mapping from tenant id to its long-lived [`Tenant`] (whose broker,
//! and so whose sessions and rooms, outlive config reloads) and the swap of each
//! tenant's compiled [`TenantRuntime`] when a new config is applied. Everything
//! else reads a consistent snapshot through `ArcSwap` loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::backend::BackendClient;
use crate::config::{Config, ConfigError, ConfigIssue, TenantConfig};
use crate::error::CloseCode;
use crate::obs::metrics::Metrics;
use crate::policy::TenantPolicy;
use crate::policy::rate_limit::HandshakeLimiter;
use crate::realtime::broker::{Broker, LocalBroker, Sid};
use crate::services::ExtService;

/// A tenant's compiled config: what sessions consult per message.
#[derive(Debug)]
pub struct TenantRuntime {
    /// The tenant's config section.
    pub cfg: Arc<TenantConfig>,
    /// Compiled allowlists, limiters and caps.
    pub policy: Arc<TenantPolicy>,
    /// Ticket verifier.
    pub auth: Authenticator,
}

impl TenantRuntime {
    /// Compiles a tenant.
    ///
    /// # Errors
    /// Key material or secrets that cannot be loaded, as a message.
    pub fn build(
        cfg: &TenantConfig,
        base_dir: &Path,
        backend: &BackendClient,
    ) -> Result<Self, String> {
        Ok(Self {
            auth: Authenticator::from_config(cfg, base_dir, backend.http())?,
            policy: Arc::new(TenantPolicy::compile(cfg)),
            cfg: Arc::new(cfg.clone()),
        })
    }
}

/// A tenant for the lifetime of the process.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: Arc<str>,
    /// Current compiled config; `None` once the tenant was removed from the config.
    runtime: ArcSwapOption<TenantRuntime>,
    /// Sessions, users and rooms.
    pub broker: Arc<dyn Broker>,
}

impl Tenant {
    /// The config in force, or `None` if the tenant was removed.
    #[inline]
    pub fn runtime(&self) -> Option<Arc<TenantRuntime>> {
        self.runtime.load_full()
    }
}

/// What a config apply changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Tenants added.
    pub added: Vec<String>,
    /// Tenants whose config was replaced.
    pub updated: Vec<String>,
    /// Tenants removed (their sessions are closed with 1001).
    pub removed: Vec<String>,
    /// Changed fields that only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Shared state of one gateway.
pub struct Gateway {
    config: ArcSwap<Config>,
    tenants: ArcSwap<HashMap<String, Arc<Tenant>>>,
    handshake: ArcSwap<HandshakeLimiter>,
    /// Metric families of this instance.
    pub metrics: Metrics,
    /// HTTP client for auth webhooks, events and plugin backend calls.
    pub backend: BackendClient,
    /// Routed Ext Lane services (the plugin host, or [`crate::services::NoPlugins`]).
    pub ext: Arc<dyn ExtService>,
    draining: AtomicBool,
    next_sid: AtomicU64,
    base_dir: PathBuf,
    apply_lock: Mutex<()>,
    /// Every session task; drain waits on it.
    pub sessions: TaskTracker,
    /// Background tasks (webhook events, upkeep).
    pub tasks: TaskTracker,
    /// Cancelled when the gateway must stop.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tenants", &self.tenants.load().len())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the state for a validated config.
    ///
    /// # Errors
    /// A tenant whose keys or secrets cannot be loaded.
    pub fn new(
        cfg: Config,
        base_dir: PathBuf,
        metrics: Metrics,
        backend: BackendClient,
        ext: Arc<dyn ExtService>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Self>, ConfigError> {
        let gw = Arc::new(Self {
            handshake: ArcSwap::from_pointee(HandshakeLimiter::new(&cfg.gateway.handshake_limit)),
            config: ArcSwap::from_pointee(cfg.clone()),
            tenants: ArcSwap::from_pointee(HashMap::new()),
            metrics,
            backend,
            ext,
            draining: AtomicBool::new(false),
            // Random start so session ids are not guessable across restarts.
            next_sid: AtomicU64::new(rand::random::<u64>() >> 12),
            base_dir,
            apply_lock: Mutex::new(()),
            sessions: TaskTracker::new(),
            tasks,
            shutdown,
        });
        gw.apply(cfg)?;
        Ok(gw)
    }

    /// Compiles every tenant of `cfg` without applying anything (`wsprism check`).
    ///
    /// # Errors
    /// Every tenant that fails, with its path.
    pub fn compile_tenants(
        cfg: &Config,
        base_dir: &Path,
        backend: &BackendClient,
    ) -> Result<HashMap<String, TenantRuntime>, ConfigError> {
        let mut out = HashMap::new();
        let mut issues = Vec::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            match TenantRuntime::build(t, base_dir, backend) {
                Ok(rt) => {
                    out.insert(t.id.clone(), rt);
                }
                Err(message) => issues.push(ConfigIssue {
                    path: format!("tenants[{i}].auth"),
                    message,
                }),
            }
        }
        if issues.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Applies a validated config: all tenants compile, or nothing changes.
    ///
    /// # Errors
    /// Any tenant that fails to compile; the old config keeps serving.
    pub fn apply(&self, cfg: Config) -> Result<ApplyReport, ConfigError> {
        let _guard = self.apply_lock.lock();
        let mut runtimes = Self::compile_tenants(&cfg, &self.base_dir, &self.backend)?;
        let old_cfg = self.config.load_full();
        let old = self.tenants.load_full();
        let mut report = ApplyReport::default();
        let mut next = HashMap::with_capacity(cfg.tenants.len());
        for t in &cfg.tenants {
            let Some(rt) = runtimes.remove(&t.id) else {
                continue;
            };
            let tenant = match old.get(&t.id) {
                Some(existing) => {
                    if existing.runtime().is_some_and(|r| *r.cfg != *t) {
                        report.updated.push(t.id.clone());
                    } else if existing.runtime().is_none() {
                        report.added.push(t.id.clone());
                    }
                    existing.runtime.store(Some(Arc::new(rt)));
                    Arc::clone(existing)
                }
                None => {
                    report.added.push(t.id.clone());
                    Arc::new(Tenant {
                        id: Arc::from(t.id.as_str()),
                        runtime: ArcSwapOption::from_pointee(rt),
                        broker: Arc::new(LocalBroker::new()),
                    })
                }
            };
            next.insert(t.id.clone(), tenant);
        }
        for (id, tenant) in old.iter() {
            if !next.contains_key(id) {
                tenant.runtime.store(None);
                tenant
                    .broker
                    .close_all(CloseCode::GoingAway, "tenant removed");
                report.removed.push(id.clone());
            }
        }
        let (o, n) = (&old_cfg.gateway, &cfg.gateway);
        for (field, changed) in [
            ("gateway.listen", o.listen != n.listen),
            ("gateway.admin_listen", o.admin_listen != n.admin_listen),
            ("gateway.cluster", o.cluster != n.cluster),
            ("gateway.plugins.dir", o.plugins.dir != n.plugins.dir),
            ("gateway.diagnostics", o.diagnostics != n.diagnostics),
        ] {
            if changed {
                report.needs_restart.push(field);
            }
        }
        if o.plugins != n.plugins {
            self.ext.config_changed(&n.plugins);
        }
        if o.handshake_limit != n.handshake_limit {
            self.handshake
                .store(Arc::new(HandshakeLimiter::new(&n.handshake_limit)));
        }
        self.tenants.store(Arc::new(next));
        self.config.store(Arc::new(cfg));
        Ok(report)
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Looks up a configured tenant.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.load().get(id).cloned()
    }

    /// Every configured tenant.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.load().values().cloned().collect()
    }

    /// The handshake limiter in force.
    pub fn handshake_limiter(&self) -> Arc<HandshakeLimiter> {
        self.handshake.load_full()
    }

    /// A fresh session id.
    pub fn next_sid(&self) -> Sid {
        self.next_sid.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: `/readyz` and new upgrades answer 503, every session gets
    /// Close 1001 after its queued reliable frames. Returns the sessions notified.
    pub fn start_drain(&self) -> usize {
        self.draining.store(true, Ordering::Release);
        self.tenants
            .load()
            .values()
            .map(|t| t.broker.close_all(CloseCode::GoingAway, "server draining"))
            .sum()
    }

    /// Directory relative key and plugin paths resolve against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }
}
