//! Erasure requests: filing (idempotent on `external_ref`), listing, showing, retrying, and
//! keeping each request's state in step with its items.
//!
//! A request's state is derived from its items and recomputed in the same transaction that changes
//! them: `in_progress` while any item is pending or in flight; then `failed` if any went dead,
//! else `complete` (every item deleted or held). `failed` is therefore final until
//! `requests retry` revives the dead items.

use super::db::{Row, Sql};
use crate::args;
use crate::audit::Event;

use super::Tx;
use serde::Serialize;

use super::queue::ItemState;
use super::{Result, Store, StoreError};
use crate::audit::{ClosedItem, RequestClosed};
use crate::model::RequestState;

/// The outcome of filing a request.
#[derive(Debug, Clone, Serialize)]
pub struct FiledRequest {
    pub id: i64,
    pub external_ref: Option<String>,
    pub state: RequestState,
    /// False when the ref was already filed (nothing changed).
    #[serde(skip)]
    pub created: bool,
    /// The ref was filed before: this is the existing request (`erase --json` says so).
    pub existed: bool,
    /// The existing request under this ref names another subject (a feeder bug worth a warning).
    #[serde(skip)]
    pub subject_differs: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub id: i64,
    pub external_ref: Option<String>,
    pub state: RequestState,
    pub received_at: i64,
    pub due_at: i64,
    pub resolved_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// When every deleted chat was read back absent (read-after-delete verification).
    pub verified_at: Option<i64>,
    pub items: ItemCounts,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ItemCounts {
    pub pending: u64,
    pub in_flight: u64,
    pub deleted: u64,
    pub held: u64,
    pub dead: u64,
}

impl ItemCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.in_flight + self.deleted + self.held + self.dead
    }

    /// The count of one state.
    pub fn get(&self, state: ItemState) -> u64 {
        match state {
            ItemState::Pending => self.pending,
            ItemState::InFlight => self.in_flight,
            ItemState::Deleted => self.deleted,
            ItemState::Held => self.held,
            ItemState::Dead => self.dead,
        }
    }

    /// Adds `n` items in `state`.
    pub fn add(&mut self, state: ItemState, n: u64) {
        let slot = match state {
            ItemState::Pending => &mut self.pending,
            ItemState::InFlight => &mut self.in_flight,
            ItemState::Deleted => &mut self.deleted,
            ItemState::Held => &mut self.held,
            ItemState::Dead => &mut self.dead,
        };
        *slot += n;
    }

    /// (state, count) for every state, in the state machine's order.
    pub fn by_state(&self) -> [(ItemState, u64); 5] {
        ItemState::ALL.map(|s| (s, self.get(s)))
    }
}

/// A request's own columns.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub external_ref: Option<String>,
    pub subject_hash: Option<String>,
    pub state: String,
    pub received_at: i64,
    pub due_at: Option<i64>,
    pub completed_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestItem {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub state: String,
    pub attempts: u32,
    /// `deleted` or `already_absent` once the provider confirmed.
    pub outcome: Option<String>,
    pub finished_at: Option<i64>,
    pub last_error: Option<String>,
    pub hold_id: Option<i64>,
    pub hold_reason: Option<String>,
    /// Read-after-delete verification of a deleted chat: `verified_absent`, `unverified`,
    /// `not_checked`, or null (not read back yet).
    pub verify_state: Option<String>,
    pub verified_at: Option<i64>,
    /// Why reading back could not decide, when it could not.
    pub verify_error: Option<String>,
    /// Times it was read back present after a confirmed deletion.
    pub reappeared: u32,
}

/// One request with its chats. In JSON the summary's fields come first, its per-state counts as
/// `counts` and the chats as `items` (flattening the summary would give two `items` keys, and a
/// JSON reader keeps only one of them).
#[derive(Debug, Clone)]
pub struct RequestDetail {
    pub summary: RequestSummary,
    pub items: Vec<RequestItem>,
    /// The listings by subject asked for it, and what each came to.
    pub listings: Vec<super::discovery::ListingRow>,
}

impl Serialize for RequestDetail {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = &self.summary;
        let mut m = s.serialize_map(Some(11))?;
        m.serialize_entry("id", &r.id)?;
        m.serialize_entry("external_ref", &r.external_ref)?;
        m.serialize_entry("state", &r.state)?;
        m.serialize_entry("received_at", &r.received_at)?;
        m.serialize_entry("due_at", &r.due_at)?;
        m.serialize_entry("resolved_at", &r.resolved_at)?;
        m.serialize_entry("completed_at", &r.completed_at)?;
        m.serialize_entry("verified_at", &r.verified_at)?;
        m.serialize_entry("counts", &r.items)?;
        m.serialize_entry("items", &self.items)?;
        m.serialize_entry("listings", &self.listings)?;
        m.end()
    }
}

