//! The realtime seam: sessions, users, rooms, presence and publish for one tenant.
//!
//! Owns: who is connected and who is in which room. Lanes, services and the server
//! API talk to a tenant only through [`Broker`]; [`LocalBroker`] is the embedded,
//! single-process implementation. A cluster implementation wraps the same
//! operations with a bus so the session layer does not change.
//!
//! Fan-out never awaits and never allocates per recipient: a frame is encoded
//! once by the caller and each recipient's outbox receives a reference-counted
//! clone of its bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use tokio::task::AbortHandle;
use tungstenite::Message;

use super::SessionId;
use super::history::{HistoryPolicy, Recovery, Retained, RoomHistory, Since, Synced};
use super::liveness::Liveness;
use super::outbox::{NO_KEY, Outbox, Pushed, Qos};
use crate::error::{CloseCode, RoomError};

/// A connected session as the realtime layer sees it.
#[derive(Debug)]
pub struct SessionEntry {
    /// Session id.
    pub sid: SessionId,
    /// Authenticated user id.
    pub user: Arc<str>,
    /// Outbound queues drained by the session's writer.
    pub outbox: Arc<Outbox>,
    /// Rooms joined with the session's peer number in each; the most recently
    /// (re)joined one is the active room (Hot Lane target).
    rooms: Mutex<JoinedRooms>,
    /// Inbound activity and ping schedule, for the heartbeat sweep.
    pub liveness: Liveness,
    /// The session's task, aborted when the drain's grace period is over.
    task: OnceLock<AbortHandle>,
}

/// A session's rooms: membership tests, joins and leaves in O(1) (or
/// O(log n) for the join order), however many rooms it is in.
#[derive(Debug, Default)]
struct JoinedRooms {
    /// Room → (peer number, join stamp).
    by_name: HashMap<Arc<str>, (u32, u64)>,
    /// Join stamp → room, in join order; the last is the active room.
    order: std::collections::BTreeMap<u64, Arc<str>>,
    next: u64,
}

impl JoinedRooms {
    fn len(&self) -> usize {
        self.by_name.len()
    }

    fn contains(&self, room: &str) -> bool {
        self.by_name.contains_key(room)
    }

    fn active(&self) -> Option<(Arc<str>, u32)> {
        let (_, room) = self.order.last_key_value()?;
        let (peer, _) = self.by_name.get(room)?;
        Some((Arc::clone(room), *peer))
    }

    /// Adds `room` (or moves it to the front of the join order); returns its
    /// peer number when it was already there.
    fn touch(&mut self, room: &str) -> Option<u32> {
        let (peer, stamp) = self.by_name.get_mut(room)?;
        let name = self.order.remove(stamp)?;
        self.next += 1;
        *stamp = self.next;
        self.order.insert(self.next, name);
        Some(*peer)
    }

    fn insert(&mut self, room: Arc<str>, peer: u32) {
        self.next += 1;
        self.order.insert(self.next, Arc::clone(&room));
        self.by_name.insert(room, (peer, self.next));
    }

    fn remove(&mut self, room: &str) -> Option<u32> {
        let (peer, stamp) = self.by_name.remove(room)?;
        self.order.remove(&stamp);
        Some(peer)
    }

    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.order.values()
    }

    /// Every room with its peer number, emptying the set.
    fn take(&mut self) -> Vec<(Arc<str>, u32)> {
        let by_name = std::mem::take(&mut self.by_name);
        let order = std::mem::take(&mut self.order);
        order
            .into_values()
            .filter_map(|r| by_name.get(&r).map(|(peer, _)| (Arc::clone(&r), *peer)))
            .collect()
    }
}

impl SessionEntry {
    /// A session that has joined no room.
    pub fn new(sid: SessionId, user: Arc<str>, outbox: Arc<Outbox>) -> Self {
        Self {
            sid,
            user,
            outbox,
            rooms: Mutex::new(JoinedRooms::default()),
            liveness: Liveness::default(),
            task: OnceLock::new(),
        }
    }

    /// Records the task serving the session (once, right after it is spawned).
    pub fn set_task(&self, task: AbortHandle) {
        let _ = self.task.set(task);
    }

    /// Ends the session's task at once, wherever it is (the end of a drain):
    /// its guard drops and the connection closes without a close handshake.
    pub fn abort(&self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }

    /// The active room and the session's peer number in it.
    pub fn active_room(&self) -> Option<(Arc<str>, u32)> {
        self.rooms.lock().active()
    }

    /// Names of the rooms joined, in join order.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.lock().names().map(|r| r.to_string()).collect()
    }

    /// Whether the session is in `room`.
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms.lock().contains(room)
    }
}

/// Most users a presence answer lists (`room.presence`, the server API, the
/// plugin `members()` import); beyond it the answer says it is truncated.
pub const PRESENCE_CAP: usize = 1000;

/// `users` cut to [`PRESENCE_CAP`], and whether anything was cut.
pub fn capped(mut users: Vec<String>) -> (Vec<String>, bool) {
    let truncated = users.len() > PRESENCE_CAP;
    users.truncate(PRESENCE_CAP);
    (users, truncated)
}

/// A boxed future with nothing to return (see [`Broker::prepare_join`]).
pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A pending admission (see [`Broker::reserve`]).
pub type Reservation =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RegisterError>> + Send>>;

/// Limits applied when registering a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Tenant-wide cap; 0 = none.
    pub max_sessions_total: u64,
    /// Per-user cap (1 for `mode: single`).
    pub max_sessions_per_user: u32,
    /// Kick the oldest session instead of refusing the new one.
    pub kick_oldest: bool,
}

/// Why a session could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// The tenant is at `max_sessions_total` (HTTP 503).
    #[error("tenant is at max_sessions_total")]
    TenantFull,
    /// The user is at `max_sessions_per_user` with `on_exceed: deny` (HTTP 409).
    #[error("user is at max_sessions_per_user")]
    UserLimit,
}

/// Limits applied when joining a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomLimits {
    /// Rooms that may exist; 0 = none.
    pub max_rooms_total: u64,
    /// Members per room; 0 = none.
    pub max_users_per_room: u64,
    /// Rooms one session may be in; 0 = none.
    pub max_rooms_per_user: u64,
}

/// Result of a successful join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The session's peer number in the room.
    pub peer: u32,
    /// Members after the join.
    pub members: usize,
    /// False when the session was already a member (join is idempotent).
    pub new: bool,
}

/// Counts for the stats endpoint and gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TenantStats {
    /// Live sessions.
    pub sessions: usize,
    /// Distinct connected users.
    pub users: usize,
    /// Rooms with at least one member.
    pub rooms: usize,
}

/// Delivery tally of one fan-out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Recipients whose queue took the frame.
    pub delivered: usize,
    /// Lossy frames dropped to make room.
    pub dropped: usize,
    /// Recipients cut as slow consumers by this frame.
    pub slow: usize,
}

impl Delivery {
    fn add(&mut self, pushed: Pushed) {
        match pushed {
            Pushed::Queued => self.delivered += 1,
            Pushed::DroppedOldest => {
                self.delivered += 1;
                self.dropped += 1;
            }
            Pushed::SlowConsumer => self.slow += 1,
            Pushed::Closed => {}
        }
    }
}

