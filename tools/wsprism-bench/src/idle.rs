//! `idle`: open N authenticated connections, hold them, and read the server's
//! RSS before and after → KiB per connection.
//!
//! Each connection is counted once its `sys.authed` arrives; a reader task then
//! keeps polling it so server pings are answered. Sockets are spread over
//! loopback source addresses (see `--src-ips`) so N can exceed one address's
//! ephemeral ports. Run it against a freshly started server: an allocator keeps
//! memory freed by earlier runs, which would hide the growth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Connector, TargetArgs, failure_label};
use crate::report::{Latency, OutputArgs, Probes, Progress, Summary, round2};

/// `idle` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'n', default_value_t = 1_000)]
    connections: usize,
    /// Seconds to hold every connection open before reading RSS.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
}

/// Runs the mode.
///
/// # Errors
/// Bad flags, an unreadable `--pid`, or not a single connection authenticated.
pub(crate) async fn run(args: IdleArgs) -> Result<()> {
    if args.connections == 0 {
        bail!("--connections must be positive");
    }
    let probes = Probes::new(&args.out.pid)?;
    let connector = Connector::new(&args.target, args.connections).await?;
    let rss_before = probes.server().and_then(|p| p.rss_kib().ok());
    let own_rss_before = crate::report::Probe::own().rss_kib().ok();
    let cpu0 = probes.mark();

    let authed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let closed_early = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let progress = {
        let (authed, failed, n) = (Arc::clone(&authed), Arc::clone(&failed), args.connections);
        Progress::start(args.out.quiet, move || {
            format!(
                "[idle] authenticated {}/{n}  failed {}",
                authed.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            )
        })
    };

    let stop = CancellationToken::new();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        args.target.connect_concurrency.max(1),
    ));
    let started = Instant::now();
    let mut opens = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        let (connector, semaphore, authed, failed, closed_early, failures, stop) = (
            Arc::clone(&connector),
            Arc::clone(&semaphore),
            Arc::clone(&authed),
            Arc::clone(&failed),
            Arc::clone(&closed_early),
            Arc::clone(&failures),
            stop.clone(),
        );
        opens.push(tokio::spawn(async move {
            let permit = semaphore.acquire().await;
            let t0 = Instant::now();
            let ws = connector.connect(n as u64, None).await;
            let took = t0.elapsed();
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    *failures.lock().entry(failure_label(&e)).or_default() += 1;
                    return None;
                }
            };
            authed.fetch_add(1, Ordering::Relaxed);
            // Hold: keep reading so pings get their pongs, until the run ends.
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        m = ws.next() => if !matches!(m, Some(Ok(_))) {
                            closed_early.fetch_add(1, Ordering::Relaxed);
                            return;
                        },
                    }
                }
            });
            Some(took)
        }));
    }
    let mut connect_latency = Latency::new()?;
    for o in opens {
        if let Ok(Some(took)) = o.await {
            connect_latency.record(took);
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    let cpu_open = probes.mark();
    tokio::time::sleep(Duration::from_secs_f64(args.hold.max(0.0))).await;
    let rss_after = probes.server().and_then(|p| p.rss_kib().ok());
    let own_rss_after = crate::report::Probe::own().rss_kib().ok();
    progress.finish().await;

    let held = authed.load(Ordering::Relaxed);
    let lost = closed_early.load(Ordering::Relaxed);
    if held == 0 {
        bail!(
            "no connection authenticated; failures: {:?}",
            failures.lock()
        );
    }
    let per_conn = |before: Option<u64>, after: Option<u64>, n: u64| match (before, after) {
        (Some(b), Some(a)) if n > 0 => json!(round2(a.saturating_sub(b) as f64 / n as f64)),
        _ => serde_json::Value::Null,
    };
    let mut s = Summary::new("idle", &args.out, connector.endpoint());
    s.push("connections", json!(args.connections));
    s.push("authenticated", json!(held));
    s.push("failed", json!(failed.load(Ordering::Relaxed)));
    s.push("failures", json!(*failures.lock()));
    s.push("closed_during_hold", json!(lost));
    s.push("open_s", json!(round2(open_s)));
    s.push(
        "connects_per_s",
        json!(round2(held as f64 / open_s.max(1e-9))),
    );
    s.extend(connect_latency.fields("connect"));
    s.extend(probes.fields(&cpu0, &cpu_open, "connect", held));
    s.push("server_rss_before_kib", json!(rss_before));
    s.push("server_rss_after_kib", json!(rss_after));
    s.push(
        "server_kib_per_conn",
        per_conn(rss_before, rss_after, held.saturating_sub(lost)),
    );
    s.push(
        "client_kib_per_conn",
        per_conn(own_rss_before, own_rss_after, held),
    );
    s.print(args.out.json);
    stop.cancel();
    Ok(())
}
