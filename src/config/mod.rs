//! Configuration: parse, expand, validate, freeze.
//!
//! Owns: turning `wsprism.yaml` text into an immutable [`Config`], or into the
//! complete list of what is wrong with it, each problem named by its YAML path.
//! Input comes from `main.rs` (startup, `check`) and from the reload watcher;
//! output is an `Arc<Config>` that the runtime compiles into per-tenant policy.
//! It does no I/O beyond reading the file and the environment.

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
    if text.trim().is_empty() {
        return Err(ConfigError::one(
            "",
            "config is empty; it needs at least `version: 1`",
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
    expand_env(&mut value, String::new(), env, &mut issues);
    if !issues.is_empty() {
        return Err(ConfigError { issues });
    }
    let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::one(path, e.into_inner().to_string())
    })?;
    validate::validate(&cfg)?;
    Ok(cfg)
}

fn yaml_location(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {} column {}", loc.line(), loc.column()),
        None => String::new(),
    }
}

/// Replaces `${VAR}` in every string scalar (keys are left alone).
fn expand_env(
    value: &mut serde_yaml::Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) {
    match value {
        serde_yaml::Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => issues.push(ConfigIssue { path, message }),
        },
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, format!("{path}[{i}]"), env, issues);
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
                expand_env(v, child, env, issues);
            }
        }
        serde_yaml::Value::Tagged(tagged) => expand_env(&mut tagged.value, path, env, issues),
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
