//! Error types per layer, the client-facing error contract and the one mapping
//! between them.
//!
//! Owns: every code a client can see, in one table: the handshake refusals
//! ([`HandshakeRefusal`], a plain HTTP answer before the upgrade), the `sys.error`
//! codes ([`ClientCode`]), the server API's error codes ([`ApiCode`]) and the
//! WebSocket close codes ([`CloseCode`]). Each entry carries what the client sees,
//! when it happens and what to do; [`markdown_table`] renders them for README.md
//! (a test keeps the two equal). It also owns [`StartupError`], whose
//! [`StartupError::exit_code`] is the one mapping from a failed start to the
//! process exit code.
//!
//! Internal detail stays in the `Display` of the layer errors, which go to logs;
//! clients get a code plus the safe message from the table or an explicitly safe
//! detail.
//!
//! Must not: format internal errors into client messages, or spell a wire code
//! anywhere but here.

use std::net::SocketAddr;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::config::ConfigError;

/// The stable `sys.error` codes (README "Errors"). Adding a variant is a protocol change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientCode {
    /// The message is not a valid envelope (bad JSON, missing or mistyped field).
    BadRequest,
    /// `v` is a number other than 1.
    UnsupportedVersion,
    /// The tenant's allowlist does not admit this `svc:type` / `svc_id:opcode`.
    NotAllowed,
    /// The rate limit for this session/user/tenant is exhausted.
    RateLimited,
    /// An outgoing payload (plugin publish, server API) exceeds `max_frame_bytes`.
    PayloadTooLarge,
    /// No built-in service, route or hot service answers this `svc`.
    UnknownService,
    /// The message names a room the session has not joined, or needs an active room.
    NotInRoom,
    /// The room is at `max_users_per_room`.
    RoomFull,
    /// `max_rooms_total` or `max_rooms_per_user` reached.
    RoomLimit,
    /// The plugin refused the message or failed in a way it reported.
    ServiceError,
    /// The plugin is missing, timed out or trapped.
    ServiceUnavailable,
    /// The gateway failed; details are in its logs.
    Internal,
}

impl ClientCode {
    /// Every code, for docs and tests.
    pub const ALL: [ClientCode; 12] = [
        Self::BadRequest,
        Self::UnsupportedVersion,
        Self::NotAllowed,
        Self::RateLimited,
        Self::PayloadTooLarge,
        Self::UnknownService,
        Self::NotInRoom,
        Self::RoomFull,
        Self::RoomLimit,
        Self::ServiceError,
        Self::ServiceUnavailable,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BAD_REQUEST",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::NotAllowed => "NOT_ALLOWED",
            Self::RateLimited => "RATE_LIMITED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::UnknownService => "UNKNOWN_SERVICE",
            Self::NotInRoom => "NOT_IN_ROOM",
            Self::RoomFull => "ROOM_FULL",
            Self::RoomLimit => "ROOM_LIMIT",
            Self::ServiceError => "SERVICE_ERROR",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// A generic, safe message for the code.
    pub fn message(self) -> &'static str {
        match self {
            Self::BadRequest => "malformed message",
            Self::UnsupportedVersion => "unsupported protocol version; send v:1",
            Self::NotAllowed => "not allowed by the tenant's allowlist",
            Self::RateLimited => "rate limit exceeded; slow down",
            Self::PayloadTooLarge => "payload exceeds max_frame_bytes",
            Self::UnknownService => "no service answers this svc",
            Self::NotInRoom => "join the room first",
            Self::RoomFull => "room is full",
            Self::RoomLimit => "room limit reached",
            Self::ServiceError => "service refused the message",
            Self::ServiceUnavailable => "service unavailable",
            Self::Internal => "internal error",
        }
    }

