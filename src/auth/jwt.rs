//! `auth.mode: jwt`: verifies a signed JSON Web Token and reads the user from it.
//!
//! The algorithm is pinned to the configured one: the header's `alg` must equal it
//! exactly, so `alg: none`, a different algorithm of the same family, and HS/RS
//! key confusion (an HMAC token "signed" with the RSA public key) are all refused
//! before any key is touched. `exp` is required; `nbf` is honoured when present;
//! `iss`/`aud` are required and checked when configured. The user is the `sub`
//! claim, or the string claim `user_claim` names.
//!
//! Keys come from the secret env var (HS*), a PEM public key file, a JWKS file
//! (both read at load) or a JWKS URL (`jwks.rs`, fetched lazily).

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::jwks::{KeySet, RemoteJwks};
use super::{AuthError, Context, EnvLookup, read_key_file};
use crate::config::{AuthConfig, JwtAlgorithm};

/// Clock skew tolerated on `exp` and `nbf`, between the token issuer and us.
const JWT_LEEWAY_SECS: u64 = 30;
/// The claim naming the user when `user_claim` is not set (RFC 7519 `sub`).
const DEFAULT_USER_CLAIM: &str = "sub";

/// A tenant's JWT verification settings and keys.
pub(super) struct JwtVerifier {
    /// The one algorithm accepted.
    alg: Algorithm,
    /// Claim checks: `exp` (+ `iss`, `aud` when configured) required, leeway, pinned alg.
    validation: Validation,
    /// Claim holding the user id.
    user_claim: Box<str>,
    keys: Keys,
}

enum Keys {
    /// HMAC secret, PEM key or JWKS file: known at load, never changes.
    Fixed(Arc<KeySet>),
    /// JWKS URL: fetched and refreshed at run time.
    Remote(RemoteJwks),
}

impl JwtVerifier {
    pub(super) fn from_config(
        tenant: &Arc<str>,
        auth: &AuthConfig,
        base_dir: &Path,
        http: reqwest::Client,
        env: EnvLookup<'_>,
        ctx: Context<'_>,
    ) -> Result<Self, String> {
        let Some(configured) = auth.algorithm else {
            return Err(ctx(
                "algorithm",
                "jwt auth needs an algorithm: HS256, HS384, HS512, RS256 or ES256".to_owned(),
            ));
        };
        let alg = match configured {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let keys = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Keys::Fixed(Arc::new(
                KeySet::single(hmac_key(tenant, auth, alg, env, ctx)?),
            )),
            _ => public_keys(tenant, auth, alg, base_dir, http, ctx)?,
        };

        let mut validation = Validation::new(alg);
        validation.leeway = JWT_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        // Without a configured audience, `aud` is not checked at all (README
        // "Connecting": "checked when set"); the library would otherwise refuse
        // any token carrying one.
        validation.validate_aud = auth.audience.is_some();
        if let Some(aud) = &auth.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        let user_claim = auth
            .user_claim
            .as_deref()
            .unwrap_or(DEFAULT_USER_CLAIM)
            .into();
        Ok(Self {
            alg,
            validation,
            user_claim,
            keys,
        })
    }

    /// Verifies `token` and returns its user. The caller has checked its size.
    pub(super) async fn verify(&self, token: &str) -> Result<super::Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token"))?;
        // Pinned algorithm, checked before any key lookup or JWKS fetch.
        if header.alg != self.alg {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        let kid = header.kid.as_deref();
        let set = match &self.keys {
            Keys::Fixed(set) => set.clone(),
            Keys::Remote(remote) => remote.keys_for(kid).await?,
        };
        let candidates = set.candidates(kid);
        let mut last = AuthError::UnknownKey;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &self.validation,
            ) {
                Ok(data) => {
                    return Ok(super::Identity {
                        user: self.user(&data.claims)?,
                        // Validation requires a numeric `exp`.
                        expires_at: data.claims.get("exp").and_then(serde_json::Value::as_u64),
                    });
                }
                // Another key of the set may have signed it; keep looking.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature
                            | ErrorKind::InvalidKeyFormat
                            | ErrorKind::InvalidRsaKey(_)
                            | ErrorKind::InvalidEcdsaKey
                    ) =>
                {
                    last = map_error(e.kind());
                }
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(last)
    }

    fn user(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<str>, AuthError> {
        match claims.get(&*self.user_claim) {
            Some(serde_json::Value::String(user)) if !user.is_empty() => {
                Ok(Arc::from(user.as_str()))
            }
            Some(serde_json::Value::String(_)) => Err(AuthError::Invalid("empty user claim")),
            Some(_) => Err(AuthError::Invalid("user claim is not a string")),
            None => Err(AuthError::Invalid("missing user claim")),
        }
    }

    /// Test hook: the URL key cache, when the tenant uses `jwks_url`.
    #[cfg(test)]
    pub(super) fn remote(&self) -> Option<&RemoteJwks> {
        match &self.keys {
            Keys::Remote(r) => Some(r),
            Keys::Fixed(_) => None,
        }
    }
}

