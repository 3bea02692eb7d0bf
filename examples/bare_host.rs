//! The runtime floor of a plugin call: one warm message call (`handle` of
//! world `plugin`, or `on-message` of world `ext-lane-plugin`) of a plugin
//! component in a bare wasmtime host, with nothing of the gateway around it
//! (synchronous call, stub imports, no limiter, no pooling, no sockets).
//! Each round is measured twice in the same process, alternated: on an engine
//! without epoch interruption, and on one with it (the gateway's setting: it
//! is what lets the gateway cut a guest that runs past its CPU budget).
//! BENCHMARKS.md ("Remaining floor and its cause") reads these figures
//! against what a plugin adds per message over real sockets.
//!
//! ```sh
//! cargo run --release --example bare_host -- <component.wasm> [calls per round] [rounds]
//! ```
//!
//! The message's `type` is `echo`; `BARE_HOST_TYPE=incr` sends another (the
//! counter examples count with `incr`; their room is `r1`, which the stub
//! session is in).
// A benchmark binary: it prints its figures and times with the wall clock.
#![allow(missing_docs, clippy::print_stdout, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use wasmtime::component::{Component, Func, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "wit",
    world: "plugin",
    with: { "wsprism:plugin/types.session": SessionRep },
});

use self::wsprism::plugin::{backend, kv, log, realtime, session, types};
use types::{HostError, Qos};

/// The host side of the `session` resource: as in the gateway, a handle
/// that carries nothing (every accessor answers for the one session).
pub struct SessionRep;

struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    replies: u64,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Host {}

impl session::Host for Host {
    fn tenant(&mut self) -> String {
        "acme".into()
    }
    fn user(&mut self) -> String {
        "alice".into()
    }
    fn sid(&mut self) -> u64 {
        42
    }
    fn rooms(&mut self) -> Vec<String> {
        vec!["r1".into()]
    }
}

