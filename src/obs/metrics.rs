//! All metric names and the [`Metrics`] registry of one gateway instance.
//!
//! Each gateway owns its own registry (tests run several gateways in one process);
//! `/metrics` on the admin listener renders it. Hot-path users clone the labelled
//! child counters once per session instead of looking labels up per message.
//! Besides the `wsprism_*` families, each registry carries `wsprism_build_info`
//! and, on Linux, the standard `process_*` families (CPU, resident memory, open
//! file descriptors, start time) of this process.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::realtime::outbox::DropCounters;
use dashmap::DashMap;
use parking_lot::Mutex;
use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Sessions open now.
pub const SESSIONS_ACTIVE: &str = "wsprism_sessions_active";
/// Open client sockets on the public listener.
pub const CONNECTIONS_OPEN: &str = "wsprism_connections_open";
/// Client sockets refused for `max_connections`, by how.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "wsprism_connections_refused_total";
/// Upgrade attempts by result.
pub const HANDSHAKES_TOTAL: &str = "wsprism_handshakes_total";
/// Sessions ended, by close reason.
pub const SESSIONS_CLOSED_TOTAL: &str = "wsprism_sessions_closed_total";
/// Client frames received, by lane.
pub const MESSAGES_IN_TOTAL: &str = "wsprism_messages_in_total";
/// Frames written to clients, by lane.
pub const MESSAGES_OUT_TOTAL: &str = "wsprism_messages_out_total";
/// Frames not delivered, by reason.
pub const DROPS_TOTAL: &str = "wsprism_drops_total";
/// Client messages refused by policy, by lane and reason.
pub const POLICY_REFUSALS_TOTAL: &str = "wsprism_policy_refusals_total";
/// Plugin calls.
pub const PLUGIN_CALLS_TOTAL: &str = "wsprism_plugin_calls_total";
/// Plugin failures by reason.
pub const PLUGIN_ERRORS_TOTAL: &str = "wsprism_plugin_errors_total";
/// Plugin call latency.
pub const PLUGIN_CALL_DURATION_SECONDS: &str = "wsprism_plugin_call_duration_seconds";
/// Plugin (re)loads by result.
pub const PLUGIN_LOADS_TOTAL: &str = "wsprism_plugin_loads_total";
/// Config reloads by result.
pub const CONFIG_RELOADS_TOTAL: &str = "wsprism_config_reloads_total";
/// Server API requests by endpoint and status class.
pub const API_REQUESTS_TOTAL: &str = "wsprism_api_requests_total";
/// Backend webhook calls (auth, events) by kind and result.
pub const BACKEND_CALLS_TOTAL: &str = "wsprism_backend_calls_total";
/// Always 1; `version` names the running build (dashboards join on it).
pub const BUILD_INFO: &str = "wsprism_build_info";

/// Buckets for plugin calls: 10 µs .. 5 s.
const PLUGIN_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A registry that also remembers the name of every family registered into it.
///
/// `Registry::gather` (and so `/metrics`) leaves out a labelled family until its
/// first child exists, so it cannot answer "is this family exported?" on a quiet
/// gateway; [`Metrics::family_names`] can.
#[derive(Clone, Debug, Default)]
struct Families {
    registry: Registry,
    names: Arc<Mutex<BTreeSet<String>>>,
}

impl Families {
    fn register(&self, c: Box<dyn Collector>) -> prometheus::Result<()> {
        let names: Vec<String> = c.desc().iter().map(|d| d.fq_name.clone()).collect();
        self.registry.register(c)?;
        self.names.lock().extend(names);
        Ok(())
    }
}

