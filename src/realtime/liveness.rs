//! When a session last showed signs of life and when it is next pinged.
//!
//! The reader marks each inbound message here (one relaxed store, no clock
//! read); the gateway's heartbeat sweep (in the transport layer) turns
//! the marks into times on its own clock, pings sessions on schedule and
//! closes the idle ones. One sweep over every session replaces a timer in
//! each session's task, so an idle session holds three integers instead of a
//! timer entry and its deadlines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A session's inbound activity and ping schedule. Times are the sweep's
/// milliseconds (never 0: 0 means "not yet seen by a sweep").
#[derive(Debug, Default)]
pub struct Liveness {
    /// Inbound traffic since the last sweep.
    heard: AtomicBool,
    /// The sweep that last found `heard` set (or first saw the session).
    last_inbound: AtomicU64,
    /// When the next ping is due.
    next_ping: AtomicU64,
}

/// What the sweep should do for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a ping.
    Ping,
    /// No inbound traffic for the idle timeout: close the session.
    Idle,
}

impl Liveness {
    /// Marks inbound traffic (the reader, per message).
    pub fn heard(&self) {
        self.heard.store(true, Ordering::Relaxed);
    }

    /// What is due at `now` (the sweep's clock, > 0) with these timers.
    /// Records the traffic marked since the last sweep and schedules the next
    /// ping; only the sweep calls it, so the times have one writer. Inbound
    /// time is known to the sweep's period, so a session idles out between
    /// `idle_ms` and `idle_ms` plus two periods after its last message.
    pub fn check(&self, now: u64, idle_ms: u64, ping_ms: u64) -> Due {
        if self.heard.swap(false, Ordering::Relaxed)
            || self.last_inbound.load(Ordering::Relaxed) == 0
        {
            self.last_inbound.store(now, Ordering::Relaxed);
        }
        if now
            >= self
                .last_inbound
                .load(Ordering::Relaxed)
                .saturating_add(idle_ms)
        {
            return Due::Idle;
        }
        let next = self.next_ping.load(Ordering::Relaxed);
        if next == 0 {
            // First seen: the schedule starts now (pings every `ping_ms`
            // whatever the traffic: they are the peer's liveness check too).
            self.next_ping
                .store(now.saturating_add(ping_ms), Ordering::Relaxed);
            return Due::Nothing;
        }
        if now >= next {
            self.next_ping
                .store(now.saturating_add(ping_ms), Ordering::Relaxed);
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_on_schedule_and_idles_out_without_traffic() {
        let l = Liveness::default();
        // First sweep: the idle clock and the ping schedule start.
        assert_eq!(l.check(10, 600, 200), Due::Nothing);
        assert_eq!(l.check(209, 600, 200), Due::Nothing);
        assert_eq!(l.check(210, 600, 200), Due::Ping);
        // The next ping is a full interval after the one just sent.
        assert_eq!(l.check(300, 600, 200), Due::Nothing);
        assert_eq!(l.check(410, 600, 200), Due::Ping);
        // Traffic marked before the sweep at 500 pushes the idle deadline to
        // 1,100; silence reaches it.
        l.heard();
        assert_eq!(l.check(500, 600, 200), Due::Nothing);
        assert_eq!(l.check(1_000, 600, 200), Due::Ping);
        assert_eq!(l.check(1_099, 600, 200), Due::Nothing);
        assert_eq!(l.check(1_100, 600, 200), Due::Idle);
    }

    #[test]
    fn a_mark_counts_once() {
        let l = Liveness::default();
        l.heard();
        assert_eq!(l.check(100, 600, 10_000), Due::Nothing);
        // No new traffic: the deadline stays 600 ms after the sweep that
        // recorded the mark.
        assert_eq!(l.check(699, 600, 10_000), Due::Nothing);
        assert_eq!(l.check(700, 600, 10_000), Due::Idle);
    }
}
