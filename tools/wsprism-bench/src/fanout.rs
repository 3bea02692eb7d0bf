//! `fanout`: R rooms × M members; member 0 of every room publishes at a fixed
//! rate, everyone counts what arrives.
//!
//! Publishers start staggered across one publish period so rooms do not fire in
//! lockstep. Each payload carries the send time (nanoseconds since the bench
//! started; publishers and receivers share this process's clock), the step and
//! room number and a sequence number, so every delivery yields a latency sample
//! and is attributed to its step even when it arrives late.
//!
//! Lanes: `hot` publishes `[svc_id][opcode][0][payload]` to a native `relay`
//! service (payload ≥ 16 bytes: `t u64 | step u16 | room u16 | seq u32 | pad`;
//! stamped deliveries, flag 0x80, are understood too); `chat` publishes
//! `chat.send` with `data.msg = "B|t|step|room|seq|pad"`. Expected deliveries per
//! publish: M − 1 for `hot`, M for `chat` (the gateway's chat includes the
//! sender), unless `--include-sender` says otherwise.
//!
//! `--rate` takes a list: each rate is one step of `--duration` seconds on the
//! same connections, followed by up to `--drain` seconds for late deliveries.
//!
//! `--peer-url` spreads every room over two cluster nodes: odd members join
//! through the peer, so each publication crosses the cluster bus to half the
//! receivers, and their latency is reported beside the same-node half's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Map, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Connector, Head, TargetArgs, Ws};
use crate::report::{Latency, OutputArgs, Probes, Progress, Summary, round2};

/// Which lane carries the publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FanoutLane {
    /// Binary frames to a native Hot Lane relay (lossy delivery).
    Hot,
    /// `chat.send` envelopes (reliable delivery).
    Chat,
}

/// `fanout` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    out: OutputArgs,
    /// Lane to publish on.
    #[arg(long, value_enum, default_value_t = FanoutLane::Hot)]
    lane: FanoutLane,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Members per room, the publisher included.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Publications per second per room; a comma-separated list runs one step
    /// per rate on the same connections (a rate sweep).
    #[arg(long, value_delimiter = ',', default_value = "10")]
    rate: Vec<f64>,
    /// Seconds each step publishes.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to wait after a step for late deliveries.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Hot Lane payload bytes after the 3-byte header (at least 16).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Hot Lane svc_id of the relay service (1 in the reference configs).
    #[arg(long, default_value_t = 1)]
    svc_id: u8,
    /// Hot Lane opcode byte.
    #[arg(long, default_value_t = 1)]
    opcode: u8,
    /// Room r is named "<room-prefix>-<r>".
    #[arg(long, default_value = "bench-fanout")]
    room_prefix: String,
    /// Whether the publisher receives its own publications (default: no for
    /// hot, as the relay's `include_sender: false`; yes for chat).
    #[arg(long)]
    include_sender: Option<bool>,
    /// Skip the remaining rates once a step delivers less than 100%.
    #[arg(long)]
    stop_on_loss: bool,
    /// A second node of the same cluster: members with an odd index connect
    /// there (publishers stay on --url), and latency is also reported apart
    /// for same-node and cross-node receivers (`latency_same_*`,
    /// `latency_cross_*`).
    #[arg(long)]
    peer_url: Option<String>,
}

/// Bytes of the timestamp/step/room/seq header inside every payload.
const STAMP_BYTES: usize = 16;
/// Offset of the payload in a stamped relay frame (`[svc][op][flags][peer u32]`).
const STAMPED_HEADER: usize = 7;
/// Flag bit the gateway sets on stamped frames.
const FLAG_STAMPED: u8 = 0x80;
/// Prefix of a chat message written by the bench.
const CHAT_MARK: &str = "B|";

/// One step of the sweep as publishers see it.
#[derive(Debug, Clone, Copy)]
struct Plan {
    step: usize,
    rate: f64,
    start: Instant,
    end: Instant,
}

