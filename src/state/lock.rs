//! The advisory lock that keeps a second process off a SQLite state file.
//!
//! SQLite would let two daemons share one file and interleave their runs; the lock file
//! `<state file>.lock` makes the second one stop at startup with a clear message instead.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::StateError;

/// An exclusive lock on a SQLite state file, held until dropped.
#[derive(Debug)]
pub struct SqliteLock {
    /// Kept open: closing the file releases the lock.
    _file: File,
    path: PathBuf,
}

impl SqliteLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock on `<path>.lock`, creating the file and its directory if needed.
///
/// # Errors
///
/// [`StateError::Locked`] when another holder has it (another process, or another
/// [`SqliteLock`] in this one), [`StateError::LockFile`] when the file cannot be created.
pub fn lock_sqlite(path: &Path) -> Result<SqliteLock, StateError> {
    let lock_path = lock_path(path);
    let failed = |cause| StateError::LockFile {
        path: path.to_path_buf(),
        cause,
    };

    if let Some(parent) = lock_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(failed)?;

    match file.try_lock() {
        Ok(()) => Ok(SqliteLock {
            _file: file,
            path: lock_path,
        }),
        Err(TryLockError::WouldBlock) => Err(StateError::Locked {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(cause)) => Err(failed(cause)),
    }
}

/// Waits for the exclusive lock on `<path>.open.lock`, held until the file is dropped.
///
/// Every process that opens the state file may create it, switch it to WAL and apply
/// pending migrations, and SQLite cannot have two do that at once (a second first
/// connection gets "database is locked"; two migrators both see a migration missing and
/// the second fails on the tables the first made). Holding this lock meanwhile makes them
/// take turns. It is separate from [`lock_sqlite`]'s lock, which a daemon holds for its
/// whole life, so that `status` can still open the file.
///
/// # Errors
///
/// [`StateError::LockFile`] when the file cannot be created or locked.
pub(crate) async fn open_lock(path: &Path) -> Result<File, StateError> {
    let lock_path = with_suffix(path, ".open.lock");
    let failed = |cause| StateError::LockFile {
        path: path.to_path_buf(),
        cause,
    };
    let locked = tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        file.lock()?;
        Ok(file)
    })
    .await
    .map_err(|join| failed(std::io::Error::other(join.to_string())))?;
    locked.map_err(failed)
}

fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");

        let first = lock_sqlite(&path).unwrap();
        assert_eq!(first.path(), dir.path().join("nested/state.db.lock"));

        let second = lock_sqlite(&path).unwrap_err();
        assert!(matches!(second, StateError::Locked { .. }));
        assert_eq!(
            second.to_string(),
            format!(
                "another cohort-sync process is using the state file {}",
                path.display()
            )
        );

        drop(first);
        lock_sqlite(&path).unwrap();
    }
}
