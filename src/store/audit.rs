//! The audit trail's statements: appending a link inside the caller's transaction, walking the
//! chain, the head, and reading a request's closing event back as its typed form
//! ([`crate::audit::RequestClosed`]). The chain's arithmetic and rules are [`crate::audit`]'s.

use std::ops::ControlFlow;

use super::Tx;
use super::db::{Engine, Sql};
use crate::args;

use super::{Result, Store};
use crate::audit::{
    BrokenLink, GENESIS, RequestClosed, RequestVerified, SealCheck, Verification, link_hash,
};

/// Appends one event, sealed when the transaction carries the chain key; returns its hash.
pub fn append(
    tx: &Tx<'_>,
    at: i64,
    kind: &str,
    request_id: Option<i64>,
    data: &serde_json::Value,
) -> Result<String> {
    let (prev_seq, prev_hash): (i64, String) = tx
        .row_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let data = data.to_string();
    let hash = link_hash(&prev_hash, seq, at, kind, request_id, &data);
    tx.exec(
        "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![seq, at, kind, request_id, data, prev_hash, hash],
    )?;
    if let Some(key) = tx.chain_key() {
        tx.exec(
            "INSERT INTO audit_seals (seq, seal, late) VALUES (?1, ?2, 0)",
            args![seq, key.seal(seq, &hash, false)],
        )?;
    }
    Ok(hash)
}

/// A request's closing event: its sequence number, hash and content.
#[derive(Debug, Clone)]
pub struct ClosingEvent {
    pub seq: i64,
    pub hash: String,
    pub closed: RequestClosed,
}

/// A request's `request.verified` event: its sequence number, hash and content.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    pub seq: i64,
    pub hash: String,
    pub verified: RequestVerified,
}

/// The triggers that make the audit table and its seals append-only (the schema's).
pub const APPEND_ONLY_TRIGGERS: [&str; 4] = [
    "audit_log_is_append_only_no_update",
    "audit_log_is_append_only_no_delete",
    "audit_seals_are_append_only_no_update",
    "audit_seals_are_append_only_no_delete",
];

/// What late sealing did ([`Store::seal_late`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LateSeals {
    pub sealed: u64,
    /// Unsealed certifying links after the chain became keyed: written without the key (forged,
    /// or by an old forgetd). Never sealed; `audit verify` reports them.
    pub refused: Vec<i64>,
}

