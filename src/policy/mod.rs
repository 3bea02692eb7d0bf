//! Policy: allowlists, rate limits and the per-tenant compiled policy.
//!
//! Owns: the decision whether a message may pass. It returns decisions and never
//! writes to a session; `lanes` turn refusals into frames.

pub mod allowlist;
