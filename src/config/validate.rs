//! Semantic checks on a parsed [`Config`]: ranges, cross-references, and the
//! fields each mode requires. Collects every problem before returning.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::{
    AuthMode, ClusterConfig, Config, ConfigError, ConfigIssue, HotServiceKind, JwtAlgorithm,
    TenantConfig,
};

/// Largest `gateway.queues.socket_send_buffer_bytes` accepted.
const MAX_SOCKET_SEND_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Largest frame limit accepted (16 MiB); a realtime gateway has no business
/// buffering more per message.
const MAX_FRAME_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// Smallest sensible frame limit: a sys envelope must fit.
const MIN_FRAME_BYTES_LIMIT: usize = 64;

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn positive(&mut self, path: &str, value: u64) {
        if value == 0 {
            self.push(path, "must be greater than 0");
        }
    }
}

pub(super) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let mut issues = Issues(Vec::new());
    if cfg.version != 1 {
        issues.push(
            "version",
            format!(
                "unsupported config version {}; this gateway reads version 1",
                cfg.version
            ),
        );
    }
    let g = &cfg.gateway;
    for (path, addr) in [
        ("gateway.listen", &g.listen),
        ("gateway.admin_listen", &g.admin_listen),
    ] {
        if addr.parse::<SocketAddr>().is_err() {
            issues.push(
                path,
                format!("`{addr}` is not a socket address; write it as IP:PORT, e.g. 0.0.0.0:8080"),
            );
        }
    }
    issues.positive("gateway.ping_interval_ms", g.ping_interval_ms);
    issues.positive("gateway.idle_timeout_ms", g.idle_timeout_ms);
    issues.positive("gateway.writer_send_timeout_ms", g.writer_send_timeout_ms);
    issues.positive(
        "gateway.queues.reliable_capacity",
        g.queues.reliable_capacity as u64,
    );
    issues.positive(
        "gateway.queues.lossy_capacity",
        g.queues.lossy_capacity as u64,
    );
    issues.positive("gateway.queues.max_bytes", g.queues.max_bytes as u64);
    if g.queues.socket_send_buffer_bytes > MAX_SOCKET_SEND_BUFFER_BYTES {
        issues.push(
            "gateway.queues.socket_send_buffer_bytes",
            format!(
                "{} is over {MAX_SOCKET_SEND_BUFFER_BYTES} (64 MiB); 0 leaves it to the kernel",
                g.queues.socket_send_buffer_bytes
            ),
        );
    }
    if g.idle_timeout_ms > 0 && g.ping_interval_ms >= g.idle_timeout_ms {
        issues.push(
            "gateway.ping_interval_ms",
            format!(
                "{} must be less than gateway.idle_timeout_ms ({}) or healthy clients idle out",
                g.ping_interval_ms, g.idle_timeout_ms
            ),
        );
    }
    let h = &g.handshake_limit;
    if h.enabled {
        issues.positive("gateway.handshake_limit.global_rps", h.global_rps.into());
        issues.positive(
            "gateway.handshake_limit.global_burst",
            h.global_burst.into(),
        );
        issues.positive("gateway.handshake_limit.per_ip_rps", h.per_ip_rps.into());
        issues.positive(
            "gateway.handshake_limit.per_ip_burst",
            h.per_ip_burst.into(),
        );
        issues.positive(
            "gateway.handshake_limit.max_ip_entries",
            h.max_ip_entries as u64,
        );
    }
    if !(1..=128).contains(&h.ipv6_prefix_len) {
        issues.push(
            "gateway.handshake_limit.ipv6_prefix_len",
            format!(
                "{} is not a prefix length; use 1..=128 (64 = one budget per /64)",
                h.ipv6_prefix_len
            ),
        );
    }
    for (i, p) in g.trusted_proxies.iter().enumerate() {
        if let Some(e) = p.error() {
            issues.push(format!("gateway.trusted_proxies[{i}]"), e);
        }
    }
    if g.proxy_protocol && g.trusted_proxies.is_empty() {
        issues.push(
            "gateway.proxy_protocol",
            "needs gateway.trusted_proxies: only connections from them may carry a PROXY header",
        );
    }
    match (&g.tls.cert_file, &g.tls.key_file) {
        (Some(_), None) => {
            issues.push("gateway.tls.key_file", "set it too, or leave out cert_file")
        }
        (None, Some(_)) => {
            issues.push("gateway.tls.cert_file", "set it too, or leave out key_file")
        }
        _ => {}
    }
    let p = &g.plugins;
    if p.dir.trim().is_empty() {
        issues.push("gateway.plugins.dir", "must name a directory");
    }
    issues.positive("gateway.plugins.call_timeout_ms", p.call_timeout_ms);
    issues.positive(
        "gateway.plugins.instances_per_plugin",
        p.instances_per_plugin as u64,
    );
    issues.positive(
        "gateway.plugins.max_faults_per_session",
        p.max_faults_per_session.into(),
    );
    if p.max_memory_bytes < 1024 * 1024 {
        issues.push(
            "gateway.plugins.max_memory_bytes",
            format!(
                "{} is below 1 MiB; no component can start in that",
                p.max_memory_bytes
            ),
        );
    }
    validate_cluster(&g.cluster, &mut issues);

    let mut seen = BTreeSet::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let base = format!("tenants[{i}]");
        if !seen.insert(t.id.as_str()) {
            issues.push(
                format!("{base}.id"),
                format!("duplicate tenant id `{}`", t.id),
            );
        }
        validate_tenant(t, &base, &mut issues);
    }

    if issues.0.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { issues: issues.0 })
    }
}

