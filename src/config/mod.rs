//! Configuration: parse, expand, validate, freeze.
//!
//! Owns: turning `wsprism.yaml` text into an immutable [`Config`], or into the
//! complete list of what is wrong with it, each problem named by its YAML path.
//! Input comes from `main.rs` (startup, `check`) and from the reload watcher;
//! output is an `Arc<Config>` that the runtime compiles into per-tenant policy.
//! It does no I/O beyond reading the file and the environment.

mod nesting;
pub mod pattern;
mod schema;
mod validate;

use std::fmt;
use std::path::Path;

pub use schema::*;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// YAML path such as `tenants[1].limits.max_frame_bytes` (empty for the root).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order where known.
    pub issues: Vec<ConfigIssue>,
}

impl ConfigError {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            issues: vec![ConfigIssue {
                path: path.into(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// Largest config file accepted; a reference config is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Reads and loads a config file.
///
/// # Errors
/// The file cannot be read, or [`parse`] refuses its text.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ConfigError::one(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::one(
            "",
            format!(
                "config file {} is {} bytes; the limit is {MAX_CONFIG_BYTES}",
                path.display(),
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::one(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    parse(&text)
}

/// Parses config text: YAML → `${VAR}` expansion → typed schema → validation.
///
/// # Errors
/// Every syntax, type, unknown-field, environment and semantic problem, with paths.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, &|name| std::env::var(name).ok())
}

/// [`parse`] with an explicit environment lookup (tests, reload).
///
/// # Errors
/// As [`parse`].
pub fn parse_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // Editors on Windows save UTF-8 with a byte order mark; the parser would
    // take it for content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError::one(
            "",
            "config is empty; it needs at least `version: 1`",
        ));
    }
    if let Some(line) = nesting::too_deep_at(text, nesting::MAX_FLOW_DEPTH) {
        return Err(ConfigError::one(
            format!("line {line}"),
            format!(
                "invalid YAML: flow collections ([ ] or {{ }}) nested more than {} deep",
                nesting::MAX_FLOW_DEPTH
            ),
        ));
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::one(yaml_location(&e), format!("invalid YAML: {e}")))?;
    if !value.is_mapping() {
        return Err(ConfigError::one(
            "",
            "config must be a YAML mapping with `version` and `tenants`",
        ));
    }
    let mut issues = Vec::new();
    let mut expanded = Vec::new();
    expand_env(
        &mut value,
        String::new(),
        &mut Vec::new(),
        env,
        &mut issues,
        &mut expanded,
    );
    if !issues.is_empty() {
        return Err(ConfigError { issues });
    }
    let redact_all = |e: ConfigError| ConfigError {
        issues: e.issues.into_iter().map(|i| redact(i, &expanded)).collect(),
    };
    let cfg = deserialize_typed(value, &expanded).map_err(redact_all)?;
    validate::validate(&cfg).map_err(redact_all)?;
    Ok(cfg)
}

/// Deserializes the expanded tree into the schema. A `${VAR}` always expands
/// to a string, so a field that wants a number or a boolean
/// (`ping_interval_ms: ${PING_MS}`) would refuse it: when the schema refuses
/// a value that came from an expansion, that value is re-read as a YAML
/// scalar (`"25000"` → 25000, `"true"` → true) and the schema asked again.
/// Only refused expansions are re-read, so a string field keeps `"007"`.
fn deserialize_typed(
    mut value: serde_yaml::Value,
    expanded: &[(String, Vec<serde_yaml::Value>)],
) -> Result<Config, ConfigError> {
    // Each retry converts one more expanded value, so this ends.
    for _ in 0..=expanded.len() {
        let attempt = if expanded.is_empty() {
            std::mem::take(&mut value)
        } else {
            value.clone()
        };
        let e = match serde_path_to_error::deserialize(attempt) {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e,
        };
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let retyped = expanded
            .iter()
            .find(|(p, _)| *p == path)
            .and_then(|(_, at)| value_at(&mut value, at))
            .is_some_and(retype_scalar);
        if !retyped {
            return Err(ConfigError::one(path, e.into_inner().to_string()));
        }
    }
    Err(ConfigError::one("", "config could not be typed"))
}

