//! The numbers `forgetd status` and the daemon's STATUS= line show: queue depth by state and
//! provider, requests by state, overdue and soon-due requests, dead items, paused providers, each
//! provider's politeness gate (as the executor last wrote it), rules waiting for approval.

use std::collections::BTreeMap;

use serde::Serialize;

use super::db::{Engine, Sql};
use super::queue::ItemState;
use super::requests::ItemCounts;
use super::{Result, Store};
use crate::args;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// provider -> count per item state
    pub items: BTreeMap<String, ItemCounts>,
    /// request state -> count
    pub requests: BTreeMap<String, u64>,
    /// Open requests past their due date.
    pub overdue: Vec<DueRequest>,
    /// Open requests due within the next 7 days.
    pub due_soon: Vec<DueRequest>,
    pub dead_items: u64,
    /// Age in seconds of the oldest pending item.
    pub oldest_pending_age_secs: Option<i64>,
    pub paused_providers: Vec<PausedProvider>,
    /// Each provider's gate as the executor last wrote it (none before its first run).
    pub gates: Vec<GateRow>,
    pub rules_awaiting_approval: Vec<String>,
    /// Read-after-delete verification over every deleted chat.
    pub verification: super::verification::VerificationCounts,
    /// Listings by subject: how many are still to come, how many of those failed a try, and
    /// the failed ones of requests that are not re-opened.
    pub listings: ListingStatus,
    /// PostgreSQL: the instances working the queue and what each holds (none on SQLite: one
    /// daemon per file).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceRow>,
}

/// Listings by subject across requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListingStatus {
    pub pending: u64,
    /// Pending after a failed try (waiting for the next).
    pub retrying: u64,
    /// Listings that failed for good (the request ends, or ended, failed).
    pub failed_total: u64,
    /// The latest of them (at most [`FAILED_LISTINGS_SHOWN`]).
    pub failed: Vec<FailedListing>,
}

/// How many failed listings `status` names.
pub const FAILED_LISTINGS_SHOWN: usize = 20;

/// A listing by subject that failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedListing {
    pub request_id: i64,
    pub external_ref: Option<String>,
    pub provider: String,
    pub scope: String,
    pub reason: Option<String>,
    pub finished_at: Option<i64>,
}

/// One instance on a shared PostgreSQL queue, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_ms: i64,
    /// Since its last heartbeat, on the server's clock.
    pub heartbeat_age_ms: i64,
    /// Its heartbeat has not expired: the others do not take it for dead.
    pub alive: bool,
    /// Batches it claimed that have no answer yet.
    pub open_batches: u64,
    /// Chats it has in flight.
    pub items_in_flight: u64,
}

