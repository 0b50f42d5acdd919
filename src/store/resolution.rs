//! Resolution in the store: turning a request (a subject) or a retention rule into work items,
//! in one transaction each, and `plan`'s dry runs of the same code. [`crate::resolve`] does the
//! asking at the providers (discovery) and hands what it found here; every SQL statement of
//! resolution lives in this file.
//!
//! Rules:
//! - A request's chats are the inventory's chats of that subject plus those discovery found
//!   (they join the inventory, owned by the subject). The resolved list is stored, with the
//!   request's move to `in_progress`, before anything is deleted.
//! - A chat is one work item however many requests or rules name it; a new demand revives a dead
//!   item and moves its due date earlier; the item remembers whom it was resolved for.
//! - Chats covered by a legal hold become `held` items.
//! - A rule matches chats with `created_at <= now - max_age` not yet deleted; a run above its
//!   `max_deletions` queues nothing until approved, and an approval releases at most the count
//!   it was shown.
//! - `plan` runs the same functions in a transaction that is rolled back.

use crate::audit::Event;
use std::collections::BTreeMap;

use super::Tx;
use super::db::{Sql, Value};
use crate::args;

use super::inventory::NewSession;
use super::{Result, Store, holds, requests};
pub use crate::audit::Listing;
use crate::model::ProviderKind;

/// A request waiting to be resolved. Its `Debug` leaves the subject out.
#[derive(Clone)]
pub struct Received {
    pub id: i64,
    pub subject: String,
    pub external_ref: Option<String>,
    pub received_at: i64,
    pub due_at: Option<i64>,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("id", &self.id)
            .field("external_ref", &self.external_ref)
            .field("received_at", &self.received_at)
            .finish_non_exhaustive()
    }
}

/// What resolving one request produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub items: u64,
    pub held: u64,
    pub discovered: u64,
    pub per_provider: BTreeMap<String, u64>,
    /// The request was not `received` any more (another instance resolved it first): nothing
    /// was done.
    pub skipped: bool,
}

impl Store {
    /// Requests feeders or the CLI filed that are not resolved yet, oldest first.
    pub fn received_requests(&self, limit: usize) -> Result<Vec<Received>> {
        self.rows(
            "SELECT id, subject, external_ref, received_at, due_at FROM erasure_requests
             WHERE state = 'received' ORDER BY received_at, id LIMIT ?1",
            args![limit],
            |r| {
                Ok(Received {
                    id: r.get(0)?,
                    subject: r.get(1)?,
                    external_ref: r.get(2)?,
                    received_at: r.get(3)?,
                    due_at: r.get(4)?,
                })
            },
        )
    }

    /// Stores a request's resolution: discovered chats into the inventory, one work item per
    /// chat of the subject, holds applied, one pending row per listing still to ask
    /// (`listings`, see [`super::discovery`]), the request `in_progress` (or complete at once
    /// when nothing is left to delete or list). One transaction.
    pub fn resolve_request(
        &mut self,
        req: &Received,
        discovered: &[NewSession],
        listings: &[Listing],
        subject_hash: &str,
        now: i64,
        deadline_secs: i64,
    ) -> Result<Resolution> {
        self.write(|tx| {
            resolve_request_in(
                tx,
                req,
                discovered,
                listings,
                subject_hash,
                now,
                deadline_secs,
            )
        })
    }
}

