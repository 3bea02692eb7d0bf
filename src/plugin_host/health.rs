//! Call counters, fault attribution and back-off of one (tenant, plugin).
//!
//! Owns: [`Stats`], and the two back-offs built from its fault history (SPEC
//! §8, issue 11):
//! - **per session**: a session whose calls faulted (trap, timeout, memory
//!   hit) `plugins.max_faults_per_session` times within [`CRASH_WINDOW`] is
//!   refused by this plugin ([`PluginError::SessionBackingOff`]) for a
//!   back-off; every other session keeps being served.
//! - **plugin-wide**: instantiation failures, and faults of distinct users,
//!   are *strikes*; [`CRASH_THRESHOLD`] strikes within the window refuse the
//!   whole (tenant, plugin) ([`PluginError::BackingOff`]). A user is one strike
//!   however many sessions and faults it has, so a client cannot switch a
//!   plugin off for everyone: only a version that fails to instantiate or
//!   faults for many users is backed off as a whole.
//!
//! Input: `pool.rs` reports faults ([`Stats::faulted`]) and successes and asks
//! before each call. No I/O; the one lock is taken only while some back-off or
//! fault record exists (two flags say so), never in the normal case.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::limits::{
    BACKOFF_BASE, BACKOFF_MAX, CRASH_THRESHOLD, CRASH_WINDOW, MAX_FAULTY_SESSIONS,
};
use crate::realtime::SessionId;

/// Who a fault is charged to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Culprit<'a> {
    /// The version failed to instantiate (start-up code, `init`, its budget):
    /// no session caused that.
    Instantiate,
    /// A call of this session (of this user) faulted.
    Call {
        /// The calling session.
        sid: SessionId,
        /// Its user, the unit of plugin-wide strikes.
        user: &'a Arc<str>,
    },
}

/// Back-off periods a [`Stats::faulted`] started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Started {
    /// The calling session is refused for this long.
    pub(crate) session: Option<Duration>,
    /// The whole (tenant, plugin) is refused for this long.
    pub(crate) plugin: Option<Duration>,
}

/// Call counters and fault history of one (tenant, plugin).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Calls handled.
    pub(crate) calls: AtomicU64,
    /// Calls failed (any [`PluginError`], refusals included).
    ///
    /// [`PluginError`]: crate::error::PluginError
    pub(crate) errors: AtomicU64,
    health: Mutex<Health>,
    /// Set while the plugin-wide back-off may be in force or its streak is
    /// open, so the per-call checks skip the lock (and the clock) in the
    /// normal case.
    troubled: AtomicBool,
    /// Set while some session has a fault record (see `troubled`).
    sessions_troubled: AtomicBool,
}

#[derive(Debug, Default)]
struct Health {
    /// Plugin-wide strikes within the window, oldest first: `None` for an
    /// instantiation failure, else the user (one entry per user, its latest).
    strikes: VecDeque<(Instant, Option<Arc<str>>)>,
    plugin: Backoff,
    sessions: HashMap<SessionId, SessionFaults>,
    /// When stale session records are dropped next.
    prune_at: Option<Instant>,
    /// When a fault was last logged at WARN, and faults not logged since.
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// Faults of one (tenant, plugin) logged at WARN at most this often; the
/// others are counted and the next line says how many were left out.
pub(crate) const FAULT_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A back-off and its streak.
#[derive(Debug, Default)]
struct Backoff {
    until: Option<Instant>,
    /// Consecutive back-offs; doubles the period.
    streak: u32,
}

impl Backoff {
    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| t > now)
    }

    /// Starts the next back-off: [`BACKOFF_BASE`], doubled per streak, at
    /// most [`BACKOFF_MAX`].
    fn start(&mut self, now: Instant) -> Duration {
        let period = BACKOFF_BASE
            .saturating_mul(1u32 << self.streak.min(8))
            .min(BACKOFF_MAX);
        self.streak = self.streak.saturating_add(1);
        self.until = Some(now + period);
        period
    }
}

/// One session's faults within the window and its back-off.
#[derive(Debug, Default)]
struct SessionFaults {
    faults: VecDeque<Instant>,
    backoff: Backoff,
}

impl SessionFaults {
    /// Nothing to remember: no fault within the window and no back-off in
    /// force or ended within it. Dropping the record also ends its streak, so
    /// a session that behaves for a window starts from the base period again.
    fn stale(&self, now: Instant) -> bool {
        let last = self
            .faults
            .back()
            .copied()
            .max(self.backoff.until)
            .unwrap_or(now);
        now.saturating_duration_since(last) > CRASH_WINDOW
    }
}

fn prune_window<T>(q: &mut VecDeque<T>, now: Instant, at: impl Fn(&T) -> Instant) {
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(at(t)) > CRASH_WINDOW)
    {
        q.pop_front();
    }
}

impl Health {
    /// Drops stale session records, at most once per window unless `force`.
    fn prune_sessions(&mut self, now: Instant, force: bool) {
        if !force && self.prune_at.is_some_and(|t| t > now) {
            return;
        }
        self.sessions.retain(|_, s| !s.stale(now));
        self.prune_at = Some(now + CRASH_WINDOW);
    }

