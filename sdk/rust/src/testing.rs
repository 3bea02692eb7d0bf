//! The native test host: run plugin code under `cargo test` without a gateway.
//!
//! Owns: an in-memory stand-in for everything a component imports, used when
//! the crate is built for anything but `wasm32` (the real imports cannot run
//! there). Input: a [`TestHost`] call of one entry point of a [`Plugin`]
//! (`on_message`, `on_join`, `on_leave`, `on_disconnect`, `init`); output: an
//! [`Outcome`] with the plugin's answer and the effects it queued, while kv
//! state and logs stay in the host for the next call. It follows the gateway's
//! rules where a plugin can observe them:
//!
//! - kv: keys up to 256 bytes and values up to 64 KiB (`TooLarge` beyond),
//!   TTLs on a clock you move with [`TestHost::advance`], `incr` of an absent
//!   key starts at 0, keeps the TTL and refuses a non-integer
//!   (`InvalidArgument`), `delete` says whether the key was live;
//! - realtime: `data` must be JSON (`InvalidJson`, and the call fails as it
//!   would in the gateway), room names are checked, each entry point allows
//!   the imports the gateway allows (`reply`, `join`, `leave` answer
//!   `NotAllowed` in `on_disconnect`, ...), the frame size cap is the default
//!   `max_frame_bytes`; `join` / `leave` effects change the fake session's
//!   rooms once the call succeeds, as the gateway applies them;
//! - backend: answered by the handler given to [`TestHost::on_backend`]
//!   (`UnknownUpstream` without one); log lines are kept in order.
//!
//! Must not: be compiled into a component (it is `cfg(not(target_arch =
//! "wasm32"))`). Each test thread has its own current call, so tests run in
//! parallel as usual.
//!
//! ```ignore
//! use wsprism_plugin::testing::{Effect, TestHost, message};
//!
//! #[test]
//! fn echoes() {
//!     let mut host = TestHost::new().user("alice");
//!     let out = host.on_message::<Echo>(message("hi", r#"{"n":1}"#));
//!     assert!(out.is_ok());
//!     assert_eq!(out.replies(), [("hi", r#"{"n":1}"#)]);
//! }
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::bindings::wsprism::plugin::backend::{Request, Response};
use crate::{HostError, Level, Message, Plugin, Qos, Refusal};

/// Longest kv key (as in the gateway).
pub const MAX_KEY_BYTES: usize = 256;
/// Longest kv value (as in the gateway).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The gateway's default `limits.max_frame_bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;
/// Envelope bytes the gateway counts around every payload
/// (`{"v":1,"svc":..,"type":..,"data":..}` and its quoting).
const ENVELOPE_OVERHEAD_BYTES: usize = 64;
/// Longest room name a client may send.
const MAX_NAME_BYTES: usize = 128;
/// Imports one call may make.
pub const MAX_HOST_CALLS_PER_CALL: u32 = 1_000;
/// `data` bytes one call may queue.
pub const MAX_PUBLISHED_BYTES_PER_CALL: usize = 1024 * 1024;

/// The session of a call, as the plugin sees it (the native stand-in for the
/// WIT `session` resource). Build it through [`TestHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    tenant: String,
    user: String,
    sid: u64,
    rooms: Vec<String>,
}

impl Session {
    /// Tenant id.
    pub fn tenant(&self) -> String {
        host::charge_session();
        self.tenant.clone()
    }

    /// Authenticated user id.
    pub fn user(&self) -> String {
        host::charge_session();
        self.user.clone()
    }

    /// Session id.
    pub fn sid(&self) -> u64 {
        host::charge_session();
        self.sid
    }

    /// Rooms joined, in join order (empty in `on_disconnect`).
    pub fn rooms(&self) -> Vec<String> {
        host::charge_session();
        self.rooms.clone()
    }
}

