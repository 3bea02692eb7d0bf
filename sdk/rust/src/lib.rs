//! Guest SDK for wsPrism Ext Lane plugins.
//!
//! A plugin is a WebAssembly component the gateway loads from its plugin
//! directory; clients reach it through a tenant route (`svc` -> plugin). This
//! crate wraps the bindings generated from `wit/wsprism-plugin.wit` (world
//! `plugin-with-hooks`) in a small Rust API:
//!
//! - implement [`Plugin`] (only `on_message` is required) and call
//!   [`export_plugin!`] once;
//! - answer and publish with [`realtime`], keep state in [`kv`] (guest memory is
//!   recycled at will), call the tenant's backend with [`backend`], log with
//!   [`log`];
//! - `data` is JSON text: read it with [`Message::json`], write any `Serialize`.
//!
//! ```ignore
//! use wsprism_plugin::{Message, Plugin, Refusal, Session, export_plugin, realtime};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn on_message(_session: &Session, msg: Message) -> Result<(), Refusal> {
//!         realtime::reply_raw(&msg.type_, &msg.data).map_err(Refusal::from)
//!     }
//! }
//!
//! export_plugin!(Echo);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`) and copy `target/wasm32-wasip2/release/<name>.wasm` into the
//! gateway's plugin directory; it is picked up without a restart.
//!
//! # Two targets, one plugin
//! On `wasm32` every host function is the real WIT import. Everywhere else
//! (`cargo test` on your machine) the same functions talk to [`testing`], an
//! in-memory host: kv with TTLs, captured replies / publishes / sends / joins
//! / leaves and logs, and a fake [`Session`]. Plugin code needs no `cfg` of its
//! own; [`export_plugin!`] exports the component on `wasm32` and only checks
//! the type natively.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin-with-hooks",
        pub_export_macro: true,
        export_macro_name: "__wsprism_export_world",
        default_bindings_module: "::wsprism_plugin::bindings",
        additional_derives: [PartialEq, Eq],
    });
}

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

// The host functions the wrappers below call: the WIT imports in a component,
// the in-memory test host natively (where the imports cannot run).
#[cfg(target_arch = "wasm32")]
use bindings::wsprism::plugin::{backend as backend_host, kv as kv_host, log as log_host, realtime as realtime_host};
#[cfg(not(target_arch = "wasm32"))]
use testing::host::{backend as backend_host, kv as kv_host, log as log_host, realtime as realtime_host};

pub use bindings::wsprism::plugin::types::{HostError, Message, Qos, Refusal};
/// The session a call is about: the sender in `on_message`, the closed
/// session in `on_disconnect`. Each accessor is one call of the WIT `session`
/// interface, so read what you need once.
#[cfg(target_arch = "wasm32")]
#[derive(Debug)]
pub struct Session {
    _private: (),
}

#[cfg(target_arch = "wasm32")]
impl Session {
    #[doc(hidden)]
    pub const CURRENT: Self = Self { _private: () };

    /// Tenant id (the instance only ever sees one).
    pub fn tenant(&self) -> String {
        bindings::wsprism::plugin::session::tenant()
    }

    /// Authenticated user id.
    pub fn user(&self) -> String {
        bindings::wsprism::plugin::session::user()
    }

    /// Session id (clients see it as 16 lowercase hex digits).
    pub fn sid(&self) -> u64 {
        bindings::wsprism::plugin::session::sid()
    }

    /// Rooms joined, in join order (empty in `on_disconnect`).
    pub fn rooms(&self) -> Vec<String> {
        bindings::wsprism::plugin::session::rooms()
    }
}
/// The session a call is about: natively, the [`testing`] host's fake one.
#[cfg(not(target_arch = "wasm32"))]
pub use testing::Session;
/// Log severity.
pub use bindings::wsprism::plugin::log::Level;
#[doc(hidden)]
pub use serde_json as __serde_json;

/// A plugin. Functions are associated (no `self`): an instance is one
/// WebAssembly instance, and guest globals are only a cache that the gateway
/// may drop between any two calls.
pub trait Plugin {
    /// Handles one client message. `Ok` applies the queued effects; `Err` sends
    /// the client `SERVICE_ERROR` with the refusal's code and message.
    ///
    /// `session` is the sender: `session.user()`, `session.sid()`,
    /// `session.rooms()`, `session.tenant()` each ask the host, so read what
    /// you need once.
    fn on_message(session: &Session, msg: Message) -> Result<(), Refusal>;

    /// Runs once per new instance before its first message with
    /// `{"tenant":..,"plugin":..}`. An `Err` fails the instance.
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    /// A session of a tenant that routes to this plugin closed (`rooms()` is
    /// empty: it has left them). `kv`, `backend`, `log`, `realtime::members`,
    /// `realtime::publish` and `realtime::send_to_user` work here (e.g. a
    /// "player left" notice); `reply`, `join` and `leave` answer
    /// `HostError::NotAllowed`.
    fn on_disconnect(_session: &Session) {}

