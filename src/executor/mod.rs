//! The executor: pending work items become confirmed deletions, in batches, politely, without
//! losing or double-counting an item.
//!
//! Per provider, a lane of `concurrency` workers ([`Executor::run`]). Each worker claims the most
//! urgent due group of items (earliest due date first, one scope and knowledge base per batch, at
//! most the provider's batch size), waits for a concurrency slot and the rate limit ([`lane`]),
//! sends the delete, and applies the answer to every item in one store transaction together with
//! its audit event. While one batch is on the wire the worker claims its next, and it records an
//! answer in the background while the next call goes out, so the provider never waits on the
//! database (docs/BENCHMARKS.md has the figures).
//!
//! | answer | items |
//! |---|---|
//! | confirmed | deleted |
//! | KooSearch partial (deleted_count < total) | each ID looked up: absent → deleted, present → retry |
//! | retry / timeout / 5xx / unparseable | retry at backoff ([`retry`]), or dead when used up |
//! | 429 | retry no sooner than Retry-After; the lane slows down |
//! | content refused (400) | batch split in halves until the bad IDs stand alone; they go dead with the provider's message, the rest are deleted |
//! | pause (auth, permission, API not enabled) | released without counting an attempt; the lane pauses and probes with backoff |
//!
//! Rules: IDs the provider can never accept go dead before sending. A batch's items stay in flight
//! under a lease until the answer is stored, so a crash sends them again (deletes are idempotent).
//! Items sent back to pending are checked against legal holds before they can be claimed again,
//! and a batch that waited [`HOLD_RECHECK_AFTER`] or more since its claim is checked right before
//! its call.
//! Time (backoff, Retry-After, probes) is the injected clock's.

pub mod lane;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::model::ProviderKind;
use crate::providers::{
    Action, DeleteBatch, DeleteOutcome, Presence, ProviderError, SharedProvider,
};
use crate::store::queue::{ClaimedBatch, ClaimedItem, ItemOutcome};
use crate::store::{AsyncStore, StoreError};
use lane::Lane;
use retry::{Next, RetryPolicy};

/// How long the loop waits for new work before looking again (feeder writes are also announced
/// through [`Executor::wake`]).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// A batch older than this (wall time) is checked against legal holds right before it is sent:
/// a hold placed at least this long before a call starts always keeps its chats out of it.
pub const HOLD_RECHECK_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Drain everything, waiting out backoffs, then return.
    Once,
    /// Work until cancelled.
    Forever,
}

pub use crate::metrics::Stats;

/// How a lane ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneEnd {
    Drained,
    Paused(String),
    Cancelled,
}