/// The body of [`Store::resolve_request`], shared with `plan` (which rolls it back).
pub(crate) fn resolve_request_in(
    tx: &Tx<'_>,
    req: &Received,
    discovered: &[NewSession],
    listings: &[Listing],
    subject_hash: &str,
    now: i64,
    deadline_secs: i64,
) -> Result<Resolution> {
    {
        {
            // PostgreSQL: the row is locked, so two instances never both resolve it.
            let sql = match tx.engine() {
                super::db::Engine::Sqlite => "SELECT state FROM erasure_requests WHERE id = ?1",
                super::db::Engine::Postgres => {
                    "SELECT state FROM erasure_requests WHERE id = ?1 FOR UPDATE"
                }
            };
            let state: Option<String> = tx.row_opt(sql, args![req.id], |r| r.get(0))?;
            if state.as_deref() != Some("received") {
                // Resolved meanwhile (or gone).
                return Ok(Resolution {
                    skipped: true,
                    ..Resolution::default()
                });
            }
            let due_at = req
                .due_at
                .unwrap_or(req.received_at.saturating_add(deadline_secs));
            let received = Event::RequestReceived(crate::audit::RequestReceived {
                external_ref: req.external_ref.clone(),
                subject_hash: subject_hash.to_string(),
                received_at: req.received_at,
                due_at,
            });
            super::audit::append(tx, now, Some(req.id), &received)?;
            let mut res = Resolution::default();
            for d in discovered {
                if insert_discovered(tx, d, now)? {
                    res.discovered += 1;
                }
            }
            let mut ids = Vec::new();
            let mut revived = Vec::new();
            {
                let rows = tx.rows(
                    "SELECT provider, scope, session_id, repo_id FROM sessions WHERE subject = ?1 ORDER BY id",
                    args![req.subject],
                    |r| {
                        Ok((
                            r.get::<String>(0)?,
                            r.get::<String>(1)?,
                            r.get::<String>(2)?,
                            r.get::<Option<String>>(3)?,
                        ))
                    },
                )?;
                for (provider, scope, sid, repo) in rows {
                    let chat = ItemChat {
                        provider: &provider,
                        scope: &scope,
                        session_id: &sid,
                        repo_id: repo.as_deref(),
                        subject: Some(&req.subject),
                    };
                    let (id, was_dead) = upsert_item(tx, &chat, due_at, now)?;
                    if was_dead {
                        revived.push(id);
                    }
                    tx.exec(
                        "INSERT INTO request_items (request_id, item_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        args![req.id, id],
                    )?;
                    *res.per_provider.entry(provider).or_default() += 1;
                    ids.push(id);
                }
            }
            res.items = ids.len() as u64;
            res.held = holds::withhold(tx, holds::Queued::Items(&ids), now, None)?.len() as u64;
            let held_now: u64 = tx.row(
                "SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = ?1 AND w.state = 'held'",
                args![req.id],
                |r| r.get(0),
            )?;
            res.held = res.held.max(held_now);
            for l in listings {
                tx.exec(
                    "INSERT INTO request_discovery (request_id, provider, scope) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    args![req.id, l.provider, l.scope],
                )?;
            }
            tx.exec(
                "UPDATE erasure_requests SET state = 'in_progress', resolved_at = ?2, due_at = ?3, subject_hash = ?4, updated_at = ?2 WHERE id = ?1",
                args![req.id, now, due_at, subject_hash],
            )?;
            let resolved = Event::RequestResolved(crate::audit::RequestResolved {
                items: res.items,
                held: res.held,
                discovered: res.discovered,
                per_provider: res.per_provider.clone(),
                discovering: listings.to_vec(),
            });
            super::audit::append(tx, now, Some(req.id), &resolved)?;
            requests::refresh_request(tx, req.id, now)?;
            // A chat that had gone dead is the person's earlier request's too: that request is
            // back at work (or complete, if a hold took it).
            requests::refresh_for_items(tx, &revived, now)?;
            Ok(res)
        }
    }
}

pub(crate) fn insert_discovered(tx: &Tx<'_>, d: &NewSession, now: i64) -> Result<bool> {
    let n = tx.exec(
        "INSERT INTO sessions (provider, scope, session_id, subject, repo_id, created_at, discovered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, coalesce(CAST(?6 AS BIGINT), ?7), ?7)
         ON CONFLICT (provider, scope, session_id) DO UPDATE SET subject = coalesce(sessions.subject, excluded.subject)",
        args![d.provider, d.scope, d.session_id, d.subject, d.repo_id, d.created_at, now],
    )?;
    Ok(n == 1)
}

