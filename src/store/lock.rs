//! The daemon lock: proof that no other worker holds a lease on this database.
//!
//! An exclusive `flock` on `<database>.lock`, a separate file beside the database (never a lock
//! row, never a second open of the database file, whose POSIX locks SQLite owns). The kernel drops
//! it when the process dies, however it dies, so a crash never leaves a stale lock. CLI commands do
//! not take it: their short writes run alongside the daemon under SQLite's own locking.
//!
//! The lock file is forgetd's alone: mode 0600, owned by the owner of the database's directory
//! (forgetd's user; root hands a file it creates over to that owner). The directory is
//! group-writable, so a group member (a feeder) could otherwise hold a shared lock on it and keep
//! the daemon from starting, or plant a file of their own there first: a lock file owned by
//! anyone else is replaced, and one a group or others may open is made 0600.

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
    #[error(
        "cannot open lock file {lock} ({source}): it is forgetd's own (mode 0600); run the daemon as forgetd's user (the owner of the database's directory) or root"
    )]
    NotOurs {
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "lock file {lock} belongs to user id {owner} and came back after forgetd replaced it: someone keeps planting it; find who (`ls -ln`), then remove it"
    )]
    Planted { lock: PathBuf, owner: u32 },
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
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = Self::lock_path(db);
        let io = |source| LockError::Io {
            lock: path.clone(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir_meta = dir.metadata().map_err(io)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let mut replaced = false;
        let file = loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                // A link planted at the lock path must not make forgetd create or truncate the
                // file it points to.
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| {
                    if source.raw_os_error() == Some(libc::ELOOP) {
                        LockError::Symlink { lock: path.clone() }
                    } else if source.kind() == std::io::ErrorKind::PermissionDenied {
                        LockError::NotOurs {
                            lock: path.clone(),
                            source,
                        }
                    } else {
                        io(source)
                    }
                })?;
            let meta = file.metadata().map_err(io)?;
            let owner = meta.uid();
            if owner == dir_meta.uid() || owner == me {
                break file;
            }
            if owner == 0 && me == 0 {
                // Made by root: handed to the directory's owner, who runs the daemon.
                std::os::unix::fs::fchown(&file, Some(dir_meta.uid()), Some(dir_meta.gid()))
                    .map_err(io)?;
                break file;
            }
            if owner == 0 {
                // A forgetd run as root made it before root handed its files over; this process
                // could open it only because it is readable: trust it as root's.
                break file;
            }
            // Someone else's file (a group member planted it, perhaps holding a lock on it):
            // not ours to honour. Unlinked and made again, once.
            if replaced {
                return Err(LockError::Planted { lock: path, owner });
            }
            tracing::warn!(lock = %path.display(), owner, "the lock file belongs to another user (planted in the shared directory?): replacing it with forgetd's own");
            std::fs::remove_file(&path).map_err(io)?;
            replaced = true;
        };
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
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

    /// Runs `sh -c script` as uid 54321 in group `gid` (a group member without forgetd's uid),
    /// in the background; `None` where `setpriv` is missing or this is not root.
    fn as_group_member(gid: u32, script: &str) -> Option<std::process::Child> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        std::process::Command::new("setpriv")
            .args([
                "--reuid=54321",
                &format!("--regid={gid}"),
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .spawn()
            .ok()
    }

    /// A directory shared as the database's is: group-writable, group `gid`.
    fn shared_dir() -> (tempfile::TempDir, u32) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
        let gid = dir.path().metadata().unwrap().gid();
        (dir, gid)
    }

    #[test]
    fn a_group_member_cannot_hold_the_daemon_lock() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, gid) = shared_dir();
        let db = dir.path().join("f.db");
        // An old lock file, group-readable as forgetd made them before: made 0600 on the take.
        let lock = DaemonLock::lock_path(&db);
        std::fs::write(&lock, b"").unwrap();
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o660)).unwrap();
        drop(DaemonLock::acquire(&db).unwrap());
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The attack: `flock -s forgetd.db.lock sleep` as a group member.
        let script = format!("flock -s {} -c 'sleep 3'", lock.display());
        let Some(mut member) = as_group_member(gid, &script) else {
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let taken = DaemonLock::acquire(&db);
        let _ = member.kill();
        let _ = member.wait();
        assert!(taken.is_ok(), "{:?}", taken.err());
    }

    #[test]
    fn a_lock_file_a_group_member_planted_and_holds_is_replaced() {
        let (dir, gid) = shared_dir();
        let db = dir.path().join("f.db");
        let lock = DaemonLock::lock_path(&db);
        let script = format!(
            "umask 000; touch {0}; flock -s {0} -c 'sleep 3'",
            lock.display()
        );
        let Some(mut member) = as_group_member(gid, &script) else {
            return;
        };
        // Until the member's file is there and locked.
        for _ in 0..50 {
            if lock.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let taken = DaemonLock::acquire(&db);
        let _ = member.kill();
        let _ = member.wait();
        let taken = taken.expect("the planted lock file does not stop the daemon");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(taken.path()).unwrap().uid(), 0);
        // And with forgetd's own lock held, a second daemon is still refused.
        assert!(matches!(
            DaemonLock::acquire(&db),
            Err(LockError::Held { .. })
        ));
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
