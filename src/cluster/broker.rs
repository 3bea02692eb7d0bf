//! [`ClusterBroker`]: a tenant's [`LocalBroker`] plus the bus and a replica of
//! the other nodes' room members, so the session layer does not change in
//! cluster mode.
//!
//! Every operation first runs on the local broker, exactly as in `local` mode
//! (local members get a publication at once, whatever Redis is doing); what
//! must reach other nodes is then queued for the bus. Membership changes ask
//! the node to re-evaluate the room or user channel, which it subscribes to
//! while there are local recipients, and are announced on the room channel
//! and recorded in the room's presence hash in Redis.
//!
//! Presence reads stay synchronous and local: each node keeps, for the rooms
//! it has members in, the members the other nodes announced ([`Remote`]),
//! seeded from the presence hash when it subscribes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use tungstenite::Message;

use super::wire::{BusMessage, RecordedTemplate};
use super::{Node, Recorded, Topic};
use crate::error::{CloseCode, RoomError};
use crate::realtime::SessionId;
use crate::realtime::broker::{
    BoxFuture, Broker, Delivery, HistoryState, Joined, LocalBroker, RegisterError, Reservation,
    RoomLimits, SessionEntry, SessionLimits, TenantStats,
};
use crate::realtime::history::{HistoryPolicy, Since};
use crate::realtime::outbox::Qos;

/// A member of a room on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteMember {
    /// The member's user.
    pub user: Arc<str>,
    /// The node its session is on.
    pub node: Arc<str>,
}

/// The other nodes' members of the rooms this node has members in, by room
/// and peer number.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    rooms: DashMap<Arc<str>, HashMap<u32, RemoteMember>>,
}

impl Remote {
    pub(crate) fn joined(&self, room: &str, peer: u32, member: RemoteMember) {
        self.rooms
            .entry(Arc::from(room))
            .or_default()
            .insert(peer, member);
    }

    pub(crate) fn left(&self, room: &str, peer: u32) {
        self.rooms.remove_if_mut(room, |_, m| {
            m.remove(&peer);
            m.is_empty()
        });
    }

    /// Replaces what is known of `room` with a snapshot.
    pub(crate) fn replace(&self, room: &str, members: HashMap<u32, RemoteMember>) {
        if members.is_empty() {
            self.rooms.remove(room);
        } else {
            self.rooms.insert(Arc::from(room), members);
        }
    }

    /// Forgets `room` (no local member is left to care).
    pub(crate) fn forget(&self, room: &str) {
        self.rooms.remove(room);
    }

    fn count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |m| m.len())
    }

    fn users(&self, room: &str) -> Vec<Arc<str>> {
        self.rooms.get(room).map_or_else(Vec::new, |m| {
            m.values().map(|r| Arc::clone(&r.user)).collect()
        })
    }

    /// Removes every member on `node`; returns them as (room, peer, user).
    pub(crate) fn purge_node(&self, node: &str) -> Vec<(Arc<str>, u32, Arc<str>)> {
        let mut gone = Vec::new();
        self.rooms.retain(|room, members| {
            members.retain(|peer, m| {
                if &*m.node == node {
                    gone.push((Arc::clone(room), *peer, Arc::clone(&m.user)));
                    false
                } else {
                    true
                }
            });
            !members.is_empty()
        });
        gone
    }
}

/// What the node reaches of one tenant: its local broker and the replica.
#[derive(Debug)]
pub(crate) struct Shard {
    /// The tenant id.
    pub tenant: Arc<str>,
    /// Local sessions and rooms.
    pub local: LocalBroker,
    /// Other nodes' room members.
    pub remote: Remote,
    /// Whether the tenant announces `member_joined` / `member_left`.
    pub presence_events: AtomicBool,
    /// The tenant's room history settings (none: no history).
    pub history: parking_lot::Mutex<Option<HistoryPolicy>>,
    /// The tenant's `max_sessions_total` as last admitted against (0: none).
    pub sessions_cap: AtomicU64,
    /// Seats taken by [`Broker::prepare_join`] for joins not applied yet.
    seats: DashMap<(SessionId, Arc<str>), Seat>,
}

/// A seat taken (or refused) before a join is applied.
#[derive(Debug, Clone, Copy)]
enum Seat {
    /// Taken in Redis: the join keeps it (or gives it back).
    Taken,
    /// Refused by a cluster-wide room cap: the join fails with this.
    Refused(RoomError),
}

