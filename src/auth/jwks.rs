//! Public key sets for `auth.mode: jwt` with RS256/ES256: parsing a JWKS document
//! (from `jwks_file` at load, or `jwks_url` at run time) into the keys usable for
//! the pinned algorithm, and the lazily fetched, rate-limited cache for `jwks_url`.
//!
//! Must not: fetch anything but the configured `jwks_url` (a token's `jku`/`x5u`
//! headers are ignored, redirects are refused), log fetched bodies, or let a
//! failed refresh throw away keys that were working.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::AuthError;
use crate::backend::{error_label, read_body_limited};

/// Bound on one JWKS fetch, connect to last byte; the same budget as a default
/// backend upstream (`DEFAULT_UPSTREAM_TIMEOUT_MS`), since a handshake waits on it.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// A token with an unknown `kid` triggers at most one refetch per this interval, so
/// tokens with made-up kids cannot turn the gateway into a load generator against
/// the identity provider.
pub(super) const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// While no key set was ever fetched, a failed fetch is retried at most this often;
/// meanwhile handshakes are refused at once instead of each waiting on a dead URL.
const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A cached set older than this is refetched (rate limited like a `kid` miss) so
/// keys the provider revoked stop verifying without a gateway reload. A failed
/// refetch keeps the old set.
const JWKS_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Largest JWKS document read from the URL; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most keys kept from one document. Tokens without a `kid` are tried against every
/// key, so this bounds the signature checks one token can cost.
const MAX_JWKS_KEYS: usize = 32;

/// One verification key and the `kid` it was published under.
struct NamedKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys a token may be verified with, all of the pinned algorithm's family.
pub(super) struct KeySet {
    keys: Vec<NamedKey>,
}

/// Why a JWKS document yielded no key set. `Display` carries no document content.
#[derive(Debug, thiserror::Error)]
pub(super) enum JwksError {
    #[error(
        "not a JWKS document (JSON error at line {line}, column {column}); expected {{\"keys\": [...]}}"
    )]
    NotJwks { line: usize, column: usize },
    #[error("no usable {alg:?} key among its {total} keys (kty/crv/alg/use must fit {alg:?})")]
    NoUsableKey { alg: Algorithm, total: usize },
    #[error("{0} usable keys; at most {MAX_JWKS_KEYS} are supported")]
    TooManyKeys(usize),
}

impl JwksError {
    fn label(&self) -> &'static str {
        match self {
            Self::NotJwks { .. } => "not_jwks",
            Self::NoUsableKey { .. } => "no_usable_key",
            Self::TooManyKeys(_) => "too_many_keys",
        }
    }
}

#[derive(serde::Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// A set of one key without a `kid` (PEM file or HMAC secret).
    pub(super) fn single(key: DecodingKey) -> Self {
        Self {
            keys: vec![NamedKey { kid: None, key }],
        }
    }

    /// Parses a JWKS document, keeping the keys usable with `alg` and skipping the
    /// rest (other key types, encryption keys, malformed entries).
    pub(super) fn parse_jwks(bytes: &[u8], alg: Algorithm) -> Result<Self, JwksError> {
        let raw: RawJwks = serde_json::from_slice(bytes).map_err(|e| JwksError::NotJwks {
            line: e.line(),
            column: e.column(),
        })?;
        let total = raw.keys.len();
        let keys: Vec<NamedKey> = raw
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
            .filter(|jwk| usable(jwk, alg))
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(&jwk).ok()?;
                Some(NamedKey {
                    kid: jwk.common.key_id,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { alg, total });
        }
        if keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys(keys.len()));
        }
        Ok(Self { keys })
    }

    /// Whether some key was published under exactly this `kid`.
    pub(super) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys to try for a token. With a `kid`: the keys published under it,
    /// else the keys published without any `kid`. Without a `kid`: every key.
    pub(super) fn candidates(&self, kid: Option<&str>) -> Vec<&DecodingKey> {
        let Some(kid) = kid else {
            return self.keys.iter().map(|k| &k.key).collect();
        };
        let exact: Vec<&DecodingKey> = self
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .map(|k| &k.key)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.keys
            .iter()
            .filter(|k| k.kid.is_none())
            .map(|k| &k.key)
            .collect()
    }
}

/// Whether a JWK can verify tokens of the pinned `alg`.
fn usable(jwk: &Jwk, alg: Algorithm) -> bool {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return false;
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return false;
    }
    let (wanted, fits) = match (alg, &jwk.algorithm) {
        (Algorithm::RS256, AlgorithmParameters::RSA(_)) => (KeyAlgorithm::RS256, true),
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(p)) => {
            (KeyAlgorithm::ES256, p.curve == EllipticCurve::P256)
        }
        _ => return false,
    };
    fits && common.key_algorithm.is_none_or(|a| a == wanted)
}

