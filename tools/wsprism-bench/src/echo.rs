//! `echo`: C connections in a closed loop, one message in flight per connection.
//!
//! Hot Lane: a binary frame `[svc_id][opcode][0][payload]` to a native `echo`
//! service; the round trip ends with the next binary frame. Ext Lane: an envelope
//! `{"v":1,"svc":S,"type":T,"seq":N,"data":{"pad":".."}}` (with `--with-room`
//! and `--data-key msg`, a `chat.send` into the joined room); the round trip ends
//! with the first text frame carrying `"seq":N` (the gateway's `sys.ack`, its
//! `sys.error`, or the baseline's echo of the envelope). Errors are counted by
//! code and do end the round trip, so a missing plugin shows up as errors.
//!
//! Only round trips that start after `--warmup` and end before the window closes
//! are counted; the server's CPU time is read at both edges of the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::Barrier;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Connector, Head, TargetArgs, Ws};
use crate::report::{Latency, OutputArgs, Probes, Progress, Summary, round2};

/// Which lane carries the echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EchoLane {
    /// Binary frames to a native Hot Lane service.
    Hot,
    /// JSON envelopes with `seq`.
    Ext,
}

/// `echo` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct EchoArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Lane to echo on.
    #[arg(long, value_enum, default_value_t = EchoLane::Hot)]
    lane: EchoLane,
    /// Concurrent connections, each with one message in flight.
    #[arg(long, short = 'c', default_value_t = 32)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Hot Lane: svc_id of the echo service (2 in the reference configs).
    #[arg(long, default_value_t = 2)]
    svc_id: u8,
    /// Hot Lane: opcode byte.
    #[arg(long, default_value_t = 1)]
    opcode: u8,
    /// Payload bytes: after the 3-byte header (hot), or length of `data.pad` (ext).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Ext Lane: `svc` (a routed service such as the `echo` plugin).
    #[arg(long, default_value = "echo")]
    svc: String,
    /// Ext Lane: `type`.
    #[arg(long = "type", default_value = "echo")]
    ty: String,
    /// Room each connection joins first ("{n}" becomes the connection number);
    /// the Hot Lane needs an active room unless the tenant turns
    /// `hot_requires_active_room` off. Empty: no join.
    #[arg(long, default_value = "bench-echo-{n}")]
    join: String,
    /// Ext Lane: also name the joined room in the envelope's `room` (services
    /// such as the built-in `chat` need it).
    #[arg(long)]
    with_room: bool,
    /// Ext Lane: key of the padding string in `data` (`msg` for `chat.send`).
    #[arg(long, default_value = "pad")]
    data_key: String,
}

/// What one connection measured.
struct ConnResult {
    latency: Latency,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs the mode.
///
/// # Errors
/// A connection could not be opened/joined, or `--pid` is unreadable.
pub(crate) async fn run(args: EchoArgs) -> Result<()> {
    if args.connections == 0 || args.duration <= 0.0 {
        bail!("--connections and --duration must be positive");
    }
    let probes = Probes::new(&args.out.pid)?;
    let connector = Connector::new(&args.target, args.connections).await?;
    let done = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(args.connections + 1));
    let (window_tx, window_rx) = tokio::sync::watch::channel(None::<(Instant, Instant)>);

    let progress = {
        let (done, opened, n) = (Arc::clone(&done), Arc::clone(&opened), args.connections);
        let last = AtomicU64::new(0);
        Progress::start(args.out.quiet, move || {
            let now = done.load(Ordering::Relaxed);
            let rate = now.saturating_sub(last.swap(now, Ordering::Relaxed));
            format!(
                "[echo] connections {}/{n}  round trips {now}  ({rate}/s)",
                opened.load(Ordering::Relaxed)
            )
        })
    };

    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        args.target.connect_concurrency.max(1),
    ));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let (connector, args, barrier, done, opened, semaphore) = (
            Arc::clone(&connector),
            args.clone(),
            Arc::clone(&barrier),
            Arc::clone(&done),
            Arc::clone(&opened),
            Arc::clone(&semaphore),
        );
        let mut window_rx = window_rx.clone();
        tasks.push(tokio::spawn(async move {
            let setup = async {
                let _permit = semaphore.acquire().await.context("semaphore closed")?;
                let mut ws = connector.connect(i as u64, None).await?;
                if !args.join.is_empty() {
                    let room = args.join.replace("{n}", &i.to_string());
                    client::join(&mut ws, &room).await?;
                }
                anyhow::Ok(ws)
            };
            let setup = setup.await;
            opened.fetch_add(1, Ordering::Relaxed);
            // Every task reaches the barrier, even a failed one, so the run
            // cannot hang; the failure is reported after it.
            barrier.wait().await;
            let ws = setup.with_context(|| format!("connection {i}"))?;
            let (start, end) = loop {
                if let Some(w) = *window_rx.borrow_and_update() {
                    break w;
                }
                window_rx.changed().await.context("run aborted")?;
            };
            drive(ws, &args, i, start, end, &done).await
        }));
    }
    barrier.wait().await;
    let start = Instant::now() + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = start + Duration::from_secs_f64(args.duration);
    let _ = window_tx.send(Some((start, end)));
    tokio::time::sleep_until(start).await;
    let cpu0 = probes.mark();
    tokio::time::sleep_until(end).await;
    let cpu1 = probes.mark();

    let mut latency = Latency::new()?;
    let mut ok = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0usize;
    let mut first_failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => {
                latency.merge(&r.latency);
                ok += r.ok;
                for (k, v) in r.errors {
                    *errors.entry(k).or_default() += v;
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                first_failure.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(format!("task: {e}"));
            }
        }
    }
    progress.finish().await;
    if failed == args.connections {
        bail!(
            "every connection failed; first: {}",
            first_failure.unwrap_or_default()
        );
    }

    let total = ok + errors.values().sum::<u64>();
    let mut s = Summary::new("echo", &args.out, connector.endpoint());
    s.push(
        "lane",
        json!(match args.lane {
            EchoLane::Hot => format!("hot (svc_id {})", args.svc_id),
            EchoLane::Ext => format!("ext ({}:{})", args.svc, args.ty),
        }),
    );
    s.push("connections", json!(args.connections));
    s.push("connection_errors", json!(failed));
    if let Some(f) = first_failure {
        s.push("first_connection_error", json!(f));
    }
    s.push("payload_bytes", json!(args.payload));
    s.push("duration_s", json!(args.duration));
    s.push("round_trips", json!(total));
    s.push("ok", json!(ok));
    s.push("errors", json!(errors));
    s.push(
        "msgs_per_s",
        json!(round2(total as f64 / args.duration.max(1e-9))),
    );
    s.extend(latency.fields("rtt"));
    s.extend(probes.fields(&cpu0, &cpu1, "msg", total));
    s.print(args.out.json);
    Ok(())
}