/// Counters shared by every task.
struct Shared {
    epoch: Instant,
    sent: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
    /// Per room: one histogram per step (one lock per room keeps contention low).
    latency: Vec<Mutex<Vec<Latency>>>,
    total_delivered: AtomicU64,
    /// Frames that were neither bench deliveries nor ignorable control frames.
    unexpected: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn deliver(&self, room_shard: usize, step: usize, sent_ns: u64) {
        let now = self.now_ns();
        if let (Some(counter), Some(shard)) =
            (self.delivered.get(step), self.latency.get(room_shard))
        {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(h) = shard.lock().get_mut(step) {
                h.record_ns(now.saturating_sub(sent_ns));
            }
            self.total_delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the mode.
///
/// # Errors
/// Bad flags, a connection that cannot be opened or join, or an unreadable `--pid`.
pub(crate) async fn run(args: FanoutArgs) -> Result<()> {
    if args.rooms == 0 || args.members < 2 || args.rate.is_empty() {
        bail!("need at least one room, two members per room and one rate");
    }
    if args.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) || args.duration <= 0.0 {
        bail!("--rate values and --duration must be positive");
    }
    if args.lane == FanoutLane::Hot && args.payload < STAMP_BYTES {
        bail!("--payload must be at least {STAMP_BYTES} bytes (timestamp, step, room, seq)");
    }
    if args.rooms > usize::from(u16::MAX) || args.rate.len() > usize::from(u16::MAX) {
        bail!("at most 65535 rooms and 65535 rates");
    }
    let include_sender = args.include_sender.unwrap_or(args.lane == FanoutLane::Chat);
    let recipients = (args.members - 1 + usize::from(include_sender)) as u64;
    let total_conns = args.rooms * args.members;
    let probes = Probes::new(&args.out.pid)?;
    let connector = Connector::new(&args.target, total_conns).await?;
    let peer = match &args.peer_url {
        Some(url) => {
            let mut target = args.target.clone();
            target.url.clone_from(url);
            Some(Connector::new(&target, total_conns).await?)
        }
        None => None,
    };
    // Latency shards: one per room, and with a peer a second set for the
    // receivers on it (shard room + rooms).
    let shards = if peer.is_some() {
        2 * args.rooms
    } else {
        args.rooms
    };
    let steps = args.rate.len();
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        sent: (0..steps).map(|_| AtomicU64::new(0)).collect(),
        delivered: (0..steps).map(|_| AtomicU64::new(0)).collect(),
        latency: (0..shards)
            .map(|_| {
                Ok(Mutex::new(
                    (0..steps).map(|_| Latency::new()).collect::<Result<_>>()?,
                ))
            })
            .collect::<Result<_>>()?,
        total_delivered: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
    });
    let opened = Arc::new(AtomicU64::new(0));
    let progress = {
        let (shared, opened) = (Arc::clone(&shared), Arc::clone(&opened));
        let last = AtomicU64::new(0);
        Progress::start(args.out.quiet, move || {
            let now = shared.total_delivered.load(Ordering::Relaxed);
            let rate = now.saturating_sub(last.swap(now, Ordering::Relaxed));
            let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
            format!(
                "[fanout] joined {}/{total_conns}  published {sent}  delivered {now} ({rate}/s)",
                opened.load(Ordering::Relaxed)
            )
        })
    };