const SUMMARY_COLUMNS: &str = "r.id, r.external_ref, r.state, r.received_at, r.due_at, r.resolved_at, r.completed_at, r.verified_at,
    (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'pending'),
    (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'in_flight'),
    (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'deleted'),
    (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'held'),
    (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'dead')";

fn summary_row(r: &Row<'_>, deadline_secs: i64) -> Result<RequestSummary> {
    let state: String = r.get(2)?;
    let received_at: i64 = r.get(3)?;
    Ok(RequestSummary {
        id: r.get(0)?,
        external_ref: r.get(1)?,
        state: RequestState::parse(&state).unwrap_or(RequestState::Received),
        received_at,
        due_at: r
            .get::<Option<i64>>(4)?
            .unwrap_or(received_at.saturating_add(deadline_secs)),
        resolved_at: r.get(5)?,
        completed_at: r.get(6)?,
        verified_at: r.get(7)?,
        items: ItemCounts {
            pending: r.get(8)?,
            in_flight: r.get(9)?,
            deleted: r.get(10)?,
            held: r.get(11)?,
            dead: r.get(12)?,
        },
    })
}

impl Store {
    /// Files an erasure request. Filing an existing `external_ref` changes nothing and returns the
    /// existing request.
    pub fn file_request(
        &mut self,
        subject: &str,
        external_ref: Option<&str>,
        received_at: i64,
        deadline_secs: i64,
    ) -> Result<FiledRequest> {
        self.write(|tx| {
            let inserted: Option<(i64, String)> = tx.row_opt(
                "INSERT INTO erasure_requests (subject, external_ref, received_at, due_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (external_ref) DO NOTHING
                 RETURNING id, state",
                args![subject, external_ref, received_at, received_at.saturating_add(deadline_secs)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if let Some((id, state)) = inserted {
                return Ok(FiledRequest {
                    id,
                    external_ref: external_ref.map(str::to_string),
                    state: RequestState::parse(&state).unwrap_or(RequestState::Received),
                    created: true,
                    existed: false,
                    subject_differs: false,
                });
            }
            let (id, state, existing_subject, subject_hash): (i64, String, String, Option<String>) = tx.row(
                "SELECT id, state, subject, subject_hash FROM erasure_requests WHERE external_ref = ?1",
                args![external_ref],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            Ok(FiledRequest {
                id,
                external_ref: external_ref.map(str::to_string),
                state: RequestState::parse(&state).unwrap_or(RequestState::Received),
                created: false,
                existed: true,
                // After completion the subject is replaced by its hash: do not compare then.
                subject_differs: subject_hash.is_none() && existing_subject != subject,
            })
        })
    }

    pub fn list_requests(&self, deadline_secs: i64) -> Result<Vec<RequestSummary>> {
        self.rows(
            &format!("SELECT {SUMMARY_COLUMNS} FROM erasure_requests r ORDER BY r.id"),
            args![],
            |r| summary_row(r, deadline_secs),
        )
    }

    pub fn request_detail(&self, id: i64, deadline_secs: i64) -> Result<RequestDetail> {
        let summary = self
            .row_opt(
                &format!("SELECT {SUMMARY_COLUMNS} FROM erasure_requests r WHERE r.id = ?1"),
                args![id],
                |r| summary_row(r, deadline_secs),
            )?
            .ok_or_else(|| StoreError::NotFound(format!("no erasure request with id {id}")))?;
        let items = self.rows(
            "SELECT w.provider, w.scope, w.session_id, w.state, w.attempts, w.outcome, w.finished_at,
                    w.last_error, w.hold_id, h.reason, w.verify_state, w.verified_at, w.verify_error,
                    w.reappeared
             FROM request_items ri JOIN work_items w ON w.id = ri.item_id
             LEFT JOIN holds h ON h.id = w.hold_id
             WHERE ri.request_id = ?1
             ORDER BY w.provider, w.scope, w.session_id",
            args![id],
            |r| {
                Ok(RequestItem {
                    provider: r.get(0)?,
                    scope: r.get(1)?,
                    session_id: r.get(2)?,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    outcome: r.get(5)?,
                    finished_at: r.get(6)?,
                    last_error: r.get(7)?,
                    hold_id: r.get(8)?,
                    hold_reason: r.get(9)?,
                    verify_state: r.get(10)?,
                    verified_at: r.get(11)?,
                    verify_error: r.get(12)?,
                    reappeared: r.get::<i64>(13)?.max(0) as u32,
                })
            },
        )?;
        let listings = self.listings_of(id)?;
        Ok(RequestDetail {
            summary,
            items,
            listings,
        })
    }

    /// The request's own columns, as the certificate states them.
    pub fn request_record(&self, id: i64) -> Result<RequestRecord> {
        self.row_opt(
            "SELECT external_ref, subject_hash, state, received_at, due_at, completed_at
                 FROM erasure_requests WHERE id = ?1",
            args![id],
            |r| {
                Ok(RequestRecord {
                    external_ref: r.get(0)?,
                    subject_hash: r.get(1)?,
                    state: r.get(2)?,
                    received_at: r.get(3)?,
                    due_at: r.get(4)?,
                    completed_at: r.get(5)?,
                })
            },
        )?
        .ok_or_else(|| StoreError::NotFound(format!("no erasure request with id {id}")))
    }

    /// Gives a request's dead items another round: back to pending with fresh attempt counts;
    /// its failed listings by subject are asked again. Returns how many items and listings.
    pub fn retry_request(&mut self, id: i64, now: i64) -> Result<usize> {
        self.write(|tx| {
            let exists: Option<i64> = tx.row_opt(
                "SELECT id FROM erasure_requests WHERE id = ?1",
                args![id],
                |r| r.get(0),
            )?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("no erasure request with id {id}")));
            }
            let revived: Vec<i64> = tx.rows(
                "UPDATE work_items SET state = 'pending', attempts = 0, first_attempt_ms = NULL,
                        next_attempt_ms = 0, finished_at = NULL, reappeared = 0
                 WHERE state = 'dead' AND id IN (SELECT item_id FROM request_items WHERE request_id = ?1)
                 RETURNING id",
                args![id],
                |r| r.get(0),
            )?;
            // A listing that failed is asked again, from a fresh start.
            let rediscovering = tx.exec(
                "UPDATE request_discovery SET state = 'pending', attempts = 0,
                        first_failed_at = NULL, next_at = 0, finished_at = NULL,
                        lease_owner = NULL, lease_until = NULL
                 WHERE request_id = ?1 AND state = 'failed'",
                args![id],
            )? as u64;
            if revived.is_empty() && rediscovering == 0 {
                return Ok(0);
            }
            // A hold placed since they went dead keeps them: held, not sent.
            let held = super::holds::withhold(
                tx,
                super::holds::Queued::Items(&revived),
                now,
                Some(super::holds::HeldAt::Retry),
            )?;
            let event = crate::audit::RequestRetried {
                revived: revived.len() as u64,
                held: held.len() as u64,
                rediscovering,
            };
            super::audit::append(tx, now, Some(id), &Event::RequestRetried(event))?;
            refresh_request(tx, id, now)?;
            Ok(revived.len() + rediscovering as usize)
        })
    }
}

