//! The audit trail: an append-only, SHA-256 hash-chained record of what forgetd did and why.
//!
//! Rules:
//! - Rows are only ever inserted (the schema's triggers refuse UPDATE and DELETE). Each row's
//!   `hash` is SHA-256 over the previous row's hash and this row's fields, so altering, removing
//!   or reordering any row breaks every link after it; `Store::verify_audit` names the first
//!   broken one.
//! - Appends happen inside the caller's IMMEDIATE transaction (read the last hash, insert), so the
//!   daemon's and the CLI's appends are serialized by SQLite's write lock and an event is recorded
//!   in the same commit as the change it describes.
//! - The chain is **keyed** (schema 6): every link gets a *seal*, HMAC-SHA256 under the chain key
//!   ([`ChainKey`], derived from the subject key, which only forgetd's user reads) over its
//!   sequence number and hash, kept in the append-only `audit_seals` table. A process that holds
//!   the key (the daemon, `run --once`, the CLI run by root or forgetd) seals each link in the
//!   transaction that appends it. A CLI run by a feeder, without the key, appends unsealed links,
//!   and the daemon seals them *late* (marked so) within a second; it never late-seals a
//!   [`CERTIFYING_KINDS`] link, and a feeder's process never writes one (a request it completes,
//!   by placing a hold, gets its closing event from the daemon). So a writer with the file but
//!   not the key cannot append a certifying link that verifies, nor rewrite a sealed one. Links
//!   from before schema 6 keep verifying: the daemon seals them late at its first start.
//! - Subjects are never written in clear: events carry [`SubjectKey::hash`], an HMAC-SHA256 keyed
//!   by `[audit] subject_key` or a generated key file beside the database (0600). That is
//!   pseudonymous data: still personal data under GDPR, but it proves "this request's person"
//!   without naming them.
//! - Events whose content is read back (the request's closing event, which the certificate is
//!   built from, and its verification) are typed ([`RequestClosed`], [`RequestVerified`],
//!   [`ChatReappeared`]): the writer and the reader share one serde type,
//!   never JSON by string keys.
//!
//! This module is the chain's arithmetic and its types; the statements that append and walk it
//! live in [`crate::store::audit`].

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::secret::{SecretError, SecretRef};

pub mod event;

pub use event::*;

/// Keys the audit chain's seals. Derived from the subject key (HMAC-SHA256 of a fixed label), so
/// it lives where that key lives (0600, forgetd's) and needs no file of its own.
pub struct ChainKey(SecretSlice<u8>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([redacted])")
    }
}