    /// Asked before `session` joins `room` through the gateway's `room`
    /// service; `Err` refuses the join (the client gets `SERVICE_ERROR`).
    /// `realtime::reply`, `publish` and `send_to_user` are applied once the
    /// join has happened; `join` and `leave` answer `HostError::NotAllowed`.
    fn on_join(_session: &Session, _room: String) -> Result<(), Refusal> {
        Ok(())
    }

    /// Told after `session` left `room` through the gateway's `room` service
    /// (not when it disconnects: see `on_disconnect`). Effects as in `on_join`.
    fn on_leave(_session: &Session, _room: String) {}
}

/// Exports a [`Plugin`] implementation as the component's entry points.
/// Use it exactly once per plugin crate.
#[cfg(target_arch = "wasm32")]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct WsprismExport;

            impl $crate::bindings::Guest for WsprismExport {
                fn handle(msg: $crate::Message) -> ::core::result::Result<(), $crate::Refusal> {
                    <$plugin as $crate::Plugin>::on_message(&$crate::Session::CURRENT, msg)
                }
            }

            impl $crate::bindings::exports::wsprism::plugin::hooks::Guest for WsprismExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    <$plugin as $crate::Plugin>::init(config)
                }

                fn on_disconnect() {
                    <$plugin as $crate::Plugin>::on_disconnect(&$crate::Session::CURRENT)
                }

                fn on_join(room: ::std::string::String) -> ::core::result::Result<(), $crate::Refusal> {
                    <$plugin as $crate::Plugin>::on_join(&$crate::Session::CURRENT, room)
                }

                fn on_leave(room: ::std::string::String) {
                    <$plugin as $crate::Plugin>::on_leave(&$crate::Session::CURRENT, room)
                }
            }

            $crate::bindings::__wsprism_export_world!(WsprismExport with_types_in $crate::bindings);
        };
    };
}

/// Natively there is no component to export: the macro only checks that the
/// type implements [`Plugin`]; tests call it through [`testing::TestHost`].
#[cfg(not(target_arch = "wasm32"))]
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: fn() = || {
            fn exported<P: $crate::Plugin>() {}
            exported::<$plugin>();
        };
    };
}

impl Refusal {
    /// A refusal with a machine-readable `code` and a message shown to the client.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<HostError> for Refusal {
    /// A host failure surfaced to the client as a refusal (`HOST_ERROR`).
    fn from(e: HostError) -> Self {
        let message = match e {
            HostError::InvalidJson => "invalid JSON".to_owned(),
            HostError::TooLarge => "payload too large".to_owned(),
            HostError::InvalidArgument(m)
            | HostError::UnknownUpstream(m)
            | HostError::Unavailable(m)
            | HostError::NotAllowed(m) => m,
        };
        Self::new("HOST_ERROR", message)
    }
}

impl Session {
    /// Whether the session has joined `room` (one host call).
    pub fn in_room(&self, room: &str) -> bool {
        self.rooms().iter().any(|r| r == room)
    }
}

impl Message {
    /// `data` parsed as `T`; a parse failure becomes a `BAD_DATA` refusal.
    ///
    /// # Errors
    /// `data` does not match `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Refusal> {
        serde_json::from_str(&self.data).map_err(|e| Refusal::new("BAD_DATA", e.to_string()))
    }
}

fn to_json<T: Serialize + ?Sized>(data: &T) -> Result<String, HostError> {
    serde_json::to_string(data).map_err(|_| HostError::InvalidJson)
}

/// Replies, publishes and room membership. Everything but [`members`] is queued
/// and applied after `on_message` returns `Ok`.
///
/// [`members`]: realtime::members
pub mod realtime {
    use super::{HostError, Qos, Serialize, realtime_host as host, to_json};

    /// Sends `{"type":ty,"data":data}` to the calling session.
    ///
    /// # Errors
    /// Payload over `max_frame_bytes`, or called outside `on_message`.
    pub fn reply<T: Serialize + ?Sized>(ty: &str, data: &T) -> Result<(), HostError> {
        host::reply(ty, &to_json(data)?)
    }

    /// [`reply`] with `data` already JSON text.
    ///
    /// # Errors
    /// As [`reply`], plus invalid JSON.
    pub fn reply_raw(ty: &str, json: &str) -> Result<(), HostError> {
        host::reply(ty, json)
    }

    /// Publishes to every member of `room`.
    ///
    /// # Errors
    /// As [`reply`].
    pub fn publish<T: Serialize + ?Sized>(
        room: &str,
        ty: &str,
        data: &T,
        qos: Qos,
        exclude_sender: bool,
    ) -> Result<(), HostError> {
        host::publish(room, ty, &to_json(data)?, qos, exclude_sender)
    }

