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
    entries: VecDeque<(u64, Instant, Message)>,
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
            epoch: format!("{:016x}", rand::random::<u64>()),
            next_offset: 1,
            entries: VecDeque::new(),
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
}
