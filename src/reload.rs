//! Config hot reload: a file watch on the config file (debounced) and SIGHUP.
//!
//! A valid file replaces tenant policy for new messages of existing sessions; an
//! invalid one is refused whole and the old config keeps serving. Both outcomes
//! are logged and counted in `wsprism_config_reloads_total{result}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config;
use crate::gateway::Gateway;

/// Quiet period after the last file event before reloading; editors write files
/// in several steps.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Re-reads `path` and applies it. Returns whether the new config is in force.
pub fn reload(gw: &Gateway, path: &Path) -> bool {
    let outcome = config::load(path).and_then(|cfg| gw.apply(cfg));
    match outcome {
        Ok(report) => {
            gw.metrics.config_reloads.with_label_values(&["ok"]).inc();
            info!(
                added = ?report.added,
                updated = ?report.updated,
                removed = ?report.removed,
                "config reloaded"
            );
            for field in report.needs_restart {
                warn!(field, "config change takes effect only after a restart");
            }
            true
        }
        Err(e) => {
            gw.metrics
                .config_reloads
                .with_label_values(&["error"])
                .inc();
            for issue in &e.issues {
                error!(path = %issue.path, problem = %issue.message, "config reload refused; the previous config keeps serving");
            }
            false
        }
    }
}

/// Watches the config file and reloads on change, until the gateway shuts down.
///
/// # Errors
/// The watcher cannot be created (the gateway still runs; SIGHUP still works).
pub fn watch(gw: Arc<Gateway>, path: PathBuf) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let file_name = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
            && ev
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref())
        {
            let _ = tx.try_send(());
        }
    })?;
    // Watch the directory: editors and `mv` replace the file, which ends a watch
    // on the file itself.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let stop = gw.shutdown.clone();
    gw.tasks.clone().spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                got = rx.recv() => {
                    if got.is_none() { break; }
                    // Debounce: wait until events stop arriving.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                    // Reading and parsing a hostile file can take a while: keep
                    // it off the runtime's worker threads.
                    let (gw2, path2) = (Arc::clone(&gw), path.clone());
                    let _ = tokio::task::spawn_blocking(move || reload(&gw2, &path2)).await;
                }
            }
        }
    });
    Ok(())
}
