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
        let mut replaced = 0;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                // A link planted at the lock path must not make forgetd create or truncate the
                // file it points to; a FIFO planted there must not block the open.
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path);
            // A FIFO with no reader refuses a non-blocking write open: not a lock file either.
            if let Err(e) = &file
                && e.raw_os_error() == Some(libc::ENXIO)
                && replaced < 2
            {
                tracing::warn!(lock = %path.display(), "the lock path is not a plain file (planted in the shared directory?): replacing it with forgetd's own");
                std::fs::remove_file(&path).map_err(io)?;
                replaced += 1;
                continue;
            }
            let file = file.map_err(|source| {
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
            // Only a regular file with no other name is a lock file: a hard link to the
            // database (or any other file) planted at the lock path is not ours to lock or chmod.
            let plain = meta.file_type().is_file() && meta.nlink() == 1;
            // A file others may open (one made before lock files were 0600) may be open in
            // someone else's process already, ready to lock: replaced, not chmod-ed.
            let private = meta.permissions().mode() & 0o077 == 0;
            // Trusted owners: this user, root, the directory's owner (forgetd, whose daemon made
            // it) and the database file's owner (the service user, where root owns the
            // directory): never a group member.
            let db_owner = std::fs::symlink_metadata(db).ok().map(|m| m.uid());
            let trusted = plain
                && private
                && (owner == me
                    || owner == 0
                    || owner == dir_meta.uid()
                    || Some(owner) == db_owner);
            if !trusted {
                // Someone else's file (a group member planted it, perhaps holding a lock on it):
                // not ours to honour. Unlinked and made again (the lock file's name only: a
                // hard link's other name stays).
                if replaced >= 2 {
                    return Err(LockError::Planted { lock: path, owner });
                }
                tracing::warn!(lock = %path.display(), owner, "the lock file belongs to another user or is not a plain file (planted in the shared directory?): replacing it with forgetd's own");
                drop(file);
                std::fs::remove_file(&path).map_err(io)?;
                replaced += 1;
                continue;
            }
            if me == 0 && owner == 0 && dir_meta.uid() != 0 {
                // Made by root: handed to the directory's owner, who runs the daemon.
                std::os::unix::fs::fchown(&file, Some(dir_meta.uid()), Some(dir_meta.gid()))
                    .map_err(io)?;
            }
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        db: db.to_path_buf(),
                        lock: path,
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(LockError::Io { lock: path, source });
                }
            }
            // The file locked must still be the one at the path: another start may have
            // replaced it between our open and our lock (then that start's file is the lock).
            match std::fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {
                    return Ok(Self { _file: file, path });
                }
                _ if replaced < 3 => {
                    replaced += 1;
                    continue;
                }
                _ => return Err(LockError::Planted { lock: path, owner }),
            }
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
        // 0600 and theirs, as forgetd's own would be: its owner is what gives it away.
        let script = format!(
            "umask 077; touch {0}; flock -s {0} -c 'sleep 3'",
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
    fn a_hard_link_or_a_fifo_at_the_lock_path_is_replaced_and_the_other_file_untouched() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("f.db");
        std::fs::write(&db, b"the database").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o660)).unwrap();
        let lock = DaemonLock::lock_path(&db);
        // A group member's `ln forgetd.db forgetd.db.lock`, then a lock on the database.
        std::fs::hard_link(&db, &lock).unwrap();
        let held = std::fs::File::open(&db).unwrap();
        held.lock_shared().unwrap();
        let taken = DaemonLock::acquire(&db).expect("the linked database does not stop it");
        assert_eq!(std::fs::read(&db).unwrap(), b"the database");
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "the database's mode was changed");
        drop((taken, held));
        // A FIFO does not block the start.
        std::fs::remove_file(&lock).unwrap();
        let fifo = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        DaemonLock::acquire(&db).expect("a FIFO at the lock path does not stop it");
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
