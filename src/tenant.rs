//! Tenants: each tenant's long-lived state and its compiled config.
//!
//! Owns: [`Tenant`] (one per tenant id for the life of the process; its
//! broker, and so its sessions and rooms, outlive config reloads),
//! [`TenantRuntime`] (a tenant's config compiled into policy and an
//! authenticator, swapped whole on reload) and the [`Directory`] that maps ids
//! to tenants. Input: a validated [`Config`]; the composition root
//! (`gateway`) decides when a compiled set replaces the current one. Must not:
//! hold gateway-wide state or know about listeners and sessions' sockets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::auth::Authenticator;
use crate::backend::BackendClient;
use crate::config::{Config, ConfigError, ConfigIssue, TenantConfig};
use crate::policy::TenantPolicy;
use crate::realtime::broker::Broker;

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
        queue_max_bytes: usize,
        base_dir: &Path,
        backend: &BackendClient,
    ) -> Result<Self, String> {
        Ok(Self {
            auth: Authenticator::from_config(cfg, base_dir, backend.http())?,
            policy: Arc::new(TenantPolicy::compile_for_queue(cfg, queue_max_bytes)),
            cfg: Arc::new(cfg.clone()),
        })
    }
}

/// Compiles every tenant of `cfg` without applying anything (startup, reload,
/// `wsprism check`).
///
/// # Errors
/// Every tenant that fails, each with its YAML path.
pub fn compile_all(
    cfg: &Config,
    base_dir: &Path,
    backend: &BackendClient,
) -> Result<HashMap<String, TenantRuntime>, ConfigError> {
    for (a, b) in crate::auth::shared_jwt_keys(&cfg.tenants, base_dir) {
        tracing::warn!(
            tenants = %format!("{a}, {b}"),
            "tenants {a:?} and {b:?} verify JWTs with the same key and the same audience/issuer: a token issued for one is accepted by the other; give each tenant its own key or a distinct `auth.audience`"
        );
    }
    let mut out = HashMap::new();
    let mut issues = Vec::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        match TenantRuntime::build(t, cfg.gateway.queues.max_bytes, base_dir, backend) {
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

/// A tenant for the lifetime of the process.
#[derive(Debug)]
pub struct Tenant {
    /// Tenant id.
    pub id: Arc<str>,
    /// Current compiled config; `None` once the tenant was removed from the config.
    runtime: ArcSwapOption<TenantRuntime>,
    /// Sessions, users and rooms.
    pub broker: Arc<dyn Broker>,
    /// Lifecycle webhooks (`backend.events`) in flight; past
    /// [`MAX_EVENTS_IN_FLIGHT`] new events are dropped and counted, so a slow
    /// backend under a connect storm cannot pile up tasks and sockets.
    pub events_in_flight: Arc<tokio::sync::Semaphore>,
}

/// Lifecycle webhooks one tenant may have in flight at once.
pub const MAX_EVENTS_IN_FLIGHT: usize = 256;

impl Tenant {
    /// A tenant serving `runtime`.
    pub fn new(id: &str, runtime: TenantRuntime, broker: Arc<dyn Broker>) -> Self {
        Self {
            id: Arc::from(id),
            runtime: ArcSwapOption::from_pointee(runtime),
            broker,
            events_in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_EVENTS_IN_FLIGHT)),
        }
    }

    /// The config in force, or `None` if the tenant was removed.
    #[inline]
    pub fn runtime(&self) -> Option<Arc<TenantRuntime>> {
        self.runtime.load_full()
    }

    /// Replaces the config in force; `None` marks the tenant removed.
    pub fn set_runtime(&self, runtime: Option<TenantRuntime>) {
        self.runtime.store(runtime.map(Arc::new));
    }
}

/// Tenant id → tenant, replaced whole when a config is applied.
#[derive(Debug, Default)]
pub struct Directory {
    tenants: ArcSwap<HashMap<String, Arc<Tenant>>>,
}

impl Directory {
    /// Looks up a configured tenant.
    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.load().get(id).cloned()
    }

    /// Every configured tenant.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        self.tenants.load().values().cloned().collect()
    }

    /// The current map (for building the next one).
    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<Tenant>>> {
        self.tenants.load_full()
    }

    /// Replaces the map.
    pub fn replace(&self, next: HashMap<String, Arc<Tenant>>) {
        self.tenants.store(Arc::new(next));
    }
}
