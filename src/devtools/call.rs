//! `wsprism plugin call <file.wasm> --message <json>`: one call of a built
//! component, any language, and everything it did, as JSON.
//!
//! Owns: the in-memory surroundings of one call — a plugin folder holding only
//! the component, a [`MemoryKv`] pre-seeded from `--kv` that records the
//! writes, one session registered in a [`LocalBroker`] and joined to its
//! rooms, a tenant with the default config — and the [`CallReport`]. Input:
//! [`CallOptions`] from the command line; output: the report, whose
//! [`CallReport::failure`] decides the exit code.
//!
//! The call itself is the gateway's: [`PluginHost::start_with_kv`] loads the
//! file (compile, `instantiate_pre`, smoke test) and [`PluginHost::run`]
//! makes the call with the same engine, limits, linker and imports, returning
//! the effects the gateway would apply. What the host does not return — kv
//! writes, the plugin's `log` lines and stdout/stderr — is captured on the
//! way: writes by wrapping the kv store, log lines by a `tracing` layer
//! ([`LogCapture`]) on the host's `wsprism::plugin` target.
//!
//! Must not: reach the network (the tenant has no backend upstreams, so a
//! `backend` call answers `unknown-upstream`) or leave files behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

use super::scaffold;
use crate::config::{PluginsConfig, TenantConfig};
use crate::error::PluginError;
use crate::obs::metrics::Metrics;
use crate::plugin_host::PluginHost;
use crate::plugin_host::kv::{KvError, KvFuture, KvScope, KvStore, MemoryKv};
use crate::realtime::SessionId;
use crate::realtime::broker::{Broker, LocalBroker, RoomLimits, SessionEntry, SessionLimits};
use crate::realtime::outbox::{Outbox, Qos};
use crate::services::{Effect, Entry, ExtService, PluginCall, SessionInfo};

/// The `tracing` target of plugin `log` lines and guest stdout/stderr.
const PLUGIN_TARGET: &str = "wsprism::plugin";

/// What to call and in which surroundings.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// The component. Its file stem names the plugin, as in `plugins/`.
    pub wasm: PathBuf,
    /// The client's message: `{"type":..,"data":..}`, optionally with `svc`
    /// (default: the plugin name), `room`, `seq` and `v`.
    pub message: String,
    /// kv entries set before the call (no TTL).
    pub kv: Vec<(String, String)>,
    /// Tenant id.
    pub tenant: String,
    /// The calling session's user.
    pub user: String,
    /// Rooms the session has joined, in join order.
    pub rooms: Vec<String>,
    /// `gateway.plugins.call_timeout_ms`.
    pub call_timeout_ms: u64,
    /// `gateway.plugins.max_memory_bytes`.
    pub max_memory_bytes: usize,
}

/// Why the call could not be made at all (as opposed to a call that failed,
/// which is a [`CallReport::failure`]).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// An argument is unusable; the text says which and why.
    #[error("{0}")]
    Usage(String),
    /// The component cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The plugin host cannot start.
    #[error("the plugin host cannot start: {0}")]
    Host(String),
    /// The gateway would not load the component.
    #[error("{plugin} does not load: {reason}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// The loader's error.
        reason: String,
    },
}

/// The message as `--message` gives it (the Ext Lane envelope, `v` optional).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageArg {
    #[serde(default)]
    v: Option<u8>,
    #[serde(default)]
    svc: Option<String>,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// Everything one call did.
#[derive(Debug, Serialize)]
pub struct CallReport {
    /// Plugin name (the file stem).
    pub plugin: String,
    /// Whether the call returned `ok` (its effects would be applied).
    pub ok: bool,
    /// `reply` effects.
    pub replies: Vec<Reply>,
    /// `publish` effects.
    pub publishes: Vec<Publish>,
    /// `send-to-user` effects.
    pub sends: Vec<Send>,
    /// Rooms `join`ed.
    pub joins: Vec<String>,
    /// Rooms `leave`d.
    pub leaves: Vec<String>,
    /// kv writes that took effect, in order (also when the call then failed:
    /// kv is not rolled back).
    pub kv_writes: Vec<KvWrite>,
    /// The plugin's `log` lines and stdout/stderr, in order.
    pub logs: Vec<LogLine>,
    /// The refusal or fault, when the call failed (its effects are then
    /// discarded, as the gateway does).
    pub failure: Option<Failure>,
}

