//! `results`: turns the JSON lines written by `scripts/bench.sh` (one
//! `--json` summary per run, tagged with `case`, `server` and `run`) into the
//! markdown tables of `BENCHMARKS.md`: the performance budget with medians and
//! ratios to the baseline, and every measurement behind it.
//!
//! Cases the script runs (`server` is `gateway` or `baseline`; `native` for
//! the gateway's own `chat` path beside a plugin): `echo_hot`, `echo_ext`,
//! `echo_js`, `echo_py`, `fanout_hot`, `fanout_chat`, `idle`, `connect_static`,
//! `connect_jwt`. Medians are taken per (case, server) over runs; a fan-out
//! sweep's "highest rate with 100% delivery" is the median over runs of the
//! highest step rate at which that run delivered every expected frame (every
//! lower step having done so too).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

/// `results` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct ResultsArgs {
    /// JSON lines written by the bench runs (`--json --tag case=.. --tag server=..`).
    #[arg(long)]
    input: PathBuf,
    /// Replace the text between `<!-- bench:results:begin -->` and
    /// `<!-- bench:results:end -->` in this file with the tables.
    #[arg(long)]
    update: Option<PathBuf>,
    /// Extra `key=value` lines for the header (commit, date, settings).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Leave out runs during which other processes used more than this many
    /// percent of one core (`other_cpu_pct`), as long as a quieter run of the
    /// same case and server exists.
    #[arg(long, default_value_t = 25.0)]
    max_noise: f64,
    /// Publications per second per room at which both servers' fan-out CPU
    /// and latency are also compared (a rate neither side saturates at).
    #[arg(long, default_value_t = 50.0)]
    reference_rate: f64,
}

/// Runs per (case, server) before the noise filter.
type Totals = BTreeMap<(String, String), usize>;

/// CPU other processes used during a run (fan-out: median over its steps).
fn run_noise(r: &Value) -> Option<f64> {
    r["other_cpu_pct"].as_f64().or_else(|| {
        median(
            r["steps"]
                .as_array()?
                .iter()
                .filter_map(|s| s["other_cpu_pct"].as_f64())
                .collect(),
        )
    })
}

/// Drops noisy runs of every (case, server) that has at least one quiet run.
fn keep_quiet(runs: Vec<Value>, max_noise: f64) -> (Vec<Value>, Totals) {
    let key = |r: &Value| {
        (
            r["case"].as_str().unwrap_or_default().to_owned(),
            r["server"].as_str().unwrap_or_default().to_owned(),
        )
    };
    // Sweeps are filtered per step (`quiet_steps`): one noisy step says little
    // about the others.
    let quiet = |r: &Value| r["steps"].is_array() || run_noise(r).is_none_or(|n| n <= max_noise);
    let mut totals = Totals::new();
    let mut has_quiet = BTreeMap::new();
    for r in &runs {
        *totals.entry(key(r)).or_default() += 1;
        if quiet(r) {
            has_quiet.insert(key(r), true);
        }
    }
    let kept = runs
        .into_iter()
        .filter(|r| quiet(r) || !has_quiet.contains_key(&key(r)))
        .collect();
    (kept, totals)
}

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";

/// Runs the subcommand: prints the tables and optionally updates a file.
///
/// # Errors
/// Unreadable input, or an `--update` file without the markers.
pub(crate) fn run(args: ResultsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read {}", args.input.display()))?;
    let mut runs: Vec<Value> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        runs.push(
            serde_json::from_str(line).with_context(|| {
                format!("{}:{}: not a JSON summary", args.input.display(), i + 1)
            })?,
        );
    }
    let (runs, totals) = keep_quiet(runs, args.max_noise);
    let mut meta = args.meta.clone();
    meta.push(format!(
        "noise filter: runs (fan-out: steps) during which other processes used more than {}% of a core are left out when a quieter one of the same case, server (and rate) exists; the runs columns show kept/total",
        args.max_noise
    ));
    let md = render(&runs, &totals, &meta, args.reference_rate, args.max_noise);
    println!("{md}");
    if let Some(path) = &args.update {
        let doc = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
            bail!("{} has no {BEGIN} ... {END} markers", path.display());
        };
        if e < b {
            bail!(
                "{}: the end marker comes before the begin marker",
                path.display()
            );
        }
        let updated = format!("{}{BEGIN}\n{md}\n{}", &doc[..b], &doc[e..]);
        std::fs::write(path, updated)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("updated {}", path.display());
    }
    Ok(())
}

