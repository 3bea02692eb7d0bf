//! Test-only plugin that misbehaves on request (never ship it). The message
//! `type` picks the behaviour; the gateway's tests assert that each fault fails
//! only its own call.

use std::sync::atomic::{AtomicU64, Ordering};

use wsprism_plugin::{
    HostError, Message, Plugin, Qos, Refusal, Session, backend, export_plugin, kv, log, realtime,
};

/// Per-instance counter: shows whether an instance (its memory) is reused.
static CALLS: AtomicU64 = AtomicU64::new(0);

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let buf = std::hint::black_box([n; 64]);
    recurse(buf[3] + 1).wrapping_add(buf[7])
}

struct Faults;

impl Plugin for Faults {
    /// Counts instances per tenant in kv (the load-time smoke test has tenant "").
    fn init(config: String) -> Result<(), String> {
        let cfg: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        if cfg["tenant"].as_str().is_some_and(|t| !t.is_empty()) {
            kv::incr("inits", 1).map_err(|e| format!("{e:?}"))?;
        }
        Ok(())
    }

    /// Counts disconnects, then exercises what a closed session allows:
    /// `reply`/`join`/`leave` must be refused with `not-allowed` (recorded in
    /// kv as `disconnect-refused`), `publish` and `send-to-user` go out.
    fn on_disconnect(session: &Session) {
        let _ = kv::incr("disconnects", 1);
        let user = session.user();
        let _ = kv::set("last-disconnect", &user, None);
        let not_allowed = |r: Result<(), HostError>| matches!(r, Err(HostError::NotAllowed(_)));
        let refused = [
            not_allowed(realtime::reply_raw("bye", "1")),
            not_allowed(realtime::join("lobby")),
            not_allowed(realtime::leave("lobby")),
        ];
        let _ = kv::set_json("disconnect-refused", &refused, None);
        let bye = serde_json::json!({ "user": user });
        let _ = realtime::publish("lobby", "left", &bye, Qos::Reliable, false);
        let _ = realtime::send_to_user("watcher", "left", &bye);
    }

    /// Room gatekeeping by prefix: `vip-*` is refused, `trap-*` traps and
    /// `loop-*` spins until the CPU budget ends it (the join must fail closed
    /// either way), `hook-*` is welcomed with a reply that shows
    /// the session as the hook saw it; other rooms pass untouched.
    fn on_join(session: &Session, room: String) -> Result<(), Refusal> {
        if room.starts_with("vip-") {
            return Err(Refusal::new("VIP_ONLY", "members only"));
        }
        if room.starts_with("trap-") {
            panic!("on-join trap requested");
        }
        if room.starts_with("loop-") {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if room.starts_with("hook-") {
            let may_join = !matches!(realtime::join("elsewhere"), Err(HostError::NotAllowed(_)));
            let welcome = serde_json::json!({
                "room": room,
                "user": session.user(),
                "rooms_before": session.rooms(),
                "may_join": may_join,
            });
            realtime::reply("welcome", &welcome)?;
        }
        Ok(())
    }

    /// `hook-*` rooms hear that the user left; `leaves` counts it in kv.
    fn on_leave(session: &Session, room: String) {
        if room.starts_with("hook-") {
            let _ = kv::incr("leaves", 1);
            let bye = serde_json::json!({ "user": session.user(), "rooms_after": session.rooms() });
            let _ = realtime::publish(&room, "bye", &bye, Qos::Reliable, false);
        }
    }

    fn on_message(_session: &Session, msg: Message) -> Result<(), Refusal> {
        match msg.type_.as_str() {
            "echo" => realtime::reply_raw("echo", &msg.data)?,
            // Instance-memory counter.
            "count" => {
                let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                realtime::reply("count", &serde_json::json!({ "n": n }))?;
            }
            // kv counter under a fixed key.
            "kv-count" => {
                let v = kv::incr("count", 1)?;
                realtime::reply("kv-count", &serde_json::json!({ "n": v }))?;
            }
            "kv-get" => {
                let key: String = msg.json()?;
                realtime::reply("kv-get", &kv::get(&key)?)?;
            }
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            // Grows linear memory by ~13 MiB and keeps it (instance recycling
            // on a memory high-water mark).
            "grow" => {
                let v = vec![1u8; 13 * 1024 * 1024];
                std::mem::forget(std::hint::black_box(v));
                realtime::reply_raw("grow", "true")?;
            }
            "recurse" => {
                std::hint::black_box(recurse(1));
            }
            "flood" => loop {
                log::trace("flood");
            },
            // Guest stdout/stderr reach the gateway's logs, line by line.
            "print" => {
                println!("hello from faults stdout");
                eprintln!("hello from faults stderr");
                print!("no newline at the end");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            // Far more output than one call may log; the host keeps a bounded
            // share and drops the rest.
            "print-flood" => {
                for i in 0..2_000 {
                    println!("flood line {i}");
                }
                realtime::reply_raw("print-flood", "true")?;
            }
            "big-publish" => {
                let big = "x".repeat(200_000);
                // Over max_frame_bytes: the host refuses it and fails the call.
                let _ = realtime::reply("big", &big);
            }
            "huge-publish" => {
                // 2 MiB across many small replies: over the per-call byte budget.
                let chunk = "y".repeat(30_000);
                for _ in 0..100 {
                    let _ = realtime::reply("chunk", &chunk);
                }
            }
            "bad-json" => {
                let _ = realtime::reply_raw("bad", "{not json");
            }
            "panic" => panic!("requested panic"),
            "refuse" => return Err(Refusal::new("NOPE", "refused on request")),
            "backend" => {
                #[derive(serde::Deserialize)]
                struct B {
                    upstream: String,
                    path: String,
                }
                let b: B = msg.json()?;
                match backend::get(&b.upstream, &b.path) {
                    Ok(r) => realtime::reply(
                        "backend",
                        &serde_json::json!({
                            "status": r.status,
                            "body": String::from_utf8_lossy(&r.body),
                        }),
                    )?,
                    Err(e) => realtime::reply("backend-error", &format!("{e:?}"))?,
                }
            }
            "members" => {
                let room = msg.room.clone().unwrap_or_default();
                realtime::reply("members", &realtime::members(&room)?)?;
            }
            other => return Err(Refusal::new("UNKNOWN_TYPE", other)),
        }
        Ok(())
    }
}

export_plugin!(Faults);
