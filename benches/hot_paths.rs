//! Micro-benchmarks of the per-message hot paths (criterion).
//!
//! Run with `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass).
//! Each group isolates one pipeline stage that every message crosses:
//! - `ext_decode`: `protocol::ext::decode` of a typical `chat.send` envelope;
//! - `hot_decode`: `protocol::hot::decode` of a 35-byte relay frame;
//! - `allowlist`: `ExtAllowlist::allows` / `HotAllowlist::allows`, hit and miss;
//! - `rate_limit`: one governor `check` on a direct limiter (admitted);
//! - `broadcast_100`: `LocalBroker::publish` of one shared frame into 100
//!   sessions' `Outbox`es, then draining them as their writers would.
//!
//! The Rust-plugin call (Ext Lane echo through a WASM component, against the
//! native `chat` path) is measured by `benches/plugins.rs`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use tungstenite::Message;
use wsprism::config::pattern::{ExtPattern, HotPattern, Pattern};
use wsprism::policy::allowlist::{ExtAllowlist, HotAllowlist};
use wsprism::policy::rate_limit::{direct, quota};
use wsprism::protocol::{ext, hot};
use wsprism::realtime::SessionId;
use wsprism::realtime::broker::{Broker, LocalBroker, RoomLimits, SessionEntry, SessionLimits};
use wsprism::realtime::outbox::{Outbox, Qos};

const CHAT_SEND: &str =
    r#"{"v":1,"svc":"chat","type":"send","room":"match:1","seq":7,"data":{"msg":"hello there"}}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ext_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chat_send", |b| {
        b.iter(|| ext::decode(black_box(CHAT_SEND)))
    });
    g.finish();

    let mut g = c.benchmark_group("hot_decode");
    g.throughput(Throughput::Elements(1));
    let mut frame = vec![1u8, 7, 0];
    frame.extend_from_slice(&[0xAB; 32]);
    let frame = Bytes::from(frame);
    g.bench_function("relay_35b", |b| {
        b.iter(|| hot::decode(black_box(frame.clone())))
    });
    g.finish();
}

fn allowlist(c: &mut Criterion) {
    let ext_patterns: Vec<Pattern<ExtPattern>> =
        ["room:*", "chat:send", "echo:*", "vote:*", "counter:*"]
            .into_iter()
            .map(Pattern::from)
            .collect();
    let hot_patterns: Vec<Pattern<HotPattern>> = ["1:*", "2:*", "3:7"]
        .into_iter()
        .map(Pattern::from)
        .collect();
    let ext_allow = ExtAllowlist::compile(&ext_patterns);
    let hot_allow = HotAllowlist::compile(&hot_patterns);
    let mut g = c.benchmark_group("allowlist");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ext_exact_hit", |b| {
        b.iter(|| ext_allow.allows(black_box("chat"), black_box("send")))
    });
    g.bench_function("ext_service_hit", |b| {
        b.iter(|| ext_allow.allows(black_box("room"), black_box("join")))
    });
    g.bench_function("ext_miss", |b| {
        b.iter(|| ext_allow.allows(black_box("admin"), black_box("drop")))
    });
    g.bench_function("hot_hit", |b| {
        b.iter(|| hot_allow.allows(black_box(1), black_box(9)))
    });
    g.bench_function("hot_miss", |b| {
        b.iter(|| hot_allow.allows(black_box(3), black_box(8)))
    });
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    // A quota this large never refuses during the run, so every check takes the
    // admitting path a message takes.
    let limiter = direct(quota(u32::MAX, u32::MAX));
    let mut g = c.benchmark_group("rate_limit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("direct_check", |b| b.iter(|| limiter.check().is_ok()));
    g.finish();
}

fn broadcast(c: &mut Criterion) {
    const MEMBERS: u64 = 100;
    let broker = LocalBroker::new();
    let limits = SessionLimits {
        max_sessions_total: 0,
        max_sessions_per_user: 1,
        kick_oldest: false,
    };
    let mut outboxes = Vec::new();
    for n in 1..=MEMBERS {
        let sid = SessionId::new(n);
        let outbox = Arc::new(Outbox::new(1024, 256));
        let entry = Arc::new(SessionEntry::new(
            sid,
            Arc::from(format!("u{n}")),
            Arc::clone(&outbox),
        ));
        if broker.register(entry, limits).is_err()
            || broker.join(sid, "r", RoomLimits::default()).is_err()
        {
            panic!("bench setup: cannot register session {sid}");
        }
        outboxes.push(outbox);
    }
    let mut frame = vec![1u8, 7, 0];
    frame.extend_from_slice(&[0xAB; 32]);
    let msg = Message::Binary(Bytes::from(frame));
    let mut drained = Vec::with_capacity(64);
    let mut g = c.benchmark_group("broadcast_100");
    g.throughput(Throughput::Elements(MEMBERS));
    g.bench_function("publish_lossy_and_drain", |b| {
        b.iter(|| {
            let d = broker.publish("r", black_box(&msg), Qos::Lossy, None);
            // What each session's writer does next: take the frame out. The
            // future is ready at once because a frame is queued.
            for o in &outboxes {
                let _ = o.next_batch(&mut drained, 64).now_or_never();
                drained.clear();
            }
            d
        })
    });
    g.bench_function("publish_lossy_only", |b| {
        // Queues stay full: every push also drops the oldest frame (the
        // overloaded steady state).
        b.iter(|| broker.publish("r", black_box(&msg), Qos::Lossy, None))
    });
    g.finish();
}

criterion_group!(benches, decode, allowlist, rate_limit, broadcast);
criterion_main!(benches);
