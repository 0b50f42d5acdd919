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
use crate::audit::{Event, HoldPlaced, HoldTargetRecord};
use serde::Serialize;

use super::{Result, Store, StoreError};
use crate::model::{ChatKey, ProviderKind};

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

/// Where a queued chat was found covered by a hold and taken out of the queue (the `at` of a
/// `chats.held` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAt {
    /// A claim, before it picked its batch.
    Claim,
    /// Right before the delete call, after any wait for the gate.
    Send,
    /// `requests retry` revived it.
    Retry,
    /// Returned at start-up (the previous daemon's claims).
    Restart,
    /// Its lease ran out.
    LeaseExpired,
    /// A dead instance's claim handed back (PostgreSQL).
    Rescue,
    /// Read back present after a confirmed deletion.
    ReadBack,
    /// Its batch's answer sent it back to the queue, or its batch was handed back unsent.
    Returned,
    /// The inventory changed (a feeder re-attributed a chat).
    Inventory,
    /// A retention rule's run queued it, or revived it.
    RuleRun,
}

impl HeldAt {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Send => "send",
            Self::Retry => "retry",
            Self::Restart => "restart",
            Self::LeaseExpired => "lease_expired",
            Self::Rescue => "rescue",
            Self::ReadBack => "read_back",
            Self::Returned => "returned",
            Self::Inventory => "inventory",
            Self::RuleRun => "rule_run",
        }
    }
}

/// Which queued chats the rule looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Queued<'a> {
    /// These items, if pending.
    Items(&'a [i64]),
    /// Every pending item (of one provider).
    Pending(Option<ProviderKind>),
    /// The items still in flight under this batch: claimed, not sent yet.
    Batch(i64),
}

/// **The one rule that decides what may be sent.** Queued chats an active hold covers *now*
/// become `held` (with the covering hold's id), in the caller's transaction. Coverage is the
/// `item_holds` view, computed from the current truth: chat holds, and subject holds over the
/// chat's current owner in `sessions` (a feeder may re-attribute a chat; the hold follows the new
/// owner) and over the person the item was resolved for. Every path into `pending` and every
/// send goes through it: the claim, the check right before the call, retry, lease return,
/// rescue, read-back. With `at`, the change is audited (`chats.held`) and the requests of the
/// held chats are refreshed; without, the caller records and refreshes (a hold's placement).
/// Returns the ids of items that became held.
pub(crate) fn withhold(
    tx: &Tx<'_>,
    queued: Queued<'_>,
    now: i64,
    at: Option<HeldAt>,
) -> Result<Vec<i64>> {
    let any: bool = tx.row(
        "SELECT EXISTS (SELECT 1 FROM holds WHERE removed_at IS NULL)",
        args![],
        |r| r.get(0),
    )?;
    if !any {
        return Ok(Vec::new());
    }
    const ONE: &str = "UPDATE work_items
               SET state = 'held', hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
               WHERE state = 'pending' AND id = ?1 AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id)
               RETURNING id";
    let mut held = Vec::new();
    let mut one_by_one = |ids: &[i64]| -> Result<()> {
        for id in ids {
            if let Some(h) = tx.row_opt(ONE, args![id], |r| r.get::<i64>(0))? {
                held.push(h);
            }
        }
        Ok(())
    };
    match queued {
        Queued::Items(ids) => one_by_one(ids)?,
        Queued::Batch(batch_id) => {
            // Off the wire first (never sent: no attempt counted), then held; both moves are
            // legal transitions, in one transaction.
            let covered: Vec<i64> = tx.rows(
                "UPDATE work_items SET state = 'pending', lease_expires_ms = NULL, batch_id = NULL
                 WHERE batch_id = ?1 AND state = 'in_flight'
                   AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id)
                 RETURNING id",
                args![batch_id],
                |r| r.get(0),
            )?;
            one_by_one(&covered)?;
        }
        Queued::Pending(provider) => {
            held = tx.rows(
                "UPDATE work_items
                 SET state = 'held', hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
                 WHERE state = 'pending' AND (CAST(?1 AS TEXT) IS NULL OR provider = ?1)
                   AND id IN (SELECT item_id FROM item_holds)
                 RETURNING id",
                args![provider.map(|p| p.as_str())],
                |r| r.get(0),
            )?;
        }
    }
    if held.is_empty() {
        return Ok(held);
    }
    held.sort_unstable();
    let Some(at) = at else {
        return Ok(held);
    };
    let mut chats = Vec::with_capacity(held.len());
    for id in &held {
        chats.push(tx.row(
            "SELECT provider, scope, session_id, hold_id FROM work_items WHERE id = ?1",
            args![id],
            |r| {
                Ok(crate::audit::HeldChat {
                    provider: r.get(0)?,
                    scope: r.get(1)?,
                    session_id: r.get(2)?,
                    hold_id: r.get(3)?,
                })
            },
        )?);
    }
    let event = crate::audit::ChatsHeld {
        at: at.as_str().to_string(),
        chats,
    };
    super::audit::append(tx, now, None, &Event::ChatsHeld(event))?;
    tracing::info!(
        chats = held.len(),
        at = at.as_str(),
        "queued chats a legal hold covers were kept out of deletion"
    );
    super::requests::refresh_for_items(tx, &held, now)?;
    Ok(held)
}

