//! A bound on flow-collection nesting, checked before the YAML parser runs.
//!
//! The YAML scanner behind `serde_yaml` revisits every open flow level (`[`
//! or `{`) on every token, so a file of deeply nested flow collections costs
//! time growing with the square of its depth (20,000 levels: half a second;
//! 100,000: tens of seconds), all of it spent before the parser's own
//! recursion limit of 128 refuses the file. This pass reads the text once and
//! refuses it at the first line where the nesting passes [`MAX_FLOW_DEPTH`].
//!
//! It follows the YAML scanner where brackets are concerned: a bracket opens
//! a collection inside a flow collection or where a block node starts (after
//! indentation, `- `, `? `, `key: ` and node properties), and is text inside
//! quoted scalars (which may span lines), comments, block scalars (`|`, `>`)
//! and a plain scalar's continuation lines, which it tells by indentation
//! without keeping a stack of it. Tests hold it to the parser on random
//! texts both ways: it never counts deeper than the value the parser reads,
//! and it finds the nesting the parser reads. The limit is far above any
//! real config's nesting (and the parser's), so it cannot refuse one.

/// Deepest flow nesting accepted. The parser refuses anything past 128
/// levels anyway; at this depth its scanner spends about a millisecond.
pub(super) const MAX_FLOW_DEPTH: usize = 1_000;

/// Where the nesting first passes `limit`: the 1-based line.
pub(super) fn too_deep_at(text: &str, limit: usize) -> Option<usize> {
    let mut scan = Scan::default();
    for (index, line) in text.lines().enumerate() {
        if scan.line(line, limit) {
            return Some(index + 1);
        }
    }
    None
}

