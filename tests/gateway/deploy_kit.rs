//! The operations kit under `deploy/` and the root `Dockerfile` cannot rot:
//! every metric the Grafana dashboard and the Prometheus alerts query is one a
//! live gateway exports, both files carry what an operator needs (panels, a
//! tenant filter, `for`/severity/summary on every alert), and the Dockerfile
//! keeps its invariants (two stages, release build, non-root user, volumes,
//! the ports of `wsprism.yaml`). Docker itself is not needed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::redis::RedisServer;
use common::{TestConfig, TestGateway, eventually};
use serde_json::{Value, json};
use wsprism::config::ClusterMode;

const KEY: &str = "acme-key-0123456789";

/// Metrics the files may name that the gateway does not export: `up` is
/// written by Prometheus for every scrape target.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

// ---------------------------------------------------------------- PromQL names

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Metric names an expression references: every identifier starting with
/// `wsprism_` or `process_`, plus any identifier right before `{` (a selector,
/// whatever its prefix, so a misspelt foreign name is caught too). Quoted
/// strings (label values, `"$tenant"`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if is_ident(c) && (i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != '$') {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let selector = chars.get(i) == Some(&'{');
            if word.starts_with("wsprism_") || word.starts_with("process_") || selector {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let got = metric_names(
        r#"histogram_quantile(0.99, sum by (le, tenant) (rate(wsprism_plugin_call_duration_seconds_bucket{tenant=~"$tenant", reason!="process_x"}[$__rate_interval]))) / up{job="w"} + process_open_fds"#,
    );
    let want: BTreeSet<String> = [
        "wsprism_plugin_call_duration_seconds_bucket",
        "up",
        "process_open_fds",
    ]
    .map(String::from)
    .into();
    assert_eq!(got, want);
}

/// Every PromQL expression of the dashboard (panel targets, in rows too, and
/// the template variables' queries), each with the panel or variable it is in.
fn dashboard_exprs(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("panel {title:?}"), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"].as_str().or(v["query"].as_str());
            let q = q.unwrap_or_else(|| panic!("variable {} has no query: {v}", v["name"]));
            out.push((format!("variable {}", v["name"]), q.to_owned()));
        }
    }
    out
}

/// Non-row panels, in rows too.
fn leaf_panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] != "row" {
                out.push(p);
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

fn dashboard() -> Value {
    let (path, text) = repo_file("deploy/grafana/wsprism.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_rules() -> Vec<serde_yaml::Value> {
    let (path, text) = repo_file("deploy/prometheus/alerts.yml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let groups = doc["groups"]
        .as_sequence()
        .expect("alerts.yml: `groups` list");
    assert!(!groups.is_empty(), "alerts.yml has no groups");
    groups
        .iter()
        .flat_map(|g| {
            assert!(g["name"].as_str().is_some(), "group without a name: {g:?}");
            g["rules"].as_sequence().cloned().unwrap_or_default()
        })
        .collect()
}

fn alert_exprs() -> Vec<(String, String)> {
    alert_rules()
        .iter()
        .map(|r| {
            let name = r["alert"].as_str().unwrap_or("?");
            let expr = r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no expr"));
            (format!("alert {name}"), expr.to_owned())
        })
        .collect()
}

// ------------------------------------------------------------ file structure

#[test]
fn dashboard_has_what_an_operator_needs() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    let tenant = var("tenant");
    assert_eq!(tenant["type"], "query");
    assert_eq!(tenant["includeAll"], true);
    assert_eq!(tenant["multi"], true);

    let panels = leaf_panels(&dash);
    assert!(panels.len() >= 20, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64()),
            "duplicate panel id in {title:?}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title:?}: gridPos");
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title:?} must query the chosen data source"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "{title:?} has no query");
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title:?}: empty expr"
            );
        }
    }
    // Per-tenant panels filter by the tenant variable.
    let filtered = dashboard_exprs(&dash)
        .iter()
        .filter(|(_, e)| e.contains("tenant=~\"$tenant"))
        .count();
    assert!(filtered >= 10, "only {filtered} queries use $tenant");
}

#[test]
fn every_alert_has_for_severity_and_annotations() {
    let rules = alert_rules();
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or_else(|| {
            panic!("a rule without `alert` (recording rules belong elsewhere): {r:?}")
        });
        assert!(names.insert(name.to_owned()), "duplicate alert {name}");
        assert!(name.starts_with("Wsprism"), "{name}: prefix Wsprism");
        let r#for = r["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no `for`"));
        let (n, unit) = r#for.split_at(r#for.len().saturating_sub(1));
        assert!(
            n.parse::<u32>().is_ok() && ["s", "m", "h"].contains(&unit),
            "{name}: `for: {for}` is not a duration"
        );
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "{name}: no annotations.{key}"
            );
        }
    }
    // Each failure mode the kit promises has a rule.
    let all: String = alert_exprs().into_iter().map(|(_, e)| e + "\n").collect();
    for needle in [
        "up{",
        "wsprism_cluster_up",
        "wsprism_plugin_errors_total",
        "wsprism_plugin_call_duration_seconds_bucket",
        "wsprism_config_reloads_total{result=\"error\"}",
        "wsprism_plugin_loads_total{result=\"error\"}",
        "wsprism_drops_total",
        "wsprism_connections_refused_total",
        "wsprism_backend_calls_total",
        "wsprism_handshakes_total",
    ] {
        assert!(all.contains(needle), "no alert queries {needle}");
    }
}

