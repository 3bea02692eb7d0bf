//! Allowlist matchers: the compiled Ext and Hot Lane allowlists must answer
//! exactly like a naive scan over the parsed patterns (deny by default, an
//! invalid pattern never widens access). Input: patterns, one per line, then a
//! `\0` and the queries (`svc:type` lines; the last two bytes are a hot header).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsprism::policy::allowlist::{ExtAllowlist, ExtPattern, HotAllowlist, HotPattern};

fn ext_reference(patterns: &[ExtPattern], svc: &str, ty: &str) -> bool {
    patterns.iter().any(|p| match p {
        ExtPattern::Any => true,
        ExtPattern::Service(s) => s == svc,
        ExtPattern::Exact(s, t) => s == svc && t == ty,
    })
}

fn hot_reference(patterns: &[HotPattern], svc: u8, op: u8) -> bool {
    patterns.iter().any(|p| match *p {
        HotPattern::Any => true,
        HotPattern::Service(s) => s == svc,
        HotPattern::Exact(s, o) => s == svc && o == op,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pats, queries) = text.split_once('\0').unwrap_or((text, ""));
    let lines: Vec<String> = pats.lines().take(64).map(str::to_owned).collect();

    let ext = ExtAllowlist::compile(&lines);
    let ext_parsed: Vec<ExtPattern> = lines
        .iter()
        .filter_map(|l| ExtPattern::parse(l).ok())
        .collect();
    for p in &ext_parsed {
        // Accepted names are plain identifiers: no whitespace, separators or
        // control characters can sneak into a pattern.
        let names: Vec<&str> = match p {
            ExtPattern::Any => vec![],
            ExtPattern::Service(s) => vec![s],
            ExtPattern::Exact(s, t) => vec![s, t],
        };
        for n in names {
            assert!(!n.is_empty() && n.len() <= 64, "{n:?}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                "{n:?}"
            );
        }
    }
    for q in queries.lines().take(64) {
        let (svc, ty) = q.split_once(':').unwrap_or((q, ""));
        assert_eq!(
            ext.allows(svc, ty),
            ext_reference(&ext_parsed, svc, ty),
            "ext {svc:?}:{ty:?} against {lines:?}"
        );
    }
    if ext_parsed.is_empty() {
        assert!(!ext.allows("room", "join"), "deny by default");
    }

    let hot = HotAllowlist::compile(&lines);
    let hot_parsed: Vec<HotPattern> = lines
        .iter()
        .filter_map(|l| HotPattern::parse(l).ok())
        .collect();
    let mut probes: Vec<(u8, u8)> = vec![(0, 0), (255, 255), (1, 0)];
    probes.extend(queries.as_bytes().chunks_exact(2).take(64).map(|c| (c[0], c[1])));
    for p in &hot_parsed {
        match *p {
            HotPattern::Exact(s, o) => {
                probes.push((s, o));
                probes.push((s, o.wrapping_add(1)));
                probes.push((s.wrapping_add(1), o));
            }
            HotPattern::Service(s) => probes.push((s, 7)),
            HotPattern::Any => {}
        }
    }
    for (s, o) in probes {
        assert_eq!(
            hot.allows(s, o),
            hot_reference(&hot_parsed, s, o),
            "hot {s}:{o} against {lines:?}"
        );
    }
});
