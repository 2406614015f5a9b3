//! Notices edits of the config file, including replacement by rename.
//!
//! Editors and Kubernetes replace a file instead of writing it in place, so the
//! watch is on the file's directory, and an event only counts when the file's content
//! changed. Bursts of events are debounced into one reload.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before a reload.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Whether a directory event may have changed the file called `name`: it names the file,
/// or a `..`-prefixed entry (Kubernetes swaps a `..data` symlink under mounted files), or
/// no path at all (an overflow, when anything may have changed).
fn concerns(event: &notify::Event, name: Option<&OsStr>) -> bool {
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|path| {
        let file = path.file_name();
        file == name || file.is_some_and(|f| f.as_encoded_bytes().starts_with(b".."))
    })
}

/// A channel that yields `()` once per settled change of `path`'s content. If the
/// directory cannot be watched, it logs a warning and never yields (SIGHUP still works).
pub fn watch_file(path: &Path) -> mpsc::Receiver<()> {
    let (changes, receiver) = mpsc::channel(1);
    let (events, mut raw) = mpsc::unbounded_channel::<()>();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let name = path.file_name().map(ToOwned::to_owned);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| concerns(&event, name.as_deref())) {
            let _ = events.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "Cannot watch the config file; reload with SIGHUP.");
            return receiver;
        }
    };
    if let Err(error) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(%error, dir = %dir.display(), "Cannot watch the config directory; reload with SIGHUP.");
        return receiver;
    }

    let path: PathBuf = path.to_owned();
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last = std::fs::read(&path).ok();
        while raw.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, raw.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = std::fs::read(&path).ok();
            if now != last {
                last = now;
                if changes.send(()).await.is_err() {
                    return;
                }
            }
        }
    });
    receiver
}
