//! [`ClusterBroker`]: a tenant's [`LocalBroker`] plus the bus, so the session
//! layer does not change in cluster mode.
//!
//! Every operation first runs on the local broker, exactly as in `local` mode
//! (local members get a publication at once, whatever Redis is doing); what
//! must reach other nodes is then queued for the bus. Membership changes ask
//! the node to re-evaluate the room or user channel, which it subscribes to
//! while there are local recipients.

use std::cell::RefCell;
use std::sync::Arc;

use tungstenite::Message;

use super::wire::BusMessage;
use super::{Node, Topic};
use crate::error::{CloseCode, RoomError};
use crate::realtime::SessionId;
use crate::realtime::broker::{
    Broker, Delivery, HistoryState, Joined, LocalBroker, RegisterError, RoomLimits, SessionEntry,
    SessionLimits, TenantStats,
};
use crate::realtime::history::{HistoryPolicy, Since};
use crate::realtime::outbox::Qos;

/// The broker of one tenant in `cluster.mode: redis`.
#[derive(Debug)]
pub struct ClusterBroker {
    tenant: Arc<str>,
    local: Arc<LocalBroker>,
    node: Arc<Node>,
}

impl ClusterBroker {
    /// A broker for tenant `id` on `node`.
    pub fn new(id: &str, node: Arc<Node>) -> Self {
        let local = Arc::new(LocalBroker::new());
        node.attach(id, &local);
        Self {
            tenant: Arc::from(id),
            local,
            node,
        }
    }

    fn channel(&self, topic: Topic, name: &str) -> String {
        self.node.channel(topic, &self.tenant, name)
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
}

impl Broker for ClusterBroker {
    fn register(
        &self,
        entry: Arc<SessionEntry>,
        limits: SessionLimits,
    ) -> Result<Vec<Arc<SessionEntry>>, RegisterError> {
        let user = Arc::clone(&entry.user);
        let kicked = self.local.register(entry, limits)?;
        if kicked.is_empty() && self.local.user_sessions(&user) == 1 {
            self.user_changed(&user);
        }
        Ok(kicked)
    }

    fn unregister(&self, sid: SessionId) -> Vec<(Arc<str>, u32)> {
        let user = self.local.session(sid).map(|s| Arc::clone(&s.user));
        let left = self.local.unregister(sid);
        if let Some(user) = user
            && self.local.user_sessions(&user) == 0
        {
            self.user_changed(&user);
        }
        for (room, _) in &left {
            if self.local.room_size(room) == 0 {
                self.room_changed(room);
            }
        }
        left
    }

    fn session(&self, sid: SessionId) -> Option<Arc<SessionEntry>> {
        self.local.session(sid)
    }

    fn join(&self, sid: SessionId, room: &str, limits: RoomLimits) -> Result<Joined, RoomError> {
        let joined = self.local.join(sid, room, limits)?;
        if joined.new && joined.members == 1 {
            self.room_changed(room);
        }
        Ok(joined)
    }

    fn leave(&self, sid: SessionId, room: &str) -> Result<u32, RoomError> {
        let peer = self.local.leave(sid, room)?;
        if self.local.room_size(room) == 0 {
            self.room_changed(room);
        }
        Ok(peer)
    }

    fn publish(&self, room: &str, msg: &Message, qos: Qos, exclude: Option<SessionId>) -> Delivery {
        let delivery = self.local.publish(room, msg, qos, exclude);
        self.bus_room(room, msg, qos);
        delivery
    }

    fn send_to_user(&self, user: &str, msg: &Message, qos: Qos) -> Delivery {
        let delivery = self.local.send_to_user(user, msg, qos);
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
        let closed = self.local.disconnect_user(user, notice, code);
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

    fn close_all(&self, code: CloseCode, reason: &'static str) -> usize {
        self.local.close_all(code, reason)
    }

    fn presence(&self, room: &str) -> Vec<String> {
        self.local.presence(room)
    }

    fn room_size(&self, room: &str) -> usize {
        self.local.room_size(room)
    }

    fn stats(&self) -> TenantStats {
        self.local.stats()
    }

    fn publish_recorded(
        &self,
        room: &str,
        policy: HistoryPolicy,
        exclude: Option<SessionId>,
        encode: &dyn Fn(u64, &str) -> Message,
    ) -> Delivery {
        // The frame the local history recorded is the one other nodes get.
        let sent = RefCell::new(None);
        let delivery = self
            .local
            .publish_recorded(room, policy, exclude, &|offset, epoch| {
                let msg = encode(offset, epoch);
                *sent.borrow_mut() = Some(msg.clone());
                msg
            });
        if let Some(msg) = sent.into_inner() {
            self.bus_room(room, &msg, Qos::Reliable);
        }
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
        let joined = self
            .local
            .join_recovering(sid, room, limits, policy, since, notice)?;
        if joined.new && joined.members == 1 {
            self.room_changed(room);
        }
        Ok(joined)
    }

    fn prune_history(&self, policy: HistoryPolicy) {
        self.local.prune_history(policy);
    }
}
