//! `connect`: handshakes per second and their latency.
//!
//! C workers loop: TCP connect → upgrade (`?tenant=..&ticket=..`, or a JWT signed
//! here per connection with `--jwt-secret`) → wait for `sys.authed` → abort the
//! socket (`SO_LINGER 0`, so neither side piles up `TIME_WAIT` entries). Latency
//! is measured from the TCP connect to `sys.authed`. Refusals are counted by
//! reason (`http 429`, `http 401`, ...).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;
use tokio::time::Instant;

use crate::client::{Connector, TargetArgs, failure_label};
use crate::report::{Latency, OutputArgs, Probes, Progress, Summary, round2};

/// `connect` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Concurrent connecting workers.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Seconds to run (ignored when --total is set).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many successful handshakes instead of after --duration.
    #[arg(long)]
    total: Option<u64>,
}

#[derive(Default)]
struct WorkerResult {
    latency: Option<Latency>,
    failures: BTreeMap<String, u64>,
}

/// Runs the mode.
///
/// # Errors
/// Bad flags, an unreadable `--pid`, or no handshake succeeded.
pub(crate) async fn run(args: ConnectArgs) -> Result<()> {
    if args.concurrency == 0 || (args.total.is_none() && args.duration <= 0.0) {
        bail!("--concurrency and --duration (or --total) must be positive");
    }
    let probes = Probes::new(&args.out.pid)?;
    let connector = Connector::new(&args.target, args.concurrency).await?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let progress = {
        let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
        let last = AtomicU64::new(0);
        Progress::start(args.out.quiet, move || {
            let now = ok.load(Ordering::Relaxed);
            let rate = now.saturating_sub(last.swap(now, Ordering::Relaxed));
            format!(
                "[connect] handshakes {now} ({rate}/s)  failed {}",
                failed.load(Ordering::Relaxed)
            )
        })
    };
    let start = Instant::now();
    let deadline = args
        .total
        .is_none()
        .then(|| start + Duration::from_secs_f64(args.duration));
    let cpu0 = probes.mark();
    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (connector, ok, failed, next) = (
            Arc::clone(&connector),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&next),
        );
        let total = args.total;
        workers.push(tokio::spawn(async move {
            let mut r = WorkerResult {
                latency: Latency::new().ok(),
                failures: BTreeMap::new(),
            };
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| n >= t) {
                    break;
                }
                let t0 = Instant::now();
                match connector.connect(n, None).await {
                    Ok(ws) => {
                        if let Some(h) = r.latency.as_mut() {
                            h.record(t0.elapsed());
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                        // Abortive close: RST instead of FIN, no TIME_WAIT.
                        let _ = ws.get_ref().set_zero_linger();
                        drop(ws);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *r.failures.entry(failure_label(&e)).or_default() += 1;
                        if total.is_some() {
                            // Retry this slot so --total counts successes.
                            next.fetch_sub(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            r
        }));
    }
    let mut latency = Latency::new()?;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        if let Ok(r) = w.await {
            if let Some(h) = &r.latency {
                latency.merge(h);
            }
            for (k, v) in r.failures {
                *failures.entry(k).or_default() += v;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = probes.mark();
    progress.finish().await;
    let done = ok.load(Ordering::Relaxed);
    if done == 0 {
        bail!("no handshake succeeded; failures: {failures:?}");
    }

    let mut s = Summary::new("connect", &args.out, connector.endpoint());
    s.push(
        "auth",
        json!(if args.target.jwt_secret.is_some() {
            "jwt (HS256, signed per connection)"
        } else {
            "static ticket"
        }),
    );
    s.push("concurrency", json!(args.concurrency));
    s.push("elapsed_s", json!(round2(elapsed)));
    s.push("handshakes", json!(done));
    s.push("failed", json!(failed.load(Ordering::Relaxed)));
    s.push("failures", json!(failures));
    s.push(
        "handshakes_per_s",
        json!(round2(done as f64 / elapsed.max(1e-9))),
    );
    s.extend(latency.fields("handshake"));
    s.extend(probes.fields(&cpu0, &cpu1, "handshake", done));
    s.print(args.out.json);
    Ok(())
}
