//! The `wsprism` binary: CLI → load and validate config → tracing → serve.
//!
//! Exit codes, mapped once from [`StartupError::exit_code`] in `fail`:
//! - 0: `check` found the config valid, or `start` stopped cleanly after
//!   SIGTERM/SIGINT;
//! - 64: the config is wrong: it does not parse or validate, or a tenant's keys
//!   or secrets cannot be loaded. `check` and `start` exit 64 for the same file
//!   and print every problem with its YAML path;
//! - 1: anything else: a listen address in use, the plugin host or the async
//!   runtime cannot start, serving failed. The message names what to change.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wsprism::error::StartupError;
use wsprism::obs::logging::LogFormat;
use wsprism::{Server, ServerOptions, config, reload};

#[derive(Parser, Debug)]
#[command(name = "wsprism", version, about = "Realtime WebSocket gateway")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (for the default `start` command).
    #[arg(long, short, global = true, default_value = "wsprism.yaml")]
    config: PathBuf,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default). Exits 64 on a bad config, 1 on other
    /// startup failures.
    Start,
    /// Validate a config file and exit: 0 when valid, 64 with every error otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wsprism::obs::logging::init(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Start) {
        Command::Check => check(&cli.config),
        Command::Start => start(cli.config.clone()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&cli.config, &e),
    }
}

/// The one place a failed start becomes output and an exit code.
fn fail(path: &Path, e: &StartupError) -> ExitCode {
    match e {
        StartupError::Config(c) => {
            eprintln!("{}: invalid config:", path.display());
            for issue in &c.issues {
                eprintln!("  {issue}");
            }
        }
        other => error!("startup failed: {other}"),
    }
    ExitCode::from(e.exit_code())
}

/// `wsprism check`: everything `start` refuses a config for, without binding.
fn check(path: &Path) -> Result<(), StartupError> {
    let cfg = config::load(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    wsprism::check_loadable(&cfg, &base)?;
    eprintln!("{}: ok ({} tenants)", path.display(), cfg.tenants.len());
    Ok(())
}

fn start(path: PathBuf) -> Result<(), StartupError> {
    let cfg = config::load(&path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)?;
    rt.block_on(async move {
        let opts = ServerOptions {
            config_path: Some(path.clone()),
            plugins: true,
            ..ServerOptions::default()
        };
        let server = Server::bind(cfg, opts).await?;
        let gw = server.gateway();
        let shutdown = CancellationToken::new();
        spawn_signal_handlers(shutdown.clone(), gw, path);
        server.run(shutdown).await.map_err(StartupError::Serve)
    })
}

#[cfg(unix)]
fn spawn_signal_handlers(
    shutdown: CancellationToken,
    gw: std::sync::Arc<wsprism::gateway::Gateway>,
    path: PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    info!("SIGHUP: reloading config");
                    let gw = std::sync::Arc::clone(&gw);
                    let path = path.clone();
                    let _ = tokio::task::spawn_blocking(move || reload::reload(&gw, &path)).await;
                    continue;
                }
            }
            if shutdown.is_cancelled() {
                warn!("second shutdown signal: exiting now");
                std::process::exit(1);
            }
            info!("shutdown signal received");
            shutdown.cancel();
        }
    });
}

#[cfg(not(unix))]
fn spawn_signal_handlers(
    shutdown: CancellationToken,
    _gw: std::sync::Arc<wsprism::gateway::Gateway>,
    _path: PathBuf,
) {
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
}
