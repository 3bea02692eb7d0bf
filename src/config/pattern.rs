//! Allowlist patterns and proxy CIDRs, parsed while the config is read.
//!
//! Owns: the grammar of `svc:type` / `svc:*` / `*` (Ext Lane) and
//! `svc_id:opcode` / `svc_id:*` / `*` (Hot Lane) patterns. Each entry of
//! `policy.ext_allowlist` / `policy.hot_allowlist` is parsed when it is
//! deserialized; a malformed one is kept with its error so validation can
//! report every bad pattern at once, each with its YAML path. `policy` compiles
//! the parsed patterns into lookup tables and never sees a raw string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

impl FromStr for ExtPattern {
    type Err = String;

    /// # Errors
    /// A message naming the malformed pattern and the accepted forms.
    fn from_str(s: &str) -> Result<Self, String> {
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

impl FromStr for HotPattern {
    type Err = String;

    /// # Errors
    /// A message naming the malformed pattern and the accepted forms.
    fn from_str(s: &str) -> Result<Self, String> {
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

/// One `gateway.trusted_proxies` entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or
/// a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is inside the network (an IPv4-mapped IPv6 address is
    /// compared as the IPv4 address it carries).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// # Errors
    /// A message naming the text and the accepted forms.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(Self)
            .map_err(|_| {
                format!("`{s}` is not an IP network; write a CIDR like 10.0.0.0/8 or an address")
            })
    }
}

/// One allowlist (or proxy CIDR) entry: the text as written and what it
/// parsed to.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern<P> {
    raw: String,
    parsed: Result<P, String>,
}

impl<P> Pattern<P> {
    /// The parsed pattern; `None` when the text is malformed (validation
    /// refuses such a config, so a compiled policy never meets one).
    pub fn get(&self) -> Option<&P> {
        self.parsed.as_ref().ok()
    }

    /// Why the text is not a pattern, if it is not.
    pub fn error(&self) -> Option<&str> {
        self.parsed.as_ref().err().map(String::as_str)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl<P: FromStr<Err = String>> From<&str> for Pattern<P> {
    fn from(raw: &str) -> Self {
        Self {
            raw: raw.to_owned(),
            parsed: raw.parse(),
        }
    }
}

impl<P> fmt::Debug for Pattern<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.raw, f)
    }
}

impl<P> Serialize for Pattern<P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de, P: FromStr<Err = String>> Deserialize<'de> for Pattern<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Ok(Self::from(raw.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert!(bad.parse::<ExtPattern>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "chat:send".parse(),
            Ok(ExtPattern::Exact("chat".into(), "send".into()))
        );
        assert_eq!("chat:*".parse(), Ok(ExtPattern::Service("chat".into())));
        assert_eq!("*".parse(), Ok(ExtPattern::Any));
    }

    #[test]
    fn hot_patterns_take_numbers_0_to_255() {
        assert_eq!("1:*".parse(), Ok(HotPattern::Service(1)));
        assert_eq!("2:10".parse(), Ok(HotPattern::Exact(2, 10)));
        for bad in ["256:1", "1:256", "x:1", "1", "-1:*", "1:*:2"] {
            assert!(bad.parse::<HotPattern>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_bad_entry_keeps_its_text_and_error() {
        let p: Pattern<ExtPattern> = serde_yaml::from_str("\"chat\"").expect("a string");
        assert_eq!(p.as_str(), "chat");
        assert!(p.get().is_none());
        assert!(p.error().is_some_and(|e| e.contains("`chat`")));
        let ok: Pattern<HotPattern> = serde_yaml::from_str("\"1:*\"").expect("a string");
        assert_eq!(ok.get(), Some(&HotPattern::Service(1)));
        assert_eq!(
            serde_yaml::to_string(&ok).expect("serializes").trim(),
            "1:*"
        );
    }
}