/// The chat a work item is for, and the person it was resolved for.
pub(crate) struct ItemChat<'a> {
    pub provider: &'a str,
    pub scope: &'a str,
    pub session_id: &'a str,
    pub repo_id: Option<&'a str>,
    pub subject: Option<&'a str>,
}

/// One work item per chat: created pending, or the existing one (its due date moved earlier if
/// this demand is more urgent; revived if it had gone dead; its owner kept, or learnt if it had
/// none). Returns its id, and whether it was revived.
pub(crate) fn upsert_item(
    tx: &Tx<'_>,
    chat: &ItemChat<'_>,
    due_at: i64,
    now: i64,
) -> Result<(i64, bool)> {
    // The earlier due date as a CASE: a two-argument min() is SQLite's alone.
    let id: i64 = tx.row(
        "INSERT INTO work_items (provider, scope, session_id, repo_id, subject, due_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (provider, scope, session_id) DO UPDATE SET
             due_at = CASE WHEN excluded.due_at < work_items.due_at THEN excluded.due_at
                           ELSE work_items.due_at END,
             subject = CASE WHEN work_items.state = 'deleted' THEN work_items.subject
                            ELSE coalesce(work_items.subject, excluded.subject) END
         RETURNING id",
        args![
            chat.provider,
            chat.scope,
            chat.session_id,
            chat.repo_id,
            chat.subject,
            due_at,
            now
        ],
        |r| r.get(0),
    )?;
    let revived = tx.exec(
        "UPDATE work_items SET state = 'pending', attempts = 0, first_attempt_ms = NULL, next_attempt_ms = 0, finished_at = NULL
         WHERE id = ?1 AND state = 'dead'",
        args![id],
    )?;
    Ok((id, revived > 0))
}

// ---------------------------------------------------------------------------------------------
// Retention rules

/// What one run of a retention rule found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleRun {
    pub rule: String,
    /// Chats at or past the rule's age (`created_at <= cutoff`) not yet deleted.
    pub matched: u64,
    /// Of those, now queued for deletion (pending).
    pub enqueued: u64,
    /// Of those, kept by a legal hold.
    pub held: u64,
    pub discovered: u64,
    pub cutoff: i64,
    /// The run matched more than `max_deletions`: nothing was queued; waits for `rules approve`.
    pub awaiting_approval: bool,
    /// Another instance ran this occurrence of the rule first (PostgreSQL): this run changed
    /// nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// Runs a rule against the inventory in `tx`: the expired chats (into `rule_matches`), their