impl ChainKey {
    fn mac(&self, seq: i64, hash: &str, late: bool) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        for part in [
            b"forgetd audit seal v1".as_slice(),
            seq.to_string().as_bytes(),
            hash.as_bytes(),
            if late { b"late" } else { b"at append" },
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The seal of link `seq` with hash `hash`; `late`: sealed after it was appended.
    pub fn seal(&self, seq: i64, hash: &str, late: bool) -> String {
        hex::encode(self.mac(seq, hash, late).finalize().into_bytes())
    }

    /// Whether `seal` is this link's seal (compared in constant time).
    pub fn check(&self, seq: i64, hash: &str, late: bool, seal: &str) -> bool {
        hex::decode(seal).is_ok_and(|given| self.mac(seq, hash, late).verify_slice(&given).is_ok())
    }
}

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of one link. Fields are length-prefixed so no two field lists hash alike.
pub fn link_hash(
    prev: &str,
    seq: i64,
    at: i64,
    kind: &str,
    request_id: Option<i64>,
    data: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev.as_bytes(),
        seq.to_string().as_bytes(),
        at.to_string().as_bytes(),
        kind.as_bytes(),
        request_id
            .map(|r| r.to_string())
            .unwrap_or_default()
            .as_bytes(),
        data.as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verification {
    pub events: u64,
    pub head: String,
    /// The first link that does not hold, if any.
    pub broken: Option<BrokenLink>,
    /// The seals, when the verifier holds the chain key (`None`: not checked, only the hashes).
    pub seals: Option<SealCheck>,
}

/// What the seals said ([`crate::store::Store::verify_audit`] with the chain key).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SealCheck {
    /// Links with a valid seal.
    pub sealed: u64,
    /// Of those, sealed late by the daemon (appended by a process without the key).
    pub late: u64,
    /// Links not sealed yet (appended without the key; the daemon seals them within a second).
    pub unsealed: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

use crate::secret::MIN_SUBJECT_KEY_LEN as MIN_KEY_LEN;

/// The directory a key file is in (`.` for a bare file name).
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Reads the key file without following a link, refusing it when group or others may read it,
/// or when someone else owns it: the database directory is group-writable (feeders share it), so
/// a feeder could plant a key of their own there. The owner must be this process's user, root,
/// or the owner of the directory (forgetd, whose daemon made it).
fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyError::Symlink {
                    path: path.to_path_buf(),
                }
            } else {
                io(e)
            }
        })?;
    let meta = file.metadata().map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Unsafe {
            path: path.to_path_buf(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let dir_owner = dir_of(path).metadata().map(|m| m.uid()).ok();
    let owner = meta.uid();
    if owner != me && owner != 0 && Some(owner) != dir_owner {
        return Err(KeyError::Foreign {
            path: path.to_path_buf(),
            owner,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// A key file's bytes (32 or more), created with 32 random bytes, mode 0600, when it does not
/// exist. Never follows a link; refuses a file group or others may read. Shared by the subject
/// key and the certificate signing key ([`crate::signing`]).
pub fn read_or_create_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match read_key_file(path) {
        Ok(bytes) if bytes.len() >= MIN_KEY_LEN => Ok(bytes),
        Ok(bytes) => Err(KeyError::Short {
            what: path.display().to_string(),
            len: bytes.len(),
        }),
        Err(KeyError::Io { source: e, .. }) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::MetadataExt;
            // Only forgetd's user (the directory's owner) or root makes a key: a file a group
            // member made would be theirs, refused by forgetd ever after (and a key they know).
            let dir = dir_of(path);
            let dir_meta = dir.metadata().map_err(io)?;
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            if me != dir_meta.uid() && me != 0 {
                return Err(KeyError::NotMaker {
                    path: path.to_path_buf(),
                    owner: dir_meta.uid(),
                });
            }
            let key: [u8; 32] = rand::random();
            // The key is written whole to a temporary file (O_EXCL, mode 0600, so never through a
            // planted link) and only then linked into place without overwriting: a process that
            // starts at the same moment (a feeder's CLI call beside the first daemon start) reads
            // either no file or the whole key, never an empty one it would refuse as too short.
            let mut tmp = tempfile::Builder::new()
                .prefix(".forgetd-key-")
                .tempfile_in(dir)
                .map_err(io)?;
            if me == 0 && dir_meta.uid() != 0 {
                // Root makes it for the daemon's user, who must read it.
                std::os::unix::fs::fchown(
                    tmp.as_file(),
                    Some(dir_meta.uid()),
                    Some(dir_meta.gid()),
                )
                .map_err(io)?;
            }
            tmp.write_all(&key).map_err(io)?;
            tmp.as_file().sync_all().map_err(io)?;
            match tmp.persist_noclobber(path) {
                Ok(_) => {
                    // The link itself must survive a power cut: subject hashes depend on it.
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io)?;
                    Ok(key.to_vec())
                }
                // Another process linked its key first: it was whole before it was linked.
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                    read_or_create_key(path)
                }
                Err(e) => Err(io(e.error)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Keys the subject hash.
pub struct SubjectKey(SecretSlice<u8>);

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "a PostgreSQL queue has no database file to keep the {setting} beside: set [audit] {setting} to a secret reference, the same for every instance"
    )]
    NotConfigured { setting: &'static str },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} does not exist yet, and only forgetd's user (user id {owner}, the owner of the database's directory) or root makes it: run this once as that user (`sudo -u forgetd forgetd ...`) or start the daemon, which makes it"
    )]
    NotMaker { path: PathBuf, owner: u32 },
    #[error("key {what} is too short ({len} bytes; needs 32 or more: `head -c 32 /dev/urandom`)")]
    Short { what: String, len: usize },
    #[error(
        "key file {path} is a symbolic link; forgetd does not follow links for its key (replace it with the key file itself)"
    )]
    Symlink { path: PathBuf },
    #[error(
        "key file {path} has mode {mode:04o}: group or others may read it; `chmod 600` it (feeders must not read forgetd's keys: with them they could compute subject hashes or sign certificates)"
    )]
    Unsafe { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} belongs to user id {owner}, not to forgetd, root or this user: someone else may have planted it; remove it (forgetd makes a new one) or configure the key by secret reference"
    )]
    Foreign { path: PathBuf, owner: u32 },
}

