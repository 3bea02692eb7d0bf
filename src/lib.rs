//! wsPrism: a multi-tenant realtime WebSocket gateway.
//!
//! # Layout
//! One connection flows one way through these stages:
//!
//! `transport` (accept, upgrade, session reader/writer) → `protocol` (decode
//! envelopes and hot frames) → `policy` (allowlists, rate limits, caps) →
//! `lanes` (Hot Lane native services, Ext Lane routing) → `services` (built-in
//! `room`/`chat`, routed services through [`services::ExtService`]) →
//! `realtime` (broker fan-out into per-session outboxes) → `transport::writer`.
//!
//! Around it: `config` (strict schema, validation), `gateway` (shared state and
//! config apply), `auth` (static / JWT / webhook), `api` (server API), `ops`
//! (health, readiness, metrics), `reload` (file watch, SIGHUP), `obs` (metrics,
//! tracing), `error` (the wire codes and the one mapping to them).
//!
//! [`Server::bind`] binds both listeners and builds the state (its
//! [`StartupError`] says how the binary exits); [`Server::run`] serves until its
//! token is cancelled, then drains.

pub(crate) mod api;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod devtools;
pub mod error;
pub mod gateway;
pub mod lanes;
pub mod obs;
pub(crate) mod ops;
pub mod plugin_host;
pub mod policy;
pub mod protocol;
pub mod realtime;
pub mod reload;
pub mod services;
pub mod session;
pub mod tenant;
pub(crate) mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::BackendClient;
use crate::config::{ClusterMode, Config, ConfigError, ConfigIssue};
use crate::error::StartupError;
use crate::gateway::Gateway;
use crate::obs::metrics::Metrics;
use crate::plugin_host::PluginHost;
use crate::plugin_host::kv::{KvStore, MemoryKv};
use crate::services::{ExtService, NoPlugins};
use crate::session::HubParts;

/// Everything starting refuses a valid config for, short of binding: tenants'
/// keys and secrets, and the TLS certificate and key (`wsprism check`).
///
/// # Errors
/// The [`ConfigError`] starting would fail with.
pub fn check_loadable(cfg: &Config, base_dir: &std::path::Path) -> Result<(), ConfigError> {
    tenant::compile_all(cfg, base_dir, &BackendClient::new())?;
    transport::tls::load(&cfg.gateway.tls, base_dir)?;
    let dir = base_dir.join(&cfg.gateway.plugins.dir);
    let files: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| plugin_host::plugin_name(&e.path()))
                .collect()
        })
        .unwrap_or_default();
    warn_unloaded_routes(cfg, &files, "no such file in gateway.plugins.dir");
    Ok(())
}

/// Routes whose plugin is not in `loaded`, as (tenant, svc, plugin).
fn unloaded_routes<'a>(cfg: &'a Config, loaded: &[String]) -> Vec<(&'a str, &'a str, &'a str)> {
    cfg.tenants
        .iter()
        .flat_map(|t| t.routes.iter().map(move |r| (t.id.as_str(), r)))
        .filter(|(_, r)| !loaded.contains(&r.plugin))
        .map(|(t, r)| (t, r.svc.as_str(), r.plugin.as_str()))
        .collect()
}

/// Warns about every route to a plugin that is not in `loaded`: its messages
/// will be answered `SERVICE_UNAVAILABLE` until the plugin appears.
fn warn_unloaded_routes(cfg: &Config, loaded: &[String], why: &str) {
    for (tenant, svc, plugin) in unloaded_routes(cfg, loaded) {
        warn!(
            tenant,
            svc,
            plugin,
            "route to a plugin that is not loaded ({why}); its messages get SERVICE_UNAVAILABLE until `{plugin}.wasm` loads"
        );
    }
}

/// How a server is started.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The config file, for hot reload (file watch and [`Server::reload`]).
    pub config_path: Option<PathBuf>,
    /// Bind these instead of `gateway.listen` / `gateway.admin_listen` (tests bind
    /// `127.0.0.1:0`).
    pub bind: Option<(SocketAddr, SocketAddr)>,
    /// Routed Ext Lane services. `None` starts the WASM plugin host over
    /// `gateway.plugins.dir` when `plugins` is true, and otherwise answers every
    /// routed svc with `SERVICE_UNAVAILABLE`.
    pub ext: Option<Arc<dyn ExtService>>,
    /// Start the WASM plugin host (the binary always does; tests opt in).
    pub plugins: bool,
}

