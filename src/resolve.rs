//! Discovery: asking the providers which chats a request or a rule covers, then handing what they
//! found to the store, which resolves it ([`crate::store::resolution`] and
//! [`crate::store::discovery`] own every statement).
//!
//! Rules:
//! - A request is resolved at once to the chats the inventory knows for its subject (no provider
//!   call), so they are deleted whatever the providers' listings do. Each listing a provider can
//!   do by subject (KooSearch by `user_name`, per configured application) is then asked on its
//!   own: its chats join the request when it ends (discovered chats join the inventory, owned by
//!   the subject); a listing that cannot end fails the request, with the reason.
//! - A listing's end is the provider's to decide from what was listed, bounded in pages and time
//!   (KooSearch's `listing_max_pages`, `listing_timeout`); a refusal (a 4xx naming the parameter),
//!   a page that repeats or a bound reached ends the listing failed at once; a transient failure
//!   is tried again on the retry policy (`[retry]`), and fails once the policy gives up; a paused
//!   provider's listing waits for the pause to end, up to `retry.give_up_after`.
//! - Several listings are asked at once ([`LISTINGS_AT_ONCE`]; every call passes the provider's
//!   gate), so one slow or endless listing delays only its own request. On a shared queue each
//!   listing is claimed (a lease), so one instance asks it.
//! - Within one try, listings retry transient failures and throttles with backoff and
//!   Retry-After (capped by `retry.max_retry_after`) on the injected clock; `Patience::Brief`
//!   keeps a try short (the daemon tries again later), `Patience::Full` waits as long as the
//!   retry policy allows (`run --once`).
//! - The subject is sent to the provider and to no one else: logs and stored reasons name the
//!   request id and ref, and a provider's text about a listing by subject is not kept.
//! - An ID a provider lists but its own rules refuse is skipped with a warning.
//! - This module writes no SQL.

use crate::audit::SubjectKey;
use crate::clock::{Millis, SharedClock};
use crate::providers::{Action, ListedChat, ProviderError, SharedProvider};
use crate::store::AsyncStore;
use crate::store::Result;
use crate::store::discovery::{ListingClaim, ListingNext};
use crate::store::inventory::NewSession;
pub use crate::store::resolution::{Listing, Plan, PlannedChat, Received, Resolution, RuleRun};

/// How many listings one resolver asks at once.
pub const LISTINGS_AT_ONCE: usize = 8;
/// How long a paused provider's listing waits before it is looked at again.
const PAUSED_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// A provider may list IDs its own rules refuse (too long, outside KooSearch's alphabet, Convai's
/// "-1"): they are skipped with a warning, so one odd record never fails a whole request or rule
/// run, every time it runs.
fn valid_ids(p: &SharedProvider, listed: Vec<ListedChat>) -> impl Iterator<Item = ListedChat> {
    let p = p.clone();
    listed.into_iter().filter(move |c| match p.check_id(&c.session_id) {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(provider = %p.kind(), scope = %c.scope, "skipping a listed chat whose ID is invalid: {why}");
            false
        }
    })
}

/// Resolves requests as they arrive: the inventory at once, then the providers' listings.
pub struct Resolver {
    pub store: AsyncStore,
    pub providers: Vec<SharedProvider>,
    pub key: std::sync::Arc<SubjectKey>,
    pub clock: SharedClock,
    pub deadline_secs: i64,
    /// Backoff for listing calls that fail transiently, and when a listing gives up.
    pub retry: crate::executor::retry::RetryPolicy,
    /// How long a claimed listing is this resolver's (longer than a listing may take).
    pub listing_lease: std::time::Duration,
}

/// How long a listing may keep retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// A few quick tries (the daemon's intake must stay responsive; it tries again later).
    Brief,
    /// Until the retry policy gives up, waiting out backoff and Retry-After (`run --once`).
    Full,
}