    /// HTTP status for the same refusal on the server API.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnsupportedVersion => 400,
            Self::NotAllowed => 403,
            Self::RateLimited => 429,
            Self::PayloadTooLarge => 413,
            Self::UnknownService | Self::NotInRoom => 404,
            Self::RoomFull | Self::RoomLimit => 409,
            Self::ServiceError => 422,
            Self::ServiceUnavailable => 503,
            Self::Internal => 500,
        }
    }

    /// Low-cardinality metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotAllowed => "not_allowed",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnknownService => "unknown_service",
            Self::NotInRoom => "not_in_room",
            Self::RoomFull => "room_full",
            Self::RoomLimit => "room_limit",
            Self::ServiceError => "service_error",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Internal => "internal",
        }
    }

    /// When a client gets the code (the README's "when" column).
    pub fn when(self) -> &'static str {
        match self {
            Self::BadRequest => {
                "not a valid envelope: bad JSON, missing/mistyped field, unknown `type` of a built-in service, `data` nested too deeply; on the server API, a body that is not the endpoint's JSON shape"
            }
            Self::UnsupportedVersion => "`v` is a number other than 1",
            Self::NotAllowed => {
                "the tenant's allowlist does not admit this `svc:type` (or Hot Lane `svc_id:opcode`); `svc: \"sys\"` on the server API"
            }
            Self::RateLimited => {
                "the session's / user's / tenant's message budget, or the connection's inbound byte budget (`max_bytes_per_sec`), is spent"
            }
            Self::PayloadTooLarge => {
                "an outgoing payload (plugin publish, server API) would exceed `max_frame_bytes`"
            }
            Self::UnknownService => {
                "no built-in service, route or Hot Lane service answers this `svc`"
            }
            Self::NotInRoom => "the room was not joined, or a Hot Lane frame needs an active room",
            Self::RoomFull => "the room is at `max_users_per_room`",
            Self::RoomLimit => "`max_rooms_total` or `max_rooms_per_user` reached",
            Self::ServiceError => {
                "the routed service refused the message; `reason` is its own code, `msg` its `CODE: text`"
            }
            Self::ServiceUnavailable => {
                "the routed service is missing, timed out or failed, or refuses this session for a while after its messages made the plugin fault `max_faults_per_session` times; `reason` says which"
            }
            Self::Internal => "the gateway failed; details are in its logs",
        }
    }

    /// What the client (or operator) should do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::BadRequest => "fix the message; resending it unchanged fails again",
            Self::UnsupportedVersion => "send `\"v\":1`",
            Self::NotAllowed => {
                "stop sending it, or add the pattern to the tenant's `policy.ext_allowlist` / `hot_allowlist`"
            }
            Self::RateLimited => {
                "slow down, then retry; repeated refusals spend the error budget (close 1008)"
            }
            Self::PayloadTooLarge => "send less, or raise the tenant's `limits.max_frame_bytes`",
            Self::UnknownService => {
                "check the `svc` name, or route it (`routes`, `hot_services`) in the tenant's config"
            }
            Self::NotInRoom => "send `room.join` for that room first",
            Self::RoomFull => "try another room, or later",
            Self::RoomLimit => "leave a room first, or raise the limit",
            Self::ServiceError => {
                "branch on `reason`, the service's own code; do not retry unchanged"
            }
            Self::ServiceUnavailable => {
                "retry with backoff (`reason`: trap, timeout, memory, missing, backing_off, session_backing_off, overloaded); operators: see `GET /v1/api/tenants/{t}/plugins` and the logs"
            }
            Self::Internal => "retry; operators: the gateway's logs name the cause",
        }
    }
}

/// WebSocket close codes the gateway sends (README "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the gateway is draining or the tenant went away.
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text frame was not UTF-8.
    InvalidPayload,
    /// 1008: repeated abuse past the error budget, or `hot_error_mode: close`.
    Policy,
    /// 1009: a frame or message over `max_frame_bytes`.
    TooBig,
    /// 1011: internal failure.
    Internal,
    /// 4001: replaced by a newer session of the same user.
    Replaced,
    /// 4002: slow consumer (reliable queue full).
    SlowConsumer,
    /// 4003: no inbound traffic for `idle_timeout_ms`.
    IdleTimeout,
    /// 4004: disconnected through the server API.
    Disconnected,
    /// 4005: the session's JWT expired (`auth.close_at_expiry`).
    TokenExpired,
}

