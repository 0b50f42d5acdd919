//! Discovery as a stage of a request, in the store: the listings by subject a request still
//! needs (`request_discovery`, one row per provider and scope), who is asking each one (a lease),
//! and what each ended in. [`crate::resolve`] does the asking; every statement is here.
//!
//! Rules:
//! - A request is resolved at once to the chats the inventory knows; each listing is a row,
//!   `pending` until it ends `done` (the chats it found joined the request, in one transaction
//!   with the row's end and its `request.discovered` event) or `failed` (with the reason and a
//!   `request.discovery_failed` event). A pending listing keeps the request open; a failed one
//!   makes it end `failed`, never `complete`: chats a full listing would find may remain.
//! - One resolver asks a listing at a time: a claim sets a lease (`lease_owner`, `lease_until`;
//!   PostgreSQL picks rows with `FOR UPDATE SKIP LOCKED`), and an answer is written only by the
//!   lease's holder while the row is still pending. A lease that ran out (its holder died or
//!   stalled) is claimed again; the stale holder's answer is then dropped.
//! - A failure that may pass is tried again at `next_at` (the caller's retry policy decides
//!   when, and when to give up); no event, since the request's state does not change.
//! - Reasons are forgetd's words and the provider's status and code, never the provider's text,
//!   which may quote the subject ([`crate::providers::ProviderError::without_provider_text`]).

use super::db::{Engine, Sql};
use super::inventory::NewSession;
use super::resolution::{ItemChat, insert_discovered, upsert_item};
use super::{Result, Store, Tx, holds, requests};
use crate::args;
use crate::audit::Event;

/// One listing claimed for asking. Its `Debug` and `Display` leave the subject out.
#[derive(Clone, PartialEq, Eq)]
pub struct ListingClaim {
    pub request_id: i64,
    pub external_ref: Option<String>,
    pub subject: String,
    pub provider: String,
    pub scope: String,
    /// Failed tries so far.
    pub attempts: u64,
    /// When the first of them failed (the retry policy's start).
    pub first_failed_at: Option<i64>,
    /// The claim's lease end: with the owner, the token an answer must still match.
    pub lease_until: i64,
    /// The subject's keyed hash as forgetd recorded it when it took the request in (the sealed
    /// `request.received`): the resolver lists only a subject that still hashes to it, so a
    /// row edited to another person lists no one in this request's name.
    pub received_hash: Option<String>,
}

impl std::fmt::Display for ListingClaim {
    /// Names the listing without its subject.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request {}'s listing at {} {}",
            self.request_id, self.provider, self.scope
        )
    }
}

impl std::fmt::Debug for ListingClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListingClaim")
            .field("request_id", &self.request_id)
            .field("provider", &self.provider)
            .field("scope", &self.scope)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How a listing that failed goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListingNext {
    /// Try again at this time (unix seconds); `counted`: the try counts as an attempt (a paused
    /// provider's wait does not).
    RetryAt { at: i64, counted: bool },
    /// Give up: the listing failed for good.
    GiveUp,
}

/// What an answered listing did to its request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingDone {
    /// False when the claim was no longer this resolver's (its lease ran out and another took
    /// it, or the listing ended meanwhile): nothing was written.
    pub written: bool,
    pub found: u64,
    pub added: u64,
    pub held: u64,
    /// Listed for the person, but the inventory gives them to someone else: not added.
    pub owned_by_others: u64,
}