/// Recomputes the state of every resolved request linked to any of `item_ids`; returns the ids of
/// requests whose state changed.
pub(crate) fn refresh_for_items(tx: &Tx<'_>, item_ids: &[i64], now: i64) -> Result<Vec<i64>> {
    let mut changed = Vec::new();
    for r in requests_of_items(tx, item_ids)? {
        if refresh_request(tx, r, now)?.is_some() {
            changed.push(r);
        }
    }
    Ok(changed)
}

/// The requests linked to any of `item_ids`, each once, in id order.
pub(crate) fn requests_of_items(
    tx: &Tx<'_>,
    item_ids: &[i64],
) -> Result<std::collections::BTreeSet<i64>> {
    let mut requests = std::collections::BTreeSet::new();
    for id in item_ids {
        for r in tx.rows(
            "SELECT request_id FROM request_items WHERE item_id = ?1",
            args![id],
            |r| r.get::<i64>(0),
        )? {
            requests.insert(r);
        }
    }
    Ok(requests)
}

/// Recomputes one resolved request's state from its items. Returns the new state if it changed.
pub(crate) fn refresh_request(tx: &Tx<'_>, id: i64, now: i64) -> Result<Option<RequestState>> {
    // A listing still to come keeps the request open; one that failed fails it, as a dead chat
    // does: chats a complete listing would have found may remain.
    let row: Option<(String, i64, i64, Option<i64>)> = tx.row_opt(
        "SELECT r.state,
            (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id
             WHERE ri.request_id = r.id AND w.state IN ('pending', 'in_flight'))
            + (SELECT count(*) FROM request_discovery d
               WHERE d.request_id = r.id AND d.state = 'pending'),
            (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id
             WHERE ri.request_id = r.id AND w.state = 'dead')
            + (SELECT count(*) FROM request_discovery d
               WHERE d.request_id = r.id AND d.state = 'failed'),
            r.closing_seq
         FROM erasure_requests r WHERE r.id = ?1",
        args![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let Some((state, open, dead, closing_seq)) = row else {
        // The schema refuses a DELETE of a request; a row removed anyway (an old schema, a
        // dropped trigger) leaves its items to other requests and rules, never stops the worker.
        tracing::warn!(
            request = id,
            "erasure request row is gone; its items stay in the queue"
        );
        return Ok(None);
    };
    let old = RequestState::parse(&state).unwrap_or(RequestState::Received);
    if old == RequestState::Received {
        return Ok(None); // not resolved yet: resolution sets the first state
    }
    let new = if open > 0 {
        RequestState::InProgress
    } else if dead > 0 {
        RequestState::Failed
    } else {
        RequestState::Complete
    };
    let closed = matches!(new, RequestState::Complete | RequestState::Failed);
    // Callers refresh a request because one of its chats changed. A closed request whose chat
    // changed without changing the request's state (a confirmed deletion read back present and
    // now held, or given up as unkept) is closed again: its closing event must state each chat's
    // fate as it is now, and a certificate reads the latest.
    let reclose = new == old && closed;
    if new == old && !(reclose && closing_event_is_stale(tx, id)?) {
        return Ok(None);
    }
    if reclose {
        tx.exec(
            "UPDATE erasure_requests SET updated_at = ?2, verified_at = NULL, closing_seq = NULL
             WHERE id = ?1",
            args![id, now],
        )?;
    } else {
        let completed_at = closed.then_some(now);
        // A request back at work (a chat reappeared, a hold lifted) is verified again when it
        // completes again.
        tx.exec(
            "UPDATE erasure_requests SET state = ?2, completed_at = ?3, updated_at = ?4,
                    verified_at = CASE WHEN ?2 = 'complete' THEN verified_at END, closing_seq = NULL
             WHERE id = ?1",
            args![id, new.as_str(), completed_at, now],
        )?;
        let was_closed = matches!(old, RequestState::Complete | RequestState::Failed);
        if was_closed && !closed {
            // A chat of the closed request changed (reappeared, a hold lifted, a retry): the
            // trail says the request is at work again, so its last closing event no longer
            // stands; a new one follows when it settles.
            let event = Event::RequestReopened(crate::audit::RequestReopened {
                was: old.as_str().to_string(),
                closing_seq,
            });
            super::audit::append(tx, now, Some(id), &event)?;
        }
    }
    // The closing event certifies what was erased: only a process holding the chain key writes
    // it. Without the key (a feeder's `holds add` completed the request) the daemon writes it
    // within a second ([`Store::close_deferred`]).
    if matches!(new, RequestState::Complete | RequestState::Failed) && tx.chain_key().is_some() {
        close(tx, id, new, now)?;
    }
    if new == RequestState::Complete {
        minimize(tx, id)?;
    }
    Ok(Some(new))
}

/// Whether a closed request's closing event states a fate (state, hold) for some chat that is not
/// the chat's now. `false` while the closing event is still to be written (`closing_seq` NULL:
/// the daemon writes it from the current state).
fn closing_event_is_stale(tx: &Tx<'_>, id: i64) -> Result<bool> {
    let data: Option<String> = tx.row_opt(
        "SELECT a.data FROM erasure_requests r JOIN audit_log a ON a.seq = r.closing_seq
             WHERE r.id = ?1",
        args![id],
        |r| r.get(0),
    )?;
    let Some(data) = data else {
        return Ok(false);
    };
    type Fate = (String, String, String, String, Option<i64>);
    let stated: std::collections::BTreeSet<Fate> =
        match serde_json::from_str::<RequestClosed>(&data) {
            Ok(c) => c
                .items
                .into_iter()
                .map(|i| (i.provider, i.scope, i.session_id, i.state, i.hold_id))
                .collect(),
            // Unreadable: closing again states the truth.
            Err(_) => return Ok(true),
        };
    let now: std::collections::BTreeSet<Fate> = tx
        .rows(
            "SELECT w.provider, w.scope, w.session_id, w.state, w.hold_id
             FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = ?1",
            args![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?
        .into_iter()
        .collect();
    Ok(stated != now)
}

/// The closing event of a finished request, its journal line, and (complete, every chat read
/// back absent already) its verification.
fn close(tx: &Tx<'_>, id: i64, state: RequestState, now: i64) -> Result<()> {
    record_outcome(tx, id, state, now)?;
    log_finished(tx, id, state, now)?;
    if state == RequestState::Complete {
        // Its chats may all have been read back absent already (another request's).
        super::verification::mark_verified(tx, id, now)?;
    }
    Ok(())
}

impl Store {
    /// Writes the closing events that processes without the chain key left to the daemon
    /// (requests finished with `closing_seq` NULL); returns how many. Needs the key.
    pub fn close_deferred(&mut self, now: i64) -> Result<usize> {
        if !self.holds_chain_key() {
            return Ok(0);
        }
        self.write(|tx| {
            let open: Vec<(i64, String)> = tx.rows(
                "SELECT id, state FROM erasure_requests
                 WHERE state IN ('complete', 'failed') AND closing_seq IS NULL ORDER BY id",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            for (id, state) in &open {
                let state = RequestState::parse(state).unwrap_or(RequestState::Failed);
                close(tx, *id, state, now)?;
            }
            Ok(open.len())
        })
    }
}

/// One journal line per request that completed (info) or failed (warning): its ref, its counts and
/// whether it was late. No subject: the ref leads to the person in the feeder's own records.
fn log_finished(tx: &Tx<'_>, id: i64, state: RequestState, now: i64) -> Result<()> {
    let (external_ref, due_at, deleted, held, dead): (Option<String>, Option<i64>, i64, i64, i64) = tx.row(
            "SELECT r.external_ref, r.due_at,
                (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'deleted'),
                (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'held'),
                (SELECT count(*) FROM request_items ri JOIN work_items w ON w.id = ri.item_id WHERE ri.request_id = r.id AND w.state = 'dead')
             FROM erasure_requests r WHERE r.id = ?1",
            args![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    let overdue = due_at.is_some_and(|d| now > d);
    let external_ref = external_ref.unwrap_or_default();
    if state == RequestState::Failed {
        let listings_failed: i64 = tx.row(
            "SELECT count(*) FROM request_discovery WHERE request_id = ?1 AND state = 'failed'",
            args![id],
            |r| r.get(0),
        )?;
        let why = match (dead > 0, listings_failed > 0) {
            (true, true) => {
                "some chats could not be deleted and a listing by subject could not be completed"
            }
            (false, true) => {
                "a listing by subject could not be completed (chats it would find may remain)"
            }
            _ => "some chats could not be deleted",
        };
        tracing::warn!(
            request = id,
            external_ref,
            deleted,
            held,
            dead,
            listings_failed,
            overdue,
            "erasure request failed: {why}; see `forgetd requests show {id}`, then `forgetd requests retry {id}`"
        );
    } else {
        tracing::info!(
            request = id,
            external_ref,
            deleted,
            held,
            overdue,
            "erasure request complete"
        );
    }
    Ok(())
}

/// The audit event that closes a request: every chat with its outcome, confirmation time, hold
/// reason or last error. The erasure certificate is built from this event.
fn record_outcome(tx: &Tx<'_>, id: i64, state: RequestState, now: i64) -> Result<()> {
    let items: Vec<ClosedItem> = tx.rows(
        "SELECT w.provider, w.scope, w.session_id, w.state, w.outcome, w.finished_at, w.last_error, h.id, h.reason
         FROM request_items ri JOIN work_items w ON w.id = ri.item_id LEFT JOIN holds h ON h.id = w.hold_id
         WHERE ri.request_id = ?1 ORDER BY w.provider, w.scope, w.session_id",
        args![id],
        |r| {
            Ok(ClosedItem {
                provider: r.get(0)?,
                scope: r.get(1)?,
                session_id: r.get(2)?,
                state: r.get(3)?,
                outcome: r.get(4)?,
                confirmed_at: r.get(5)?,
                last_error: r.get(6)?,
                hold_id: r.get(7)?,
                hold_reason: r.get(8)?,
            })
        },
    )?;
    let closed = RequestClosed { items };
    let event = if state == RequestState::Complete {
        Event::RequestCompleted(closed)
    } else {
        Event::RequestFailed(closed)
    };
    super::audit::append(tx, now, Some(id), &event)?;
    tx.exec(
        "UPDATE erasure_requests SET closing_seq = (SELECT max(seq) FROM audit_log) WHERE id = ?1",
        args![id],
    )?;
    Ok(())
}

/// After completion, keep no more personal data than the proof needs, and never less than live
/// chats need: the request's subject becomes its keyed hash and its deleted chats leave the
/// inventory. Every other row of the person stays attributed (chats still held, chats recorded
/// while the request ran): subject holds and the person's next request must keep seeing them.
fn minimize(tx: &Tx<'_>, id: i64) -> Result<()> {
    let (subject, hash): (String, Option<String>) = tx.row(
        "SELECT subject, subject_hash FROM erasure_requests WHERE id = ?1",
        args![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(hash) = hash else { return Ok(()) };
    if subject == hash {
        return Ok(());
    }
    // A deletion not read back yet is not proven: its row stays (with the owner its work item
    // keeps) until the read-back settles it ([`forget_settled_owners`]), so a chat the provider
    // did not keep comes back still attributed.
    tx.exec(
        "DELETE FROM sessions WHERE subject = ?1 AND (provider, scope, session_id) IN
           (SELECT w.provider, w.scope, w.session_id FROM request_items ri JOIN work_items w ON w.id = ri.item_id
            WHERE ri.request_id = ?2 AND w.state = 'deleted'
              AND (w.subject IS NULL OR w.verify_state IS NOT NULL))",
        args![subject, id],
    )?;
    tx.exec(
        "UPDATE erasure_requests SET subject = ?2 WHERE id = ?1",
        args![id, hash],
    )?;
    Ok(())
}

/// Deleted chats whose read-back settled (absent, or given up as unverified): the owner their
/// work item kept goes, and so does their inventory row when it still names that owner and a
/// completed request covered them (what [`minimize`] left for the read-back).
pub(crate) fn forget_settled_owners(tx: &Tx<'_>, item_ids: &[i64]) -> Result<()> {
    for id in item_ids {
        tx.exec(
            "DELETE FROM sessions WHERE id IN (
                 SELECT s.id FROM sessions s JOIN work_items w
                   ON w.provider = s.provider AND w.scope = s.scope AND w.session_id = s.session_id
                 WHERE w.id = ?1 AND w.state = 'deleted' AND w.verify_state IS NOT NULL
                   AND s.subject = w.subject
                   AND EXISTS (SELECT 1 FROM request_items ri JOIN erasure_requests r ON r.id = ri.request_id
                               WHERE ri.item_id = w.id AND r.state = 'complete' AND r.subject = r.subject_hash))",
            args![id],
        )?;
        tx.exec(
            "UPDATE work_items SET subject = NULL WHERE id = ?1 AND state = 'deleted' AND verify_state IS NOT NULL",
            args![id],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::testing::temp_store;

    #[test]
    fn filing_the_same_ref_twice_yields_one_request() {
        let (_d, mut s) = temp_store();
        let a = s.file_request("alice", Some("ref-1"), 100, 10).unwrap();
        let b = s.file_request("alice", Some("ref-1"), 200, 10).unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.id, b.id);
        assert!(!b.subject_differs);
        let c = s.file_request("bob", Some("ref-1"), 200, 10).unwrap();
        assert!(c.subject_differs);
        assert_eq!(s.list_requests(10).unwrap().len(), 1);
        // no ref: every filing is a new request
        let d = s.file_request("alice", None, 1, 10).unwrap();
        let e = s.file_request("alice", None, 1, 10).unwrap();
        assert_ne!(d.id, e.id);
    }

    #[test]
    fn request_detail_json_has_each_key_once() {
        let (_d, mut s) = temp_store();
        let r = s.file_request("alice", Some("ref-1"), 100, 10).unwrap();
        let json = serde_json::to_string(&s.request_detail(r.id, 10).unwrap()).unwrap();
        assert_eq!(json.matches("\"items\"").count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["items"].is_array() && v["counts"]["pending"] == 0, "{v}");
        assert_eq!(v["external_ref"], "ref-1");
    }

    #[test]
    fn retry_of_unknown_request_is_not_found() {
        let (_d, mut s) = temp_store();
        assert!(matches!(
            s.retry_request(42, 0),
            Err(crate::store::StoreError::NotFound(_))
        ));
    }
}
