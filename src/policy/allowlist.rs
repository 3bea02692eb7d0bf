//! Deny-by-default allowlists for both lanes.
//!
//! Owns: parsing `svc:type` / `svc:*` / `*` (Ext Lane) and `svc_id:opcode` /
//! `svc_id:*` / `*` (Hot Lane) patterns, and answering "is this allowed?" without
//! allocating. Compiled once per config version by `policy::TenantPolicy`.

use std::collections::{HashMap, HashSet};

/// One parsed Ext Lane pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtPattern {
    /// `*`: everything.
    Any,
    /// `svc:*`: every type of one service.
    Service(String),
    /// `svc:type`: exactly one message type.
    Exact(String, String),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ExtPattern {
    /// Parses one pattern.
    ///
    /// # Errors
    /// A message naming the malformed pattern and the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let bad = || format!("`{s}` is not an allowlist pattern; use `svc:type`, `svc:*` or `*`");
        let (svc, ty) = s.split_once(':').ok_or_else(bad)?;
        if !valid_name(svc) {
            return Err(bad());
        }
        if ty == "*" {
            Ok(Self::Service(svc.to_owned()))
        } else if valid_name(ty) {
            Ok(Self::Exact(svc.to_owned(), ty.to_owned()))
        } else {
            Err(bad())
        }
    }
}

/// A compiled Ext Lane allowlist.
#[derive(Debug, Clone, Default)]
pub struct ExtAllowlist {
    any: bool,
    services: HashSet<String>,
    exact: HashMap<String, HashSet<String>>,
}

impl ExtAllowlist {
    /// Compiles patterns; invalid ones were refused by config validation, and are
    /// skipped here so a bad pattern can never widen access.
    pub fn compile<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Self {
        let mut out = Self::default();
        for p in patterns {
            match ExtPattern::parse(p) {
                Ok(ExtPattern::Any) => out.any = true,
                Ok(ExtPattern::Service(s)) => {
                    out.services.insert(s);
                }
                Ok(ExtPattern::Exact(s, t)) => {
                    out.exact.entry(s).or_default().insert(t);
                }
                Err(_) => {}
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

/// One parsed Hot Lane pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotPattern {
    /// `*`: every frame.
    Any,
    /// `svc_id:*`.
    Service(u8),
    /// `svc_id:opcode`.
    Exact(u8, u8),
}

impl HotPattern {
    /// Parses one pattern.
    ///
    /// # Errors
    /// A message naming the malformed pattern and the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        let bad = || {
            format!(
                "`{s}` is not a hot allowlist pattern; use `svc_id:opcode` or `svc_id:*` with numbers 0-255"
            )
        };
        let (svc, op) = s.split_once(':').ok_or_else(bad)?;
        let svc: u8 = svc.parse().map_err(|_| bad())?;
        if op == "*" {
            Ok(Self::Service(svc))
        } else {
            Ok(Self::Exact(svc, op.parse().map_err(|_| bad())?))
        }
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
    pub fn compile<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Self {
        let mut bits = Box::new([0u64; 1024]);
        let mut set = |svc: u8, op: u8| {
            let idx = (usize::from(svc) << 8) | usize::from(op);
            bits[idx >> 6] |= 1 << (idx & 63);
        };
        for p in patterns {
            match HotPattern::parse(p) {
                Ok(HotPattern::Any) => {
                    (0..=255u8).for_each(|s| (0..=255u8).for_each(|o| set(s, o)))
                }
                Ok(HotPattern::Service(s)) => (0..=255u8).for_each(|o| set(s, o)),
                Ok(HotPattern::Exact(s, o)) => set(s, o),
                Err(_) => {}
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
        let owned: Vec<String> = p.iter().map(|s| (*s).to_owned()).collect();
        ExtAllowlist::compile(&owned)
    }

    fn hot(p: &[&str]) -> HotAllowlist {
        let owned: Vec<String> = p.iter().map(|s| (*s).to_owned()).collect();
        HotAllowlist::compile(&owned)
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
    fn malformed_ext_patterns_are_refused() {
        for bad in [
            "",
            "room",
            "room:",
            ":join",
            "room:jo in",
            "a:b:c",
            "*:join",
        ] {
            assert!(ExtPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            ExtPattern::parse("chat:send"),
            Ok(ExtPattern::Exact("chat".into(), "send".into()))
        );
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
        for bad in ["256:1", "1:256", "x:1", "1", "-1:*", "1:*:2"] {
            assert!(HotPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