/// An effect the plugin queued, in call order. `data` is the JSON text the
/// plugin passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `realtime::reply`.
    Reply {
        /// `type`.
        ty: String,
        /// `data`.
        data: String,
    },
    /// `realtime::publish`.
    Publish {
        /// Target room.
        room: String,
        /// `type`.
        ty: String,
        /// `data`.
        data: String,
        /// Delivery class.
        qos: Qos,
        /// Conflation key (`realtime::publish_latest`; lossy).
        key: Option<String>,
        /// The sender is left out.
        exclude_sender: bool,
    },
    /// `realtime::send_to_user`.
    SendToUser {
        /// Target user.
        user: String,
        /// `type`.
        ty: String,
        /// `data`.
        data: String,
    },
    /// `realtime::join`.
    Join {
        /// Room.
        room: String,
    },
    /// `realtime::leave`.
    Leave {
        /// Room.
        room: String,
    },
}

/// One `log::*` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: Level,
    /// Text (cut to 1 KiB, as the gateway does).
    pub message: String,
}

/// What one call did (`E`: how the entry point says no; a `String` for
/// `init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<E = Refusal> {
    /// The entry point's own answer.
    pub result: Result<(), E>,
    /// Everything the plugin queued, in call order. The gateway applies them
    /// only when [`Outcome::is_ok`]; otherwise it discards them.
    pub effects: Vec<Effect>,
    /// The first host rule the call broke (invalid JSON, a payload over the
    /// frame cap, a per-call budget): the gateway fails such a call even when
    /// the plugin answers `Ok`.
    pub violation: Option<HostError>,
}

impl<E> Outcome<E> {
    /// Whether the gateway would apply the effects: the plugin answered `Ok`
    /// and broke no host rule.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok() && self.violation.is_none()
    }

    /// The refusal, if the plugin answered `Err`.
    pub fn refusal(&self) -> Option<&E> {
        self.result.as_ref().err()
    }

    /// `(type, data)` of every reply, in order.
    pub fn replies(&self) -> Vec<(&str, &str)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Reply { ty, data } => Some((ty.as_str(), data.as_str())),
                _ => None,
            })
            .collect()
    }

    /// `(room, type, data)` of every publication, in order.
    pub fn publishes(&self) -> Vec<(&str, &str, &str)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { room, ty, data, .. } => {
                    Some((room.as_str(), ty.as_str(), data.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    /// `(user, type, data)` of every `send_to_user`, in order.
    pub fn sends(&self) -> Vec<(&str, &str, &str)> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::SendToUser { user, ty, data } => {
                    Some((user.as_str(), ty.as_str(), data.as_str()))
                }
                _ => None,
            })
            .collect()
    }
}

/// A message as a client would send it on `svc` `"test"`, with no room.
pub fn message(ty: &str, data: &str) -> Message {
    Message {
        svc: "test".to_owned(),
        type_: ty.to_owned(),
        room: None,
        seq: None,
        data: data.to_owned(),
    }
}

/// [`message`] naming `room`.
pub fn room_message(ty: &str, room: &str, data: &str) -> Message {
    Message {
        room: Some(room.to_owned()),
        ..message(ty, data)
    }
}

/// Answers the plugin's backend calls.
type BackendHandler = Box<dyn FnMut(&Request) -> Result<Response, HostError>>;

/// Which entry point runs: decides the realtime imports allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Init,
    Message,
    Disconnect,
    Join,
    Leave,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Import {
    Reply,
    Publish,
    SendToUser,
    Join,
    Leave,
}

impl Entry {
    /// The gateway's rule (`EntryKind::allows` in the host).
    fn allows(self, import: Import) -> Result<(), HostError> {
        use Import as I;
        match (self, import) {
            (Self::Message, _)
            | (Self::Disconnect, I::Publish | I::SendToUser)
            | (Self::Join | Self::Leave, I::Reply | I::Publish | I::SendToUser) => Ok(()),
            (Self::Disconnect, _) => Err(HostError::NotAllowed(
                "the session has closed: in on-disconnect only publish and send-to-user work"
                    .to_owned(),
            )),
            (Self::Join | Self::Leave, _) => Err(HostError::NotAllowed(
                "join and leave are not available in on-join and on-leave".to_owned(),
            )),
            (Self::Init, _) => Err(HostError::NotAllowed(
                "realtime effects are not available in init".to_owned(),
            )),
        }
    }
}