impl CloseCode {
    /// Every code, for docs and tests.
    pub const ALL: [CloseCode; 12] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::Policy,
        Self::TooBig,
        Self::Internal,
        Self::Replaced,
        Self::SlowConsumer,
        Self::IdleTimeout,
        Self::Disconnected,
        Self::TokenExpired,
    ];

    /// Numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidPayload => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Internal => 1011,
            Self::Replaced => 4001,
            Self::SlowConsumer => 4002,
            Self::IdleTimeout => 4003,
            Self::Disconnected => 4004,
            Self::TokenExpired => 4005,
        }
    }

    /// The code with this number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Metric label for why a session ended.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::GoingAway => "going_away",
            Self::ProtocolError => "protocol_error",
            Self::InvalidPayload => "invalid_payload",
            Self::Policy => "policy",
            Self::TooBig => "too_big",
            Self::Internal => "internal",
            Self::Replaced => "replaced",
            Self::SlowConsumer => "slow_consumer",
            Self::IdleTimeout => "idle_timeout",
            Self::Disconnected => "disconnected",
            Self::TokenExpired => "token_expired",
        }
    }

    /// When the gateway closes with this code.
    pub fn when(self) -> &'static str {
        match self {
            Self::Normal => "normal closure",
            Self::GoingAway => "the gateway is draining, or the tenant was removed from the config",
            Self::ProtocolError => "WebSocket protocol violation",
            Self::InvalidPayload => "a text frame that is not UTF-8",
            Self::Policy => "repeated abuse past the error budget, or `hot_error_mode: close`",
            Self::TooBig => {
                "a frame or message over `max_frame_bytes`, or more than twice that plus 64 KiB sent without completing a message"
            }
            Self::Internal => "internal failure",
            Self::Replaced => "replaced by a newer session of the same user (`kick_oldest`)",
            Self::SlowConsumer => "slow consumer: the reliable queue overflowed",
            Self::IdleTimeout => "no inbound traffic (pongs included) for `idle_timeout_ms`",
            Self::Disconnected => "disconnected through the server API",
            Self::TokenExpired => {
                "the session's JWT reached its `exp` (`auth.close_at_expiry: true`)"
            }
        }
    }

    /// What the client should do after this close.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::Normal => "nothing",
            Self::GoingAway => "reconnect with backoff (another instance may serve you)",
            Self::ProtocolError | Self::InvalidPayload => {
                "fix the client's WebSocket framing; do not reconnect in a loop"
            }
            Self::Policy => "fix what the `sys.error` frames before it said, then reconnect",
            Self::TooBig => "send smaller messages, then reconnect",
            Self::Internal => "reconnect with backoff; operators: see the logs",
            Self::Replaced => "do not reconnect automatically: the newer session is the live one",
            Self::SlowConsumer => "read faster (or subscribe to less), then reconnect",
            Self::IdleTimeout => "answer pings or send traffic within `idle_timeout_ms`",
            Self::Disconnected => {
                "the backend ended the session; reconnect only if your app allows it"
            }
            Self::TokenExpired => "reconnect with a fresh ticket",
        }
    }
}

/// Why an upgrade of `GET /v1/ws` was refused before the 101 (README "Errors").
///
/// The client gets [`http_status`](Self::http_status) and
/// `{"error": id, "msg": message}`; [`id`](Self::id) is also the `result` label
/// of `wsprism_handshakes_total`. Several variants share a status and an id (three
/// kinds of bad query are all `400 bad_request`); their messages differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// The public listener is at `gateway.max_connections` (answered at accept,
    /// to any request on that connection).
    OverCapacity,
    /// The gateway is draining.
    Draining,
    /// The global or per-IP handshake limiter is exhausted.
    RateLimited {
        /// Seconds until a token is available (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The query does not decode to UTF-8 (`tenant=%FF`).
    MalformedQuery,
    /// `tenant` or `ticket` appears twice in the query.
    DuplicateParameter,
    /// No (or an empty) `tenant` query parameter.
    MissingTenant,
    /// `refusal=` with a value other than `close`.
    BadRefusalMode,
    /// No configured tenant has that id.
    UnknownTenant,
    /// The request is not a WebSocket upgrade.
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    UnsupportedWsVersion,
    /// `Origin` present and not in the tenant's `allowed_origins`.
    ForbiddenOrigin,
    /// The tenant is at `max_sessions_total`.
    TenantFull,
    /// Neither `ticket=` nor `Authorization: Bearer`.
    MissingTicket,
    /// The ticket is invalid, expired, too long or refused by the auth webhook.
    Unauthorized,
    /// `on_exceed: deny` and the user is at `max_sessions_per_user`.
    UserLimit,
}

impl HandshakeRefusal {
    /// Every refusal in admission order, for docs and tests (`RateLimited` with a
    /// placeholder delay).
    pub const ALL: [HandshakeRefusal; 15] = [
        Self::OverCapacity,
        Self::Draining,
        Self::RateLimited {
            retry_after_secs: 1,
        },
        Self::MalformedQuery,
        Self::DuplicateParameter,
        Self::MissingTenant,
        Self::BadRefusalMode,
        Self::UnknownTenant,
        Self::NotUpgrade,
        Self::UnsupportedWsVersion,
        Self::ForbiddenOrigin,
        Self::TenantFull,
        Self::MissingTicket,
        Self::Unauthorized,
        Self::UserLimit,
    ];

    /// The HTTP status of the refusal.
    pub fn http_status(self) -> u16 {
        match self {
            Self::OverCapacity | Self::Draining | Self::TenantFull => 503,
            Self::RateLimited { .. } => 429,
            Self::MalformedQuery
            | Self::DuplicateParameter
            | Self::MissingTenant
            | Self::BadRefusalMode
            | Self::NotUpgrade => 400,
            Self::MissingTicket => 400,
            Self::UnknownTenant => 404,
            Self::UnsupportedWsVersion => 426,
            Self::ForbiddenOrigin => 403,
            Self::Unauthorized => 401,
            Self::UserLimit => 409,
        }
    }