/// A `reply`.
#[derive(Debug, Serialize)]
pub struct Reply {
    /// `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `data`.
    pub data: Box<RawValue>,
}

/// A `publish`.
#[derive(Debug, Serialize)]
pub struct Publish {
    /// Room.
    pub room: String,
    /// `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `data`.
    pub data: Box<RawValue>,
    /// `reliable` or `lossy`.
    pub qos: &'static str,
    /// Conflation key (`publish-latest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The sender is left out.
    pub exclude_sender: bool,
}

/// A `send-to-user`.
#[derive(Debug, Serialize)]
pub struct Send {
    /// Target user.
    pub user: String,
    /// `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// `data`.
    pub data: Box<RawValue>,
}

/// A kv write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KvWrite {
    /// `set`.
    Set {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// TTL, if any.
        ttl_ms: Option<u64>,
    },
    /// `incr`.
    Incr {
        /// Key.
        key: String,
        /// Delta.
        delta: i64,
        /// The new value.
        value: i64,
    },
    /// `delete`.
    Delete {
        /// Key.
        key: String,
        /// Whether it existed.
        existed: bool,
    },
}

/// One plugin log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `trace` ... `error`.
    pub level: String,
    /// `log` for the `log` import, `stdout` or `stderr` for guest output.
    pub source: String,
    /// The text.
    pub message: String,
}

/// How the call failed.
#[derive(Debug, Serialize)]
pub struct Failure {
    /// `refused`, `trap`, `timeout`, `memory`, `bad_output`,
    /// `payload_too_large`, ... (the `reason` label of
    /// `wsprism_plugin_errors_total`).
    pub kind: &'static str,
    /// The plugin's refusal code (`refused` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What happened.
    pub message: String,
}

impl Failure {
    fn from_error(e: &PluginError) -> Self {
        match e {
            PluginError::Refused { code, message } => Self {
                kind: e.label(),
                code: Some(code.clone()),
                message: message.clone(),
            },
            other => Self {
                kind: other.label(),
                code: None,
                message: other.to_string(),
            },
        }
    }

    /// Whether the plugin said no (as opposed to faulting).
    pub fn is_refusal(&self) -> bool {
        self.code.is_some()
    }
}

/// The plugin's log lines, captured from `tracing` while the command runs.
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl LogCapture {
    /// Installs the process's subscriber: plugin lines are captured; the
    /// host's own warnings and errors go to stderr.
    pub fn install() -> Self {
        let capture = Self::default();
        let host_warnings = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter::filter_fn(|m| {
                m.target() != PLUGIN_TARGET && *m.level() <= tracing::Level::WARN
            }));
        let _ = tracing_subscriber::registry()
            .with(capture.clone())
            .with(host_warnings)
            .try_init();
        capture
    }

    fn take(&self) -> Vec<LogLine> {
        std::mem::take(&mut *self.lines.lock())
    }
}

/// Collects the fields of a plugin event.
#[derive(Default)]
struct LineFields {
    message: String,
    stream: Option<String>,
}

impl Visit for LineFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "stream" => self.stream = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "stream" => self.stream = Some(format!("{value:?}").trim_matches('"').to_owned()),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for LogCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if meta.target() != PLUGIN_TARGET {
            return;
        }
        let mut fields = LineFields::default();
        event.record(&mut fields);
        self.lines.lock().push(LogLine {
            level: meta.level().as_str().to_ascii_lowercase(),
            source: fields.stream.unwrap_or_else(|| "log".to_owned()),
            message: fields.message,
        });
    }
}

