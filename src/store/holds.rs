//! Legal holds: a subject, or one chat, excluded from every deletion while the hold stands.
//!
//! Rules: a hold turns covered *pending* items into `held` at once (an item already in flight is
//! on the wire; if its answer sends it back to pending, the executor re-applies holds before it can
//! be claimed again). Lifting a hold returns its items to pending unless another hold still covers
//! them. A subject hold covers only chats the inventory says belong to that subject: a chat found
//! by provider listing with no owner is not covered (hold the chat itself).
//! Coverage is the `item_holds` view in the schema, so SQL and Rust cannot disagree on it.

use rusqlite::{OptionalExtension, params};

use super::Tx;
use serde::Serialize;

use super::{Result, Store, StoreError};
use crate::model::ChatKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldTarget {
    Subject(String),
    Chat(ChatKey),
}

#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub id: i64,
    pub subject: Option<String>,
    pub provider: Option<String>,
    pub scope: Option<String>,
    pub session_id: Option<String>,
    pub reason: String,
    pub created_at: i64,
    /// Queued items this hold currently keeps from deletion (an item covered by two holds is
    /// counted under the first).
    pub items_held: u64,
    /// Chats known in the inventory that this hold covers, queued or not: every chat still
    /// recorded for the subject, or the one chat.
    pub chats_covered: u64,
}

/// Marks pending items covered by an active hold as held. `only` limits the sweep to some items.
/// Returns the ids of items that became held.
pub(crate) fn apply_holds(tx: &Tx<'_>, only: Option<&[i64]>) -> Result<Vec<i64>> {
    let sql = "UPDATE work_items
               SET state = 'held', hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
               WHERE state = 'pending' AND id = ?1 AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id)
               RETURNING id";
    let mut held = Vec::new();
    match only {
        Some(ids) => {
            let mut stmt = tx.prepare_cached(sql)?;
            for id in ids {
                if let Some(h) = stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
                    held.push(h);
                }
            }
        }
        None => {
            let mut stmt = tx.prepare(
                "UPDATE work_items
                 SET state = 'held', hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
                 WHERE state = 'pending' AND id IN (SELECT item_id FROM item_holds)
                 RETURNING id",
            )?;
            for r in stmt.query_map([], |r| r.get::<_, i64>(0))? {
                held.push(r?);
            }
        }
    }
    Ok(held)
}

impl Store {
    /// Items of an in-flight batch that an active hold now covers (checked right before sending).
    pub fn held_in_batch(&self, batch_id: i64) -> Result<Vec<i64>> {
        let any: bool = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM holds WHERE removed_at IS NULL)")?
            .query_row([], |r| r.get(0))?;
        if !any {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT w.id FROM work_items w WHERE w.batch_id = ?1 AND w.state = 'in_flight'
               AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = w.id)",
        )?;
        let ids = stmt
            .query_map([batch_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(ids)
    }

    /// Places a hold; returns its id and the items it took out of the queue.
    pub fn add_hold(
        &mut self,
        target: &HoldTarget,
        reason: &str,
        now: i64,
    ) -> Result<(i64, Vec<i64>)> {
        self.write(|tx| {
            match target {
                HoldTarget::Subject(s) => tx.execute(
                    "INSERT INTO holds (subject, reason, created_at) VALUES (?1, ?2, ?3)",
                    params![s, reason, now],
                )?,
                HoldTarget::Chat(c) => tx.execute(
                    "INSERT INTO holds (provider, scope, session_id, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![c.provider.as_str(), c.scope, c.session_id, reason, now],
                )?,
            };
            let id = tx.last_insert_rowid();
            let held = apply_holds(tx, None)?;
            // The subject itself stays out of the audit trail; the hold's id leads to it.
            let target = match target {
                HoldTarget::Subject(_) => serde_json::json!({"kind": "subject"}),
                HoldTarget::Chat(c) => serde_json::json!({"kind": "chat", "provider": c.provider, "scope": c.scope, "session_id": c.session_id}),
            };
            super::audit::append(tx, now, "hold.placed", None, &serde_json::json!({"hold_id": id, "target": target, "reason": reason, "items_held": held.len()}))?;
            super::requests::refresh_for_items(tx, &held, now)?;
            Ok((id, held))
        })
    }

    /// Lifts a hold; returns the items that went back to pending.
    pub fn remove_hold(&mut self, id: i64, now: i64) -> Result<Vec<i64>> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE holds SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL",
                params![id, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no active hold with id {id}")));
            }
            let mut stmt = tx.prepare(
                "UPDATE work_items SET state = 'pending', hold_id = NULL, next_attempt_ms = 0
                 WHERE state = 'held' AND hold_id = ?1 RETURNING id",
            )?;
            let released: Vec<i64> = stmt
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            drop(stmt);
            // Another hold may still cover some of them.
            let reheld = apply_holds(tx, Some(&released))?;
            let freed: Vec<i64> = released
                .into_iter()
                .filter(|i| !reheld.contains(i))
                .collect();
            super::requests::refresh_for_items(tx, &freed, now)?;
            Ok(freed)
        })
    }

    pub fn list_holds(&self) -> Result<Vec<Hold>> {
        let mut stmt = self.conn.prepare(
            "SELECT h.id, h.subject, h.provider, h.scope, h.session_id, h.reason, h.created_at,
                    (SELECT count(*) FROM work_items w WHERE w.hold_id = h.id AND w.state = 'held'),
                    CASE WHEN h.subject IS NOT NULL
                         THEN (SELECT count(*) FROM sessions s WHERE s.subject = h.subject)
                         ELSE (SELECT count(*) FROM sessions s WHERE s.provider = h.provider
                                 AND s.scope = h.scope AND s.session_id = h.session_id)
                    END
             FROM holds h WHERE h.removed_at IS NULL ORDER BY h.id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Hold {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    provider: r.get(2)?,
                    scope: r.get(3)?,
                    session_id: r.get(4)?,
                    reason: r.get(5)?,
                    created_at: r.get(6)?,
                    items_held: r.get::<_, i64>(7)? as u64,
                    chats_covered: r.get::<_, i64>(8)? as u64,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