    /// Stable machine-readable id: the body's `error` field and the metric label.
    pub fn id(self) -> &'static str {
        match self {
            Self::OverCapacity => "over_capacity",
            Self::Draining => "draining",
            Self::RateLimited { .. } => "rate_limited",
            Self::MalformedQuery
            | Self::DuplicateParameter
            | Self::MissingTenant
            | Self::BadRefusalMode
            | Self::MissingTicket => "bad_request",
            Self::UnknownTenant => "unknown_tenant",
            Self::NotUpgrade | Self::UnsupportedWsVersion => "bad_upgrade",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::TenantFull => "tenant_full",
            Self::Unauthorized => "unauthorized",
            Self::UserLimit => "user_limit",
        }
    }

    /// The safe message in the body's `msg` field.
    pub fn message(self) -> &'static str {
        match self {
            Self::OverCapacity => "gateway is at max_connections",
            Self::Draining => "gateway is draining",
            Self::RateLimited { .. } => "too many connection attempts",
            Self::MalformedQuery => "query is not UTF-8",
            Self::DuplicateParameter => "duplicate query parameter",
            Self::MissingTenant => "missing tenant query parameter",
            Self::BadRefusalMode => "refusal must be close",
            Self::UnknownTenant => "unknown tenant",
            Self::NotUpgrade => "not a WebSocket upgrade request",
            Self::UnsupportedWsVersion => "unsupported Sec-WebSocket-Version; use 13",
            Self::ForbiddenOrigin => "origin not allowed",
            Self::TenantFull => "tenant is at capacity",
            Self::MissingTicket => "missing ticket",
            Self::Unauthorized => "invalid ticket",
            Self::UserLimit => "too many sessions for this user",
        }
    }

    /// When a client gets this refusal.
    pub fn when(self) -> &'static str {
        match self {
            Self::OverCapacity => {
                "the public listener has `gateway.max_connections` sockets open (any request; past a small margin new connections are closed at accept)"
            }
            Self::Draining => "the gateway is shutting down (SIGTERM/SIGINT)",
            Self::RateLimited { .. } => {
                "handshake rate limit (`gateway.handshake_limit`, global or per IP)"
            }
            Self::MalformedQuery => {
                "the query's percent-escapes decode to bytes that are not UTF-8 (e.g. `tenant=%FF`)"
            }
            Self::DuplicateParameter => "`tenant`, `ticket` or `refusal` given twice in the query",
            Self::MissingTenant => "no `tenant` in the query",
            Self::BadRefusalMode => "`refusal=` with a value other than `close`",
            Self::UnknownTenant => "no configured tenant has that id",
            Self::NotUpgrade => {
                "a plain HTTP request: no `Connection: upgrade` / `Upgrade: websocket`, or no valid `Sec-WebSocket-Key`"
            }
            Self::UnsupportedWsVersion => "`Sec-WebSocket-Version` other than 13",
            Self::ForbiddenOrigin => {
                "`Origin` present and not in the tenant's `allowed_origins` (exact match)"
            }
            Self::TenantFull => "the tenant is at `sessions.max_sessions_total`",
            Self::MissingTicket => "neither `ticket=` nor `Authorization: Bearer <token>`",
            Self::Unauthorized => {
                "ticket invalid, expired, over 8 KiB or refused by the auth webhook"
            }
            Self::UserLimit => {
                "`sessions.on_exceed: deny` and the user is at `max_sessions_per_user`"
            }
        }
    }

    /// The close code a client that asked for `refusal=close` gets instead of
    /// the HTTP answer: 4000 + status for the refusals a browser must tell
    /// apart (401, 403, 404, 409, 429, 503). `None`: the refusal stays plain
    /// HTTP (a bad query or not a WebSocket upgrade at all).
    pub fn close_code(self) -> Option<u16> {
        if self == Self::OverCapacity {
            // Answered at accept, before any route or query is read.
            return None;
        }
        let status = self.http_status();
        matches!(status, 401 | 403 | 404 | 409 | 429 | 503).then_some(4000 + status)
    }

    /// The close reason sent with [`close_code`](Self::close_code): the id, and
    /// for a rate limit the delay that `Retry-After` would carry.
    pub fn close_reason(self) -> String {
        match self {
            Self::RateLimited { retry_after_secs } => {
                format!("{}; retry after {retry_after_secs} s", self.id())
            }
            _ => self.id().to_owned(),
        }
    }

    /// What the client (or operator) should do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::OverCapacity | Self::Draining => {
                "reconnect with backoff; another instance may serve you"
            }
            Self::RateLimited { .. } => "wait `Retry-After` seconds, then retry",
            Self::MalformedQuery => "percent-encode the UTF-8 bytes of each value",
            Self::DuplicateParameter => "send each parameter once",
            Self::MissingTenant => "add `tenant=<id>`",
            Self::BadRefusalMode => "send `refusal=close`, or leave it out",
            Self::UnknownTenant => "check the tenant id; do not retry",
            Self::NotUpgrade | Self::UnsupportedWsVersion => {
                "connect with a WebSocket (RFC 6455, version 13) client"
            }
            Self::ForbiddenOrigin => {
                "serve the page from an allowed origin, or add it to the config"
            }
            Self::TenantFull => "retry with backoff",
            Self::MissingTicket => "send a ticket",
            Self::Unauthorized => "get a fresh ticket from your backend; do not retry the same one",
            Self::UserLimit => "close another session of this user first",
        }
    }
}

