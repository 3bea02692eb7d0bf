//! Measuring and reporting: latency histograms, the `/proc` probes for server
//! CPU time and RSS, the progress line on stderr and the summary on stdout.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Output and server-probe flags shared by every client mode.
#[derive(Args, Debug, Clone)]
pub(crate) struct OutputArgs {
    /// Server process id: report its CPU time per message (utime+stime from
    /// /proc/PID/stat, and each of the two) and, in `idle`, its RSS (VmRSS
    /// from /proc/PID/status).
    /// Several (repeated or comma-separated) count as one server, their CPU
    /// times and RSS summed: a cluster's nodes and its Redis.
    #[arg(long, value_delimiter = ',')]
    pub(crate) pid: Vec<u32>,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Free-form label echoed in the summary (e.g. "gateway", "baseline").
    #[arg(long, default_value = "")]
    pub(crate) label: String,
    /// Extra `key=value` fields copied into the summary (repeatable; numbers
    /// stay numbers). `scripts/bench.sh` tags runs with case, server and run.
    #[arg(long = "tag", value_parser = parse_tag)]
    pub(crate) tags: Vec<(String, Value)>,
}

fn parse_tag(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    let value = v
        .parse::<u64>()
        .map(Value::from)
        .unwrap_or_else(|_| Value::from(v));
    Ok((k.to_owned(), value))
}

/// Highest latency the histograms track (60 s, in microseconds).
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Debug, Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram.
    ///
    /// # Errors
    /// Never with these constant bounds; hdrhistogram's constructor is fallible.
    pub(crate) fn new() -> Result<Self> {
        Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .map(Self)
            .map_err(|e| anyhow!("histogram: {e:?}"))
    }

    /// Records one sample.
    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records one sample given in nanoseconds.
    pub(crate) fn record_ns(&mut self, ns: u64) {
        self.0
            .saturating_record((ns / 1_000).clamp(1, MAX_LATENCY_US));
    }

    /// Adds another histogram's samples.
    pub(crate) fn merge(&mut self, other: &Self) {
        // Same bounds on both sides, so `add` cannot fail; saturate otherwise.
        if self.0.add(&other.0).is_err() {
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Percentile fields `<prefix>_p50_us` ... `<prefix>_max_us` (null when empty).
    pub(crate) fn fields(&self, prefix: &str) -> Vec<(String, Value)> {
        let q = |q: f64| {
            if self.0.is_empty() {
                Value::Null
            } else {
                json!(self.0.value_at_quantile(q))
            }
        };
        vec![
            (format!("{prefix}_p50_us"), q(0.5)),
            (format!("{prefix}_p90_us"), q(0.9)),
            (format!("{prefix}_p99_us"), q(0.99)),
            (format!("{prefix}_p99_9_us"), q(0.999)),
            (
                format!("{prefix}_max_us"),
                if self.0.is_empty() {
                    Value::Null
                } else {
                    json!(self.0.max())
                },
            ),
        ]
    }
}

/// CPU time and RSS of a process (or the sum over several), read from
/// `/proc`.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    /// Empty: this process (`/proc/self`).
    pids: Vec<u32>,
    ticks_per_sec: u64,
}

/// Clock ticks per second when `getconf CLK_TCK` is unavailable (Linux default).
const DEFAULT_CLK_TCK: u64 = 100;

fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(DEFAULT_CLK_TCK)
}

impl Probe {
    /// A probe of processes `pids` (summed; at least one), checking that each
    /// can be read.
    ///
    /// # Errors
    /// A `/proc/PID/stat` cannot be read or parsed.
    pub(crate) fn server(pids: &[u32]) -> Result<Self> {
        let ticks_per_sec = clk_tck();
        for &pid in pids {
            cpu_of(&format!("/proc/{pid}/stat"), ticks_per_sec)
                .with_context(|| format!("--pid {pid}: cannot read /proc/{pid}/stat"))?;
        }
        Ok(Self {
            pids: pids.to_vec(),
            ticks_per_sec,
        })
    }