/// work items, holds, the guard rail and the rule's run state. Shared by the real run and `plan`.
pub(crate) fn run_rule_in(
    tx: &Tx<'_>,
    rule: &crate::store::rules::RuleRow,
    discovered: &[NewSession],
    now: i64,
    deadline_secs: i64,
) -> Result<RuleRun> {
    let mut run = RuleRun {
        rule: rule.name.clone(),
        cutoff: now - rule.max_age_secs,
        ..RuleRun::default()
    };
    // Exactly one run per occurrence, however many instances found the rule due: the caller
    // decided on the rule's last run as it read it; if that moved since (another instance's run
    // committed first; write transactions take turns), this occurrence is done.
    let last: Option<i64> = tx
        .row_opt(
            "SELECT last_run_at FROM rule_state WHERE rule_name = ?1",
            args![rule.name],
            |r| r.get(0),
        )?
        .flatten();
    if last != rule.last_run_at {
        run.skipped = true;
        return Ok(run);
    }
    for d in discovered {
        if insert_discovered(tx, d, now)? {
            run.discovered += 1;
        }
    }
    // A temporary table, found before any table of that name in both engines' search order.
    tx.exec_batch(
        "CREATE TEMP TABLE IF NOT EXISTS rule_matches (provider TEXT, scope TEXT, session_id TEXT, repo_id TEXT, subject TEXT);
         DELETE FROM rule_matches;",
    )?;
    // Expired: created_at <= now - max_age (exactly max_age old is expired). Chats already
    // deleted are not matched again.
    run.matched = tx.exec(
        "INSERT INTO rule_matches (provider, scope, session_id, repo_id, subject)
         SELECT s.provider, s.scope, s.session_id, s.repo_id, s.subject FROM sessions s
         WHERE s.provider = ?1 AND (?2 = '*' OR s.scope = ?2) AND s.created_at <= ?3
           AND NOT EXISTS (SELECT 1 FROM work_items w WHERE w.provider = s.provider AND w.scope = s.scope
                           AND w.session_id = s.session_id AND w.state = 'deleted')",
        args![rule.provider.as_str(), rule.scope, run.cutoff],
    )? as u64;
    // An approval releases the run that was shown, up to the count shown: a run that now
    // matches more is a different run and waits again.
    let approved = rule.approved
        && rule.awaiting_approval.is_some()
        && rule.approved_up_to.is_some_and(|n| run.matched <= n);
    if run.matched > rule.max_deletions && !approved {
        run.awaiting_approval = true;
        tx.exec(
            "INSERT INTO rule_state (rule_name, awaiting_approval, awaiting_matched, last_run_at) VALUES (?1, ?2, ?3, ?2)
             ON CONFLICT (rule_name) DO UPDATE SET awaiting_approval = excluded.awaiting_approval,
                 awaiting_matched = excluded.awaiting_matched, last_run_at = excluded.last_run_at,
                 approved = 0, approved_up_to = NULL",
            args![rule.name, now, run.matched],
        )?;
        let event = Event::RuleHeldForApproval(crate::audit::RuleHeld {
            rule: rule.name.clone(),
            matched: run.matched,
            max_deletions: rule.max_deletions,
            cutoff: run.cutoff,
            approved_up_to: rule.approved_up_to,
        });
        super::audit::append(tx, now, None, &event)?;
        return Ok(run);
    }
    let due = now.saturating_add(deadline_secs);
    tx.exec(
        "INSERT INTO work_items (provider, scope, session_id, repo_id, subject, due_at, created_at)
         SELECT provider, scope, session_id, repo_id, subject, ?1, ?2 FROM rule_matches WHERE true
         ON CONFLICT (provider, scope, session_id) DO UPDATE SET
             due_at = CASE WHEN excluded.due_at < work_items.due_at THEN excluded.due_at
                           ELSE work_items.due_at END,
             subject = CASE WHEN work_items.state = 'deleted' THEN work_items.subject
                            ELSE coalesce(work_items.subject, excluded.subject) END",
        args![due, now],
    )?;
    let revived: Vec<i64> = tx.rows(
        "UPDATE work_items SET state = 'pending', attempts = 0, first_attempt_ms = NULL, next_attempt_ms = 0, finished_at = NULL
         WHERE state = 'dead' AND (provider, scope, session_id) IN (SELECT provider, scope, session_id FROM rule_matches)
         RETURNING id",
        args![],
        |r| r.get(0),
    )?;
    holds::withhold(
        tx,
        holds::Queued::Pending(None),
        now,
        Some(holds::HeldAt::RuleRun),
    )?;
    // Revived chats of a failed request put it back at work.
    requests::refresh_for_items(tx, &revived, now)?;
    (run.enqueued, run.held) = tx.row(
        "SELECT count(*) FILTER (WHERE w.state IN ('pending', 'in_flight')), count(*) FILTER (WHERE w.state = 'held')
         FROM rule_matches m JOIN work_items w ON w.provider = m.provider AND w.scope = m.scope AND w.session_id = m.session_id",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.exec(
        "INSERT INTO rule_state (rule_name, last_run_at) VALUES (?1, ?2)
         ON CONFLICT (rule_name) DO UPDATE SET last_run_at = excluded.last_run_at, awaiting_approval = NULL,
             awaiting_matched = NULL, approved = 0, approved_up_to = NULL",
        args![rule.name, now],
    )?;
    tx.exec(
        "INSERT INTO rule_runs (rule_name, started_at, finished_at, matched, enqueued, held, outcome) VALUES (?1, ?2, ?2, ?3, ?4, ?5, 'queued')",
        args![rule.name, now, run.matched, run.enqueued, run.held],
    )?;
    let event = Event::RuleRun(crate::audit::RuleRunEvent {
        rule: rule.name.clone(),
        cutoff: run.cutoff,
        matched: run.matched,
        enqueued: run.enqueued,
        held: run.held,
        discovered: run.discovered,
    });
    super::audit::append(tx, now, None, &event)?;
    Ok(run)
}