/// The broker of one tenant in `cluster.mode: redis`.
#[derive(Debug)]
pub struct ClusterBroker {
    shard: Arc<Shard>,
    node: Arc<Node>,
}

impl ClusterBroker {
    /// A broker for tenant `id` on `node`.
    pub fn new(id: &str, node: Arc<Node>) -> Self {
        let shard = Arc::new(Shard {
            tenant: Arc::from(id),
            local: LocalBroker::with_peer_slot(Arc::clone(&node.slot)),
            remote: Remote::default(),
            presence_events: AtomicBool::new(false),
            history: parking_lot::Mutex::new(None),
            sessions_cap: AtomicU64::new(0),
            seats: DashMap::new(),
        });
        node.attach(&shard);
        Self { shard, node }
    }

    fn local(&self) -> &LocalBroker {
        &self.shard.local
    }

    fn channel(&self, topic: Topic, name: &str) -> String {
        self.node.channel(topic, &self.shard.tenant, name)
    }

    fn bus(&self, topic: Topic, name: &str, msg: &BusMessage) {
        self.node.publish(self.channel(topic, name), msg);
    }

    /// Re-evaluates the subscription of a room that may have gained its
    /// first or lost its last local member.
    fn room_changed(&self, room: &str) {
        self.node.recheck(self.channel(Topic::Room, room));
    }

    fn user_changed(&self, user: &str) {
        self.node.recheck(self.channel(Topic::User, user));
    }

    /// Publishes a frame to the room on the other nodes.
    fn bus_room(&self, room: &str, msg: &Message, qos: Qos) {
        self.bus(
            Topic::Room,
            room,
            &BusMessage::Room {
                qos,
                frame: msg.clone(),
            },
        );
    }

    /// Records and announces a new local member of `room`.
    fn member_joined(&self, sid: SessionId, room: &str, joined: &Joined, user: &str) {
        if !joined.new {
            return;
        }
        // A seat taken before the join stays; a join that did not wait for
        // one (no room cap, or Redis away) is counted now.
        if !matches!(
            self.shard.seats.remove(&(sid, Arc::from(room))),
            Some((_, Seat::Taken))
        ) {
            self.node.record_seat(&self.shard.tenant, room, sid);
        }
        self.node
            .record_member(&self.shard.tenant, room, joined.peer, user);
        self.bus(
            Topic::Room,
            room,
            &BusMessage::Joined {
                peer: joined.peer,
                node: self.node.id.clone(),
                user: user.to_owned(),
            },
        );
        if joined.members == 1 {
            self.room_changed(room);
        }
    }

    /// Removes and announces a local member of `room` that left.
    fn member_left(&self, sid: SessionId, room: &str, peer: u32) {
        self.node
            .release_seat(&self.shard.tenant, room, &self.node.session_member(sid));
        self.node.forget_member(&self.shard.tenant, room, peer);
        self.bus(Topic::Room, room, &BusMessage::Left { peer });
        if self.local().room_size(room) == 0 {
            self.room_changed(room);
        }
    }

    /// The refusal a cluster-wide room cap gave this join, if any.
    fn seat_refused(&self, sid: SessionId, room: &str) -> Result<(), RoomError> {
        let key = (sid, Arc::from(room));
        match self
            .shard
            .seats
            .remove_if(&key, |_, s| matches!(s, Seat::Refused(_)))
        {
            Some((_, Seat::Refused(e))) => Err(e),
            _ => Ok(()),
        }
    }

    /// Gives back a seat taken for a join that did not happen.
    fn give_back_seat(&self, sid: SessionId, room: &str) {
        if let Some((_, Seat::Taken)) = self.shard.seats.remove(&(sid, Arc::from(room))) {
            self.node
                .release_seat(&self.shard.tenant, room, &self.node.session_member(sid));
        }
    }

    /// Adds the other nodes' members to a join's member count.
    fn with_remote(&self, room: &str, mut joined: Joined) -> Joined {
        joined.members += self.shard.remote.count(room);
        joined
    }
}

impl Broker for ClusterBroker {
    fn register(
        &self,
        entry: Arc<SessionEntry>,
        limits: SessionLimits,
    ) -> Result<Vec<Arc<SessionEntry>>, RegisterError> {
        let user = Arc::clone(&entry.user);
        let sid = entry.sid;
        let kicked = match self.local().register(entry, limits) {
            Ok(k) => k,
            Err(e) => {
                // Give back what `reserve` took.
                self.node.release_session(&self.shard.tenant, &user, sid);
                return Err(e);
            }
        };
        if self.local().user_sessions(&user) == 1 {
            self.user_changed(&user);
        }
        Ok(kicked)
    }

