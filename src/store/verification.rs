//! Read-after-delete verification's statements (the rules are [`crate::verify`]'s): which deleted
//! chats are due to be read back, and what reading them back saw, applied to the item, its
//! requests and the audit trail in one transaction.
//!
//! Rules:
//! - Only a `deleted` item that was not read back yet (`verify_state IS NULL`) is read back, once
//!   its confirmation is `after` old and its retry time has passed. Every update is guarded by that
//!   same condition, so an answer for an item that changed meanwhile changes nothing.
//! - Absent: `verified_absent` with the time. Undecided: another attempt later, and after
//!   `max_attempts` `unverified` with the reason, never `verified_absent`. Present: the chat has
//!   *reappeared*: back to pending to be deleted again (holds re-applied first), or dead once it has
//!   come back more than `max_reappearances` times; an audit event either way, and its requests'
//!   states recomputed (a complete request returns to work).
//! - A deleted chat keeps the owner its work item was resolved for until it is read back absent or
//!   given up as unverified (when read-back is on): a chat the provider did not keep comes back
//!   covered by its person's holds, as the hold rule ([`super::holds::withhold`]) requires.
//! - A complete request is `verified_at` when every one of its deleted chats was read back absent;
//!   that is recorded once, with a typed `request.verified` audit event the certificate reads.

use crate::audit::Event;
use std::time::Duration;

use super::Tx;
use super::db::Sql;
use crate::args;

use super::{Result, Store};
use crate::audit::{ChatReappeared, RequestVerified, VerifiedItem};
use crate::clock::Millis;
use crate::model::ProviderKind;

/// A deleted chat due to be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReadBack {
    pub id: i64,
    pub scope: String,
    pub repo_id: Option<String>,
    pub session_id: String,
    /// Reads of it that could not decide so far.
    pub attempts: u32,
}

/// What reading one chat back established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadBack {
    Absent,
    /// There; `note` says why the deletion did not reach it, when the provider showed why
    /// ([`crate::providers::Presence::note`]).
    Present {
        note: Option<String>,
    },
    /// The reads could not decide: read again at `retry_at`, unless attempts are used up.
    Undecided {
        why: String,
        retry_at: Millis,
    },
}

/// `[verify] max_attempts` and `max_reappearances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBackLimits {
    pub max_attempts: u32,
    pub max_reappearances: u32,
}

/// What one round of recording changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBackSummary {
    pub absent: u64,
    /// Read back present: `requeued` + `unkept`.
    pub reappeared: u64,
    /// Back to pending, to be deleted again.
    pub requeued: u64,
    /// Gone dead: it came back more often than `max_reappearances`.
    pub unkept: u64,
    /// Undecided, to be read again.
    pub undecided: u64,
    /// Undecided for the last allowed time: reported unverified.
    pub unverified: u64,
    /// Requests that became verified.
    pub requests_verified: u64,
}

/// Read-back counts over every deleted chat (`status`, the demo).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerificationCounts {
    pub verified_absent: u64,
    /// Not read back yet (waiting for `[verify] after`, or for another read).
    pub waiting: u64,
    pub unverified: u64,
    pub not_checked: u64,
    /// Times chats were read back present after a confirmed deletion, over every item.
    pub reappeared: u64,
}

/// A request's verification, for the certificate and `requests show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemVerification {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub state: String,
    pub verify_state: Option<String>,
    pub verified_at: Option<i64>,
    pub verify_attempts: u32,
    pub verify_error: Option<String>,
    pub reappeared: u32,
}

impl Store {
    /// Deleted chats of `provider` due to be read back at `now`: confirmed at least `after` ago,
    /// not read back yet, past their retry time; oldest confirmation first.
    pub fn due_read_backs(
        &self,
        provider: ProviderKind,
        now: Millis,
        after: Duration,
        limit: usize,
    ) -> Result<Vec<DueReadBack>> {
        let confirmed_by = now.secs() - after.as_secs() as i64;
        self.rows(
            "SELECT id, scope, repo_id, session_id, verify_attempts FROM work_items
             WHERE provider = ?1 AND state = 'deleted' AND verify_state IS NULL
               AND finished_at <= ?2 AND verify_next_ms <= ?3
             ORDER BY finished_at, id LIMIT ?4",
            args![provider.as_str(), confirmed_by, now, limit],
            |r| {
                Ok(DueReadBack {
                    id: r.get(0)?,
                    scope: r.get(1)?,
                    repo_id: r.get(2)?,
                    session_id: r.get(3)?,
                    attempts: r.get::<i64>(4)?.max(0) as u32,
                })
            },
        )
    }

