//! Which Redis server the node talks to (README "Cluster"): the one
//! `cluster.redis_url` names, or, with `cluster.sentinel`, the master the
//! Sentinels name now.
//!
//! Owns: the current server's client and shared command connection, and a
//! generation number that changes when the master moves. Input: failures the
//! links report; output: a new target that the links (which reconnect on
//! their own) pick up at their next call or reconnect. Must not: block a
//! caller while the Sentinels are asked (the links call [`Endpoint::resolve`]
//! from their own tasks), or hand out a server the Sentinels no longer call
//! master.
//!
//! A standalone server never changes: its target is fixed at start and
//! `resolve` does nothing. Behind Sentinel there is no target until the first
//! answer; after a failover the old master is gone or has become a replica
//! (its writes fail with `READONLY`), so every failure of the heartbeat or the
//! bus link asks the Sentinels again.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionInfo, IntoConnectionInfo, RedisError, RedisResult};
use tokio::sync::{Mutex, watch};

use super::ClusterError;
use super::link;
use crate::config::ClusterConfig;

/// Longest wait for the Sentinels' answer (they also connect to the master
/// they name to check its role).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The server the node's links use now.
pub(super) struct Target {
    /// For the link that owns a connection (the bus link, over RESP3).
    pub(super) client: redis::Client,
    /// Shared by heartbeats, scripts, snapshots and kv.
    pub(super) commands: ConnectionManager,
    /// `host:port`, for logs.
    pub(super) addr: String,
}

/// See the module docs.
pub(super) struct Endpoint {
    /// `None` for a standalone server.
    sentinel: Option<Mutex<SentinelClient>>,
    current: ArcSwapOption<Target>,
    /// Bumped whenever `current` changes (links reconnect on a change).
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("sentinel", &self.sentinel.is_some())
            .field(
                "addr",
                &self.current.load().as_ref().map(|t| t.addr.clone()),
            )
            .field("generation", &*self.generation.borrow())
            .finish()
    }
}

fn url_error(what: &str, e: &RedisError) -> ClusterError {
    ClusterError::Url(format!("{what}: {e}"))
}

/// `info` with TCP_NODELAY (publications are small and latency matters).
fn nodelay(info: ConnectionInfo) -> ConnectionInfo {
    info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
}

impl Endpoint {
    /// The endpoint `cfg` describes. Nothing connects yet.
    ///
    /// # Errors
    /// A URL redis-rs cannot use (config validation catches these first).
    pub(super) fn new(cfg: &ClusterConfig) -> Result<Self, ClusterError> {
        let info = nodelay(
            cfg.redis_url
                .as_str()
                .into_connection_info()
                .map_err(|e| url_error("redis_url", &e))?,
        );
        let (generation, _) = watch::channel(0);
        let Some(s) = &cfg.sentinel else {
            let target = Self::fixed(info)?;
            return Ok(Self {
                sentinel: None,
                current: ArcSwapOption::from_pointee(target),
                generation,
            });
        };
        // The master gets redis_url's credentials, database and TLS; its
        // address comes from the Sentinels.
        let mut master = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(info.redis_settings().clone())
            .set_tcp_settings(info.tcp_settings().clone());
        if cfg.redis_url.starts_with("rediss://") {
            master = master.set_tls_mode(redis::TlsMode::Secure);
        }
        let sentinels = s
            .urls
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()
            .map_err(|e| url_error("sentinel.urls", &e))?;
        let client = SentinelClient::build(
            sentinels,
            s.master_name.as_str(),
            Some(master),
            SentinelServerType::Master,
        )
        .map_err(|e| url_error("sentinel", &e))?;
        Ok(Self {
            sentinel: Some(Mutex::new(client)),
            current: ArcSwapOption::empty(),
            generation,
        })
    }

    /// The standalone server's target.
    fn fixed(info: ConnectionInfo) -> Result<Target, ClusterError> {
        let addr = info.addr().to_string();
        let client = redis::Client::open(info).map_err(|e| url_error("redis_url", &e))?;
        let commands = link::commands(&client).map_err(|e| url_error("redis_url", &e))?;
        Ok(Target {
            client,
            commands,
            addr,
        })
    }

    /// Whether the server comes from Sentinels.
    pub(super) fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// The server to use now.
    ///
    /// # Errors
    /// No master is known yet (Sentinels not reached so far).
    pub(super) fn target(&self) -> RedisResult<Arc<Target>> {
        self.current
            .load_full()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no Redis master known yet")))
    }

    /// The shared command connection to the current server.
    ///
    /// # Errors
    /// As [`Endpoint::target`].
    pub(super) fn commands(&self) -> RedisResult<ConnectionManager> {
        self.target().map(|t| t.commands.clone())
    }

    /// Changes whenever the target does.
    pub(super) fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Asks the Sentinels which server is the master and moves to it when
    /// it is not the current one; returns its address when it moved. A
    /// standalone endpoint never moves.
    ///
    /// # Errors
    /// No Sentinel answered, or none names a reachable master (a failover
    /// in progress): the current target stays.
    pub(super) async fn resolve(&self) -> RedisResult<Option<String>> {
        let Some(sentinel) = &self.sentinel else {
            return Ok(None);
        };
        // One question at a time: a second caller waits and then finds the
        // answer the first one got already in place.
        let mut sentinel = sentinel.lock().await;
        let client = tokio::time::timeout(RESOLVE_TIMEOUT, sentinel.async_get_client())
            .await
            .unwrap_or_else(|_| Err(link::timed_out()))?;
        let addr = client.get_connection_info().addr().to_string();
        if self.current.load().as_ref().is_some_and(|t| t.addr == addr) {
            return Ok(None);
        }
        let commands = link::commands(&client)?;
        self.current.store(Some(Arc::new(Target {
            client,
            commands,
            addr: addr.clone(),
        })));
        self.generation.send_modify(|g| *g += 1);
        Ok(Some(addr))
    }
}
