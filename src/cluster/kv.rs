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
//!
//! A scope is bounded like the in-process one ([`MAX_KEYS_PER_SCOPE`] keys,
//! [`MAX_BYTES_PER_SCOPE`] bytes), atomically across nodes: writes run as Lua
//! scripts that keep, under the scope's hash tag, each key's cost
//! (`…:kvsize:{t:p}`), its expiry (`…:kvexp:{t:p}`, a sorted set) and the
//! scope's total (`…:kvbytes:{t:p}`); every write first drops the accounting
//! of keys whose TTL has passed.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::Node;
use crate::plugin_host::kv::{
    ENTRY_OVERHEAD_BYTES, KvError, KvFuture, KvScope, KvStore, MAX_BYTES_PER_SCOPE, MAX_KEY_BYTES,
    MAX_KEYS_PER_SCOPE, MAX_VALUE_BYTES,
};

/// Longest a kv call waits on Redis.
const KV_TIMEOUT: Duration = Duration::from_secs(1);

/// Expired keys whose accounting one write drops at most (the rest go with
/// the next writes).
const SWEEP_BATCH: u32 = 100;

/// Shared by the write scripts: drops the accounting of expired keys.
/// KEYS: size hash, expiry zset, total. ARGV[1]: now (ms).
const SWEEP: &str = r"
local function sweep(sizes, exps, total, now, batch)
  local dead = redis.call('ZRANGEBYSCORE', exps, '-inf', now, 'LIMIT', 0, batch)
  for _, k in ipairs(dead) do
    local s = tonumber(redis.call('HGET', sizes, k) or '0')
    redis.call('HDEL', sizes, k)
    redis.call('ZREM', exps, k)
    redis.call('DECRBY', total, s)
  end
end
";

/// `set`. KEYS: data, sizes, exps, total. ARGV: member, value, ttl ms (0 =
/// none), now ms, max bytes, max keys, overhead, sweep batch. Returns 1, or
/// -1 when the scope is full.
const SET: &str = r"
sweep(KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[8])
local member, value, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[2], member) or '0')
local new = #member + #value + tonumber(ARGV[7])
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if old == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[6]) then return -1 end
if total - old + new > tonumber(ARGV[5]) then return -1 end
if ttl > 0 then
  redis.call('SET', KEYS[1], value, 'PX', ttl)
  redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + ttl, member)
else
  redis.call('SET', KEYS[1], value)
  redis.call('ZADD', KEYS[3], '+inf', member)
end
redis.call('HSET', KEYS[2], member, new)
redis.call('INCRBY', KEYS[4], new - old)
return 1
";

/// `incr`. KEYS and ARGV as [`SET`] without value and ttl: member, now ms,
/// max bytes, max keys, overhead, batch, delta. Returns the new value, or
/// an error reply `FULL` when the scope is full.
const INCR: &str = r"
sweep(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[6])
local member = ARGV[1]
local old = tonumber(redis.call('HGET', KEYS[2], member) or '0')
if old > 0 and redis.call('EXISTS', KEYS[1]) == 0 then
  -- Expired, not swept yet: it starts again from 0, as a new key.
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('DECRBY', KEYS[4], old)
  old = 0
end
if old == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return redis.error_reply('FULL')
end
local n = redis.call('INCRBY', KEYS[1], ARGV[7])
local new = #member + #tostring(n) + tonumber(ARGV[5])
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
if total - old + new > tonumber(ARGV[3]) then
  redis.call('DECRBY', KEYS[1], ARGV[7])
  if old == 0 then redis.call('DEL', KEYS[1]) end
  return redis.error_reply('FULL')
end
if old == 0 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + pttl, member)
  else
    redis.call('ZADD', KEYS[3], '+inf', member)
  end
end
redis.call('HSET', KEYS[2], member, new)
redis.call('INCRBY', KEYS[4], new - old)
return n
";

/// `delete`. KEYS as [`SET`]; ARGV: member. Returns the number deleted.
const DELETE: &str = r"
local member = ARGV[1]
local old = tonumber(redis.call('HGET', KEYS[2], member) or '0')
if old > 0 then
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('DECRBY', KEYS[4], old)
end
return redis.call('DEL', KEYS[1])
";