    /// A probe of the bench process itself.
    pub(crate) fn own() -> Self {
        Self {
            pids: Vec::new(),
            ticks_per_sec: clk_tck(),
        }
    }

    /// The `/proc` file `file` of each process probed.
    fn paths(&self, file: &str) -> Vec<String> {
        if self.pids.is_empty() {
            return vec![format!("/proc/self/{file}")];
        }
        self.pids
            .iter()
            .map(|pid| format!("/proc/{pid}/{file}"))
            .collect()
    }

    /// User and system CPU time of all the processes' threads so far.
    ///
    /// # Errors
    /// A file is missing (process gone) or malformed.
    pub(crate) fn cpu(&self) -> Result<CpuTime> {
        self.paths("stat")
            .iter()
            .try_fold(CpuTime::default(), |sum, path| {
                Ok(sum + cpu_of(path, self.ticks_per_sec)?)
            })
    }

    /// Resident set size in KiB (`VmRSS`), summed over the processes.
    ///
    /// # Errors
    /// A file is missing or has no `VmRSS` line.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        self.paths("status").iter().map(|path| rss_of(path)).sum()
    }
}

/// CPU time of a process, split as the kernel accounts it: `user` is the
/// process's own code (the gateway, wasmtime, plugin guests), `system` the
/// kernel working on its behalf (syscalls, and over loopback the receiving
/// side's TCP processing and wake-ups that its sends trigger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTime {
    pub(crate) user: Duration,
    pub(crate) system: Duration,
}

impl CpuTime {
    /// User + system.
    pub(crate) fn total(self) -> Duration {
        self.user + self.system
    }

    /// What was used between `earlier` and `self` (zero where a counter went
    /// backwards, i.e. a process was replaced).
    fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl std::ops::Add for CpuTime {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// User and system CPU time of one process (`/proc/PID/stat`).
fn cpu_of(path: &str, ticks_per_sec: u64) -> Result<CpuTime> {
    let stat = std::fs::read_to_string(path)?;
    // The command name may contain spaces and parentheses: fields are counted
    // after the last ')'. Field 3 (state) is index 0, utime (14) index 11,
    // stime (15) index 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("malformed stat field {i}"))
    };
    let time = |ticks: u64| Duration::from_micros(ticks.saturating_mul(1_000_000) / ticks_per_sec);
    Ok(CpuTime {
        user: time(field(11)?),
        system: time(field(12)?),
    })
}

/// `VmRSS` of one process (`/proc/PID/status`), in KiB.
fn rss_of(path: &str) -> Result<u64> {
    let status = std::fs::read_to_string(path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in status"))
}

/// CPU used by the server, by the bench and by the whole machine up to a point
/// in time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    server: Option<CpuTime>,
    client: Option<Duration>,
    machine: Option<Duration>,
    at: Instant,
}

/// Busy CPU time of all CPUs (`/proc/stat` line `cpu`: user, nice, system, irq,
/// softirq, steal; guest time is already inside user).
fn machine_busy(ticks_per_sec: u64) -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum::<u64>();
    Some(Duration::from_micros(
        busy.saturating_mul(1_000_000) / ticks_per_sec,
    ))
}

/// Both probes of a run.
#[derive(Debug, Clone)]
pub(crate) struct Probes {
    server: Option<Probe>,
    client: Probe,
}

impl Probes {
    /// Probes for `--pid` (if given) and the bench itself.
    ///
    /// # Errors
    /// `--pid` names a process whose `/proc` entry cannot be read.
    pub(crate) fn new(pids: &[u32]) -> Result<Self> {
        Ok(Self {
            server: (!pids.is_empty())
                .then(|| Probe::server(pids))
                .transpose()?,
            client: Probe::own(),
        })
    }

    /// The server probe, if any.
    pub(crate) fn server(&self) -> Option<&Probe> {
        self.server.as_ref()
    }

