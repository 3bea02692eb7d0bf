//! Realtime state: per-session outbound queues and the per-tenant broker of
//! sessions, users, rooms and presence. Producers push encoded frames here; the
//! session writer drains them.

pub mod broker;
pub mod history;
pub mod liveness;
pub mod outbox;
pub mod session_id;

pub use session_id::SessionId;
