//! The audit trail: an append-only, SHA-256 hash-chained record of what forgetd did and why.
//!
//! Rules:
//! - Rows are only ever inserted (the schema's triggers refuse UPDATE and DELETE). Each row's
//!   `hash` is SHA-256 over the previous row's hash and this row's fields, so altering, removing
//!   or reordering any row breaks every link after it; [`verify`] names the first broken one.
//! - Appends happen inside the caller's IMMEDIATE transaction (read the last hash, insert), so the
//!   daemon's and the CLI's appends are serialized by SQLite's write lock and an event is recorded
//!   in the same commit as the change it describes.
//! - Subjects are never written in clear: events carry [`SubjectKey::hash`], an HMAC-SHA256 keyed
//!   by `[audit] subject_key` or a generated key file beside the database (0600). That is
//!   pseudonymous data: still personal data under GDPR, but it proves "this request's person"
//!   without naming them.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, Transaction, params};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, SecretError};
use crate::store::{Result, Store};

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends one event; returns its hash.
pub fn append(
    tx: &Transaction<'_>,
    at: i64,
    kind: &str,
    request_id: Option<i64>,
    data: &serde_json::Value,
) -> Result<String> {
    let (prev_seq, prev_hash): (i64, String) = tx
        .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let data = data.to_string();
    let hash = link_hash(&prev_hash, seq, at, kind, request_id, &data);
    tx.prepare_cached("INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![seq, at, kind, request_id, data, prev_hash, hash])?;
    Ok(hash)
}

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
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// Walks the chain from the start.
pub fn verify(store: &Store) -> Result<Verification> {
    let mut stmt = store.connection().prepare(
        "SELECT seq, at, kind, request_id, data, prev_hash, hash FROM audit_log ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1i64;
    let mut events = 0u64;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let at: i64 = r.get(1)?;
        let kind: String = r.get(2)?;
        let request_id: Option<i64> = r.get(3)?;
        let data: String = r.get(4)?;
        let prev: String = r.get(5)?;
        let hash: String = r.get(6)?;
        let broken = |reason: String| Verification {
            events,
            head: expected_prev.clone(),
            broken: Some(BrokenLink { seq, reason }),
        };
        if seq != expected_seq {
            return Ok(broken(format!(
                "event {expected_seq} is missing (next is {seq})"
            )));
        }
        if prev != expected_prev {
            return Ok(broken(format!(
                "event {seq} does not link to event {}",
                seq - 1
            )));
        }
        if link_hash(&prev, seq, at, &kind, request_id, &data) != hash {
            return Ok(broken(format!(
                "event {seq} ({kind}) was altered: its hash does not match its content"
            )));
        }
        expected_prev = hash;
        expected_seq += 1;
        events += 1;
    }
    Ok(Verification {
        events,
        head: expected_prev,
        broken: None,
    })
}

use crate::config::MIN_SUBJECT_KEY_LEN as MIN_KEY_LEN;

/// Reads the key file without following a link, refusing it when group or others may read it.
fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
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
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Unsafe {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
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
    #[error("audit key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "audit key {what} is too short ({len} bytes; needs 32 or more: `head -c 32 /dev/urandom`)"
    )]
    Short { what: String, len: usize },
    #[error(
        "audit key file {path} is a symbolic link; forgetd does not follow links for its key (replace it with the key file itself)"
    )]
    Symlink { path: PathBuf },
    #[error(
        "audit key file {path} has mode {mode:04o}: group or others may read it; `chmod 600` it (feeders must not be able to compute subject hashes)"
    )]
    Unsafe { path: PathBuf, mode: u32 },
}

impl SubjectKey {
    /// `[audit] subject_key`, or the key file beside the database (created on first use).
    pub fn load(config: &Config) -> Result<Self, KeyError> {
        if let Some(r) = &config.audit.subject_key {
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
        Self::from_file(&Self::key_path(&config.database))
    }

    pub fn key_path(db: &Path) -> PathBuf {
        let mut p = db.as_os_str().to_owned();
        p.push(".audit-key");
        PathBuf::from(p)
    }

    fn from_file(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match read_key_file(path) {
            Ok(bytes) if bytes.len() >= MIN_KEY_LEN => Ok(Self(SecretSlice::from(bytes))),
            Ok(bytes) => Err(KeyError::Short {
                what: path.display().to_string(),
                len: bytes.len(),
            }),
            Err(KeyError::Io { source: e, .. }) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                use std::io::Write;
                // create_new (O_EXCL) never follows a link planted at the path.
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                {
                    Ok(mut f) => {
                        f.write_all(&key).map_err(io)?;
                        f.sync_all().map_err(io)?;
                        Ok(Self(SecretSlice::from(key.to_vec())))
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Self::from_file(path)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(SecretSlice::from(bytes.to_vec()))
    }

    /// HMAC-SHA256 of the subject, hex.
    pub fn hash(&self, subject: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        mac.update(subject.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

impl Store {
    /// The last event's sequence number and hash, if any.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>> {
        Ok(self
            .connection()
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Appends one event in its own transaction (for callers outside a larger write).
    pub fn audit(
        &mut self,
        at: i64,
        kind: &str,
        request_id: Option<i64>,
        data: &serde_json::Value,
    ) -> Result<String> {
        self.write(|tx| append(tx, at, kind, request_id, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    #[test]
    fn verify_passes_untouched_and_names_the_altered_link() {
        let (_d, mut s) = temp_store();
        for i in 0..5 {
            s.audit(100 + i, "test", Some(i), &serde_json::json!({"n": i}))
                .unwrap();
        }
        let v = verify(&s).unwrap();
        assert_eq!(v.events, 5);
        assert!(v.broken.is_none());
        // UPDATE and DELETE are refused ...
        assert!(
            s.connection()
                .execute("UPDATE audit_log SET data = '{}' WHERE seq = 3", [])
                .is_err()
        );
        assert!(
            s.connection()
                .execute("DELETE FROM audit_log WHERE seq = 3", [])
                .is_err()
        );
        // ... so a tamperer drops the trigger first; verify still finds it.
        s.connection()
            .execute_batch("DROP TRIGGER audit_log_is_append_only_no_update; UPDATE audit_log SET data = '{\"n\":99}' WHERE seq = 3;")
            .unwrap();
        let v = verify(&s).unwrap();
        assert_eq!(v.broken.as_ref().map(|b| b.seq), Some(3), "{v:?}");
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