impl IntoResponse for HandshakeRefusal {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: &'static str,
            msg: &'static str,
        }
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (
            status,
            Json(Body {
                error: self.id(),
                msg: self.message(),
            }),
        )
            .into_response();
        match self {
            Self::RateLimited { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::OverCapacity => {
                let h = resp.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::UnsupportedWsVersion => {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            _ => {}
        }
        resp
    }
}

/// The `code` of a server API error body `{"code","msg"}` (README "Server API"): the API's
/// own key checks, or a `sys.error` code answered with
/// [`ClientCode::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiCode {
    /// Missing or wrong key. An unknown tenant answers the same, so tenant ids
    /// cannot be probed without a valid key.
    Unauthorized,
    /// The key belongs to another tenant.
    Forbidden,
    /// A refusal spelled like the wire's.
    Client(ClientCode),
}

impl ApiCode {
    /// The API's own codes (the rest are [`ClientCode::ALL`]), for docs and tests.
    pub const OWN: [ApiCode; 2] = [Self::Unauthorized, Self::Forbidden];

    /// The HTTP status of the answer.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::Client(code) => code.http_status(),
        }
    }

    /// The body's `code`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::Client(code) => code.as_str(),
        }
    }

    /// The generic, safe message for the code.
    pub fn message(self) -> &'static str {
        match self {
            Self::Unauthorized => "missing or invalid API key; send Authorization: Bearer <key>",
            Self::Forbidden => "this API key belongs to another tenant",
            Self::Client(code) => code.message(),
        }
    }

    /// When the API answers with the code.
    pub fn when(self) -> &'static str {
        match self {
            Self::Unauthorized => {
                "missing or wrong `Authorization: Bearer <key>`, or an unknown tenant (answered alike so tenant ids cannot be probed)"
            }
            Self::Forbidden => "the key is one of another tenant's `api_keys`",
            Self::Client(code) => code.when(),
        }
    }

    /// What the caller should do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::Unauthorized => "send one of the tenant's `api_keys`; check the tenant id",
            Self::Forbidden => "use the key of the tenant in the URL",
            Self::Client(code) => code.remedy(),
        }
    }
}

impl From<ClientCode> for ApiCode {
    fn from(code: ClientCode) -> Self {
        Self::Client(code)
    }
}

/// Exit code for a config the gateway refuses (`EX_USAGE`-style; README "Command line").
pub const EXIT_CONFIG: u8 = 64;
/// Exit code for any other startup or serve failure.
pub const EXIT_FAILURE: u8 = 1;

/// Why the gateway could not start. `wsprism check` and `wsprism start` map it
/// through [`exit_code`](Self::exit_code), so the same bad config exits the same
/// way from both.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The config is wrong: it does not parse or validate, or a tenant's keys or
    /// secrets cannot be loaded. Every problem carries its YAML path.
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigError),
    /// A listener cannot be bound (address in use, no permission).
    #[error(
        "cannot listen on {addr} ({field}): {source}; stop the process using it or change {field}"
    )]
    Bind {
        /// The config field naming the address (`gateway.listen`, `gateway.admin_listen`).
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The WASM plugin host cannot start.
    #[error("cannot start the plugin host: {0}")]
    Plugins(String),
    /// Cluster mode cannot start.
    #[error("cannot start cluster mode: {0}")]
    Cluster(String),
    /// The async runtime cannot start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// Serving failed after a successful bind.
    #[error("the gateway failed while serving: {0}")]
    Serve(#[source] std::io::Error),
}

impl StartupError {
    /// The process exit code: [`EXIT_CONFIG`] (64) when the config is wrong,
    /// [`EXIT_FAILURE`] (1) otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Bind { .. }
            | Self::Plugins(_)
            | Self::Cluster(_)
            | Self::Runtime(_)
            | Self::Serve(_) => EXIT_FAILURE,
        }
    }
}

/// First line of the generated block in README.md.
pub const TABLE_START: &str = "<!-- error-table:start -->";
/// Last line of the generated block in README.md.
pub const TABLE_END: &str = "<!-- error-table:end -->";