    fn reserve(&self, sid: SessionId, user: &str, limits: SessionLimits) -> Option<Reservation> {
        if !self.node.commands_up.load(Ordering::Acquire) {
            // Redis away: the caps count this node only until it is back.
            return None;
        }
        self.shard
            .sessions_cap
            .store(limits.max_sessions_total, Ordering::Release);
        let node = Arc::clone(&self.node);
        let shard = Arc::clone(&self.shard);
        let user = user.to_owned();
        Some(Box::pin(async move {
            match node.reserve(&shard.tenant, &user, sid, limits).await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(kicked)) => {
                    if !kicked.is_empty() {
                        node.kick_local(&shard, &kicked);
                        let channel = node.channel(Topic::User, &shard.tenant, &user);
                        node.publish(channel, &BusMessage::Kick { members: kicked });
                    }
                    Ok(())
                }
                Err(e) => {
                    node.metrics.error("reserve", 1);
                    tracing::debug!(node = %node.id, error = %e, "cluster admission fell back to this node's caps");
                    Ok(())
                }
            }
        }))
    }

    fn unregister(&self, sid: SessionId) -> Vec<(Arc<str>, u32)> {
        let user = self.local().session(sid).map(|s| Arc::clone(&s.user));
        let left = self.local().unregister(sid);
        if let Some(user) = user {
            self.node.release_session(&self.shard.tenant, &user, sid);
            if self.local().user_sessions(&user) == 0 {
                self.user_changed(&user);
            }
        }
        for (room, peer) in &left {
            self.member_left(sid, room, *peer);
        }
        // Seats taken for joins that never happened.
        let unused: Vec<Arc<str>> = self
            .shard
            .seats
            .iter()
            .filter(|e| e.key().0 == sid)
            .map(|e| Arc::clone(&e.key().1))
            .collect();
        for room in unused {
            self.give_back_seat(sid, &room);
        }
        left
    }

    fn session(&self, sid: SessionId) -> Option<Arc<SessionEntry>> {
        self.local().session(sid)
    }

    fn join(&self, sid: SessionId, room: &str, limits: RoomLimits) -> Result<Joined, RoomError> {
        self.seat_refused(sid, room)?;
        let joined = self
            .local()
            .join(sid, room, limits)
            .inspect_err(|_| self.give_back_seat(sid, room))?;
        if let Some(s) = self.local().session(sid) {
            self.member_joined(sid, room, &joined, &s.user);
        }
        Ok(self.with_remote(room, joined))
    }

    fn leave(&self, sid: SessionId, room: &str) -> Result<u32, RoomError> {
        let peer = self.local().leave(sid, room)?;
        self.member_left(sid, room, peer);
        Ok(peer)
    }

    fn publish(&self, room: &str, msg: &Message, qos: Qos, exclude: Option<SessionId>) -> Delivery {
        let delivery = self.local().publish(room, msg, qos, exclude);
        self.bus_room(room, msg, qos);
        delivery
    }

    fn publish_latest(
        &self,
        room: &str,
        msg: &Message,
        key: u64,
        exclude: Option<SessionId>,
    ) -> Delivery {
        let delivery = self.local().publish_latest(room, msg, key, exclude);
        self.bus(
            Topic::Room,
            room,
            &BusMessage::Latest {
                key,
                frame: msg.clone(),
            },
        );
        delivery
    }

    fn send_to_user(&self, user: &str, msg: &Message, qos: Qos) -> Delivery {
        let delivery = self.local().send_to_user(user, msg, qos);
        self.bus(
            Topic::User,
            user,
            &BusMessage::User {
                qos,
                frame: msg.clone(),
            },
        );
        delivery
    }

    fn disconnect_user(&self, user: &str, notice: Option<&Message>, code: CloseCode) -> usize {
        let closed = self.local().disconnect_user(user, notice, code);
        self.bus(
            Topic::User,
            user,
            &BusMessage::Disconnect {
                code,
                notice: notice.cloned(),
            },
        );
        closed
    }

    fn each_session(&self, f: &mut dyn FnMut(&Arc<SessionEntry>)) {
        self.local().each_session(f);
    }

    fn presence(&self, room: &str) -> Vec<String> {
        let mut users = self.local().presence(room);
        users.extend(
            self.shard
                .remote
                .users(room)
                .into_iter()
                .map(|u| u.to_string()),
        );
        users.sort_unstable();
        users.dedup();
        users
    }

    fn room_size(&self, room: &str) -> usize {
        self.local().room_size(room) + self.shard.remote.count(room)
    }

    fn stats(&self) -> TenantStats {
        self.local().stats()
    }

    fn publish_recorded(
        &self,
        room: &str,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Delivery {
        // Redis numbers the publication and publishes it; this node delivers
        // it when it comes back on the room channel, like every other node
        // (README "Cluster"). That needs both links, and the room channel
        // subscribed when the room has local members.
        let channel = self.channel(Topic::Room, room);
        let members = self.local().room_size(room);
        let shared =
            self.node.is_up() && (members == 0 || self.node.subscribed.contains_key(&channel));
        let template = shared
            .then(|| {
                RecordedTemplate::new(self.node.nonce, exclude.map_or(0, SessionId::get), encode)
            })
            .flatten();
        if let Some(template) = template {
            let queued = self.node.queue_recorded(Recorded {
                tenant: Arc::clone(&self.shard.tenant),
                room: room.to_owned(),
                channel,
                template,
                exclude,
                policy,
            });
            match queued {
                // The local members it will reach, as far as known now.
                Ok(()) => {
                    return Delivery {
                        delivered: members.saturating_sub(usize::from(exclude.is_some())),
                        ..Delivery::default()
                    };
                }
                Err(r) => {
                    self.node.metrics.error("publish", 1);
                    self.node.record_locally(&r);
                    return Delivery::default();
                }
            }
        }
        // Redis away: this node's members are served under an epoch of its
        // own; the other nodes' members get `sys.resync` once it is back.
        let (delivery, msg) = self.local().publish_diverged(room, policy, exclude, encode);
        self.bus_room(room, &msg, Qos::Reliable);
        delivery
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
        self.seat_refused(sid, room)?;
        let remote = self.shard.remote.count(room);
        let joined = self
            .local()
            .join_recovering(sid, room, limits, policy, since, &|j, h| {
                let mut j = j.clone();
                j.members += remote;
                notice(&j, h)
            })
            .inspect_err(|_| self.give_back_seat(sid, room))?;
        if let Some(s) = self.local().session(sid) {
            self.member_joined(sid, room, &joined, &s.user);
        }
        Ok(self.with_remote(room, joined))
    }

    fn prune_history(&self, policy: HistoryPolicy) {
        self.local().prune_history(policy);
    }

    fn prepare_join(&self, sid: SessionId, room: &str, limits: RoomLimits) -> Option<BoxFuture> {
        let subscribe = self.node.subscribe_now(self.channel(Topic::Room, room));
        let capped = limits.max_users_per_room > 0 || limits.max_rooms_total > 0;
        let member = self.local().session(sid).is_some_and(|s| s.in_room(room));
        if !capped || member || !self.node.commands_up.load(Ordering::Acquire) {
            // Nothing to count against (the seat is recorded at the join),
            // or Redis away: this node's caps only.
            return subscribe;
        }
        let node = Arc::clone(&self.node);
        let shard = Arc::clone(&self.shard);
        let room: Arc<str> = Arc::from(room);
        Some(Box::pin(async move {
            if let Some(subscribed) = subscribe {
                subscribed.await;
            }
            match node.take_seat(&shard.tenant, &room, sid, limits).await {
                Ok(Ok(())) => {
                    shard.seats.insert((sid, room), Seat::Taken);
                }
                Ok(Err(e)) => {
                    shard.seats.insert((sid, room), Seat::Refused(e));
                }
                Err(e) => {
                    node.metrics.error("seat", 1);
                    tracing::debug!(node = %node.id, error = %e, "cluster room caps fell back to this node's");
                }
            }
        }))
    }

    fn cancel_join(&self, sid: SessionId, room: &str) {
        self.give_back_seat(sid, room);
    }

    fn presence_events(&self, on: bool) {
        self.shard.presence_events.store(on, Ordering::Release);
    }

    fn history_policy(&self, policy: Option<HistoryPolicy>) {
        *self.shard.history.lock() = policy;
    }
}