    /// Reads both CPU counters now.
    pub(crate) fn mark(&self) -> CpuMark {
        CpuMark {
            server: self.server.as_ref().and_then(|p| p.cpu().ok()),
            client: self.client.cpu().ok().map(CpuTime::total),
            machine: machine_busy(self.client.ticks_per_sec),
            at: Instant::now(),
        }
    }

    /// Report fields for the span `from..to` over `units` messages/deliveries/
    /// handshakes: server CPU µs per unit, in all and split into user and
    /// system time; server, client and other processes' CPU utilisation
    /// (percent of one core; "other" is everything else running on the
    /// machine, i.e. noise when it is not near 0).
    pub(crate) fn fields(
        &self,
        from: &CpuMark,
        to: &CpuMark,
        unit: &str,
        units: u64,
    ) -> Vec<(String, Value)> {
        let wall = to.at.saturating_duration_since(from.at).as_secs_f64();
        let secs = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        let pct = |a: Option<Duration>, b: Option<Duration>| match secs(a, b) {
            Some(used) if wall > 0.0 => json!(round2(100.0 * used / wall)),
            _ => Value::Null,
        };
        let server = match (from.server, to.server) {
            (Some(a), Some(b)) => Some(b.since(a)),
            _ => None,
        };
        let per_unit = |part: fn(CpuTime) -> Duration| match server {
            Some(used) if units > 0 => {
                json!(round2(part(used).as_secs_f64() * 1e6 / units as f64))
            }
            _ => Value::Null,
        };
        let server_total = |m: &CpuMark| m.server.map(CpuTime::total);
        let other = match (secs(from.machine, to.machine), secs(from.client, to.client)) {
            (Some(all), Some(client)) if wall > 0.0 => {
                let server = server.map_or(0.0, |s| s.total().as_secs_f64());
                json!(round2((100.0 * (all - client - server) / wall).max(0.0)))
            }
            _ => Value::Null,
        };
        vec![
            (
                format!("server_cpu_us_per_{unit}"),
                per_unit(CpuTime::total),
            ),
            (format!("server_user_us_per_{unit}"), per_unit(|t| t.user)),
            (
                format!("server_system_us_per_{unit}"),
                per_unit(|t| t.system),
            ),
            (
                "server_cpu_pct".to_owned(),
                pct(server_total(from), server_total(to)),
            ),
            ("client_cpu_pct".to_owned(), pct(from.client, to.client)),
            ("other_cpu_pct".to_owned(), other),
        ]
    }
}