/// Renders the client-facing error contract as the Markdown block README.md
/// carries between [`TABLE_START`] and [`TABLE_END`] (markers included).
pub fn markdown_table() -> String {
    let mut md = format!(
        "{TABLE_START}\n<!-- generated by wsprism::error::markdown_table() from src/error.rs: edit the code, then paste the block its failing test prints -->\n"
    );
    section(
        &mut md,
        "Handshake refusals",
        "A refused upgrade gets a plain HTTP answer with the body \
         `{\"error\":\"<id>\",\"msg\":\"...\"}`; the id is also the `result` label of \
         `wsprism_handshakes_total`. Checked in this order. Browsers cannot read that \
         status: with `&refusal=close` in the query, the refusals with a close code \
         below are upgraded and closed at once with that code and the id as reason \
         (plus `; retry after N s` for 429), so a client can tell a final refusal \
         from a retryable one.",
        &[
            "HTTP",
            "`refusal=close`",
            "`error`",
            "`msg`",
            "when",
            "what to do",
        ],
        HandshakeRefusal::ALL.map(|r| {
            let status = match r {
                HandshakeRefusal::RateLimited { .. } => "429 + `Retry-After`".to_owned(),
                HandshakeRefusal::OverCapacity => "503 + `Retry-After`".to_owned(),
                HandshakeRefusal::UnsupportedWsVersion => {
                    "426 + `Sec-WebSocket-Version: 13`".to_owned()
                }
                _ => r.http_status().to_string(),
            };
            [
                status,
                r.close_code()
                    .map_or_else(|| "HTTP".to_owned(), |c| c.to_string()),
                format!("`{}`", r.id()),
                r.message().to_owned(),
                r.when().to_owned(),
                r.remedy().to_owned(),
            ]
        }),
    );
    section(
        &mut md,
        "`sys.error` codes",
        "A refused message gets \
         `{\"v\":1,\"svc\":\"sys\",\"type\":\"error\",\"seq\":7,\"data\":{\"code\":\"NOT_ALLOWED\",\"msg\":\"...\"}}` \
         and the session stays open. The server API answers the same refusal with the \
         HTTP status shown.",
        &["code", "server API HTTP", "when", "what to do"],
        ClientCode::ALL.map(|c| {
            [
                format!("`{}`", c.as_str()),
                c.http_status().to_string(),
                c.when().to_owned(),
                c.remedy().to_owned(),
            ]
        }),
    );
    section(
        &mut md,
        "Server API errors",
        "Errors are `{\"code\":\"...\",\"msg\":\"...\"}`: the codes below, or a \
         `sys.error` code with its server API status from the table above.",
        &["HTTP", "`code`", "when", "what to do"],
        ApiCode::OWN.map(|c| {
            [
                c.http_status().to_string(),
                format!("`{}`", c.as_str()),
                c.when().to_owned(),
                c.remedy().to_owned(),
            ]
        }),
    );
    section(
        &mut md,
        "Close codes",
        "",
        &["code", "when", "what to do"],
        CloseCode::ALL.map(|c| {
            [
                c.code().to_string(),
                c.when().to_owned(),
                c.remedy().to_owned(),
            ]
        }),
    );
    md.push_str(TABLE_END);
    md.push('\n');
    md
}

/// Appends one `###` section with a Markdown table to `md`.
fn section<const N: usize>(
    md: &mut String,
    title: &str,
    intro: &str,
    columns: &[&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) {
    md.push_str("\n### ");
    md.push_str(title);
    md.push_str("\n\n");
    if !intro.is_empty() {
        md.push_str(intro);
        md.push_str("\n\n");
    }
    md.push_str("| ");
    md.push_str(&columns.join(" | "));
    md.push_str(" |\n|");
    md.push_str(&"---|".repeat(N));
    md.push('\n');
    for row in rows {
        md.push_str("| ");
        md.push_str(&row.join(" | "));
        md.push_str(" |\n");
    }
}

/// Why a room operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The session is not a member.
    #[error("session is not in the room")]
    NotInRoom,
    /// `max_users_per_room` reached.
    #[error("room is full")]
    RoomFull,
    /// `max_rooms_total` or `max_rooms_per_user` reached.
    #[error("room limit reached")]
    RoomLimit,
    /// The session is gone.
    #[error("session is closed")]
    SessionGone,
}

