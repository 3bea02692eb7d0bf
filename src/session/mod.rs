//! Sessions: the state every session shares, and the rules for opening and
//! closing one.
//!
//! Owns: [`Hub`] (the tenants, the lane pipeline, the gateway settings in
//! force, session ids, the drain flag and the task trackers sessions run
//! under) and the session lifecycle ([`open`] and the close run by
//! [`SessionGuard`]'s drop). Input: an authenticated user of a tenant, from
//! the upgrade (`transport`); output: a registered session with its greeting,
//! and on close the presence, plugin and backend notifications. Must not: read
//! or write a socket (that is `transport`), or decide admission.

mod lifecycle;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lifecycle::{Greeting, Opened, SessionGuard, open};

use crate::backend::BackendClient;
use crate::cluster::Node;
use crate::config::Config;
use crate::error::CloseCode;
use crate::lanes::Pipeline;
use crate::obs::metrics::Metrics;
use crate::policy::rate_limit::HandshakeLimiter;
use crate::realtime::SessionId;
use crate::realtime::broker::SessionEntry;
use crate::realtime::session_id::SessionIds;
use crate::services::ExtService;
use crate::tenant::{Directory, Tenant};

/// What every session of the gateway shares. Built once by the composition
/// root (`gateway`), which also swaps the config, tenants and handshake
/// limiter in it when a config is applied.
#[derive(Debug)]
pub struct Hub {
    /// Tenant id → tenant.
    pub tenants: Arc<Directory>,
    /// Routed services and metrics, for the lanes.
    pub pipeline: Arc<Pipeline>,
    /// Metric families (the pipeline's).
    pub metrics: Metrics,
    /// HTTP client for auth webhooks and lifecycle events.
    pub backend: BackendClient,
    /// This process in the cluster (`cluster.mode: redis`).
    pub cluster: Option<Arc<Node>>,
    /// The config in force.
    pub(crate) config: ArcSwap<Config>,
    /// The handshake limiter in force.
    pub(crate) handshake: ArcSwap<HandshakeLimiter>,
    /// The public listener's TLS setup (`gateway.tls`), when TLS is on;
    /// replaced by every config apply (certificates re-read).
    pub(crate) tls: ArcSwapOption<tokio_rustls::rustls::ServerConfig>,
    draining: AtomicBool,
    ids: SessionIds,
    /// Every session task; drain waits on it.
    pub sessions: TaskTracker,
    /// Background tasks (webhook events, `on-disconnect` calls, upkeep).
    pub tasks: TaskTracker,
    /// Cancelled when the gateway must stop.
    pub shutdown: CancellationToken,
}

/// What a [`Hub`] is built from besides the config: the process-wide
/// services it shares with the listeners.
#[derive(Debug)]
pub struct HubParts {
    /// Metric families.
    pub metrics: Metrics,
    /// HTTP client for auth webhooks and lifecycle events.
    pub backend: BackendClient,
    /// Routed Ext Lane services (the plugin host, or none).
    pub ext: Arc<dyn ExtService>,
    /// This process in the cluster (`cluster.mode: redis`).
    pub cluster: Option<Arc<Node>>,
    /// Cancelled when the gateway must stop.
    pub shutdown: CancellationToken,
    /// Background tasks.
    pub tasks: TaskTracker,
}

impl Hub {
    /// A hub with no tenants yet, for `cfg`.
    pub fn new(cfg: Config, parts: HubParts) -> Self {
        let HubParts {
            metrics,
            backend,
            ext,
            cluster,
            shutdown,
            tasks,
        } = parts;
        Self {
            tenants: Arc::default(),
            pipeline: Arc::new(Pipeline {
                ext,
                metrics: metrics.clone(),
            }),
            metrics,
            backend,
            cluster,
            handshake: ArcSwap::from_pointee(HandshakeLimiter::new(&cfg.gateway.handshake_limit)),
            tls: ArcSwapOption::empty(),
            config: ArcSwap::from_pointee(cfg),
            draining: AtomicBool::new(false),
            ids: SessionIds::random(),
            sessions: TaskTracker::new(),
            tasks,
            shutdown,
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Looks up a configured tenant.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// Every configured tenant.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.tenants.all()
    }

    /// Routed Ext Lane services.
    pub fn ext(&self) -> &Arc<dyn ExtService> {
        &self.pipeline.ext
    }

    /// The handshake limiter in force.
    pub fn handshake_limiter(&self) -> Arc<HandshakeLimiter> {
        self.handshake.load_full()
    }

    /// A fresh session id.
    pub fn next_sid(&self) -> SessionId {
        self.ids.next()
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Calls `f` with every session of every tenant connected to this process.
    pub fn each_session(&self, mut f: impl FnMut(&Arc<SessionEntry>)) {
        for t in self.tenants.all() {
            t.broker.each_session(&mut f);
        }
    }

    /// Starts the drain: `/readyz` and new upgrades answer 503, every session gets
    /// Close 1001 after its queued reliable frames. Returns the sessions notified.
    pub fn start_drain(&self) -> usize {
        self.draining.store(true, Ordering::Release);
        self.tenants
            .all()
            .iter()
            .map(|t| t.broker.close_all(CloseCode::GoingAway, "server draining"))
            .sum()
    }
}