/// A copy of one provider's politeness gate ([`crate::providers::gate`]), kept for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateRow {
    pub provider: String,
    /// running, throttled, paused
    pub state: String,
    /// Calls per second it paces at; `None`: no limit (none configured, none learned).
    pub rate_per_s: Option<f64>,
    /// Whether the rate was learned from the provider's throttling.
    pub rate_learned: bool,
    pub concurrency: u32,
    pub max_concurrency: u32,
    /// While throttled: when calls may start again (unix ms).
    pub resume_at_ms: Option<i64>,
    /// While paused: when the next probe goes out (unix ms).
    pub next_probe_ms: Option<i64>,
    /// Throttled answers since the daemon started.
    pub throttles: u64,
    /// When it was written (unix ms); `None` on a row not yet written.
    pub updated_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DueRequest {
    pub id: i64,
    pub external_ref: Option<String>,
    pub due_at: i64,
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PausedProvider {
    pub provider: String,
    pub reason: String,
    pub paused_at: Option<i64>,
}

pub const SOON_SECS: i64 = 7 * 86_400;

impl Store {
    pub fn status(&self, now: i64, deadline_secs: i64) -> Result<Status> {
        let mut st = Status {
            verification: self.verification_counts()?,
            ..Status::default()
        };
        let counts = self.rows(
            "SELECT provider, state, count(*) FROM work_items GROUP BY provider, state",
            args![],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<i64>(2)?)),
        )?;
        for (p, s, n) in counts {
            let state = ItemState::parse(&s)
                .ok_or_else(|| super::StoreError::Invalid(format!("unknown item state {s}")))?;
            if state == ItemState::Dead {
                st.dead_items += n as u64;
            }
            st.items.entry(p).or_default().add(state, n as u64);
        }
        st.requests = self
            .rows(
                "SELECT state, count(*) FROM erasure_requests GROUP BY state",
                args![],
                |r| Ok((r.get::<String>(0)?, r.get::<u64>(1)?)),
            )?
            .into_iter()
            .collect();
        let due = self.rows(
            "SELECT id, external_ref, coalesce(due_at, received_at + ?1), state FROM erasure_requests
             WHERE state IN ('received', 'in_progress', 'failed') AND coalesce(due_at, received_at + ?1) <= CAST(?2 AS BIGINT) + ?3
             ORDER BY 3",
            args![deadline_secs, now, SOON_SECS],
            |r| {
                Ok(DueRequest {
                    id: r.get(0)?,
                    external_ref: r.get(1)?,
                    due_at: r.get(2)?,
                    state: r.get(3)?,
                })
            },
        )?;
        for d in due {
            if d.due_at <= now {
                st.overdue.push(d);
            } else {
                st.due_soon.push(d);
            }
        }
        let (pending, retrying, failed_total): (i64, i64, i64) = self.row(
            "SELECT coalesce(sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0),
                    coalesce(sum(CASE WHEN state = 'pending' AND attempts > 0 THEN 1 ELSE 0 END), 0),
                    coalesce(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0)
             FROM request_discovery",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        st.listings = ListingStatus {
            pending: pending.max(0) as u64,
            retrying: retrying.max(0) as u64,
            failed_total: failed_total.max(0) as u64,
            failed: self.rows(
                "SELECT d.request_id, r.external_ref, d.provider, d.scope, d.last_error, d.finished_at
                 FROM request_discovery d LEFT JOIN erasure_requests r ON r.id = d.request_id
                 WHERE d.state = 'failed' ORDER BY d.finished_at DESC, d.request_id DESC LIMIT ?1",
                args![FAILED_LISTINGS_SHOWN],
                |r| {
                    Ok(FailedListing {
                        request_id: r.get(0)?,
                        external_ref: r.get(1)?,
                        provider: r.get(2)?,
                        scope: r.get(3)?,
                        reason: r.get(4)?,
                        finished_at: r.get(5)?,
                    })
                },
            )?,
        };
        st.oldest_pending_age_secs = self.row(
            "SELECT ?1 - min(created_at) FROM work_items WHERE state = 'pending'",
            args![now],
            |r| r.get(0),
        )?;
        st.paused_providers = self.rows(
            "SELECT provider, paused_reason, paused_at FROM provider_state WHERE paused_reason IS NOT NULL ORDER BY provider",
            args![],
            |r| {
                Ok(PausedProvider {
                    provider: r.get(0)?,
                    reason: r.get(1)?,
                    paused_at: r.get(2)?,
                })
            },
        )?;
        st.gates = self.rows(
            "SELECT provider, gate_state, rate_per_s, rate_learned, concurrency, max_concurrency,
                    resume_at_ms, next_probe_ms, throttles, gate_updated_ms
             FROM provider_state WHERE gate_state IS NOT NULL ORDER BY provider",
            args![],
            |r| {
                Ok(GateRow {
                    provider: r.get(0)?,
                    state: r.get(1)?,
                    rate_per_s: r.get(2)?,
                    rate_learned: r.get(3)?,
                    concurrency: r.get(4)?,
                    max_concurrency: r.get(5)?,
                    resume_at_ms: r.get(6)?,
                    next_probe_ms: r.get(7)?,
                    throttles: r.get::<i64>(8)?.max(0) as u64,
                    updated_ms: r.get(9)?,
                })
            },
        )?;
        if self.engine() == Engine::Postgres {
            st.instances = self.rows(
                "SELECT i.id, i.host, i.pid, i.version, i.started_ms,
                        forgetd_now_ms() - i.heartbeat_ms, i.expires_ms >= forgetd_now_ms(),
                        (SELECT count(*) FROM batches b
                          WHERE b.instance_id = i.id AND b.answered_ms IS NULL),
                        (SELECT count(*) FROM work_items w JOIN batches b ON b.id = w.batch_id
                          WHERE b.instance_id = i.id AND w.state = 'in_flight')
                 FROM forgetd_instances i ORDER BY i.started_ms, i.id",
                args![],
                |r| {
                    Ok(InstanceRow {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        pid: r.get(2)?,
                        version: r.get(3)?,
                        started_ms: r.get(4)?,
                        heartbeat_age_ms: r.get(5)?,
                        alive: r.get(6)?,
                        open_batches: r.get(7)?,
                        items_in_flight: r.get(8)?,
                    })
                },
            )?;
        }
        st.rules_awaiting_approval = self.rows(
            "SELECT rule_name FROM rule_state WHERE awaiting_approval IS NOT NULL AND approved = 0 ORDER BY rule_name",
            args![],
            |r| r.get(0),
        )?;
        Ok(st)
    }
}