    /// When the next read-back of `provider` is due (`None`: nothing waits to be read back).
    pub fn next_read_back(
        &self,
        provider: ProviderKind,
        after: Duration,
    ) -> Result<Option<Millis>> {
        let after_ms = after.as_millis().min(i64::MAX as u128) as i64;
        // The later of the two times as a CASE: a two-argument max() is SQLite's alone.
        let t: Option<i64> = self.row(
            "SELECT min(CASE WHEN finished_at * 1000 + ?2 > verify_next_ms THEN finished_at * 1000 + ?2
                             ELSE verify_next_ms END)
             FROM work_items WHERE provider = ?1 AND state = 'deleted' AND verify_state IS NULL",
            args![provider.as_str(), after_ms],
            |r| r.get(0),
        )?;
        Ok(t.map(Millis))
    }

    /// Deleted chats still waiting to be read back, over every provider (status, metrics).
    pub fn read_backs_waiting(&self) -> Result<u64> {
        self.row(
            "SELECT count(*) FROM work_items WHERE state = 'deleted' AND verify_state IS NULL",
            args![],
            |r| r.get(0),
        )
    }

    /// Read-back counts over every deleted chat.
    pub fn verification_counts(&self) -> Result<VerificationCounts> {
        // count(*) FILTER and a cast sum: the same integers from both engines.
        self.row(
            "SELECT
                count(*) FILTER (WHERE state = 'deleted' AND verify_state = 'verified_absent'),
                count(*) FILTER (WHERE state = 'deleted' AND verify_state IS NULL),
                count(*) FILTER (WHERE state = 'deleted' AND verify_state = 'unverified'),
                count(*) FILTER (WHERE state = 'deleted' AND verify_state = 'not_checked'),
                CAST(coalesce(sum(reappeared), 0) AS BIGINT)
             FROM work_items",
            args![],
            |r| {
                Ok(VerificationCounts {
                    verified_absent: r.get(0)?,
                    waiting: r.get(1)?,
                    unverified: r.get(2)?,
                    not_checked: r.get(3)?,
                    reappeared: r.get(4)?,
                })
            },
        )
    }

    /// Records what reading chats back saw (see the module's rules), in one transaction.
    pub fn record_read_backs(
        &mut self,
        provider: ProviderKind,
        results: &[(i64, ReadBack)],
        now: Millis,
        limits: ReadBackLimits,
    ) -> Result<ReadBackSummary> {
        self.write(|tx| {
            let mut sum = ReadBackSummary::default();
            let mut settled = Vec::new();
            let mut returned = Vec::new();
            let mut changed = Vec::new();
            let mut absent = Vec::new();
            for (id, seen) in results {
                match seen {
                    ReadBack::Absent => {
                        let chat: Option<crate::audit::ScopedChat> = tx.row_opt(
                            "UPDATE work_items SET verify_state = 'verified_absent', verified_at = ?2,
                                    verify_error = NULL
                             WHERE id = ?1 AND state = 'deleted' AND verify_state IS NULL
                             RETURNING scope, session_id",
                            args![id, now.secs()],
                            |r| {
                                Ok(crate::audit::ScopedChat {
                                    scope: r.get(0)?,
                                    session_id: r.get(1)?,
                                })
                            },
                        )?;
                        if let Some(chat) = chat {
                            sum.absent += 1;
                            settled.push(*id);
                            absent.push(chat);
                        }
                    }
                    ReadBack::Undecided { why, retry_at } => {
                        let state: Option<Option<String>> = tx.row_opt(
                                "UPDATE work_items SET verify_attempts = verify_attempts + 1,
                                        verify_error = ?2, verify_next_ms = ?3,
                                        verify_state = CASE WHEN verify_attempts + 1 >= ?4 THEN 'unverified' END,
                                        verified_at = CASE WHEN verify_attempts + 1 >= ?4 THEN CAST(?5 AS BIGINT) END
                                 WHERE id = ?1 AND state = 'deleted' AND verify_state IS NULL
                                 RETURNING verify_state",
                                args![
                                    id,
                                    super::queue::truncate_error(why),
                                    retry_at,
                                    limits.max_attempts,
                                    now.secs()
                                ],
                                |r| r.get(0),
                            )?;
                        match state {
                            Some(Some(_)) => {
                                sum.unverified += 1;
                                settled.push(*id);
                                tracing::warn!(item = id, provider = %provider, reason = %why, "could not read a deleted chat back; reported unverified (never verified)");
                            }
                            Some(None) => sum.undecided += 1,
                            None => {}
                        }
                    }
                    ReadBack::Present { note } => {
                        if let Some(requeued) =
                            reappeared(tx, provider, *id, now, limits, note.as_deref())?
                        {
                            sum.reappeared += 1;
                            changed.push(*id);
                            if requeued {
                                sum.requeued += 1;
                                returned.push(*id);
                            } else {
                                sum.unkept += 1;
                            }
                        }
                    }
                }
            }
            if !absent.is_empty() {
                // The evidence each "read back absent" in a certificate rests on: sealed as it is
                // written, unlike the row's verify_state a group member can edit.
                let event = Event::ChatsReadBack(crate::audit::ChatsReadBack {
                    provider: provider.to_string(),
                    chats: absent,
                });
                super::audit::append(tx, now.secs(), None, &event)?;
            }
            super::holds::withhold(
                tx,
                super::holds::Queued::Items(&returned),
                now.secs(),
                Some(super::holds::HeldAt::ReadBack),
            )?;
            super::requests::forget_settled_owners(tx, &settled)?;
            super::requests::refresh_for_items(tx, &changed, now.secs())?;
            sum.requests_verified = verify_requests_of(tx, &settled, now.secs())?;
            Ok(sum)
        })
    }

    /// Each chat of a request with its verification, for the certificate and `requests show`.
    pub fn request_verification(&self, request_id: i64) -> Result<Vec<ItemVerification>> {
        self.rows(
            "SELECT w.provider, w.scope, w.session_id, w.state, w.verify_state, w.verified_at,
                    w.verify_attempts, w.verify_error, w.reappeared
             FROM request_items ri JOIN work_items w ON w.id = ri.item_id
             WHERE ri.request_id = ?1 ORDER BY w.provider, w.scope, w.session_id",
            args![request_id],
            |r| {
                Ok(ItemVerification {
                    provider: r.get(0)?,
                    scope: r.get(1)?,
                    session_id: r.get(2)?,
                    state: r.get(3)?,
                    verify_state: r.get(4)?,
                    verified_at: r.get(5)?,
                    verify_attempts: r.get::<i64>(6)?.max(0) as u32,
                    verify_error: r.get(7)?,
                    reappeared: r.get::<i64>(8)?.max(0) as u32,
                })
            },
        )
    }

    /// A request's `verified_at`, if every deleted chat of it was read back absent.
    pub fn request_verified_at(&self, request_id: i64) -> Result<Option<i64>> {
        Ok(self
            .row_opt(
                "SELECT verified_at FROM erasure_requests WHERE id = ?1",
                args![request_id],
                |r| r.get(0),
            )?
            .flatten())
    }
}

