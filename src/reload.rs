//! Config hot reload: a file watch on the config file (debounced) and SIGHUP.
//!
//! The watch covers the config file's directory (and, when the path is a
//! symlink, its target's directory), and after each burst of events compares
//! the file's content with what it last saw: an edit, a copy-then-rename, or a
//! Kubernetes ConfigMap update (an atomic swap of the `..data` symlink, which
//! never touches the file's own name) all reload, and unrelated events in the
//! directory do not.
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

/// SIGHUP: reloads the config and rescans the plugin folder.
pub async fn on_sighup(gw: Arc<Gateway>, path: PathBuf) {
    let gw2 = Arc::clone(&gw);
    let _ = tokio::task::spawn_blocking(move || reload(&gw2, &path)).await;
    gw.ext().rescan().await;
}

/// Watches the config file and reloads on change, until the gateway shuts down.
///
/// # Errors
/// The watcher cannot be created (the gateway still runs; SIGHUP still works).
pub fn watch(gw: Arc<Gateway>, path: PathBuf) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|ev| !ev.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })?;
    // Watch the directory: editors and `mv` replace the file, which ends a watch
    // on the file itself; a symlink's target directory too.
    let parent = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let dir = parent(&path);
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    if let Ok(target) = std::fs::canonicalize(&path) {
        let target_dir = parent(&target);
        if std::fs::canonicalize(&dir).ok() != Some(target_dir.clone()) {
            // Best effort: the link's own directory is watched either way.
            let _ = watcher.watch(&target_dir, RecursiveMode::NonRecursive);
        }
    }
    let stop = gw.shutdown.clone();
    let mut seen = digest(&path);
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
                    let last = seen;
                    let now = tokio::task::spawn_blocking(move || {
                        let now = digest(&path2);
                        if now != last {
                            reload(&gw2, &path2);
                        }
                        now
                    })
                    .await;
                    if let Ok(now) = now {
                        seen = now;
                    }
                }
            }
        }
    });
    Ok(())
}

/// A digest of the file `path` resolves to now (symlinks followed), `None`
/// when it cannot be read.
fn digest(path: &Path) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}
