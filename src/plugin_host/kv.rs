//! The plugin key-value store, scoped to (tenant, plugin).
//!
//! Owns: the [`KvStore`] seam the `kv` host import calls, and [`MemoryKv`], the
//! in-process implementation used in `cluster.mode: local`. A Redis store
//! implements the same trait (its methods are async for that reason). Keys of
//! one scope are invisible to every other scope; sizes and key counts are capped
//! so a plugin cannot grow the gateway's memory without bound.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest value accepted.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Keys one (tenant, plugin) scope may hold in [`MemoryKv`].
pub const MAX_KEYS_PER_SCOPE: usize = 100_000;

/// A boxed future borrowed from the store.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whose keys: one tenant's view of one plugin's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvScope {
    /// Tenant id.
    pub tenant: Arc<str>,
    /// Plugin name (file stem).
    pub plugin: Arc<str>,
}

/// Why a kv operation failed. Each maps to a `host-error` for the guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Key or value over its cap.
    #[error("key or value too large")]
    TooLarge,
    /// The scope holds [`MAX_KEYS_PER_SCOPE`] keys.
    #[error("kv scope is full ({MAX_KEYS_PER_SCOPE} keys)")]
    Full,
    /// `incr` on a value that is not a decimal integer, or overflow.
    #[error("value is not an integer or the result overflows")]
    NotAnInteger,
    /// The backing store failed (Redis down).
    #[error("kv store unavailable: {0}")]
    Unavailable(String),
}

/// A key-value store for plugins.
pub trait KvStore: Send + Sync + std::fmt::Debug + 'static {
    /// The value of `key`, `None` when absent or expired.
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<Option<String>, KvError>>;

    /// Sets `key`, replacing any TTL with `ttl` (`None` = no expiry).
    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>>;

    /// Removes `key`; whether it existed.
    fn delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<bool, KvError>>;

    /// Atomically adds `delta` to the integer at `key` (absent = 0), keeping its
    /// TTL; returns the new value.
    fn incr<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, Result<i64, KvError>>;
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The in-process store: one map per scope behind its own lock, so operations of
/// different plugins and tenants never contend and `incr` is trivially atomic.
/// Expired keys are removed when touched and swept when a scope reaches its cap.
#[derive(Debug, Default)]
pub struct MemoryKv {
    scopes: DashMap<KvScope, Arc<Mutex<HashMap<String, Entry>>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn scope(&self, scope: &KvScope) -> Arc<Mutex<HashMap<String, Entry>>> {
        if let Some(s) = self.scopes.get(scope) {
            return Arc::clone(s.value());
        }
        Arc::clone(self.scopes.entry(scope.clone()).or_default().value())
    }

    fn check_key(key: &str) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        Ok(())
    }

    /// Inserts or replaces, enforcing the key cap.
    fn put(
        map: &mut HashMap<String, Entry>,
        key: &str,
        entry: Entry,
        now: Instant,
    ) -> Result<(), KvError> {
        if !map.contains_key(key) && map.len() >= MAX_KEYS_PER_SCOPE {
            map.retain(|_, e| e.live(now));
            if map.len() >= MAX_KEYS_PER_SCOPE {
                return Err(KvError::Full);
            }
        }
        map.insert(key.to_owned(), entry);
        Ok(())
    }

    fn get_sync(&self, scope: &KvScope, key: &str) -> Result<Option<String>, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut map = scope.lock();
        match map.get(key) {
            Some(e) if e.live(now) => Ok(Some(e.value.clone())),
            Some(_) => {
                map.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn set_sync(
        &self,
        scope: &KvScope,
        key: &str,
        value: String,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        Self::check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut map = scope.lock();
        let expires = ttl.map(|t| now + t);
        Self::put(&mut map, key, Entry { value, expires }, now)
    }

    fn delete_sync(&self, scope: &KvScope, key: &str) -> Result<bool, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut map = scope.lock();
        Ok(map.remove(key).is_some_and(|e| e.live(now)))
    }

    fn incr_sync(&self, scope: &KvScope, key: &str, delta: i64) -> Result<i64, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut map = scope.lock();
        let (current, expires) = match map.get(key) {
            Some(e) if e.live(now) => (
                e.value
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| KvError::NotAnInteger)?,
                e.expires,
            ),
            _ => (0, None),
        };
        let next = current.checked_add(delta).ok_or(KvError::NotAnInteger)?;
        Self::put(
            &mut map,
            key,
            Entry {
                value: next.to_string(),
                expires,
            },
            now,
        )?;
        Ok(next)
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<Option<String>, KvError>> {
        let r = self.get_sync(scope, key);
        Box::pin(std::future::ready(r))
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>> {
        let r = self.set_sync(scope, key, value, ttl);
        Box::pin(std::future::ready(r))
    }

    fn delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<bool, KvError>> {
        let r = self.delete_sync(scope, key);
        Box::pin(std::future::ready(r))
    }

    fn incr<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        let r = self.incr_sync(scope, key, delta);
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(t: &str, p: &str) -> KvScope {
        KvScope {
            tenant: t.into(),
            plugin: p.into(),
        }
    }

    #[tokio::test]
    async fn scopes_are_isolated_and_incr_is_counted() {
        let kv = MemoryKv::new();
        let a = scope("a", "vote");
        let b = scope("b", "vote");
        assert_eq!(kv.incr(&a, "n", 2).await, Ok(2));
        assert_eq!(kv.incr(&a, "n", 3).await, Ok(5));
        assert_eq!(kv.get(&a, "n").await, Ok(Some("5".into())));
        assert_eq!(kv.get(&b, "n").await, Ok(None));
        kv.set(&a, "s", "x".into(), None).await.expect("set");
        assert_eq!(kv.incr(&a, "s", 1).await, Err(KvError::NotAnInteger));
        assert_eq!(kv.delete(&a, "s").await, Ok(true));
        assert_eq!(kv.delete(&a, "s").await, Ok(false));
        assert_eq!(
            kv.set(&a, "big", "x".repeat(MAX_VALUE_BYTES + 1), None)
                .await,
            Err(KvError::TooLarge)
        );
    }

    #[tokio::test]
    async fn ttl_expires_and_incr_keeps_it() {
        let kv = MemoryKv::new();
        let a = scope("a", "p");
        kv.set(&a, "k", "1".into(), Some(Duration::from_millis(20)))
            .await
            .expect("set");
        assert_eq!(kv.incr(&a, "k", 1).await, Ok(2));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(kv.get(&a, "k").await, Ok(None));
        assert_eq!(kv.incr(&a, "k", 1).await, Ok(1));
    }
}
