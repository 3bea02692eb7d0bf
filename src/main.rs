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
//!
//! The plugin developer commands (`wsprism::devtools`) exit on their own terms:
//! - `new plugin`: 0 when the project is written, 1 when it is refused (a name
//!   the plugin loader would not accept, a target folder that is not empty, a
//!   failed write), 2 for a usage error such as an unknown `--lang`;
//! - `plugin call`: 0 when the call returned `ok`, 3 when the plugin refused,
//!   4 when it failed (trap, timeout, memory, invalid output), 1 when it could
//!   not be called (unreadable file, a component the gateway would not load,
//!   a bad `--message`), 2 for a usage error. The JSON report goes to stdout
//!   whenever a call was made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wsprism::devtools::{call, scaffold};
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
    /// Validate a config file and exit: 0 when valid, 64 with its errors and their YAML paths otherwise.
    Check,
    /// Create a project.
    #[command(subcommand)]
    New(NewCommand),
    /// Work with a built plugin.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand, Debug)]
enum NewCommand {
    /// Write a plugin project to `<dir>/<name>`: the WIT, the SDK glue, an echo
    /// plugin, a README and a `build.sh` that writes `<name>.wasm`. Needs no
    /// checkout. Exits 1 on a bad name or a non-empty target folder.
    Plugin {
        /// Plugin name: 1 to 64 of `[A-Za-z0-9_-]` (the file stem the gateway
        /// loads and tenants route to).
        name: String,
        /// `rust`, `js` or `python`.
        #[arg(long, value_parser = parse_lang)]
        lang: scaffold::Lang,
        /// Parent folder of the project.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Run one message through a component (any language) against an
    /// in-memory host and print what it did as JSON. Exits 0 on `ok`, 3 when
    /// the plugin refused, 4 when it failed, 1 when it could not be called.
    Call(CallArgs),
}

#[derive(clap::Args, Debug)]
struct CallArgs {
    /// The component, named `<plugin>.wasm`.
    file: PathBuf,
    /// The client's message, e.g. `{"type":"incr","room":"r1","data":{}}`
    /// (`svc` defaults to the plugin name).
    #[arg(long)]
    message: String,
    /// A kv entry set before the call (repeatable).
    #[arg(long = "kv", value_name = "KEY=VALUE", value_parser = call::parse_kv)]
    kv: Vec<(String, String)>,
    /// The calling session's user.
    #[arg(long, default_value = "dev")]
    user: String,
    /// A room the session has joined (repeatable; the last is active).
    #[arg(long = "room", value_name = "ROOM")]
    rooms: Vec<String>,
    /// Tenant id.
    #[arg(long, default_value = "dev")]
    tenant: String,
    /// CPU budget of the call (`gateway.plugins.call_timeout_ms`).
    #[arg(long, default_value_t = wsprism::config::PluginsConfig::default().call_timeout_ms)]
    call_timeout_ms: u64,
    /// Memory cap of the instance (`gateway.plugins.max_memory_bytes`).
    #[arg(long, default_value_t = wsprism::config::PluginsConfig::default().max_memory_bytes)]
    max_memory_bytes: usize,
}

impl From<CallArgs> for call::CallOptions {
    fn from(a: CallArgs) -> Self {
        Self {
            wasm: a.file,
            message: a.message,
            kv: a.kv,
            tenant: a.tenant,
            user: a.user,
            rooms: a.rooms,
            call_timeout_ms: a.call_timeout_ms,
            max_memory_bytes: a.max_memory_bytes,
        }
    }
}

fn parse_lang(s: &str) -> Result<scaffold::Lang, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Start) {
        // The developer commands have their own output and exit codes.
        Command::New(NewCommand::Plugin { name, lang, dir }) => {
            return new_plugin(&name, lang, &dir);
        }
        Command::Plugin(PluginCommand::Call(args)) => return plugin_call(&args.into()),
        Command::Check => {
            wsprism::obs::logging::init(cli.log_format);
            check(&cli.config)
        }
        Command::Start => {
            wsprism::obs::logging::init(cli.log_format);
            start(cli.config.clone())
        }
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

/// `wsprism new plugin`: writes the project and says what to do next.
fn new_plugin(name: &str, lang: scaffold::Lang, dir: &Path) -> ExitCode {
    match scaffold::new_plugin(name, lang, dir) {
        Ok(project) => {
            eprintln!(
                "created {lang} plugin `{name}` in {}
next: cd {} && ./build.sh   (see README.md)",
                project.display(),
                project.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsprism new plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wsprism plugin call`: the report on stdout, the verdict in the exit code.
fn plugin_call(opts: &call::CallOptions) -> ExitCode {
    let logs = call::LogCapture::install();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsprism plugin call: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match rt.block_on(call::run(opts, &logs)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("wsprism plugin call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = serde_json::to_writer_pretty(&mut out, &report)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out));
    if let Err(e) = written {
        eprintln!("wsprism plugin call: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    match &report.failure {
        None => ExitCode::SUCCESS,
        Some(f) => {
            eprintln!("wsprism plugin call: {}: {}", f.kind, f.message);
            ExitCode::from(if f.is_refusal() { 3 } else { 4 })
        }
    }
}

/// `wsprism check`: everything `start` refuses a config for, without binding.
fn check(path: &Path) -> Result<(), StartupError> {
    let cfg = config::load(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    wsprism::check_loadable(&cfg, &base)?;
    let n = cfg.tenants.len();
    let plural = if n == 1 { "" } else { "s" };
    eprintln!("{}: ok ({n} tenant{plural})", path.display());
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
                    info!("SIGHUP: reloading config and rescanning plugins");
                    reload::on_sighup(std::sync::Arc::clone(&gw), path.clone()).await;
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