/// Runs of one (case, server).
fn select<'a>(runs: &'a [Value], case: &str, server: &str) -> Vec<&'a Value> {
    runs.iter()
        .filter(|r| r["case"] == case && r["server"] == server)
        .collect()
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let m = xs.len() / 2;
    Some(if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    })
}

/// Median of a numeric field over runs.
fn med(runs: &[&Value], key: &str) -> Option<f64> {
    median(runs.iter().filter_map(|r| r[key].as_f64()).collect())
}

fn fmt(x: Option<f64>) -> String {
    match x {
        None => "–".to_owned(),
        Some(v) if v.abs() >= 1000.0 => format_thousands(v.round()),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn format_thousands(v: f64) -> String {
    let s = format!("{}", v.abs() as u64);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

/// Highest passing rate of one sweep run (steps ascending; stops at the first
/// step short of 100%).
fn max_passing_rate(run: &Value) -> Option<f64> {
    let mut best = None;
    for step in run["steps"].as_array()? {
        let ok = step["expected"].as_u64().is_some_and(|e| e > 0)
            && step["delivered"] == step["expected"];
        if !ok {
            break;
        }
        best = step["rate_per_room"].as_f64();
    }
    best
}

/// The steps among `steps` measured while other processes used at most
/// `max_noise` percent of a core, or all of them when none was.
fn quiet_steps(steps: Vec<&Value>, max_noise: f64) -> Vec<&Value> {
    let quiet: Vec<&Value> = steps
        .iter()
        .copied()
        .filter(|s| s["other_cpu_pct"].as_f64().is_none_or(|n| n <= max_noise))
        .collect();
    if quiet.is_empty() { steps } else { quiet }
}

/// Median of a step field at `rate` over the runs whose step at that rate
/// passed (quiet steps preferred).
fn step_med(runs: &[&Value], rate: f64, key: &str, max_noise: f64) -> Option<f64> {
    let steps = runs
        .iter()
        .filter_map(|r| {
            r["steps"].as_array()?.iter().find(|s| {
                s["rate_per_room"].as_f64() == Some(rate) && s["delivered"] == s["expected"]
            })
        })
        .collect();
    median(
        quiet_steps(steps, max_noise)
            .iter()
            .filter_map(|s| s[key].as_f64())
            .collect(),
    )
}

/// The runs of `case` against `server` where every round trip succeeded: an
/// echo answered with SERVICE_UNAVAILABLE (no plugin loaded) is not the path
/// being budgeted.
fn answered<'a>(runs: &'a [Value], case: &str, server: &str) -> Vec<&'a Value> {
    select(runs, case, server)
        .into_iter()
        .filter(|r| r["ok"].as_u64().unwrap_or(0) > 0)
        .filter(|r| r["errors"].as_object().is_none_or(|e| e.is_empty()))
        .collect()
}

/// Deliveries per second one publication rate means for a sweep's runs.
fn deliveries_at(runs: &[&Value], rate: f64) -> Option<f64> {
    let r = runs.first()?;
    Some(rate * r["rooms"].as_f64()? * r["recipients_per_publish"].as_f64()?)
}

struct Budget {
    /// Median CPU other processes used during the runs behind this line
    /// (percent of one core): noise when not near 0.
    noise: Option<f64>,
    line: &'static str,
    target: &'static str,
    gateway: Option<f64>,
    baseline: Option<f64>,
    /// Pass test on (gateway, ratio).
    verdict: Option<bool>,
    ratio: Option<f64>,
    unit: &'static str,
    /// The target is on the difference (gateway − baseline), so the ratio
    /// column shows it beside the ratio.
    added: bool,
}

/// `+1.25` / `-0.5`: a difference with its sign, two decimals at most.
fn signed(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", fmt(Some(-x)))
    } else {
        format!("+{}", fmt(Some(x)))
    }
}