/// Plugin kv in Redis.
#[derive(Clone)]
pub struct RedisKv {
    node: Arc<Node>,
    set: Arc<redis::Script>,
    incr: Arc<redis::Script>,
    delete: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("node", &self.node.id)
            .finish_non_exhaustive()
    }
}

/// The Redis keys of one kv key: data, and its scope's sizes, expiries and
/// total.
struct Keys {
    data: String,
    sizes: String,
    exps: String,
    total: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RedisKv {
    /// A store on `node`'s command connection to Redis.
    pub fn new(node: Arc<Node>) -> Self {
        let script = |body: &str| Arc::new(redis::Script::new(&format!("{SWEEP}{body}")));
        Self {
            node,
            set: script(SET),
            incr: script(INCR),
            delete: Arc::new(redis::Script::new(DELETE)),
        }
    }

    fn keys(&self, scope: &KvScope, key: &str) -> Result<Keys, KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        let tag = format!("{{{}:{}}}", scope.tenant, scope.plugin);
        let p = &self.node.prefix;
        Ok(Keys {
            data: format!("{p}:kv:{tag}:{key}"),
            sizes: format!("{p}:kvsize:{tag}"),
            exps: format!("{p}:kvexp:{tag}"),
            total: format!("{p}:kvbytes:{tag}"),
        })
    }

    /// The node's command connection; fails fast while its Redis link is
    /// down.
    fn conn(&self) -> Result<ConnectionManager, KvError> {
        match self.node.endpoint.commands() {
            Ok(conn) if self.node.is_up() => Ok(conn),
            _ => Err(KvError::Unavailable("cluster down".into())),
        }
    }

    /// Maps a Redis failure (or timeout) to what the plugin sees.
    fn failed<T>(
        &self,
        r: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, KvError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e))
                if e.detail().is_some_and(|d| d.contains("FULL")) || e.code() == Some("FULL") =>
            {
                Err(KvError::Full)
            }
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

    /// Runs `cmd` with the kv timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, KvError> {
        let mut conn = self.conn()?;
        let r = tokio::time::timeout(KV_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        self.failed(r)
    }

    /// An invocation of `script` over `keys`; the caller adds the arguments.
    fn invocation<'s>(script: &'s redis::Script, keys: &Keys) -> redis::ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        inv.key(&keys.data)
            .key(&keys.sizes)
            .key(&keys.exps)
            .key(&keys.total);
        inv
    }

    /// Runs a script invocation with the kv timeout.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, KvError> {
        let mut conn = self.conn()?;
        let r = tokio::time::timeout(KV_TIMEOUT, inv.invoke_async::<T>(&mut conn)).await;
        self.failed(r)
    }
}

impl KvStore for RedisKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<Option<String>, KvError>> {
        Box::pin(async move {
            let k = self.keys(scope, key)?;
            self.run(redis::Cmd::get(k.data)).await
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
            let k = self.keys(scope, key)?;
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::TooLarge);
            }
            let ttl_ms = ttl.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            });
            let mut inv = Self::invocation(&self.set, &k);
            inv.arg(key)
                .arg(value)
                .arg(ttl_ms)
                .arg(now_ms())
                .arg(MAX_BYTES_PER_SCOPE)
                .arg(MAX_KEYS_PER_SCOPE)
                .arg(ENTRY_OVERHEAD_BYTES)
                .arg(SWEEP_BATCH);
            let done: i64 = self.invoke(inv).await?;
            if done < 0 { Err(KvError::Full) } else { Ok(()) }
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let k = self.keys(scope, key)?;
            let mut inv = Self::invocation(&self.delete, &k);
            inv.arg(key);
            Ok(self.invoke::<u64>(inv).await? > 0)
        })
    }

    fn incr<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let k = self.keys(scope, key)?;
            let mut inv = Self::invocation(&self.incr, &k);
            inv.arg(key)
                .arg(now_ms())
                .arg(MAX_BYTES_PER_SCOPE)
                .arg(MAX_KEYS_PER_SCOPE)
                .arg(ENTRY_OVERHEAD_BYTES)
                .arg(SWEEP_BATCH)
                .arg(delta);
            self.invoke(inv).await
        })
    }
}