/// The gateway's in-process kv, recording the writes that take effect.
#[derive(Debug, Default)]
struct RecordingKv {
    inner: MemoryKv,
    writes: Mutex<Vec<KvWrite>>,
}

impl RecordingKv {
    fn record<T>(&self, r: &Result<T, KvError>, write: impl FnOnce(&T) -> KvWrite) {
        if let Ok(v) = r {
            self.writes.lock().push(write(v));
        }
    }
}

impl KvStore for RecordingKv {
    fn get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<Option<String>, KvError>> {
        self.inner.get(scope, key)
    }

    fn set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: String,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            let write = KvWrite::Set {
                key: key.to_owned(),
                value: value.clone(),
                ttl_ms: ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            };
            let r = self.inner.set(scope, key, value, ttl).await;
            self.record(&r, |()| write);
            r
        })
    }

    fn delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> KvFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let r = self.inner.delete(scope, key).await;
            self.record(&r, |existed| KvWrite::Delete {
                key: key.to_owned(),
                existed: *existed,
            });
            r
        })
    }

    fn incr<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        delta: i64,
    ) -> KvFuture<'a, Result<i64, KvError>> {
        Box::pin(async move {
            let r = self.inner.incr(scope, key, delta).await;
            self.record(&r, |value| KvWrite::Incr {
                key: key.to_owned(),
                delta,
                value: *value,
            });
            r
        })
    }
}

/// A private folder for the one plugin, removed on drop. The host keeps its
/// compiled-code cache outside it, in the user's private cache directory
/// (`gateway.plugins.cache_dir`'s default), so a file already called once
/// loads without compiling.
struct PluginDir(PathBuf);

