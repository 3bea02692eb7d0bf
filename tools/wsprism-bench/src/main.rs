//! `wsprism-bench`: the load generator for wsPrism, and the raw baseline server
//! its numbers are compared against.
//!
//! # Modes
//! - `echo`: closed-loop round trips on C connections (Hot Lane binary echo or an
//!   Ext Lane envelope with `seq`) → messages/s and RTT percentiles.
//! - `fanout`: R rooms × M members, one publisher per room at a fixed rate
//!   (Hot Lane relay or `chat`) → delivered/expected, deliveries/s and delivery
//!   latency from a timestamp carried in each payload.
//! - `idle`: N authenticated connections held open → server RSS per connection.
//! - `connect`: handshakes (upgrade + `sys.authed`) per second and their latency,
//!   with a static ticket or a client-signed HS256 JWT per connection.
//! - `baseline`: the smallest tokio-tungstenite server with the gateway's socket
//!   settings and no policy (`--mode echo|relay`), for the ratios in
//!   `BENCHMARKS.md`.
//! - `results`: medians, ratios to the baseline and budget verdicts from the
//!   `--json` summaries `scripts/bench.sh` collects.
//!
//! Every client mode takes `--pid` to read the server's CPU time (and RSS) from
//! `/proc`, prints a progress line on stderr while it runs and a summary table
//! (or, with `--json`, one JSON object) on stdout at the end.
//!
//! # Layout
//! `client` (URL, auth, source addresses, handshake) → one module per mode →
//! `report` (histograms, `/proc` probes, progress line, summary output) →
//! `results` (aggregation over runs).
//!
//! The crate (`tools/wsprism-bench`) does not link the gateway: it measures a
//! running one over sockets, like any client. Build it with
//! `cargo build --release -p wsprism-bench`; `tests/bench_smoke.rs` runs every
//! mode against an in-process gateway. The soak driver (`src/bin/wsprism-soak.rs`)
//! is the crate's other binary.
#![allow(clippy::print_stdout)]

mod baseline;
mod client;
mod connect;
mod echo;
mod fanout;
mod idle;
mod latest;
mod report;
mod results;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Parser, Debug)]
#[command(
    name = "wsprism-bench",
    version,
    about = "Load generator and raw baseline server for the wsPrism gateway",
    long_about = "Load generator and raw baseline server for the wsPrism gateway.\n\n\
        Client modes connect to GET /v1/ws?tenant=..&ticket=.. (defaults match the \
        repository's wsprism.yaml: ws://127.0.0.1:8080, tenant acme, ticket dev). \
        That config rate-limits every session to 100 msg/s; use \
        bench/wsprism-bench.yaml (listening on 127.0.0.1:18080) for real load. \
        See BENCHMARKS.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Closed-loop round trips: msgs/s and RTT percentiles.
    Echo(echo::EchoArgs),
    /// Rooms × members with one publisher per room: delivery ratio, rate, latency.
    Fanout(fanout::FanoutArgs),
    /// N authenticated idle connections: server RSS per connection.
    Idle(idle::IdleArgs),
    /// Handshake rate and latency (static ticket or client-signed JWT).
    Connect(connect::ConnectArgs),
    /// A position stream outrunning a slow receiver: plain lossy vs
    /// latest-wins relay (age of what it reads, bytes sent).
    Latest(latest::LatestArgs),
    /// Raw tokio-tungstenite baseline server (echo or room relay), no policy.
    Baseline(baseline::BaselineArgs),
    /// Medians, ratios and budget verdicts from `--json` runs (BENCHMARKS.md).
    Results(results::ResultsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsprism-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Echo(args) => echo::run(args).await,
            Command::Fanout(args) => fanout::run(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Latest(args) => latest::run(args).await,
            Command::Baseline(args) => baseline::run(args).await,
            Command::Results(args) => results::run(args),
        }
    });
    // Idle and fan-out runs leave thousands of sockets behind; do not wait for
    // every reader task to notice the end.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsprism-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
