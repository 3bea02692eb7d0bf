//! The typed shape of `wsprism.yaml` (README "Configuration").
//!
//! Owns: field names, types and defaults. Every struct denies unknown fields so a
//! typo is an error, never a silently ignored key. Defaults live in the `DEFAULT_*`
//! consts below and in each `impl Default`; nothing else in the crate invents one.
//! Semantic checks (ranges, cross-references) live in `validate.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pattern::{Cidr, ExtPattern, HotPattern, Pattern};

/// Default public listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default private admin listener (metrics, server API, status page).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Ping cadence; well under the common 60 s idle cut of load balancers.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 20_000;
/// No inbound traffic (pongs included) for this long closes with 4003.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Bound on one socket write; a peer that cannot take bytes for this long is cut.
pub const DEFAULT_WRITER_SEND_TIMEOUT_MS: u64 = 1_500;
/// How long a drain waits for sessions to close before aborting them.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 5_000;
/// Open client sockets on the public listener, before and after the upgrade.
/// A session costs ~4 KiB idle plus its queues; 100,000 fit a small machine and
/// stop a connection flood before file descriptors or memory run out.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
/// Reliable queue depth per session (messages).
pub const DEFAULT_RELIABLE_CAPACITY: usize = 1024;
/// Lossy queue depth per session (messages).
pub const DEFAULT_LOSSY_CAPACITY: usize = 256;
/// Bytes queued per session, both queues together (a shared broadcast frame counts
/// at its full size). 1 MiB holds 16 maximum-size frames: a healthy reader
/// catches up from that, and 10,000 stalled sessions cannot pin more than ~10 GiB.
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 1_048_576;
/// Default Ext Lane / Hot Lane frame limit.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;
/// Default per-scope message rate.
pub const DEFAULT_RATE_LIMIT_RPS: u32 = 100;
/// Default per-scope burst.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 200;
/// Inbound bytes per second per connection: 1 MiB/s (with a 2 s burst) is far
/// above what a game or chat client sends, and low enough that one client
/// spamming full-size frames into a room cannot outrun its members' downlinks.
pub const DEFAULT_MAX_BYTES_PER_SEC: u32 = 1_048_576;
/// Default sessions a user may hold at once.
pub const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 4;
/// Refusals a session may collect inside one `error_budget.window_ms` before it is
/// closed with 1008.
pub const DEFAULT_ERROR_BUDGET_MAX_ERRORS: u32 = 50;
/// Window of the per-session error budget.
pub const DEFAULT_ERROR_BUDGET_WINDOW_MS: u64 = 10_000;
/// Default room history retention.
pub const DEFAULT_HISTORY_TTL_MS: u64 = 600_000;
/// Default timeout for calls to a backend upstream.
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 2_000;
/// Plugin faults (trap, timeout, memory hit) one session may cause within
/// 10 s before that plugin refuses the session for a back-off: enough for a
/// client to survive a plugin bug it hit by chance, few enough that one client
/// cannot keep replacing instances that other sessions share.
pub const DEFAULT_MAX_FAULTS_PER_SESSION: u32 = 3;
/// Default Redis URL for cluster mode.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Schema version; only `1` exists.
    pub version: u32,
    /// Process-wide settings.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The isolated tenants this process serves.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
}

