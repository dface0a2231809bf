//! Hot reload: watch the modules directory and rescan it when something changes.
//!
//! File events arrive in bursts (a copy is a create plus many writes), so events are debounced:
//! the rescan runs once the directory has been quiet for [`QUIET_PERIOD`]. The rescan itself
//! ([`ModuleRegistry::load_dir`]) only reloads files whose size or mtime changed, so spurious
//! events cost a `readdir`. A file caught half-written fails to load, is reported, and is loaded
//! properly by the rescan that follows its last write.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

use crate::registry::ModuleRegistry;

/// How long the directory must be quiet before a rescan.
pub const QUIET_PERIOD: Duration = Duration::from_millis(150);

/// Keeps the directory watched; dropping it stops the watcher and its rescan thread.
pub struct ModuleWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts watching `dir`, rescanning it into `registry` after each burst of changes.
pub fn watch_modules(registry: Arc<ModuleRegistry>, dir: &Path) -> notify::Result<ModuleWatcher> {
    let (events, changes) = mpsc::channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.kind.is_access() => {}
            Ok(_) => {
                let _ = events.send(());
            }
            Err(error) => warn!(%error, "modules directory watch error"),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let dir: PathBuf = dir.to_owned();
    std::thread::Builder::new()
        .name("warren-module-watch".into())
        .spawn(move || rescan_on_change(&registry, &dir, &changes))
        .map_err(|e| notify::Error::generic(&format!("cannot start the watch thread: {e}")))?;
    Ok(ModuleWatcher { _watcher: watcher })
}

fn rescan_on_change(registry: &ModuleRegistry, dir: &Path, changes: &mpsc::Receiver<()>) {
    // Ends when the watcher (the only sender) is dropped.
    while changes.recv().is_ok() {
        loop {
            match changes.recv_timeout(QUIET_PERIOD) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        debug!(dir = %dir.display(), "modules directory changed; rescanning");
        if let Err(error) = registry.load_dir(dir) {
            warn!(dir = %dir.display(), %error, "cannot rescan the modules directory");
        }
    }
}