    /// Charges a fault to `sid`; the period when this fault started its back-off.
    fn charge_session(
        &mut self,
        sid: SessionId,
        max_faults: u32,
        now: Instant,
    ) -> Option<Duration> {
        if !self.sessions.contains_key(&sid) && self.sessions.len() >= MAX_FAULTY_SESSIONS {
            self.prune_sessions(now, false);
            if self.sessions.len() >= MAX_FAULTY_SESSIONS {
                // Only the plugin-wide strike of its user counts this fault.
                return None;
            }
        }
        let s = self.sessions.entry(sid).or_default();
        s.faults.push_back(now);
        prune_window(&mut s.faults, now, |t| *t);
        if s.faults.len() < max_faults.max(1) as usize {
            return None;
        }
        s.faults.clear();
        Some(s.backoff.start(now))
    }

    /// Adds a plugin-wide strike; the period when it started a back-off.
    fn strike(&mut self, user: Option<&Arc<str>>, now: Instant) -> Option<Duration> {
        if let Some(user) = user {
            self.strikes.retain(|(_, u)| u.as_ref() != Some(user));
        }
        self.strikes.push_back((now, user.cloned()));
        prune_window(&mut self.strikes, now, |(t, _)| *t);
        if self.strikes.len() < CRASH_THRESHOLD {
            return None;
        }
        self.strikes.clear();
        Some(self.plugin.start(now))
    }
}

