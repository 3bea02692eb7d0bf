//! Room history for recovery (README "Room history and recovery"): the last `history_size` reliable
//! publications of a room, for `history_ttl_ms`, each with its offset.
//!
//! Owns: offsets (per room, increasing by one), the room's epoch (a random id that
//! changes whenever history is lost, e.g. on restart) and the decision whether a
//! client's position `{epoch, offset}` can be recovered without a gap.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tungstenite::Message;

/// History settings of a tenant (`rooms.history_size`, `rooms.history_ttl_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Publications kept per room.
    pub size: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
}

/// One retained publication: its offset, when it was published, the frame.
pub type Retained = (u64, Instant, Message);

/// A client's last seen position in a room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// Epoch the client saw.
    pub epoch: String,
    /// Last offset the client received.
    pub offset: u64,
}

/// The retained publications of one room.
#[derive(Debug)]
pub struct RoomHistory {
    epoch: String,
    /// Offset the next publication gets (the first is 1).
    next_offset: u64,
    entries: VecDeque<Retained>,
    /// The epoch is this node's own while the shared (Redis) sequence is
    /// unreachable (see [`RoomHistory::diverge`]).
    local_only: bool,
}

impl Default for RoomHistory {
    fn default() -> Self {
        Self::new()
    }
}

/// Outcome of a recovery attempt.
#[derive(Debug, PartialEq)]
pub enum Recovery {
    /// Every publication after the client's offset is retained: replay these.
    Recovered(Vec<Message>),
    /// The gap cannot be filled (epoch changed, history trimmed or expired).
    Lost,
}

impl RoomHistory {
    /// An empty history with a fresh epoch.
    pub fn new() -> Self {
        Self {
            epoch: fresh_epoch(),
            next_offset: 1,
            entries: VecDeque::new(),
            local_only: false,
        }
    }

    /// The room's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Offset of the newest publication (0 when none was made in this epoch).
    pub fn last_offset(&self) -> u64 {
        self.next_offset - 1
    }

    /// Drops entries past the size or age limit.
    pub fn trim(&mut self, policy: HistoryPolicy, now: Instant) {
        while self.entries.len() > policy.size {
            self.entries.pop_front();
        }
        while self
            .entries
            .front()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) > policy.ttl)
        {
            self.entries.pop_front();
        }
    }

    /// Assigns the next offset, lets `encode` build the frame with it, and retains
    /// the frame. Returns the frame to deliver.
    pub fn record(
        &mut self,
        policy: HistoryPolicy,
        now: Instant,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Message {
        let offset = self.next_offset;
        self.next_offset += 1;
        let msg = encode(offset, &self.epoch);
        self.entries.push_back((offset, now, msg.clone()));
        self.trim(policy, now);
        msg
    }

    /// Whether the client at `since` can catch up without a gap, and with what.
    pub fn recover(&mut self, since: &Since, policy: HistoryPolicy, now: Instant) -> Recovery {
        self.trim(policy, now);
        if since.epoch != self.epoch || since.offset > self.last_offset() {
            return Recovery::Lost;
        }
        if since.offset == self.last_offset() {
            return Recovery::Recovered(Vec::new());
        }
        // Publications after `since.offset` must all still be retained.
        match self.entries.front() {
            Some((first, _, _)) if *first <= since.offset + 1 => Recovery::Recovered(
                self.entries
                    .iter()
                    .filter(|(o, _, _)| *o > since.offset)
                    .map(|(_, _, m)| m.clone())
                    .collect(),
            ),
            _ => Recovery::Lost,
        }
    }

    /// True when nothing is retained (the entry can be dropped once idle).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes a publication whose offset and epoch were assigned elsewhere
    /// (cluster mode: by Redis, for every node). Returns false for one
    /// already held (not to be delivered twice). A new epoch starts the
    /// history over; an offset past the next expected one leaves a gap, so
    /// what came before can no longer be recovered here.
    pub fn insert(
        &mut self,
        offset: u64,
        epoch: &str,
        msg: Message,
        policy: HistoryPolicy,
        now: Instant,
    ) -> bool {
        if epoch != self.epoch {
            epoch.clone_into(&mut self.epoch);
            self.local_only = false;
            self.entries.clear();
        } else if offset < self.next_offset {
            return false;
        } else if offset > self.next_offset {
            self.entries.clear();
        }
        self.next_offset = offset + 1;
        self.entries.push_back((offset, now, msg));
        self.trim(policy, now);
        true
    }

    /// Leaves the shared sequence (cluster mode, Redis unreachable): the
    /// room goes on under a fresh epoch of this node's own, so no client
    /// mistakes these offsets for the shared ones. Idempotent until the
    /// history is synced again.
    pub fn diverge(&mut self) {
        if !self.local_only {
            self.epoch = fresh_epoch();
            self.entries.clear();
            self.local_only = true;
        }
    }

    /// Brings the history in line with the shared one (`epoch`, newest
    /// offset `last`, the retained `entries` oldest first, each with its
    /// offset and when it was published).
    pub fn sync(
        &mut self,
        epoch: &str,
        last: u64,
        entries: Vec<Retained>,
        policy: HistoryPolicy,
        now: Instant,
    ) -> Synced {
        if epoch == self.epoch && !self.local_only {
            if last <= self.last_offset() {
                return Synced::Current;
            }
            let behind = self.last_offset();
            if entries.iter().any(|(o, _, _)| *o == behind + 1)
                && entries.last().is_some_and(|(o, _, _)| *o == last)
            {
                let missed: Vec<_> = entries
                    .into_iter()
                    .filter(|(o, _, _)| *o > behind)
                    .collect();
                let frames = missed.iter().map(|(_, _, m)| m.clone()).collect();
                self.entries.extend(missed);
                self.next_offset = last + 1;
                self.trim(policy, now);
                return Synced::Repaired(frames);
            }
        }
        self.entries = entries.into();
        epoch.clone_into(&mut self.epoch);
        self.local_only = false;
        self.next_offset = last + 1;
        self.trim(policy, now);
        Synced::Reset
    }
}

