//! The `wsprism` binary: CLI → load and validate config → tracing → serve.
//!
//! Exit codes: 0 clean stop, 64 invalid config, 1 any other startup failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wsprism::obs::logging::LogFormat;
use wsprism::{Server, ServerOptions, config, reload};

/// Exit code for an invalid config.
const EXIT_CONFIG: u8 = 64;

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
    /// Run the gateway (the default).
    Start,
    /// Validate a config file and exit: 0 when valid, 64 with every error otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wsprism::obs::logging::init(cli.log_format);
    match cli.command.unwrap_or(Command::Start) {
        Command::Check => check(&cli.config),
        Command::Start => start(cli.config),
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("{}: invalid config:", path.display());
        for issue in &e.issues {
            eprintln!("  {issue}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let base = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let backend = wsprism::backend::BackendClient::new();
    if let Err(e) = wsprism::gateway::Gateway::compile_tenants(&cfg, &base, &backend) {
        eprintln!("{}: invalid config:", path.display());
        for issue in &e.issues {
            eprintln!("  {issue}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    eprintln!("{}: ok ({} tenants)", path.display(), cfg.tenants.len());
    ExitCode::SUCCESS
}

fn start(path: PathBuf) -> ExitCode {
    let cfg = match load(&path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let opts = ServerOptions {
            config_path: Some(path.clone()),
            plugins: true,
            ..ServerOptions::default()
        };
        let server = match Server::bind(cfg, opts).await {
            Ok(s) => s,
            Err(e) => {
                error!("startup failed: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let gw = server.gateway();
        let shutdown = CancellationToken::new();
        spawn_signal_handlers(shutdown.clone(), gw, path);
        match server.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("gateway failed: {e:#}");
                ExitCode::FAILURE
            }
        }
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