#[derive(Debug, Clone)]
struct KvEntry {
    value: String,
    /// Expiry on the host's clock.
    expires: Option<Duration>,
}

/// State that outlives calls (kv, presence, logs) plus the running call's.
struct State {
    session: Session,
    /// Other users present in rooms, for `members`.
    members: BTreeMap<String, BTreeSet<String>>,
    kv: BTreeMap<String, KvEntry>,
    /// The kv clock.
    now: Duration,
    logs: Vec<LogLine>,
    backend: Option<BackendHandler>,
    max_frame_bytes: usize,
    svc: String,
    // The call in progress.
    entry: Entry,
    effects: Vec<Effect>,
    violation: Option<HostError>,
    host_calls: u32,
    published: usize,
}

impl State {
    fn charge(&mut self) {
        self.host_calls += 1;
        if self.host_calls > MAX_HOST_CALLS_PER_CALL {
            self.violate(HostError::InvalidArgument(format!(
                "host call budget exceeded ({MAX_HOST_CALLS_PER_CALL} calls)"
            )));
        }
    }

    fn violate(&mut self, e: HostError) {
        if self.violation.is_none() {
            self.violation = Some(e);
        }
    }

    fn live(&mut self, key: &str) -> Option<&mut KvEntry> {
        let now = self.now;
        if self
            .kv
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
        {
            self.kv.remove(key);
        }
        self.kv.get_mut(key)
    }

    /// Checks one outgoing payload as the gateway does.
    fn payload(
        &mut self,
        import: Import,
        ty: &str,
        target: &str,
        data: &str,
    ) -> Result<(), HostError> {
        self.entry.allows(import)?;
        self.published += data.len();
        if self.published > MAX_PUBLISHED_BYTES_PER_CALL {
            let e = HostError::TooLarge;
            self.violate(e.clone());
            return Err(e);
        }
        let frame = ENVELOPE_OVERHEAD_BYTES + self.svc.len() + ty.len() + target.len() + data.len();
        if frame > self.max_frame_bytes {
            self.violate(HostError::TooLarge);
            return Err(HostError::TooLarge);
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(data).is_err() {
            self.violate(HostError::InvalidJson);
            return Err(HostError::InvalidJson);
        }
        Ok(())
    }
}

fn check_room(room: &str) -> Result<(), HostError> {
    let why = if room.is_empty() {
        "empty name"
    } else if room.len() > MAX_NAME_BYTES {
        "name too long"
    } else if room.chars().any(char::is_control) {
        "control character in name"
    } else {
        return Ok(());
    };
    Err(HostError::InvalidArgument(format!("room: {why}")))
}

thread_local! {
    /// The state of the [`TestHost`] whose call runs on this thread.
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// An in-memory gateway for one plugin and one session. Calls run on the
/// calling thread; kv, presence and logs persist across calls.
pub struct TestHost {
    /// `None` only while a call runs (the state is then in [`CURRENT`]).
    state: Option<State>,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("session", &self.state().session)
            .finish_non_exhaustive()
    }
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    /// Tenant `test`, user `user`, session id 1, no rooms, empty kv, routed
    /// as `svc` `test`.
    pub fn new() -> Self {
        Self {
            state: Some(State {
                session: Session {
                    tenant: "test".to_owned(),
                    user: "user".to_owned(),
                    sid: 1,
                    rooms: Vec::new(),
                },
                members: BTreeMap::new(),
                kv: BTreeMap::new(),
                now: Duration::ZERO,
                logs: Vec::new(),
                backend: None,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                svc: "test".to_owned(),
                entry: Entry::Message,
                effects: Vec::new(),
                violation: None,
                host_calls: 0,
                published: 0,
            }),
        }
    }

    fn state(&self) -> &State {
        // Only `run` takes the state out, and it always puts it back.
        self.state
            .as_ref()
            .expect("TestHost state is present between calls")
    }

    fn state_mut(&mut self) -> &mut State {
        self.state
            .as_mut()
            .expect("TestHost state is present between calls")
    }

    /// The session's user.
    pub fn user(mut self, user: &str) -> Self {
        self.state_mut().session.user = user.to_owned();
        self
    }

    /// The session's tenant.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.state_mut().session.tenant = tenant.to_owned();
        self
    }