/// Process-wide settings (`gateway:`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Public listener: `/v1/ws`, `/healthz`, `/readyz`.
    pub listen: String,
    /// Private listener: `/metrics`, server API, status page.
    pub admin_listen: String,
    /// Server → client ping cadence.
    pub ping_interval_ms: u64,
    /// Inbound silence that closes a session with 4003.
    pub idle_timeout_ms: u64,
    /// Bound on a single socket write.
    pub writer_send_timeout_ms: u64,
    /// Graceful drain budget on SIGTERM/SIGINT.
    pub drain_grace_ms: u64,
    /// Open client sockets on the public listener (HTTP and upgraded) beyond
    /// which new ones get 503, and past a small margin are closed at accept;
    /// 0 = no limit (an explicit opt-in).
    pub max_connections: u64,
    /// Native TLS on the public listener.
    pub tls: TlsConfig,
    /// Load balancers and proxies whose word about the client address is
    /// taken (`X-Forwarded-For`, PROXY protocol).
    pub trusted_proxies: Vec<Pattern<Cidr>>,
    /// Connections from `trusted_proxies` must start with a PROXY protocol
    /// v1/v2 header naming the client.
    pub proxy_protocol: bool,
    /// Per-session outbound queue capacities.
    pub queues: QueuesConfig,
    /// Pre-upgrade handshake limiter.
    pub handshake_limit: HandshakeLimitConfig,
    /// Diagnostics endpoints, off by default.
    pub diagnostics: DiagnosticsConfig,
    /// WASM plugin host settings.
    pub plugins: PluginsConfig,
    /// Single node or Redis cluster.
    pub cluster: ClusterConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            admin_listen: DEFAULT_ADMIN_LISTEN.to_owned(),
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            writer_send_timeout_ms: DEFAULT_WRITER_SEND_TIMEOUT_MS,
            drain_grace_ms: DEFAULT_DRAIN_GRACE_MS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls: TlsConfig::default(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            queues: QueuesConfig::default(),
            handshake_limit: HandshakeLimitConfig::default(),
            diagnostics: DiagnosticsConfig::default(),
            plugins: PluginsConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Native TLS (`gateway.tls`): both files set → `listen` serves `wss://`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (relative paths: from the config's
    /// directory). Re-read on reload.
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Re-read on reload.
    pub key_file: Option<String>,
}

impl TlsConfig {
    /// Whether TLS is on (both files named).
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

/// Per-session queue capacities (`gateway.queues`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueuesConfig {
    /// Reliable queue; overflow closes the session with 4002.
    pub reliable_capacity: usize,
    /// Lossy queue; overflow drops the oldest queued frame.
    pub lossy_capacity: usize,
    /// Payload bytes queued over both queues. Past it, lossy frames are dropped
    /// oldest first and a reliable frame makes the session a slow consumer (4002).
    pub max_bytes: usize,
    /// The kernel send buffer of each client socket (SO_SNDBUF), in bytes;
    /// 0 leaves it to the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s
    /// maximum, 4 MiB by default). What the kernel holds is past the queues'
    /// reach: a small buffer keeps a slow receiver's backlog in the lossy
    /// queue, where latest-wins conflation and the drop policy work on it.
    pub socket_send_buffer_bytes: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        Self {
            reliable_capacity: DEFAULT_RELIABLE_CAPACITY,
            lossy_capacity: DEFAULT_LOSSY_CAPACITY,
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            socket_send_buffer_bytes: 0,
        }
    }
}

/// Handshake limiter (`gateway.handshake_limit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HandshakeLimitConfig {
    /// Off means no 429 is ever given for handshakes.
    pub enabled: bool,
    /// Upgrades per second across all clients.
    pub global_rps: u32,
    /// Burst across all clients.
    pub global_burst: u32,
    /// Upgrades per second from one IP.
    pub per_ip_rps: u32,
    /// Burst from one IP.
    pub per_ip_burst: u32,
    /// Memory bound of the per-IP table; past it, unseen IPs are refused (429)
    /// until idle entries age out.
    pub max_ip_entries: usize,
    /// IPv6 clients share one per-IP budget per network of this prefix length
    /// (a host usually holds a whole /64).
    pub ipv6_prefix_len: u8,
}

impl Default for HandshakeLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            global_rps: 500,
            global_burst: 1000,
            per_ip_rps: 10,
            per_ip_burst: 20,
            max_ip_entries: 50_000,
            ipv6_prefix_len: 64,
        }
    }
}

/// Diagnostics endpoints (`gateway.diagnostics`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosticsConfig {
    /// Serve the raw RFC 6455 echo at `/v1/echo`.
    pub echo: bool,
}