/// Why a plugin call failed. Callers match on the kind; the `String`s are
/// detail for logs only and never reach a client (see [`ToRefusal`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The plugin answered with a refusal; `code`/`message` are the plugin's own and
    /// reach the client inside `SERVICE_ERROR`.
    #[error("plugin refused: {code}: {message}")]
    Refused {
        /// Plugin-defined code.
        code: String,
        /// Plugin-defined message (already safe to show).
        message: String,
    },
    /// No plugin file for the route (never loaded, deleted, failed to load).
    #[error("plugin `{0}` is not loaded")]
    Missing(String),
    /// The plugin is backing off: its version failed to instantiate, or
    /// faulted for several users, repeatedly.
    #[error("plugin is backing off after repeated failures")]
    BackingOff,
    /// The plugin refuses this session alone for a while: its calls made the
    /// plugin fault `max_faults_per_session` times.
    #[error("plugin refuses this session for a while after its repeated faults")]
    SessionBackingOff,
    /// No capacity for the call: too many calls queued for the plugin's
    /// instances, the instance pool is exhausted, or the host is draining.
    #[error("plugin is overloaded")]
    Overloaded,
    /// The CPU budget (`call_timeout_ms`) or the wall-clock bound ran out.
    #[error("plugin call timed out")]
    Timeout,
    /// The instance hit `max_memory_bytes` (a refused memory or table grow).
    #[error("plugin hit its memory limit")]
    Memory,
    /// The instance trapped (panic, unreachable, out-of-bounds access, stack
    /// overflow) or failed to start (an `init` refusal, a bad export).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin's output broke a host rule.
    #[error("plugin output refused: {0}")]
    BadOutput(OutputRule),
    /// An outgoing payload exceeded `max_frame_bytes`.
    #[error("plugin payload too large")]
    PayloadTooLarge,
}

/// The host rule a plugin's output broke ([`PluginError::BadOutput`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutputRule {
    /// More host calls in one call than the per-call budget allows.
    #[error("host call budget exceeded")]
    HostCalls,
    /// More `data` bytes queued in one call than the per-call budget allows.
    #[error("published bytes budget exceeded")]
    PublishedBytes,
    /// An effect's `data` is not valid JSON text.
    #[error("data is not valid JSON")]
    InvalidJson,
}

impl PluginError {
    /// Metric label (`reason` of `wsprism_plugin_errors_total`); stable.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Missing(_) => "missing",
            Self::BackingOff => "backing_off",
            Self::SessionBackingOff => "session_backing_off",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap(_) => "trap",
            Self::BadOutput(_) => "bad_output",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// A refusal on its way to the client: code plus safe message, and a
/// machine-readable `reason` where one code covers several causes (a plugin's
/// own refusal code under `SERVICE_ERROR`; `trap`, `timeout`, `memory`, ...
/// under `SERVICE_UNAVAILABLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Wire code.
    pub code: ClientCode,
    /// Safe, human-readable text.
    pub msg: String,
    /// `data.reason` of the `sys.error`, when there is one.
    pub reason: Option<String>,
}

impl Refusal {
    /// A refusal with the code's generic message.
    pub fn new(code: ClientCode) -> Self {
        Self::with_msg(code, code.message())
    }

    /// A refusal with a specific safe message.
    pub fn with_msg(code: ClientCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            reason: None,
        }
    }

    /// The same refusal with a machine-readable `reason`.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

impl From<ClientCode> for Refusal {
    fn from(code: ClientCode) -> Self {
        Self::new(code)
    }
}

/// The one mapping from internal errors to what a client sees.
pub trait ToRefusal {
    /// Code and safe message.
    fn to_refusal(&self) -> Refusal;
}

impl ToRefusal for RoomError {
    fn to_refusal(&self) -> Refusal {
        match self {
            Self::NotInRoom => Refusal::new(ClientCode::NotInRoom),
            Self::RoomFull => Refusal::new(ClientCode::RoomFull),
            Self::RoomLimit => Refusal::new(ClientCode::RoomLimit),
            Self::SessionGone => Refusal::new(ClientCode::Internal),
        }
    }
}

