//! Deny-by-default allowlists for both lanes.
//!
//! Owns: answering "is this allowed?" without allocating, from the patterns
//! the config parsed (`crate::config::pattern`). Compiled once per config
//! version by `policy::TenantPolicy`.

use std::collections::{HashMap, HashSet};

use crate::config::pattern::{ExtPattern, HotPattern, Pattern};

/// A compiled Ext Lane allowlist.
#[derive(Debug, Clone, Default)]
pub struct ExtAllowlist {
    any: bool,
    services: HashSet<String>,
    exact: HashMap<String, HashSet<String>>,
}

impl ExtAllowlist {
    /// Compiles patterns; malformed ones were refused by config validation, and
    /// are skipped here so a bad pattern can never widen access.
    pub fn compile<'a>(patterns: impl IntoIterator<Item = &'a Pattern<ExtPattern>>) -> Self {
        let mut out = Self::default();
        for p in patterns.into_iter().filter_map(Pattern::get) {
            match p {
                ExtPattern::Any => out.any = true,
                ExtPattern::Service(s) => {
                    out.services.insert(s.clone());
                }
                ExtPattern::Exact(s, t) => {
                    out.exact.entry(s.clone()).or_default().insert(t.clone());
                }
            }
        }
        out
    }

    /// Whether `svc:ty` may pass.
    pub fn allows(&self, svc: &str, ty: &str) -> bool {
        self.any
            || self.services.contains(svc)
            || self.exact.get(svc).is_some_and(|types| types.contains(ty))
    }
}

/// A compiled Hot Lane allowlist: one bit per (svc_id, opcode), 8 KiB.
#[derive(Clone)]
pub struct HotAllowlist {
    bits: Box<[u64; 1024]>,
}

impl std::fmt::Debug for HotAllowlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let allowed = self.bits.iter().map(|w| w.count_ones()).sum::<u32>();
        f.debug_struct("HotAllowlist")
            .field("allowed", &allowed)
            .finish()
    }
}

impl HotAllowlist {
    /// Compiles patterns (invalid ones skipped, as for [`ExtAllowlist::compile`]).
    pub fn compile<'a>(patterns: impl IntoIterator<Item = &'a Pattern<HotPattern>>) -> Self {
        let mut bits = Box::new([0u64; 1024]);
        let mut set = |svc: u8, op: u8| {
            let idx = (usize::from(svc) << 8) | usize::from(op);
            bits[idx >> 6] |= 1 << (idx & 63);
        };
        for p in patterns.into_iter().filter_map(Pattern::get) {
            match *p {
                HotPattern::Any => (0..=255u8).for_each(|s| (0..=255u8).for_each(|o| set(s, o))),
                HotPattern::Service(s) => (0..=255u8).for_each(|o| set(s, o)),
                HotPattern::Exact(s, o) => set(s, o),
            }
        }
        Self { bits }
    }

    /// Whether a frame with this header may pass.
    #[inline]
    pub fn allows(&self, svc: u8, op: u8) -> bool {
        let idx = (usize::from(svc) << 8) | usize::from(op);
        self.bits[idx >> 6] & (1 << (idx & 63)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(p: &[&str]) -> ExtAllowlist {
        let parsed: Vec<Pattern<ExtPattern>> = p.iter().map(|s| Pattern::from(*s)).collect();
        ExtAllowlist::compile(&parsed)
    }

    fn hot(p: &[&str]) -> HotAllowlist {
        let parsed: Vec<Pattern<HotPattern>> = p.iter().map(|s| Pattern::from(*s)).collect();
        HotAllowlist::compile(&parsed)
    }

    #[test]
    fn empty_ext_allowlist_denies_everything() {
        let a = ext(&[]);
        assert!(!a.allows("room", "join"));
        assert!(!a.allows("", ""));
    }

    #[test]
    fn ext_patterns_match_exactly_what_they_name() {
        let a = ext(&["room:*", "chat:send"]);
        assert!(a.allows("room", "join"));
        assert!(a.allows("room", "anything"));
        assert!(a.allows("chat", "send"));
        assert!(!a.allows("chat", "delete"));
        assert!(!a.allows("roomx", "join"));
        assert!(!a.allows("echo", "send"));
        let all = ext(&["*"]);
        assert!(all.allows("whatever", "x"));
    }

    #[test]
    fn malformed_patterns_never_widen_access() {
        assert!(!ext(&["room", "*:join", "room:jo in"]).allows("room", "join"));
        assert!(!hot(&["1", "x:*", "256:1"]).allows(1, 1));
    }

    #[test]
    fn hot_patterns() {
        let a = hot(&["1:*", "2:10"]);
        assert!(a.allows(1, 0));
        assert!(a.allows(1, 255));
        assert!(a.allows(2, 10));
        assert!(!a.allows(2, 11));
        assert!(!a.allows(3, 10));
        assert!(!hot(&[]).allows(0, 0));
        assert!(hot(&["*"]).allows(200, 7));
    }
}