/// Rounds to two decimals for display.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A progress line on stderr, redrawn every second until dropped or finished.
#[derive(Debug)]
pub(crate) struct Progress {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Starts redrawing `line()` every second (nothing when `quiet`). On a
    /// terminal the line is redrawn in place; otherwise one line per second.
    pub(crate) fn start<F>(quiet: bool, line: F) -> Self
    where
        F: Fn() -> String + Send + Sync + 'static,
    {
        let stop = CancellationToken::new();
        if quiet {
            return Self { stop, task: None };
        }
        let tty = std::io::stderr().is_terminal();
        let token = stop.clone();
        let line = Arc::new(line);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {
                        let text = line();
                        let mut err = std::io::stderr().lock();
                        let _ = if tty {
                            write!(err, "\r\x1b[2K{text}")
                        } else {
                            writeln!(err, "{text}")
                        };
                        let _ = err.flush();
                    }
                }
            }
            if tty {
                let _ = writeln!(std::io::stderr());
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the line (and ends it on a terminal).
    pub(crate) async fn finish(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Column names and rows of a step table (fan-out rate sweeps).
#[derive(Debug)]
struct StepTable {
    columns: Vec<String>,
    rows: Vec<Map<String, Value>>,
}

/// The end-of-run summary: ordered fields, optionally with a per-step table.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    fields: Vec<(String, Value)>,
    steps: Option<StepTable>,
}

impl Summary {
    /// A summary for `mode` with the run's label and target.
    pub(crate) fn new(mode: &str, out: &OutputArgs, target: &str) -> Self {
        let mut s = Self::default();
        s.push("mode", json!(mode));
        if !out.label.is_empty() {
            s.push("label", json!(out.label));
        }
        s.push("target", json!(target));
        for (k, v) in &out.tags {
            s.push(k, v.clone());
        }
        s
    }

    /// Appends one field.
    pub(crate) fn push(&mut self, key: &str, value: Value) {
        self.fields.push((key.to_owned(), value));
    }

    /// Appends several fields.
    pub(crate) fn extend(&mut self, fields: Vec<(String, Value)>) {
        self.fields.extend(fields);
    }

    /// Sets the step table.
    pub(crate) fn steps(&mut self, columns: Vec<String>, rows: Vec<Map<String, Value>>) {
        self.steps = Some(StepTable { columns, rows });
    }

    /// Prints the table, or one JSON object with `--json`.
    pub(crate) fn print(&self, json_out: bool) {
        if json_out {
            let mut obj: Map<String, Value> = self.fields.iter().cloned().collect();
            if let Some(StepTable { rows, .. }) = &self.steps {
                obj.insert(
                    "steps".to_owned(),
                    Value::Array(rows.iter().cloned().map(Value::Object).collect()),
                );
            }
            println!("{}", Value::Object(obj));
            return;
        }
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        println!();
        for (k, v) in &self.fields {
            println!("{k:<width$}  {}", show(v));
        }
        if let Some(StepTable {
            columns: cols,
            rows,
        }) = &self.steps
        {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| r.get(c).map(show).unwrap_or_default())
                        .collect()
                })
                .collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].len())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            println!();
            let line = |cells: Vec<&str>| {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:>w$}"))
                    .collect();
                println!("{}", parts.join("  "));
            };
            line(cols.iter().map(String::as_str).collect());
            for r in &cells {
                line(r.iter().map(String::as_str).collect());
            }
        }
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Object(m) if m.is_empty() => "-".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_pids_are_summed_and_each_must_exist() {
        // A sleeping child: its CPU time and RSS stay put between reads.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(100));
        let one = Probe::server(&[pid]).expect("probe");
        let two = Probe::server(&[pid, pid]).expect("probe");
        let rss = one.rss_kib().expect("rss");
        assert!(rss > 0);
        assert_eq!(two.rss_kib().expect("rss"), 2 * rss);
        let (c1, c2) = (one.cpu().expect("cpu"), two.cpu().expect("cpu"));
        assert_eq!(c2, c1 + c1);
        assert_eq!(c1.total(), c1.user + c1.system);
        let _ = child.kill();
        let _ = child.wait();
        let err = Probe::server(&[std::process::id(), u32::MAX]).expect_err("no such process");
        assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
        assert!(Probes::new(&[]).expect("no server").server().is_none());
    }

    /// Per unit, the server's CPU is reported in all and as user and system
    /// time; utilisation counts both.
    #[test]
    fn server_cpu_per_unit_is_split_into_user_and_system() {
        let probes = Probes::new(&[]).expect("probes");
        let at = Instant::now();
        let mark = |user_ms: u64, system_ms: u64, secs: u64| CpuMark {
            server: Some(CpuTime {
                user: Duration::from_millis(user_ms),
                system: Duration::from_millis(system_ms),
            }),
            client: Some(Duration::ZERO),
            machine: None,
            at: at + Duration::from_secs(secs),
        };
        let fields: Map<String, Value> = probes
            .fields(&mark(100, 50, 0), &mark(1_100, 550, 2), "msg", 100_000)
            .into_iter()
            .collect();
        assert_eq!(fields["server_cpu_us_per_msg"], json!(15.0));
        assert_eq!(fields["server_user_us_per_msg"], json!(10.0));
        assert_eq!(fields["server_system_us_per_msg"], json!(5.0));
        assert_eq!(fields["server_cpu_pct"], json!(75.0));
    }
}
