//! `auth.mode: static`: a fixed ticket → user map, for development.
//!
//! Lookups hash the presented ticket and compare it with every configured ticket's
//! hash without stopping early, so response time does not tell an attacker how
//! many leading bytes of a guess were right, nor which entry matched.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::AuthError;

/// The configured tickets, stored as SHA-256 digests.
pub(super) struct StaticTickets {
    /// `(sha256(ticket), user)`; digests are fixed length, so comparing them leaks
    /// nothing about the ticket's length either.
    entries: Vec<([u8; 32], Arc<str>)>,
}

impl StaticTickets {
    pub(super) fn new(tickets: &BTreeMap<String, String>) -> Self {
        let entries = tickets
            .iter()
            .map(|(ticket, user)| (digest(ticket), Arc::from(user.as_str())))
            .collect();
        Self { entries }
    }

    pub(super) fn lookup(&self, ticket: &str) -> Result<Arc<str>, AuthError> {
        let presented = digest(ticket);
        let mut found = None;
        for (expected, user) in &self.entries {
            // Every entry is compared; no early exit on the first match.
            if constant_time_eq(expected, &presented) {
                found = Some(user);
            }
        }
        found
            .cloned()
            .ok_or(AuthError::Invalid("unknown static ticket"))
    }
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

/// Compares two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // `black_box` keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}