/// One chat in a plan.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct PlannedChat {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    /// "delete", "held", "already deleted", "dead (retried)"
    pub action: String,
    pub hold_reason: Option<String>,
}

/// What a real run would do, computed by running it in a transaction that is rolled back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub target: String,
    pub delete: u64,
    pub held: u64,
    pub chats: Vec<PlannedChat>,
    pub rule: Option<RuleRun>,
    pub notes: Vec<String>,
}

impl Store {
    /// Runs a rule for real (one transaction).
    pub fn run_rule(
        &mut self,
        rule: &crate::store::rules::RuleRow,
        discovered: &[NewSession],
        now: i64,
        deadline_secs: i64,
    ) -> Result<RuleRun> {
        self.write(|tx| run_rule_in(tx, rule, discovered, now, deadline_secs))
    }

    /// Runs `f` in a transaction and rolls it back: nothing it writes stays.
    fn dry_run<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let mut tx = self.begin()?;
        tx.set_dry_run();
        let out = f(&tx);
        tx.rollback()?;
        out
    }

    pub fn plan_rule(
        &mut self,
        rule: &crate::store::rules::RuleRow,
        discovered: &[NewSession],
        now: i64,
        deadline_secs: i64,
    ) -> Result<Plan> {
        self.dry_run(|tx| {
            let run = run_rule_in(tx, rule, discovered, now, deadline_secs)?;
            let mut chats = Vec::new();
            if !run.awaiting_approval {
                chats = planned(tx, "SELECT w.provider, w.scope, w.session_id, w.state, h.reason FROM rule_matches m
                     JOIN work_items w ON w.provider = m.provider AND w.scope = m.scope AND w.session_id = m.session_id
                     LEFT JOIN holds h ON h.id = w.hold_id ORDER BY 1, 2, 3", args![])?;
            }
            let mut notes = Vec::new();
            if run.awaiting_approval {
                notes.push(format!(
                    "{} chats match, more than max_deletions ({}): a real run deletes nothing and waits for `forgetd rules approve {}`",
                    run.matched, rule.max_deletions, rule.name
                ));
            }
            Ok(Plan {
                target: format!("rule {}", rule.name),
                delete: chats.iter().filter(|c| c.action == "delete").count() as u64,
                held: chats.iter().filter(|c| c.action == "held").count() as u64,
                chats,
                rule: Some(run),
                notes,
            })
        })
    }

    pub fn plan_subject(
        &mut self,
        subject: &str,
        discovered: &[NewSession],
        now: i64,
        deadline_secs: i64,
    ) -> Result<Plan> {
        self.dry_run(|tx| {
            let id: i64 = tx.row(
                "INSERT INTO erasure_requests (subject, received_at) VALUES (?1, ?2) RETURNING id",
                args![subject, now],
                |r| r.get(0),
            )?;
            let req = Received {
                id,
                subject: subject.to_string(),
                external_ref: None,
                received_at: now,
                due_at: None,
            };
            resolve_request_in(tx, &req, discovered, &[], "plan", now, deadline_secs)?;
            let chats = planned(
                tx,
                "SELECT w.provider, w.scope, w.session_id, w.state, h.reason FROM request_items ri
                 JOIN work_items w ON w.id = ri.item_id LEFT JOIN holds h ON h.id = w.hold_id
                 WHERE ri.request_id = ?1 ORDER BY 1, 2, 3",
                args![req.id],
            )?;
            Ok(Plan {
                target: format!("subject {subject}"),
                delete: chats.iter().filter(|c| c.action == "delete").count() as u64,
                held: chats.iter().filter(|c| c.action == "held").count() as u64,
                chats,
                rule: None,
                notes: vec![
                    "a subject hold covers only chats the inventory attributes to the subject; chats found by provider listing with no owner need a chat hold".into(),
                ],
            })
        })
    }
}

