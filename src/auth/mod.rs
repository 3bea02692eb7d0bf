//! Ticket authentication (README "Connecting"): turns the `ticket=` query value or
//! `Authorization: Bearer` token of an upgrade request into a user id.
//!
//! Owns: one [`Authenticator`] per tenant and config version, built by
//! [`Authenticator::from_config`] from `tenants[i].auth`, and the three modes:
//! `static` (ticket map, `tickets.rs`), `jwt` (pinned algorithm, secret or public
//! keys, `jwt.rs` + `jwks.rs`) and `webhook` (ask a backend upstream, `webhook.rs`).
//! Input comes from the transport's upgrade handler, before the upgrade; output is
//! the user id, or an [`AuthError`] that the handler answers with HTTP 401 and
//! counts by [`AuthError::label`].
//!
//! Must not: log or echo tickets, tokens, secrets or backend reply bodies at any
//! level (only tenant, mode and error kind are logged); make network requests to
//! anything but the URLs the config names.

mod jwks;
mod jwt;
mod tickets;
mod webhook;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{AuthMode, TenantConfig};

/// Longest ticket or token accepted, checked before any parsing or forwarding.
/// Real JWTs are well under 2 KiB; 8 KiB leaves room for fat claims while keeping
/// a hostile client from making us base64-decode and JSON-parse megabytes.
pub const MAX_TICKET_BYTES: usize = 8 * 1024;

/// Who a ticket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub user: Arc<str>,
    /// A JWT's `exp` (seconds since the Unix epoch); `None` for static
    /// tickets and the webhook.
    pub expires_at: Option<u64>,
}

impl Identity {
    fn user(user: Arc<str>) -> Self {
        Self {
            user,
            expires_at: None,
        }
    }
}