    /// The session id.
    pub fn sid(mut self, sid: u64) -> Self {
        self.state_mut().session.sid = sid;
        self
    }

    /// The session has joined `room` (appended: the last is active).
    pub fn in_room(mut self, room: &str) -> Self {
        self.state_mut().session.rooms.push(room.to_owned());
        self
    }

    /// The routed `svc` (counts in the frame size, as in the gateway).
    pub fn svc(mut self, svc: &str) -> Self {
        self.state_mut().svc = svc.to_owned();
        self
    }

    /// The tenant's `limits.max_frame_bytes`.
    pub fn max_frame_bytes(mut self, max: usize) -> Self {
        self.state_mut().max_frame_bytes = max;
        self
    }

    /// Another user present in `room` (for `realtime::members`).
    pub fn member(mut self, room: &str, user: &str) -> Self {
        self.state_mut()
            .members
            .entry(room.to_owned())
            .or_default()
            .insert(user.to_owned());
        self
    }

    /// Answers the plugin's `backend::call`s.
    pub fn on_backend(
        mut self,
        handler: impl FnMut(&Request) -> Result<Response, HostError> + 'static,
    ) -> Self {
        self.state_mut().backend = Some(Box::new(handler));
        self
    }

    /// The session as the next call sees it.
    pub fn session(&self) -> &Session {
        &self.state().session
    }

    /// Sets a kv key (no TTL) before a call.
    pub fn kv_set(&mut self, key: &str, value: &str) {
        self.state_mut().kv.insert(
            key.to_owned(),
            KvEntry {
                value: value.to_owned(),
                expires: None,
            },
        );
    }

    /// The live value of a kv key.
    pub fn kv_get(&mut self, key: &str) -> Option<String> {
        self.state_mut().live(key).map(|e| e.value.clone())
    }

    /// Every live kv entry, sorted by key.
    pub fn kv(&mut self) -> BTreeMap<String, String> {
        let state = self.state_mut();
        let now = state.now;
        state.kv.retain(|_, e| e.expires.is_none_or(|t| t > now));
        state
            .kv
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    /// Moves the kv clock forward (TTLs expire).
    pub fn advance(&mut self, by: Duration) {
        self.state_mut().now += by;
    }

    /// Every log line so far, in order.
    pub fn logs(&self) -> &[LogLine] {
        &self.state().logs
    }

    /// Runs `on_message` for the session.
    pub fn on_message<P: Plugin>(&mut self, msg: Message) -> Outcome {
        self.run(Entry::Message, |s| P::on_message(s, msg))
    }

    /// Runs `init` with `{"tenant":..,"plugin":"test"}`.
    pub fn init<P: Plugin>(&mut self) -> Outcome<String> {
        let config = format!(
            r#"{{"tenant":{},"plugin":"test"}}"#,
            serde_json::Value::from(self.state().session.tenant.clone())
        );
        let mut failed = None;
        let out = self.run(Entry::Init, |_| {
            failed = P::init(config).err();
            Ok(())
        });
        Outcome {
            result: failed.map_or(Ok(()), Err),
            effects: out.effects,
            violation: out.violation,
        }
    }

    /// Runs `on_join` as the gateway's `room` service does before a join; on
    /// success the session is in `room`.
    pub fn on_join<P: Plugin>(&mut self, room: &str) -> Outcome {
        let out = self.run(Entry::Join, |s| P::on_join(s, room.to_owned()));
        if out.is_ok() {
            let rooms = &mut self.state_mut().session.rooms;
            rooms.retain(|r| r != room);
            rooms.push(room.to_owned());
        }
        out
    }

    /// Leaves `room`, then runs `on_leave` (the session no longer lists it).
    pub fn on_leave<P: Plugin>(&mut self, room: &str) -> Outcome {
        self.state_mut().session.rooms.retain(|r| r != room);
        self.run(Entry::Leave, |s| {
            P::on_leave(s, room.to_owned());
            Ok(())
        })
    }

    /// Closes the session and runs `on_disconnect` (no rooms left). Later
    /// calls see the session with no rooms.
    pub fn on_disconnect<P: Plugin>(&mut self) -> Outcome {
        self.state_mut().session.rooms.clear();
        self.run(Entry::Disconnect, |s| {
            P::on_disconnect(s);
            Ok(())
        })
    }

    /// Runs one call with this host's state current on this thread.
    fn run(&mut self, entry: Entry, call: impl FnOnce(&Session) -> Result<(), Refusal>) -> Outcome {
        /// Puts the state back into the host even if the plugin panics.
        struct Restore<'a>(&'a mut Option<State>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.0 = CURRENT.with(|c| c.borrow_mut().take());
            }
        }