fn planned(tx: &Tx<'_>, sql: &str, args: &[Value<'_>]) -> Result<Vec<PlannedChat>> {
    tx.rows(sql, args, |r| {
        let state: String = r.get(3)?;
        Ok(PlannedChat {
            provider: r.get(0)?,
            scope: r.get(1)?,
            session_id: r.get(2)?,
            action: match state.as_str() {
                "pending" | "in_flight" => "delete",
                "held" => "held",
                "deleted" => "already deleted",
                _ => "dead",
            }
            .to_string(),
            hold_reason: r.get(4)?,
        })
    })
}

impl Store {
    /// Scopes the inventory knows for a provider (for `scope = "*"` discovery).
    pub fn known_scopes(&self, provider: ProviderKind) -> Result<Vec<String>> {
        self.rows(
            "SELECT DISTINCT scope FROM sessions WHERE provider = ?1 ORDER BY scope",
            args![provider.as_str()],
            |r| r.get(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    fn rule(max_age_secs: i64, max_deletions: u64) -> crate::store::rules::RuleRow {
        crate::store::rules::RuleRow {
            name: "r".into(),
            provider: ProviderKind::CONVAI,
            scope: "c".into(),
            max_age: String::new(),
            max_age_secs,
            schedule: "0 3 * * *".into(),
            timezone: "UTC".into(),
            discover: false,
            max_deletions,
            origin: crate::store::rules::RuleOrigin::Cli,
            last_run_at: None,
            awaiting_approval: None,
            awaiting_matched: None,
            approved: false,
            approved_up_to: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_chat_exactly_max_age_old_is_expired_one_second_younger_is_not() {
        let (_d, mut s) = temp_store();
        let now = 1_000_000;
        for (id, created) in [
            ("exact", now - 100),
            ("younger", now - 99),
            ("older", now - 101),
        ] {
            s.add_session(&NewSession {
                provider: "convai".into(),
                scope: "c".into(),
                session_id: id.into(),
                created_at: Some(created),
                ..Default::default()
            })
            .unwrap();
        }
        let plan = s.plan_rule(&rule(100, 10), &[], now, 0).unwrap();
        let ids: Vec<&str> = plan.chats.iter().map(|c| c.session_id.as_str()).collect();
        assert_eq!(ids, vec!["exact", "older"]);
        let run = s.run_rule(&rule(100, 10), &[], now, 0).unwrap();
        assert_eq!((run.matched, run.enqueued), (2, 2));
    }

    #[test]
    fn the_ceiling_queues_nothing_until_approved() {
        let (_d, mut s) = temp_store();
        for i in 0..5 {
            s.add_session(&NewSession {
                provider: "convai".into(),
                scope: "c".into(),
                session_id: format!("s{i}"),
                created_at: Some(0),
                ..Default::default()
            })
            .unwrap();
        }
        s.add_rule(&rule(10, 4).spec(), 0).unwrap();
        let row = s.get_rule("r").unwrap();
        let run = s.run_rule(&row, &[], 100, 0).unwrap();
        assert!(run.awaiting_approval);
        assert_eq!(
            s.count_items(crate::store::queue::ItemState::Pending)
                .unwrap(),
            0
        );
        s.approve_rule("r", 0).unwrap();
        let row = s.get_rule("r").unwrap();
        let run = s.run_rule(&row, &[], 200, 0).unwrap();
        assert!(!run.awaiting_approval);
        assert_eq!(run.enqueued, 5);
        // the approval released one run; the next is held again if still over the ceiling
        assert!(!s.get_rule("r").unwrap().approved);
    }
}