/// The rule's other half: a held chat that no standing hold covers any longer (a feeder moved it
/// away from the held person, by UPDATE or by DELETE and INSERT) goes back to the queue, audited
/// (`chats.freed`), its requests refreshed; one another hold still covers is kept under that
/// hold's id. Walks the held items (`work_items_held`); run when the inventory may have changed,
/// never on the claim's path (a chat kept a little longer is safe, one freed wrongly is not).
/// Returns the freed items.
pub(crate) fn free_uncovered(tx: &Tx<'_>, now: i64) -> Result<Vec<i64>> {
    let repointed: Vec<i64> = tx.rows(
        "UPDATE work_items SET hold_id = (SELECT min(hold_id) FROM item_holds c WHERE c.item_id = work_items.id)
         WHERE state = 'held'
           AND NOT EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id AND c.hold_id = work_items.hold_id)
           AND EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id)
         RETURNING id",
        args![],
        |r| r.get(0),
    )?;
    // Held under another hold now: their closed requests are closed again, naming it.
    super::requests::refresh_for_items(tx, &repointed, now)?;
    let chats: Vec<(i64, crate::audit::HeldChat)> = tx.rows(
        "SELECT id, provider, scope, session_id, hold_id FROM work_items
         WHERE state = 'held' AND NOT EXISTS (SELECT 1 FROM item_holds c WHERE c.item_id = work_items.id)
         ORDER BY id",
        args![],
        |r| {
            Ok((
                r.get(0)?,
                crate::audit::HeldChat {
                    provider: r.get(1)?,
                    scope: r.get(2)?,
                    session_id: r.get(3)?,
                    hold_id: r.get(4)?,
                },
            ))
        },
    )?;
    if chats.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = chats.iter().map(|(id, _)| *id).collect();
    for id in &ids {
        tx.exec(
            "UPDATE work_items SET state = 'pending', hold_id = NULL, next_attempt_ms = 0
             WHERE id = ?1 AND state = 'held'",
            args![id],
        )?;
    }
    let event = crate::audit::ChatsFreed {
        chats: chats.into_iter().map(|(_, c)| c).collect(),
    };
    super::audit::append(tx, now, None, &Event::ChatsFreed(event))?;
    tracing::info!(
        chats = ids.len(),
        "held chats no standing hold covers any longer went back to the queue"
    );
    super::requests::refresh_for_items(tx, &ids, now)?;
    Ok(ids)
}