/// One listing of a request, for `requests show` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListingRow {
    pub provider: String,
    pub scope: String,
    pub state: String,
    pub attempts: u64,
    pub found: u64,
    pub last_error: Option<String>,
    pub next_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Store {
    /// Claims up to `limit` pending listings due by `due_by` whose lease is free or ran out, for
    /// `lease_secs`; oldest requests first.
    pub fn claim_listings(
        &mut self,
        now: i64,
        due_by: i64,
        lease_secs: i64,
        limit: usize,
    ) -> Result<Vec<ListingClaim>> {
        // PostgreSQL: a MATERIALIZED pick, so the planner cannot run the LIMITed lock in a loop
        // that locks more rows than it takes (as the batch claim does).
        let sql = match self.engine() {
            Engine::Sqlite => {
                "UPDATE request_discovery SET lease_owner = ?1, lease_until = ?5
                 WHERE (request_id, provider, scope) IN (
                     SELECT request_id, provider, scope FROM request_discovery
                     WHERE state = 'pending' AND next_at <= ?3
                       AND (lease_until IS NULL OR lease_until <= ?2)
                     ORDER BY next_at, request_id LIMIT ?4)
                 RETURNING request_id, provider, scope, attempts, first_failed_at"
            }
            Engine::Postgres => {
                "WITH picked AS MATERIALIZED (
                     SELECT request_id, provider, scope FROM request_discovery
                     WHERE state = 'pending' AND next_at <= ?3
                       AND (lease_until IS NULL OR lease_until <= ?2)
                     ORDER BY next_at, request_id LIMIT ?4 FOR UPDATE SKIP LOCKED)
                 UPDATE request_discovery d SET lease_owner = ?1, lease_until = ?5
                 FROM picked p
                 WHERE d.request_id = p.request_id AND d.provider = p.provider AND d.scope = p.scope
                 RETURNING d.request_id, d.provider, d.scope, d.attempts, d.first_failed_at"
            }
        };
        let until = now.saturating_add(lease_secs);
        self.write(|tx| {
            // An instance taken for dead claims nothing (its row is gone; it stops on its next
            // heartbeat); its row is locked against that rescue until this claim commits.
            super::pg::instances::claim_while_alive(tx)?;
            let owner = owner(tx);
            let rows: Vec<(i64, String, String, i64, Option<i64>)> =
                tx.rows(sql, args![owner, now, due_by, limit, until], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
            let mut claims = Vec::with_capacity(rows.len());
            for (request_id, provider, scope, attempts, first_failed_at) in rows {
                let req: Option<(String, Option<String>)> = tx.row_opt(
                    "SELECT subject, external_ref FROM erasure_requests WHERE id = ?1",
                    args![request_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let Some((subject, external_ref)) = req else {
                    // The request row is gone (a dropped trigger): nothing to list for.
                    tx.exec(
                        "UPDATE request_discovery SET state = 'failed', last_error = ?4,
                                lease_owner = NULL, lease_until = NULL, finished_at = ?5
                         WHERE request_id = ?1 AND provider = ?2 AND scope = ?3",
                        args![
                            request_id,
                            provider,
                            scope,
                            "the erasure request row is gone",
                            now
                        ],
                    )?;
                    continue;
                };
                let received_hash = super::audit::received_subject_hash(tx, request_id)?;
                claims.push(ListingClaim {
                    request_id,
                    external_ref,
                    subject,
                    provider,
                    scope,
                    attempts: attempts.max(0) as u64,
                    first_failed_at,
                    lease_until: until,
                    received_hash,
                });
            }
            claims.sort_by_key(|c| (c.request_id, c.provider.clone(), c.scope.clone()));
            Ok(claims)
        })
    }

    /// Writes a listing's chats into its request: the inventory learns them (owned by the
    /// subject), each becomes a work item of the request (held if a hold covers it), the row
    /// ends `done`, and `request.discovered` records it. Only while the claim is still this
    /// resolver's.
    pub fn listing_found(
        &mut self,
        claim: &ListingClaim,
        found: &[NewSession],
        subject_hash: &str,
        now: i64,
    ) -> Result<ListingDone> {
        self.write(|tx| {
            if !still_mine(tx, claim)? {
                return Ok(ListingDone::default());
            }
            let due_at: i64 = tx
                .row_opt(
                    "SELECT due_at FROM erasure_requests WHERE id = ?1",
                    args![claim.request_id],
                    |r| r.get::<Option<i64>>(0),
                )?
                .flatten()
                .unwrap_or(now);
            let mut done = ListingDone {
                written: true,
                found: found.len() as u64,
                ..ListingDone::default()
            };
            let mut ids = Vec::new();
            let mut revived = Vec::new();
            for d in found {
                insert_discovered(tx, d, now)?;
                // Only a chat the inventory gives to this subject joins the request: a chat a
                // feeder recorded as someone else's stays theirs.
                let chat: Option<Option<String>> = tx.row_opt(
                    "SELECT repo_id FROM sessions
                     WHERE provider = ?1 AND scope = ?2 AND session_id = ?3 AND subject = ?4",
                    args![d.provider, d.scope, d.session_id, claim.subject],
                    |r| r.get(0),
                )?;
                let Some(repo_id) = chat else {
                    done.owned_by_others += 1;
                    continue;
                };
                let item = ItemChat {
                    provider: &d.provider,
                    scope: &d.scope,
                    session_id: &d.session_id,
                    repo_id: repo_id.as_deref(),
                    subject: Some(&claim.subject),
                };
                let (id, was_dead) = upsert_item(tx, &item, due_at, now)?;
                if was_dead {
                    revived.push(id);
                }
                let linked = tx.exec(
                    "INSERT INTO request_items (request_id, item_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    args![claim.request_id, id],
                )?;
                if linked == 1 {
                    done.added += 1;
                    ids.push(id);
                }
            }
            done.held = holds::withhold(tx, holds::Queued::Items(&ids), now, None)?.len() as u64;
            tx.exec(
                "UPDATE request_discovery SET state = 'done', found = ?4, finished_at = ?5,
                        lease_owner = NULL, lease_until = NULL, last_error = NULL
                 WHERE request_id = ?1 AND provider = ?2 AND scope = ?3",
                args![
                    claim.request_id,
                    claim.provider,
                    claim.scope,
                    done.found,
                    now
                ],
            )?;
            let items: u64 = tx.row(
                "SELECT count(*) FROM request_items WHERE request_id = ?1",
                args![claim.request_id],
                |r| r.get(0),
            )?;
            let event = Event::RequestDiscovered(crate::audit::RequestDiscovered {
                provider: claim.provider.clone(),
                scope: claim.scope.clone(),
                subject_hash: subject_hash.to_string(),
                found: done.found,
                added: done.added,
                held: done.held,
                items,
            });
            super::audit::append(tx, now, Some(claim.request_id), &event)?;
            requests::refresh_request(tx, claim.request_id, now)?;
            requests::refresh_for_items(tx, &revived, now)?;
            Ok(done)
        })
    }

    /// Records a listing that failed: tried again at the time `next` names, or failed for good
    /// (`request.discovery_failed`, and the request ends failed once nothing else is open).
    /// Returns false when the claim was no longer this resolver's (nothing written).
    pub fn listing_failed(
        &mut self,
        claim: &ListingClaim,
        reason: &str,
        next: ListingNext,
        now: i64,
    ) -> Result<bool> {
        self.write(|tx| {
            if !still_mine(tx, claim)? {
                return Ok(false);
            }
            match next {
                ListingNext::RetryAt { at, counted } => {
                    tx.exec(
                        "UPDATE request_discovery SET attempts = attempts + ?4,
                                first_failed_at = coalesce(first_failed_at, ?5), next_at = ?6,
                                last_error = ?7, lease_owner = NULL, lease_until = NULL
                         WHERE request_id = ?1 AND provider = ?2 AND scope = ?3",
                        args![
                            claim.request_id,
                            claim.provider,
                            claim.scope,
                            i64::from(counted),
                            now,
                            at,
                            reason
                        ],
                    )?;
                }
                ListingNext::GiveUp => {
                    tx.exec(
                        "UPDATE request_discovery SET state = 'failed', attempts = attempts + 1,
                                first_failed_at = coalesce(first_failed_at, ?4), finished_at = ?4,
                                last_error = ?5, lease_owner = NULL, lease_until = NULL
                         WHERE request_id = ?1 AND provider = ?2 AND scope = ?3",
                        args![claim.request_id, claim.provider, claim.scope, now, reason],
                    )?;
                    let event =
                        Event::RequestDiscoveryFailed(crate::audit::RequestDiscoveryFailed {
                            provider: claim.provider.clone(),
                            scope: claim.scope.clone(),
                            reason: reason.to_string(),
                            attempts: claim.attempts + 1,
                        });
                    super::audit::append(tx, now, Some(claim.request_id), &event)?;
                    requests::refresh_request(tx, claim.request_id, now)?;
                }
            }
            Ok(true)
        })
    }

    /// Hands back this resolver's claims (a clean stop), or every claim (`all`: SQLite at start,
    /// under the daemon lock, which proves no other resolver holds one).
    pub fn release_listings(&mut self, all: bool) -> Result<usize> {
        if all && self.engine() == Engine::Postgres {
            return Ok(0);
        }
        self.write(|tx| {
            let owner = owner(tx);
            tx.exec(
                "UPDATE request_discovery SET lease_owner = NULL, lease_until = NULL
                 WHERE state = 'pending' AND lease_owner IS NOT NULL AND (?1 OR lease_owner = ?2)",
                args![all, owner],
            )
        })
    }

    /// The listings of one request, in order.
    pub fn listings_of(&self, request_id: i64) -> Result<Vec<ListingRow>> {
        self.rows(
            "SELECT provider, scope, state, attempts, found, last_error, next_at, finished_at
             FROM request_discovery WHERE request_id = ?1 ORDER BY provider, scope",
            args![request_id],
            |r| {
                let state: String = r.get(2)?;
                let next_at: i64 = r.get(6)?;
                Ok(ListingRow {
                    next_at: (state == "pending" && next_at > 0).then_some(next_at),
                    provider: r.get(0)?,
                    scope: r.get(1)?,
                    state,
                    attempts: r.get::<i64>(3)?.max(0) as u64,
                    found: r.get::<i64>(4)?.max(0) as u64,
                    last_error: r.get(5)?,
                    finished_at: r.get(7)?,
                })
            },
        )
    }

    /// The earliest time a pending listing is due (for the resolver's sleep), if any is pending.
    pub fn next_listing_due(&self) -> Result<Option<i64>> {
        self.row(
            "SELECT min(CASE WHEN lease_until IS NULL OR lease_until < next_at THEN next_at
                             ELSE lease_until END)
             FROM request_discovery WHERE state = 'pending'",
            args![],
            |r| r.get(0),
        )
    }
}

/// Who claims: the registered PostgreSQL instance, or the one daemon of a SQLite queue.
fn owner<'a>(tx: &'a Tx<'_>) -> &'a str {
    tx.instance().unwrap_or("local")
}

/// Whether the claim is still this resolver's: the row pending, leased to it, under this very
/// claim (a lease that ran out and was claimed again, even by this resolver, is another claim).
fn still_mine(tx: &Tx<'_>, claim: &ListingClaim) -> Result<bool> {
    let sql = match tx.engine() {
        Engine::Sqlite => {
            "SELECT lease_owner, lease_until FROM request_discovery
             WHERE request_id = ?1 AND provider = ?2 AND scope = ?3 AND state = 'pending'"
        }
        Engine::Postgres => {
            "SELECT lease_owner, lease_until FROM request_discovery
             WHERE request_id = ?1 AND provider = ?2 AND scope = ?3 AND state = 'pending' FOR UPDATE"
        }
    };
    let holder: Option<(Option<String>, Option<i64>)> = tx.row_opt(
        sql,
        args![claim.request_id, claim.provider, claim.scope],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(
        matches!(holder, Some((Some(o), Some(until))) if o == owner(tx) && until == claim.lease_until),
    )
}

/// Hands back the listing claims of an instance taken for dead (PostgreSQL's rescuer).
pub(crate) fn release_listings_of(tx: &Tx<'_>, instance: &str) -> Result<usize> {
    tx.exec(
        "UPDATE request_discovery SET lease_owner = NULL, lease_until = NULL
         WHERE state = 'pending' AND lease_owner = ?1",
        args![instance],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Listing;

    fn listing(scope: &str) -> Listing {
        Listing {
            provider: "koosearch".into(),
            scope: scope.into(),
        }
    }

    fn chat(id: &str, subject: &str) -> NewSession {
        NewSession {
            provider: "koosearch".into(),
            scope: "app-a".into(),
            session_id: id.into(),
            subject: Some(subject.into()),
            repo_id: None,
            created_at: Some(1),
        }
    }

    fn state(s: &Store, id: i64) -> String {
        s.request_record(id).unwrap().state
    }

    /// A request filed and resolved with the given listings; returns its id.
    fn resolved(s: &mut Store, subject: &str, listings: &[Listing]) -> i64 {
        let id = s.file_request(subject, None, 1, 86_400).unwrap().id;
        let req = s
            .received_requests(10)
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap();
        s.resolve_request(&req, &[], listings, "h", 2, 86_400)
            .unwrap();
        id
    }

    #[test]
    fn a_pending_listing_keeps_a_request_open_and_a_failed_one_fails_it_until_asked_again() {
        let (_d, mut s) = crate::store::testing::temp_store();
        let id = resolved(&mut s, "alice", &[listing("app-a")]);
        // Nothing known yet, but the listing is to come: not complete.
        assert_eq!(state(&s, id), "in_progress");
        let c = s.claim_listings(3, 3, 60, 8).unwrap();
        assert_eq!(c.len(), 1);
        assert!(
            !format!("{:?}", c[0]).contains("alice"),
            "Debug names the subject"
        );
        assert_eq!(c[0].received_hash.as_deref(), Some("h"));
        // Leased: not claimed again while the lease runs.
        assert!(s.claim_listings(4, 4, 60, 8).unwrap().is_empty());
        assert!(
            s.listing_failed(&c[0], "HTTP 400", ListingNext::GiveUp, 5)
                .unwrap()
        );
        assert_eq!(state(&s, id), "failed");
        assert!(s.claim_listings(6, i64::MAX, 60, 8).unwrap().is_empty());
        // `requests retry` asks it again; this time it ends with a chat of hers.
        assert_eq!(s.retry_request(id, 7).unwrap(), 1);
        assert_eq!(state(&s, id), "in_progress");
        let c = s.claim_listings(8, 8, 60, 8).unwrap();
        let done = s
            .listing_found(&c[0], &[chat("k1", "alice")], "h", 9)
            .unwrap();
        assert_eq!((done.written, done.found, done.added), (true, 1, 1));
        assert_eq!(state(&s, id), "in_progress", "its chat is to be deleted");
        let rows = s.listings_of(id).unwrap();
        assert_eq!((rows[0].state.as_str(), rows[0].found), ("done", 1));
        // The stale answer of the same claim writes nothing.
        let again = s
            .listing_found(&c[0], &[chat("k2", "alice")], "h", 10)
            .unwrap();
        assert!(!again.written);
        assert_eq!(s.request_detail(id, 86_400).unwrap().items.len(), 1);
    }

    #[test]
    fn an_answer_under_a_claim_that_ran_out_and_was_claimed_again_writes_nothing() {
        let (_d, mut s) = crate::store::testing::temp_store();
        resolved(&mut s, "alice", &[listing("app-a")]);
        let old = s.claim_listings(3, 3, 60, 8).unwrap().remove(0);
        // Its lease runs out; the same resolver (or another) claims it again.
        let new = s.claim_listings(64, 64, 60, 8).unwrap().remove(0);
        assert!(!s.listing_found(&old, &[], "h", 65).unwrap().written);
        assert!(
            !s.listing_failed(&old, "late", ListingNext::GiveUp, 65)
                .unwrap()
        );
        assert!(s.listing_found(&new, &[], "h", 66).unwrap().written);
    }

    #[test]
    fn a_listed_chat_recorded_as_someone_elses_stays_theirs() {
        let (_d, mut s) = crate::store::testing::temp_store();
        s.add_session(&chat("k-bob", "bob")).unwrap();
        let id = resolved(&mut s, "alice", &[listing("app-a")]);
        let c = s.claim_listings(3, 3, 60, 8).unwrap();
        let done = s
            .listing_found(
                &c[0],
                &[chat("k-bob", "alice"), chat("k-al", "alice")],
                "h",
                4,
            )
            .unwrap();
        assert_eq!((done.found, done.added, done.owned_by_others), (2, 1, 1));
        let items: Vec<String> = s
            .request_detail(id, 86_400)
            .unwrap()
            .items
            .into_iter()
            .map(|i| i.session_id)
            .collect();
        assert_eq!(items, ["k-al"]);
    }

    #[test]
    fn a_failed_try_waits_for_its_time_and_counts_unless_the_provider_was_paused() {
        let (_d, mut s) = crate::store::testing::temp_store();
        let id = resolved(&mut s, "alice", &[listing("app-a"), listing("app-b")]);
        let c = s.claim_listings(3, 3, 60, 8).unwrap();
        assert_eq!(c.len(), 2);
        let paused = ListingNext::RetryAt {
            at: 100,
            counted: false,
        };
        let failed = ListingNext::RetryAt {
            at: 50,
            counted: true,
        };
        s.listing_failed(&c[0], "paused", paused, 4).unwrap();
        s.listing_failed(&c[1], "HTTP 503", failed, 4).unwrap();
        assert!(s.claim_listings(49, 49, 60, 8).unwrap().is_empty());
        assert_eq!(s.next_listing_due().unwrap(), Some(50));
        let c = s.claim_listings(60, 60, 60, 8).unwrap();
        assert_eq!(
            (c.len(), c[0].attempts, c[0].first_failed_at),
            (1, 1, Some(4))
        );
        let c = s.claim_listings(100, 100, 60, 8).unwrap();
        assert_eq!((c.len(), c[0].attempts), (1, 0));
        assert_eq!(state(&s, id), "in_progress");
        // A clean stop hands both claims back.
        assert_eq!(s.release_listings(false).unwrap(), 2);
        assert_eq!(s.claim_listings(101, 101, 60, 8).unwrap().len(), 2);
    }
}