        let mut state = self.state.take().expect("TestHost calls do not nest");
        state.entry = entry;
        state.effects.clear();
        state.violation = None;
        state.host_calls = 0;
        state.published = 0;
        let session = state.session.clone();
        CURRENT.with(|c| {
            let mut current = c.borrow_mut();
            assert!(
                current.is_none(),
                "another TestHost call is running on this thread"
            );
            *current = Some(state);
        });
        let result = {
            let _restore = Restore(&mut self.state);
            call(&session)
        };
        let state = self.state_mut();
        let effects = std::mem::take(&mut state.effects);
        let violation = state.violation.take();
        let outcome = Outcome {
            result,
            effects,
            violation,
        };
        if outcome.is_ok() {
            for e in &outcome.effects {
                let rooms = &mut state.session.rooms;
                match e {
                    Effect::Join { room } => {
                        rooms.retain(|r| r != room);
                        rooms.push(room.clone());
                    }
                    Effect::Leave { room } => rooms.retain(|r| r != room),
                    _ => {}
                }
            }
        }
        outcome
    }
}

/// The host functions the SDK calls natively, with the WIT imports'
/// signatures.
pub(crate) mod host {
    use super::{CURRENT, State};

    /// Runs `f` on the current call's state.
    ///
    /// # Panics
    /// Outside a [`super::TestHost`] call: natively, plugin code only runs
    /// inside one.
    fn with<T>(f: impl FnOnce(&mut State) -> T) -> T {
        CURRENT.with(|c| {
            let mut current = c.borrow_mut();
            let state = current.as_mut().expect(
                "wsprism_plugin host function called outside a TestHost call: \
                 natively, run plugin code through wsprism_plugin::testing::TestHost",
            );
            state.charge();
            f(state)
        })
    }

    /// A `session` accessor is a host call too.
    pub(crate) fn charge_session() {
        with(|_| ());
    }

    pub(crate) mod realtime {
        use super::super::{Effect, Import, check_room};
        use super::with;
        use crate::{HostError, Qos};

        pub(crate) fn reply(ty: &str, data: &str) -> Result<(), HostError> {
            with(|s| {
                s.payload(Import::Reply, ty, "", data)?;
                s.effects.push(Effect::Reply {
                    ty: ty.to_owned(),
                    data: data.to_owned(),
                });
                Ok(())
            })
        }

        pub(crate) fn publish(
            room: &str,
            ty: &str,
            data: &str,
            qos: Qos,
            exclude_sender: bool,
        ) -> Result<(), HostError> {
            with(|s| {
                check_room(room)?;
                s.payload(Import::Publish, ty, room, data)?;
                s.effects.push(Effect::Publish {
                    room: room.to_owned(),
                    ty: ty.to_owned(),
                    data: data.to_owned(),
                    qos,
                    key: None,
                    exclude_sender,
                });
                Ok(())
            })
        }

        pub(crate) fn publish_latest(
            room: &str,
            key: &str,
            ty: &str,
            data: &str,
            exclude_sender: bool,
        ) -> Result<(), HostError> {
            with(|s| {
                check_room(room)?;
                if key.is_empty() || key.len() > 256 {
                    return Err(HostError::InvalidArgument(
                        "key must be 1 to 256 bytes".into(),
                    ));
                }
                s.payload(Import::Publish, ty, room, data)?;
                s.effects.push(Effect::Publish {
                    room: room.to_owned(),
                    ty: ty.to_owned(),
                    data: data.to_owned(),
                    qos: Qos::Lossy,
                    key: Some(key.to_owned()),
                    exclude_sender,
                });
                Ok(())
            })
        }

