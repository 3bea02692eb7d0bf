//! The gateway's integration tests over real sockets, one module per area, in
//! one test binary.
//!
//! Every integration test binary links the whole gateway, wasmtime and
//! Cranelift included: about 125 MB and a link step each in a debug build. One
//! binary for these eighteen files instead of one per file keeps a clean
//! `scripts/test.sh` about 2 GB smaller and seventeen links shorter.
//!
//! Test files keep a binary of their own when sharing a process would change
//! what they measure: `hostile_transport` and `hostile_plugins` read the
//! process's RSS, `plugins`, `plugins_gateway` and `plugin_output` capture
//! log events with a thread-local `tracing` subscriber, and `devtools` runs
//! nested cargo / npm / pip builds that would load both cores under the
//! timing-sensitive tests here. Run one area with
//! `cargo test --test gateway server_api::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../hostile_support/mod.rs"]
mod hostile_support;
#[path = "../plugin_support/mod.rs"]
mod plugin_support;

mod architecture;
mod auth;
mod cli;
mod cluster;
mod config;
mod conformance;
mod deploy_kit;
mod ext_lane;
mod handshake;
mod history;
mod hostile_ops;
mod hostile_sessions;
mod hot_lane;
mod protocol;
mod reload;
mod server_api;
mod shutdown;
mod status_page;