/// A bound, not yet serving gateway.
#[derive(Debug)]
pub struct Server {
    gw: Arc<Gateway>,
    public: TcpListener,
    admin: TcpListener,
    config_path: Option<PathBuf>,
}

impl Server {
    /// Builds the gateway state and binds both listeners.
    ///
    /// # Errors
    /// [`StartupError::Config`] when a tenant's keys or secrets cannot be loaded
    /// (or a listen address does not parse), [`StartupError::Plugins`] when the
    /// plugin host cannot start, [`StartupError::Bind`] when a listener cannot be
    /// bound. [`StartupError::exit_code`] says how the binary exits.
    pub async fn bind(cfg: Config, opts: ServerOptions) -> Result<Self, StartupError> {
        let (public_addr, admin_addr) = match opts.bind {
            Some(pair) => pair,
            None => (
                listen_addr("gateway.listen", &cfg.gateway.listen)?,
                listen_addr("gateway.admin_listen", &cfg.gateway.admin_listen)?,
            ),
        };
        let base_dir = opts
            .config_path
            .as_ref()
            .and_then(|p| p.parent())
            .map(std::path::Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let metrics = Metrics::new();
        let backend = BackendClient::new();
        let cluster = match cfg.gateway.cluster.mode {
            ClusterMode::Local => None,
            ClusterMode::Redis => Some(
                cluster::Node::start(&cfg.gateway.cluster, &metrics, stop.clone(), &tasks)
                    .map_err(|e| StartupError::Cluster(e.to_string()))?,
            ),
        };
        // Plugin kv lives in Redis in cluster mode, shared by every node.
        let kv: Arc<dyn KvStore> = match &cluster {
            Some(node) => Arc::new(cluster::RedisKv::new(Arc::clone(node))),
            None => Arc::new(MemoryKv::new()),
        };
        let ext: Arc<dyn ExtService> = match opts.ext {
            Some(ext) => ext,
            None if opts.plugins => {
                let mut plugins_cfg = cfg.gateway.plugins.clone();
                let dir = std::path::Path::new(&plugins_cfg.dir);
                if dir.is_relative() {
                    plugins_cfg.dir = base_dir.join(dir).to_string_lossy().into_owned();
                }
                let cache = std::path::Path::new(&plugins_cfg.cache_dir);
                if !plugins_cfg.cache_dir.is_empty() && cache.is_relative() {
                    plugins_cfg.cache_dir = base_dir.join(cache).to_string_lossy().into_owned();
                }
                let host = PluginHost::start_with_kv(
                    &plugins_cfg,
                    metrics.clone(),
                    &backend,
                    stop.clone(),
                    tasks.clone(),
                    kv,
                )
                .await
                .map_err(StartupError::Plugins)?;
                warn_unloaded_routes(&cfg, &host.plugins(), "missing or failed to load");
                host
            }
            None => Arc::new(NoPlugins),
        };
        let gw = Gateway::new(
            cfg,
            base_dir,
            HubParts {
                metrics,
                backend,
                ext,
                cluster,
                shutdown: stop,
                tasks,
            },
        )?;
        let public = listen("gateway.listen", public_addr).await?;
        let admin = listen("gateway.admin_listen", admin_addr).await?;
        Ok(Self {
            gw,
            public,
            admin,
            config_path: opts.config_path,
        })
    }

    /// The public listener's address.
    ///
    /// # Errors
    /// The OS cannot report the address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    /// The admin listener's address.
    ///
    /// # Errors
    /// The OS cannot report the address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// The shared state (for SIGHUP reloads and tests).
    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.gw)
    }

    /// Serves until `shutdown` is cancelled, then drains: `/readyz` and new
    /// upgrades answer 503, every session gets Close 1001 after its queued
    /// reliable frames, and the call returns once all sessions ended or
    /// `drain_grace_ms` passed.
    ///
    /// # Errors
    /// The OS cannot report a bound listener's address; nothing fails once
    /// serving.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self {
            gw,
            public,
            admin,
            config_path,
        } = self;
        let cfg = gw.config();
        if let Some(path) = &config_path
            && let Err(e) = reload::watch(Arc::clone(&gw), path.clone())
        {
            warn!(error = %e, "cannot watch the config file; SIGHUP still reloads");
        }
        let mut public_router = Router::new()
            .route("/v1/ws", get(transport::upgrade::handle))
            .route("/healthz", get(ops::healthz))
            .route("/readyz", get(ops::readyz));
        if cfg.gateway.diagnostics.echo {
            public_router = public_router.route("/v1/echo", get(transport::echo::handle));
        }
        let public_router = public_router.with_state(Arc::clone(gw.hub()));
        let admin_router = api::router()
            .route("/", get(ops::status_page))
            .route("/metrics", get(ops::metrics))
            .route("/healthz", get(ops::healthz))
            .with_state(Arc::clone(&gw));

        let listeners_stop = CancellationToken::new();
        let public_addr = public.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let public_task = tokio::spawn(transport::listener::serve(
            public,
            public_router,
            listeners_stop.clone(),
            Some(transport::listener::PublicAccept::new(Arc::clone(gw.hub()))),
        ));
        let admin_task = tokio::spawn(transport::listener::serve(
            admin,
            admin_router,
            listeners_stop.clone(),
            None,
        ));
        info!("wsPrism gateway active at {public_addr}");
        info!(admin = %admin_addr, "admin listener (metrics, server API) active");
        if let Some(warning) = admin_exposure(admin_addr) {
            warn!(admin = %admin_addr, "{warning}");
        }
        for t in &cfg.tenants {
            info!("loaded tenant {:?}", t.id);
        }
        spawn_upkeep(&gw);
        transport::heartbeat::spawn(gw.hub());

        shutdown.cancelled().await;
        let grace = Duration::from_millis(gw.config().gateway.drain_grace_ms);
        let notified = gw.start_drain();
        info!(
            sessions = notified,
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        gw.sessions.close();
        if tokio::time::timeout(grace, gw.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                sessions_left = gw.sessions.len(),
                "drain grace period over; aborting remaining sessions"
            );
            gw.each_session(|s| s.abort());
        }
        listeners_stop.cancel();
        gw.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = public_task.await;
            let _ = admin_task.await;
        })
        .await;
        gw.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), gw.tasks.wait()).await;
        info!("gateway stopped");
        Ok(())
    }
}