/// What is wrong with a Redis (or Sentinel) URL, if anything. The URL
/// itself is not repeated: it may carry a password.
fn redis_url_issue(url: &str) -> Option<String> {
    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
        Some("must start with redis:// or rediss://".to_owned())
    } else {
        redis::IntoConnectionInfo::into_connection_info(url)
            .err()
            .map(|e| format!("not a Redis URL: {e}"))
    }
}

fn validate_cluster(c: &ClusterConfig, issues: &mut Issues) {
    if let Some(issue) = redis_url_issue(&c.redis_url) {
        issues.push("gateway.cluster.redis_url", issue);
    }
    if let Some(s) = &c.sentinel {
        if !valid_id(&s.master_name) {
            issues.push(
                "gateway.cluster.sentinel.master_name",
                "1-64 characters of A-Z a-z 0-9 - _ .",
            );
        }
        if s.urls.is_empty() {
            issues.push(
                "gateway.cluster.sentinel.urls",
                "at least one Sentinel address",
            );
        }
        for (i, url) in s.urls.iter().enumerate() {
            if let Some(issue) = redis_url_issue(url) {
                issues.push(format!("gateway.cluster.sentinel.urls[{i}]"), issue);
            }
        }
    }
    let prefix_ok = !c.prefix.is_empty()
        && c.prefix.len() <= 64
        && c.prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !prefix_ok {
        issues.push(
            "gateway.cluster.prefix",
            "1-64 characters of A-Z a-z 0-9 - _ . : (no braces: keys carry hash tags)",
        );
    }
    if !c.node_id.is_empty() && !valid_id(&c.node_id) {
        issues.push(
            "gateway.cluster.node_id",
            "1-64 characters of A-Z a-z 0-9 - _ . (or empty for a random id)",
        );
    }
    if c.node_ttl_ms < 1000 {
        issues.push(
            "gateway.cluster.node_ttl_ms",
            format!(
                "{} is below 1000; heartbeats could not keep a live node",
                c.node_ttl_ms
            ),
        );
    }
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_tenant(t: &TenantConfig, base: &str, issues: &mut Issues) {
    if !valid_id(&t.id) {
        issues.push(
            format!("{base}.id"),
            format!(
                "`{}` is not a valid tenant id; use 1-64 of [A-Za-z0-9._-]",
                t.id
            ),
        );
    }
    for (j, origin) in t.allowed_origins.iter().enumerate() {
        if origin.is_empty() || origin.ends_with('/') {
            issues.push(
                format!("{base}.allowed_origins[{j}]"),
                format!(
                    "`{origin}` is not an origin; write scheme://host[:port] with no trailing slash"
                ),
            );
        }
    }
    for (j, key) in t.api_keys.iter().enumerate() {
        if key.len() < 16 {
            issues.push(
                format!("{base}.api_keys[{j}]"),
                "API keys must be at least 16 characters",
            );
        }
    }
    validate_auth(t, base, issues);

    let l = &t.limits;
    if !(MIN_FRAME_BYTES_LIMIT..=MAX_FRAME_BYTES_LIMIT).contains(&l.max_frame_bytes) {
        issues.push(
            format!("{base}.limits.max_frame_bytes"),
            format!(
                "{} is out of range; use {MIN_FRAME_BYTES_LIMIT}..={MAX_FRAME_BYTES_LIMIT}",
                l.max_frame_bytes
            ),
        );
    }

    let pol = &t.policy;
    issues.positive(
        &format!("{base}.policy.rate_limit_rps"),
        pol.rate_limit_rps.into(),
    );
    issues.positive(
        &format!("{base}.policy.rate_limit_burst"),
        pol.rate_limit_burst.into(),
    );
    issues.positive(
        &format!("{base}.policy.sessions.max_sessions_per_user"),
        pol.sessions.max_sessions_per_user.into(),
    );
    if pol.error_budget.max_errors > 0 {
        issues.positive(
            &format!("{base}.policy.error_budget.window_ms"),
            pol.error_budget.window_ms,
        );
    }
    for (j, e) in pol.ext_allowlist.iter().enumerate() {
        if let Some(e) = e.error() {
            issues.push(format!("{base}.policy.ext_allowlist[{j}]"), e);
        }
    }
    for (j, e) in pol.hot_allowlist.iter().enumerate() {
        if let Some(e) = e.error() {
            issues.push(format!("{base}.policy.hot_allowlist[{j}]"), e);
        }
    }

    let mut svcs = BTreeSet::new();
    for (j, r) in t.routes.iter().enumerate() {
        let path = format!("{base}.routes[{j}]");
        if matches!(r.svc.as_str(), "sys" | "room" | "chat") {
            issues.push(
                format!("{path}.svc"),
                format!(
                    "`{}` is a built-in service and cannot be routed to a plugin",
                    r.svc
                ),
            );
        } else if !valid_id(&r.svc) {
            issues.push(
                format!("{path}.svc"),
                format!("`{}` is not a valid service name", r.svc),
            );
        }
        if !svcs.insert(r.svc.as_str()) {
            issues.push(
                format!("{path}.svc"),
                format!("`{}` is routed twice", r.svc),
            );
        }
        if !valid_id(&r.plugin) {
            issues.push(
                format!("{path}.plugin"),
                format!("`{}` is not a plugin file stem", r.plugin),
            );
        }
    }

    let mut ids = BTreeSet::new();
    for (j, s) in t.hot_services.iter().enumerate() {
        if !ids.insert(s.id) {
            issues.push(
                format!("{base}.hot_services[{j}].id"),
                format!("svc_id {} is configured twice", s.id),
            );
        }
        if s.conflate && s.kind != HotServiceKind::Relay {
            issues.push(
                format!("{base}.hot_services[{j}].conflate"),
                "only a relay conflates (an echo has one receiver, the sender)",
            );
        }
    }

    for (name, up) in &t.backend.upstreams {
        let path = format!("{base}.backend.upstreams.{name}");
        match reqwest::Url::parse(&up.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => issues.push(
                format!("{path}.url"),
                // Not quoted: it may come from `${VAR}` and carry a token.
                "is not an http(s) URL; write scheme://host[:port][/base-path]".to_owned(),
            ),
        }
        issues.positive(&format!("{path}.timeout_ms"), up.timeout_ms);
    }
    for (field, name) in [
        ("connect", &t.backend.events.connect),
        ("disconnect", &t.backend.events.disconnect),
    ] {
        if let Some(name) = name
            && !t.backend.upstreams.contains_key(name)
        {
            issues.push(
                format!("{base}.backend.events.{field}"),
                format!("upstream `{name}` is not defined in backend.upstreams"),
            );
        }
    }
}

fn validate_auth(t: &TenantConfig, base: &str, issues: &mut Issues) {
    let a = &t.auth;
    let path = format!("{base}.auth");
    match a.mode {
        AuthMode::Static => {
            if a.tickets.is_empty() {
                issues.push(
                    format!("{path}.tickets"),
                    "static auth needs at least one ticket",
                );
            }
            // Tickets are secrets: the path names the entry by position.
            for (n, user) in a.tickets.values().enumerate() {
                if user.is_empty() {
                    issues.push(
                        format!("{path}.tickets[entry {}]", n + 1),
                        "user id must not be empty (tickets are not shown)",
                    );
                }
            }
        }
        AuthMode::Jwt => {
            let Some(alg) = a.algorithm else {
                issues.push(
                    format!("{path}.algorithm"),
                    "jwt auth needs an algorithm: HS256, HS384, HS512, RS256 or ES256",
                );
                return;
            };
            let hmac = matches!(
                alg,
                JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
            );
            let key_sources = [&a.public_key_file, &a.jwks_file, &a.jwks_url]
                .iter()
                .filter(|s| s.is_some())
                .count();
            if hmac {
                if a.secret_env.is_none() {
                    issues.push(
                        format!("{path}.secret_env"),
                        format!(
                            "{alg:?} needs secret_env naming the variable that holds the secret"
                        ),
                    );
                }
                if key_sources > 0 {
                    issues.push(
                        path.clone(),
                        format!("{alg:?} takes secret_env only; public keys are for RS256/ES256"),
                    );
                }
            } else {
                if a.secret_env.is_some() {
                    issues.push(
                        format!("{path}.secret_env"),
                        format!("{alg:?} verifies with a public key, not a shared secret"),
                    );
                }
                if key_sources != 1 {
                    issues.push(
                        path.clone(),
                        format!(
                            "{alg:?} needs exactly one of public_key_file, jwks_file, jwks_url"
                        ),
                    );
                }
            }
        }
        AuthMode::Webhook => match &a.upstream {
            None => issues.push(
                format!("{path}.upstream"),
                "webhook auth needs an upstream name",
            ),
            Some(name) if !t.backend.upstreams.contains_key(name) => issues.push(
                format!("{path}.upstream"),
                format!("upstream `{name}` is not defined in backend.upstreams"),
            ),
            Some(_) => {}
        },
    }
    if a.close_at_expiry && a.mode != AuthMode::Jwt {
        issues.push(
            format!("{path}.close_at_expiry"),
            "only JWTs carry an expiry; set it with mode: jwt",
        );
    }
}
