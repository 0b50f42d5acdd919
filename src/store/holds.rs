//! Legal holds: a subject, or one chat, excluded from every deletion while the hold stands.
//!
//! Rules: a hold turns covered *pending* items into `held` at once (an item already in flight is
//! on the wire; if its answer sends it back to pending, the executor re-applies holds before it can
//! be claimed again). Lifting a hold returns its items to pending unless another hold still covers
//! them. A subject hold covers only chats the inventory says belong to that subject: a chat found
//! by provider listing with no owner is not covered (hold the chat itself).
//! Coverage is the `item_holds` view in the schema, so SQL and Rust cannot disagree on it.

use super::Tx;
use super::db::Sql;
use crate::args;
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
            for id in ids {
                if let Some(h) = tx.row_opt(sql, args![id], |r| r.get::<i64>(0))? {
                    held.push(h);
                }
            }
        }
        None => {
            held = tx.rows(
                "UPDATE work_items
                 SET state = 'held', hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
                 WHERE state = 'pending' AND id IN (SELECT item_id FROM item_holds)
                 RETURNING id",
                args![],
                |r| r.get(0),
            )?;
        }
    }
    Ok(held)
}

impl Store {
    /// Items of an in-flight batch that an active hold now covers (checked right before sending).
    pub fn held_in_batch(&self, batch_id: i64) -> Result<Vec<i64>> {
        let any: bool = self.row(
            "SELECT EXISTS (SELECT 1 FROM holds WHERE removed_at IS NULL)",
            args![],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(Vec::new());
        }
        self.rows(
            "SELECT w.id FROM work_items w WHERE w.batch_id = ?1 AND w.state = 'in_flight'
               AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = w.id)",
            args![batch_id],
            |r| r.get(0),
        )
    }

    /// Places a hold; returns its id and the items it took out of the queue.
    pub fn add_hold(
        &mut self,
        target: &HoldTarget,
        reason: &str,
        now: i64,
    ) -> Result<(i64, Vec<i64>)> {
        self.write(|tx| {
            let id: i64 = match target {
                HoldTarget::Subject(s) => tx.row(
                    "INSERT INTO holds (subject, reason, created_at) VALUES (?1, ?2, ?3) RETURNING id",
                    args![s, reason, now],
                    |r| r.get(0),
                )?,
                HoldTarget::Chat(c) => tx.row(
                    "INSERT INTO holds (provider, scope, session_id, reason, created_at) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    args![c.provider.as_str(), c.scope, c.session_id, reason, now],
                    |r| r.get(0),
                )?,
            };
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
            let n = tx.exec(
                "UPDATE holds SET removed_at = ?2 WHERE id = ?1 AND removed_at IS NULL",
                args![id, now],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no active hold with id {id}")));
            }
            let released: Vec<i64> = tx.rows(
                "UPDATE work_items SET state = 'pending', hold_id = NULL, next_attempt_ms = 0
                 WHERE state = 'held' AND hold_id = ?1 RETURNING id",
                args![id],
                |r| r.get(0),
            )?;
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
        self.rows(
            "SELECT h.id, h.subject, h.provider, h.scope, h.session_id, h.reason, h.created_at,
                    (SELECT count(*) FROM work_items w WHERE w.hold_id = h.id AND w.state = 'held'),
                    CASE WHEN h.subject IS NOT NULL
                         THEN (SELECT count(*) FROM sessions s WHERE s.subject = h.subject)
                         ELSE (SELECT count(*) FROM sessions s WHERE s.provider = h.provider
                                 AND s.scope = h.scope AND s.session_id = h.session_id)
                    END
             FROM holds h WHERE h.removed_at IS NULL ORDER BY h.id",
            args![],
            |r| {
                Ok(Hold {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    provider: r.get(2)?,
                    scope: r.get(3)?,
                    session_id: r.get(4)?,
                    reason: r.get(5)?,
                    created_at: r.get(6)?,
                    items_held: r.get(7)?,
                    chats_covered: r.get(8)?,
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Millis;
    use crate::model::ProviderKind;
    use crate::store::testing::temp_store;
    use rusqlite::params;
    use std::time::Duration;

    /// A pending work item; `subject` on the item itself (a request's) or NULL.
    fn item(s: &Store, scope: &str, sid: &str, subject: Option<&str>) -> i64 {
        s.sqlite()
            .execute(
                "INSERT INTO work_items (provider, scope, session_id, subject, due_at, created_at) VALUES ('convai', ?1, ?2, ?3, 0, 0)",
                params![scope, sid, subject],
            )
            .unwrap();
        s.sqlite().last_insert_rowid()
    }

    fn state(s: &Store, id: i64) -> (String, Option<i64>) {
        s.sqlite()
            .query_row(
                "SELECT state, hold_id FROM work_items WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }

    fn chat(scope: &str, sid: &str) -> HoldTarget {
        HoldTarget::Chat(ChatKey::new(ProviderKind::CONVAI, scope, sid))
    }

    #[test]
    fn a_subject_hold_takes_exactly_that_subjects_pending_chats_and_says_which() {
        let (_d, mut s) = temp_store();
        // Alice's chats: one the request named, one only the inventory attributes to her.
        let a1 = item(&s, "c", "a1", Some("alice"));
        let a2 = item(&s, "c", "a2", None);
        s.sqlite()
            .execute(
                "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', 'a2', 'alice')",
                [],
            )
            .unwrap();
        // Decoys: Bob's chat, and Bob's other chat under a chat hold placed first.
        let b1 = item(&s, "c", "b1", Some("bob"));
        let b2 = item(&s, "c", "b2", Some("bob"));
        let (first, took) = s.add_hold(&chat("c", "b2"), "case B", 10).unwrap();
        assert_eq!(took, vec![b2]);
        let (id, mut took) = s
            .add_hold(&HoldTarget::Subject("alice".into()), "case A", 11)
            .unwrap();
        took.sort();
        assert_eq!(took, vec![a1, a2]);
        let stored: i64 = s
            .sqlite()
            .query_row("SELECT id FROM holds WHERE reason = 'case A'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(id, stored, "the id of the hold it placed");
        assert_ne!(id, first);
        assert_eq!(state(&s, a1), ("held".into(), Some(id)));
        assert_eq!(state(&s, a2), ("held".into(), Some(id)));
        assert_eq!(state(&s, b1), ("pending".into(), None));
        assert_eq!(state(&s, b2), ("held".into(), Some(first)));
    }

    #[test]
    fn a_chat_still_covered_by_another_hold_stays_held_when_one_is_lifted() {
        let (_d, mut s) = temp_store();
        let a = item(&s, "c", "a1", Some("alice"));
        let other = item(&s, "c", "a9", Some("carol"));
        let (by_subject, _) = s
            .add_hold(&HoldTarget::Subject("alice".into()), "A", 1)
            .unwrap();
        let (by_chat, _) = s.add_hold(&chat("c", "a1"), "B", 2).unwrap();
        assert_eq!(state(&s, a), ("held".into(), Some(by_subject)));
        let freed = s.remove_hold(by_subject, 3).unwrap();
        assert!(freed.is_empty(), "{freed:?}");
        assert_eq!(state(&s, a), ("held".into(), Some(by_chat)));
        let freed = s.remove_hold(by_chat, 4).unwrap();
        assert_eq!(freed, vec![a]);
        assert_eq!(state(&s, a), ("pending".into(), None));
        assert_eq!(state(&s, other), ("pending".into(), None));
        assert!(matches!(
            s.remove_hold(by_chat, 5),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn the_list_shows_standing_holds_with_what_each_keeps_and_covers() {
        let (_d, mut s) = temp_store();
        let a = item(&s, "c", "a1", Some("alice"));
        for sid in ["a1", "a2"] {
            s.sqlite()
                .execute(
                    "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', ?1, 'alice')",
                    [sid],
                )
                .unwrap();
        }
        let (h, _) = s
            .add_hold(&HoldTarget::Subject("alice".into()), "A", 7)
            .unwrap();
        let (lifted, _) = s.add_hold(&chat("c", "zz"), "gone", 8).unwrap();
        s.remove_hold(lifted, 9).unwrap();
        let list = s.list_holds().unwrap();
        assert_eq!(list.len(), 1, "a lifted hold is not listed");
        let l = &list[0];
        assert_eq!(
            (l.id, l.subject.as_deref(), l.reason.as_str(), l.created_at),
            (h, Some("alice"), "A", 7)
        );
        assert_eq!((l.items_held, l.chats_covered), (1, 2));
        assert_eq!(state(&s, a).1, Some(h));
    }

    #[test]
    fn a_batch_on_the_wire_names_just_the_chats_a_new_hold_covers() {
        let (_d, mut s) = temp_store();
        let a = item(&s, "c", "a1", Some("alice"));
        let b = item(&s, "c", "b1", Some("bob"));
        let batch = s
            .claim_batch(ProviderKind::CONVAI, Millis(0), Duration::from_secs(60), 10)
            .unwrap()
            .unwrap();
        assert_eq!(batch.items.len(), 2);
        assert!(
            s.held_in_batch(batch.batch_id).unwrap().is_empty(),
            "no hold"
        );
        s.add_hold(&chat("c", "elsewhere"), "unrelated", 1).unwrap();
        assert!(
            s.held_in_batch(batch.batch_id).unwrap().is_empty(),
            "a hold that covers none of them"
        );
        s.add_hold(&HoldTarget::Subject("alice".into()), "A", 2)
            .unwrap();
        assert_eq!(s.held_in_batch(batch.batch_id).unwrap(), vec![a]);
        // In flight, so not flipped to held by the hold itself: the executor drops it.
        assert_eq!(state(&s, a).0, "in_flight");
        assert_eq!(state(&s, b).0, "in_flight");
    }
}