#[derive(Default)]
struct Scan {
    /// Open flow collections.
    depth: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<u8>,
    /// Lines indented more than this are text: a block scalar's (`|`, `>`)
    /// or a plain scalar's continuation (-1: every line, at the root).
    text_above: Option<isize>,
    /// A block indicator or a flow collection was seen: until then, any node
    /// is the document's root, whose text may go on at any indentation.
    structured: bool,
    /// The last line ended after a block indicator (`key:`, `-`, `?`): the
    /// node on the next line belongs to it.
    pending_parent: Option<isize>,
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `bytes[i]` is followed by a blank or the end of the line.
fn ends_token(bytes: &[u8], i: usize) -> bool {
    bytes.get(i + 1).is_none_or(|&b| is_blank(b))
}

/// The index just past the quoted scalar's closing quote, searching from
/// `from` (after the opening quote); `None` when it continues on the next line.
fn close_quote(bytes: &[u8], from: usize, quote: u8) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 2,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            b if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

impl Scan {
    /// Scans one line; true when the nesting passed `limit` on it.
    fn line(&mut self, line: &str, limit: usize) -> bool {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let blank = bytes.iter().all(|&b| is_blank(b));
        // A document marker ends whatever came before it; a directive
        // (`%YAML`) precedes a document.
        let marker = (bytes.starts_with(b"---") || bytes.starts_with(b"..."))
            && bytes.get(3).is_none_or(|&b| is_blank(b));
        if marker {
            *self = Self::default();
        } else if bytes.first() == Some(&b'%') && !self.structured {
            return false;
        }
        if let Some(parent) = self.text_above {
            if blank || indent.cast_signed() > parent {
                return false;
            }
            self.text_above = None;
        }
        let mut i = if marker { 3 } else { 0 };
        if let Some(quote) = self.quote {
            match close_quote(bytes, 0, quote) {
                Some(end) => {
                    self.quote = None;
                    i = end;
                }
                None => return false,
            }
        }
        // A node may start here (a bracket opens a collection, a quote a
        // quoted scalar). Every block line may start one; a flow collection
        // keeps the state across lines.
        let mut node_start = i == 0 || marker || self.depth > 0;
        // Where the current block token starts, and the column that text
        // belonging to the current block node must be indented past: the
        // key's for `key: `, the indicator's for `- ` and `? `, and at most
        // this line's indentation for a node without either.
        let mut token_col = indent;
        let mut parent = match self.pending_parent {
            Some(p) if !blank && bytes[indent] != b'#' => {
                self.pending_parent = None;
                p
            }
            _ if self.structured => indent.cast_signed() - 1,
            _ => -1,
        };
        let mut indicated = false;
        // Properties (`!tag`, `&anchor`) seen since the last token: the node
        // they belong to starts at the first of them.
        let mut props = false;
        let mut in_plain = false;
        // Just past a token that is not plain text: the YAML scanner takes a
        // `#` here as a comment even with no blank before it.
        let mut boundary = true;
        while i < bytes.len() {
            let b = bytes[i];
            if is_blank(b) {
                i += 1;
                continue;
            }
            if b == b'#' && (boundary || is_blank(bytes[i - 1])) {
                break;
            }
            boundary = false;
            if node_start && (b == b'\'' || b == b'"') {
                if !std::mem::take(&mut props) {
                    token_col = i;
                }
                in_plain = false;
                match close_quote(bytes, i + 1, b) {
                    Some(end) => {
                        i = end;
                        boundary = true;
                        // A quoted key may be followed by `:` with no blank.
                        node_start = false;
                        if bytes.get(i) == Some(&b':') {
                            parent = token_col.cast_signed();
                            node_start = true;
                            i += 1;
                        }
                        continue;
                    }
                    None => {
                        self.quote = Some(b);
                        return false;
                    }
                }
            }
            if (b == b'[' || b == b'{') && (node_start || self.depth > 0) {
                self.depth += 1;
                if self.depth > limit {
                    return true;
                }
                self.structured = true;
                boundary = true;
                node_start = true;
                in_plain = false;
                i += 1;
                continue;
            }
            if self.depth > 0 {
                match b {
                    b']' | b'}' => {
                        boundary = true;
                        self.depth -= 1;
                        node_start = self.depth > 0 && bytes.get(i + 1) == Some(&b':');
                        if node_start {
                            i += 1;
                        }
                    }
                    b',' => {
                        boundary = true;
                        node_start = true;
                    }
                    b':' | b'?' if ends_token(bytes, i) => {
                        boundary = true;
                        node_start = true;
                    }
                    _ => node_start = false,
                }
                i += 1;
                continue;
            }
            match b {
                b'-' | b'?' if node_start && ends_token(bytes, i) => {
                    self.structured = true;
                    boundary = true;
                    indicated = true;
                    props = false;
                    token_col = i;
                    parent = i.cast_signed();
                }
                b':' if ends_token(bytes, i) => {
                    self.structured = true;
                    boundary = true;
                    indicated = true;
                    props = false;
                    parent = token_col.cast_signed();
                    node_start = true;
                    in_plain = false;
                }
                b'!' | b'&' if node_start => {
                    // A tag or anchor: the node itself follows it.
                    if !std::mem::replace(&mut props, true) {
                        token_col = i;
                    }
                    while i < bytes.len() && !is_blank(bytes[i]) {
                        i += 1;
                    }
                    continue;
                }
                b'|' | b'>' if node_start => {
                    self.text_above = Some(parent);
                    return false;
                }
                _ => {
                    if node_start {
                        if !std::mem::take(&mut props) {
                            token_col = i;
                        }
                        in_plain = true;
                    }
                    node_start = false;
                }
            }
            i += 1;
        }
        // A plain scalar may go on over more-indented lines, and no node
        // starts inside it.
        if self.depth == 0 && in_plain {
            self.text_above = Some(parent);
        } else if self.depth == 0 && node_start && indicated {
            self.pending_parent = Some(parent);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flow_collections_in_block_positions() {
        assert_eq!(too_deep_at("a: [[[1]]]\n", 3), None);
        assert_eq!(too_deep_at("a: [[[[1]]]]\n", 3), Some(1));
        assert_eq!(too_deep_at("x: 1\n- {a: [{b: [1]}]}\n", 3), Some(2));
        assert_eq!(too_deep_at("[[[[\n", 3), Some(1));
        assert_eq!(too_deep_at("? [[[[a]]]]\n: 1\n", 3), Some(1));
        assert_eq!(too_deep_at("a: !!seq &x [[[[1]]]]\n", 3), Some(1));
        // Across lines, closed and reopened.
        let text = "a: [\n  [\n    [1],\n    [\n      [2]\n    ]\n  ]\n]\n";
        assert_eq!(too_deep_at(text, 4), None);
        assert_eq!(too_deep_at(text, 3), Some(5));
        // JSON-style keys inside flow mappings.
        assert_eq!(too_deep_at(r#"{"a":[{"b":[1]}]}"#, 3), Some(1));
        assert_eq!(too_deep_at(r#"{"a":[{"b":1}]}"#, 3), None);
    }

    #[test]
    fn brackets_in_text_are_not_nesting() {
        let text = r#"
# [[[[ a comment
a: 'it''s [[[[' # [[[[
b: "say \" [[[[ "
c: plain [[[[ text
d: "starts here [[[[
  and ends [[[[ here"
e: |
  [[[[ literal
    [[[[ more
f: >-
  [[[[ folded
- |
  [[[[ in a sequence
- key: |
    [[[[ under a nested key
  other: [1]
g: [ "]]]]", '[[[[', a#b ]
h: [[1], [2], [3], [4], [5]]
"#;
        assert_eq!(too_deep_at(text, 2), None);
        // The nested key's sibling after the block scalar is scanned again.
        let sibling = "- key: |\n    text\n  other: [[[1]]]\n";
        assert_eq!(too_deep_at(sibling, 2), Some(3));
        // A quoted string ends on a later line and the scan resumes there.
        let resumed = "a: \"one\n  two\" \nb: [[[1]]]\n";
        assert_eq!(too_deep_at(resumed, 2), Some(3));
        // Directives and document markers: the scan starts over.
        assert_eq!(too_deep_at("%YAML 1.1\n---\na: [[[1]]]\n", 2), Some(3));
        assert_eq!(too_deep_at("--- [[[1]]]\n", 2), Some(1));
        assert_eq!(too_deep_at("a: |\n  text\n---\n[[[1]]]\n", 2), Some(4));
        assert_eq!(too_deep_at("root scalar\n[[[x\n...\n[[[1]]]\n", 2), Some(4));
        // A `"]"` inside a flow collection does not close it.
        assert_eq!(too_deep_at(r#"a: [ "]", [ "]", [ "]" ] ] ]"#, 2), Some(1));
    }

    #[test]
    fn the_reference_configs_are_far_from_the_limit() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = vec![
            root.join("wsprism.yaml"),
            root.join("bench/wsprism-bench.yaml"),
            root.join("bench/wsprism-bench-jwt.yaml"),
            root.join("deploy/prometheus/alerts.yml"),
        ];
        for entry in std::fs::read_dir(root.join("tests/fixtures/config")).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read config");
            assert_eq!(too_deep_at(&text, 3), None, "{}", file.display());
        }
    }

    /// Nesting of a parsed value (collections in either style).
    fn value_depth(v: &serde_yaml::Value) -> usize {
        match v {
            serde_yaml::Value::Sequence(s) => 1 + s.iter().map(value_depth).max().unwrap_or(0),
            serde_yaml::Value::Mapping(m) => {
                1 + m
                    .iter()
                    .map(|(k, v)| value_depth(k).max(value_depth(v)))
                    .max()
                    .unwrap_or(0)
            }
            serde_yaml::Value::Tagged(t) => value_depth(&t.value),
            _ => 0,
        }
    }

    /// Random texts built from YAML's indicators (and `deep` where the
    /// text has a `Q`), from a fixed seed.
    fn random_texts(seed: u64, count: usize, deep: &str) -> impl Iterator<Item = String> {
        const PIECES: &[&str] = &[
            "[", "]", "{", "}", "'", "\"", "#", "|", ">", "- ", ": ", "? ", " ", "\n", "\n  ",
            "\n    ", ",", "a", "b", "\\", "!t ", "&x ", "\n--- ", "\n...\n", "Q",
        ];
        let mut state = seed;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let deep = deep.to_owned();
        (0..count).map(move |_| {
            let len = next() % 30;
            (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect::<String>()
                .replace('Q', &deep)
        })
    }

    /// Every random text the parser accepts is scanned as nested no deeper
    /// than the value it parses to: the scan never refuses what the parser
    /// would read.
    #[test]
    fn never_counts_deeper_than_the_parser_reads() {
        let mut parsed = 0;
        for text in random_texts(0x9e37_79b9_7f4a_7c15, 200_000, "a") {
            let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
                continue;
            };
            parsed += 1;
            let depth = value_depth(&value);
            assert_eq!(too_deep_at(&text, depth), None, "depth {depth}: {text:?}");
        }
        assert!(parsed > 10_000, "only {parsed} texts parsed");
    }

    /// Forty nested sequences dropped into random texts: wherever the parser
    /// reads them as nesting, so does the scan.
    #[test]
    fn finds_the_nesting_the_parser_reads() {
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        let mut nested = 0;
        for text in random_texts(0x1234_5678_9abc_def1, 300_000, &deep) {
            let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
                continue;
            };
            if value_depth(&value) < 40 {
                continue;
            }
            nested += 1;
            assert!(
                too_deep_at(&text, 39).is_some(),
                "{:?}",
                text.replace(&deep, "<40 deep>")
            );
        }
        assert!(nested > 1_000, "only {nested} texts nested");
    }
}
