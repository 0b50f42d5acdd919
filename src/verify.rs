//! Read-after-delete verification: a provider's "deleted" is a claim, so some time after each
//! confirmed deletion (`[verify] after`, default 10 minutes) forgetd reads the chat back through
//! the provider's read calls ([`Provider::read_back`]) and records what it saw
//! ([`crate::store::verification`]).
//!
//! Rules:
//! - Absent is recorded only when the provider's reads prove it (a well-formed listing that omits
//!   the chat, and no read that shows it). A read that cannot decide (5xx, timeout, an unclear
//!   answer, a throttle) is tried again with backoff and, after `max_attempts`, reported
//!   *unverified* with the reason: never verified. A paused provider is waited for, costing no
//!   attempt.
//! - A chat read back present has reappeared: logged as an error, counted
//!   (`forgetd_reappeared_total`), recorded in the audit trail and deleted again, at most
//!   `max_reappearances` times; then it goes dead with the reason.
//! - Every read passes the provider's gate as a background call ([`Gate::enter_background`]):
//!   while deletions wait, reading back takes at most `share` of the calls started.
//! - In the daemon one verifier per provider runs beside the executor's lanes. `run --once` reads
//!   back what is due when the queue is drained (and deletes again what reappeared), never
//!   waiting for reads that are not due yet.
//!
//! [`Gate::enter_background`]: crate::providers::gate::Gate::enter_background

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::VerifyConfig;
use crate::metrics::Metrics;
use crate::providers::{Action, Presence, ProviderError, ReadBackChat, SharedProvider};
use crate::store::verification::{DueReadBack, ReadBack, ReadBackLimits, ReadBackSummary};
use crate::store::{AsyncStore, StoreError};

/// Chats read back per round (one store read and one store write per round).
const ROUND: usize = 50;
/// How long an idle verifier waits before it looks again (new deletions also wake it).
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// The wait before the first re-read of an undecided chat; it doubles per attempt.
const FIRST_REREAD: Duration = Duration::from_secs(30);
/// The longest wait between two reads of an undecided chat.
const MAX_REREAD: Duration = Duration::from_secs(3600);

/// Reads deleted chats back, per provider.
pub struct Verifier {
    store: AsyncStore,
    clock: SharedClock,
    config: VerifyConfig,
    metrics: Arc<Metrics>,
    /// Told when deletions were recorded: an idle verifier looks again at once.
    recorded: tokio::sync::Notify,
}

/// How one provider's verification ended (`run --once`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyEnd {
    pub summary: ReadBackSummary,
    /// The provider was paused, so what was due is still due.
    pub paused: Option<String>,
}