/// The closed loop of one connection.
async fn drive(
    mut ws: Ws,
    args: &EchoArgs,
    conn: usize,
    start: Instant,
    end: Instant,
    done: &AtomicU64,
) -> Result<ConnResult> {
    let mut result = ConnResult {
        latency: Latency::new()?,
        ok: 0,
        errors: BTreeMap::new(),
    };
    let hot_frame = {
        let mut f = vec![args.svc_id, args.opcode, 0];
        f.resize(3 + args.payload, 0xAB);
        Bytes::from(f)
    };
    let mut data = serde_json::Map::new();
    data.insert(args.data_key.clone(), json!(".".repeat(args.payload)));
    let room = (args.with_room && !args.join.is_empty())
        .then(|| args.join.replace("{n}", &conn.to_string()));
    let mut seq = (conn as u64) << 32;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let outcome = match args.lane {
            EchoLane::Hot => {
                ws.send(Message::Binary(hot_frame.clone()))
                    .await
                    .context("send")?;
                await_hot(&mut ws).await?
            }
            EchoLane::Ext => {
                seq += 1;
                let mut env = json!({"v": 1, "svc": args.svc, "type": args.ty, "seq": seq,
                    "data": data});
                if let Some(room) = &room {
                    env["room"] = json!(room);
                }
                ws.send(Message::text(env.to_string()))
                    .await
                    .context("send")?;
                await_seq(&mut ws, seq).await?
            }
        };
        let t1 = Instant::now();
        if t0 >= start && t1 <= end {
            result.latency.record(t1 - t0);
            match outcome {
                None => result.ok += 1,
                Some(code) => *result.errors.entry(code).or_default() += 1,
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = ws.close(None).await;
    Ok(result)
}

/// Waits for the echoed binary frame; a text frame (a `sys.error` in
/// `hot_error_mode: error`) ends the round trip as an error.
async fn await_hot(ws: &mut Ws) -> Result<Option<String>> {
    loop {
        match next(ws).await? {
            Message::Binary(_) => return Ok(None),
            Message::Text(t) => return Ok(Some(error_code(t.as_str()))),
            _ => {}
        }
    }
}

/// Waits for the text frame carrying `seq`.
async fn await_seq(ws: &mut Ws, seq: u64) -> Result<Option<String>> {
    loop {
        if let Message::Text(t) = next(ws).await? {
            let head: Head = serde_json::from_str(t.as_str()).context("reply is not JSON")?;
            if head.seq == Some(seq) {
                return Ok((head.ty.as_deref() == Some("error")).then(|| error_code(t.as_str())));
            }
        }
    }
}

fn error_code(text: &str) -> String {
    serde_json::from_str::<Head>(text)
        .ok()
        .and_then(|h| h.data)
        .and_then(|d| d.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unexpected text frame".to_owned())
}

/// Timeout for one reply: a closed loop that loses a message would otherwise
/// hang the run.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

async fn next(ws: &mut Ws) -> Result<Message> {
    match tokio::time::timeout(REPLY_TIMEOUT, ws.next()).await {
        Err(_) => bail!("no reply within {REPLY_TIMEOUT:?}"),
        Ok(None) => bail!("connection closed"),
        Ok(Some(Err(e))) => bail!("socket error: {e}"),
        Ok(Some(Ok(Message::Close(f)))) => bail!("closed by the server: {f:?}"),
        Ok(Some(Ok(m))) => Ok(m),
    }
}