impl types::HostSession for Host {
    fn tenant(&mut self, _: Resource<SessionRep>) -> String {
        "acme".into()
    }
    fn user(&mut self, _: Resource<SessionRep>) -> String {
        "u1".into()
    }
    fn sid(&mut self, _: Resource<SessionRep>) -> u64 {
        1
    }
    fn rooms(&mut self, _: Resource<SessionRep>) -> Vec<String> {
        vec!["r1".into()]
    }
    fn drop(&mut self, _: Resource<SessionRep>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl realtime::Host for Host {
    fn reply(&mut self, _: String, _: String) -> Result<(), HostError> {
        self.replies += 1;
        Ok(())
    }
    fn publish(
        &mut self,
        _: String,
        _: String,
        _: String,
        _: Qos,
        _: bool,
    ) -> Result<(), HostError> {
        Ok(())
    }
    fn publish_latest(
        &mut self,
        _: String,
        _: String,
        _: String,
        _: String,
        _: bool,
    ) -> Result<(), HostError> {
        Ok(())
    }
    fn send_to_user(&mut self, _: String, _: String, _: String) -> Result<(), HostError> {
        Ok(())
    }
    fn join(&mut self, _: String) -> Result<(), HostError> {
        Ok(())
    }
    fn leave(&mut self, _: String) -> Result<(), HostError> {
        Ok(())
    }
    fn members(&mut self, _: String) -> Result<Vec<String>, HostError> {
        Ok(Vec::new())
    }
}

impl kv::Host for Host {
    fn get(&mut self, _: String) -> Result<Option<String>, HostError> {
        Ok(None)
    }
    fn set(&mut self, _: String, _: String, _: Option<u64>) -> Result<(), HostError> {
        Ok(())
    }
    fn delete(&mut self, _: String) -> Result<bool, HostError> {
        Ok(false)
    }
    fn incr(&mut self, _: String, delta: i64) -> Result<i64, HostError> {
        Ok(delta)
    }
}

impl backend::Host for Host {
    fn call(&mut self, _: backend::Request) -> Result<backend::Response, HostError> {
        Err(HostError::NotAllowed("no backend in the bare host".into()))
    }
}

impl log::Host for Host {
    fn log(&mut self, _: log::Level, _: String) {}
}

/// One engine, store and instance of the component.
struct Bench {
    store: Store<Host>,
    call: MessageCall,
}

type Outcome = (Result<(), types::Refusal>,);

/// The message export of either world (typed once per round, so the message
/// is lent to each call as the gateway's bindings do, not cloned).
enum MessageCall {
    /// World `plugin`: `handle(msg)`.
    Plain(Func),
    /// World `ext-lane-plugin`: `on-message(borrow<session>, msg)`.
    Borrowed(Func),
}

impl Bench {
    fn new(path: &str, epoch: bool) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        // `BARE_HOST_PERFMAP=1`: guest functions named in /tmp/perf-<pid>.map.
        if std::env::var_os("BARE_HOST_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config.wasm_component_model(true);
        config.epoch_interruption(epoch);
        let engine = Engine::new(&config)?;
        let component = Component::from_file(&engine, path)?;
        let mut linker: Linker<Host> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Plugin::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h)?;
        let host = Host {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            table: ResourceTable::new(),
            replies: 0,
        };
        let mut store = Store::new(&engine, host);
        // Never reached: the epoch does not advance here, only its checks
        // in the guest code are paid.
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate(&mut store, &component)?;
        let call = if let Some(f) = instance.get_func(&mut store, "handle") {
            MessageCall::Plain(f)
        } else if let Some(f) = instance.get_func(&mut store, "on-message") {
            MessageCall::Borrowed(f)
        } else {
            return Err(wasmtime::Error::msg(
                "exports neither handle nor on-message",
            ));
        };
        Ok(Self { store, call })
    }

    /// `calls` warm calls of the gateway's echo message; the time per call.
    fn round(&mut self, calls: u32) -> wasmtime::Result<Duration> {
        let msg = types::Message {
            svc: "echo".into(),
            type_: std::env::var("BARE_HOST_TYPE").unwrap_or_else(|_| "echo".into()),
            room: Some("r1".into()),
            seq: Some(1),
            data: r#"{"pad":"................................"}"#.into(),
        };
        let started = Instant::now();
        match self.call {
            MessageCall::Plain(f) => {
                let f = f.typed::<(&types::Message,), Outcome>(&self.store)?;
                for _ in 0..calls {
                    refused(f.call(&mut self.store, (&msg,))?)?;
                }
            }
            MessageCall::Borrowed(f) => {
                let f = f.typed::<(Resource<SessionRep>, &types::Message), Outcome>(&self.store)?;
                for _ in 0..calls {
                    refused(f.call(&mut self.store, (Resource::new_borrow(0), &msg))?)?;
                }
            }
        }
        Ok(started.elapsed() / calls)
    }
}

/// A refusal ends the measurement: the echo never refuses.
fn refused((r,): Outcome) -> wasmtime::Result<()> {
    r.map_err(|e| wasmtime::Error::msg(format!("refused: {}: {}", e.code, e.message)))
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort_unstable();
    xs[xs.len() / 2]
}

fn main() -> wasmtime::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or_else(|| {
        wasmtime::Error::msg("usage: bare_host <component.wasm> [calls] [rounds]")
    })?;
    let calls: u32 = args.next().map_or(Ok(5_000), |n| n.parse())?;
    let rounds: usize = args.next().map_or(Ok(5), |n| n.parse())?;
    let mut plain = Bench::new(&path, false)?;
    let mut epoch = Bench::new(&path, true)?;
    plain.round(calls / 10 + 1)?;
    epoch.round(calls / 10 + 1)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 1..=rounds {
        let x = plain.round(calls)?;
        let y = epoch.round(calls)?;
        println!(
            "round {i}: {:.2} µs plain, {:.2} µs with epoch interruption",
            us(x),
            us(y)
        );
        a.push(x);
        b.push(y);
    }
    let (a, b) = (median(a), median(b));
    println!(
        "{path}: median {:.2} µs per warm call plain, {:.2} µs with epoch interruption ({:.2}x); {} replies",
        us(a),
        us(b),
        b.as_secs_f64() / a.as_secs_f64(),
        plain.store.data().replies + epoch.store.data().replies
    );
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
