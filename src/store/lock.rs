//! The daemon lock: proof that no other worker holds a lease on this database.
//!
//! An exclusive `flock` on `<database>.lock`, a separate file beside the database (never a lock
//! row, never a second open of the database file, whose POSIX locks SQLite owns). The kernel drops
//! it when the process dies, however it dies, so a crash never leaves a stale lock. CLI commands do
//! not take it: their short writes run alongside the daemon under SQLite's own locking.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another forgetd daemon is already working {db} (lock {lock} is held); stop it first, or point --db elsewhere"
    )]
    Held { db: PathBuf, lock: PathBuf },
    #[error(
        "lock file {lock} is a symbolic link; forgetd does not follow links for its lock (remove it)"
    )]
    Symlink { lock: PathBuf },
    #[error("cannot open lock file {lock}: {source}")]
    Io {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
    path: PathBuf,
}

impl DaemonLock {
    pub fn lock_path(db: &Path) -> PathBuf {
        let mut p = db.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Takes the lock or fails at once (no waiting: a second daemon should exit, not queue).
    pub fn acquire(db: &Path) -> Result<Self, LockError> {
        let path = Self::lock_path(db);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o660)
            // A link planted at the lock path must not make forgetd create or truncate the file
            // it points to.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|source| {
                if source.raw_os_error() == Some(libc::ELOOP) {
                    LockError::Symlink { lock: path.clone() }
                } else {
                    LockError::Io {
                        lock: path.clone(),
                        source,
                    }
                }
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held {
                db: db.to_path_buf(),
                lock: path,
            }),
            Err(TryLockError::Error(source)) => Err(LockError::Io { lock: path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f.db");
        let first = DaemonLock::acquire(&db).unwrap();
        assert!(matches!(
            DaemonLock::acquire(&db),
            Err(LockError::Held { .. })
        ));
        drop(first);
        DaemonLock::acquire(&db).unwrap();
    }

    #[test]
    fn a_symlink_at_the_lock_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f.db");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, DaemonLock::lock_path(&db)).unwrap();
        let err = DaemonLock::acquire(&db).unwrap_err();
        assert!(matches!(err, LockError::Symlink { .. }), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
