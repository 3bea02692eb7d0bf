//! [`SessionId`]: a session's identity inside the process and on the wire.
//!
//! A session id is a 64-bit number, unique within the process (allocated from
//! a counter that starts at a random value, so ids are not guessable across
//! restarts). Clients see it as 16 lowercase hex digits (`sys.authed`'s `sid`,
//! lifecycle webhooks' `sid`): that is its [`Display`](std::fmt::Display) form,
//! and nothing else in the crate formats session ids. Plugins see the same
//! number as the WIT `session.sid()` `u64` ([`SessionId::get`]): the hex text
//! a client reports is `format!("{:016x}", sid)` of what its plugin saw.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A session's id (see the module docs for its forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id with this number.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number plugins see (`session.sid()`).
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<u64> for SessionId {
    fn from(n: u64) -> Self {
        Self(n)
    }
}

impl fmt::Display for SessionId {
    /// The wire form: 16 lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl serde::Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Hands out fresh session ids.
#[derive(Debug)]
pub struct SessionIds(AtomicU64);

impl SessionIds {
    /// A counter starting at a random point (ids are not guessable across
    /// restarts; 2^52 ids fit before the wire form would wrap).
    pub fn random() -> Self {
        Self(AtomicU64::new(rand::random::<u64>() >> 12))
    }

    /// The next id.
    pub fn next(&self) -> SessionId {
        SessionId(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_16_hex_digits_of_the_plugin_number() {
        let sid = SessionId::new(0xab);
        assert_eq!(sid.to_string(), "00000000000000ab");
        assert_eq!(sid.get(), 0xab);
        assert_eq!(
            serde_json::to_string(&SessionId::new(u64::MAX))
                .ok()
                .as_deref(),
            Some("\"ffffffffffffffff\"")
        );
        let ids = SessionIds::random();
        let (a, b) = (ids.next(), ids.next());
        assert_eq!(b.get(), a.get() + 1);
        assert_eq!(u64::from_str_radix(&a.to_string(), 16).ok(), Some(a.get()));
    }
}