/// The metric families of one gateway.
#[derive(Clone, Debug)]
pub struct Metrics {
    families: Families,
    /// `tenant`.
    pub sessions_active: IntGaugeVec,
    /// Open client sockets on the public listener.
    pub connections_open: IntGauge,
    /// `reason`: `over_capacity` (answered 503), `closed_at_accept`.
    pub connections_refused: IntCounterVec,
    /// `tenant`, `result`.
    pub handshakes: IntCounterVec,
    /// `tenant`, `reason`.
    pub sessions_closed: IntCounterVec,
    /// `tenant`, `lane`.
    pub messages_in: IntCounterVec,
    /// `tenant`, `lane`.
    pub messages_out: IntCounterVec,
    /// `tenant`, `reason`.
    pub drops: IntCounterVec,
    /// `tenant`, `lane`, `reason`.
    pub policy_refusals: IntCounterVec,
    /// `tenant`, `plugin`.
    pub plugin_calls: IntCounterVec,
    /// `tenant`, `plugin`, `reason`.
    pub plugin_errors: IntCounterVec,
    /// `tenant`, `plugin`.
    pub plugin_call_duration: HistogramVec,
    /// `plugin`, `result`.
    pub plugin_loads: IntCounterVec,
    /// `result`.
    pub config_reloads: IntCounterVec,
    /// `endpoint`, `status`.
    pub api_requests: IntCounterVec,
    /// `tenant`, `kind`, `result`.
    pub backend_calls: IntCounterVec,
    /// Each tenant's [`SessionCounters`], resolved once and shared by its
    /// sessions.
    session_handles: Arc<DashMap<String, Arc<SessionCounters>>>,
}