    // Open and join every connection, a bounded number at a time.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        args.target.connect_concurrency.max(1),
    ));
    let mut setups = Vec::with_capacity(total_conns);
    for n in 0..total_conns {
        let room = format!("{}-{}", args.room_prefix, n / args.members);
        let via = match &peer {
            Some(p) if (n % args.members) % 2 == 1 => p,
            _ => &connector,
        };
        let (connector, semaphore, opened) =
            (Arc::clone(via), Arc::clone(&semaphore), Arc::clone(&opened));
        setups.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await.context("semaphore closed")?;
            let mut ws = connector.connect(n as u64, Some(&room)).await?;
            client::join(&mut ws, &room).await?;
            opened.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(ws)
        }));
    }
    let mut sockets = Vec::with_capacity(total_conns);
    for (n, s) in setups.into_iter().enumerate() {
        let ws = s
            .await
            .context("setup task")?
            .with_context(|| format!("connection {n}"))?;
        sockets.push(ws);
    }

    let stop = CancellationToken::new();
    let (plan_tx, plan_rx) = watch::channel(None::<Plan>);
    let mut publishers = Vec::with_capacity(args.rooms);
    for (n, ws) in sockets.into_iter().enumerate() {
        let room = n / args.members;
        let cross = peer.is_some() && (n % args.members) % 2 == 1;
        let (sink, stream) = ws.split();
        tokio::spawn(read(
            stream,
            room + if cross { args.rooms } else { 0 },
            args.lane,
            Arc::clone(&shared),
            stop.clone(),
        ));
        if n % args.members == 0 {
            let publisher = Publisher {
                room,
                rooms: args.rooms,
                lane: args.lane,
                room_name: format!("{}-{}", args.room_prefix, room),
                svc_id: args.svc_id,
                opcode: args.opcode,
                payload: args.payload,
                shared: Arc::clone(&shared),
            };
            publishers.push(tokio::spawn(publisher.run(sink, plan_rx.clone())));
        } else {
            // Receivers never write; keep the write half alive until the end.
            let stop = stop.clone();
            tokio::spawn(async move {
                stop.cancelled().await;
                drop(sink);
            });
        }
    }

    let mut rows = Vec::with_capacity(steps);
    for (step, &rate) in args.rate.iter().enumerate() {
        let start = Instant::now() + Duration::from_millis(100);
        let end = start + Duration::from_secs_f64(args.duration);
        plan_tx
            .send(Some(Plan {
                step,
                rate,
                start,
                end,
            }))
            .context("every publisher failed")?;
        tokio::time::sleep_until(start).await;
        let cpu0 = probes.mark();
        tokio::time::sleep_until(end).await;
        let cpu_end = probes.mark();
        // Publishers may still be flushing their last batch.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let drain_until = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
        loop {
            let expected = shared.sent[step].load(Ordering::Relaxed) * recipients;
            if shared.delivered[step].load(Ordering::Relaxed) >= expected
                || Instant::now() >= drain_until
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu1 = probes.mark();
        let sent = shared.sent[step].load(Ordering::Relaxed);
        let expected = sent * recipients;
        let delivered = shared.delivered[step].load(Ordering::Relaxed);
        let merged = |shards: &[Mutex<Vec<Latency>>]| -> Result<Latency> {
            let mut l = Latency::new()?;
            for shard in shards {
                if let Some(h) = shard.lock().get(step) {
                    l.merge(h);
                }
            }
            Ok(l)
        };
        let latency = merged(&shared.latency)?;
        let ratio = if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        };
        let mut row = Map::new();
        row.insert("rate_per_room".into(), json!(rate));
        row.insert("published".into(), json!(sent));
        row.insert("expected".into(), json!(expected));
        row.insert("delivered".into(), json!(delivered));
        row.insert("delivery_pct".into(), json!(round2(100.0 * ratio)));
        row.insert(
            "deliveries_per_s".into(),
            json!(round2(delivered as f64 / args.duration)),
        );
        for (k, v) in latency.fields("latency") {
            row.insert(k, v);
        }
        if peer.is_some() {
            let (same, cross) = shared.latency.split_at(args.rooms);
            for (k, v) in merged(same)?.fields("latency_same") {
                row.insert(k, v);
            }
            for (k, v) in merged(cross)?.fields("latency_cross") {
                row.insert(k, v);
            }
        }
        let mut cpu = probes.fields(&cpu0, &cpu1, "delivery", delivered);
        // Utilisation over the publishing window only, not the drain.
        cpu.retain(|(k, _)| k.contains("_us_per_"));
        cpu.extend(
            probes
                .fields(&cpu0, &cpu_end, "delivery", delivered)
                .into_iter()
                .filter(|(k, _)| k.ends_with("_pct")),
        );
        for (k, v) in cpu {
            row.insert(k, v);
        }
        rows.push(row);
        if args.stop_on_loss && delivered < expected {
            break;
        }
    }
    let _ = plan_tx.send(None);
    stop.cancel();
    progress.finish().await;
    let mut publisher_errors = Vec::new();
    for p in publishers {
        match tokio::time::timeout(Duration::from_secs(2), p).await {
            Ok(Ok(Err(e))) => publisher_errors.push(format!("{e:#}")),
            Ok(Err(e)) => publisher_errors.push(format!("task: {e}")),
            _ => {}
        }
    }

    let mut s = Summary::new("fanout", &args.out, connector.endpoint());
    s.push(
        "lane",
        json!(match args.lane {
            FanoutLane::Hot => format!("hot (relay svc_id {})", args.svc_id),
            FanoutLane::Chat => "chat".to_owned(),
        }),
    );
    if let Some(p) = &peer {
        s.push("peer", json!(p.endpoint()));
    }
    s.push("rooms", json!(args.rooms));
    s.push("members", json!(args.members));
    s.push("recipients_per_publish", json!(recipients));
    if args.lane == FanoutLane::Hot {
        s.push("payload_bytes", json!(args.payload));
    }
    s.push("step_duration_s", json!(args.duration));
    s.push(
        "unexpected_frames",
        json!(shared.unexpected.load(Ordering::Relaxed)),
    );
    s.push("publisher_errors", json!(publisher_errors));
    let mut columns = vec![
        "rate_per_room",
        "published",
        "expected",
        "delivered",
        "delivery_pct",
        "deliveries_per_s",
        "latency_p50_us",
        "latency_p90_us",
        "latency_p99_us",
        "latency_p99_9_us",
        "server_cpu_us_per_delivery",
        "server_cpu_pct",
        "client_cpu_pct",
        "other_cpu_pct",
    ];
    if peer.is_some() {
        columns.splice(
            10..10,
            [
                "latency_same_p50_us",
                "latency_same_p99_us",
                "latency_cross_p50_us",
                "latency_cross_p99_us",
            ],
        );
    }
    s.steps(columns.iter().map(|c| (*c).to_owned()).collect(), rows);
    s.print(args.out.json);
    Ok(())
}