pub struct Executor {
    store: AsyncStore,
    lanes: Vec<(SharedProvider, Arc<Lane>)>,
    clock: SharedClock,
    retry: RetryPolicy,
    lease: Duration,
    shutdown_timeout: Duration,
    wake: Notify,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl Executor {
    pub fn new(
        config: &Config,
        store: AsyncStore,
        providers: Vec<SharedProvider>,
        clock: SharedClock,
    ) -> Self {
        let lanes =
            providers
                .into_iter()
                .map(|p| {
                    let limits = config.limits(p.kind()).cloned().unwrap_or(
                        crate::providers::ProviderLimits {
                            batch_size: p.max_batch(),
                            ..Default::default()
                        },
                    );
                    (p, Arc::new(Lane::new(&limits, clock.clone())))
                })
                .collect::<Vec<(SharedProvider, Arc<Lane>)>>();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        for (p, _) in &lanes {
            metrics.register_provider(p.kind());
        }
        Self {
            store,
            lanes,
            clock,
            retry: RetryPolicy::new(&config.retry),
            lease: config.daemon.lease,
            shutdown_timeout: config.daemon.shutdown_timeout,
            wake: Notify::new(),
            metrics,
        }
    }

    /// The counters this executor updates (served at /metrics).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// The providers this executor deletes at.
    pub fn providers(&self) -> Vec<SharedProvider> {
        self.lanes.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Announces new work (a resolved request, a rule run, a lifted hold).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// What the executor did so far: read back from its metrics, paused reasons from its lanes.
    pub fn stats(&self) -> Stats {
        let mut st = self.metrics.stats(self.lanes.iter().map(|(p, _)| p.kind()));
        for (p, lane) in &self.lanes {
            if let Some(paused) = lane.paused() {
                st.paused.insert(p.kind().to_string(), paused.reason);
            }
        }
        st
    }

    pub fn lane(&self, kind: ProviderKind) -> Option<&Arc<Lane>> {
        self.lanes
            .iter()
            .find(|(p, _)| p.kind() == kind)
            .map(|(_, l)| l)
    }

    /// Runs every provider's lane until drained (`Once`) or cancelled.
    pub async fn run(
        self: &Arc<Self>,
        mode: Mode,
        cancel: CancellationToken,
    ) -> Result<Vec<(ProviderKind, LaneEnd)>, ExecutorError> {
        let reaper_cancel = cancel.child_token();
        let reaper = (mode == Mode::Forever).then(|| {
            let me = self.clone();
            let c = reaper_cancel.clone();
            tokio::spawn(async move { me.reap_leases(c).await })
        });
        let mut set = JoinSet::new();
        for i in 0..self.lanes.len() {
            let me = self.clone();
            let cancel = cancel.clone();
            set.spawn(async move {
                let kind = me.lanes[i].0.kind();
                (kind, me.lane_loop(i, mode, cancel).await)
            });
        }
        let mut ends = Vec::new();
        let mut failure = None;
        while let Some(joined) = set.join_next().await {
            let (kind, end) = joined.expect("a lane task panicked");
            match end {
                Ok(e) => ends.push((kind, e)),
                Err(e) => {
                    // A store failure ends every lane: nothing can be recorded.
                    cancel.cancel();
                    failure.get_or_insert(e);
                }
            }
        }
        reaper_cancel.cancel();
        if let Some(r) = reaper {
            let _ = r.await;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(ends),
        }
    }

    /// Returns items whose lease ran out (a stuck batch) to pending, every quarter lease.
    async fn reap_leases(&self, cancel: CancellationToken) {
        let every = (self.lease / 4).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = self.clock.instant();
            match self
                .store
                .call(move |s| s.release_expired_leases(now))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(items = n, "leases expired; items returned to pending"),
                Err(e) => tracing::error!(error = %e, "could not reap expired leases"),
            }
        }
    }

    /// One provider's lane: `concurrency` workers, each claiming a batch, sending it, and recording
    /// the answer together with claiming its next batch (one transaction), so no single loop or
    /// extra database trip stands between the provider's answer and the next call.
    async fn lane_loop(
        self: &Arc<Self>,
        idx: usize,
        mode: Mode,
        cancel: CancellationToken,
    ) -> Result<LaneEnd, ExecutorError> {
        let (provider, lane) = self.lanes[idx].clone();
        let kind = provider.kind();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for w in 0..lane.max_concurrency() {
            let me = self.clone();
            let (p, l, b, c) = (provider.clone(), lane.clone(), busy.clone(), cancel.clone());
            workers.spawn(async move { me.worker(w, p, l, mode, c, b).await });
        }
        let drain = async {
            let mut end = LaneEnd::Drained;
            while let Some(joined) = workers.join_next().await {
                match joined.expect("a lane worker panicked")? {
                    LaneEnd::Paused(r) => end = LaneEnd::Paused(r),
                    LaneEnd::Cancelled if end == LaneEnd::Drained => end = LaneEnd::Cancelled,
                    _ => {}
                }
            }
            Ok::<LaneEnd, ExecutorError>(end)
        };
        tokio::pin!(drain);
        // Shutdown: stop claiming at once; let batches on the wire finish within the timeout (the
        // caller returns anything unfinished to pending: it is sent again next time).
        tokio::select! {
            r = &mut drain => r,
            _ = async { cancel.cancelled().await; tokio::time::sleep(self.shutdown_timeout).await } => {
                tracing::warn!(provider = %kind, "shutdown timeout: abandoning in-flight batches (they will be sent again)");
                Ok(LaneEnd::Cancelled)
            }
        }
    }