impl Stats {
    /// Whether a fault at `now` may be logged at WARN ([`FAULT_LOG_INTERVAL`]);
    /// `Some(n)` with the faults left out since the last line, `None` when
    /// this one is only counted.
    pub(crate) fn fault_log_slot(&self, now: Instant) -> Option<u64> {
        let mut h = self.health.lock();
        let due = h
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= FAULT_LOG_INTERVAL);
        if due {
            h.last_logged = Some(now);
            Some(std::mem::take(&mut h.unlogged))
        } else {
            h.unlogged += 1;
            None
        }
    }

    /// Whether the whole (tenant, plugin) is refused with `BackingOff` at `now`.
    pub(crate) fn backing_off(&self, now: Instant) -> bool {
        self.troubled.load(Ordering::Acquire) && self.health.lock().plugin.active(now)
    }

    /// [`Stats::backing_off`] right now; reads the clock only when a back-off
    /// may be in force.
    pub(crate) fn backing_off_now(&self) -> bool {
        self.troubled.load(Ordering::Acquire) && self.backing_off(Instant::now())
    }

    /// Whether `sid` alone is refused with `SessionBackingOff` at `now`.
    pub(crate) fn session_backing_off(&self, sid: SessionId, now: Instant) -> bool {
        if !self.sessions_troubled.load(Ordering::Acquire) {
            return false;
        }
        let mut h = self.health.lock();
        h.prune_sessions(now, false);
        if h.sessions.is_empty() {
            self.sessions_troubled.store(false, Ordering::Release);
            return false;
        }
        h.sessions.get(&sid).is_some_and(|s| s.backoff.active(now))
    }

    /// [`Stats::session_backing_off`] right now; reads the clock only when
    /// some session has a fault record.
    pub(crate) fn session_backing_off_now(&self, sid: SessionId) -> bool {
        self.sessions_troubled.load(Ordering::Acquire)
            && self.session_backing_off(sid, Instant::now())
    }

    /// Records a fault charged to `culprit`: a call's fault to its session
    /// (back-off after `max_per_session` within the window) and, as one strike
    /// per user, to the plugin; an instantiation failure to the plugin only.
    pub(crate) fn faulted(
        &self,
        culprit: Culprit<'_>,
        max_per_session: u32,
        now: Instant,
    ) -> Started {
        let mut h = self.health.lock();
        let mut started = Started::default();
        let user = match culprit {
            Culprit::Instantiate => None,
            Culprit::Call { sid, user } => {
                started.session = h.charge_session(sid, max_per_session, now);
                if !h.sessions.is_empty() {
                    self.sessions_troubled.store(true, Ordering::Release);
                }
                Some(user)
            }
        };
        started.plugin = h.strike(user, now);
        if started.plugin.is_some() {
            self.troubled.store(true, Ordering::Release);
        }
        started
    }

    /// A call succeeded: the next plugin-wide back-off starts from the base
    /// period again. (A session's streak ends when its record goes stale.)
    pub(crate) fn succeeded(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock();
        if !h.plugin.active(Instant::now()) {
            h.plugin = Backoff::default();
            self.troubled.store(false, Ordering::Release);
        }
    }

    /// Drops stale session records (the idle sweeper's pass).
    pub(crate) fn sweep(&self, now: Instant) {
        if !self.sessions_troubled.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health.lock();
        h.prune_sessions(now, true);
        if h.sessions.is_empty() {
            self.sessions_troubled.store(false, Ordering::Release);
        }
    }

    /// A new version was loaded: forget past faults and back-offs.
    pub(crate) fn reset(&self) {
        let mut h = self.health.lock();
        *h = Health::default();
        self.troubled.store(false, Ordering::Release);
        self.sessions_troubled.store(false, Ordering::Release);
    }

    #[cfg(test)]
    fn tracked_sessions(&self) -> usize {
        self.health.lock().sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u32 = 3;

    fn call<'a>(sid: u64, user: &'a Arc<str>) -> Culprit<'a> {
        Culprit::Call {
            sid: SessionId::new(sid),
            user,
        }
    }

    #[test]
    fn a_sessions_faults_back_off_that_session_only() {
        let s = Stats::default();
        let u1: Arc<str> = Arc::from("u1");
        let now = Instant::now();
        for _ in 0..MAX - 1 {
            assert_eq!(s.faulted(call(1, &u1), MAX, now), Started::default());
        }
        let started = s.faulted(call(1, &u1), MAX, now);
        assert_eq!(started.session, Some(BACKOFF_BASE));
        assert_eq!(started.plugin, None);
        assert!(s.session_backing_off(SessionId::new(1), now));
        assert!(!s.session_backing_off(SessionId::new(2), now));
        assert!(!s.backing_off(now));
        assert!(!s.session_backing_off(SessionId::new(1), now + BACKOFF_BASE));
        // Faulting again right after the back-off doubles it.
        let later = now + BACKOFF_BASE;
        for _ in 0..MAX - 1 {
            s.faulted(call(1, &u1), MAX, later);
        }
        assert_eq!(
            s.faulted(call(1, &u1), MAX, later).session,
            Some(BACKOFF_BASE * 2)
        );
    }

    #[test]
    fn one_user_is_one_strike_however_many_sessions_and_faults() {
        let s = Stats::default();
        let u1: Arc<str> = Arc::from("u1");
        let now = Instant::now();
        for sid in 0..50 {
            for _ in 0..MAX {
                assert_eq!(s.faulted(call(sid, &u1), MAX, now).plugin, None);
            }
        }
        assert!(!s.backing_off(now));
    }

    #[test]
    fn faults_of_many_users_back_the_plugin_off() {
        let s = Stats::default();
        let now = Instant::now();
        let users: Vec<Arc<str>> = (0..CRASH_THRESHOLD)
            .map(|i| Arc::from(format!("u{i}")))
            .collect();
        for (i, u) in users.iter().enumerate() {
            let started = s.faulted(call(i as u64, u), MAX, now);
            let last = i + 1 == CRASH_THRESHOLD;
            assert_eq!(started.plugin, last.then_some(BACKOFF_BASE), "user {i}");
        }
        assert!(s.backing_off(now));
        assert!(!s.backing_off(now + BACKOFF_BASE));
        s.reset();
        assert!(!s.backing_off(now));
    }

    #[test]
    fn instantiation_failures_back_the_plugin_off() {
        let s = Stats::default();
        let now = Instant::now();
        for _ in 0..CRASH_THRESHOLD - 1 {
            assert_eq!(
                s.faulted(Culprit::Instantiate, MAX, now),
                Started::default()
            );
        }
        assert_eq!(
            s.faulted(Culprit::Instantiate, MAX, now).plugin,
            Some(BACKOFF_BASE)
        );
        assert!(s.backing_off(now));
        // Failing again right after the back-off doubles it.
        let later = now + BACKOFF_BASE;
        for _ in 0..CRASH_THRESHOLD - 1 {
            s.faulted(Culprit::Instantiate, MAX, later);
        }
        assert_eq!(
            s.faulted(Culprit::Instantiate, MAX, later).plugin,
            Some(BACKOFF_BASE * 2)
        );
    }

    #[test]
    fn faults_outside_the_window_do_not_count() {
        let s = Stats::default();
        let u1: Arc<str> = Arc::from("u1");
        let mut t = Instant::now();
        for _ in 0..MAX * 2 {
            assert_eq!(s.faulted(call(1, &u1), MAX, t), Started::default());
            assert_eq!(s.faulted(Culprit::Instantiate, MAX, t).plugin, None);
            // Spaced so that a window never holds enough of them.
            t += CRASH_WINDOW / 2 + Duration::from_millis(1);
        }
    }

    #[test]
    fn stale_session_records_are_dropped_and_the_table_is_bounded() {
        let s = Stats::default();
        let now = Instant::now();
        let users: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("u{i}"))).collect();
        for sid in 0..(MAX_FAULTY_SESSIONS as u64 + 100) {
            let u = &users[sid as usize % users.len()];
            s.faulted(call(sid, u), MAX, now);
        }
        assert_eq!(s.tracked_sessions(), MAX_FAULTY_SESSIONS);
        let later = now + CRASH_WINDOW + Duration::from_millis(1);
        s.sweep(later);
        assert_eq!(s.tracked_sessions(), 0);
        assert!(!s.session_backing_off_now(SessionId::new(1)));
    }
}