fn counter(reg: &Families, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition {name} is valid: {e}"));
    // Registration fails only on a duplicate name, and each name is registered once
    // into a fresh registry.
    let _ = reg.register(Box::new(c.clone()));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let families = Families::default();
        let sessions_active = IntGaugeVec::new(
            Opts::new(SESSIONS_ACTIVE, "WebSocket sessions open now."),
            &["tenant"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        let _ = families.register(Box::new(sessions_active.clone()));
        let plugin_call_duration = HistogramVec::new(
            HistogramOpts::new(PLUGIN_CALL_DURATION_SECONDS, "Plugin call latency.")
                .buckets(PLUGIN_BUCKETS.to_vec()),
            &["tenant", "plugin"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        let _ = families.register(Box::new(plugin_call_duration.clone()));
        let build_info = IntGauge::with_opts(
            Opts::new(BUILD_INFO, "Always 1; the version of the running build.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        build_info.set(1);
        let _ = families.register(Box::new(build_info));
        // Reads /proc/self at each scrape. One collector per registry: tests run
        // several gateways in one process, each reporting the same process.
        #[cfg(target_os = "linux")]
        let _ = families.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let connections_open = IntGauge::new(
            CONNECTIONS_OPEN,
            "Client sockets open on the public listener, before and after upgrade.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        let _ = families.register(Box::new(connections_open.clone()));
        Self {
            connections_refused: counter(
                &families,
                CONNECTIONS_REFUSED_TOTAL,
                "Client sockets refused at gateway.max_connections: answered 503 (over_capacity) or closed at accept.",
                &["reason"],
            ),
            handshakes: counter(
                &families,
                HANDSHAKES_TOTAL,
                "WebSocket upgrade attempts by result.",
                &["tenant", "result"],
            ),
            sessions_closed: counter(
                &families,
                SESSIONS_CLOSED_TOTAL,
                "Sessions ended, by close reason.",
                &["tenant", "reason"],
            ),
            messages_in: counter(
                &families,
                MESSAGES_IN_TOTAL,
                "Client frames received, by lane.",
                &["tenant", "lane"],
            ),
            messages_out: counter(
                &families,
                MESSAGES_OUT_TOTAL,
                "Frames written to clients, by lane.",
                &["tenant", "lane"],
            ),
            drops: counter(
                &families,
                DROPS_TOTAL,
                "Frames not delivered, by reason.",
                &["tenant", "reason"],
            ),
            policy_refusals: counter(
                &families,
                POLICY_REFUSALS_TOTAL,
                "Client messages refused, by lane and reason.",
                &["tenant", "lane", "reason"],
            ),
            plugin_calls: counter(
                &families,
                PLUGIN_CALLS_TOTAL,
                "Plugin calls.",
                &["tenant", "plugin"],
            ),
            plugin_errors: counter(
                &families,
                PLUGIN_ERRORS_TOTAL,
                "Failed plugin calls, by reason.",
                &["tenant", "plugin", "reason"],
            ),
            plugin_loads: counter(
                &families,
                PLUGIN_LOADS_TOTAL,
                "Plugin file loads, by result.",
                &["plugin", "result"],
            ),
            config_reloads: counter(
                &families,
                CONFIG_RELOADS_TOTAL,
                "Config reloads, by result.",
                &["result"],
            ),
            api_requests: counter(
                &families,
                API_REQUESTS_TOTAL,
                "Server API requests, by endpoint and status.",
                &["endpoint", "status"],
            ),
            backend_calls: counter(
                &families,
                BACKEND_CALLS_TOTAL,
                "Calls to tenant backend upstreams, by kind and result.",
                &["tenant", "kind", "result"],
            ),
            sessions_active,
            connections_open,
            plugin_call_duration,
            families,
            session_handles: Arc::default(),
        }
    }

    /// Registers a family defined elsewhere (cluster bus).
    ///
    /// # Errors
    /// A family of the same name is already registered.
    pub fn register(&self, c: Box<dyn Collector>) -> prometheus::Result<()> {
        self.families.register(c)
    }

    /// The name of every registered family, observed or not (a labelled family
    /// appears in [`Metrics::render`] only after its first child is created).
    pub fn family_names(&self) -> BTreeSet<String> {
        self.families.names.lock().clone()
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which the
        // typed constructors above cannot produce.
        let _ = TextEncoder::new().encode(&self.families.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The handles a session of `tenant` uses, so the hot path never hashes
    /// label values; resolved once per tenant and shared by its sessions.
    pub fn session_counters(&self, tenant: &str) -> Arc<SessionCounters> {
        if let Some(c) = self.session_handles.get(tenant) {
            return Arc::clone(c.value());
        }
        let resolved = Arc::new(SessionCounters {
            in_hot: self.messages_in.with_label_values(&[tenant, "hot"]),
            in_ext: self.messages_in.with_label_values(&[tenant, "ext"]),
            out_hot: self.messages_out.with_label_values(&[tenant, "hot"]),
            out_ext: self.messages_out.with_label_values(&[tenant, "ext"]),
            drops: DropCounters {
                lossy_overflow: self.drops.with_label_values(&[tenant, "lossy_overflow"]),
                slow_consumer: self.drops.with_label_values(&[tenant, "slow_consumer"]),
            },
            active: self.sessions_active.with_label_values(&[tenant]),
        });
        Arc::clone(
            self.session_handles
                .entry(tenant.to_owned())
                .or_insert(resolved)
                .value(),
        )
    }
}

/// Labelled children a session uses per message.
#[derive(Clone, Debug)]
pub struct SessionCounters {
    /// Hot Lane frames received.
    pub in_hot: IntCounter,
    /// Ext Lane frames received.
    pub in_ext: IntCounter,
    /// Binary frames written.
    pub out_hot: IntCounter,
    /// Text frames written.
    pub out_ext: IntCounter,
    /// Outbox overflow counters.
    pub drops: DropCounters,
    /// Sessions open for the tenant.
    pub active: IntGauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_with_prefix_and_conventions() {
        let m = Metrics::new();
        m.handshakes.with_label_values(&["acme", "ok"]).inc();
        m.session_counters("acme").in_hot.inc();
        m.plugin_call_duration
            .with_label_values(&["acme", "echo"])
            .observe(0.001);
        let text = m.render();
        assert!(text.contains("wsprism_handshakes_total{result=\"ok\",tenant=\"acme\"} 1"));
        assert!(text.contains("wsprism_messages_in_total{lane=\"hot\",tenant=\"acme\"} 1"));
        assert!(text.contains(
            "wsprism_plugin_call_duration_seconds_bucket{plugin=\"echo\",tenant=\"acme\",le=\"0.001\"} 1"
        ));
        let version = env!("CARGO_PKG_VERSION");
        assert!(text.contains(&format!("wsprism_build_info{{version=\"{version}\"}} 1")));
        #[cfg(target_os = "linux")]
        for family in ["process_resident_memory_bytes", "process_cpu_seconds_total"] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap_or_default();
            assert!(
                name.starts_with("wsprism_") || name.starts_with("process_"),
                "{name}"
            );
            if line.ends_with("counter") {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
    }

    #[test]
    fn family_names_list_unobserved_labelled_families() {
        let m = Metrics::new();
        // No child yet: the family is registered but not rendered.
        assert!(!m.render().contains(PLUGIN_LOADS_TOTAL));
        let names = m.family_names();
        for name in [PLUGIN_LOADS_TOTAL, BUILD_INFO, SESSIONS_ACTIVE] {
            assert!(names.contains(name), "{name} in {names:?}");
        }
        let extra = IntGauge::new("wsprism_test_extra", "A family registered later.")
            .unwrap_or_else(|e| panic!("{e}"));
        m.register(Box::new(extra))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(m.family_names().contains("wsprism_test_extra"));
    }
}