const BRIEF_ATTEMPTS: u32 = 3;
const BRIEF_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What one pass over the due listings did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingPass {
    /// Listings claimed and asked.
    pub asked: usize,
    /// Ended with their chats written.
    pub done: usize,
    /// Ended failed: the request ends failed.
    pub failed: Vec<ListingProblem>,
    /// To be tried again later.
    pub retrying: Vec<ListingProblem>,
}

/// A listing that failed, named without its subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request {request_id}: the listing at {provider} {scope} {what}: {reason}")]
pub struct ListingProblem {
    pub request_id: i64,
    pub provider: String,
    pub scope: String,
    /// "failed" or "waits".
    pub what: &'static str,
    pub reason: String,
}

impl Resolver {
    /// A claim on a listing outlasts one try: up to [`BRIEF_ATTEMPTS`] walks of the longest
    /// listing of `providers`, each with its wait, and a margin. (A try that outlasts its claim
    /// anyway writes nothing: the answer must match the claim it was asked under.)
    pub fn lease_for(providers: &[SharedProvider]) -> std::time::Duration {
        let longest = providers
            .iter()
            .map(|p| p.listing_bound())
            .max()
            .unwrap_or_default();
        (longest + BRIEF_MAX_WAIT) * BRIEF_ATTEMPTS + std::time::Duration::from_secs(60)
    }

    /// The listings by subject the configured providers can do.
    pub fn listings(&self) -> Vec<Listing> {
        self.providers
            .iter()
            .flat_map(|p| {
                let provider = p.kind().as_str().to_string();
                p.subject_scopes().into_iter().map(move |scope| Listing {
                    provider: provider.clone(),
                    scope,
                })
            })
            .collect()
    }

    /// Resolves every received request to the inventory's chats of its subject, with a pending
    /// listing per provider scope that can list by subject. No provider call: a request never
    /// waits on a listing to be taken in. Returns how many were resolved.
    pub async fn resolve_received(&self) -> Result<usize> {
        let listings = self.listings();
        let mut done = 0;
        loop {
            let batch = self.store.call(|s| s.received_requests(64)).await?;
            let n = batch.len();
            for req in batch {
                let hash = self.key.hash(&req.subject);
                let now = self.clock.now();
                let deadline = self.deadline_secs;
                let listings = listings.clone();
                let asking = listings.len();
                let id = req.id;
                let res = self
                    .store
                    .call(move |s| s.resolve_request(&req, &[], &listings, &hash, now, deadline))
                    .await?;
                if res.skipped {
                    continue; // another instance resolved it first
                }
                tracing::info!(
                    request = id,
                    items = res.items,
                    held = res.held,
                    listings = asking,
                    "resolved erasure request"
                );
                done += 1;
            }
            if n < 64 {
                break;
            }
        }
        Ok(done)
    }

    /// Asks the listings that are due (all pending ones when `!due_only`), up to
    /// [`LISTINGS_AT_ONCE`] at a time, each claimed first; writes each outcome as it comes.
    pub async fn discover_due(&self, patience: Patience, due_only: bool) -> Result<ListingPass> {
        use futures_util::StreamExt;
        let now = self.clock.now();
        let due_by = if due_only { now } else { i64::MAX };
        // A full try waits out the retry policy: a longer claim (an answer from a try that
        // outlasts it anyway is dropped, never written twice).
        let lease = match patience {
            Patience::Brief => self.listing_lease,
            Patience::Full => self.listing_lease * 4,
        }
        .as_secs()
        .max(1) as i64;
        let claims = self
            .store
            .call(move |s| s.claim_listings(now, due_by, lease, LISTINGS_AT_ONCE))
            .await?;
        let mut pass = ListingPass {
            asked: claims.len(),
            ..ListingPass::default()
        };
        let mut outcomes = futures_util::stream::iter(claims)
            .map(|c| self.ask(c, patience))
            .buffer_unordered(LISTINGS_AT_ONCE);
        while let Some(outcome) = outcomes.next().await {
            match outcome? {
                Asked::Done => pass.done += 1,
                Asked::Failed(p) => pass.failed.push(p),
                Asked::Retrying(p) => pass.retrying.push(p),
                Asked::Lost => {}
            }
        }
        Ok(pass)
    }

