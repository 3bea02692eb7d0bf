//! `latest`: latest-wins conflation against plain lossy delivery (README
//! "Delivery"). One publisher streams positions on a Hot Lane relay at
//! `--rate` frames/s to one receiver that reads only `--drain` frames/s
//! through a small socket receive buffer, so the stream outruns it. The run
//! is made twice on fresh connections: on `--plain-svc` (a relay without
//! `conflate`) and on `--latest-svc` (a relay with `conflate: true`).
//!
//! Reported per relay: the age of each position the receiver reads (send
//! time to read time, after `--warmup`; p50/p99), the frames and bytes it
//! read (what the gateway sent it) and the frames sent. Frames are
//! `[svc][opcode][0][t u64 | seq u32 | pad]`, `t` in nanoseconds on this
//! process's clock.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Connector, TargetArgs};
use crate::report::{Latency, OutputArgs, Summary, round2};

/// `latest` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct LatestArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Positions sent per second.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// Frames the receiver reads per second.
    #[arg(long, default_value_t = 200.0)]
    drain: f64,
    /// Seconds each relay is measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of streaming before ages are recorded (the backlog builds up).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Payload bytes after the 3-byte header (at least 12).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// The receiver's socket receive buffer (SO_RCVBUF) in bytes.
    #[arg(long, default_value_t = 4096)]
    rcvbuf: u32,
    /// svc_id of the plain lossy relay.
    #[arg(long, default_value_t = 1)]
    plain_svc: u8,
    /// svc_id of the conflating relay.
    #[arg(long, default_value_t = 4)]
    latest_svc: u8,
    /// Opcode of the position frames.
    #[arg(long, default_value_t = 1)]
    opcode: u8,
    /// Rooms are "<room-prefix>-plain" and "<room-prefix>-latest".
    #[arg(long, default_value = "bench-latest")]
    room_prefix: String,
}

/// What one relay's run measured.
struct Outcome {
    age: Latency,
    frames: u64,
    bytes: u64,
    sent: u64,
}

pub(crate) async fn run(args: LatestArgs) -> Result<()> {
    if args.payload < 12 {
        bail!("--payload must be at least 12 (timestamp and sequence)");
    }
    if !(args.rate > 0.0 && args.drain > 0.0 && args.duration > 0.0) {
        bail!("--rate, --drain and --duration must be positive");
    }
    let connector = Connector::new(&args.target, 4).await?;
    let epoch = Instant::now();
    let plain = measure(&args, &connector, args.plain_svc, "plain", epoch).await?;
    let latest = measure(&args, &connector, args.latest_svc, "latest", epoch).await?;
    let mut summary = Summary::new("latest", &args.out, connector.endpoint());
    summary.push("rate", json!(args.rate));
    summary.push("drain", json!(args.drain));
    summary.push("payload", json!(args.payload));
    for (name, o) in [("plain", &plain), ("latest", &latest)] {
        summary.push(&format!("{name}_sent"), json!(o.sent));
        summary.push(&format!("{name}_frames"), json!(o.frames));
        summary.push(&format!("{name}_bytes"), json!(o.bytes));
        summary.extend(o.age.fields(&format!("{name}_age")));
    }
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            json!(null)
        } else {
            json!(round2(a as f64 / b as f64))
        }
    };
    summary.push("bytes_ratio", ratio(latest.bytes, plain.bytes));
    summary.print(args.out.json);
    Ok(())
}

/// Streams positions on relay `svc` to a slow receiver and measures it.
async fn measure(
    args: &LatestArgs,
    connector: &Connector,
    svc: u8,
    name: &str,
    epoch: Instant,
) -> Result<Outcome> {
    let room = format!("{}-{name}", args.room_prefix);
    let mut publisher = connector.connect(0, None).await?;
    client::join(&mut publisher, &room).await?;
    let mut receiver = tokio::time::timeout(
        client::HANDSHAKE_TIMEOUT,
        connector.open_with(1, None, Some(args.rcvbuf)),
    )
    .await
    .context("receiver upgrade timed out")??;
    client::expect_text_type(&mut receiver, "authed").await?;
    client::join(&mut receiver, &room).await?;

    let warm_until = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warm_until + Duration::from_secs_f64(args.duration);
    let (svc_id, opcode, payload, rate) = (svc, args.opcode, args.payload, args.rate);
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0u32;
        while Instant::now() < end {
            tick.tick().await;
            let mut frame = Vec::with_capacity(3 + payload);
            frame.extend_from_slice(&[svc_id, opcode, 0]);
            let t = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            frame.extend_from_slice(&t.to_le_bytes());
            frame.extend_from_slice(&seq.to_le_bytes());
            frame.resize(3 + payload, 0);
            if publisher.send(Message::binary(frame)).await.is_err() {
                break;
            }
            seq = seq.wrapping_add(1);
        }
        let _ = publisher.close(None).await;
        u64::from(seq)
    });

    let mut out = Outcome {
        age: Latency::new()?,
        frames: 0,
        bytes: 0,
        sent: 0,
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.drain));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < end {
        tick.tick().await;
        let read = tokio::time::timeout_at(end, receiver.next()).await;
        let Ok(Some(Ok(msg))) = read else {
            break;
        };
        let Message::Binary(b) = msg else {
            continue;
        };
        if b.len() < 3 + 12 || b[0] != svc {
            continue;
        }
        let t = u64::from_le_bytes(b[3..11].try_into().unwrap_or_default());
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if Instant::now() >= warm_until {
            out.age.record_ns(now.saturating_sub(t));
            out.frames += 1;
            out.bytes += b.len() as u64;
        }
    }
    out.sent = sender.await.unwrap_or(0);
    let _ = receiver.close(None).await;
    Ok(out)
}