/// The publishing side of one room.
struct Publisher {
    room: usize,
    rooms: usize,
    lane: FanoutLane,
    room_name: String,
    svc_id: u8,
    opcode: u8,
    payload: usize,
    shared: Arc<Shared>,
}

impl Publisher {
    async fn run(
        self,
        mut sink: SplitSink<Ws, Message>,
        mut plans: watch::Receiver<Option<Plan>>,
    ) -> Result<()> {
        let mut seq = 0u32;
        loop {
            if plans.changed().await.is_err() {
                return Ok(());
            }
            let Some(plan) = *plans.borrow_and_update() else {
                return Ok(());
            };
            let period = 1.0 / plan.rate;
            // Stagger rooms across one period.
            let offset = Duration::from_secs_f64(period * self.room as f64 / self.rooms as f64);
            let first = plan.start + offset;
            let mut k: u64 = 0;
            loop {
                let due = first + Duration::from_secs_f64(k as f64 * period);
                if due >= plan.end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                // Catch up on everything due by now (timer granularity is 1 ms).
                let now = Instant::now();
                let mut batch = 0u64;
                loop {
                    let due = first + Duration::from_secs_f64(k as f64 * period);
                    if due > now || due >= plan.end {
                        break;
                    }
                    seq = seq.wrapping_add(1);
                    sink.feed(self.frame(plan.step, seq))
                        .await
                        .context("publish")?;
                    k += 1;
                    batch += 1;
                }
                sink.flush().await.context("publish")?;
                self.shared.sent[plan.step].fetch_add(batch, Ordering::Relaxed);
            }
        }
    }