/// What the gateway adds to the baseline (both measured).
fn added(g: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(g? - b?)
}

fn ratio(g: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (g, b) {
        (Some(g), Some(b)) if b > 0.0 => Some(g / b),
        _ => None,
    }
}

fn render(
    runs: &[Value],
    totals: &Totals,
    meta: &[String],
    reference_rate: f64,
    max_noise: f64,
) -> String {
    let total = |case: &str, server: &str| {
        totals
            .get(&(case.to_owned(), server.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    let mut md = String::new();
    let _ = writeln!(md, "{}", machine());
    for m in meta {
        if let Some((k, v)) = m.split_once('=') {
            let _ = writeln!(md, "- {k}: {v}");
        }
    }
    let _ = writeln!(md);

    // --- Budget lines.
    let mut budget = Vec::new();
    let (gi, bi) = (
        select(runs, "idle", "gateway"),
        select(runs, "idle", "baseline"),
    );
    let g = med(&gi, "server_kib_per_conn");
    let b = med(&bi, "server_kib_per_conn");
    let conns = gi
        .first()
        .and_then(|r| r["connections"].as_u64())
        .unwrap_or(0);
    let noise = |a: &[&Value], b: &[&Value]| {
        median(
            a.iter()
                .chain(b)
                .filter_map(|r| r["other_cpu_pct"].as_f64())
                .collect(),
        )
    };
    budget.push(Budget {
        noise: noise(&gi, &bi),
        line: "Idle memory: RSS per authenticated idle connection",
        target: "≤ 4 KiB",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: g.map(|g| g <= 4.0),
        unit: "KiB",
        added: false,
    });
    let (gs, bs) = (
        select(runs, "idle_shipped", "gateway"),
        select(runs, "idle_shipped", "baseline"),
    );
    let g = med(&gs, "server_kib_per_conn");
    let b = med(&bs, "server_kib_per_conn");
    budget.push(Budget {
        noise: noise(&gs, &bs),
        line: "Idle memory as shipped (servers unpinned, default log level)",
        target: "≤ 3.0 KiB",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: g.map(|g| g <= 3.0),
        unit: "KiB",
        added: false,
    });
    let (ge, be) = (
        select(runs, "echo_hot", "gateway"),
        select(runs, "echo_hot", "baseline"),
    );
    let (g, b) = (
        med(&ge, "server_cpu_us_per_msg"),
        med(&be, "server_cpu_us_per_msg"),
    );
    budget.push(Budget {
        noise: noise(&ge, &be),
        line: "Hot echo: server CPU per message",
        target: "≤ 1.3× baseline",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: ratio(g, b).map(|r| r <= 1.3),
        unit: "µs",
        added: false,
    });
    let (gf, bf) = (
        select(runs, "fanout_hot", "gateway"),
        select(runs, "fanout_hot", "baseline"),
    );
    let g_rate = median(gf.iter().filter_map(|r| max_passing_rate(r)).collect());
    let b_rate = median(bf.iter().filter_map(|r| max_passing_rate(r)).collect());
    let (g_del, b_del) = (
        g_rate.and_then(|r| deliveries_at(&gf, r)),
        b_rate.and_then(|r| deliveries_at(&bf, r)),
    );
    let sweep_noise = |rate: Option<f64>| {
        rate.and_then(|rate| {
            median(
                [&gf, &bf]
                    .iter()
                    .filter_map(|rs| step_med(rs, rate, "other_cpu_pct", max_noise))
                    .collect(),
            )
        })
    };
    budget.push(Budget {
        noise: sweep_noise(g_rate),
        line: "Hot relay 10×100, 32 B: highest rate with 100% delivery",
        target: "≥ 0.8× baseline",
        gateway: g_del,
        baseline: b_del,
        ratio: ratio(g_del, b_del),
        verdict: ratio(g_del, b_del).map(|r| r >= 0.8),
        unit: "deliveries/s",
        added: false,
    });
    // "At the same rate": the highest rate both passed.
    let same = match (g_rate, b_rate) {
        (Some(g), Some(b)) => Some(g.min(b)),
        (g, b) => g.or(b),
    };
    let (g, b) = match same {
        Some(rate) => (
            step_med(&gf, rate, "server_cpu_us_per_delivery", max_noise),
            step_med(&bf, rate, "server_cpu_us_per_delivery", max_noise),
        ),
        None => (None, None),
    };
    budget.push(Budget {
        noise: sweep_noise(same),
        line: "Hot relay: server CPU per delivery (same rate)",
        target: "≤ 1.2× baseline",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: ratio(g, b).map(|r| r <= 1.2),
        unit: "µs",
        added: false,
    });
    let (g, b) = match same {
        Some(rate) => (
            step_med(&gf, rate, "latency_p99_us", max_noise),
            step_med(&bf, rate, "latency_p99_us", max_noise),
        ),
        None => (None, None),
    };
    budget.push(Budget {
        noise: sweep_noise(same),
        line: "Hot relay: p99 delivery latency (same rate)",
        target: "≤ 1.5× baseline",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: ratio(g, b).map(|r| r <= 1.5),
        unit: "µs",
        added: false,
    });
    let (gc, bc) = (
        select(runs, "connect_jwt", "gateway"),
        select(runs, "connect_jwt", "baseline"),
    );
    let (g, b) = (med(&gc, "handshakes_per_s"), med(&bc, "handshakes_per_s"));
    budget.push(Budget {
        noise: noise(&gc, &bc),
        line: "Handshakes: JWT connects/s vs baseline upgrades/s",
        target: "≥ 0.7× baseline",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: ratio(g, b).map(|r| r >= 0.7),
        unit: "/s",
        added: false,
    });

    // What each plugin line adds, in user and system time (gateway minus
    // native, medians), for the sentence under the budget table.
    let mut plugin_split = Vec::new();
    let mut split = |lang: &str, gx: &[&Value], nx: &[&Value]| {
        let part = |key: &str| added(med(gx, key), med(nx, key));
        if let (Some(user), Some(system)) = (
            part("server_user_us_per_msg"),
            part("server_system_us_per_msg"),
        ) {
            plugin_split.push(format!(
                "{lang} {} µs user, {} µs system",
                signed(user),
                signed(system)
            ));
        }
    };

    let (gx, nx) = (
        answered(runs, "echo_ext", "gateway"),
        answered(runs, "echo_ext", "native"),
    );
    split("Rust", &gx, &nx);
    let (g, b) = (
        med(&gx, "server_cpu_us_per_msg"),
        med(&nx, "server_cpu_us_per_msg"),
    );
    budget.push(Budget {
        noise: noise(&gx, &nx),
        line: "Ext echo through the Rust plugin: server CPU per message (baseline column: the gateway's native `chat` path)",
        target: "≤ 2× native",
        gateway: g,
        baseline: b,
        ratio: ratio(g, b),
        verdict: ratio(g, b).map(|r| r <= 2.0),
        unit: "µs",
        added: false,
    });

    // JavaScript and Python plugins: the same closed loop through a minimal
    // echo plugin (one `reply` host call), beside the native `chat` path
    // measured on the same gateway in the same run; the target is on the CPU
    // the plugin adds per message.
    for (case, lang, line, target, max_added) in [
        (
            "echo_js",
            "JavaScript",
            "JavaScript plugin (componentize-js echo, one `reply`): added server CPU per message vs native (baseline column: the gateway's native `chat` path)",
            "≤ +20 µs",
            20.0,
        ),
        (
            "echo_py",
            "Python",
            "Python plugin (componentize-py echo, one `reply`): added server CPU per message vs native (baseline column: the gateway's native `chat` path)",
            "≤ +6 µs",
            6.0,
        ),
    ] {
        let (gx, nx) = (
            answered(runs, case, "gateway"),
            answered(runs, case, "native"),
        );
        let (g, b) = (
            med(&gx, "server_cpu_us_per_msg"),
            med(&nx, "server_cpu_us_per_msg"),
        );
        budget.push(Budget {
            noise: noise(&gx, &nx),
            line,
            target,
            gateway: g,
            baseline: b,
            ratio: ratio(g, b),
            verdict: added(g, b).map(|a| a <= max_added),
            unit: "µs",
            added: true,
        });
        split(lang, &gx, &nx);
    }

    // Conflation: the same run measures the plain lossy relay (baseline
    // column) and the latest-wins one (gateway column).
    for (server, line, tuned) in [
        (
            "gateway",
            "Conflation: age p50 of the positions a receiver draining half the stream reads, latest-wins vs plain lossy relay (socket_send_buffer_bytes 32 KiB)",
            true,
        ),
        (
            "shipped",
            "Conflation as shipped (kernel send buffer autotuned): same measure",
            false,
        ),
    ] {
        let rs = select(runs, "latest", server);
        let (g, b) = (med(&rs, "latest_age_p50_us"), med(&rs, "plain_age_p50_us"));
        budget.push(Budget {
            noise: noise(&rs, &[]),
            line,
            target: if tuned { "≤ 0.5× plain" } else { "reported" },
            gateway: g,
            baseline: b,
            ratio: ratio(g, b),
            verdict: if tuned {
                ratio(g, b).map(|r| r <= 0.5)
            } else {
                None
            },
            unit: "µs",
            added: false,
        });
    }

    let _ = writeln!(md, "### Budget\n");
    let _ = writeln!(
        md,
        "| budget line | target | gateway | baseline | ratio | verdict | other CPU % |\n|---|---|---:|---:|---:|---|---:|"
    );
    for l in &budget {
        let line = if l.line.starts_with("Idle") && conns > 0 {
            format!(
                "{} @ {} connections",
                l.line,
                format_thousands(conns as f64)
            )
        } else {
            l.line.to_owned()
        };
        let _ = writeln!(
            md,
            "| {line} | {} | {} {unit} | {} {unit} | {} | {} | {} |",
            l.target,
            fmt(l.gateway),
            fmt(l.baseline),
            match (l.added, added(l.gateway, l.baseline), l.ratio) {
                (true, Some(a), Some(r)) => format!("+{} {} ({r:.2}×)", fmt(Some(a)), l.unit),
                (_, _, r) => r.map_or("–".to_owned(), |r| format!("{r:.2}×")),
            },
            match l.verdict {
                Some(true) => "**pass**",
                Some(false) => "**MISS**",
                None if l.target == "reported" => "reported",
                None => "not measured",
            },
            fmt(l.noise),
            unit = l.unit,
        );
    }
    if !plugin_split.is_empty() {
        let _ = writeln!(
            md,
            "\nWhat the plugin lines add, split as the kernel accounts it (medians, gateway minus native): {}. User time is the plugin's own work and the gateway's around it; system time is the kernel's, and over loopback it grows when the load generator idles between replies, as each reply then wakes it (BENCHMARKS.md, \"JavaScript and Python plugins\").",
            plugin_split.join("; ")
        );
    }
    if let Some(rate) = same {
        let _ = writeln!(
            md,
            "\nSame-rate comparisons use {} publications/s per room ({} deliveries/s), the highest rate both servers delivered completely.",
            fmt(Some(rate)),
            fmt(deliveries_at(&gf, rate).or(deliveries_at(&bf, rate)))
        );
    }
    let r = reference_rate;
    let at = |rs: &[&Value], key: &str| step_med(rs, r, key, max_noise);
    let (gc, bc) = (
        at(&gf, "server_cpu_us_per_delivery"),
        at(&bf, "server_cpu_us_per_delivery"),
    );
    let (gp, bp) = (at(&gf, "latency_p99_us"), at(&bf, "latency_p99_us"));
    if gc.is_some() || bc.is_some() {
        let _ = writeln!(
            md,
            "At the reference rate of {} publications/s per room ({} deliveries/s): server CPU per delivery {} µs vs {} µs ({}), p99 delivery latency {} µs vs {} µs ({}).",
            fmt(Some(r)),
            fmt(deliveries_at(&gf, r).or(deliveries_at(&bf, r))),
            fmt(gc),
            fmt(bc),
            ratio(gc, bc).map_or("–".to_owned(), |x| format!("{x:.2}×")),
            fmt(gp),
            fmt(bp),
            ratio(gp, bp).map_or("–".to_owned(), |x| format!("{x:.2}×")),
        );
    }

    // --- Every measurement.
    let _ = writeln!(md, "\n### All measurements (medians over runs)\n");
    let table = |md: &mut String, case: &str, cols: &[(&str, &str)]| {
        let _ = writeln!(
            md,
            "| {case} | runs | {} |\n|---|---:|{}",
            cols.iter().map(|c| c.1).collect::<Vec<_>>().join(" | "),
            "---:|".repeat(cols.len())
        );
        for server in ["gateway", "native", "baseline"] {
            let rs = select(runs, case, server);
            if rs.is_empty() {
                continue;
            }
            let cells: Vec<String> = cols.iter().map(|(k, _)| fmt(med(&rs, k))).collect();
            let _ = writeln!(
                md,
                "| {server} | {}/{} | {} |",
                rs.len(),
                total(case, server),
                cells.join(" | ")
            );
        }
        let _ = writeln!(md);
    };
    let echo_cols = [
        ("msgs_per_s", "msgs/s"),
        ("rtt_p50_us", "RTT p50 µs"),
        ("rtt_p90_us", "p90"),
        ("rtt_p99_us", "p99"),
        ("rtt_p99_9_us", "p99.9"),
        ("server_cpu_us_per_msg", "server CPU µs/msg"),
        ("server_user_us_per_msg", "user µs/msg"),
        ("server_system_us_per_msg", "system µs/msg"),
        ("server_cpu_pct", "server CPU %"),
        ("client_cpu_pct", "client CPU %"),
        ("other_cpu_pct", "other CPU %"),
    ];
    table(&mut md, "echo_hot", &echo_cols);
    table(&mut md, "echo_ext", &echo_cols);
    table(&mut md, "echo_js", &echo_cols);
    table(&mut md, "echo_py", &echo_cols);
    let connect_cols = [
        ("handshakes_per_s", "handshakes/s"),
        ("handshake_p50_us", "p50 µs"),
        ("handshake_p99_us", "p99 µs"),
        ("server_cpu_us_per_handshake", "server CPU µs/handshake"),
        ("server_cpu_pct", "server CPU %"),
        ("client_cpu_pct", "client CPU %"),
        ("other_cpu_pct", "other CPU %"),
        ("failed", "failed"),
    ];
    table(&mut md, "connect_static", &connect_cols);
    table(&mut md, "connect_jwt", &connect_cols);
    let idle_cols = [
        ("authenticated", "authenticated"),
        ("server_rss_before_kib", "RSS before KiB"),
        ("server_rss_after_kib", "RSS after KiB"),
        ("server_kib_per_conn", "KiB/conn"),
        ("connects_per_s", "connects/s"),
        ("connect_p99_us", "connect p99 µs"),
        ("server_cpu_us_per_connect", "server CPU µs/connect"),
        ("client_kib_per_conn", "client KiB/conn"),
        ("other_cpu_pct", "other CPU %"),
    ];
    table(&mut md, "idle", &idle_cols);
    table(&mut md, "idle_shipped", &idle_cols);
    for case in ["fanout_hot", "fanout_chat"] {
        sweep_table(&mut md, runs, case, &total, max_noise);
    }
    md
}

/// One row per (server, rate) of a fan-out sweep.
fn sweep_table(
    md: &mut String,
    runs: &[Value],
    case: &str,
    total: &dyn Fn(&str, &str) -> usize,
    max_noise: f64,
) {
    let cols = [
        ("deliveries_per_s", "deliveries/s"),
        ("delivery_pct", "delivered %"),
        ("latency_p50_us", "p50 µs"),
        ("latency_p99_us", "p99 µs"),
        ("latency_p99_9_us", "p99.9 µs"),
        ("server_cpu_us_per_delivery", "server CPU µs/delivery"),
        ("server_cpu_pct", "server CPU %"),
        ("client_cpu_pct", "client CPU %"),
        ("other_cpu_pct", "other CPU %"),
    ];
    let mut header_done = false;
    for server in ["gateway", "baseline"] {
        let rs = select(runs, case, server);
        if rs.is_empty() {
            continue;
        }
        if !header_done {
            let shape = rs
                .first()
                .map(|r| {
                    format!(
                        "{} rooms × {} members, {} recipients per publication",
                        r["rooms"], r["members"], r["recipients_per_publish"]
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "{case} ({shape}; runs: gateway {}, baseline {}):\n",
                total(case, "gateway"),
                total(case, "baseline"),
            );
            let _ = writeln!(
                md,
                "| server | rate/room | runs passing 100% | steps kept | {} |\n|---|---:|---:|---:|{}",
                cols.iter().map(|c| c.1).collect::<Vec<_>>().join(" | "),
                "---:|".repeat(cols.len())
            );
            header_done = true;
        }
        let mut by_rate: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for r in &rs {
            for s in r["steps"].as_array().into_iter().flatten() {
                if let Some(rate) = s["rate_per_room"].as_f64() {
                    by_rate.entry((rate * 1000.0) as u64).or_default().push(s);
                }
            }
        }
        for (rate, steps) in by_rate {
            let passing = steps
                .iter()
                .filter(|s| s["delivered"] == s["expected"])
                .count();
            let all = steps.len();
            let steps = quiet_steps(steps, max_noise);
            let cells: Vec<String> = cols.iter().map(|(k, _)| fmt(med(&steps, k))).collect();
            let _ = writeln!(
                md,
                "| {server} | {} | {passing}/{all} | {}/{all} | {} |",
                fmt(Some(rate as f64 / 1000.0)),
                steps.len(),
                cells.join(" | ")
            );
        }
    }
    if header_done {
        let _ = writeln!(md);
    }
}

/// CPU model, cores, memory and kernel of this machine, from `/proc`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("- machine: {cores} × {model}, {mem} RAM, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The rendered line that starts with `start`.
    fn budget_line(md: &str, start: &str) -> String {
        md.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} in:\n{md}"))
            .to_owned()
    }

    /// The JS/Python lines budget what the plugin adds to the native path:
    /// the ratio column shows the difference, the verdict tests it.
    #[test]
    fn plugin_lines_budget_the_added_cpu() {
        let run = |case: &str, server: &str, cpu: f64| {
            json!({"case": case, "server": server, "ok": 100, "errors": {},
                   "server_cpu_us_per_msg": cpu, "other_cpu_pct": 1.0})
        };
        let runs = vec![
            run("echo_js", "gateway", 29.0),
            run("echo_js", "native", 10.0),
            run("echo_py", "gateway", 17.0),
            run("echo_py", "native", 10.0),
        ];
        let md = render(&runs, &Totals::new(), &[], 50.0, 25.0);
        let js = budget_line(&md, "| JavaScript plugin");
        assert!(
            js.contains("| ≤ +20 µs | 29.0 µs | 10.0 µs | +19.0 µs (2.90×) | **pass** |"),
            "{js}"
        );
        let py = budget_line(&md, "| Python plugin");
        assert!(
            py.contains("| ≤ +6 µs | 17.0 µs | 10.0 µs | +7 µs (1.70×) | **MISS** |"),
            "{py}"
        );
        // Runs without the user/system split (older results) add no sentence.
        assert!(!md.contains("split as the kernel accounts it"), "{md}");
    }

    /// With the user/system split in the runs, the added CPU of each plugin
    /// line is split too (the verdict stays on the total).
    #[test]
    fn plugin_lines_split_added_cpu_into_user_and_system() {
        let run = |case: &str, server: &str, user: f64, system: f64| {
            json!({"case": case, "server": server, "ok": 100, "errors": {},
                   "server_cpu_us_per_msg": user + system,
                   "server_user_us_per_msg": user, "server_system_us_per_msg": system,
                   "other_cpu_pct": 1.0})
        };
        let runs = vec![
            run("echo_ext", "gateway", 4.75, 4.0),
            run("echo_ext", "native", 3.0, 4.0),
            run("echo_js", "gateway", 19.5, 8.5),
            run("echo_js", "native", 3.0, 4.0),
            run("echo_py", "gateway", 13.0, 3.5),
            run("echo_py", "native", 3.0, 4.0),
        ];
        let md = render(&runs, &Totals::new(), &[], 50.0, 25.0);
        let js = budget_line(&md, "| JavaScript plugin");
        assert!(js.contains("| +21.0 µs (4.00×) | **MISS** |"), "{js}");
        let split = budget_line(&md, "What the plugin lines add, split");
        assert!(
            split.contains(
                "Rust +1.75 µs user, +0 µs system; JavaScript +16.5 µs user, +4.50 µs system; Python +10.0 µs user, -0.50 µs system."
            ),
            "{split}"
        );
        assert!(md.contains("| user µs/msg | system µs/msg |"), "{md}");
    }

    #[test]
    fn idle_as_shipped_has_its_own_line() {
        let run = |case: &str, server: &str, kib: f64| {
            json!({"case": case, "server": server, "connections": 10_000,
                   "server_kib_per_conn": kib, "other_cpu_pct": 1.0})
        };
        let runs = vec![
            run("idle", "gateway", 3.9),
            run("idle", "baseline", 7.7),
            run("idle_shipped", "gateway", 4.2),
            run("idle_shipped", "baseline", 7.9),
        ];
        let md = render(&runs, &Totals::new(), &[], 50.0, 25.0);
        let pinned = budget_line(&md, "| Idle memory: RSS");
        assert!(
            pinned.contains("| ≤ 4 KiB | 3.90 KiB | 7.70 KiB |"),
            "{pinned}"
        );
        assert!(pinned.contains("**pass**"), "{pinned}");
        let shipped = budget_line(&md, "| Idle memory as shipped");
        assert!(shipped.contains("10,000 connections"), "{shipped}");
        assert!(
            shipped.contains("| ≤ 3.0 KiB | 4.20 KiB | 7.90 KiB |"),
            "{shipped}"
        );
        assert!(shipped.contains("**MISS**"), "{shipped}");
        assert!(
            md.contains("| idle_shipped |"),
            "its runs are tabled:\n{md}"
        );
    }

    #[test]
    fn medians_and_sweeps() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let run = json!({"steps": [
            {"rate_per_room": 10.0, "expected": 5, "delivered": 5},
            {"rate_per_room": 20.0, "expected": 9, "delivered": 9},
            {"rate_per_room": 40.0, "expected": 9, "delivered": 8},
            {"rate_per_room": 80.0, "expected": 9, "delivered": 9},
        ]});
        assert_eq!(max_passing_rate(&run), Some(20.0));
        assert_eq!(format_thousands(1234567.0), "1,234,567");
        let runs = vec![
            json!({"case": "a", "server": "g", "other_cpu_pct": 90.0}),
            json!({"case": "a", "server": "g", "other_cpu_pct": 5.0}),
            json!({"case": "a", "server": "b", "other_cpu_pct": 90.0}),
        ];
        let (kept, totals) = keep_quiet(runs, 25.0);
        assert_eq!(kept.len(), 2, "the noisy run with a quiet sibling goes");
        assert_eq!(totals[&("a".to_owned(), "g".to_owned())], 2);
    }
}
