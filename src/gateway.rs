//! The composition root of one running gateway: builds the shared state and
//! applies configs to it.
//!
//! Owns: [`Gateway`], which holds the sessions' [`Hub`] and swaps what a new
//! config changes — each tenant's compiled [`TenantRuntime`](crate::tenant::TenantRuntime) (tenants
//! themselves, with their brokers, sessions and rooms, outlive reloads), the
//! handshake limiter, the plugin limits — all tenants compiling or nothing
//! changing. Nothing in the connection pipeline imports this module: the
//! listeners' handlers get the [`Hub`] (public) or the [`Gateway`] (admin).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::cluster::ClusterBroker;
use crate::config::{Config, ConfigError};
use crate::error::CloseCode;
use crate::policy::rate_limit::HandshakeLimiter;
use crate::realtime::broker::{Broker, LocalBroker};
use crate::session::{Hub, HubParts};
use crate::tenant::{self, Tenant};

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

/// One gateway: the sessions' shared state plus the config apply.
///
/// Reads go to the [`Hub`] (`Gateway` dereferences to it): the admin
/// listener's handlers and the tests use the same accessors as the pipeline.
pub struct Gateway {
    hub: Arc<Hub>,
    base_dir: PathBuf,
    apply_lock: Mutex<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("tenants", &self.hub.tenants.snapshot().len())
            .field("draining", &self.hub.is_draining())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Gateway {
    type Target = Hub;

    fn deref(&self) -> &Hub {
        &self.hub
    }
}

impl Gateway {
    /// Builds the state for a validated config.
    ///
    /// # Errors
    /// A tenant whose keys or secrets cannot be loaded.
    pub fn new(cfg: Config, base_dir: PathBuf, parts: HubParts) -> Result<Arc<Self>, ConfigError> {
        let gw = Arc::new(Self {
            hub: Arc::new(Hub::new(cfg.clone(), parts)),
            base_dir,
            apply_lock: Mutex::new(()),
        });
        gw.apply(cfg)?;
        Ok(gw)
    }

    /// The sessions' shared state (the public listener's handlers get it).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Applies a validated config: all tenants compile, or nothing changes.
    ///
    /// # Errors
    /// Any tenant that fails to compile; the old config keeps serving.
    pub fn apply(&self, cfg: Config) -> Result<ApplyReport, ConfigError> {
        let _guard = self.apply_lock.lock();
        let hub = &self.hub;
        let mut runtimes = tenant::compile_all(&cfg, &self.base_dir, &hub.backend)?;
        // Re-read on every apply: a renewed certificate under the same path
        // serves new connections after a reload.
        let tls = crate::transport::tls::load(&cfg.gateway.tls, &self.base_dir)?;
        let old_cfg = hub.config.load_full();
        let old = hub.tenants.snapshot();
        let mut report = ApplyReport::default();
        let mut next = HashMap::with_capacity(cfg.tenants.len());
        for t in &cfg.tenants {
            let Some(rt) = runtimes.remove(&t.id) else {
                continue;
            };
            let history = rt.policy.publish.history;
            let tenant = match old.get(&t.id) {
                Some(existing) => {
                    match existing.runtime() {
                        Some(r) if *r.cfg != *t => report.updated.push(t.id.clone()),
                        Some(_) => {}
                        None => report.added.push(t.id.clone()),
                    }
                    existing.set_runtime(Some(rt));
                    Arc::clone(existing)
                }
                None => {
                    report.added.push(t.id.clone());
                    let broker: Arc<dyn Broker> = match &hub.cluster {
                        Some(node) => Arc::new(ClusterBroker::new(&t.id, Arc::clone(node))),
                        None => Arc::new(LocalBroker::new()),
                    };
                    Arc::new(Tenant::new(&t.id, rt, broker))
                }
            };
            tenant.broker.presence_events(t.rooms.presence_events);
            tenant.broker.history_policy(history);
            next.insert(t.id.clone(), tenant);
        }
        for (id, tenant) in old.iter() {
            if !next.contains_key(id) {
                tenant.set_runtime(None);
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
            hub.ext().config_changed(&n.plugins);
        }
        if o.handshake_limit != n.handshake_limit {
            hub.handshake
                .store(Arc::new(HandshakeLimiter::new(&n.handshake_limit)));
        }
        hub.tls.store(tls);
        hub.tenants.replace(next);
        hub.config.store(Arc::new(cfg));
        Ok(report)
    }

    /// Directory relative key and plugin paths resolve against.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }
}
