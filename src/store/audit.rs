//! The audit trail's statements: appending a link inside the caller's transaction, walking the
//! chain, the head, and reading a request's closing event back as its typed form
//! ([`crate::audit::RequestClosed`]). The chain's arithmetic and rules are [`crate::audit`]'s.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Result, Store};
use crate::audit::{BrokenLink, GENESIS, RequestClosed, RequestVerified, Verification, link_hash};

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

/// The triggers that make the audit table append-only (the schema's).
pub const APPEND_ONLY_TRIGGERS: [&str; 2] = [
    "audit_log_is_append_only_no_update",
    "audit_log_is_append_only_no_delete",
];

impl Store {
    /// The append-only triggers that are missing (someone dropped them to edit the trail).
    pub fn missing_audit_triggers(&self) -> Result<Vec<&'static str>> {
        let mut missing = Vec::new();
        for name in APPEND_ONLY_TRIGGERS {
            let n: i64 = self.conn.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                [name],
                |r| r.get(0),
            )?;
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
        let row: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
                   AND kind IN ('request.completed', 'request.failed')
                 ORDER BY seq DESC LIMIT 1",
                [request_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
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
        let row: Option<(i64, String, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
                   AND kind = 'request.verified' AND seq > ?2
                 ORDER BY seq DESC LIMIT 1",
                params![request_id, since],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
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
        Ok(self
            .conn
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

/// Walks the chain from the start.
fn verify(store: &Store) -> Result<Verification> {
    let mut stmt = store.conn.prepare(
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

#[cfg(test)]
mod tests {
    use crate::store::testing::temp_store;

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