/// The value under a path of mapping keys (strings) and sequence indices
/// (numbers).
fn value_at<'v>(
    mut value: &'v mut serde_yaml::Value,
    at: &[serde_yaml::Value],
) -> Option<&'v mut serde_yaml::Value> {
    for step in at {
        while let serde_yaml::Value::Tagged(tagged) = value {
            value = &mut tagged.value;
        }
        value = match (value, step) {
            (serde_yaml::Value::Sequence(items), serde_yaml::Value::Number(i)) => {
                items.get_mut(usize::try_from(i.as_u64()?).ok()?)?
            }
            (serde_yaml::Value::Mapping(map), key) => map.get_mut(key)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Turns an expanded string that reads as a number or boolean into one;
/// false when it is anything else (the schema's error then stands).
fn retype_scalar(value: &mut serde_yaml::Value) -> bool {
    let serde_yaml::Value::String(s) = value else {
        return false;
    };
    // An environment value is not bounded by the file's size limit; a deep
    // one cannot be a number or boolean anyway.
    if nesting::too_deep_at(s, nesting::MAX_FLOW_DEPTH).is_some() {
        return false;
    }
    match serde_yaml::from_str::<serde_yaml::Value>(s.trim()) {
        Ok(v @ (serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_))) => {
            *value = v;
            true
        }
        _ => false,
    }
}

/// Keeps secrets out of an issue: a static ticket (a map key, so part of the
/// path) becomes `<ticket>`, and values quoted in the message are dropped when
/// the field holds a secret (`tickets`, `api_keys`, `secret…`) or came from a
/// `${VAR}` (which may carry a token or password).
fn redact(issue: ConfigIssue, expanded: &[(String, Vec<serde_yaml::Value>)]) -> ConfigIssue {
    let ConfigIssue { mut path, message } = issue;
    if let Some(at) = path.find(".tickets.") {
        let start = at + ".tickets.".len();
        let end = path[start..]
            .find(['.', '['])
            .map_or(path.len(), |n| start + n);
        path.replace_range(start..end, "<ticket>");
    }
    let secret_field = path.contains(".tickets")
        || path.contains(".api_keys")
        || path.contains("secret")
        || expanded
            .iter()
            .any(|(e, _)| path == *e || path.starts_with(&format!("{e}.")));
    let message = if secret_field {
        unquote(&message)
    } else {
        message
    };
    ConfigIssue { path, message }
}

/// `message` with every part quoted in backticks or double quotes (how our
/// messages and serde's quote values) replaced by `<redacted>`.
fn unquote(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '`' || c == '"' {
            // Skip to the closing quote (or the end: an unterminated quote
            // hides the rest too).
            for inner in chars.by_ref() {
                if inner == c {
                    break;
                }
            }
            out.push_str("<redacted>");
            out.push(c);
        }
    }
    out
}

fn yaml_location(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {} column {}", loc.line(), loc.column()),
        None => String::new(),
    }
}

/// Replaces `${VAR}` in every string scalar (keys are left alone) and records
/// the strings it changed in `expanded`: their YAML path as errors print it,
/// and the keys / indices leading to them.
fn expand_env(
    value: &mut serde_yaml::Value,
    path: String,
    steps: &mut Vec<serde_yaml::Value>,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    expanded: &mut Vec<(String, Vec<serde_yaml::Value>)>,
) {
    match value {
        serde_yaml::Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(text) => {
                *s = text;
                expanded.push((path, steps.clone()));
            }
            Err(message) => issues.push(ConfigIssue { path, message }),
        },
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                steps.push(serde_yaml::Value::Number(i.into()));
                expand_env(item, format!("{path}[{i}]"), steps, env, issues, expanded);
                steps.pop();
            }
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                steps.push(k.clone());
                expand_env(v, child, steps, env, issues, expanded);
                steps.pop();
            }
        }
        serde_yaml::Value::Tagged(tagged) => {
            expand_env(&mut tagged.value, path, steps, env, issues, expanded);
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated `${` in string; write `${NAME}`".to_owned());
        };
        let name = &after[..end];
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "`${{{name}}}` is not a valid environment variable reference; use letters, digits and `_`"
            ));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable `{name}` is not set; export it or remove `${{{name}}}`"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests;