    /// One worker of a lane. Returns how it ended.
    ///
    /// While a batch is on the wire the worker claims its next one, and it records an answer in
    /// the background while the next call goes out: the provider never waits on the database.
    /// At most one recording per worker is outstanding (back-pressure on a slow disk).
    async fn worker(
        self: Arc<Self>,
        w: usize,
        provider: SharedProvider,
        lane: Arc<Lane>,
        mode: Mode,
        cancel: CancellationToken,
        busy: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<LaneEnd, ExecutorError> {
        let mut recording: Option<tokio::task::JoinHandle<Result<(), ExecutorError>>> = None;
        let end = self
            .worker_loop(w, &provider, &lane, mode, &cancel, &busy, &mut recording)
            .await;
        if let Some(r) = recording.take() {
            r.await.expect("a recording task panicked")?;
        }
        end
    }

    #[allow(clippy::too_many_arguments)]
    async fn worker_loop(
        self: &Arc<Self>,
        w: usize,
        provider: &SharedProvider,
        lane: &Arc<Lane>,
        mode: Mode,
        cancel: &CancellationToken,
        busy: &Arc<std::sync::atomic::AtomicUsize>,
        recording: &mut Option<tokio::task::JoinHandle<Result<(), ExecutorError>>>,
    ) -> Result<LaneEnd, ExecutorError> {
        use std::sync::atomic::Ordering::SeqCst;
        let kind = provider.kind();
        let (lease, max) = (self.lease, provider.max_batch());
        let mut next: Option<ClaimedBatch> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(LaneEnd::Cancelled); // a claimed `next` is released with the rest
            }
            if let Some(p) = lane.paused() {
                if let Some(b) = next.take() {
                    let id = b.batch_id;
                    self.store.call(move |s| s.release_batch(id)).await?;
                }
                if mode == Mode::Once {
                    return Ok(LaneEnd::Paused(p.reason));
                }
                if !self.probe_due(w, &p, cancel).await {
                    continue;
                }
            }
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let slot = tokio::select! {
                _ = cancel.cancelled() => return Ok(LaneEnd::Cancelled),
                s = lane.slot() => s,
            };
            let batch = match next.take() {
                Some(b) => Some(b),
                None => {
                    let now = self.clock.instant();
                    self.store
                        .call(move |s| s.claim_batch(kind, now, lease, max))
                        .await?
                }
            };
            let Some(batch) = batch else {
                drop(slot);
                if let Some(end) = self.idle(kind, mode, busy, wake.as_mut(), cancel).await? {
                    return Ok(end);
                }
                continue;
            };
            busy.fetch_add(1, SeqCst);
            let probing = lane.paused().is_some();
            let claim_next = async {
                if probing || cancel.is_cancelled() {
                    return Ok(None);
                }
                let now = self.clock.instant();
                self.store
                    .call(move |s| s.claim_batch(kind, now, lease, max))
                    .await
            };
            let (sent, claimed) = tokio::join!(self.send_batch(provider, lane, &batch), claim_next);
            drop(slot);
            next = claimed?;
            let (outcomes, summary) = match sent {
                Ok(x) => x,
                Err(e) => {
                    busy.fetch_sub(1, SeqCst);
                    return Err(e);
                }
            };
            if let Some(prev) = recording.take() {
                prev.await.expect("a recording task panicked")?;
            }
            let me = self.clone();
            let b = busy.clone();
            let kind_copy = kind;
            *recording = Some(tokio::spawn(async move {
                let r = me.record(kind_copy, batch, outcomes, summary).await;
                b.fetch_sub(1, SeqCst);
                me.wake.notify_waiters();
                r
            }));
            if probing {
                // A probe's answer decides whether the lane resumes: wait for it to be recorded.
                if let Some(r) = recording.take() {
                    r.await.expect("a recording task panicked")?;
                }
            }
        }
    }

    /// While paused: whether this worker probes now (worker 0, once the probe is due); the
    /// others wait (at most a second, then look again).
    async fn probe_due(&self, w: usize, p: &lane::Pause, cancel: &CancellationToken) -> bool {
        let now = self.clock.instant();
        if w == 0 && now >= p.next_probe {
            return true;
        }
        let wait = p
            .next_probe
            .since(now)
            .clamp(Duration::from_millis(1), Duration::from_secs(1));
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.clock.sleep(wait) => {}
        }
        false
    }

    /// Nothing is due. Items in other workers' hands may come back; otherwise wait for the
    /// earliest backoff to end or (daemon) for new work. `Some` when the lane is done.
    async fn idle(
        &self,
        kind: ProviderKind,
        mode: Mode,
        busy: &std::sync::atomic::AtomicUsize,
        mut wake: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        cancel: &CancellationToken,
    ) -> Result<Option<LaneEnd>, ExecutorError> {
        use std::sync::atomic::Ordering::SeqCst;
        let pending = self.store.call(move |s| s.next_pending(kind)).await?;
        match (pending, mode) {
            (None, Mode::Once) if busy.load(SeqCst) == 0 => return Ok(Some(LaneEnd::Drained)),
            (None, Mode::Once) => {
                tokio::select! {
                    _ = &mut wake => {}
                    _ = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
            (Some(t), Mode::Once) => {
                let d = t.since(self.clock.instant()).max(Duration::from_millis(1));
                if busy.load(SeqCst) == 0 {
                    self.clock.sleep(d).await;
                } else {
                    // Others are working: their answers may make items due sooner.
                    tokio::select! {
                        _ = &mut wake => {}
                        _ = self.clock.sleep(d) => {}
                    }
                }
            }
            (p, Mode::Forever) => {
                let d = p
                    .map(|t| t.since(self.clock.instant()).max(Duration::from_millis(1)))
                    .unwrap_or(IDLE_RECHECK);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = &mut wake => {}
                    _ = self.clock.sleep(d.min(IDLE_RECHECK)) => {}
                }
            }
        }
        Ok(None)
    }

    /// Sends one claimed batch (splitting it if the provider refuses its content).
    async fn send_batch(
        &self,
        provider: &SharedProvider,
        lane: &Lane,
        batch: &ClaimedBatch,
    ) -> Result<(Vec<(i64, ItemOutcome)>, Vec<String>), ExecutorError> {
        let mut outcomes: Vec<(i64, ItemOutcome)> = Vec::with_capacity(batch.items.len());
        let mut sendable = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            match provider.check_id(&item.session_id) {
                Ok(()) => sendable.push(item.clone()),
                Err(reason) => outcomes.push((
                    item.id,
                    ItemOutcome::Dead {
                        error: format!("not sent: {reason}"),
                    },
                )),
            }
        }
        let mut summary = Vec::new();
        if !sendable.is_empty() {
            self.send(provider, lane, batch, sendable, &mut outcomes, &mut summary)
                .await?;
        }
        Ok((outcomes, summary))
    }

    /// Records a batch's answer: items, audit event, request states, counters.
    async fn record(
        &self,
        kind: ProviderKind,
        batch: ClaimedBatch,
        outcomes: Vec<(i64, ItemOutcome)>,
        summary: Vec<String>,
    ) -> Result<(), ExecutorError> {
        let now = self.clock.instant();
        let audit = batch_audit(&batch, &outcomes, &summary);
        let answer = summary.join("; ");
        tracing::debug!(
            provider = %kind,
            batch = batch.batch_id,
            scope = %batch.scope,
            items = batch.items.len(),
            answer = %answer,
            "batch answered"
        );
        let (bid, outs) = (batch.batch_id, outcomes.clone());
        self.store
            .call(move |s| s.finish_batch(bid, now, &outs, &answer, Some(&audit)))
            .await?;
        for (_, o) in &outcomes {
            match o {
                ItemOutcome::Deleted { .. } => self.metrics.deletion(kind, "deleted"),
                ItemOutcome::Dead { .. } => self.metrics.deletion(kind, "dead"),
                _ => {}
            }
        }
        Ok(())
    }

    /// One delete call for `items` (and, after a refusal, the calls of its halves).
    /// Sends `items` of `batch` in one delete call and turns the answer into outcomes; a batch
    /// the provider refused is split and sent again (hence boxed: it recurses).
    fn send<'a>(
        &'a self,
        provider: &'a SharedProvider,
        lane: &'a Lane,
        batch: &'a ClaimedBatch,
        items: Vec<ClaimedItem>,
        outcomes: &'a mut Vec<(i64, ItemOutcome)>,
        summary: &'a mut Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExecutorError>> + Send + 'a>>
    {
        Box::pin(async move {
            let kind = provider.kind();
            lane.ready().await;
            let items = self
                .drop_newly_held(batch, items, outcomes, summary)
                .await?;
            if items.is_empty() {
                return Ok(());
            }
            let request = DeleteBatch {
                scope: batch.scope.clone(),
                repo_id: batch.repo_id.clone(),
                ids: items.iter().map(|i| i.session_id.clone()).collect(),
            };
            self.metrics.delete_call(kind);
            let started = std::time::Instant::now();
            let cap = self.retry.max_retry_after;
            let result = provider.delete(&request).await.map_err(|e| e.capped(cap));
            self.metrics
                .batch_seconds
                .get_or_create(&crate::metrics::labels(&[("provider", kind.as_str())]))
                .observe(started.elapsed().as_secs_f64());
            let now = self.clock.instant();
            match result {
                Ok(DeleteOutcome::AllDeleted) => {
                    lane.succeeded();
                    self.resume_if_paused(kind, lane).await?;
                    summary.push(format!("{} confirmed", items.len()));
                    outcomes.extend(items.iter().map(|i| {
                        (
                            i.id,
                            ItemOutcome::Deleted {
                                already_absent: false,
                            },
                        )
                    }));
                }
                Ok(DeleteOutcome::Partial { total, deleted }) => {
                    lane.succeeded();
                    self.resume_if_paused(kind, lane).await?;
                    summary.push(format!(
                        "partial: {deleted} of {total} deleted; looked up each"
                    ));
                    self.settle_partial(provider, lane, batch, &items, now, outcomes)
                        .await;
                }
                Err(e) => {
                    summary.push(e.to_string());
                    for again in self
                        .on_failure(lane, kind, items, &e, now, outcomes)
                        .await?
                    {
                        self.send(provider, lane, batch, again, outcomes, summary)
                            .await?;
                    }
                }
            }
            Ok(())
        })
    }

    /// A legal hold placed since the claim wins: its chats are released, not sent, and become
    /// held when the answer is recorded. Claims already skip held chats; a batch that waited
    /// (claimed ahead, a Retry-After, a long call before it) is checked again here.
    async fn drop_newly_held(
        &self,
        batch: &ClaimedBatch,
        items: Vec<ClaimedItem>,
        outcomes: &mut Vec<(i64, ItemOutcome)>,
        summary: &mut Vec<String>,
    ) -> Result<Vec<ClaimedItem>, ExecutorError> {
        let held = if batch.claimed_at.elapsed() >= HOLD_RECHECK_AFTER {
            let bid = batch.batch_id;
            self.store.call(move |s| s.held_in_batch(bid)).await?
        } else {
            Vec::new()
        };
        let (items, kept): (Vec<ClaimedItem>, Vec<ClaimedItem>) =
            items.into_iter().partition(|i| !held.contains(&i.id));
        if !kept.is_empty() {
            summary.push(format!(
                "{} not sent: a legal hold now covers them",
                kept.len()
            ));
            outcomes.extend(kept.iter().map(|i| (i.id, ItemOutcome::Release)));
        }
        Ok(items)
    }

    /// After a partial batch, looks each chat up: absent is deleted, present goes back for
    /// another try.
    async fn settle_partial(
        &self,
        provider: &SharedProvider,
        lane: &Lane,
        batch: &ClaimedBatch,
        items: &[ClaimedItem],
        now: Millis,
        outcomes: &mut Vec<(i64, ItemOutcome)>,
    ) {
        let kind = provider.kind();
        let cap = self.retry.max_retry_after;
        for item in items {
            self.metrics.lookup(kind);
            lane.ready().await;
            let o = match provider
                .lookup(&batch.scope, batch.repo_id.as_deref(), &item.session_id)
                .await
                .map_err(|e| e.capped(cap))
            {
                Ok(Presence::Absent) => ItemOutcome::Deleted {
                    already_absent: false,
                },
                Ok(Presence::Present) => self.retry_outcome(
                    kind,
                    item,
                    now,
                    None,
                    "still present after a partial batch delete",
                ),
                Err(e) => self.failure_outcome(kind, item, now, &e),
            };
            outcomes.push((item.id, o));
        }
    }

    /// What a failed delete call means for its items (see [`Action`]). Returns the parts to send
    /// again: the two halves of a refused batch, or the rest after the bad IDs named.
    async fn on_failure(
        &self,
        lane: &Lane,
        kind: ProviderKind,
        items: Vec<ClaimedItem>,
        e: &ProviderError,
        now: Millis,
        outcomes: &mut Vec<(i64, ItemOutcome)>,
    ) -> Result<Vec<Vec<ClaimedItem>>, ExecutorError> {
        let refused = || ItemOutcome::Dead {
            error: format!("refused by the provider: {e}"),
        };
        match &e.action {
            Action::Retry => {
                outcomes.extend(
                    items
                        .iter()
                        .map(|i| (i.id, self.failure_outcome(kind, i, now, e))),
                );
            }
            Action::RetryAfter(wait) => {
                lane.throttled(*wait);
                self.metrics.throttle(kind);
                outcomes.extend(
                    items
                        .iter()
                        .map(|i| (i.id, self.failure_outcome(kind, i, now, e))),
                );
            }
            Action::Rejected if items.len() == 1 => outcomes.push((items[0].id, refused())),
            Action::Rejected => {
                self.metrics.split(kind);
                let mut left = items;
                let right = left.split_off(left.len() / 2);
                return Ok(vec![left, right]);
            }
            Action::RejectIds(bad) => {
                let (dead, rest): (Vec<_>, Vec<_>) =
                    items.into_iter().partition(|i| bad.contains(&i.session_id));
                outcomes.extend(dead.iter().map(|i| (i.id, refused())));
                if !rest.is_empty() {
                    return Ok(vec![rest]);
                }
            }
            Action::Pause(reason) => {
                let p = lane.pause(reason.clone());
                tracing::error!(provider = %kind, reason = %reason, probe_in_s = p.probe_delay.as_secs(), "provider paused");
                let (r, at) = (reason.clone(), self.clock.now());
                self.store
                    .call(move |s| s.set_provider_paused(kind, Some(&r), at))
                    .await?;
                outcomes.extend(items.iter().map(|i| (i.id, ItemOutcome::Release)));
            }
        }
        Ok(Vec::new())
    }

    async fn resume_if_paused(&self, kind: ProviderKind, lane: &Lane) -> Result<(), ExecutorError> {
        if lane.resume() {
            tracing::info!(provider = %kind, "provider answered again; resumed");
            let at = self.clock.now();
            self.store
                .call(move |s| s.set_provider_paused(kind, None, at))
                .await?;
        }
        Ok(())
    }

    fn failure_outcome(
        &self,
        kind: ProviderKind,
        item: &ClaimedItem,
        now: Millis,
        e: &ProviderError,
    ) -> ItemOutcome {
        let wait = match e.action {
            Action::RetryAfter(d) => Some(d),
            _ => None,
        };
        let o = self.retry_outcome(kind, item, now, wait, &e.to_string());
        if matches!(o, ItemOutcome::Retry { .. }) {
            self.metrics.retry(kind, e.cause_label());
        }
        o
    }

    fn retry_outcome(
        &self,
        _kind: ProviderKind,
        item: &ClaimedItem,
        now: Millis,
        wait: Option<Duration>,
        error: &str,
    ) -> ItemOutcome {
        match self
            .retry
            .next(item.attempts, item.first_attempt, now, wait)
        {
            Next::At(at) => ItemOutcome::Retry {
                at,
                error: error.to_string(),
            },
            Next::GiveUp => ItemOutcome::Dead {
                error: format!("gave up after {} attempt(s): {error}", item.attempts + 1),
            },
        }
    }
}

