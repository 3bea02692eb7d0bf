//! Transport: TCP accept loop with bounded request-head time, the `/v1/ws`
//! upgrade, the per-session reader/writer task, the heartbeat sweep (pings and
//! idle timeouts) and the raw diagnostics echo.
//! Input is a socket; output is decoded frames handed to `lanes` and bytes
//! written from a session's outbox.

pub(crate) mod client_ip;
pub(crate) mod echo;
pub(crate) mod heartbeat;
pub(crate) mod listener;
pub(crate) mod session;
pub(crate) mod tls;
pub(crate) mod upgrade;
pub(crate) mod writer;
pub(crate) mod ws;