impl ToRefusal for PluginError {
    fn to_refusal(&self) -> Refusal {
        match self {
            Self::Refused { code, message } => {
                Refusal::with_msg(ClientCode::ServiceError, format!("{code}: {message}"))
                    .with_reason(code.as_str())
            }
            Self::PayloadTooLarge => Refusal::new(ClientCode::PayloadTooLarge),
            Self::BadOutput(_) => Refusal::new(ClientCode::ServiceError).with_reason(self.label()),
            Self::Missing(_)
            | Self::BackingOff
            | Self::SessionBackingOff
            | Self::Overloaded
            | Self::Timeout
            | Self::Memory
            | Self::Trap(_) => {
                Refusal::new(ClientCode::ServiceUnavailable).with_reason(self.label())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ClientCode::ALL {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(seen.insert(code.as_str()));
        }
    }

    /// README.md carries the table [`markdown_table`] renders; on a mismatch the
    /// failure prints the block to paste.
    #[test]
    fn readme_error_table_is_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap_or_default();
        let in_readme = readme.find(TABLE_START).and_then(|start| {
            let len = readme[start..].find(TABLE_END)? + TABLE_END.len();
            Some(&readme[start..start + len])
        });
        let expected = markdown_table();
        assert!(
            in_readme == Some(expected.trim_end()),
            "README.md's error table and src/error.rs disagree; replace README.md's \
             error-table block (start and end markers included) with:\n\n{expected}"
        );
    }

    #[test]
    fn table_cells_do_not_break_markdown() {
        let mut cells = Vec::new();
        for r in HandshakeRefusal::ALL {
            cells.extend([r.message(), r.when(), r.remedy()]);
        }
        for c in ClientCode::ALL {
            cells.extend([c.when(), c.remedy()]);
        }
        for c in ApiCode::OWN {
            cells.extend([c.when(), c.remedy()]);
        }
        for c in CloseCode::ALL {
            cells.extend([c.when(), c.remedy()]);
        }
        for cell in cells {
            assert!(!cell.is_empty() && !cell.contains('|') && !cell.contains('\n'));
        }
    }

    #[test]
    fn codes_are_unique_and_stable() {
        let mut seen = std::collections::HashSet::new();
        for r in HandshakeRefusal::ALL {
            assert!(seen.insert((r.http_status(), r.id(), r.message())), "{r:?}");
            assert!(r.id().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        let mut api = std::collections::HashSet::new();
        for c in ApiCode::OWN
            .into_iter()
            .chain(ClientCode::ALL.map(ApiCode::Client))
        {
            assert!(api.insert(c.as_str()), "{c:?}");
        }
        let mut close = std::collections::HashSet::new();
        for c in CloseCode::ALL {
            assert!(close.insert(c.code()), "{c:?}");
        }
    }

    #[tokio::test]
    async fn handshake_refusal_response() {
        let resp = HandshakeRefusal::RateLimited {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from_static("7"))
        );
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .unwrap_or_default();
        assert_eq!(
            &body[..],
            br#"{"error":"rate_limited","msg":"too many connection attempts"}"#
        );
        let resp = HandshakeRefusal::UnsupportedWsVersion.into_response();
        assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(
            resp.headers().get(header::SEC_WEBSOCKET_VERSION),
            Some(&HeaderValue::from_static("13"))
        );
    }

    #[test]
    fn startup_exit_codes() {
        let config = StartupError::from(ConfigError { issues: Vec::new() });
        assert_eq!(config.exit_code(), 64);
        let bind = StartupError::Bind {
            field: "gateway.listen",
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(bind.exit_code(), 1);
        assert!(bind.to_string().contains("gateway.listen"));
        assert_eq!(StartupError::Plugins("x".into()).exit_code(), 1);
    }

    #[test]
    fn plugin_failures_map_to_spec_codes() {
        use ClientCode::{PayloadTooLarge, ServiceError, ServiceUnavailable};
        let cases = [
            (
                PluginError::Missing("p".into()),
                "missing",
                ServiceUnavailable,
            ),
            (PluginError::BackingOff, "backing_off", ServiceUnavailable),
            (
                PluginError::SessionBackingOff,
                "session_backing_off",
                ServiceUnavailable,
            ),
            (PluginError::Overloaded, "overloaded", ServiceUnavailable),
            (PluginError::Timeout, "timeout", ServiceUnavailable),
            (PluginError::Memory, "memory", ServiceUnavailable),
            (
                PluginError::Trap("unreachable".into()),
                "trap",
                ServiceUnavailable,
            ),
            (
                PluginError::BadOutput(OutputRule::InvalidJson),
                "bad_output",
                ServiceError,
            ),
            (
                PluginError::PayloadTooLarge,
                "payload_too_large",
                PayloadTooLarge,
            ),
        ];
        for (e, label, code) in cases {
            assert_eq!((e.label(), e.to_refusal().code), (label, code), "{e:?}");
            // Internal detail stays in the logs; the kind is the reason.
            let refusal = e.to_refusal();
            assert_eq!(refusal.msg, code.message(), "{e:?}");
            let reason = (code != PayloadTooLarge).then(|| label.to_owned());
            assert_eq!(refusal.reason, reason, "{e:?}");
        }
        let r = PluginError::Refused {
            code: "NO_VOTE".into(),
            message: "poll closed".into(),
        };
        assert_eq!(r.label(), "refused");
        let r = r.to_refusal();
        assert_eq!(r.code, ClientCode::ServiceError);
        assert_eq!(r.msg, "NO_VOTE: poll closed");
        assert_eq!(r.reason.as_deref(), Some("NO_VOTE"));
    }
}