// -------------------------------------------------- names against a gateway

/// Family name → type, from the `# TYPE` lines of an exposition.
fn exposed_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Checks one referenced name against what the gateway exports; `Err` says why not.
fn resolve(
    name: &str,
    registered: &BTreeSet<String>,
    types: &BTreeMap<String, String>,
) -> Result<(), String> {
    if PROMETHEUS_OWN.contains(&name) {
        return Ok(());
    }
    if registered.contains(name) {
        return match types.get(name).map(String::as_str) {
            Some("histogram") => Err(format!(
                "{name} is a histogram: query {name}_bucket, _sum or _count"
            )),
            _ => Ok(()),
        };
    }
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| registered.contains(*base))
        .ok_or_else(|| format!("{name} is not exported"))?;
    match types.get(base).map(String::as_str) {
        // Unobserved labelled families have no `# TYPE` line yet; their name
        // is registered, which is what the dashboard depends on.
        None | Some("histogram") => Ok(()),
        Some(other) => Err(format!("{name}: {base} is a {other}, not a histogram")),
    }
}

/// Starts one gateway in cluster mode (so the `wsprism_cluster_*` families
/// exist) against a real redis-server, drives a little traffic (a session, an
/// Ext Lane message refused by policy, a server API request) and checks every
/// metric named by the dashboard and the alerts against it.
///
/// What "exported" means here: the `prometheus` crate leaves a labelled family
/// out of `/metrics` until its first child exists (a plugin family before the
/// first plugin call, `config_reloads_total` before the first reload), and
/// driving every failure path live would make this test slow and flaky. So a
/// name counts as exported when it is a family registered in the live
/// gateway's registry (`Metrics::family_names`, which lists registered
/// descriptors, observed or not). Two live checks keep that list honest: every
/// `# TYPE` line `/metrics` serves is in it (nothing registered around it), and
/// the families the traffic above touches do appear in `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alerts_name_only_exported_metrics() {
    let redis = RedisServer::start();
    let url = redis.url();
    let gw = TestGateway::start(
        TestConfig::tenant("acme")
            .api_key(KEY)
            .tickets(&[("t1", "u1")])
            .ext_allow(&["room:*"])
            .gateway(move |g| {
                g.cluster.mode = ClusterMode::Redis;
                g.cluster.redis_url = url;
                g.cluster.node_id = "kit".into();
            }),
    )
    .await;

    let mut client = gw.client("acme", "t1").await;
    client.join("lobby").await;
    // Not on the allowlist: a policy refusal.
    client
        .send_json(json!({"v": 1, "svc": "chat", "type": "send", "room": "lobby", "data": {}}))
        .await;
    client.recv_type("error").await;
    let status = reqwest::Client::new()
        .get(gw.admin_url("/v1/api/tenants/acme/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("server api")
        .status();
    assert_eq!(status, 200);

    let live = [
        "wsprism_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "wsprism_sessions_active",
        "wsprism_connections_open",
        "wsprism_handshakes_total",
        "wsprism_messages_in_total",
        "wsprism_policy_refusals_total",
        "wsprism_api_requests_total",
        "wsprism_cluster_up",
        "wsprism_cluster_redis_rtt_seconds",
    ];
    let text = eventually("observed families on /metrics", || async {
        let text = gw.metrics().await;
        let types = exposed_types(&text);
        let missing: Vec<_> = live.iter().filter(|n| !types.contains_key(**n)).collect();
        if missing.is_empty() && common::metric(&text, "wsprism_cluster_up") == 1.0 {
            Ok(text)
        } else {
            Err(missing)
        }
    })
    .await;
    let types = exposed_types(&text);
    let registered = gw.gw.metrics.family_names();
    let unlisted: Vec<_> = types.keys().filter(|n| !registered.contains(*n)).collect();
    assert!(
        unlisted.is_empty(),
        "/metrics serves families Metrics::family_names does not list: {unlisted:?}"
    );

    let exprs: Vec<_> = dashboard_exprs(&dashboard())
        .into_iter()
        .chain(alert_exprs())
        .collect();
    let mut referenced = BTreeSet::new();
    let mut wrong = Vec::new();
    for (place, expr) in &exprs {
        for name in metric_names(expr) {
            if let Err(why) = resolve(&name, &registered, &types) {
                wrong.push(format!("{place}: {why}\n    {expr}"));
            }
            referenced.insert(name);
        }
    }
    assert!(
        wrong.is_empty(),
        "deploy/ queries metrics the gateway does not export:\n{}",
        wrong.join("\n")
    );

    // The dashboard charts every family the gateway registers.
    let charted: BTreeSet<String> = dashboard_exprs(&dashboard())
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| registered.contains(*b)))
                .map_or(n.clone(), str::to_owned)
        })
        .collect();
    let uncharted: Vec<_> = registered.difference(&charted).collect();
    assert!(
        uncharted.is_empty(),
        "families without a panel in deploy/grafana/wsprism.json: {uncharted:?}"
    );
    assert!(referenced.len() >= 20, "{referenced:?}");
}