/// Plugin isolation mode.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Long-lived instances, a room's messages always to the same one.
    #[default]
    Sharded,
    /// A fresh instance for every call.
    PerMessage,
}

/// WASM plugin host settings (`gateway.plugins`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Drop folder of `*.wasm` components (relative paths resolve against the
    /// config file's directory).
    pub dir: String,
    /// Watch `dir` and hot-reload on change.
    pub watch: bool,
    /// CPU budget of one call (epoch deadline).
    pub call_timeout_ms: u64,
    /// Memory cap of one instance: all its linear memories together.
    pub max_memory_bytes: usize,
    /// Long-lived instances per (tenant, plugin).
    pub instances_per_plugin: usize,
    /// Instance reuse model.
    pub isolation: Isolation,
    /// Faults one session may cause within 10 s before the plugin refuses
    /// that session (only) for a back-off.
    pub max_faults_per_session: u32,
    /// Compiled-code cache directory; "" = a private per-user directory. Never
    /// inside `dir`; created 0700 and not used if another user can write it.
    pub cache_dir: String,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: "plugins".to_owned(),
            watch: true,
            call_timeout_ms: 50,
            max_memory_bytes: 64 * 1024 * 1024,
            instances_per_plugin: 2,
            isolation: Isolation::Sharded,
            max_faults_per_session: DEFAULT_MAX_FAULTS_PER_SESSION,
            cache_dir: String::new(),
        }
    }
}

/// Cluster backend.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// One process, embedded broker.
    #[default]
    Local,
    /// Several processes joined through Redis.
    Redis,
}

/// Cluster settings (`gateway.cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `local` or `redis`.
    pub mode: ClusterMode,
    /// Redis connection URL for `mode: redis` (`redis://` or `rediss://`).
    pub redis_url: String,
    /// Prefix of every Redis key and channel the cluster uses.
    pub prefix: String,
    /// This node's name in heartbeats, stats and logs; empty = random per
    /// process.
    pub node_id: String,
    /// A node silent this long is dead: its sessions leave presence and caps.
    pub node_ttl_ms: u64,
    /// Redis behind Sentinel: the master is the server these Sentinels name
    /// (`redis_url` then gives only its scheme, credentials and database).
    pub sentinel: Option<SentinelConfig>,
}

/// `gateway.cluster.sentinel`: where to ask which server is the master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in the Sentinels' `sentinel monitor <name> …`.
    pub master_name: String,
    /// Sentinel addresses (`redis://host:26379`, or `rediss://`), each with
    /// the Sentinels' own credentials when they need any.
    pub urls: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            mode: ClusterMode::Local,
            redis_url: DEFAULT_REDIS_URL.to_owned(),
            prefix: "wsprism".to_owned(),
            node_id: String::new(),
            node_ttl_ms: 15_000,
            sentinel: None,
        }
    }
}

/// One tenant (`tenants[i]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id as clients send it in `?tenant=`.
    pub id: String,
    /// Allowed `Origin` values; empty admits any origin.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Server API bearer keys (env-expanded).
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// How tickets become users.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Size and count caps.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Rate limits, session policy, allowlists.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Room behaviour.
    #[serde(default)]
    pub rooms: RoomsConfig,
    /// Ext Lane `svc` → plugin routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Native Hot Lane services by `svc_id`.
    #[serde(default)]
    pub hot_services: Vec<HotServiceConfig>,
    /// Backend upstreams and lifecycle events.
    #[serde(default)]
    pub backend: BackendConfig,
}

/// JWT signature algorithms accepted by `auth.mode: jwt`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 with a shared secret.
    HS256,
    /// HMAC SHA-384 with a shared secret.
    HS384,
    /// HMAC SHA-512 with a shared secret.
    HS512,
    /// RSA PKCS#1 v1.5 SHA-256.
    RS256,
    /// ECDSA P-256 SHA-256.
    ES256,
}

/// Auth mode selector.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Ticket → user map, for development.
    #[default]
    Static,
    /// Signed JSON Web Tokens.
    Jwt,
    /// Ask a backend upstream.
    Webhook,
}