impl Verifier {
    pub fn new(
        store: AsyncStore,
        clock: SharedClock,
        config: VerifyConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            clock,
            config,
            metrics,
            recorded: tokio::sync::Notify::new(),
        }
    }

    /// Says that deletions were recorded (the executor calls it): idle verifiers look again.
    pub fn deletions_recorded(&self) {
        self.recorded.notify_waiters();
    }

    /// Whether verification is on (`[verify] after` is not "off").
    pub fn enabled(&self) -> bool {
        self.config.after.is_some()
    }

    fn limits(&self) -> ReadBackLimits {
        ReadBackLimits {
            max_attempts: self.config.max_attempts,
            max_reappearances: self.config.max_reappearances,
        }
    }

    /// The daemon's verifier of one provider, until cancelled. `requeued` is called when chats
    /// reappeared and went back to the queue (the executor's wake-up).
    pub async fn run(
        &self,
        provider: SharedProvider,
        cancel: CancellationToken,
        requeued: impl Fn(),
    ) -> Result<(), StoreError> {
        let Some(after) = self.config.after else {
            return Ok(());
        };
        let kind = provider.kind();
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let (sum, paused, read) = match self.round(&provider, after, Some(&cancel)).await {
                Ok(r) => r,
                Err(e) => {
                    // The disk may be full or the file read-only for a while: say so and look
                    // again; nothing read back is lost (the item stays due).
                    tracing::error!(provider = %kind, error = %e, "could not record read-backs; trying again shortly");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                    }
                    continue;
                }
            };
            if sum.requeued > 0 {
                requeued();
            }
            if paused {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = provider.gate().probe_due() => {}
                }
                // The probe is the executor's; give its answer a moment to land.
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            if read > 0 {
                continue;
            }
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            recorded.as_mut().enable();
            let next = match self
                .store
                .call(move |s| s.next_read_back(kind, after))
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(provider = %kind, error = %e, "could not read when the next read-back is due; trying again shortly");
                    None
                }
            };
            let wait = next
                .map(|t| t.since(self.clock.instant()))
                .unwrap_or(IDLE_RECHECK)
                .clamp(Duration::from_millis(1), IDLE_RECHECK);
            // The tokio timer, not the injected clock: an idle verifier must not move a test's
            // manual time (deletions land in the store and are picked up on the next look).
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = &mut recorded => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// `run --once`: reads back everything of `provider` that is due now, then returns.
    pub async fn run_due(&self, provider: &SharedProvider) -> Result<VerifyEnd, StoreError> {
        let mut end = VerifyEnd::default();
        let Some(after) = self.config.after else {
            return Ok(end);
        };
        loop {
            let (sum, paused, read) = self.round(provider, after, None).await?;
            add(&mut end.summary, &sum);
            if paused {
                end.paused = provider.gate().paused().map(|p| p.reason);
                return Ok(end);
            }
            if read == 0 {
                return Ok(end);
            }
        }
    }

    /// One round: the due chats, read back per scope, recorded. Returns what changed, whether
    /// the provider is paused, and how many chats were read. With `patient` (the daemon), the
    /// record waits out a database that cannot be written rather than read everything again.
    async fn round(
        &self,
        provider: &SharedProvider,
        after: Duration,
        patient: Option<&CancellationToken>,
    ) -> Result<(ReadBackSummary, bool, usize), StoreError> {
        let kind = provider.kind();
        if provider.gate().paused().is_some() {
            return Ok((ReadBackSummary::default(), true, 0));
        }
        let now = self.clock.instant();
        let due = self
            .store
            .call(move |s| s.due_read_backs(kind, now, after, ROUND))
            .await?;
        if due.is_empty() {
            return Ok((ReadBackSummary::default(), false, 0));
        }
        let mut groups: BTreeMap<&str, Vec<&DueReadBack>> = BTreeMap::new();
        for d in &due {
            groups.entry(d.scope.as_str()).or_default().push(d);
        }
        let mut results = Vec::with_capacity(due.len());
        let mut paused = false;
        for (scope, items) in groups {
            let chats: Vec<ReadBackChat> = items
                .iter()
                .map(|d| ReadBackChat {
                    session_id: d.session_id.clone(),
                    repo_id: d.repo_id.clone(),
                })
                .collect();
            let answers = provider.read_back(scope, &chats, self.config.share).await;
            for (d, answer) in items.iter().zip(answers) {
                match self.judge(d, answer) {
                    Some(r) => results.push((d.id, r)),
                    None => paused = true,
                }
            }
        }
        let read = results.len();
        let limits = self.limits();
        let now = self.clock.instant();
        let record =
            move |s: &mut crate::store::Store| s.record_read_backs(kind, &results, now, limits);
        let sum = match patient {
            Some(cancel) => {
                self.store
                    .persist("recording read-backs", cancel, record)
                    .await?
            }
            None => self.store.call(record).await?,
        };
        self.metrics.observe_read_backs(kind, &sum);
        Ok((sum, paused, read))
    }

    /// What one chat's answer means; `None`: the provider is paused (no attempt is spent).
    fn judge(&self, d: &DueReadBack, answer: Result<Presence, ProviderError>) -> Option<ReadBack> {
        match answer {
            Ok(Presence::Absent) => Some(ReadBack::Absent),
            Ok(p @ (Presence::Present | Presence::Misfiled { .. })) => Some(ReadBack::Present {
                note: p.note(d.repo_id.as_deref()),
            }),
            Err(e) if matches!(e.action, Action::Pause(_)) => None,
            Err(e) => {
                let wait = reread_wait(d.attempts, &e);
                Some(ReadBack::Undecided {
                    why: e.to_string(),
                    retry_at: self.clock.instant().after(wait),
                })
            }
        }
    }
}

/// The wait before reading an undecided chat again: [`FIRST_REREAD`] doubling per attempt, at
/// most [`MAX_REREAD`], and never before a Retry-After the provider named.
pub fn reread_wait(attempts: u32, e: &ProviderError) -> Duration {
    let backoff = FIRST_REREAD
        .saturating_mul(1u32 << attempts.min(16))
        .min(MAX_REREAD);
    match e.action {
        Action::RetryAfter(d) => backoff.max(d),
        _ => backoff,
    }
}

fn add(total: &mut ReadBackSummary, s: &ReadBackSummary) {
    total.absent += s.absent;
    total.reappeared += s.reappeared;
    total.requeued += s.requeued;
    total.unkept += s.unkept;
    total.undecided += s.undecided;
    total.unverified += s.unverified;
    total.requests_verified += s.requests_verified;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProviderKind;
    use crate::providers::Operation;

    fn err(action: Action) -> ProviderError {
        ProviderError::new(ProviderKind::CONVAI, Operation::Read, action, "x")
    }

    #[test]
    fn rereads_back_off_and_honour_a_longer_retry_after() {
        assert_eq!(reread_wait(0, &err(Action::Retry)), FIRST_REREAD);
        assert_eq!(reread_wait(1, &err(Action::Retry)), FIRST_REREAD * 2);
        assert_eq!(reread_wait(30, &err(Action::Retry)), MAX_REREAD);
        let long = Duration::from_secs(7200);
        assert_eq!(reread_wait(0, &err(Action::RetryAfter(long))), long);
    }
}
