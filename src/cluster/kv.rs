//! [`RedisKv`]: plugin `kv` in Redis, shared by every node (README
//! "Cluster").
//!
//! Keys are `<prefix>:kv:{<tenant>:<plugin>}:<key>`: one hash tag per scope,
//! so a Redis Cluster keeps a plugin's keys together. The semantics are those
//! of the in-process store: `set` replaces the TTL (none = no expiry), TTLs
//! are Redis TTLs, `incr` is `INCRBY` (atomic, keeps the TTL, absent = 0),
//! and the same key and value size caps apply. While this node's Redis link
//! is down every call fails at once with `Unavailable`, which the plugin sees
//! as a `host-error`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::Node;
use crate::plugin_host::kv::{KvError, KvFuture, KvScope, KvStore, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Longest a kv call waits on Redis.
const KV_TIMEOUT: Duration = Duration::from_secs(1);

/// Plugin kv in Redis.
#[derive(Clone)]
pub struct RedisKv {
    node: Arc<Node>,
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

impl RedisKv {
    /// A store on `node`'s command connection to Redis.
    pub fn new(node: Arc<Node>) -> Self {
        let conn = node.commands.clone();
        Self { node, conn }
    }

    fn key(&self, scope: &KvScope, key: &str) -> Result<String, KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        Ok(format!(
            "{}:kv:{{{}:{}}}:{key}",
            self.node.prefix, scope.tenant, scope.plugin
        ))
    }

    /// Runs `cmd`, failing fast while the node's Redis link is down.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, KvError> {
        if !self.node.is_up() {
            return Err(KvError::Unavailable("cluster down".into()));
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(KV_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            // INCRBY on a value that is not an integer, or past i64.
            Ok(Err(e))
                if e.detail()
                    .is_some_and(|d| d.contains("not an integer") || d.contains("overflow")) =>
            {
                Err(KvError::NotAnInteger)
            }
            Ok(Err(e)) => {
                self.node.metrics.error("kv", 1);
                Err(KvError::Unavailable(e.category().to_owned()))
            }
            Err(_) => {
                self.node.metrics.error("kv", 1);
                Err(KvError::Unavailable("timed out".into()))
            }
        }
    }
}

impl KvStore for RedisKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<Option<String>, KvError>> {
        Box::pin(async move {
            let k = self.key(scope, key)?;
            self.run(redis::Cmd::get(k)).await
        })
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            let k = self.key(scope, key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::TooLarge);
            }
            let mut cmd = redis::cmd("SET");
            cmd.arg(k).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            }
            self.run::<()>(cmd).await
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let k = self.key(scope, key)?;
            Ok(self.run::<u64>(redis::Cmd::del(k)).await? > 0)
        })
    }

    fn incr<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let k = self.key(scope, key)?;
            let mut cmd = redis::cmd("INCRBY");
            cmd.arg(k).arg(delta);
            self.run(cmd).await
        })
    }
}