/// The realtime operations of one tenant.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Registers a session, enforcing the tenant and per-user caps. Returns the
    /// sessions that must be kicked (oldest first) to make room under
    /// `kick_oldest`; the caller notifies and closes them.
    ///
    /// # Errors
    /// [`RegisterError`] when a cap refuses the session.
    fn register(
        &self,
        entry: Arc<SessionEntry>,
        limits: SessionLimits,
    ) -> Result<Vec<Arc<SessionEntry>>, RegisterError>;

    /// Removes a session and its room memberships; returns the rooms it left with
    /// its peer number in each, for presence events.
    fn unregister(&self, sid: SessionId) -> Vec<(Arc<str>, u32)>;

    /// Looks up a live session.
    fn session(&self, sid: SessionId) -> Option<Arc<SessionEntry>>;

    /// Adds the session to `room` (making it the active room).
    ///
    /// # Errors
    /// `RoomFull`, `RoomLimit` or `SessionGone`.
    fn join(&self, sid: SessionId, room: &str, limits: RoomLimits) -> Result<Joined, RoomError>;

    /// Removes the session from `room`; returns its peer number there.
    ///
    /// # Errors
    /// `NotInRoom` when it was not a member.
    fn leave(&self, sid: SessionId, room: &str) -> Result<u32, RoomError>;

    /// Delivers one encoded frame to every member of `room` except `exclude`.
    fn publish(&self, room: &str, msg: &Message, qos: Qos, exclude: Option<SessionId>) -> Delivery;

    /// Delivers one lossy frame to every member of `room` (but `exclude`),
    /// latest wins (SPEC §6): in each recipient's queue it replaces a
    /// still-queued frame with the same conflation `key`
    /// ([`crate::realtime::outbox::conflation_key`]).
    fn publish_latest(
        &self,
        room: &str,
        msg: &Message,
        key: u64,
        exclude: Option<SessionId>,
    ) -> Delivery;

    /// Delivers one encoded frame to every session of `user`.
    fn send_to_user(&self, user: &str, msg: &Message, qos: Qos) -> Delivery;

    /// Closes every session of `user` after delivering `notice` (if any) to them;
    /// returns how many were closed.
    fn disconnect_user(&self, user: &str, notice: Option<&Message>, code: CloseCode) -> usize;

    /// Calls `f` with every session connected to this process.
    fn each_session(&self, f: &mut dyn FnMut(&Arc<SessionEntry>));

    /// Closes every session (drain, tenant removal); returns how many.
    fn close_all(&self, code: CloseCode, reason: &'static str) -> usize {
        let mut n = 0;
        self.each_session(&mut |s| {
            s.outbox.close(code, reason, true);
            n += 1;
        });
        n
    }

    /// Distinct users in `room`, sorted.
    fn presence(&self, room: &str) -> Vec<String>;

    /// Member count of `room`.
    fn room_size(&self, room: &str) -> usize;

    /// Session, user and room counts.
    fn stats(&self) -> TenantStats;

    /// Publishes a reliable room frame and records it in the room's history
    /// (README "Room history and recovery"). `encode` builds the frame once from the offset and epoch the
    /// broker assigns; offsets are assigned and delivered in one order.
    fn publish_recorded(
        &self,
        room: &str,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Delivery;

    /// Joins like [`Broker::join`] in a room with history: when `since` is given,
    /// first queues every retained publication after it (or none, when the gap
    /// cannot be filled), then the frame `notice` builds, with no publication in
    /// between.
    ///
    /// # Errors
    /// As [`Broker::join`].
    fn join_recovering(
        &self,
        sid: SessionId,
        room: &str,
        limits: RoomLimits,
        policy: HistoryPolicy,
        since: Option<&Since>,
        notice: &dyn Fn(&Joined, &HistoryState) -> Message,
    ) -> Result<Joined, RoomError>;

    /// Drops expired history (periodic upkeep).
    fn prune_history(&self, policy: HistoryPolicy);

    /// Admission beyond this process, before [`Broker::register`]: in
    /// cluster mode the per-user cap counts the sessions of every node
    /// atomically, and under `kick_oldest` the oldest ones anywhere are
    /// kicked. `None` (the local broker, always) means nothing to wait for.
    fn reserve(&self, _sid: SessionId, _user: &str, _limits: SessionLimits) -> Option<Reservation> {
        None
    }

    /// Work to finish before session `sid` joins `room`: in cluster mode
    /// the node subscribes the room and learns its members on other nodes
    /// first, and takes the session's seat against the cluster-wide room
    /// caps (a refused seat makes the join that follows fail). `None` (the
    /// local broker, always) means nothing to wait for.
    fn prepare_join(&self, _sid: SessionId, _room: &str, _limits: RoomLimits) -> Option<BoxFuture> {
        None
    }

    /// A prepared join of `room` by `sid` will not happen (a room hook
    /// refused it): give back what [`Broker::prepare_join`] took.
    fn cancel_join(&self, _sid: SessionId, _room: &str) {}

    /// Tells the broker whether the tenant announces `member_joined` /
    /// `member_left`, for members it removes on its own (a cluster broker
    /// whose peer node died). Applied with every config.
    fn presence_events(&self, _on: bool) {}

    /// Tells the broker the tenant's room history settings, for
    /// publications it records on its own (a cluster broker applying those
    /// of other nodes). Applied with every config.
    fn history_policy(&self, _policy: Option<HistoryPolicy>) {}
}