        pub(crate) fn send_to_user(user: &str, ty: &str, data: &str) -> Result<(), HostError> {
            with(|s| {
                if user.is_empty() {
                    return Err(HostError::InvalidArgument("user must not be empty".into()));
                }
                s.payload(Import::SendToUser, ty, "", data)?;
                s.effects.push(Effect::SendToUser {
                    user: user.to_owned(),
                    ty: ty.to_owned(),
                    data: data.to_owned(),
                });
                Ok(())
            })
        }

        pub(crate) fn join(room: &str) -> Result<(), HostError> {
            with(|s| {
                s.entry.allows(Import::Join)?;
                check_room(room)?;
                s.effects.push(Effect::Join {
                    room: room.to_owned(),
                });
                Ok(())
            })
        }

        pub(crate) fn leave(room: &str) -> Result<(), HostError> {
            with(|s| {
                s.entry.allows(Import::Leave)?;
                check_room(room)?;
                s.effects.push(Effect::Leave {
                    room: room.to_owned(),
                });
                Ok(())
            })
        }

        pub(crate) fn members(room: &str) -> Result<Vec<String>, HostError> {
            with(|s| {
                if s.entry == super::super::Entry::Init {
                    return Err(HostError::NotAllowed(
                        "members is not available in init".into(),
                    ));
                }
                check_room(room)?;
                let mut users = s.members.get(room).cloned().unwrap_or_default();
                if s.session.rooms.iter().any(|r| r == room) {
                    users.insert(s.session.user.clone());
                }
                Ok(users.into_iter().collect())
            })
        }
    }

    pub(crate) mod kv {
        use std::time::Duration;

        use super::super::{KvEntry, MAX_KEY_BYTES, MAX_VALUE_BYTES};
        use super::with;
        use crate::HostError;

        fn check_key(key: &str) -> Result<(), HostError> {
            if key.len() > MAX_KEY_BYTES {
                return Err(HostError::TooLarge);
            }
            Ok(())
        }

        fn not_an_integer() -> HostError {
            HostError::InvalidArgument("value is not an integer or the result overflows".to_owned())
        }

        pub(crate) fn get(key: &str) -> Result<Option<String>, HostError> {
            with(|s| {
                check_key(key)?;
                Ok(s.live(key).map(|e| e.value.clone()))
            })
        }

        pub(crate) fn set(key: &str, value: &str, ttl_ms: Option<u64>) -> Result<(), HostError> {
            with(|s| {
                check_key(key)?;
                if value.len() > MAX_VALUE_BYTES {
                    return Err(HostError::TooLarge);
                }
                let expires = ttl_ms.map(|ms| s.now + Duration::from_millis(ms));
                s.kv.insert(
                    key.to_owned(),
                    KvEntry {
                        value: value.to_owned(),
                        expires,
                    },
                );
                Ok(())
            })
        }

        pub(crate) fn delete(key: &str) -> Result<bool, HostError> {
            with(|s| {
                check_key(key)?;
                let existed = s.live(key).is_some();
                s.kv.remove(key);
                Ok(existed)
            })
        }

        pub(crate) fn incr(key: &str, delta: i64) -> Result<i64, HostError> {
            with(|s| {
                check_key(key)?;
                let (current, expires) = match s.live(key) {
                    Some(e) => (
                        e.value
                            .trim()
                            .parse::<i64>()
                            .map_err(|_| not_an_integer())?,
                        e.expires,
                    ),
                    None => (0, None),
                };
                let next = current.checked_add(delta).ok_or_else(not_an_integer)?;
                s.kv.insert(
                    key.to_owned(),
                    KvEntry {
                        value: next.to_string(),
                        expires,
                    },
                );
                Ok(next)
            })
        }
    }

    pub(crate) mod backend {
        use super::super::{Request, Response};
        use super::with;
        use crate::HostError;

        pub(crate) fn call(req: &Request) -> Result<Response, HostError> {
            with(|s| match s.backend.as_mut() {
                Some(handler) => handler(req),
                None => Err(HostError::UnknownUpstream(req.upstream.clone())),
            })
        }
    }