impl SubjectKey {
    /// `[audit] subject_key` when configured, or the key file beside the database `db` (created
    /// on first use).
    pub fn load(configured: Option<&SecretRef>, db: Option<&Path>) -> Result<Self, KeyError> {
        if let Some(r) = configured {
            let key = r.read_bytes()?;
            let len = key.expose_secret().len();
            if len < MIN_KEY_LEN {
                return Err(KeyError::Short {
                    what: r.to_string(),
                    len,
                });
            }
            return Ok(Self(key));
        }
        let db = db.ok_or(KeyError::NotConfigured {
            setting: "subject_key",
        })?;
        Self::from_file(&Self::key_path(db))
    }

    pub fn key_path(db: &Path) -> PathBuf {
        let mut p = db.as_os_str().to_owned();
        p.push(".audit-key");
        PathBuf::from(p)
    }

    fn from_file(path: &Path) -> Result<Self, KeyError> {
        Ok(Self(SecretSlice::from(read_or_create_key(path)?)))
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(SecretSlice::from(bytes.to_vec()))
    }

    /// The audit chain's key, derived from this one.
    pub fn chain_key(&self) -> ChainKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        mac.update(b"forgetd audit chain key v1");
        ChainKey(SecretSlice::from(mac.finalize().into_bytes().to_vec()))
    }

    /// The key when this process can read it, without creating it: a CLI run by a feeder has
    /// none (the file is forgetd's, 0600) and works unkeyed; `None` too when the file does not
    /// exist yet (the daemon creates it). A key that exists but is unsafe is an error.
    pub fn load_existing(
        configured: Option<&SecretRef>,
        db: Option<&Path>,
    ) -> Result<Option<Self>, KeyError> {
        if let Some(r) = configured {
            return match r.read_bytes() {
                Ok(key) if key.expose_secret().len() >= MIN_KEY_LEN => Ok(Some(Self(key))),
                Ok(key) => Err(KeyError::Short {
                    what: r.to_string(),
                    len: key.expose_secret().len(),
                }),
                Err(_) => Ok(None),
            };
        }
        let Some(db) = db else {
            return Ok(None);
        };
        match read_key_file(&Self::key_path(db)) {
            Ok(bytes) if bytes.len() >= MIN_KEY_LEN => Ok(Some(Self(SecretSlice::from(bytes)))),
            Ok(bytes) => Err(KeyError::Short {
                what: Self::key_path(db).display().to_string(),
                len: bytes.len(),
            }),
            Err(KeyError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// HMAC-SHA256 of the subject, hex.
    pub fn hash(&self, subject: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        mac.update(subject.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_someone_else_planted_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forgetd.db.signing-key");
        let made = read_or_create_key(&path).unwrap();
        assert_eq!(
            read_or_create_key(&path).unwrap(),
            made,
            "ours: read back as it is"
        );
        // Another user's file (a feeder sharing the directory): only root can make one here.
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; chown has no other preconditions.
        if unsafe { libc::chown(c.as_ptr(), 54_321, 54_321) } != 0 {
            eprintln!("SKIP: not root, cannot give the file to another user");
            return;
        }
        // The directory stays ours (root's), so the file's owner is nobody we trust.
        assert!(matches!(
            read_or_create_key(&path),
            Err(KeyError::Foreign { owner: 54_321, .. })
        ));
    }

    fn chown(path: &Path, uid: u32) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; chown has no other preconditions.
        unsafe { libc::chown(c.as_ptr(), uid, uid) == 0 }
    }

    #[test]
    fn a_key_owned_by_the_owner_of_its_directory_is_the_daemons_and_is_read() {
        // forgetd's daemon made the directory and the key; root (an operator's CLI) reads it.
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("state");
        std::fs::create_dir(&home).unwrap();
        let path = home.join("forgetd.db.audit-key");
        let made = read_or_create_key(&path).unwrap();
        if !chown(&path, 54_321) || !chown(&home, 54_321) {
            eprintln!("SKIP: not root, cannot give the files to another user");
            return;
        }
        assert_eq!(read_or_create_key(&path).unwrap(), made);
        // The same file in a directory the owner does not own is someone else's plant.
        let elsewhere = dir.path().join("planted-key");
        std::fs::rename(&path, &elsewhere).unwrap();
        assert!(matches!(
            read_or_create_key(&elsewhere),
            Err(KeyError::Foreign { owner: 54_321, .. })
        ));
    }

    #[test]
    fn concurrent_first_uses_all_get_the_one_whole_key() {
        for round in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("forgetd.db.audit-key-{round}"));
            let start = std::sync::Barrier::new(4);
            let keys: Vec<_> = std::thread::scope(|t| {
                let runs: Vec<_> = (0..4)
                    .map(|_| {
                        t.spawn(|| {
                            start.wait();
                            read_or_create_key(&path)
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let first = keys[0]
                .as_ref()
                .expect("the first caller gets a key")
                .clone();
            assert_eq!(first.len(), 32);
            for k in &keys {
                assert_eq!(k.as_ref().expect("every caller gets a key"), &first);
            }
            // Nothing but the key is left behind.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn a_key_path_that_cannot_be_made_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // No such directory: creating fails too, and says so (it does not try forever).
        let missing = dir.path().join("no-such-dir").join("key");
        assert!(matches!(
            read_or_create_key(&missing),
            Err(KeyError::Io { path, .. }) if path == missing
        ));
        // A directory where the key should be: it reads as an I/O error, not as absent.
        let taken = dir.path().join("key-dir");
        std::fs::create_dir(&taken).unwrap();
        std::fs::set_permissions(&taken, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        assert!(matches!(
            read_or_create_key(&taken),
            Err(KeyError::Io { path, .. }) if path == taken
        ));
        assert!(taken.is_dir(), "left as it was");
        // A key file that is there but short is refused, not replaced.
        let short = dir.path().join("short-key");
        std::fs::write(&short, [3u8; 31]).unwrap();
        std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        assert!(matches!(
            read_or_create_key(&short),
            Err(KeyError::Short { len: 31, .. })
        ));
        assert_eq!(std::fs::read(&short).unwrap(), [3u8; 31]);
    }

    #[test]
    fn a_key_files_directory_is_its_parent_or_here() {
        assert_eq!(
            dir_of(Path::new("/var/lib/forgetd/k")),
            Path::new("/var/lib/forgetd")
        );
        assert_eq!(dir_of(Path::new("state/k")), Path::new("state"));
        assert_eq!(dir_of(Path::new("k")), Path::new("."));
    }

    /// A key file of `len` bytes of `byte` in `dir`, as a `file:` reference.
    fn key_of(dir: &Path, byte: u8, len: usize) -> SecretRef {
        let f = dir.join(format!("key-{byte}-{len}"));
        std::fs::write(&f, vec![byte; len]).unwrap();
        SecretRef::File(f)
    }

    #[test]
    fn a_configured_subject_key_needs_thirty_two_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("forgetd.db");
        let with = |len: usize| SubjectKey::load(Some(&key_of(dir.path(), 7, len)), Some(&db));
        assert!(matches!(with(31), Err(KeyError::Short { len: 31, .. })));
        for len in [32, 64] {
            let k = with(len).unwrap();
            assert_eq!(
                k.hash("alice"),
                SubjectKey::from_bytes(&vec![7u8; len]).hash("alice")
            );
        }
        assert!(
            !SubjectKey::key_path(&db).exists(),
            "a configured key makes no key file"
        );
    }

    #[test]
    fn an_existing_key_is_read_without_making_one_and_a_short_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("forgetd.db");
        let configured =
            |len: usize| SubjectKey::load_existing(Some(&key_of(dir.path(), 9, len)), Some(&db));
        assert!(matches!(
            configured(31),
            Err(KeyError::Short { len: 31, .. })
        ));
        let k = configured(32).unwrap().expect("a readable configured key");
        assert_eq!(
            k.hash("bob"),
            SubjectKey::from_bytes(&[9u8; 32]).hash("bob")
        );
        // A configured key this process cannot read: it works unkeyed.
        let gone = SecretRef::File(dir.path().join("no-such-key"));
        assert!(
            SubjectKey::load_existing(Some(&gone), Some(&db))
                .unwrap()
                .is_none()
        );

        // The file beside the database: absent is None and stays absent.
        assert!(
            SubjectKey::load_existing(None, Some(&db))
                .unwrap()
                .is_none()
        );
        let path = SubjectKey::key_path(&db);
        assert!(!path.exists(), "load_existing never creates the key");
        let made = SubjectKey::load(None, Some(&db)).unwrap();
        let read = SubjectKey::load_existing(None, Some(&db))
            .unwrap()
            .expect("now it exists");
        assert_eq!(read.hash("bob"), made.hash("bob"));
        std::fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            SubjectKey::load_existing(None, Some(&db)),
            Err(KeyError::Short { len: 31, .. })
        ));
        // A key that is there but cannot be read as a file is an error, not "no key yet".
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        assert!(matches!(
            SubjectKey::load_existing(None, Some(&db)),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn subject_hash_is_keyed_and_stable() {
        let a = SubjectKey::from_bytes(&[1; 32]);
        let b = SubjectKey::from_bytes(&[2; 32]);
        assert_eq!(a.hash("alice"), a.hash("alice"));
        assert_ne!(a.hash("alice"), b.hash("alice"));
        assert!(!a.hash("alice").contains("alice"));
    }
}
