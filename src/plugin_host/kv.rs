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
/// Bytes one (tenant, plugin) scope may hold in [`MemoryKv`] (keys, values and
/// [`ENTRY_OVERHEAD_BYTES`] per entry): without it the key cap alone would let
/// one plugin pin 100,000 × 64 KiB ≈ 6.5 GB.
pub const MAX_BYTES_PER_SCOPE: usize = 64 * 1024 * 1024;
/// What an entry costs beyond its key and value (map slot, expiry).
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

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
    /// The scope holds [`MAX_KEYS_PER_SCOPE`] keys or [`MAX_BYTES_PER_SCOPE`]
    /// bytes.
    #[error("kv scope is full ({MAX_KEYS_PER_SCOPE} keys or {MAX_BYTES_PER_SCOPE} bytes)")]
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

/// What `key` holding `value` counts against [`MAX_BYTES_PER_SCOPE`].
fn cost(key: &str, value: &str) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD_BYTES
}

/// One scope's keys and the bytes they hold.
#[derive(Debug, Default)]
struct Scope {
    map: HashMap<String, Entry>,
    bytes: usize,
}

impl Scope {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.map.remove(key)?;
        self.bytes -= cost(key, &e.value);
        Some(e)
    }

    /// Whether `key` may take `new` bytes (replacing what it holds).
    fn fits(&self, key: &str, new: usize) -> bool {
        let old = self.map.get(key).map(|e| cost(key, &e.value));
        (old.is_some() || self.map.len() < MAX_KEYS_PER_SCOPE)
            && self.bytes - old.unwrap_or(0) + new <= MAX_BYTES_PER_SCOPE
    }

    fn sweep(&mut self, now: Instant) {
        let mut freed = 0;
        self.map.retain(|k, e| {
            let keep = e.live(now);
            if !keep {
                freed += cost(k, &e.value);
            }
            keep
        });
        self.bytes -= freed;
    }

    /// Inserts or replaces, enforcing the key and byte caps (expired keys are
    /// swept first when a cap is reached).
    fn put(&mut self, key: &str, entry: Entry, now: Instant) -> Result<(), KvError> {
        let new = cost(key, &entry.value);
        if !self.fits(key, new) {
            self.sweep(now);
            if !self.fits(key, new) {
                return Err(KvError::Full);
            }
        }
        self.remove(key);
        self.bytes += new;
        self.map.insert(key.to_owned(), entry);
        Ok(())
    }
}

/// The in-process store: one map per scope behind its own lock, so operations of
/// different plugins and tenants never contend and `incr` is trivially atomic.
/// Expired keys are removed when touched and swept when a scope reaches its cap.
#[derive(Debug, Default)]
pub struct MemoryKv {
    scopes: DashMap<KvScope, Arc<Mutex<Scope>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn scope(&self, scope: &KvScope) -> Arc<Mutex<Scope>> {
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

    fn get_sync(&self, scope: &KvScope, key: &str) -> Result<Option<String>, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut scope = scope.lock();
        match scope.map.get(key) {
            Some(e) if e.live(now) => Ok(Some(e.value.clone())),
            Some(_) => {
                scope.remove(key);
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
        let expires = ttl.map(|t| now + t);
        scope.lock().put(key, Entry { value, expires }, now)
    }

    fn delete_sync(&self, scope: &KvScope, key: &str) -> Result<bool, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let removed = scope.lock().remove(key);
        Ok(removed.is_some_and(|e| e.live(now)))
    }

    fn incr_sync(&self, scope: &KvScope, key: &str, delta: i64) -> Result<i64, KvError> {
        Self::check_key(key)?;
        let now = Instant::now();
        let scope = self.scope(scope);
        let mut scope = scope.lock();
        let (current, expires) = match scope.map.get(key) {
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
        scope.put(
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

    /// Issue 11 item 7: a scope is bounded in bytes, not only in keys; other
    /// scopes are unaffected; deleting, replacing and expiry give bytes back.
    #[tokio::test(start_paused = true)]
    async fn scopes_are_bounded_in_bytes() {
        let kv = MemoryKv::new();
        let a = scope("a", "p");
        let big = "x".repeat(MAX_VALUE_BYTES);
        let per = MAX_VALUE_BYTES + ENTRY_OVERHEAD_BYTES + 8;
        let fit = MAX_BYTES_PER_SCOPE / per;
        for i in 0..fit {
            kv.set(&a, &format!("k{i:07}"), big.clone(), None)
                .await
                .unwrap_or_else(|e| panic!("key {i}: {e}"));
        }
        assert_eq!(
            kv.set(&a, "one-more", big.clone(), None).await,
            Err(KvError::Full)
        );
        // Replacing a key with a value of its size fits; another scope is free.
        assert!(kv.set(&a, "k0000000", big.clone(), None).await.is_ok());
        assert!(
            kv.set(&scope("b", "p"), "k", big.clone(), None)
                .await
                .is_ok()
        );
        // Deleting frees room.
        assert_eq!(kv.delete(&a, "k0000001").await, Ok(true));
        assert!(kv.set(&a, "one-more", big.clone(), None).await.is_ok());
        // Expired keys are swept when the cap is reached.
        kv.set(&a, "k0000002", big.clone(), Some(Duration::from_secs(1)))
            .await
            .expect("replace with ttl");
        assert_eq!(
            kv.set(&a, "two-more", big.clone(), None).await,
            Err(KvError::Full)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(kv.set(&a, "two-more", big, None).await.is_ok());
    }
}