/// What [`RoomHistory::sync`] did.
#[derive(Debug, PartialEq)]
pub enum Synced {
    /// Nothing was missing.
    Current,
    /// These publications were missing and are now held, in offset order:
    /// deliver them to the room's members.
    Repaired(Vec<Message>),
    /// The history was replaced (another epoch, or a gap that cannot be
    /// filled): members should be told to resync.
    Reset,
}

fn fresh_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::Utf8Bytes;

    fn policy(size: usize, ttl_ms: u64) -> HistoryPolicy {
        HistoryPolicy {
            size,
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    fn enc(offset: u64, epoch: &str) -> Message {
        Message::Text(Utf8Bytes::from(format!("{epoch}:{offset}")))
    }

    fn texts(r: Recovery) -> Option<Vec<String>> {
        match r {
            Recovery::Recovered(v) => Some(
                v.into_iter()
                    .map(|m| match m {
                        Message::Text(t) => t.as_str().rsplit(':').next().unwrap_or("").to_owned(),
                        _ => String::new(),
                    })
                    .collect(),
            ),
            Recovery::Lost => None,
        }
    }

    #[test]
    fn offsets_increase_by_one_and_recovery_replays_the_gap() {
        let p = policy(10, 60_000);
        let now = Instant::now();
        let mut h = RoomHistory::new();
        for _ in 0..5 {
            h.record(p, now, &enc);
        }
        assert_eq!(h.last_offset(), 5);
        let epoch = h.epoch().to_owned();
        let since = |offset| Since {
            epoch: epoch.clone(),
            offset,
        };
        assert_eq!(
            texts(h.recover(&since(2), p, now)),
            Some(vec!["3".into(), "4".into(), "5".into()])
        );
        assert_eq!(texts(h.recover(&since(5), p, now)), Some(vec![]));
        assert_eq!(
            texts(h.recover(&since(0), p, now)).map(|v| v.len()),
            Some(5)
        );
        assert_eq!(
            texts(h.recover(&since(6), p, now)),
            None,
            "ahead of the room"
        );
        let other = Since {
            epoch: "nope".into(),
            offset: 2,
        };
        assert_eq!(texts(h.recover(&other, p, now)), None, "epoch changed");
    }

    #[test]
    fn trimmed_history_cannot_fill_the_gap() {
        let p = policy(3, 60_000);
        let now = Instant::now();
        let mut h = RoomHistory::new();
        for _ in 0..6 {
            h.record(p, now, &enc);
        }
        let e = h.epoch().to_owned();
        assert_eq!(
            texts(h.recover(
                &Since {
                    epoch: e.clone(),
                    offset: 2
                },
                p,
                now
            )),
            None
        );
        assert_eq!(
            texts(h.recover(
                &Since {
                    epoch: e,
                    offset: 3
                },
                p,
                now
            )),
            Some(vec!["4".into(), "5".into(), "6".into()])
        );
    }

    #[test]
    fn expired_entries_are_lost() {
        let p = policy(10, 1_000);
        let start = Instant::now();
        let mut h = RoomHistory::new();
        h.record(p, start, &enc);
        h.record(p, start, &enc);
        let e = h.epoch().to_owned();
        let later = start + Duration::from_secs(5);
        assert_eq!(
            texts(h.recover(
                &Since {
                    epoch: e,
                    offset: 0
                },
                p,
                later
            )),
            None
        );
        assert!(h.is_empty());
        assert_ne!(
            RoomHistory::new().epoch(),
            h.epoch(),
            "a new history has a new epoch"
        );
    }

    #[test]
    fn shared_offsets_are_taken_once_and_in_order() {
        let p = policy(10, 60_000);
        let now = Instant::now();
        let mut h = RoomHistory::new();
        assert!(h.insert(1, "e1", enc(1, "e1"), p, now));
        assert!(h.insert(2, "e1", enc(2, "e1"), p, now));
        assert!(!h.insert(2, "e1", enc(2, "e1"), p, now), "duplicate");
        assert_eq!((h.epoch(), h.last_offset()), ("e1", 2));
        let since = |offset| Since {
            epoch: "e1".into(),
            offset,
        };
        assert_eq!(
            texts(h.recover(&since(0), p, now)),
            Some(vec!["1".into(), "2".into()])
        );
        // A gap: 3 never arrived, so nothing before 4 can be recovered.
        assert!(h.insert(4, "e1", enc(4, "e1"), p, now));
        assert_eq!(texts(h.recover(&since(1), p, now)), None);
        assert_eq!(texts(h.recover(&since(3), p, now)), Some(vec!["4".into()]));
        // A new epoch (Redis lost its data) starts over.
        assert!(h.insert(1, "e2", enc(1, "e2"), p, now));
        assert_eq!((h.epoch(), h.last_offset()), ("e2", 1));
        assert_eq!(texts(h.recover(&since(4), p, now)), None);
    }

    #[test]
    fn sync_repairs_a_contiguous_gap_and_resets_otherwise() {
        let p = policy(10, 60_000);
        let now = Instant::now();
        let shared = |from: u64, to: u64| {
            (from..=to)
                .map(|o| (o, now, enc(o, "e1")))
                .collect::<Vec<_>>()
        };
        let mut h = RoomHistory::new();
        assert_eq!(h.sync("e1", 2, shared(1, 2), p, now), Synced::Reset);
        assert_eq!(h.sync("e1", 2, shared(1, 2), p, now), Synced::Current);
        match h.sync("e1", 4, shared(1, 4), p, now) {
            Synced::Repaired(frames) => assert_eq!(frames.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.last_offset(), 4);
        // Trimmed in Redis past what this node holds: cannot be repaired.
        assert_eq!(h.sync("e1", 9, shared(7, 9), p, now), Synced::Reset);
        assert_eq!(h.last_offset(), 9);
        // Local-only publications (Redis away) never count as shared ones.
        h.diverge();
        let local = h.epoch().to_owned();
        assert_ne!(local, "e1");
        h.record(p, now, &enc);
        h.diverge();
        assert_eq!(h.epoch(), local, "diverge is idempotent");
        assert_eq!(h.sync("e1", 9, shared(7, 9), p, now), Synced::Reset);
        assert_eq!((h.epoch(), h.last_offset()), ("e1", 9));
    }
}