/// Why a ticket was not accepted. Every variant is answered with HTTP 401; the
/// `Display` text is safe for logs (it never contains the ticket or key material)
/// but is not sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown static ticket, malformed token, bad signature, algorithm not the
    /// pinned one, wrong `iss`/`aud`, missing `exp` or user claim. The text names
    /// which check failed.
    #[error("ticket rejected: {0}")]
    Invalid(&'static str),
    /// The token's `exp` is in the past (beyond the allowed clock leeway).
    #[error("token has expired")]
    Expired,
    /// The token's `nbf` is in the future (beyond the allowed clock leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Longer than [`MAX_TICKET_BYTES`]; refused unparsed.
    #[error("ticket is longer than {MAX_TICKET_BYTES} bytes")]
    TooLarge,
    /// The token names a `kid` that no configured or fetched key has, even after
    /// the refresh the rate limit allows.
    #[error("no key matches the token's kid")]
    UnknownKey,
    /// The auth webhook answered with a status other than 200.
    #[error("auth webhook refused the ticket with HTTP {0}")]
    Refused(u16),
    /// The auth webhook answered 200 without a JSON `{"user": "<non-empty>"}` body.
    #[error("auth webhook answered 200 without a usable {{\"user\": ...}} body ({0})")]
    BadResponse(&'static str),
    /// The auth webhook or JWKS URL could not be reached in time, so nothing could
    /// be verified. The text names the failure (`timeout`, `connect`, ...).
    #[error("auth backend unavailable: {0}")]
    Unavailable(&'static str),
}

impl AuthError {
    /// A bounded label for metrics (`reason` label of the handshake counter).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::TooLarge => "too_large",
            Self::UnknownKey => "unknown_key",
            Self::Refused(_) => "refused",
            Self::BadResponse(_) => "bad_response",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The HTTP status the upgrade handler answers with: always 401 (README "Connecting").
    pub fn http_status(&self) -> u16 {
        401
    }
}

/// One tenant's ticket verifier, built once per config version and shared by
/// every upgrade of that tenant (`Send + Sync`; wrap it in an `Arc`).
pub struct Authenticator {
    /// Tenant id, for logs and the webhook body.
    tenant: Arc<str>,
    /// The configured mode and its state.
    verifier: Verifier,
}

/// Mode-specific state.
enum Verifier {
    Static(tickets::StaticTickets),
    Jwt(Box<jwt::JwtVerifier>),
    Webhook(webhook::Webhook),
}

impl std::fmt::Debug for Authenticator {
    // Hand-written so that secrets and tickets can never reach a `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tenant", &self.tenant)
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the verifier for one tenant: reads the HS secret from the env var
    /// named by `secret_env` (missing or empty variable is an error), reads
    /// `public_key_file` / `jwks_file` now (unreadable or unparsable is an error),
    /// and remembers `jwks_url` for a lazy fetch on first use. `base_dir` resolves
    /// relative key file paths (the config file's directory). `http` is the
    /// process-wide client from [`crate::backend::BackendClient::http`].
    ///
    /// # Errors
    /// A message naming the tenant, the `auth.*` field and what to do, for startup
    /// or reload to report (the old config keeps serving on reload).
    pub fn from_config(
        tenant: &TenantConfig,
        base_dir: &Path,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        Self::build(tenant, base_dir, http, &|name| std::env::var(name))
    }

    /// [`Self::from_config`] with the environment passed in, so tests need not
    /// mutate the process environment.
    fn build(
        tenant: &TenantConfig,
        base_dir: &Path,
        http: reqwest::Client,
        env: EnvLookup<'_>,
    ) -> Result<Self, String> {
        let auth = &tenant.auth;
        let id: Arc<str> = Arc::from(tenant.id.as_str());
        let context = |field: &str, msg: String| format!("tenant `{}`: auth.{field}: {msg}", id);
        let verifier = match auth.mode {
            AuthMode::Static => Verifier::Static(tickets::StaticTickets::new(&auth.tickets)),
            AuthMode::Jwt => Verifier::Jwt(Box::new(jwt::JwtVerifier::from_config(
                &id, auth, base_dir, http, env, &context,
            )?)),
            AuthMode::Webhook => Verifier::Webhook(webhook::Webhook::from_config(
                id.clone(),
                auth,
                &tenant.backend,
                http,
                &context,
            )?),
        };
        Ok(Self {
            tenant: id,
            verifier,
        })
    }

    /// The configured mode.
    pub fn mode(&self) -> AuthMode {
        match self.verifier {
            Verifier::Static(_) => AuthMode::Static,
            Verifier::Jwt(_) => AuthMode::Jwt,
            Verifier::Webhook(_) => AuthMode::Webhook,
        }
    }

    /// Ticket (query `ticket=` or `Authorization: Bearer`) → user id. `ip` is the
    /// client address, forwarded to the auth webhook.
    ///
    /// # Errors
    /// Any [`AuthError`]; all of them mean HTTP 401.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future abandons a webhook call or JWKS fetch; a
    /// JWKS fetch abandoned midway leaves the cached key set as it was.
    pub async fn authenticate(&self, ticket: &str, ip: IpAddr) -> Result<Arc<str>, AuthError> {
        self.identify(ticket, ip).await.map(|id| id.user)
    }

    /// [`Authenticator::authenticate`] with what else the ticket says: a
    /// JWT's expiry, for `auth.close_at_expiry`.
    ///
    /// # Errors
    /// As [`Authenticator::authenticate`].
    pub async fn identify(&self, ticket: &str, ip: IpAddr) -> Result<Identity, AuthError> {
        let result = if ticket.len() > MAX_TICKET_BYTES {
            Err(AuthError::TooLarge)
        } else if ticket.is_empty() {
            Err(AuthError::Invalid("empty ticket"))
        } else {
            match &self.verifier {
                Verifier::Static(t) => t.lookup(ticket).map(Identity::user),
                Verifier::Jwt(j) => j.verify(ticket).await,
                Verifier::Webhook(w) => w.ask(ticket, ip).await.map(Identity::user),
            }
        };
        if let Err(e) = &result {
            // Tenant, mode and error kind only: never the ticket (README "Command line").
            let (tenant, mode, reason) = (&*self.tenant, mode_label(self.mode()), e.label());
            if matches!(e, AuthError::Unavailable(_)) {
                // Not the client's fault: every ticket of this tenant fails until the
                // backend is back, so operators need to see it.
                tracing::warn!(tenant, mode, reason, error = %e, "auth backend unavailable");
            } else {
                tracing::debug!(tenant, mode, reason, error = %e, "ticket refused");
            }
        }
        result
    }
}

fn mode_label(mode: AuthMode) -> &'static str {
    match mode {
        AuthMode::Static => "static",
        AuthMode::Jwt => "jwt",
        AuthMode::Webhook => "webhook",
    }
}

/// Formats a config error as `tenant `id`: auth.<field>: <message>`.
type Context<'a> = &'a dyn Fn(&str, String) -> String;

/// Reads an environment variable (`std::env::var` outside tests).
type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

/// Pairs of JWT tenants that would accept each other's tokens: the same key
/// material (the same secret value, key file content or JWKS URL) and nothing
/// that tells their tokens apart (the same `audience` and `issuer`, or none).
/// A user of one tenant could then connect to the other with their own token.
/// Each pair is `(first tenant id, second tenant id)` in config order.
pub fn shared_jwt_keys(tenants: &[TenantConfig], base_dir: &Path) -> Vec<(String, String)> {
    shared_jwt_keys_with(tenants, base_dir, &|name| std::env::var(name))
}

fn shared_jwt_keys_with(
    tenants: &[TenantConfig],
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Vec<(String, String)> {
    use sha2::{Digest, Sha256};
    let identity = |t: &TenantConfig| -> Option<[u8; 32]> {
        let a = &t.auth;
        if a.mode != AuthMode::Jwt {
            return None;
        }
        let material: Vec<u8> = if let Some(var) = &a.secret_env {
            [b"secret:".as_slice(), env(var).ok()?.as_bytes()].concat()
        } else if let Some(file) = a.public_key_file.as_ref().or(a.jwks_file.as_ref()) {
            [b"file:".as_slice(), &read_key_file(base_dir, file).ok()?].concat()
        } else {
            [b"url:".as_slice(), a.jwks_url.as_ref()?.as_bytes()].concat()
        };
        Some(Sha256::digest(&material).into())
    };
    let keyed: Vec<_> = tenants
        .iter()
        .filter_map(|t| Some((t, identity(t)?)))
        .collect();
    let mut pairs = Vec::new();
    for (i, (a, ka)) in keyed.iter().enumerate() {
        for (b, kb) in &keyed[i + 1..] {
            if ka == kb && a.auth.audience == b.auth.audience && a.auth.issuer == b.auth.issuer {
                pairs.push((a.id.clone(), b.id.clone()));
            }
        }
    }
    pairs
}

/// Largest key or JWKS file read at load; real ones are a few KiB.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a key file named in the config, relative to `base_dir` unless absolute.
fn read_key_file(base_dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    let path: PathBuf = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        base_dir.join(name)
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path (relative paths start at the config file's directory)",
            path.display()
        )
    })?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(format!(
            "{} is {} bytes; key files larger than {MAX_KEY_FILE_BYTES} bytes are refused",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
