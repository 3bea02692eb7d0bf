//! Error types per layer, the wire contract ([`ClientCode`], [`CloseCode`]) and the
//! one mapping between them.
//!
//! Owns: every code a client can see. Internal detail stays in the `Display` of the
//! layer errors, which go to logs; clients get [`ClientCode`] plus the safe message
//! from [`ClientCode::message`] or an explicitly safe detail.

use serde::Serialize;

/// The stable `sys.error` codes (SPEC §4). Adding a variant is a protocol change.
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
}

/// WebSocket close codes the gateway sends (SPEC §4).
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
}

impl CloseCode {
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
        }
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
        }
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
    /// The plugin is backing off after repeated crashes.
    #[error("plugin is backing off after repeated failures")]
    BackingOff,
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
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::Trap(_) => "trap",
            Self::BadOutput(_) => "bad_output",
            Self::PayloadTooLarge => "payload_too_large",
        }
    }
}

/// A refusal on its way to the client: code plus safe message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Wire code.
    pub code: ClientCode,
    /// Safe, human-readable text.
    pub msg: String,
}

impl Refusal {
    /// A refusal with the code's generic message.
    pub fn new(code: ClientCode) -> Self {
        Self {
            code,
            msg: code.message().to_owned(),
        }
    }

    /// A refusal with a specific safe message.
    pub fn with_msg(code: ClientCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
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
            }
            Self::PayloadTooLarge => Refusal::new(ClientCode::PayloadTooLarge),
            Self::BadOutput(_) => Refusal::new(ClientCode::ServiceError),
            Self::Missing(_)
            | Self::BackingOff
            | Self::Overloaded
            | Self::Timeout
            | Self::Memory
            | Self::Trap(_) => Refusal::new(ClientCode::ServiceUnavailable),
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
            // Internal detail stays in the logs.
            assert_eq!(e.to_refusal().msg, code.message(), "{e:?}");
        }
        let r = PluginError::Refused {
            code: "NO_VOTE".into(),
            message: "poll closed".into(),
        };
        assert_eq!(r.label(), "refused");
        let r = r.to_refusal();
        assert_eq!(r.code, ClientCode::ServiceError);
        assert_eq!(r.msg, "NO_VOTE: poll closed");
    }
}