impl Store {
    /// The append-only triggers that are missing (someone dropped them to edit the trail).
    pub fn missing_audit_triggers(&self) -> Result<Vec<&'static str>> {
        let mut missing = Vec::new();
        for name in APPEND_ONLY_TRIGGERS {
            // On PostgreSQL a trigger can also be disabled, its quiet way to stop one.
            let sql = match self.engine() {
                Engine::Sqlite => {
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1"
                }
                Engine::Postgres => {
                    "SELECT count(*) FROM pg_trigger WHERE tgname = ?1 AND NOT tgisinternal AND tgenabled <> 'D'"
                }
            };
            let n: i64 = self.row(sql, args![name], |r| r.get(0))?;
            if n == 0 {
                missing.push(name);
            }
        }
        Ok(missing)
    }

    /// Walks the chain from the start.
    pub fn verify_audit(&self) -> Result<Verification> {
        verify(self)
    }

    /// The last `request.completed` / `request.failed` event of a request, if it finished.
    pub fn closing_event(&self, request_id: i64) -> Result<Option<ClosingEvent>> {
        let row: Option<(i64, String, String)> = self.row_opt(
            "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
               AND kind IN ('request.completed', 'request.failed')
             ORDER BY seq DESC LIMIT 1",
            args![request_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let Some((seq, hash, data)) = row else {
            return Ok(None);
        };
        let closed = serde_json::from_str(&data).map_err(|e| {
            super::StoreError::Invalid(format!(
                "audit event {seq} (a request's closing event) does not read as one: {e}"
            ))
        })?;
        Ok(Some(ClosingEvent { seq, hash, closed }))
    }

    /// The request's `request.verified` event recorded after event `since` (its closing event):
    /// a verification of an earlier completion does not speak for a later one.
    pub fn verified_event(&self, request_id: i64, since: i64) -> Result<Option<VerifiedEvent>> {
        let row: Option<(i64, String, String)> = self.row_opt(
            "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
               AND kind = 'request.verified' AND seq > ?2
             ORDER BY seq DESC LIMIT 1",
            args![request_id, since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let Some((seq, hash, data)) = row else {
            return Ok(None);
        };
        let verified = serde_json::from_str(&data).map_err(|e| {
            super::StoreError::Invalid(format!(
                "audit event {seq} (a request's verification) does not read as one: {e}"
            ))
        })?;
        Ok(Some(VerifiedEvent {
            seq,
            hash,
            verified,
        }))
    }

    /// The last event's sequence number and hash, if any.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>> {
        self.row_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Seals the links other processes appended without the key (marked late), in order, each
    /// checked against its content and its predecessor first; never a certifying link appended
    /// after the chain became keyed. Stops at the first link that does not hold (`audit verify`
    /// names it). Does nothing without the key.
    pub fn seal_late(&mut self) -> Result<LateSeals> {
        if !self.holds_chain_key() {
            return Ok(LateSeals::default());
        }
        self.write(|tx| {
            let key = tx.chain_key().expect("checked above");
            let keyed_from = keyed_from(tx)?;
            let rows: Vec<Unsealed> = tx.rows(
                "SELECT a.seq, a.at, a.kind, a.request_id, a.data, a.prev_hash, a.hash,
                        (SELECT p.hash FROM audit_log p WHERE p.seq = a.seq - 1)
                 FROM audit_log a LEFT JOIN audit_seals s ON s.seq = a.seq
                 WHERE s.seq IS NULL ORDER BY a.seq",
                args![],
                |r| {
                    Ok(Unsealed {
                        seq: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        request_id: r.get(3)?,
                        data: r.get(4)?,
                        prev_hash: r.get(5)?,
                        hash: r.get(6)?,
                        before: r.get(7)?,
                    })
                },
            )?;
            let mut out = LateSeals::default();
            for u in rows {
                let prev_ok = match &u.before {
                    Some(h) => *h == u.prev_hash,
                    None => u.seq == 1 && u.prev_hash == GENESIS,
                };
                let content_ok =
                    link_hash(&u.prev_hash, u.seq, u.at, &u.kind, u.request_id, &u.data) == u.hash;
                if !prev_ok || !content_ok {
                    tracing::error!(
                        seq = u.seq,
                        "audit link does not hold; not sealing it or anything after it: run `forgetd audit verify`"
                    );
                    break;
                }
                if u.seq >= keyed_from && crate::audit::CERTIFYING_KINDS.contains(&u.kind.as_str()) {
                    tracing::error!(
                        seq = u.seq,
                        kind = u.kind,
                        "an unsealed certifying audit link: only a process with the chain key writes these, so it was forged or written by an old forgetd; not sealed (`forgetd audit verify` reports it)"
                    );
                    out.refused.push(u.seq);
                    continue;
                }
                tx.exec(
                    "INSERT INTO audit_seals (seq, seal, late) VALUES (?1, ?2, 1)",
                    args![u.seq, key.seal(u.seq, &u.hash, true)],
                )?;
                out.sealed += 1;
            }
            Ok(out)
        })
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

struct Unsealed {
    seq: i64,
    at: i64,
    kind: String,
    request_id: Option<i64>,
    data: String,
    prev_hash: String,
    hash: String,
    /// The previous link's hash.
    before: Option<String>,
}

/// The first link appended under the keyed schema.
fn keyed_from(db: &impl Sql) -> Result<i64> {
    Ok(db
        .row_opt(
            "SELECT keyed_from_seq FROM audit_keying WHERE id = 1",
            args![],
            |r| r.get(0),
        )?
        .unwrap_or(1))
}

/// Walks the chain from the start.
fn verify(store: &Store) -> Result<Verification> {
    let key = store.chain_key.as_deref();
    let keyed_from = keyed_from(store)?;
    let mut seals = key.map(|_| SealCheck::default());
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1i64;
    let mut events = 0u64;
    let sql =
        "SELECT a.seq, a.at, a.kind, a.request_id, a.data, a.prev_hash, a.hash, s.seal, s.late
         FROM audit_log a LEFT JOIN audit_seals s ON s.seq = a.seq ORDER BY a.seq";
    let broke = store.scan(sql, args![], |r| {
        let seq: i64 = r.get(0)?;
        let at: i64 = r.get(1)?;
        let kind: String = r.get(2)?;
        let request_id: Option<i64> = r.get(3)?;
        let data: String = r.get(4)?;
        let prev: String = r.get(5)?;
        let hash: String = r.get(6)?;
        let seal: Option<String> = r.get(7)?;
        let late: Option<bool> = r.get(8)?;
        let broken = |reason: String| Verification {
            events,
            head: expected_prev.clone(),
            broken: Some(BrokenLink { seq, reason }),
            seals: None,
        };
        if seq != expected_seq {
            return Ok(ControlFlow::Break(broken(format!(
                "event {expected_seq} is missing (next is {seq})"
            ))));
        }
        if prev != expected_prev {
            return Ok(ControlFlow::Break(broken(format!(
                "event {seq} does not link to event {}",
                seq - 1
            ))));
        }
        if link_hash(&prev, seq, at, &kind, request_id, &data) != hash {
            return Ok(ControlFlow::Break(broken(format!(
                "event {seq} ({kind}) was altered: its hash does not match its content"
            ))));
        }
        if let (Some(key), Some(check)) = (key, seals.as_mut()) {
            let certifying = crate::audit::CERTIFYING_KINDS.contains(&kind.as_str());
            match (&seal, late) {
                (Some(mac), Some(late)) => {
                    if !key.check(seq, &hash, late, mac) {
                        return Ok(ControlFlow::Break(broken(format!(
                            "event {seq} ({kind}) has a seal that is not forgetd's: the link or its seal was forged"
                        ))));
                    }
                    if late && certifying && seq >= keyed_from {
                        return Ok(ControlFlow::Break(broken(format!(
                            "event {seq} ({kind}) is a certifying event sealed late; forgetd seals those only as it writes them"
                        ))));
                    }
                    check.sealed += 1;
                    check.late += u64::from(late);
                }
                _ if certifying && seq >= keyed_from => {
                    return Ok(ControlFlow::Break(broken(format!(
                        "event {seq} ({kind}) is a certifying event without a seal: written without forgetd's chain key, so forged (or by a forgetd older than schema 6)"
                    ))));
                }
                _ => check.unsealed += 1,
            }
        }
        expected_prev = hash;
        expected_seq += 1;
        events += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(broken) = broke {
        return Ok(broken);
    }
    Ok(Verification {
        events,
        head: expected_prev,
        broken: None,
        seals,
    })
}

#[cfg(test)]
mod tests {
    use crate::store::testing::temp_store;

    /// A chain written by a forgetd before schema 6 (no seals, certifying links included) keeps
    /// verifying after the upgrade, and the daemon's first start seals it.
    #[test]
    fn an_unkeyed_chain_from_before_schema_6_keeps_verifying_and_is_sealed_late() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forgetd.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            rusqlite_migration::Migrations::new(super::super::MIGRATIONS[..5].to_vec())
                .to_latest(&mut conn)
                .unwrap();
            let tx = conn.transaction().unwrap();
            let tx = super::Tx::from_sqlite(tx, None);
            for (i, kind) in ["config.loaded", "batch.answered", "request.completed"]
                .iter()
                .enumerate()
            {
                super::append(&tx, 100 + i as i64, kind, Some(1), &serde_json::json!({})).unwrap();
            }
            tx.commit().unwrap();
        }
        let mut s = crate::store::Store::open(&path).unwrap();
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        let v = s.verify_audit().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(v.seals.as_ref().unwrap().unsealed, 3);
        let late = s.seal_late().unwrap();
        assert_eq!((late.sealed, late.refused.len()), (3, 0));
        // New links are sealed at append; the legacy ones stay verifiable, marked late.
        s.audit(200, "batch.answered", None, &serde_json::json!({}))
            .unwrap();
        let v = s.verify_audit().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        let c = v.seals.unwrap();
        assert_eq!((c.sealed, c.late, c.unsealed), (4, 3, 0));
    }

    #[test]
    fn the_head_is_the_last_link_appended() {
        let (_d, mut s) = temp_store();
        assert_eq!(s.audit_head().unwrap(), None, "an empty trail has no head");
        s.audit(100, "test", None, &serde_json::json!({"n": 1}))
            .unwrap();
        let second = s
            .audit(101, "test", Some(7), &serde_json::json!({"n": 2}))
            .unwrap();
        assert_eq!(s.audit_head().unwrap(), Some((2, second)));
    }

    /// A first link whose `prev_hash` is not the genesis value was not made by forgetd, even if
    /// its own hash is consistent with it: late sealing stops there and seals nothing.
    #[test]
    fn a_forged_first_link_is_never_sealed_late() {
        let (_d, mut s) = temp_store();
        let wrong_prev = "f".repeat(64);
        let data = "{}";
        let hash = crate::audit::link_hash(&wrong_prev, 1, 100, "config.loaded", None, data);
        s.connection()
            .execute(
                "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash)
                 VALUES (1, 100, 'config.loaded', NULL, ?1, ?2, ?3)",
                rusqlite::params![data, wrong_prev, hash],
            )
            .unwrap();
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        let late = s.seal_late().unwrap();
        assert_eq!((late.sealed, late.refused.len()), (0, 0), "{late:?}");
        let seals: i64 = s
            .connection()
            .query_row("SELECT count(*) FROM audit_seals", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seals, 0);
    }

    #[test]
    fn verify_passes_untouched_and_names_the_altered_link() {
        let (_d, mut s) = temp_store();
        for i in 0..5 {
            s.audit(100 + i, "test", Some(i), &serde_json::json!({"n": i}))
                .unwrap();
        }
        let v = s.verify_audit().unwrap();
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
        let v = s.verify_audit().unwrap();
        assert_eq!(v.broken.as_ref().map(|b| b.seq), Some(3), "{v:?}");
    }
}