/// A `jwks_url` key set: fetched on first use, cached, refetched when a token names
/// an unknown `kid` or the set is older than [`JWKS_MAX_AGE`], never more often
/// than [`JWKS_REFRESH_INTERVAL`].
pub(super) struct RemoteJwks {
    /// For logs.
    tenant: Arc<str>,
    /// The configured URL; the only one ever requested.
    url: reqwest::Url,
    http: reqwest::Client,
    /// The pinned algorithm; keys of other kinds are dropped at parse.
    alg: Algorithm,
    /// Last good set and when it was fetched; tokens with a known `kid` never wait
    /// on a fetch.
    current: ArcSwapOption<Fetched>,
    /// Serialises fetches so a burst of handshakes makes one request, not many.
    fetch: tokio::sync::Mutex<FetchState>,
}

struct Fetched {
    keys: Arc<KeySet>,
    at: Instant,
}

#[derive(Default)]
struct FetchState {
    /// Start of the last completed fetch attempt, successful or not.
    last_attempt: Option<Instant>,
    /// Its failure reason, returned to callers skipped by the rate limit.
    last_error: Option<&'static str>,
}

impl RemoteJwks {
    pub(super) fn new(
        tenant: Arc<str>,
        url: reqwest::Url,
        http: reqwest::Client,
        alg: Algorithm,
    ) -> Self {
        Self {
            tenant,
            url,
            http,
            alg,
            current: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
        }
    }

    /// The key set to verify a token carrying `kid` with, fetching or refreshing
    /// it first when needed and allowed.
    ///
    /// # Errors
    /// [`AuthError::Unavailable`] while no set was ever fetched successfully.
    pub(super) async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, AuthError> {
        if let Some(cached) = self.current.load_full() {
            let kid_missing = kid.is_some_and(|k| !cached.keys.has_kid(k));
            if !kid_missing && cached.at.elapsed() < JWKS_MAX_AGE {
                return Ok(cached.keys.clone());
            }
            // Rotation or age: refetch if the rate limit allows. On failure the
            // cached set keeps serving (the failure is already logged).
            let _refreshed = self.refresh(JWKS_REFRESH_INTERVAL).await;
            let keys = self
                .current
                .load_full()
                .map_or_else(|| cached.keys.clone(), |now| now.keys.clone());
            return Ok(keys);
        }
        match self.refresh(JWKS_RETRY_AFTER_FAILURE).await {
            Err(reason) => Err(AuthError::Unavailable(reason)),
            Ok(()) => self
                .current
                .load_full()
                .map(|f| f.keys.clone())
                .ok_or(AuthError::Unavailable("jwks_not_fetched")),
        }
    }

    /// Fetches the set unless an attempt completed less than `min_interval` ago,
    /// in which case that attempt's outcome is returned.
    ///
    /// # Cancel safety
    /// An attempt cancelled midway is not recorded, so the next caller retries.
    async fn refresh(&self, min_interval: Duration) -> Result<(), &'static str> {
        let mut state = self.fetch.lock().await;
        if let Some(at) = state.last_attempt
            && at.elapsed() < min_interval
        {
            return state.last_error.map_or(Ok(()), Err);
        }
        let started = Instant::now();
        let outcome = self.fetch_once().await;
        state.last_attempt = Some(started);
        match outcome {
            Ok(keys) => {
                tracing::debug!(
                    tenant = %self.tenant,
                    mode = "jwt",
                    keys = keys.keys.len(),
                    "jwks fetched"
                );
                self.current.store(Some(Arc::new(Fetched {
                    keys: Arc::new(keys),
                    at: started,
                })));
                state.last_error = None;
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(
                    tenant = %self.tenant,
                    mode = "jwt",
                    reason,
                    "jwks fetch failed; keeping the previous key set if any"
                );
                state.last_error = Some(reason);
                Err(reason)
            }
        }
    }

    async fn fetch_once(&self) -> Result<KeySet, &'static str> {
        let work = async {
            let resp = self
                .http
                .get(self.url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| error_label(&e))?;
            if resp.url() != &self.url {
                // A client that follows redirects was passed in; refuse the detour.
                return Err("redirected");
            }
            if resp.status() != reqwest::StatusCode::OK {
                return Err("status");
            }
            let body = read_body_limited(resp, MAX_JWKS_BYTES).await?;
            KeySet::parse_jwks(&body, self.alg).map_err(|e| e.label())
        };
        tokio::time::timeout(JWKS_FETCH_TIMEOUT, work)
            .await
            .map_err(|_| "timeout")?
    }

    /// Test hook: pretends the last fetch attempt and the cached set are `by` older,
    /// so the 30 s refresh limit can be exercised without sleeping.
    #[cfg(test)]
    pub(super) async fn backdate(&self, by: Duration) {
        let mut state = self.fetch.lock().await;
        state.last_attempt = state.last_attempt.and_then(|at| at.checked_sub(by));
        if let Some(cached) = self.current.load_full() {
            self.current.store(Some(Arc::new(Fetched {
                keys: cached.keys.clone(),
                at: cached.at.checked_sub(by).unwrap_or(cached.at),
            })));
        }
    }
}
