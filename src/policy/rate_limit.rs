//! Rate limiters (governor GCRA) for messages and handshakes.
//!
//! Owns: quota construction from config and the bounded per-IP handshake table.
//! Checks never await and never allocate on the hot path.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::HandshakeLimitConfig;

/// A per-second quota with burst; zero values are clamped to 1 (validation refuses
/// them, so this only guards programmatic configs).
pub fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

/// `max` events per `window`, all of which may arrive at once.
pub fn windowed(max: u32, window: Duration) -> Quota {
    let max_nz = NonZeroU32::new(max).unwrap_or(NonZeroU32::MIN);
    let period = window
        .checked_div(max_nz.get())
        .filter(|p| !p.is_zero())
        .unwrap_or(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| quota(max_nz.get(), max_nz.get()))
        .allow_burst(max_nz)
}

/// A direct (single-bucket) limiter.
pub type DirectLimiter = DefaultDirectRateLimiter;

/// A keyed limiter (one bucket per key).
pub type KeyedLimiter<K> = DefaultKeyedRateLimiter<K>;

/// New direct limiter.
pub fn direct(q: Quota) -> DirectLimiter {
    RateLimiter::direct(q)
}

/// A per-session bucket. It keeps the monotonic clock (no state) instead of
/// the default TSC clock's 40 bytes of calibration: a session holds up to
/// three buckets for its whole life, and reading the clock costs a few tens of
/// nanoseconds more per message.
pub type SessionLimiter = RateLimiter<
    NotKeyed,
    InMemoryState,
    MonotonicClock,
    NoOpMiddleware<<MonotonicClock as Clock>::Instant>,
>;

/// New per-session limiter.
pub fn per_session(q: Quota) -> SessionLimiter {
    RateLimiter::direct_with_clock(q, MonotonicClock)
}

/// New keyed limiter.
pub fn keyed<K: Hash + Eq + Clone>(q: Quota) -> KeyedLimiter<K> {
    RateLimiter::keyed(q)
}

/// Why a handshake was refused by the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Seconds the client should wait (for `Retry-After`), at least 1.
    pub retry_after_secs: u64,
}

/// The address a per-client budget is keyed by: IPv4 (also when IPv4-mapped)
/// as is, IPv6 truncated to its network of `ipv6_prefix_len` bits (one host
/// usually owns a /64).
pub fn network_of(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(ipv6_prefix_len.clamp(1, 128)))
        .unwrap_or(0);
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & mask).into()),
        v4 => v4,
    }
}