/// A chat read back present after its deletion was confirmed. `Some(true)`: back to pending;
/// `Some(false)`: dead (it came back too often); `None`: the item changed meanwhile.
fn reappeared(
    tx: &Tx<'_>,
    provider: ProviderKind,
    id: i64,
    now: Millis,
    limits: ReadBackLimits,
    note: Option<&str>,
) -> Result<Option<bool>> {
    let row: Option<(i64, Option<i64>, String, String)> = tx.row_opt(
        "SELECT reappeared, finished_at, scope, session_id FROM work_items
         WHERE id = ?1 AND state = 'deleted' AND verify_state IS NULL",
        args![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let Some((before, confirmed_at, scope, session_id)) = row else {
        return Ok(None);
    };
    let times = before + 1;
    let requeue = times <= i64::from(limits.max_reappearances);
    let at = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(now.secs().max(0) as u64),
    );
    if requeue {
        let why = match note {
            Some(note) => format!(
                "read back present at {at} after its deletion was confirmed (time {times} of at most {}): {note}; deleting it again",
                limits.max_reappearances
            ),
            None => format!(
                "read back present at {at} after its deletion was confirmed (time {times} of at most {}); deleting it again",
                limits.max_reappearances
            ),
        };
        tx.exec(
            "UPDATE work_items SET state = 'pending', outcome = NULL, finished_at = NULL, attempts = 0,
                    first_attempt_ms = NULL, next_attempt_ms = 0, reappeared = ?2, last_error = ?3,
                    verify_attempts = 0, verify_next_ms = 0, verify_error = NULL
             WHERE id = ?1",
            args![id, times, why],
        )?;
        tracing::error!(item = id, provider = %provider, scope, session_id, times, "a deleted chat reappeared at the provider; deleting it again");
    } else {
        let why = match note {
            Some(note) => format!(
                "read back present {times} times after confirmed deletions (last at {at}): {note}"
            ),
            None => format!(
                "read back present {times} times after confirmed deletions (last at {at}): {provider} does not keep this deletion; raise it with {provider}, then `forgetd requests retry`"
            ),
        };
        tx.exec(
            "UPDATE work_items SET state = 'dead', outcome = NULL, finished_at = ?2, reappeared = ?3,
                    last_error = ?4, verify_error = NULL
             WHERE id = ?1",
            args![id, now.secs(), times, why],
        )?;
        tracing::error!(item = id, provider = %provider, scope, session_id, times, "a deleted chat keeps reappearing at the provider; gave up on it");
    }
    let event = ChatReappeared {
        provider: provider.to_string(),
        scope,
        session_id,
        confirmed_at,
        read_at: now.secs(),
        times: times as u32,
        deleting_again: requeue,
    };
    super::audit::append(tx, now.secs(), None, &Event::ChatReappeared(event))?;
    Ok(Some(requeue))
}

/// Marks every complete request linked to `item_ids` verified when it now is; returns how many.
fn verify_requests_of(tx: &Tx<'_>, item_ids: &[i64], now: i64) -> Result<u64> {
    let mut n = 0;
    for r in super::requests::requests_of_items(tx, item_ids)? {
        if mark_verified(tx, r, now)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Records a complete request as verified when every deleted chat of it (at least one) was read
/// back absent and it is not recorded yet: `verified_at` and a `request.verified` event.
pub(crate) fn mark_verified(tx: &Tx<'_>, request_id: i64, now: i64) -> Result<bool> {
    let row: Option<(String, Option<i64>, i64, i64)> = tx.row_opt(
        "SELECT r.state, r.verified_at,
                (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id
                 WHERE ri.request_id = r.id AND w.state = 'deleted'),
                (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id
                 WHERE ri.request_id = r.id AND w.state = 'deleted'
                   AND (w.verify_state IS NULL OR w.verify_state <> 'verified_absent'))
             FROM erasure_requests r WHERE r.id = ?1",
        args![request_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let Some((state, verified_at, deleted, open)) = row else {
        return Ok(false);
    };
    if state != "complete" || verified_at.is_some() || deleted == 0 || open > 0 {
        return Ok(false);
    }
    tx.exec(
        "UPDATE erasure_requests SET verified_at = ?2, updated_at = ?2 WHERE id = ?1",
        args![request_id, now],
    )?;
    let items: Vec<VerifiedItem> = tx.rows(
        "SELECT w.provider, w.scope, w.session_id, w.verified_at
         FROM request_items ri JOIN work_items w ON w.id = ri.item_id
         WHERE ri.request_id = ?1 AND w.state = 'deleted' ORDER BY w.provider, w.scope, w.session_id",
        args![request_id],
        |r| {
            Ok(VerifiedItem {
                provider: r.get(0)?,
                scope: r.get(1)?,
                session_id: r.get(2)?,
                verified_at: r.get::<Option<i64>>(3)?.unwrap_or(now),
            })
        },
    )?;
    let event = Event::RequestVerified(RequestVerified {
        items,
        per_chat_evidence: true,
    });
    super::audit::append(tx, now, Some(request_id), &event)?;
    tracing::info!(
        request = request_id,
        "erasure request verified: every deleted chat was read back absent"
    );
    Ok(true)
}
