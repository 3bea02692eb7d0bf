//! Tracing subscriber setup: `RUST_LOG` filtering (default `info`), text or JSON.
//!
//! Nothing in the crate logs tickets, tokens, API keys or payloads; spans carry
//! tenant, session id and remote address only. Dependencies that do log frame
//! payloads, request lines (which carry tickets) or headers at debug/trace level
//! are capped at `info` whatever `RUST_LOG` says.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Targets (and their submodules) that may log secrets or payloads below `info`.
const CAPPED_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "rustls",
    "axum",
    "tower",
    "tower_http",
];

/// Whether an event may be logged at all, whatever the level filter allows.
pub fn permitted(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || !is_capped(meta.target())
}

fn is_capped(target: &str) -> bool {
    CAPPED_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Installs the global subscriber. Calling it twice is harmless (the second call
/// keeps the first subscriber).
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Carry the level filter's ceiling through the combination (a filter without
    // a hint makes the whole filter hintless, i.e. TRACE): it decides the global
    // maximum level, which is also the `log` crate's, where the `trace!` records
    // of tungstenite and friends are otherwise built and dispatched for every
    // frame only to be dropped.
    let ceiling = env.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let filter = env.and(filter_fn(permitted).with_max_level_hint(ceiling));
    let layer = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The global maximum level (which the `log` bridge copies) is the level
    /// filter's, not TRACE: otherwise every `log::trace!` in tungstenite is
    /// built and dispatched per frame (it cost more than the rest of a Hot Lane
    /// echo). The only test in this binary that installs the subscriber.
    #[test]
    fn the_global_ceiling_is_the_level_filters() {
        let expected = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .max_level_hint()
            .unwrap_or(LevelFilter::TRACE);
        init(LogFormat::Text);
        assert_eq!(LevelFilter::current(), expected);
    }

    #[test]
    fn capped_targets_include_submodules_only() {
        assert!(is_capped("tungstenite"));
        assert!(is_capped("tungstenite::protocol"));
        assert!(is_capped("hyper::proto::h1::role"));
        assert!(!is_capped("tungstenitex"));
        assert!(!is_capped("wsprism::transport"));
    }
}