    /// The daemon's resolver task: keeps up to [`LISTINGS_AT_ONCE`] listings in flight, claiming
    /// more as each ends (so one slow listing holds one slot, not a batch), woken by `wake` when
    /// requests were resolved and looking every second for listings due (another instance's
    /// requests, retries). `found` is called when a listing added chats. On `cancel` it stops at
    /// once: listings in flight are dropped and their claims handed back.
    pub async fn run(
        self: std::sync::Arc<Self>,
        wake: std::sync::Arc<tokio::sync::Notify>,
        found: impl Fn() + Send,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        use futures_util::StreamExt;
        use futures_util::stream::FuturesUnordered;
        const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        const REST_AFTER_ERROR: std::time::Duration = std::time::Duration::from_secs(5);
        let mut inflight = FuturesUnordered::new();
        let mut rest_until: Option<tokio::time::Instant> = None;
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let resting = rest_until.is_some_and(|t| tokio::time::Instant::now() < t);
            if inflight.len() < LISTINGS_AT_ONCE && !resting {
                let now = self.clock.now();
                let lease = self.listing_lease.as_secs().max(1) as i64;
                let room = LISTINGS_AT_ONCE - inflight.len();
                match self
                    .store
                    .call(move |s| s.claim_listings(now, now, lease, room))
                    .await
                {
                    Ok(claims) => {
                        rest_until = None;
                        for c in claims {
                            inflight.push(self.ask(c, Patience::Brief));
                        }
                    }
                    Err(e) => {
                        // The store's outage says it; the listings stay pending.
                        tracing::debug!(error = %e, "could not claim listings now");
                        rest_until = Some(tokio::time::Instant::now() + REST_AFTER_ERROR);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(outcome) = inflight.next(), if !inflight.is_empty() => match outcome {
                    Ok(Asked::Done) => found(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "a listing's outcome could not be written now; it is asked again when its claim runs out");
                        rest_until = Some(tokio::time::Instant::now() + REST_AFTER_ERROR);
                    }
                },
                _ = wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
        drop(inflight);
        if let Err(e) = self.store.call(|s| s.release_listings(false)).await {
            tracing::warn!(error = %e, "could not hand back this resolver's listings; they are taken again when their claims run out");
        }
    }

    /// Asks one claimed listing and writes what it came to.
    async fn ask(&self, claim: ListingClaim, patience: Patience) -> Result<Asked> {
        let Some(p) = self
            .providers
            .iter()
            .find(|p| p.kind().as_str() == claim.provider)
            .cloned()
        else {
            let why = format!(
                "provider {} is not configured any more: its chats of this person cannot be listed",
                claim.provider
            );
            return self.give_up(claim, why).await;
        };
        if !p.subject_scopes().contains(&claim.scope) {
            let why = format!(
                "{} {} is no longer configured for listing by subject (`applications`, `discover_by_user_name`): its chats of this person cannot be listed",
                claim.provider, claim.scope
            );
            return self.give_up(claim, why).await;
        }
        // The subject is listed only while it is the one forgetd took the request in for: a row
        // edited to name someone else lists no one in this request's name.
        let hash = self.key.hash(&claim.subject);
        if claim.received_hash.as_deref() != Some(hash.as_str()) {
            let why = match claim.received_hash {
                Some(_) => {
                    "the request's subject was changed after forgetd took it in (it differs from the sealed record): nothing is listed in its name; file a new request for the person"
                }
                None => {
                    "the request's receipt is not in the audit trail: nothing is listed for a subject forgetd did not record"
                }
            };
            return self.give_up(claim, why.to_string()).await;
        }
        let listed = self
            .list_with_retry(&p, &claim.scope, Some(&claim.subject), &|_| true, patience)
            .await;
        let now = self.clock.now();
        match listed {
            Ok(chats) => {
                let found: Vec<NewSession> = valid_ids(&p, chats)
                    .map(|c| NewSession {
                        provider: claim.provider.clone(),
                        scope: c.scope,
                        session_id: c.session_id,
                        subject: Some(claim.subject.clone()),
                        repo_id: c.repo_id,
                        created_at: c.created_at,
                    })
                    .collect();
                let c2 = claim.clone();
                let found = std::sync::Arc::new(found);
                let done = self
                    .write_outcome(move |s| s.listing_found(&c2, &found, &hash, now))
                    .await?;
                if !done.written {
                    return Ok(Asked::Lost);
                }
                if done.owned_by_others > 0 {
                    tracing::warn!(
                        request = claim.request_id,
                        external_ref = claim.external_ref.as_deref().unwrap_or(""),
                        provider = %claim.provider,
                        scope = %claim.scope,
                        chats = done.owned_by_others,
                        "the provider lists chats for this request's person that the inventory gives to someone else: they were left to their recorded owner; check the inventory"
                    );
                }
                tracing::info!(
                    request = claim.request_id,
                    external_ref = claim.external_ref.as_deref().unwrap_or(""),
                    provider = %claim.provider,
                    scope = %claim.scope,
                    found = done.found,
                    added = done.added,
                    held = done.held,
                    "listing for an erasure request ended"
                );
                Ok(Asked::Done)
            }
            Err(e) => {
                let reason = e.to_string();
                let first = Millis(claim.first_failed_at.unwrap_or(now).saturating_mul(1000));
                let now_ms = Millis(now.saturating_mul(1000));
                let next = match &e.action {
                    Action::Rejected => None,
                    Action::Pause(_) => {
                        match self
                            .retry
                            .defer(first, now_ms, now_ms.after(PAUSED_RECHECK))
                        {
                            crate::executor::retry::Next::At(at) => Some((at, false)),
                            crate::executor::retry::Next::GiveUp => None,
                        }
                    }
                    // `run --once` waited the whole policy out within this try.
                    Action::Retry | Action::Throttled | Action::RetryAfter(_)
                        if patience == Patience::Full =>
                    {
                        None
                    }
                    Action::Retry | Action::Throttled | Action::RetryAfter(_) => {
                        let wait = match e.action {
                            Action::RetryAfter(d) => Some(d),
                            _ => None,
                        };
                        let attempts = u32::try_from(claim.attempts).unwrap_or(u32::MAX);
                        match self.retry.next(attempts, first, now_ms, wait) {
                            crate::executor::retry::Next::At(at) => Some((at, true)),
                            crate::executor::retry::Next::GiveUp => None,
                        }
                    }
                };
                let Some((at, counted)) = next else {
                    return self.give_up(claim, reason).await;
                };
                let at = at.0.div_euclid(1000).max(now);
                tracing::info!(
                    request = claim.request_id,
                    external_ref = claim.external_ref.as_deref().unwrap_or(""),
                    provider = %claim.provider,
                    scope = %claim.scope,
                    error = %reason,
                    retry_in_s = at - now,
                    "listing for an erasure request failed; it is asked again later"
                );
                let c2 = claim.clone();
                let next = ListingNext::RetryAt { at, counted };
                let problem = problem(&claim, "waits", &reason);
                let mine = self
                    .write_outcome(move |s| s.listing_failed(&c2, &reason, next, now))
                    .await?;
                Ok(if mine {
                    Asked::Retrying(problem)
                } else {
                    Asked::Lost
                })
            }
        }
    }

    /// Writes a listing's outcome, waiting out a database that refuses writes for a while (disk
    /// full, a lock held): what was asked of the provider is kept, not asked again.
    async fn write_outcome<T: Send + 'static>(
        &self,
        f: impl Fn(&mut crate::store::Store) -> Result<T> + Send + Sync + 'static,
    ) -> Result<T> {
        let f = std::sync::Arc::new(f);
        let mut rest = std::time::Duration::from_millis(250);
        loop {
            let g = f.clone();
            match self.store.call(move |s| g(s)).await {
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, "a listing's outcome waits for the database");
                    tokio::time::sleep(rest).await;
                    rest = (rest * 2).min(std::time::Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }

    /// Ends a listing failed, and says so at warning level.
    async fn give_up(&self, claim: ListingClaim, reason: String) -> Result<Asked> {
        let now = self.clock.now();
        tracing::warn!(
            request = claim.request_id,
            external_ref = claim.external_ref.as_deref().unwrap_or(""),
            provider = %claim.provider,
            scope = %claim.scope,
            error = %reason,
            "listing for an erasure request could not be completed: the request will end failed (chats this listing would find may remain); fix the cause, then `forgetd requests retry {}`",
            claim.request_id
        );
        let c2 = claim.clone();
        let problem = problem(&claim, "failed", &reason);
        let mine = self
            .write_outcome(move |s| s.listing_failed(&c2, &reason, ListingNext::GiveUp, now))
            .await?;
        Ok(if mine {
            Asked::Failed(problem)
        } else {
            Asked::Lost
        })
    }

    /// Asks each provider that can list by person for the subject's chats, as a resolution
    /// would, for `plan`: the chats found, and each listing that could not be completed (a
    /// real run would end the request failed).
    pub async fn discover(
        &self,
        subject: &str,
        patience: Patience,
    ) -> (Vec<NewSession>, Vec<ListingProblem>) {
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for p in &self.providers {
            for scope in p.subject_scopes() {
                let kind = p.kind();
                match self
                    .list_with_retry(p, &scope, Some(subject), &|_| true, patience)
                    .await
                {
                    Ok(listed) => found.extend(valid_ids(p, listed).map(|c| NewSession {
                        provider: kind.as_str().to_string(),
                        scope: c.scope,
                        session_id: c.session_id,
                        subject: Some(subject.to_string()),
                        repo_id: c.repo_id,
                        created_at: c.created_at,
                    })),
                    Err(e) => failed.push(ListingProblem {
                        request_id: 0,
                        provider: kind.as_str().to_string(),
                        scope,
                        what: "failed",
                        reason: e.to_string(),
                    }),
                }
            }
        }
        (found, failed)
    }

    /// Lists one scope (by subject, or all of it), keeping only chats `keep` accepts, retrying
    /// transient failures with backoff and Retry-After on the injected clock.
    async fn list_with_retry(
        &self,
        p: &SharedProvider,
        scope: &str,
        subject: Option<&str>,
        keep: &(dyn Fn(&ListedChat) -> bool + Sync),
        patience: Patience,
    ) -> Result<Vec<ListedChat>, ProviderError> {
        let first = self.clock.instant();
        let mut failures = 0u32;
        loop {
            let mut got = Vec::new();
            let mut sink = |c: ListedChat| {
                if keep(&c) {
                    got.push(c);
                }
            };
            let result = match subject {
                Some(s) => match p.list_subject(scope, s, &mut sink).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        return Err(ProviderError::new(
                            p.kind(),
                            crate::providers::Operation::List,
                            Action::Rejected,
                            "the provider does not list chats by subject (discovery is off for it)",
                        ));
                    }
                    Err(e) => Err(e),
                },
                None => p.list_scope(scope, &mut sink).await,
            };
            let e = match result {
                Ok(()) => return Ok(got),
                Err(e) => e.capped(self.retry.max_retry_after),
            };
            let wait = match &e.action {
                // Throttled without a wait named (an unpublished limit): back off as for a 5xx;
                // the gate has already slowed this provider's calls down.
                crate::providers::Action::Retry | crate::providers::Action::Throttled => None,
                crate::providers::Action::RetryAfter(d) => Some(*d),
                _ => return Err(e),
            };
            let now = self.clock.instant();
            let next = self.retry.next(failures, first, now, wait);
            failures += 1;
            let crate::executor::retry::Next::At(at) = next else {
                return Err(e);
            };
            let pause = at.since(now);
            if patience == Patience::Brief && (failures >= BRIEF_ATTEMPTS || pause > BRIEF_MAX_WAIT)
            {
                return Err(e);
            }
            tracing::info!(provider = %p.kind(), scope, error = %e, wait_ms = pause.as_millis() as u64, "listing failed; retrying");
            self.clock.sleep(pause).await;
        }
    }
}

fn problem(claim: &ListingClaim, what: &'static str, reason: &str) -> ListingProblem {
    ListingProblem {
        request_id: claim.request_id,
        provider: claim.provider.clone(),
        scope: claim.scope.clone(),
        what,
        reason: reason.to_string(),
    }
}

/// What asking one listing came to.
enum Asked {
    Done,
    Failed(ListingProblem),
    Retrying(ListingProblem),
    /// The claim was no longer this resolver's: another wrote the outcome.
    Lost,
}

impl Resolver {
    /// Lists expired chats at the provider for a rule that asks for discovery.
    pub async fn discover_for_rule(
        &self,
        rule: &crate::store::rules::RuleRow,
        now: i64,
        patience: Patience,
    ) -> Result<Vec<NewSession>, ProviderError> {
        let mut found = Vec::new();
        if !rule.discover {
            return Ok(found);
        }
        let Some(p) = self.providers.iter().find(|p| p.kind() == rule.provider) else {
            return Ok(found);
        };
        let scopes: Vec<String> = if rule.scope == "*" {
            let kind = rule.provider;
            let mut s: Vec<String> = self
                .store
                .call(move |st| st.known_scopes(kind))
                .await
                .unwrap_or_default();
            for a in p.subject_scopes() {
                if !s.contains(&a) {
                    s.push(a);
                }
            }
            s
        } else {
            vec![rule.scope.clone()]
        };
        let cutoff = now - rule.max_age_secs;
        // Only expired chats are kept: memory holds what will be deleted, not the whole listing.
        let expired = move |c: &ListedChat| c.created_at.is_some_and(|t| t <= cutoff);
        for scope in scopes {
            let kind = rule.provider;
            let listed = self
                .list_with_retry(p, &scope, None, &expired, patience)
                .await?;
            found.extend(valid_ids(p, listed).map(|c| NewSession {
                provider: kind.as_str().to_string(),
                scope: c.scope,
                session_id: c.session_id,
                subject: None,
                repo_id: c.repo_id,
                created_at: c.created_at,
            }));
        }
        Ok(found)
    }

    /// Runs one rule now: discovery if asked, then the store.
    pub async fn run_rule(
        &self,
        rule: &crate::store::rules::RuleRow,
        patience: Patience,
    ) -> anyhow::Result<RuleRun> {
        let now = self.clock.now();
        let discovered = self.discover_for_rule(rule, now, patience).await?;
        let (r, deadline) = (rule.clone(), self.deadline_secs);
        let run = self
            .store
            .call(move |s| s.run_rule(&r, &discovered, now, deadline))
            .await?;
        if run.awaiting_approval {
            tracing::warn!(rule = %rule.name, matched = run.matched, max_deletions = rule.max_deletions,
                "rule matched more chats than max_deletions; nothing queued until `forgetd rules approve`");
        } else {
            tracing::info!(rule = %rule.name, matched = run.matched, enqueued = run.enqueued, held = run.held, "retention rule ran");
        }
        Ok(run)
    }
}