/// What the status page shows besides [`Status`]: open requests by due date, the latest
/// failures, holds and rules. Refs, hashes, counts and provider answers only: no subject.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    pub status: Status,
    /// Open requests, soonest due first (at most [`OVERVIEW_REQUESTS`]).
    pub open_requests: Vec<OpenRequest>,
    /// Open requests in all (the list above may be cut).
    pub open_total: u64,
    /// The latest items that failed: dead ones and ones waiting to retry (at most
    /// [`OVERVIEW_FAILURES`]).
    pub failures: Vec<Failure>,
    pub active_holds: u64,
    /// Each rule's latest run, by rule name.
    pub last_runs: BTreeMap<String, LastRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub started_at: i64,
    pub matched: u64,
    pub enqueued: u64,
    pub held: u64,
    pub outcome: Option<String>,
}

pub const OVERVIEW_REQUESTS: usize = 50;
pub const OVERVIEW_FAILURES: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct OpenRequest {
    pub id: i64,
    pub external_ref: Option<String>,
    pub state: String,
    pub due_at: i64,
    /// Its chats not yet deleted, held or dead.
    pub items_left: u64,
    pub items: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub provider: String,
    /// `dead`, or `pending` for an item waiting to retry.
    pub state: String,
    pub attempts: u32,
    pub error: String,
    /// When it went dead, or when its next try is due (unix seconds).
    pub at: i64,
}

impl Store {
    /// The status page's read model.
    pub fn overview(&self, now: i64, deadline_secs: i64) -> Result<Overview> {
        let status = self.status(now, deadline_secs)?;
        let open_total: i64 = self.row(
            "SELECT count(*) FROM erasure_requests WHERE state IN ('received', 'in_progress', 'failed')",
            args![],
            |r| r.get(0),
        )?;
        let open_requests = self.rows(
            "SELECT r.id, r.external_ref, r.state, coalesce(r.due_at, r.received_at + ?1),
                    count(w.id), count(w.id) FILTER (WHERE w.state IN ('pending', 'in_flight'))
             FROM erasure_requests r
             LEFT JOIN request_items ri ON ri.request_id = r.id
             LEFT JOIN work_items w ON w.id = ri.item_id
             WHERE r.state IN ('received', 'in_progress', 'failed')
             GROUP BY r.id ORDER BY 4, r.id LIMIT ?2",
            args![deadline_secs, OVERVIEW_REQUESTS],
            |r| {
                Ok(OpenRequest {
                    id: r.get(0)?,
                    external_ref: r.get(1)?,
                    state: r.get(2)?,
                    due_at: r.get(3)?,
                    items: r.get(4)?,
                    items_left: r.get(5)?,
                })
            },
        )?;
        let failures = self.rows(
            // Dead items first, the latest first; then items waiting to retry, the next due first.
            "SELECT provider, state, attempts, last_error,
                    coalesce(finished_at, next_attempt_ms / 1000) AS at
             FROM work_items WHERE last_error IS NOT NULL AND state IN ('dead', 'pending')
             ORDER BY state = 'dead' DESC,
                      CASE WHEN state = 'dead' THEN -finished_at ELSE next_attempt_ms END, id DESC
             LIMIT ?1",
            args![OVERVIEW_FAILURES],
            |r| {
                Ok(Failure {
                    provider: r.get(0)?,
                    state: r.get(1)?,
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    at: r.get(4)?,
                })
            },
        )?;
        let active_holds: i64 = self.row(
            "SELECT count(*) FROM holds WHERE removed_at IS NULL",
            args![],
            |r| r.get(0),
        )?;
        let last_runs = self
            .rows(
                "SELECT rule_name, started_at, matched, enqueued, held, outcome FROM rule_runs
                 WHERE id IN (SELECT max(id) FROM rule_runs GROUP BY rule_name)",
                args![],
                |r| {
                    Ok((
                        r.get::<String>(0)?,
                        LastRun {
                            started_at: r.get(1)?,
                            matched: r.get(2)?,
                            enqueued: r.get(3)?,
                            held: r.get(4)?,
                            outcome: r.get(5)?,
                        },
                    ))
                },
            )?
            .into_iter()
            .collect();
        Ok(Overview {
            status,
            open_requests,
            open_total: open_total as u64,
            failures,
            active_holds: active_holds as u64,
            last_runs,
        })
    }
}

impl Store {
    /// Every chat in `state` as "provider/scope/session_id: why" (the hold's reason for held
    /// chats, the last error for dead ones), sorted: the demo's and the report's listing.
    pub fn item_lines(&self, state: ItemState) -> Result<Vec<String>> {
        self.rows(
            "SELECT w.provider || '/' || w.scope || '/' || w.session_id || ': ' ||
                    coalesce(CASE WHEN w.state = 'held' THEN h.reason ELSE w.last_error END, '')
             FROM work_items w LEFT JOIN holds h ON h.id = w.hold_id
             WHERE w.state = ?1 ORDER BY 1",
            args![state.as_str()],
            |x| x.get(0),
        )
    }
}

impl Status {
    /// Items in `state` over every provider.
    pub fn total(&self, state: ItemState) -> u64 {
        self.items.values().map(|c| c.get(state)).sum()
    }
}