    /// Publishes a lossy frame to every member of `room`, latest wins: in
    /// each receiver's queue it replaces the still-queued frame with the same
    /// `key` (1 to 256 bytes, scoped to your `svc`), so a receiver that falls
    /// behind gets the newest state per key, never a backlog. For positions,
    /// cursors, scores.
    ///
    /// # Errors
    /// As [`reply`], plus an empty or over-long key.
    pub fn publish_latest<T: Serialize + ?Sized>(
        room: &str,
        key: &str,
        ty: &str,
        data: &T,
        exclude_sender: bool,
    ) -> Result<(), HostError> {
        host::publish_latest(room, key, ty, &to_json(data)?, exclude_sender)
    }

    /// [`publish`] with `data` already JSON text.
    ///
    /// # Errors
    /// As [`publish`], plus invalid JSON.
    pub fn publish_raw(
        room: &str,
        ty: &str,
        json: &str,
        qos: Qos,
        exclude_sender: bool,
    ) -> Result<(), HostError> {
        host::publish(room, ty, json, qos, exclude_sender)
    }

    /// Sends to every session of `user`.
    ///
    /// # Errors
    /// As [`reply`].
    pub fn send_to_user<T: Serialize + ?Sized>(user: &str, ty: &str, data: &T) -> Result<(), HostError> {
        host::send_to_user(user, ty, &to_json(data)?)
    }

    /// Makes the calling session join `room`.
    ///
    /// # Errors
    /// Empty room name, or called outside `on_message`.
    pub fn join(room: &str) -> Result<(), HostError> {
        host::join(room)
    }

    /// Makes the calling session leave `room`.
    ///
    /// # Errors
    /// As [`join`].
    pub fn leave(room: &str) -> Result<(), HostError> {
        host::leave(room)
    }

    /// Users in `room` now, sorted.
    ///
    /// # Errors
    /// Called outside `on_message`.
    pub fn members(room: &str) -> Result<Vec<String>, HostError> {
        host::members(room)
    }
}

/// The key-value store of this plugin for the calling tenant.
pub mod kv {
    use super::{DeserializeOwned, HostError, Serialize, kv_host as host, to_json};

    /// The text stored at `key`.
    ///
    /// # Errors
    /// Key too long, store unavailable.
    pub fn get(key: &str) -> Result<Option<String>, HostError> {
        host::get(key)
    }

    /// The JSON stored at `key`, parsed (`None` when absent or not a `T`).
    ///
    /// # Errors
    /// As [`get`].
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, HostError> {
        Ok(host::get(key)?.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Stores `value` at `key`, expiring after `ttl_ms` when given.
    ///
    /// # Errors
    /// Key or value too large, store full or unavailable.
    pub fn set(key: &str, value: &str, ttl_ms: Option<u64>) -> Result<(), HostError> {
        host::set(key, value, ttl_ms)
    }

    /// Stores `value` as JSON.
    ///
    /// # Errors
    /// As [`set`].
    pub fn set_json<T: Serialize + ?Sized>(key: &str, value: &T, ttl_ms: Option<u64>) -> Result<(), HostError> {
        host::set(key, &to_json(value)?, ttl_ms)
    }

    /// Removes `key`; whether it existed.
    ///
    /// # Errors
    /// As [`get`].
    pub fn delete(key: &str) -> Result<bool, HostError> {
        host::delete(key)
    }

    /// Adds `delta` to the integer at `key` atomically; the new value.
    ///
    /// # Errors
    /// The value is not an integer, overflow, store unavailable.
    pub fn incr(key: &str, delta: i64) -> Result<i64, HostError> {
        host::incr(key, delta)
    }
}

/// HTTP calls to the tenant's configured upstreams.
pub mod backend {
    use super::{HostError, backend_host as host};

    pub use super::bindings::wsprism::plugin::backend::{Request, Response};

    /// Sends `req`.
    ///
    /// # Errors
    /// Unknown upstream, bad request, timeout or transport failure.
    pub fn call(req: &Request) -> Result<Response, HostError> {
        host::call(req)
    }

    /// `POST`s JSON text to `path` on `upstream`.
    ///
    /// # Errors
    /// As [`call`].
    pub fn post_json(upstream: &str, path: &str, json: &str) -> Result<Response, HostError> {
        host::call(&Request {
            upstream: upstream.to_owned(),
            method: "POST".to_owned(),
            path: path.to_owned(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: json.as_bytes().to_vec(),
        })
    }

    /// `GET`s `path` on `upstream`.
    ///
    /// # Errors
    /// As [`call`].
    pub fn get(upstream: &str, path: &str) -> Result<Response, HostError> {
        host::call(&Request {
            upstream: upstream.to_owned(),
            method: "GET".to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    }
}

/// Logging into the gateway's logs (tagged with tenant and plugin).
pub mod log {
    use super::{Level, log_host::log};

    /// Trace-level line.
    pub fn trace(msg: &str) {
        log(Level::Trace, msg);
    }
    /// Debug-level line.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg);
    }
    /// Info-level line.
    pub fn info(msg: &str) {
        log(Level::Info, msg);
    }
    /// Warn-level line.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg);
    }
    /// Error-level line.
    pub fn error(msg: &str) {
        log(Level::Error, msg);
    }
}