/// The items still in flight under `batch_id`, in id order.
fn in_flight_under(s: &impl Sql, batch_id: i64) -> Result<Vec<i64>> {
    s.rows(
        "SELECT id FROM work_items WHERE batch_id = ?1 AND state = 'in_flight' ORDER BY id",
        args![batch_id],
        |r| r.get(0),
    )
}

impl Store {
    /// **Which of a claimed batch's chats may be sent now**, asked right before the delete call:
    /// every chat of the batch an active hold covers now is taken off it and marked held
    /// (audited, its requests refreshed), in one transaction; then of `ids`, those still in flight
    /// under this batch are returned (a chat the hold rule took, or whose claim was handed back
    /// meanwhile, is not). Only what this returns may be named in the call. A read when no hold
    /// stands, else one write.
    pub fn sendable(&mut self, batch_id: i64, ids: &[i64], now: i64) -> Result<Vec<i64>> {
        let in_flight = if self.any_active_hold()? {
            self.write(|tx| {
                withhold(tx, Queued::Batch(batch_id), now, Some(HeldAt::Send))?;
                in_flight_under(tx, batch_id)
            })?
        } else {
            in_flight_under(self, batch_id)?
        };
        Ok(ids
            .iter()
            .copied()
            .filter(|id| in_flight.binary_search(id).is_ok())
            .collect())
    }

    fn any_active_hold(&self) -> Result<bool> {
        self.row(
            "SELECT EXISTS (SELECT 1 FROM holds WHERE removed_at IS NULL)",
            args![],
            |r| r.get(0),
        )
    }