/// A room's history position as a join reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryState {
    /// `Some(true)` when the client's `since` was recovered, `Some(false)` when
    /// the gap could not be filled, `None` when no `since` was given.
    pub recovered: Option<bool>,
    /// The room's epoch.
    pub epoch: String,
    /// Offset of the newest publication.
    pub offset: u64,
}

#[derive(Debug)]
struct Member {
    sid: SessionId,
    peer: u32,
    user: Arc<str>,
    outbox: Arc<Outbox>,
}

#[derive(Debug, Default)]
struct RoomMembers {
    /// Dense for fast fan-out; removal is a linear scan + swap_remove.
    members: Vec<Member>,
    next_peer: u32,
}

#[derive(Debug, Default)]
struct Room {
    inner: RwLock<RoomMembers>,
}

/// The embedded, in-process broker (cluster `mode: local`).
#[derive(Debug, Default)]
pub struct LocalBroker {
    sessions: DashMap<SessionId, Arc<SessionEntry>>,
    /// Sessions of each user, oldest first.
    users: DashMap<Arc<str>, Vec<SessionId>>,
    rooms: DashMap<Arc<str>, Arc<Room>>,
    session_count: AtomicU64,
    /// Kept beside `rooms` because `DashMap::len` cannot be called while a shard
    /// lock is held (it would deadlock on that shard).
    room_count: AtomicU64,
    /// Room histories; they outlive membership so clients can recover after the
    /// room emptied, and expire by TTL.
    histories: DashMap<Arc<str>, Arc<Mutex<RoomHistory>>>,
    /// In cluster mode, this node's slot: peer numbers are
    /// `slot << PEER_BITS | n`, unique in a room across nodes.
    peer_slot: Option<Arc<AtomicU32>>,
}

/// Low bits of a peer number a node counts in (cluster mode).
pub const PEER_BITS: u32 = 22;