/// `tenants[i].auth`. One flat struct so the YAML reads as README "Configuration" shows it; the
/// fields a mode needs are checked by `validate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `static`, `jwt` or `webhook`.
    pub mode: AuthMode,
    /// `static`: ticket → user id.
    pub tickets: BTreeMap<String, String>,
    /// `jwt`: the one algorithm accepted (pinned; `none` never is).
    pub algorithm: Option<JwtAlgorithm>,
    /// `jwt` HS*: name of the environment variable holding the secret.
    pub secret_env: Option<String>,
    /// `jwt` RS256/ES256: PEM public key file.
    pub public_key_file: Option<String>,
    /// `jwt` RS256/ES256: JWKS file.
    pub jwks_file: Option<String>,
    /// `jwt` RS256/ES256: JWKS URL, fetched at load and refreshed.
    pub jwks_url: Option<String>,
    /// `jwt`: required `iss` when set.
    pub issuer: Option<String>,
    /// `jwt`: required `aud` when set.
    pub audience: Option<String>,
    /// `jwt`: claim naming the user (default `sub`).
    pub user_claim: Option<String>,
    /// `webhook`: upstream name in `backend.upstreams`.
    pub upstream: Option<String>,
    /// `webhook`: path on that upstream.
    pub path: Option<String>,
    /// `jwt`: close a session when its token's `exp` passes (Close 4005).
    pub close_at_expiry: bool,
}

/// `tenants[i].limits`; 0 means unlimited for the four caps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest client frame or reassembled message; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Sessions the tenant may hold at once.
    pub max_sessions_total: u64,
    /// Rooms that may exist at once (default 100,000; 0 = no cap, an
    /// explicit opt-in).
    pub max_rooms_total: u64,
    /// Members per room (0 = no cap).
    pub max_users_per_room: u64,
    /// Rooms one session may be in (default 128; 0 = no cap).
    pub max_rooms_per_user: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_sessions_total: 0,
            max_rooms_total: 100_000,
            max_users_per_room: 0,
            max_rooms_per_user: 128,
        }
    }
}

/// What a rate limit is counted against.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// Each session has its own bucket.
    #[default]
    Connection,
    /// All sessions of one user share a bucket.
    User,
    /// The whole tenant shares one bucket.
    Tenant,
}

/// One session or many per user.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// At most one session per user.
    Single,
    /// Up to `max_sessions_per_user`.
    #[default]
    Multi,
}

/// What happens when a user is at the session cap.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Refuse the new session with 409.
    #[default]
    Deny,
    /// Close the oldest session with 4001.
    KickOldest,
}

/// Hot Lane refusal reporting.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HotErrorMode {
    /// Drop and count.
    #[default]
    Silent,
    /// Answer with a `sys.error` text frame.
    Error,
    /// Close the session with 1008.
    Close,
}

/// `tenants[i].policy.sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsPolicyConfig {
    /// `single` or `multi`.
    pub mode: SessionMode,
    /// Cap for `multi` (ignored for `single`, which is 1).
    pub max_sessions_per_user: u32,
    /// `deny` (409) or `kick_oldest` (4001).
    pub on_exceed: OnExceed,
}

impl Default for SessionsPolicyConfig {
    fn default() -> Self {
        Self {
            mode: SessionMode::Multi,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            on_exceed: OnExceed::Deny,
        }
    }
}

/// `tenants[i].policy.error_budget`: repeated refusals close the session (1008).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorBudgetConfig {
    /// Refusals allowed inside one window; 0 disables the budget.
    pub max_errors: u32,
    /// Window length.
    pub window_ms: u64,
}

impl Default for ErrorBudgetConfig {
    fn default() -> Self {
        Self {
            max_errors: DEFAULT_ERROR_BUDGET_MAX_ERRORS,
            window_ms: DEFAULT_ERROR_BUDGET_WINDOW_MS,
        }
    }
}