    pub(crate) mod log {
        use super::super::LogLine;
        use super::with;
        use crate::Level;

        /// Longest line kept, as in the gateway.
        const MAX_LOG_LINE_BYTES: usize = 1024;

        pub(crate) fn log(level: Level, message: &str) {
            let mut cut = message.len().min(MAX_LOG_LINE_BYTES);
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            with(|s| {
                s.logs.push(LogLine {
                    level,
                    message: message[..cut].to_owned(),
                })
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kv, realtime};

    /// A plugin that exercises the host from its messages.
    struct Probe;

    impl Plugin for Probe {
        fn on_message(session: &Session, msg: Message) -> Result<(), Refusal> {
            match msg.type_.as_str() {
                "count" => {
                    let n = kv::incr("n", 1)?;
                    realtime::reply("count", &n)?;
                }
                "ttl" => kv::set("t", "x", Some(1_000))?,
                "bad-json" => realtime::reply_raw("x", "{nope")?,
                "join" => realtime::join("lobby")?,
                "who" => {
                    let users = realtime::members("lobby")?;
                    realtime::reply("who", &users)?;
                }
                "refuse" => {
                    realtime::reply("lost", &1)?;
                    return Err(Refusal::new("NO", "refused"));
                }
                _ => realtime::reply("user", &session.user())?,
            }
            Ok(())
        }

        fn on_disconnect(_session: &Session) {
            let denied = realtime::reply("bye", &1);
            crate::log::info(&format!("{denied:?}"));
        }
    }

    #[test]
    fn kv_incr_ttl_and_delete_follow_the_gateway() {
        let mut host = TestHost::new();
        assert_eq!(
            host.on_message::<Probe>(message("count", "null")).replies(),
            [("count", "1")]
        );
        assert_eq!(
            host.on_message::<Probe>(message("count", "null")).replies(),
            [("count", "2")]
        );
        assert_eq!(host.kv_get("n").as_deref(), Some("2"));
        host.kv_set("n", "x");
        let out = host.on_message::<Probe>(message("count", "null"));
        assert_eq!(out.refusal().map(|r| r.code.as_str()), Some("HOST_ERROR"));
        assert!(host.on_message::<Probe>(message("ttl", "null")).is_ok());
        host.advance(Duration::from_millis(999));
        assert_eq!(host.kv_get("t").as_deref(), Some("x"));
        host.advance(Duration::from_millis(1));
        assert_eq!(host.kv_get("t"), None);
        assert_eq!(host.kv().len(), 1);
    }

    #[test]
    fn invalid_json_fails_the_call_and_refusals_keep_their_effects_unapplied() {
        let mut host = TestHost::new();
        let out = host.on_message::<Probe>(message("bad-json", "null"));
        assert_eq!(out.violation, Some(HostError::InvalidJson));
        assert!(!out.is_ok());
        let out = host.on_message::<Probe>(message("refuse", "null"));
        assert_eq!(out.refusal(), Some(&Refusal::new("NO", "refused")));
        assert_eq!(out.replies(), [("lost", "1")]);
        assert!(!out.is_ok());
    }

    #[test]
    fn joins_apply_after_success_and_members_see_them() {
        let mut host = TestHost::new().user("ann").member("lobby", "bob");
        assert!(host.on_message::<Probe>(message("join", "null")).is_ok());
        assert_eq!(host.session().rooms, ["lobby"]);
        let out = host.on_message::<Probe>(message("who", "null"));
        assert_eq!(out.replies(), [("who", r#"["ann","bob"]"#)]);
    }

    #[test]
    fn disconnect_may_not_reply() {
        let mut host = TestHost::new().in_room("lobby");
        let out = host.on_disconnect::<Probe>();
        assert!(out.effects.is_empty());
        assert!(host.session().rooms.is_empty());
        assert_eq!(host.logs().len(), 1);
        assert!(host.logs()[0].message.contains("NotAllowed"));
    }

    #[test]
    #[should_panic(expected = "outside a TestHost call")]
    fn host_calls_outside_a_call_say_so() {
        let _ = kv::get("k");
    }
}