impl LocalBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty broker whose peer numbers carry the node slot in `slot`
    /// (read at each join: a node claims its slot once Redis answers).
    pub fn with_peer_slot(slot: Arc<AtomicU32>) -> Self {
        Self {
            peer_slot: Some(slot),
            ..Self::default()
        }
    }

    /// The next peer number of a room whose counter is at `last`: the new
    /// counter and the number.
    fn next_peer(&self, last: u32) -> (u32, u32) {
        match &self.peer_slot {
            None => {
                let n = last.wrapping_add(1).max(1);
                (n, n)
            }
            Some(slot) => {
                let n = (last.wrapping_add(1) & ((1 << PEER_BITS) - 1)).max(1);
                (n, (slot.load(Ordering::Acquire) << PEER_BITS) | n)
            }
        }
    }

    /// Live sessions of `user`.
    pub fn user_sessions(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |s| s.len())
    }

    /// Rooms with at least one member.
    pub fn room_names(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|r| Arc::clone(r.key())).collect()
    }

    /// Peer number and user of every member of `room`.
    pub fn members(&self, room: &str) -> Vec<(u32, Arc<str>)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.inner
                .read()
                .members
                .iter()
                .map(|m| (m.peer, Arc::clone(&m.user)))
                .collect()
        })
    }

    /// The sessions that are members of `room`.
    pub fn room_sessions(&self, room: &str) -> Vec<SessionId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.inner.read().members.iter().map(|m| m.sid).collect()
        })
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<Arc<SessionEntry>> {
        self.sessions
            .iter()
            .map(|s| Arc::clone(s.value()))
            .collect()
    }

    /// Users with at least one session.
    pub fn user_names(&self) -> Vec<Arc<str>> {
        self.users.iter().map(|u| Arc::clone(u.key())).collect()
    }

    /// The epoch and newest offset of `room`'s history, when it keeps one.
    pub fn history_position(&self, room: &str) -> Option<(String, u64)> {
        let h = self.histories.get(room)?;
        let h = h.lock();
        Some((h.epoch().to_owned(), h.last_offset()))
    }

    /// Takes a publication recorded elsewhere (cluster mode: offset and
    /// epoch assigned by Redis) into `room`'s history and, unless it was
    /// already held, delivers it to the local members (but `exclude`).
    /// `None` when it was a duplicate.
    pub fn publish_shared(
        &self,
        room: &str,
        (offset, epoch): (u64, &str),
        msg: &Message,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
    ) -> Option<Delivery> {
        let history = self.history(room);
        let mut h = history.lock();
        let now = tokio::time::Instant::now();
        if !h.insert(offset, epoch, msg.clone(), policy, now) {
            return None;
        }
        // Under the history lock: members see offsets in order.
        Some(self.publish(room, msg, Qos::Reliable, exclude))
    }

    /// [`Broker::publish_recorded`] under an epoch of this broker's own
    /// (cluster mode while the shared sequence is unreachable, see
    /// [`RoomHistory::diverge`]).
    pub fn publish_diverged(
        &self,
        room: &str,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> (Delivery, Message) {
        let history = self.history(room);
        let mut h = history.lock();
        h.diverge();
        let msg = h.record(policy, tokio::time::Instant::now(), encode);
        (self.publish(room, &msg, Qos::Reliable, exclude), msg)
    }

    /// Brings `room`'s history in line with the shared one (cluster mode,
    /// after subscribing or after an outage) and delivers what the local
    /// members missed, when that is a contiguous run; see [`RoomHistory::sync`].
    pub fn sync_history(
        &self,
        room: &str,
        (epoch, last): (&str, u64),
        entries: Vec<Retained>,
        policy: HistoryPolicy,
    ) -> Synced {
        let history = self.history(room);
        let mut h = history.lock();
        let synced = h.sync(epoch, last, entries, policy, tokio::time::Instant::now());
        if let Synced::Repaired(frames) = &synced {
            for f in frames {
                self.publish(room, f, Qos::Reliable, None);
            }
        }
        synced
    }

    /// Queues `msg` for every member of `room` but `exclude` (lossy frames
    /// with a conflation `key` replace a queued one with the same key).
    fn fan_out(
        &self,
        room: &str,
        msg: &Message,
        qos: Qos,
        key: u64,
        exclude: Option<SessionId>,
    ) -> Delivery {
        let mut tally = Delivery::default();
        let Some(room) = self.rooms.get(room).map(|r| Arc::clone(r.value())) else {
            return tally;
        };
        let inner = room.inner.read();
        for m in &inner.members {
            if Some(m.sid) != exclude {
                tally.add(m.outbox.push_keyed(msg.clone(), qos, key));
            }
        }
        tally
    }

    fn remove_member(&self, room_name: &str, sid: SessionId) -> Option<u32> {
        let room = self.rooms.get(room_name).map(|r| Arc::clone(r.value()))?;
        let peer = {
            let mut inner = room.inner.write();
            let idx = inner.members.iter().position(|m| m.sid == sid)?;
            inner.members.swap_remove(idx).peer
        };
        // Drop the room when it is empty. The check runs under the map's shard lock,
        // which `join` also holds while adding a member, so a concurrent join can
        // never land in a room that has just been removed.
        self.drop_if_empty(room_name);
        Some(peer)
    }

    fn history(&self, room: &str) -> Arc<Mutex<RoomHistory>> {
        if let Some(h) = self.histories.get(room) {
            return Arc::clone(h.value());
        }
        Arc::clone(
            self.histories
                .entry(Arc::from(room))
                .or_insert_with(|| Arc::new(Mutex::new(RoomHistory::new())))
                .value(),
        )
    }

    fn drop_if_empty(&self, room_name: &str) {
        if self
            .rooms
            .remove_if(room_name, |_, r| r.inner.read().members.is_empty())
            .is_some()
        {
            self.room_count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Broker for LocalBroker {
    fn register(
        &self,
        entry: Arc<SessionEntry>,
        limits: SessionLimits,
    ) -> Result<Vec<Arc<SessionEntry>>, RegisterError> {
        let mut kicked = Vec::new();
        {
            let mut sids = self.users.entry(Arc::clone(&entry.user)).or_default();
            let cap = limits.max_sessions_per_user.max(1) as usize;
            // Sessions already closing do not count against the cap. Checked only
            // at the cap: below it a connect costs O(1), not a lookup per session
            // the user already has.
            if sids.len() >= cap {
                sids.retain(|sid| {
                    self.sessions
                        .get(sid)
                        .is_some_and(|s| !s.outbox.is_closing())
                });
            }
            if sids.len() >= cap {
                if !limits.kick_oldest {
                    return Err(RegisterError::UserLimit);
                }
                let excess = sids.len() + 1 - cap;
                for sid in sids.drain(..excess) {
                    if let Some(s) = self.sessions.get(&sid) {
                        kicked.push(Arc::clone(s.value()));
                    }
                }
            }
            // Tenant cap after the kick decision: kicked sessions free their
            // slot. Checked and taken in one atomic step, so concurrent
            // connects of different users cannot both take the last slot.
            let freed = kicked.len() as u64;
            let max = limits.max_sessions_total;
            let taken =
                self.session_count
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                        (max == 0 || count.saturating_sub(freed) < max).then_some(count + 1)
                    });
            if taken.is_err() {
                // Undo: the kicked sessions stay.
                let mut restored: Vec<SessionId> = kicked.iter().map(|s| s.sid).collect();
                restored.append(&mut sids);
                *sids = restored;
                return Err(RegisterError::TenantFull);
            }
            sids.push(entry.sid);
        }
        self.sessions.insert(entry.sid, entry);
        Ok(kicked)
    }

    fn unregister(&self, sid: SessionId) -> Vec<(Arc<str>, u32)> {
        let Some((_, entry)) = self.sessions.remove(&sid) else {
            return Vec::new();
        };
        self.session_count.fetch_sub(1, Ordering::AcqRel);
        self.users.remove_if_mut(&entry.user, |_, sids| {
            sids.retain(|s| *s != sid);
            sids.is_empty()
        });
        let rooms = entry.rooms.lock().take();
        rooms
            .into_iter()
            .filter_map(|(room, _)| {
                let peer = self.remove_member(&room, sid)?;
                Some((room, peer))
            })
            .collect()
    }

    fn session(&self, sid: SessionId) -> Option<Arc<SessionEntry>> {
        self.sessions.get(&sid).map(|s| Arc::clone(s.value()))
    }

    fn join(&self, sid: SessionId, room: &str, limits: RoomLimits) -> Result<Joined, RoomError> {
        let entry = self.session(sid).ok_or(RoomError::SessionGone)?;
        {
            let mut rooms = entry.rooms.lock();
            // Already a member: make it the active room again.
            if let Some(peer) = rooms.touch(room) {
                drop(rooms);
                return Ok(Joined {
                    peer,
                    members: self.room_size(room),
                    new: false,
                });
            }
            if limits.max_rooms_per_user > 0 && rooms.len() as u64 >= limits.max_rooms_per_user {
                return Err(RoomError::RoomLimit);
            }
        }
        let (room_name, peer, members) = {
            let slot = match self.rooms.entry(Arc::from(room)) {
                dashmap::Entry::Occupied(o) => o.into_ref(),
                dashmap::Entry::Vacant(v) => {
                    if limits.max_rooms_total > 0
                        && self.room_count.load(Ordering::Acquire) >= limits.max_rooms_total
                    {
                        return Err(RoomError::RoomLimit);
                    }
                    self.room_count.fetch_add(1, Ordering::AcqRel);
                    v.insert(Arc::new(Room::default()))
                }
            };
            let mut inner = slot.value().inner.write();
            if limits.max_users_per_room > 0
                && inner.members.len() as u64 >= limits.max_users_per_room
            {
                let empty = inner.members.is_empty();
                drop(inner);
                let key = Arc::clone(slot.key());
                drop(slot);
                if empty {
                    self.drop_if_empty(&key);
                }
                return Err(RoomError::RoomFull);
            }
            let (counter, peer) = self.next_peer(inner.next_peer);
            inner.next_peer = counter;
            inner.members.push(Member {
                sid,
                peer,
                user: Arc::clone(&entry.user),
                outbox: Arc::clone(&entry.outbox),
            });
            (Arc::clone(slot.key()), peer, inner.members.len())
        };
        entry.rooms.lock().insert(room_name, peer);
        Ok(Joined {
            peer,
            members,
            new: true,
        })
    }

    fn leave(&self, sid: SessionId, room: &str) -> Result<u32, RoomError> {
        let entry = self.session(sid).ok_or(RoomError::SessionGone)?;
        {
            entry
                .rooms
                .lock()
                .remove(room)
                .ok_or(RoomError::NotInRoom)?;
        }
        self.remove_member(room, sid).ok_or(RoomError::NotInRoom)
    }

    fn publish(&self, room: &str, msg: &Message, qos: Qos, exclude: Option<SessionId>) -> Delivery {
        self.fan_out(room, msg, qos, NO_KEY, exclude)
    }

    fn publish_latest(
        &self,
        room: &str,
        msg: &Message,
        key: u64,
        exclude: Option<SessionId>,
    ) -> Delivery {
        self.fan_out(room, msg, Qos::Lossy, key, exclude)
    }

    fn send_to_user(&self, user: &str, msg: &Message, qos: Qos) -> Delivery {
        let mut tally = Delivery::default();
        let sids = match self.users.get(user) {
            Some(s) => s.value().clone(),
            None => return tally,
        };
        for sid in sids {
            if let Some(s) = self.session(sid) {
                tally.add(s.outbox.push(msg.clone(), qos));
            }
        }
        tally
    }

    fn disconnect_user(&self, user: &str, notice: Option<&Message>, code: CloseCode) -> usize {
        let sids = match self.users.get(user) {
            Some(s) => s.value().clone(),
            None => return 0,
        };
        let mut closed = 0;
        for sid in sids {
            if let Some(s) = self.session(sid) {
                if let Some(n) = notice {
                    s.outbox.push(n.clone(), Qos::Reliable);
                }
                s.outbox.close(code, "disconnected", true);
                closed += 1;
            }
        }
        closed
    }

    fn each_session(&self, f: &mut dyn FnMut(&Arc<SessionEntry>)) {
        for s in &self.sessions {
            f(s.value());
        }
    }

    fn presence(&self, room: &str) -> Vec<String> {
        let Some(room) = self.rooms.get(room).map(|r| Arc::clone(r.value())) else {
            return Vec::new();
        };
        let mut users: Vec<String> = {
            let inner = room.inner.read();
            let mut seen: HashMap<&str, ()> = HashMap::with_capacity(inner.members.len());
            inner
                .members
                .iter()
                .filter(|m| seen.insert(&m.user, ()).is_none())
                .map(|m| m.user.to_string())
                .collect()
        };
        users.sort_unstable();
        users
    }

    fn room_size(&self, room: &str) -> usize {
        self.rooms
            .get(room)
            .map(|r| r.inner.read().members.len())
            .unwrap_or(0)
    }

    fn stats(&self) -> TenantStats {
        TenantStats {
            sessions: self.sessions.len(),
            users: self.users.len(),
            rooms: self.rooms.len(),
        }
    }

    fn publish_recorded(
        &self,
        room: &str,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Delivery {
        let history = self.history(room);
        // The history lock is held through the fan-out so every member receives
        // publications in offset order.
        let mut h = history.lock();
        let msg = h.record(policy, tokio::time::Instant::now(), encode);
        self.publish(room, &msg, Qos::Reliable, exclude)
    }

    fn join_recovering(
        &self,
        sid: SessionId,
        room: &str,
        limits: RoomLimits,
        policy: HistoryPolicy,
        since: Option<&Since>,
        notice: &dyn Fn(&Joined, &HistoryState) -> Message,
    ) -> Result<Joined, RoomError> {
        let history = self.history(room);
        let mut h = history.lock();
        let joined = self.join(sid, room, limits)?;
        let entry = self.session(sid).ok_or(RoomError::SessionGone)?;
        let recovered =
            since.map(
                |since| match h.recover(since, policy, tokio::time::Instant::now()) {
                    Recovery::Recovered(frames) => {
                        for f in frames {
                            entry.outbox.push(f, Qos::Reliable);
                        }
                        true
                    }
                    Recovery::Lost => false,
                },
            );
        let state = HistoryState {
            recovered,
            epoch: h.epoch().to_owned(),
            offset: h.last_offset(),
        };
        entry.outbox.push(notice(&joined, &state), Qos::Reliable);
        Ok(joined)
    }

    fn prune_history(&self, policy: HistoryPolicy) {
        let now = tokio::time::Instant::now();
        self.histories.retain(|name, h| {
            let mut h = h.lock();
            h.trim(policy, now);
            // Keep the history (and its epoch) while the room is live.
            !h.is_empty() || self.rooms.contains_key(name)
        });
    }
}

#[cfg(test)]
mod tests;