    /// Re-checks the queue against the holds after the inventory may have changed (a feeder may
    /// have re-attributed a chat, toward a held person or away from one): pending chats a hold
    /// covers now become held, held chats no hold covers any longer go back to the queue.
    /// Returns (held, freed). Nothing to do, and only a read, when no hold stands.
    pub fn recheck_holds(&mut self, now: i64) -> Result<(Vec<i64>, Vec<i64>)> {
        if !self.any_active_hold()? {
            return Ok((Vec::new(), Vec::new()));
        }
        self.write(|tx| {
            let held = withhold(tx, Queued::Pending(None), now, Some(HeldAt::Inventory))?;
            let freed = free_uncovered(tx, now)?;
            Ok((held, freed))
        })
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
            let held = withhold(tx, Queued::Pending(None), now, None)?;
            // The subject itself stays out of the audit trail; the hold's id leads to it.
            let target = match target {
                HoldTarget::Subject(_) => HoldTargetRecord::Subject,
                HoldTarget::Chat(c) => HoldTargetRecord::Chat {
                    provider: c.provider.to_string(),
                    scope: c.scope.clone(),
                    session_id: c.session_id.clone(),
                },
            };
            let event = Event::HoldPlaced(HoldPlaced {
                hold_id: id,
                target,
                reason: reason.to_string(),
                items_held: held.len() as u64,
            });
            super::audit::append(tx, now, None, &event)?;
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
            let reheld = withhold(tx, Queued::Items(&released), now, None)?;
            let freed: Vec<i64> = released
                .into_iter()
                .filter(|i| !reheld.contains(i))
                .collect();
            let event = crate::audit::HoldLifted {
                hold_id: id,
                freed: freed.len() as u64,
                reheld: reheld.len() as u64,
            };
            super::audit::append(tx, now, None, &Event::HoldLifted(event))?;
            super::requests::refresh_for_items(tx, &freed, now)?;
            // Still held, under another hold now: their closed requests are closed again with it.
            super::requests::refresh_for_items(tx, &reheld, now)?;
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
    fn the_check_before_a_call_takes_off_just_the_chats_a_new_hold_covers() {
        let (_d, mut s) = temp_store();
        let a = item(&s, "c", "a1", Some("alice"));
        let b = item(&s, "c", "b1", Some("bob"));
        let batch = s
            .claim_batch(ProviderKind::CONVAI, Millis(0), Duration::from_secs(60), 10)
            .unwrap()
            .unwrap();
        assert_eq!(batch.items.len(), 2);
        assert!(
            s.sendable(batch.batch_id, &[a, b], 1).unwrap() == vec![a, b],
            "no hold"
        );
        s.add_hold(&chat("c", "elsewhere"), "unrelated", 1).unwrap();
        assert!(
            s.sendable(batch.batch_id, &[a, b], 1).unwrap() == vec![a, b],
            "a hold that covers none of them"
        );
        let (h, took) = s
            .add_hold(&HoldTarget::Subject("alice".into()), "A", 2)
            .unwrap();
        assert!(took.is_empty(), "in flight: not the hold's to take");
        assert_eq!(state(&s, a).0, "in_flight");
        assert_eq!(s.sendable(batch.batch_id, &[a, b], 3).unwrap(), vec![b]);
        assert_eq!(
            s.sendable(batch.batch_id, &[a, b], 4).unwrap(),
            vec![b],
            "asked again (the other half of a split batch): still not sendable"
        );
        assert_eq!(state(&s, a), ("held".into(), Some(h)));
        assert_eq!(state(&s, b), ("in_flight".into(), None));
        let kinds: Vec<(String, String)> = s
            .sqlite()
            .prepare("SELECT kind, data FROM audit_log WHERE kind = 'chats.held'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kinds.len(), 1, "{kinds:?}");
        assert!(
            kinds[0].1.contains("\"at\":\"send\"") && kinds[0].1.contains("a1"),
            "{kinds:?}"
        );
        assert!(!kinds[0].1.contains("b1"), "{kinds:?}");
    }

    /// Every path back into the queue asks the rule again; the claim asks it before it picks.
    #[test]
    fn no_path_back_to_the_queue_lets_a_held_chat_be_claimed() {
        let (_d, mut s) = temp_store();
        let lease = Duration::from_secs(60);
        // Claimed (a daemon crashed mid-call), then held while nothing ran: the restart's
        // release keeps it.
        let a = item(&s, "c", "a1", Some("alice"));
        let decoy = item(&s, "c", "z1", Some("zed"));
        s.claim_batch(ProviderKind::CONVAI, Millis(0), lease, 10)
            .unwrap()
            .unwrap();
        s.add_hold(&chat("c", "a1"), "evidence", 1).unwrap();
        assert_eq!(s.release_all_in_flight(2).unwrap(), 2);
        assert_eq!(state(&s, a).0, "held");
        assert_eq!(state(&s, decoy).0, "pending");
        // Pending, then re-attributed by a feeder to a person under a hold: the claim skips it.
        let x = item(&s, "c", "x1", Some("alice"));
        s.sqlite()
            .execute(
                "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', 'x1', 'alice')",
                [],
            )
            .unwrap();
        let (bob_hold, _) = s
            .add_hold(&HoldTarget::Subject("bob".into()), "B", 3)
            .unwrap();
        s.sqlite()
            .execute(
                "UPDATE sessions SET subject = 'bob' WHERE session_id = 'x1'",
                [],
            )
            .unwrap();
        assert_eq!(state(&s, x).0, "pending", "no one told forgetd yet");
        let batch = s
            .claim_batch(ProviderKind::CONVAI, Millis(5), lease, 10)
            .unwrap()
            .unwrap();
        let claimed: Vec<i64> = batch.items.iter().map(|i| i.id).collect();
        assert_eq!(claimed, vec![decoy]);
        assert_eq!(state(&s, x), ("held".into(), Some(bob_hold)));
        // An expired lease returns the decoy; a hold placed meanwhile keeps it.
        s.add_hold(&chat("c", "z1"), "Z", 4).unwrap();
        assert_eq!(
            s.release_expired_leases(Millis(5).after(lease), &[])
                .unwrap(),
            1
        );
        assert_eq!(state(&s, decoy).0, "held");
    }

    /// Files alice's request over `sids` (inventory rows), resolves it, and claims its batch.
    fn alices_request(s: &mut Store, sids: &[&str]) -> (i64, crate::store::queue::ClaimedBatch) {
        for sid in sids {
            s.sqlite()
                .execute(
                    "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', ?1, 'alice')",
                    [sid],
                )
                .unwrap();
        }
        let filed = s.file_request("alice", Some("R1"), 0, 86_400).unwrap();
        let req = s.received_requests(10).unwrap().remove(0);
        s.resolve_request(&req, &[], &[], "hash", 0, 86_400)
            .unwrap();
        let batch = s
            .claim_batch(ProviderKind::CONVAI, Millis(0), Duration::from_secs(60), 10)
            .unwrap()
            .unwrap();
        (filed.id, batch)
    }

    fn request_state(s: &Store, id: i64) -> String {
        s.sqlite()
            .query_row(
                "SELECT state FROM erasure_requests WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn a_retry_of_a_failed_request_keeps_its_held_chats_out_of_the_queue() {
        use crate::store::queue::ItemOutcome;
        let (_d, mut s) = temp_store();
        let (req, batch) = alices_request(&mut s, &["a1", "a2"]);
        let dead: Vec<(i64, ItemOutcome)> = batch
            .items
            .iter()
            .map(|i| {
                (
                    i.id,
                    ItemOutcome::Dead {
                        error: "HTTP 500".into(),
                    },
                )
            })
            .collect();
        s.finish_batch(batch.batch_id, Millis(1000), &dead, "500", None)
            .unwrap();
        assert_eq!(request_state(&s, req), "failed");
        s.add_hold(&HoldTarget::Subject("alice".into()), "A", 2)
            .unwrap();
        assert_eq!(s.retry_request(req, 3).unwrap(), 2);
        for i in &batch.items {
            assert_eq!(state(&s, i.id).0, "held");
        }
        let data: String = s
            .sqlite()
            .query_row(
                "SELECT data FROM audit_log WHERE kind = 'request.retried' AND request_id = ?1",
                [req],
                |r| r.get(0),
            )
            .unwrap();
        assert!(data.contains("\"held\":2"), "{data}");
        assert_eq!(request_state(&s, req), "complete", "every chat held");
        assert_eq!(s.retry_request(req, 4).unwrap(), 0, "nothing dead");
    }

    /// A confirmed deletion, a chat hold, then the chat read back present: held (not deleted
    /// again), and the request closes again stating it held, with the reason.
    #[test]
    fn a_chat_held_after_its_deletion_and_read_back_present_is_certified_held() {
        use crate::store::queue::ItemOutcome;
        use crate::store::verification::{ReadBack, ReadBackLimits};
        let (_d, mut s) = temp_store();
        // The daemon's key: only it writes closing events.
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        let (req, batch) = alices_request(&mut s, &["a1"]);
        let a = batch.items[0].id;
        s.finish_batch(
            batch.batch_id,
            Millis(1000),
            &[(
                a,
                ItemOutcome::Deleted {
                    already_absent: false,
                },
            )],
            "ok",
            None,
        )
        .unwrap();
        assert_eq!(request_state(&s, req), "complete");
        let first = s.closing_event(req).unwrap().unwrap();
        assert_eq!(first.closed.items[0].state, "deleted");
        let (h, _) = s.add_hold(&chat("c", "a1"), "litigation 7", 5).unwrap();
        s.record_read_backs(
            ProviderKind::CONVAI,
            &[(a, ReadBack::Present { note: None })],
            Millis(10_000),
            ReadBackLimits {
                max_reappearances: 3,
                max_attempts: 3,
            },
        )
        .unwrap();
        assert_eq!(state(&s, a), ("held".into(), Some(h)));
        assert_eq!(request_state(&s, req), "complete");
        let last = s.closing_event(req).unwrap().unwrap();
        assert!(last.seq > first.seq, "closed again");
        let item = &last.closed.items[0];
        assert_eq!(item.state, "held");
        assert_eq!(item.hold_reason.as_deref(), Some("litigation 7"));
    }
}