/// `tenants[i].policy`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Sustained messages per second (both lanes, control frames included).
    pub rate_limit_rps: u32,
    /// Burst on top of the sustained rate.
    pub rate_limit_burst: u32,
    /// Which bucket a message is counted against.
    pub rate_limit_scope: RateLimitScope,
    /// Inbound payload bytes per second per connection (text and binary
    /// frames), with a burst of 2 s worth (at least one `max_frame_bytes`
    /// frame); beyond it a frame is refused with `RATE_LIMITED`. 0 = no byte
    /// limit (an explicit opt-in).
    pub max_bytes_per_sec: u32,
    /// Session policy.
    pub sessions: SessionsPolicyConfig,
    /// Repeated-abuse budget.
    pub error_budget: ErrorBudgetConfig,
    /// Ext Lane `svc:type` patterns; empty allows nothing.
    pub ext_allowlist: Vec<Pattern<ExtPattern>>,
    /// Hot Lane `svc_id:opcode` patterns; empty allows nothing.
    pub hot_allowlist: Vec<Pattern<HotPattern>>,
    /// How Hot Lane refusals are reported.
    pub hot_error_mode: HotErrorMode,
    /// Refuse Hot Lane frames from sessions with no active room.
    pub hot_requires_active_room: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rate_limit_rps: DEFAULT_RATE_LIMIT_RPS,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            rate_limit_scope: RateLimitScope::Connection,
            max_bytes_per_sec: DEFAULT_MAX_BYTES_PER_SEC,
            sessions: SessionsPolicyConfig::default(),
            error_budget: ErrorBudgetConfig::default(),
            ext_allowlist: Vec::new(),
            hot_allowlist: Vec::new(),
            hot_error_mode: HotErrorMode::Silent,
            hot_requires_active_room: true,
        }
    }
}

/// `tenants[i].rooms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Tell members when others join and leave.
    pub presence_events: bool,
    /// Publications retained per room for recovery; 0 = off.
    pub history_size: usize,
    /// How long retained publications live.
    pub history_ttl_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            presence_events: false,
            history_size: 0,
            history_ttl_ms: DEFAULT_HISTORY_TTL_MS,
        }
    }
}

/// `tenants[i].routes[j]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Ext Lane service name clients send in `svc`.
    pub svc: String,
    /// Plugin file stem in `gateway.plugins.dir`.
    pub plugin: String,
}

/// Native Hot Lane service kinds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HotServiceKind {
    /// Deliver to the other members of the sender's active room.
    Relay,
    /// Send the frame back to the sender.
    Echo,
}

/// `tenants[i].hot_services[j]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HotServiceConfig {
    /// The `svc_id` byte this service answers.
    pub id: u8,
    /// `relay` or `echo`.
    pub kind: HotServiceKind,
    /// `relay`: deliver to the sender too.
    #[serde(default)]
    pub include_sender: bool,
    /// `relay`: prefix the payload with the sender's peer number, set flag 0x80.
    #[serde(default)]
    pub stamp_sender: bool,
    /// `relay`: latest wins (SPEC §6). A frame replaces the still-queued
    /// frame of the same sender, svc and opcode in each receiver's lossy
    /// queue, so a slow receiver gets the newest state, not a backlog.
    #[serde(default)]
    pub conflate: bool,
}

/// `tenants[i].backend`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// Named HTTP upstreams (auth webhook, events, plugin backend calls).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Lifecycle notifications.
    pub events: EventsConfig,
}

/// `tenants[i].backend.upstreams.<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL (`http://` or `https://`).
    pub url: String,
    /// Bound on one request.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_upstream_timeout_ms() -> u64 {
    DEFAULT_UPSTREAM_TIMEOUT_MS
}

/// `tenants[i].backend.events`: upstream names to notify.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// POSTed `{"event":"connect",...}` when a session opens.
    pub connect: Option<String>,
    /// POSTed `{"event":"disconnect",...}` when a session closes.
    pub disconnect: Option<String>,
}