/// The retry hint of a refused check.
fn throttled(nu: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Throttled {
    Throttled {
        retry_after_secs: nu
            .wait_time_from(DefaultClock::default().now())
            .as_secs()
            .max(1),
    }
}

/// Global + per-IP upgrade limiter whose IP table is bounded.
///
/// The two budgets are spent at different steps: [`check_ip`](Self::check_ip)
/// for every attempt (malformed ones too), [`check_global`](Self::check_global)
/// only for attempts that got as far as authentication. Requests that fail
/// before auth (unknown tenant, bad query, wrong origin) from a handful of
/// addresses thus spend those addresses' budgets and never the global one that
/// every client shares. IPv6 addresses are keyed by their network
/// (`ipv6_prefix_len`, /64 by default), since one host usually owns a /64.
#[derive(Debug)]
pub struct HandshakeLimiter {
    enabled: bool,
    global: DirectLimiter,
    per_ip: KeyedLimiter<IpAddr>,
    max_ip_entries: usize,
    ipv6_prefix_len: u8,
    /// Last time (nanos since `epoch`) the table was pruned, so a spray triggers at
    /// most one O(n) prune per second.
    last_prune: AtomicU64,
    epoch: tokio::time::Instant,
}

impl HandshakeLimiter {
    /// From `gateway.handshake_limit`.
    pub fn new(cfg: &HandshakeLimitConfig) -> Self {
        Self {
            enabled: cfg.enabled,
            global: direct(quota(cfg.global_rps, cfg.global_burst)),
            per_ip: keyed(quota(cfg.per_ip_rps, cfg.per_ip_burst)),
            max_ip_entries: cfg.max_ip_entries.max(1),
            ipv6_prefix_len: cfg.ipv6_prefix_len,
            last_prune: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// Checks one upgrade attempt from `ip` against both budgets.
    ///
    /// # Errors
    /// [`Throttled`] with a retry hint when the global or per-IP budget is spent, or
    /// when the IP table is full of recently active addresses.
    pub fn check(&self, ip: IpAddr) -> Result<(), Throttled> {
        self.check_ip(ip)?;
        self.check_global()
    }

    /// The key an address is limited under: IPv4 (also when IPv4-mapped) as
    /// is, IPv6 truncated to its network.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        network_of(ip, self.ipv6_prefix_len)
    }

    /// Spends one attempt from `ip`'s (network's) budget.
    ///
    /// # Errors
    /// [`Throttled`] when that budget is spent or the IP table is full of
    /// recently active addresses.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Throttled> {
        if !self.enabled {
            return Ok(());
        }
        let ip = self.key(ip);
        if self.per_ip.len() >= self.max_ip_entries {
            self.prune();
            if self.per_ip.len() >= self.max_ip_entries {
                return Err(Throttled {
                    retry_after_secs: 1,
                });
            }
        }
        self.per_ip.check_key(&ip).map_err(throttled)
    }

    /// Spends one attempt from the budget all clients share.
    ///
    /// # Errors
    /// [`Throttled`] when it is spent.
    pub fn check_global(&self) -> Result<(), Throttled> {
        if !self.enabled {
            return Ok(());
        }
        self.global.check().map_err(throttled)
    }

    /// Drops IP entries whose buckets are full again (idle addresses). Runs at most
    /// once per second; also called by the periodic upkeep task.
    pub fn prune(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_prune.load(Ordering::Relaxed);
        if nanos.saturating_sub(last) < 1_000_000_000 && last != 0 {
            return;
        }
        if self
            .last_prune
            .compare_exchange(last, nanos.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.per_ip.retain_recent();
            self.per_ip.shrink_to_fit();
        }
    }

    /// Entries in the per-IP table.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(per_ip_burst: u32, global_burst: u32, max_ip_entries: usize) -> HandshakeLimitConfig {
        HandshakeLimitConfig {
            enabled: true,
            global_rps: 1,
            global_burst,
            per_ip_rps: 1,
            per_ip_burst,
            max_ip_entries,
            ipv6_prefix_len: 64,
        }
    }

    #[test]
    fn ipv6_is_limited_per_network() {
        let l = HandshakeLimiter::new(&cfg(2, 1000, 100));
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // Two addresses of one /64 share its budget of 2.
        assert!(l.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(l.check(ip("2001:db8:1:2:ffff::9")).is_ok());
        assert!(l.check(ip("2001:db8:1:2:abcd::1")).is_err());
        // The next /64 has its own.
        assert!(l.check(ip("2001:db8:1:3::1")).is_ok());
        // IPv4-mapped addresses count as the IPv4 address.
        assert_eq!(l.key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        let mut c = cfg(1, 1000, 100);
        c.ipv6_prefix_len = 128;
        let exact = HandshakeLimiter::new(&c);
        assert!(exact.check(ip("2001:db8::1")).is_ok());
        assert!(exact.check(ip("2001:db8::2")).is_ok());
    }

    #[test]
    fn per_ip_refusals_do_not_spend_the_global_budget() {
        let l = HandshakeLimiter::new(&cfg(1, 2, 100));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(l.check_ip(a).is_ok());
        for _ in 0..50 {
            assert!(l.check_ip(a).is_err());
        }
        // The global budget (2) is untouched by the refused attempts.
        assert!(l.check_global().is_ok());
        assert!(l.check_global().is_ok());
        assert!(l.check_global().is_err());
    }

    #[test]
    fn per_ip_burst_then_throttled_with_retry_hint() {
        let l = HandshakeLimiter::new(&cfg(3, 1000, 100));
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.check(ip).is_ok());
        }
        let t = l.check(ip).expect_err("fourth is throttled");
        assert!(t.retry_after_secs >= 1);
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        assert!(l.check(other).is_ok(), "other IPs are unaffected");
    }

    #[test]
    fn global_budget_spans_ips() {
        let l = HandshakeLimiter::new(&cfg(100, 2, 100));
        assert!(l.check("10.0.0.1".parse().expect("ip")).is_ok());
        assert!(l.check("10.0.0.2".parse().expect("ip")).is_ok());
        assert!(l.check("10.0.0.3".parse().expect("ip")).is_err());
    }

    #[test]
    fn ip_table_is_bounded_under_a_spray() {
        let l = HandshakeLimiter::new(&cfg(5, 1_000_000, 64));
        let mut refused = 0;
        for i in 0..10_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if l.check(ip).is_err() {
                refused += 1;
            }
        }
        assert!(l.tracked_ips() <= 64, "table grew to {}", l.tracked_ips());
        assert!(refused > 0);
    }

    #[test]
    fn disabled_limiter_admits_everything() {
        let mut c = cfg(1, 1, 1);
        c.enabled = false;
        let l = HandshakeLimiter::new(&c);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..100 {
            assert!(l.check(ip).is_ok());
        }
    }

    #[test]
    fn windowed_quota_allows_max_then_refuses() {
        let l = direct(windowed(5, Duration::from_secs(10)));
        for _ in 0..5 {
            assert!(l.check().is_ok());
        }
        assert!(l.check().is_err());
    }
}
