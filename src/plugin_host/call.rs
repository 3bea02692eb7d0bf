//! The rules of a plugin call that differ between entry points.
//!
//! [`PluginCall`] and [`Entry`] (the entry points of the WIT: `on-message`
//! and the lifecycle hooks `on-disconnect`, `on-join`, `on-leave`) are the
//! service seam's types (`crate::services`); this module owns their host-side
//! rules: the ordering key ([`Shard`]) and [`EntryKind`], the payload-free tag
//! that carries back-off, absent exports and the realtime imports allowed.
//!
//! Adding an entry point means: the WIT export, a variant here (the compiler
//! then points at every rule to decide), and its arm in `Instance::call`.

use crate::error::PluginError;
use crate::realtime::SessionId;
use crate::services::{Effect, Entry, PluginCall};

impl Entry {
    /// The payload-free tag of the entry point, which carries its rules.
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::Message { .. } => EntryKind::Message,
            Self::Disconnect => EntryKind::Disconnect,
            Self::Join { .. } => EntryKind::Join,
            Self::Leave { .. } => EntryKind::Leave,
        }
    }

    /// The room the call is about, if any. It orders the call: calls of one
    /// room run in order with that room's messages (see [`PluginCall::shard`]).
    pub fn room(&self) -> Option<&str> {
        match self {
            Self::Message { room, .. } => room.as_deref(),
            Self::Disconnect => None,
            Self::Join { room } | Self::Leave { room } => Some(room),
        }
    }
}

impl PluginCall {
    /// What keeps calls in order: the room, else the session.
    pub fn shard(&self) -> Shard<'_> {
        match self.entry.room() {
            Some(room) => Shard::Room(room),
            None => Shard::Session(self.session.sid),
        }
    }
}

/// The ordering key of a call: calls with the same key run one at a time, in
/// the order they arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shard<'a> {
    /// A room's messages and hooks.
    Room(&'a str),
    /// A session's calls that name no room.
    Session(SessionId),
}

/// Which entry point a call runs, without its arguments. It outlives the
/// arguments (they are handed to the guest), so the rules that the host
/// imports check during the call live here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// `on-message`.
    Message,
    /// `on-disconnect`.
    Disconnect,
    /// `on-join`.
    Join,
    /// `on-leave`.
    Leave,
}

/// A realtime import that queues an effect, as far as where it may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealtimeImport {
    /// `reply`: writes to the calling session.
    Reply,
    /// `publish`: needs no live calling session.
    Publish,
    /// `send-to-user`: needs no live calling session.
    SendToUser,
    /// `join`: changes the calling session's rooms.
    Join,
    /// `leave`: changes the calling session's rooms.
    Leave,
}

impl EntryKind {
    /// The WIT name of the export, for logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Message => "on-message",
            Self::Disconnect => "on-disconnect",
            Self::Join => "on-join",
            Self::Leave => "on-leave",
        }
    }

    /// Whether the call runs while the whole plugin backs off (its version
    /// failed to instantiate, or faulted for several users). Room hooks do:
    /// every Rust plugin exports them (as no-ops by default), and a plugin
    /// whose `on-message` crash-loops must not lock the tenant's joins; a
    /// hook that fails by itself still refuses its join.
    pub fn runs_while_backing_off(self) -> bool {
        match self {
            Self::Message | Self::Disconnect => false,
            Self::Join | Self::Leave => true,
        }
    }

    /// Whether the call runs while its session alone is refused by the plugin
    /// after repeated faults. A message and a join hook do not: the session
    /// is refused by that plugin (a join it gates fails with
    /// `SERVICE_UNAVAILABLE`), so it cannot keep faulting through a hook. The
    /// plugin still hears a leave or the close, once each, so the state it
    /// keeps about the session stays right.
    pub fn runs_while_session_backs_off(self) -> bool {
        match self {
            Self::Message | Self::Join => false,
            Self::Leave | Self::Disconnect => true,
        }
    }

    /// What a call answers when `plugin` is not loaded or its serving version
    /// does not export the entry point: a message needs its plugin
    /// (`Missing`, `SERVICE_UNAVAILABLE` to the client); an optional hook that
    /// is not there has nothing to do.
    ///
    /// # Errors
    /// `Missing` for a message.
    pub fn absent(self, plugin: &str) -> Result<Vec<Effect>, PluginError> {
        match self {
            Self::Message => Err(PluginError::Missing(plugin.to_owned())),
            Self::Disconnect | Self::Join | Self::Leave => Ok(Vec::new()),
        }
    }

    /// Whether the entry point counts in `wsprism_plugin_calls_total`,
    /// `_errors_total`, `_call_duration_seconds` and the server API's per-plugin
    /// `calls` / `errors`: client messages only. A hook is part of the join,
    /// leave or close that triggered it, and its failures are logged there.
    pub fn metered(self) -> bool {
        match self {
            Self::Message => true,
            Self::Disconnect | Self::Join | Self::Leave => false,
        }
    }

    /// Whether the entry point may use `import`.
    ///
    /// # Errors
    /// Why not, as the `not-allowed` text the guest gets: the session is gone
    /// in `on-disconnect` (only `publish` and `send-to-user` work), and a room
    /// hook must not start another join or leave.
    pub fn allows(self, import: RealtimeImport) -> Result<(), &'static str> {
        use RealtimeImport as I;
        match (self, import) {
            (Self::Message, _)
            | (Self::Disconnect, I::Publish | I::SendToUser)
            | (Self::Join | Self::Leave, I::Reply | I::Publish | I::SendToUser) => Ok(()),
            (Self::Disconnect, I::Reply | I::Join | I::Leave) => {
                Err("the session has closed: in on-disconnect only publish and send-to-user work")
            }
            (Self::Join | Self::Leave, I::Join | I::Leave) => {
                Err("join and leave are not available in on-join and on-leave")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [EntryKind; 4] = [
        EntryKind::Message,
        EntryKind::Disconnect,
        EntryKind::Join,
        EntryKind::Leave,
    ];

    #[test]
    fn only_a_message_needs_its_plugin() {
        for kind in KINDS {
            let r = kind.absent("p");
            match kind {
                EntryKind::Message => {
                    assert!(matches!(r, Err(PluginError::Missing(p)) if p == "p"));
                }
                _ => assert!(r.is_ok_and(|e| e.is_empty()), "{kind:?}"),
            }
        }
    }

    #[test]
    fn imports_allowed_per_entry_point() {
        use RealtimeImport as I;
        let all = [I::Reply, I::Publish, I::SendToUser, I::Join, I::Leave];
        let allowed = |kind: EntryKind| -> Vec<I> {
            all.into_iter()
                .filter(|i| kind.allows(*i).is_ok())
                .collect()
        };
        assert_eq!(allowed(EntryKind::Message), all);
        assert_eq!(allowed(EntryKind::Disconnect), [I::Publish, I::SendToUser]);
        for hook in [EntryKind::Join, EntryKind::Leave] {
            assert_eq!(allowed(hook), [I::Reply, I::Publish, I::SendToUser]);
        }
    }

    #[test]
    fn which_entry_points_run_while_backing_off_and_are_metered() {
        for kind in KINDS {
            let hook = matches!(kind, EntryKind::Join | EntryKind::Leave);
            assert_eq!(kind.runs_while_backing_off(), hook, "{kind:?}");
            assert_eq!(
                kind.runs_while_session_backs_off(),
                matches!(kind, EntryKind::Leave | EntryKind::Disconnect),
                "{kind:?}"
            );
            assert_eq!(kind.metered(), kind == EntryKind::Message, "{kind:?}");
        }
    }
}
