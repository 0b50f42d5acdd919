//! Discovery: asking the providers which chats a request or a rule covers, then handing what they
//! found to the store, which resolves it ([`crate::store::resolution`] owns every statement).
//!
//! Rules:
//! - A request's chats are the inventory's chats of that subject, plus those the providers can
//!   find themselves (KooSearch lists chats by `user_name` over the configured applications, all
//!   pages); discovered chats join the inventory, marked discovered, owned by the subject.
//! - If discovery fails (provider down, paused), the request stays `received` and is tried again:
//!   resolving without it could call a request complete while chats remain.
//! - Listings retry transient failures and throttles with backoff and Retry-After (capped by
//!   `retry.max_retry_after`) on the injected clock; `Patience::Brief` keeps the daemon's intake
//!   responsive, `Patience::Full` waits as long as the retry policy allows (`run --once`).
//! - An ID a provider lists but its own rules refuse is skipped with a warning.
//! - This module writes no SQL.

use crate::audit::SubjectKey;
use crate::clock::SharedClock;
use crate::model::ProviderKind;
use crate::providers::{ListedChat, ProviderError, SharedProvider};
use crate::store::AsyncStore;
use crate::store::Result;
use crate::store::inventory::NewSession;
pub use crate::store::resolution::{Plan, PlannedChat, Received, Resolution, RuleRun};

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

/// Resolves requests as they arrive: discovery at the providers, then the store.
pub struct Resolver {
    pub store: AsyncStore,
    pub providers: Vec<SharedProvider>,
    pub key: std::sync::Arc<SubjectKey>,
    pub clock: SharedClock,
    pub deadline_secs: i64,
    /// Backoff for listing calls that fail transiently.
    pub retry: crate::executor::retry::RetryPolicy,
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

/// A request that could not be resolved this time.
#[derive(Debug, thiserror::Error)]
#[error("request {request_id}: discovery at {provider} failed, will retry: {source}")]
pub struct DiscoveryFailed {
    pub request_id: i64,
    pub provider: ProviderKind,
    #[source]
    pub source: ProviderError,
}

impl Resolver {
    /// Resolves every received request; returns how many were resolved and the failures.
    pub async fn resolve_received(
        &self,
        patience: Patience,
    ) -> Result<(usize, Vec<DiscoveryFailed>)> {
        let mut done = 0;
        let mut failures = Vec::new();
        loop {
            let batch = self.store.call(|s| s.received_requests(64)).await?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let mut progressed = false;
            for req in batch {
                match self.discover(&req, patience).await {
                    Ok(found) => {
                        let hash = self.key.hash(&req.subject);
                        let now = self.clock.now();
                        let deadline = self.deadline_secs;
                        let r2 = req.clone();
                        let res = self
                            .store
                            .call(move |s| s.resolve_request(&r2, &found, &hash, now, deadline))
                            .await?;
                        tracing::info!(
                            request = req.id,
                            items = res.items,
                            held = res.held,
                            discovered = res.discovered,
                            "resolved erasure request"
                        );
                        done += 1;
                        progressed = true;
                    }
                    Err(e) => {
                        tracing::warn!(request = req.id, provider = %e.provider, error = %e.source, "discovery failed; the request stays received");
                        failures.push(e);
                    }
                }
            }
            if !progressed || n < 64 {
                break;
            }
        }
        Ok((done, failures))
    }

    /// Asks each provider that can list by person for the subject's chats (also `plan`'s path).
    pub async fn discover(
        &self,
        req: &Received,
        patience: Patience,
    ) -> Result<Vec<NewSession>, DiscoveryFailed> {
        let mut found = Vec::new();
        for p in &self.providers {
            for scope in p.subject_scopes() {
                let kind = p.kind();
                let listed = self
                    .list_with_retry(p, &scope, Some(&req.subject), &|_| true, patience)
                    .await
                    .map_err(|source| DiscoveryFailed {
                        request_id: req.id,
                        provider: kind,
                        source,
                    })?;
                found.extend(valid_ids(p, listed).map(|c| NewSession {
                    provider: kind.as_str().to_string(),
                    scope: c.scope,
                    session_id: c.session_id,
                    subject: Some(req.subject.clone()),
                    repo_id: c.repo_id,
                    created_at: c.created_at,
                }));
            }
        }
        Ok(found)
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
                Some(s) => p.list_subject(scope, s, &mut sink).await.map(|_| ()),
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