    fn frame(&self, step: usize, seq: u32) -> Message {
        let t = self.shared.now_ns();
        match self.lane {
            FanoutLane::Hot => {
                let mut b = BytesMut::with_capacity(3 + self.payload);
                b.put_slice(&[self.svc_id, self.opcode, 0]);
                b.put_u64_le(t);
                b.put_u16_le(step as u16);
                b.put_u16_le(self.room as u16);
                b.put_u32_le(seq);
                b.resize(3 + self.payload, 0xAB);
                Message::Binary(b.freeze())
            }
            FanoutLane::Chat => {
                let msg = format!("{CHAT_MARK}{t}|{step}|{}|{seq}|", self.room);
                Message::text(
                    json!({"v": 1, "svc": "chat", "type": "send", "room": self.room_name,
                        "data": {"msg": msg}})
                    .to_string(),
                )
            }
        }
    }
}

/// Reads one connection until the run stops, recording every bench delivery
/// in latency shard `shard`.
async fn read(
    mut stream: SplitStream<Ws>,
    shard: usize,
    lane: FanoutLane,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => return,
            m = stream.next() => m,
        };
        match msg {
            None | Some(Err(_)) => return,
            Some(Ok(Message::Binary(b))) if lane == FanoutLane::Hot => match parse_hot(&b) {
                Some((t, step)) => shared.deliver(shard, step, t),
                None => {
                    shared.unexpected.fetch_add(1, Ordering::Relaxed);
                }
            },
            Some(Ok(Message::Text(t))) if lane == FanoutLane::Chat => {
                match parse_chat(t.as_str()) {
                    Some((ts, step)) => shared.deliver(shard, step, ts),
                    None => {
                        shared.unexpected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `(sent_ns, step)` from a relayed Hot Lane frame, stamped or not.
fn parse_hot(b: &Bytes) -> Option<(u64, usize)> {
    let flags = *b.get(2)?;
    let off = if flags & FLAG_STAMPED != 0 {
        STAMPED_HEADER
    } else {
        3
    };
    let p = b.get(off..off + STAMP_BYTES)?;
    let t = u64::from_le_bytes(p[0..8].try_into().ok()?);
    let step = u16::from_le_bytes(p[8..10].try_into().ok()?);
    Some((t, usize::from(step)))
}

/// `(sent_ns, step)` from a chat delivery (`data.msg`), whatever its envelope.
fn parse_chat(text: &str) -> Option<(u64, usize)> {
    let head: Head = serde_json::from_str(text).ok()?;
    let msg = head.data.as_ref()?.get("msg")?.as_str()?;
    let mut parts = msg.strip_prefix(CHAT_MARK)?.split('|');
    let t = parts.next()?.parse().ok()?;
    let step = parts.next()?.parse().ok()?;
    Some((t, step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_payloads_parse_plain_and_stamped() {
        let mut plain = vec![1u8, 1, 0];
        plain.extend_from_slice(&42u64.to_le_bytes());
        plain.extend_from_slice(&3u16.to_le_bytes());
        plain.extend_from_slice(&[0; 6]);
        assert_eq!(parse_hot(&Bytes::from(plain.clone())), Some((42, 3)));
        let mut stamped = vec![1u8, 1, FLAG_STAMPED, 9, 0, 0, 0];
        stamped.extend_from_slice(&plain[3..]);
        assert_eq!(parse_hot(&Bytes::from(stamped)), Some((42, 3)));
        assert_eq!(parse_hot(&Bytes::from_static(&[1, 1, 0, 5])), None);
    }

    #[test]
    fn chat_messages_parse_from_either_envelope() {
        let gw = r#"{"v":1,"svc":"chat","type":"msg","room":"r","data":{"from":"u","msg":"B|77|2|0|5|"}}"#;
        assert_eq!(parse_chat(gw), Some((77, 2)));
        let raw = r#"{"v":1,"svc":"chat","type":"send","room":"r","data":{"msg":"B|1|0|0|1|"}}"#;
        assert_eq!(parse_chat(raw), Some((1, 0)));
        assert_eq!(parse_chat(r#"{"type":"joined"}"#), None);
    }
}