impl PluginDir {
    fn create() -> Result<Self, CallError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "wsprism-plugin-call-{}-{nanos}",
            std::process::id()
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path).map_err(|source| CallError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses a repeatable `key=value` argument.
///
/// # Errors
/// No `=` in `arg`.
pub fn parse_kv(arg: &str) -> Result<(String, String), String> {
    arg.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{arg}` is not key=value"))
}

fn plugin_name(path: &Path) -> Result<String, CallError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let named = path.extension().and_then(|e| e.to_str()) == Some("wasm")
        && scaffold::check_name(stem).is_ok();
    if named {
        Ok(stem.to_owned())
    } else {
        Err(CallError::Usage(format!(
            "{} is not a plugin file: the gateway loads `<name>.wasm` where name is 1 to 64 of [A-Za-z0-9_-]",
            path.display()
        )))
    }
}

/// The routed `svc` (the plugin name unless the message names one) and the
/// call's entry.
fn parse_message(plugin: &str, text: &str) -> Result<(String, Entry), CallError> {
    let usage = |why: String| CallError::Usage(format!("--message: {why}"));
    let m: MessageArg = serde_json::from_str(text).map_err(|e| {
        usage(format!(
            "not a message object ({e}); for example '{{\"type\":\"echo\",\"data\":{{\"n\":1}}}}'"
        ))
    })?;
    if m.v.is_some_and(|v| v != 1) {
        return Err(usage("`v` must be 1".into()));
    }
    let svc = m.svc.as_deref().unwrap_or(plugin);
    crate::protocol::ext::check_names(svc, &m.ty, m.room.as_deref())
        .map_err(|(field, why)| usage(format!("`{field}`: {why}")))?;
    let data = match m.data {
        Some(d) => d,
        None => RawValue::from_string("null".into()).map_err(|e| usage(e.to_string()))?,
    };
    Ok((
        svc.to_owned(),
        Entry::Message {
            ty: m.ty,
            room: m.room,
            seq: m.seq,
            data,
        },
    ))
}

/// Runs the call and reports it. `logs` must have been installed before.
///
/// # Errors
/// [`CallError`] when the call cannot be made; a call that is refused or
/// faults is a report with a [`CallReport::failure`].
pub async fn run(opts: &CallOptions, logs: &LogCapture) -> Result<CallReport, CallError> {
    let plugin = plugin_name(&opts.wasm)?;
    let (svc, entry) = parse_message(&plugin, &opts.message)?;
    for room in &opts.rooms {
        crate::protocol::ext::check_name(room)
            .map_err(|why| CallError::Usage(format!("--room `{room}`: {why}")))?;
    }
    let bytes = std::fs::read(&opts.wasm).map_err(|source| CallError::Read {
        path: opts.wasm.clone(),
        source,
    })?;
    let dir = PluginDir::create()?;
    let file = dir.0.join(format!("{plugin}.wasm"));
    std::fs::write(&file, bytes).map_err(|source| CallError::Read { path: file, source })?;

    let tenant: Arc<TenantConfig> = Arc::new(
        serde_json::from_value(serde_json::json!({ "id": opts.tenant }))
            .map_err(|e| CallError::Usage(format!("--tenant: {e}")))?,
    );
    let scope = KvScope {
        tenant: Arc::from(opts.tenant.as_str()),
        plugin: Arc::from(plugin.as_str()),
    };
    let kv = Arc::new(RecordingKv::default());
    for (key, value) in &opts.kv {
        kv.inner
            .set(&scope, key, value.clone(), None)
            .await
            .map_err(|e| CallError::Usage(format!("--kv {key}: {e}")))?;
    }

    let cfg = PluginsConfig {
        dir: dir.0.to_string_lossy().into_owned(),
        watch: false,
        call_timeout_ms: opts.call_timeout_ms,
        max_memory_bytes: opts.max_memory_bytes,
        instances_per_plugin: 1,
        ..PluginsConfig::default()
    };
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let host = PluginHost::start_with_kv(
        &cfg,
        Metrics::new(),
        &crate::backend::BackendClient::new(),
        stop.clone(),
        TaskTracker::new(),
        Arc::clone(&kv) as Arc<dyn KvStore>,
    )
    .await
    .map_err(CallError::Host)?;
    if !host.plugins().contains(&plugin) {
        let status = host.status(&opts.tenant, &plugin);
        return Err(CallError::Load {
            plugin,
            reason: status
                .last_error
                .unwrap_or_else(|| "the plugin host did not load it".to_owned()),
        });
    }

    let broker = Arc::new(LocalBroker::new());
    let sid = SessionId::new(1);
    let user: Arc<str> = Arc::from(opts.user.as_str());
    broker
        .register(
            Arc::new(SessionEntry::new(
                sid,
                Arc::clone(&user),
                Arc::new(Outbox::new(64, 64)),
            )),
            SessionLimits {
                max_sessions_total: 0,
                max_sessions_per_user: 1,
                kick_oldest: false,
            },
        )
        .map_err(|e| CallError::Host(format!("cannot register the session: {e}")))?;
    for room in &opts.rooms {
        broker
            .join(sid, room, RoomLimits::default())
            .map_err(|e| CallError::Usage(format!("--room `{room}`: {e}")))?;
    }
    let call = PluginCall {
        entry,
        session: SessionInfo {
            tenant: Arc::clone(&scope.tenant),
            user,
            sid,
            rooms: opts.rooms.clone().into(),
        },
        plugin: Arc::from(plugin.as_str()),
        svc,
        tenant_cfg: tenant,
        broker,
    };

    // Lines of the load-time smoke test are not part of the call.
    logs.take();
    let result = host.run(call).await;
    let mut report = CallReport {
        plugin,
        ok: result.is_ok(),
        replies: Vec::new(),
        publishes: Vec::new(),
        sends: Vec::new(),
        joins: Vec::new(),
        leaves: Vec::new(),
        kv_writes: std::mem::take(&mut *kv.writes.lock()),
        logs: logs.take(),
        failure: None,
    };
    match result {
        Ok(effects) => {
            for effect in effects {
                report.add(effect);
            }
        }
        Err(e) => report.failure = Some(Failure::from_error(&e)),
    }
    Ok(report)
}

impl CallReport {
    fn add(&mut self, effect: Effect) {
        match effect {
            Effect::Reply { ty, data } => self.replies.push(Reply { ty, data }),
            Effect::Publish {
                room,
                ty,
                data,
                qos,
                key,
                exclude_sender,
            } => self.publishes.push(Publish {
                room,
                ty,
                data,
                qos: match qos {
                    Qos::Reliable => "reliable",
                    Qos::Lossy => "lossy",
                },
                key,
                exclude_sender,
            }),
            Effect::SendToUser { user, ty, data } => self.sends.push(Send { user, ty, data }),
            Effect::Join { room, .. } => self.joins.push(room),
            Effect::Leave { room, .. } => self.leaves.push(room),
            // Plugins have no import that makes a `sys` frame.
            Effect::Sys { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_like_envelopes() {
        let (
            svc,
            Entry::Message {
                ty,
                room,
                seq,
                data,
            },
        ) = parse_message("echo", r#"{"type":"t","room":"r","seq":4,"data":{"a":1}}"#)
            .expect("parses")
        else {
            panic!("not a message");
        };
        assert_eq!(svc, "echo");
        assert_eq!(
            (ty.as_str(), room.as_deref(), seq),
            ("t", Some("r"), Some(4))
        );
        assert_eq!(data.get(), r#"{"a":1}"#);
        let (svc, Entry::Message { data, .. }) =
            parse_message("echo", r#"{"svc":"e2","type":"t"}"#).expect("parses")
        else {
            panic!("not a message");
        };
        assert_eq!(svc, "e2");
        assert_eq!(data.get(), "null");
        for bad in [
            r#"{"data":1}"#,
            r#"{"type":""}"#,
            r#"{"type":"t","extra":1}"#,
            r#"{"v":2,"type":"t"}"#,
        ] {
            assert!(
                matches!(parse_message("echo", bad), Err(CallError::Usage(_))),
                "{bad}"
            );
        }
        // Text that is not JSON says what was expected, with an example.
        match parse_message("echo", "nope") {
            Err(CallError::Usage(why)) => {
                assert!(
                    why.starts_with("--message: not a message object ("),
                    "{why}"
                );
                assert!(
                    why.ends_with(r#"'{"type":"echo","data":{"n":1}}'"#),
                    "{why}"
                );
            }
            other => panic!("not refused as usage: {other:?}"),
        }
    }

    #[test]
    fn plugin_files_are_named_like_in_the_plugin_folder() {
        assert_eq!(
            plugin_name(Path::new("/x/counter_js.wasm")).ok().as_deref(),
            Some("counter_js")
        );
        assert!(plugin_name(Path::new("a.b.wasm")).is_err());
        assert!(plugin_name(Path::new("echo.wat")).is_err());
        assert_eq!(parse_kv("count:r=3"), Ok(("count:r".into(), "3".into())));
        assert!(parse_kv("nokey").is_err());
    }

    #[tokio::test]
    async fn writes_are_recorded_only_when_they_take_effect() {
        let kv = RecordingKv::default();
        let scope = KvScope {
            tenant: "t".into(),
            plugin: "p".into(),
        };
        kv.set(&scope, "s", "x".into(), Some(Duration::from_millis(1500)))
            .await
            .expect("set");
        assert!(kv.incr(&scope, "s", 1).await.is_err());
        assert_eq!(kv.incr(&scope, "n", 2).await, Ok(2));
        assert_eq!(kv.delete(&scope, "s").await, Ok(true));
        assert_eq!(
            *kv.writes.lock(),
            [
                KvWrite::Set {
                    key: "s".into(),
                    value: "x".into(),
                    ttl_ms: Some(1500)
                },
                KvWrite::Incr {
                    key: "n".into(),
                    delta: 2,
                    value: 2
                },
                KvWrite::Delete {
                    key: "s".into(),
                    existed: true
                },
            ]
        );
    }
}