/// The audit event of one batch: what was sent and what each ID came to.
fn batch_audit(
    batch: &ClaimedBatch,
    outcomes: &[(i64, ItemOutcome)],
    summary: &[String],
) -> serde_json::Value {
    let by_id: std::collections::HashMap<i64, &str> = batch
        .items
        .iter()
        .map(|i| (i.id, i.session_id.as_str()))
        .collect();
    let sid = |id: i64| by_id.get(&id).copied().unwrap_or("");
    let mut deleted = Vec::new();
    let mut retry = Vec::new();
    let mut dead = Vec::new();
    let mut released = 0;
    for (id, o) in outcomes {
        match o {
            ItemOutcome::Deleted { .. } => deleted.push(sid(*id)),
            ItemOutcome::Retry { .. } => retry.push(sid(*id)),
            ItemOutcome::Dead { error } => {
                dead.push(serde_json::json!({"session_id": sid(*id), "error": error}))
            }
            ItemOutcome::Release => released += 1,
        }
    }
    serde_json::json!({
        "batch_id": batch.batch_id, "provider": batch.provider, "scope": batch.scope, "repo_id": batch.repo_id,
        "sent": batch.items.len(), "deleted": deleted, "retry": retry, "dead": dead, "released": released,
        "answer": summary,
    })
}
