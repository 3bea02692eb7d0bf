//! Helpers shared by the hostile-input suites: process memory readings and a
//! bystander session that must keep getting answers while an attack runs.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use serde_json::json;

use crate::common::Client;

/// Resident set size of this process (the gateway runs in-process), in KiB.
pub fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Serializes the tests of one binary that measure RSS, so they do not count
/// each other's allocations.
pub static MEMORY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Asserts RSS grew by less than `max_mib` since `before_kib`.
pub fn assert_rss_growth_below(before_kib: u64, max_mib: u64, what: &str) {
    let after = vm_rss_kib();
    let grew = after.saturating_sub(before_kib) / 1024;
    eprintln!(
        "{what}: RSS {} MiB -> {} MiB",
        before_kib / 1024,
        after / 1024
    );
    assert!(
        grew < max_mib,
        "{what}: RSS grew by {grew} MiB (limit {max_mib} MiB)"
    );
}

/// One round trip for a bystander session: a `room.join` (the tenant must allow
/// `room:*`) answered with `sys.joined` within `within`.
pub async fn bystander_answers(c: &mut Client, n: u64, within: Duration) {
    // A few rooms in turn: a rejoin answers `joined` too, and a session
    // stays under the default `max_rooms_per_user` however long it runs.
    let room = format!("bystander-{}", n % 64);
    c.send_json(json!({"v":1,"svc":"room","type":"join","room":room,"seq":n}))
        .await;
    let got = tokio::time::timeout(within, c.recv_type("joined"))
        .await
        .unwrap_or_else(|_| panic!("bystander got no answer within {within:?}"));
    assert_eq!(got["room"], room);
}

/// Keeps a bystander busy (a round trip every `every`) until `stop` fires;
/// returns the session and the number of round trips. Panics (failing the
/// test through the join handle) on the first missing answer.
pub fn spawn_bystander(
    mut c: Client,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<(Client, u64)> {
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            n += 1;
            bystander_answers(&mut c, n, Duration::from_secs(5)).await;
            tokio::select! {
                () = stop.cancelled() => return (c, n),
                () = tokio::time::sleep(every) => {}
            }
        }
    })
}