// ------------------------------------------------------------------ Dockerfile

/// Dockerfile instructions (continuation lines joined, comments dropped) as
/// (INSTRUCTION, arguments).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (op, args) = cur
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((&cur, ""));
                out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                cur.clear();
            }
        }
    }
    out
}

/// The port of a `host:port` listen address in `wsprism.yaml`.
fn yaml_port(cfg: &serde_yaml::Value, key: &str) -> String {
    let addr = cfg["gateway"][key]
        .as_str()
        .unwrap_or_else(|| panic!("wsprism.yaml: gateway.{key}"));
    addr.rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| panic!("gateway.{key} {addr:?} has no port"))
}

#[test]
fn dockerfile_keeps_its_invariants() {
    let (_, text) = repo_file("Dockerfile");
    let ins = instructions(&text);
    let stages: Vec<usize> = (0..ins.len()).filter(|&i| ins[i].0 == "FROM").collect();
    assert!(
        stages.len() >= 2,
        "a multi-stage build: {} FROM",
        stages.len()
    );

    // Builder: a Rust image at least as new as `rust-version`, building the
    // gateway package in release mode from the lock file.
    let (_, cargo_toml) = repo_file("Cargo.toml");
    let rust_version = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"'))
        .expect("rust-version in Cargo.toml");
    let builder_from = &ins[stages[0]].1;
    let (image, alias) = builder_from
        .split_once(" AS ")
        .or_else(|| builder_from.split_once(" as "))
        .expect("the builder stage is named (FROM ... AS builder)");
    assert!(
        image.starts_with(&format!("rust:{rust_version}")) || image.starts_with("rust:1-"),
        "builder image {image} must provide rust {rust_version}"
    );
    let builder = &ins[stages[0]..stages[stages.len() - 1]];
    assert!(
        builder.iter().any(|(op, a)| op == "RUN"
            && a.contains("cargo build")
            && a.contains("--release")
            && a.contains("--locked")
            && a.contains("-p wsprism")),
        "the builder runs cargo build --release --locked -p wsprism"
    );

    // Runtime: slim Debian, non-root, the binary from the builder.
    let runtime = &ins[stages[stages.len() - 1]..];
    assert!(
        runtime[0].1.starts_with("debian:bookworm-slim"),
        "{}",
        runtime[0].1
    );
    let arg = |op: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let user = arg("USER");
    let user = user.last().expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0", "root:root"].contains(user),
        "USER {user}"
    );
    assert!(
        arg("COPY")
            .iter()
            .any(|a| a.contains(&format!("--from={}", alias.trim()))
                && a.contains("release/wsprism")
                && a.ends_with("/usr/local/bin/wsprism")),
        "the runtime copies the release binary from the builder to /usr/local/bin/wsprism"
    );
    let volumes = arg("VOLUME").join(" ");
    assert!(volumes.contains("/etc/wsprism"), "VOLUME {volumes}");
    assert!(volumes.contains("plugins"), "VOLUME {volumes}");
    assert_eq!(arg("ENTRYPOINT"), ["[\"wsprism\"]"]);
    let cmd = arg("CMD").join(" ");
    assert!(
        cmd.contains("\"--config\", \"/etc/wsprism/wsprism.yaml\""),
        "CMD {cmd}"
    );

    // EXPOSE the ports of the reference config.
    let (_, yaml) = repo_file("wsprism.yaml");
    let cfg: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("wsprism.yaml");
    let exposed: BTreeSet<&str> = arg("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    for key in ["listen", "admin_listen"] {
        let port = yaml_port(&cfg, key);
        assert!(
            exposed.contains(port.as_str()),
            "EXPOSE {exposed:?} lacks gateway.{key} port {port}"
        );
    }

    let (_, ignore) = repo_file(".dockerignore");
    for entry in ["target", ".git", "node_modules"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_matches('/').ends_with(entry)),
            ".dockerignore lacks {entry}"
        );
    }
}