/// Maps a library error to a refusal reason without its text, which can quote
/// claim values from the token.
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::Invalid("algorithm not allowed")
        }
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(match claim.as_str() {
            "exp" => "missing exp",
            "iss" => "missing iss",
            "aud" => "missing aud",
            _ => "missing required claim",
        }),
        ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
        ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
        ErrorKind::InvalidClaimFormat(_) => AuthError::Invalid("malformed claim"),
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => AuthError::Invalid("key cannot verify this token"),
        _ => AuthError::Invalid("malformed token"),
    }
}

/// Smallest HMAC secret we stay quiet about: the hash output size (RFC 7518 §3.2).
fn min_secret_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

fn hmac_key(
    tenant: &str,
    auth: &AuthConfig,
    alg: Algorithm,
    env: EnvLookup<'_>,
    ctx: Context<'_>,
) -> Result<DecodingKey, String> {
    let Some(var) = auth.secret_env.as_deref() else {
        return Err(ctx(
            "secret_env",
            format!(
                "{alg:?} needs secret_env naming the environment variable that holds the secret"
            ),
        ));
    };
    let secret = match env(var) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) => {
            return Err(ctx(
                "secret_env",
                format!("environment variable `{var}` is empty; put the {alg:?} secret in it"),
            ));
        }
        Err(std::env::VarError::NotPresent) => {
            return Err(ctx(
                "secret_env",
                format!("environment variable `{var}` is not set; export the {alg:?} secret in it"),
            ));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ctx(
                "secret_env",
                format!("environment variable `{var}` is not valid UTF-8"),
            ));
        }
    };
    if secret.len() < min_secret_len(alg) {
        tracing::warn!(
            tenant,
            mode = "jwt",
            secret_env = var,
            min_bytes = min_secret_len(alg),
            "jwt secret is shorter than the hash output; tokens are easier to forge"
        );
    }
    Ok(DecodingKey::from_secret(secret.as_bytes()))
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback_host(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn public_keys(
    tenant: &Arc<str>,
    auth: &AuthConfig,
    alg: Algorithm,
    base_dir: &Path,
    http: reqwest::Client,
    ctx: Context<'_>,
) -> Result<Keys, String> {
    if let Some(file) = &auth.public_key_file {
        let pem = read_key_file(base_dir, file).map_err(|e| ctx("public_key_file", e))?;
        if pem
            .windows(b"PRIVATE KEY".len())
            .any(|w| w == b"PRIVATE KEY")
        {
            return Err(ctx(
                "public_key_file",
                format!(
                    "`{file}` holds a private key; configure the public key (`openssl pkey -in KEY -pubout`) and keep the private key off the gateway"
                ),
            ));
        }
        let (key, kind) = match alg {
            Algorithm::RS256 => (DecodingKey::from_rsa_pem(&pem), "RSA"),
            _ => (DecodingKey::from_ec_pem(&pem), "EC P-256"),
        };
        let key = key.map_err(|_| {
            ctx(
                "public_key_file",
                format!(
                    "`{file}` is not a PEM {kind} public key (expected -----BEGIN PUBLIC KEY-----)"
                ),
            )
        })?;
        return Ok(Keys::Fixed(Arc::new(KeySet::single(key))));
    }
    if let Some(file) = &auth.jwks_file {
        let bytes = read_key_file(base_dir, file).map_err(|e| ctx("jwks_file", e))?;
        let set = KeySet::parse_jwks(&bytes, alg)
            .map_err(|e| ctx("jwks_file", format!("`{file}`: {e}")))?;
        return Ok(Keys::Fixed(Arc::new(set)));
    }
    if let Some(url) = &auth.jwks_url {
        // The URL is not quoted: it may come from `${VAR}` and carry a token.
        let parsed = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ctx("jwks_url", "is not an http(s) URL".to_owned()))?;
        if parsed.scheme() == "http" && !is_loopback_host(&parsed) {
            return Err(ctx(
                "jwks_url",
                "must be https: keys fetched over plain http can be swapped by anyone on the path (http is accepted for loopback hosts only)".to_owned(),
            ));
        }
        return Ok(Keys::Remote(RemoteJwks::new(
            tenant.clone(),
            parsed,
            http,
            alg,
        )));
    }
    Err(ctx(
        "public_key_file",
        format!("{alg:?} needs exactly one of public_key_file, jwks_file, jwks_url"),
    ))
}