/// The warning for an admin listener reachable from other machines: it serves
/// the server API (guarded by API keys only), `/metrics` and the status page.
fn admin_exposure(addr: SocketAddr) -> Option<&'static str> {
    (!addr.ip().to_canonical().is_loopback()).then_some(
        "gateway.admin_listen is not a loopback address: the server API, /metrics and the status page are reachable from the network; bind it to 127.0.0.1 or firewall it",
    )
}

/// Parses a listen address from the config (validation already checked it; this
/// keeps a bad one a config error rather than a panic).
fn listen_addr(field: &'static str, value: &str) -> Result<SocketAddr, StartupError> {
    value.parse().map_err(|e| {
        StartupError::Config(ConfigError {
            issues: vec![ConfigIssue {
                path: field.to_owned(),
                message: format!("`{value}` is not an address ({e}); write it as `host:port`"),
            }],
        })
    })
}

/// Binds one listener; the error names the config field to change.
async fn listen(field: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind {
            field,
            addr,
            source,
        })
}

/// Periodic housekeeping: prunes idle entries of keyed rate limiters.
fn spawn_upkeep(gw: &Arc<Gateway>) {
    let gw2 = Arc::clone(gw);
    let stop = gw.shutdown.clone();
    gw.tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    gw2.handshake_limiter().prune();
                    for t in gw2.tenants() {
                        if let Some(rt) = t.runtime() {
                            rt.policy.prune();
                            if let Some(history) = rt.policy.publish.history {
                                t.broker.prune_history(history);
                            }
                        }
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_missing_plugins_are_found() {
        let cfg = config::parse(
            "version: 1\ntenants:\n  - id: a\n    auth: { tickets: { t: u } }\n    routes: [ { svc: echo, plugin: echo }, { svc: dice, plugin: dice } ]\n  - id: b\n    auth: { tickets: { t: u } }\n    routes: [ { svc: vote, plugin: vote } ]\n",
        )
        .expect("config");
        let loaded = vec!["echo".to_owned(), "vote".to_owned()];
        assert_eq!(unloaded_routes(&cfg, &loaded), [("a", "dice", "dice")]);
        assert_eq!(unloaded_routes(&cfg, &[]).len(), 3);
    }

    #[test]
    fn admin_listener_off_loopback_is_warned_about() {
        let at = |s: &str| admin_exposure(s.parse().expect("addr"));
        assert!(at("127.0.0.1:9090").is_none());
        assert!(at("[::1]:9090").is_none());
        assert!(at("[::ffff:127.0.0.1]:9090").is_none());
        assert!(at("0.0.0.0:9090").is_some());
        assert!(at("10.1.2.3:9090").is_some());
        assert!(at("[::]:9090").is_some());
    }
}
