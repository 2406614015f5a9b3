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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a change arrives within `wait`.
    async fn changed(changes: &mut mpsc::Receiver<()>, wait: Duration) -> bool {
        tokio::time::timeout(wait, changes.recv()).await.is_ok()
    }

    #[tokio::test]
    async fn only_real_changes_of_the_file_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let mut changes = watch_file(&path);
        let settle = DEBOUNCE * 3;

        // Other files in the directory (such as the state database) do not count.
        std::fs::write(dir.path().join("state.db"), "x").unwrap();
        assert!(!changed(&mut changes, settle).await);

        // Writing it in place counts once, however many events the write makes.
        std::fs::write(&path, "a = 2\n").unwrap();
        std::fs::write(&path, "a = 3\n").unwrap();
        assert!(changed(&mut changes, settle * 2).await);
        assert!(!changed(&mut changes, settle).await);

        // The same content again is no change.
        std::fs::write(&path, "a = 3\n").unwrap();
        assert!(!changed(&mut changes, settle).await);

        // Replacing it by rename, as editors do, counts.
        let temp = dir.path().join(".config.toml.swp");
        std::fs::write(&temp, "a = 4\n").unwrap();
        std::fs::rename(&temp, &path).unwrap();
        assert!(changed(&mut changes, settle * 2).await);
    }

    #[test]
    fn events_of_other_files_are_ignored() {
        let name = Some(OsStr::new("config.toml"));
        let event = |path: &str| notify::Event::default().add_path(PathBuf::from(path));
        assert!(concerns(&event("/etc/cohort-sync/config.toml"), name));
        assert!(concerns(&event("/etc/cohort-sync/..data"), name));
        assert!(concerns(&notify::Event::default(), name));
        assert!(!concerns(&event("/etc/cohort-sync/state.db-wal"), name));
    }
}
