//! The executor: pending work items become confirmed deletions, in batches, politely, without
//! losing or double-counting an item.
//!
//! Per provider, a lane of `concurrency` workers ([`Executor::run`]). Each worker asks the
//! provider's gate for a pass ([`crate::providers::gate`]: concurrency, rate, Retry-After, pause),
//! claims the most urgent due group of items (earliest due date first, one scope and knowledge base
//! per batch, at most the provider's batch size), sends the delete, and applies the answer to every
//! item in one store transaction together with its audit event. The executor keeps none of the
//! provider's politeness state: it asks the gate, and mirrors the gate's state into the store for
//! `status`. While one batch is on the wire the worker claims its next, and it records an
//! answer in the background while the next call goes out, so the provider never waits on the
//! database (docs/BENCHMARKS.md has the figures).
//!
//! | answer | items |
//! |---|---|
//! | confirmed | deleted |
//! | KooSearch partial (deleted_count < total) | each ID looked up (concurrently, through the gate): absent → deleted, present → retry; a lookup that fails is tried again as a lookup, up to [`LOOKUP_TRIES`] times, before the round counts as one failed attempt (observation is not deletion) |
//! | retry / timeout / 5xx / unparseable | retry at backoff ([`retry`]), or dead when used up |
//! | 429 (or a 5xx with Retry-After) | deferred until the gate lets calls start again, without counting an attempt (the throttle is the provider's state, not the item's); dead only when `give_up_after` has passed |
//! | content refused (400) | batch split in halves until the bad IDs stand alone; they go dead with the provider's message, the rest are deleted |
//! | pause (auth, permission, API not enabled) | released without counting an attempt; the gate pauses and admits one probe at a time, with backoff |
//!
//! Rules: IDs the provider can never accept go dead before sending. A batch's items stay in flight
//! under a lease until the answer is stored, so a crash sends them again (deletes are idempotent).
//! A legal hold is absolute: every call is preceded by the store's hold rule
//! ([`crate::store::holds::withhold`]) over its batch, after any wait for the gate, so a chat a
//! hold covers when the check commits is never named; what remains is the time from that commit
//! to the call's first byte.
//! Time (backoff, Retry-After, probes) is the injected clock's.

pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::model::ProviderKind;
use crate::providers::gate::{Gate, GateView, Pass};
use crate::providers::{
    Action, DeleteBatch, DeleteOutcome, Operation, Presence, ProviderError, SharedProvider,
};
use crate::store::queue::{ClaimedBatch, ClaimedItem, ItemOutcome};
use crate::store::status::GateRow;
use crate::store::{AsyncStore, Store, StoreError};
use retry::{Next, RetryPolicy};

/// How long the loop waits for new work before looking again (feeder writes are also announced
/// through [`Executor::wake`]).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The batch a call is for, and how its calls reach the store: the lane's mode and its
/// cancellation, so the check before each call waits out a store outage in the daemon like every
/// other lane write.
struct Sending<'a> {
    batch: &'a ClaimedBatch,
    mode: Mode,
    cancel: &'a CancellationToken,
}

/// How many times a lookup after a partial batch is tried before the item is simply sent again.
pub const LOOKUP_TRIES: u32 = 3;
/// The longest pause between two tries of a failed lookup.
const LOOKUP_MAX_WAIT: Duration = Duration::from_secs(2);
/// The gate's state is written to the store at most this often (a change of state at once).
const GATE_ROW_EVERY: Duration = Duration::from_secs(1);

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
    providers: Vec<SharedProvider>,
    /// What the store last heard of each provider's gate (`status` reads it from there).
    mirrored: Mutex<HashMap<ProviderKind, Mirrored>>,
    clock: SharedClock,
    retry: RetryPolicy,
    lease: Duration,
    shutdown_timeout: Duration,
    wake: Notify,
    metrics: Arc<crate::metrics::Metrics>,
    /// Reads deleted chats back ([`crate::verify`]): beside the lanes in the daemon, after the
    /// drain in `run --once`.
    verifier: crate::verify::Verifier,
    /// Batches this process has claimed and not yet recorded or released. The lease reaper
    /// leaves them alone: their answer may be waiting for a full disk to take it, and reaping
    /// them would send those chats again while their deletion is about to be recorded.
    held: Arc<Mutex<HashSet<i64>>>,
}

/// This process holds a claimed batch while this lives (see [`Executor::held`]).
struct Holding {
    set: Arc<Mutex<HashSet<i64>>>,
    batch_id: i64,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.set.lock().unwrap().remove(&self.batch_id);
    }
}

/// The gate's state as last written to the store.
#[derive(Default)]
struct Mirrored {
    pause: Option<String>,
    row: Option<GateRow>,
    at: Millis,
}

impl Mirrored {
    /// What to write for the gate as it is now: whether its pause changed (written at once:
    /// operators act on it), and whether to write its row (a new state at once, a changed rate or
    /// concurrency at most every [`GATE_ROW_EVERY`], anything when `force`). Remembers what it
    /// said to write.
    fn look(
        &mut self,
        pause: Option<String>,
        row: &GateRow,
        now: Millis,
        force: bool,
    ) -> (bool, bool) {
        let pause_changed = pause != self.pause;
        self.pause = pause;
        let state_changed = self.row.as_ref().map(|r| &r.state) != Some(&row.state);
        let due = now.since(self.at) >= GATE_ROW_EVERY && self.row.as_ref() != Some(row);
        let write = force || state_changed || due;
        if write {
            self.row = Some(row.clone());
            self.at = now;
        }
        (pause_changed, write)
    }
}

/// What to do after a lookup (after a partial batch) failed for the `tries`-th time.
#[derive(Debug, PartialEq, Eq)]
enum LookupNext {
    /// The gate is paused: nothing more is sent; the item waits for the probe.
    Release,
    /// Throttled: look again; the gate holds the next lookup back as long as it must.
    Again,
    /// A transient failure: look again after a short backoff.
    AgainAfterBackoff,
    /// [`LOOKUP_TRIES`] used up, or the lookup was refused: this round is one failed attempt.
    GiveUp,
}

fn after_failed_lookup(action: &Action, tries: u32) -> LookupNext {
    match action {
        Action::Pause(_) => LookupNext::Release,
        Action::RetryAfter(_) | Action::Throttled if tries < LOOKUP_TRIES => LookupNext::Again,
        Action::Retry if tries < LOOKUP_TRIES => LookupNext::AgainAfterBackoff,
        _ => LookupNext::GiveUp,
    }
}

/// How a lane ends when its workers end as they did: paused if any paused (the operator must
/// act), else cancelled if any was, else drained.
fn lane_end(ends: impl IntoIterator<Item = LaneEnd>) -> LaneEnd {
    let mut end = LaneEnd::Drained;
    for e in ends {
        match e {
            LaneEnd::Paused(r) => end = LaneEnd::Paused(r),
            LaneEnd::Cancelled if end == LaneEnd::Drained => end = LaneEnd::Cancelled,
            _ => {}
        }
    }
    end
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
        let metrics = Arc::new(crate::metrics::Metrics::new());
        for p in &providers {
            metrics.register_provider(p.kind());
        }
        let verifier = crate::verify::Verifier::new(
            store.clone(),
            clock.clone(),
            config.verify.clone(),
            metrics.clone(),
        );
        Self {
            store,
            providers,
            mirrored: Mutex::new(HashMap::new()),
            verifier,
            held: Default::default(),
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
        self.providers.clone()
    }

    /// Gives every provider's gate its share of the configured limits: `n` instances work the
    /// queue (PostgreSQL's heartbeat counts them).
    pub fn share_limits(&self, n: usize) {
        for p in &self.providers {
            p.gate().set_instances(n);
        }
    }

    /// Announces new work (a resolved request, a rule run, a lifted hold).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// What the executor did so far: read back from its metrics, paused reasons from the gates.
    pub fn stats(&self) -> Stats {
        for p in &self.providers {
            self.metrics.observe_gate(&p.gate().view());
        }
        let mut st = self.metrics.stats(self.providers.iter().map(|p| p.kind()));
        for p in &self.providers {
            if let Some(paused) = p.gate().paused() {
                st.paused.insert(p.kind().to_string(), paused.reason);
            }
        }
        st
    }

    /// Runs every provider's lane until drained (`Once`) or cancelled, with read-after-delete
    /// verification: in the daemon a verifier per provider beside the lanes; in `Once` the
    /// chats due to be read back are read after the drain, and what reappeared is drained again
    /// (this ends: each chat reappears a bounded number of times).
    pub async fn run(
        self: &Arc<Self>,
        mode: Mode,
        cancel: CancellationToken,
    ) -> Result<Vec<(ProviderKind, LaneEnd)>, ExecutorError> {
        if mode == Mode::Forever {
            let verify_cancel = cancel.child_token();
            let mut verifiers = JoinSet::new();
            if self.verifier.enabled() {
                for p in &self.providers {
                    let (me, p, c) = (self.clone(), p.clone(), verify_cancel.clone());
                    verifiers.spawn(async move {
                        let waker = me.clone();
                        me.verifier.run(p, c, move || waker.wake()).await
                    });
                }
            }
            let ends = self.run_lanes(mode, cancel).await;
            verify_cancel.cancel();
            while verifiers.join_next().await.is_some() {}
            return ends;
        }
        loop {
            let ends = self.run_lanes(mode, cancel.clone()).await?;
            let mut requeued = 0;
            for p in &self.providers {
                if cancel.is_cancelled() || p.gate().paused().is_some() {
                    continue;
                }
                requeued += self.verifier.run_due(p).await?.summary.requeued;
            }
            if requeued == 0 || cancel.is_cancelled() {
                return Ok(ends);
            }
        }
    }

    async fn run_lanes(
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
        for i in 0..self.providers.len() {
            let me = self.clone();
            let cancel = cancel.clone();
            set.spawn(async move {
                let kind = me.providers[i].kind();
                let end = me.lane_loop(i, mode, cancel).await;
                let gate = me.providers[i].gate().clone();
                // The gate's last state, for `status` after the run.
                let mirrored = me.mirror_gate(kind, &gate, true).await;
                (kind, end.and_then(|e| mirrored.map(|()| e)))
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
            let mine: Vec<i64> = self.held.lock().unwrap().iter().copied().collect();
            match self
                .store
                .call(move |s| s.release_expired_leases(now, &mine))
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::warn!(items = n, "leases expired; items returned to pending"),
                Err(e) if e.is_transient() => {
                    // Said once for the whole outage; the next round tries again.
                    self.store
                        .outage()
                        .failed("returning expired leases", Arc::new(e));
                }
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
        let provider = self.providers[idx].clone();
        let kind = provider.kind();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..provider.gate().max_concurrency() {
            let me = self.clone();
            let (p, b, c) = (provider.clone(), busy.clone(), cancel.clone());
            workers.spawn(async move { me.worker(p, mode, c, b).await });
        }
        let drain = async {
            let mut ends = Vec::new();
            while let Some(joined) = workers.join_next().await {
                ends.push(joined.expect("a lane worker panicked")?);
            }
            Ok::<LaneEnd, ExecutorError>(lane_end(ends))
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
        provider: SharedProvider,
        mode: Mode,
        cancel: CancellationToken,
        busy: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Result<LaneEnd, ExecutorError> {
        let mut recording: Option<tokio::task::JoinHandle<Result<(), ExecutorError>>> = None;
        let end = self
            .worker_loop(&provider, mode, &cancel, &busy, &mut recording)
            .await;
        if let Some(r) = recording.take() {
            r.await.expect("a recording task panicked")?;
        }
        end
    }

    async fn worker_loop(
        self: &Arc<Self>,
        provider: &SharedProvider,
        mode: Mode,
        cancel: &CancellationToken,
        busy: &Arc<std::sync::atomic::AtomicUsize>,
        recording: &mut Option<tokio::task::JoinHandle<Result<(), ExecutorError>>>,
    ) -> Result<LaneEnd, ExecutorError> {
        use std::sync::atomic::Ordering::SeqCst;
        let kind = provider.kind();
        let gate = provider.gate().clone();
        let (lease, max) = (self.lease, provider.max_batch());
        let mut next: Option<(ClaimedBatch, Holding)> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(LaneEnd::Cancelled); // a claimed `next` is released with the rest
            }
            if let Some(p) = gate.paused() {
                if let Some((b, _holding)) = next.take() {
                    let (id, now) = (b.batch_id, self.clock.now());
                    self.write("releasing a batch", mode, cancel, move |s| {
                        s.release_batch(id, now)
                    })
                    .await?;
                }
                self.mirror_gate(kind, &gate, false).await?;
                if mode == Mode::Once {
                    return Ok(LaneEnd::Paused(p.reason));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(LaneEnd::Cancelled),
                    _ = gate.probe_due() => {}
                }
            }
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let pass = tokio::select! {
                _ = cancel.cancelled() => return Ok(LaneEnd::Cancelled),
                p = gate.enter(Operation::Delete) => p,
            };
            // Refused: paused, and another worker holds the probe. Look again.
            let Ok(pass) = pass else { continue };
            let batch = match next.take() {
                Some(b) => Some(b),
                None => self.claim(kind, lease, max, mode, cancel).await?,
            };
            let Some((batch, holding)) = batch else {
                drop(pass);
                if let Some(end) = self.idle(kind, mode, busy, wake.as_mut(), cancel).await? {
                    return Ok(end);
                }
                continue;
            };
            busy.fetch_add(1, SeqCst);
            let probing = pass.is_probe();
            let claim_next = async {
                if probing || cancel.is_cancelled() {
                    return Ok(None);
                }
                self.claim(kind, lease, max, mode, cancel).await
            };
            let (sent, claimed) = tokio::join!(
                self.send_batch(provider, pass, &batch, mode, cancel),
                claim_next
            );
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
            let g = gate.clone();
            let c = cancel.clone();
            *recording = Some(tokio::spawn(async move {
                let r = me.record(kind, batch, outcomes, summary, mode, &c).await;
                drop(holding);
                let m = me.mirror_gate(kind, &g, false).await;
                b.fetch_sub(1, SeqCst);
                me.wake.notify_waiters();
                me.verifier.deletions_recorded();
                r.and(m)
            }));
            if probing {
                // A probe's answer decides whether the lane resumes: wait for it to be recorded.
                if let Some(r) = recording.take() {
                    r.await.expect("a recording task panicked")?;
                }
            }
        }
    }

    /// A store write a lane must not lose. In the daemon it waits out a database that cannot be
    /// written for a while ([`crate::store::outage`]); in `run --once` it fails at once (the
    /// next run sends again what was not recorded).
    async fn write<R, F>(
        &self,
        what: &'static str,
        mode: Mode,
        cancel: &CancellationToken,
        f: F,
    ) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&mut Store) -> Result<R, StoreError> + Send + Sync + 'static,
    {
        match mode {
            Mode::Forever => self.store.persist(what, cancel, f).await,
            Mode::Once => self.store.call(move |s| f(s)).await,
        }
    }

    /// Claims `kind`'s most urgent due batch, and holds it in [`Executor::held`]. The lease
    /// starts when the claim lands (the clock is read inside the write, which may have waited).
    async fn claim(
        &self,
        kind: ProviderKind,
        lease: Duration,
        max: usize,
        mode: Mode,
        cancel: &CancellationToken,
    ) -> Result<Option<(ClaimedBatch, Holding)>, StoreError> {
        let clock = self.clock.clone();
        let held = self.held.clone();
        self.write("claiming a batch", mode, cancel, move |s| {
            let batch = s.claim_batch(kind, clock.instant(), lease, max)?;
            // Marked held on the store thread, before the reaper can see the claim.
            Ok(batch.map(|b| {
                held.lock().unwrap().insert(b.batch_id);
                let holding = Holding {
                    set: held.clone(),
                    batch_id: b.batch_id,
                };
                (b, holding)
            }))
        })
        .await
    }

    /// Writes the gate's state to the store when it changed: the pause (at once) and the
    /// running/throttled state, rate and concurrency (`status` reads them; at most once a second
    /// unless the state changed, or always when `force`).
    async fn mirror_gate(
        &self,
        kind: ProviderKind,
        gate: &Gate,
        force: bool,
    ) -> Result<(), ExecutorError> {
        let view = gate.view();
        self.metrics.observe_gate(&view);
        let now = self.clock.instant();
        let row = gate_row(&view);
        let (pause_changed, write_row) = {
            let pause = view.pause.as_ref().map(|p| p.reason.clone());
            let mut m = self.mirrored.lock().unwrap();
            m.entry(kind).or_default().look(pause, &row, now, force)
        };
        let written = async {
            if pause_changed {
                let reason = view.pause.as_ref().map(|p| p.reason.clone());
                let at = now.secs();
                self.store
                    .call(move |s| s.set_provider_paused(kind, reason.as_deref(), at))
                    .await?;
            }
            if write_row {
                self.store
                    .call(move |s| s.record_gate(kind, &row, now))
                    .await?;
            }
            Ok::<(), StoreError>(())
        };
        let Err(e) = written.await else {
            return Ok(());
        };
        if status_write_stops_the_lane(&e) {
            return Err(e.into());
        }
        // Forget what was mirrored, so the next look writes it again.
        self.mirrored.lock().unwrap().remove(&kind);
        self.store
            .outage()
            .failed("writing a provider's state for status", Arc::new(e));
        Ok(())
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
        pass: Pass,
        batch: &ClaimedBatch,
        mode: Mode,
        cancel: &CancellationToken,
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
            let at = Sending {
                batch,
                mode,
                cancel,
            };
            self.send(
                provider,
                Some(pass),
                sendable,
                &mut outcomes,
                &mut summary,
                &at,
            )
            .await?;
        }
        Ok((outcomes, summary))
    }

    /// Records a batch's answer: items, audit event, request states, counters. The answer's
    /// time is when it came, however long the disk made it wait.
    async fn record(
        &self,
        kind: ProviderKind,
        batch: ClaimedBatch,
        outcomes: Vec<(i64, ItemOutcome)>,
        summary: Vec<String>,
        mode: Mode,
        cancel: &CancellationToken,
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
        let answered = self
            .write("recording a batch's answer", mode, cancel, move |s| {
                s.finish_batch(bid, now, &outs, &answer, Some(&audit))
            })
            .await?;
        // A late or repeated answer settled nothing: the batch's new claim counts its items.
        if !answered.settled {
            return Ok(());
        }
        for (_, o) in &outcomes {
            match o {
                ItemOutcome::Deleted { .. } => self.metrics.deletion(kind, "deleted"),
                ItemOutcome::Dead { .. } => self.metrics.deletion(kind, "dead"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends `items` of `batch` in one delete call under `pass` (or a new one) and turns the
    /// answer into outcomes; a batch the provider refused is split and its halves sent again
    /// (hence boxed: it recurses).
    fn send<'a>(
        &'a self,
        provider: &'a SharedProvider,
        pass: Option<Pass>,
        items: Vec<ClaimedItem>,
        outcomes: &'a mut Vec<(i64, ItemOutcome)>,
        summary: &'a mut Vec<String>,
        at: &'a Sending<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExecutorError>> + Send + 'a>>
    {
        Box::pin(async move {
            let batch = at.batch;
            let kind = provider.kind();
            let gate = provider.gate();
            let ready = match pass {
                Some(p) => Ok(p),
                None => gate.enter(Operation::Delete).await,
            };
            let pass = match ready {
                Ok(mut p) => p.ready(Operation::Delete).await.map(|()| p),
                Err(e) => Err(e),
            }
            .inspect_err(|e| {
                // Paused while this batch waited: nothing was sent, nothing counted.
                summary.push(e.to_string());
                outcomes.extend(items.iter().map(|i| (i.id, ItemOutcome::Release)));
            });
            let Ok(mut pass) = pass else {
                return Ok(());
            };
            // Checked after the wait for the gate and right before the call.
            let items = self.drop_unsendable(items, summary, at).await?;
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
            let result = provider.delete(&mut pass, &request).await;
            // The slot is free before any lookup or half asks for its own.
            drop(pass);
            self.metrics
                .batch_seconds
                .get_or_create(&crate::metrics::labels(&[("provider", kind.as_str())]))
                .observe(started.elapsed().as_secs_f64());
            let now = self.clock.instant();
            match result {
                Ok(DeleteOutcome::AllDeleted) => {
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
                    summary.push(format!(
                        "partial: {deleted} of {total} deleted; looked up each"
                    ));
                    self.settle_partial(provider, batch, &items, outcomes).await;
                }
                Err(e) => {
                    summary.push(e.to_string());
                    for again in self.on_failure(provider, items, &e, now, outcomes) {
                        self.send(provider, None, again, outcomes, summary, at)
                            .await?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The hold rule at the last moment ([`crate::store::Store::sendable`]): right before the
    /// call (after any wait for the gate, a Retry-After, a long call before it, the other half of
    /// a split batch) the store takes every chat an active hold now covers off the batch and marks
    /// it held, and says which of `items` are still this batch's to send. The others are not
    /// named; their outcome is already recorded (held), or belongs to whoever took them back. A
    /// store that cannot answer sends nothing: the daemon waits for it ([`Executor::write`]).
    async fn drop_unsendable(
        &self,
        items: Vec<ClaimedItem>,
        summary: &mut Vec<String>,
        at: &Sending<'_>,
    ) -> Result<Vec<ClaimedItem>, ExecutorError> {
        let (bid, clock) = (at.batch.batch_id, self.clock.clone());
        let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
        let mut sendable = self
            .write(
                "checking legal holds before a call",
                at.mode,
                at.cancel,
                move |s| s.sendable(bid, &ids, clock.now()),
            )
            .await?;
        sendable.sort_unstable();
        if sendable.len() == items.len() {
            return Ok(items);
        }
        summary.push(format!(
            "{} not sent: a legal hold now covers them, or their claim was taken back",
            items.len() - sendable.len()
        ));
        Ok(items
            .into_iter()
            .filter(|i| sendable.binary_search(&i.id).is_ok())
            .collect())
    }

    /// After a partial batch, looks each chat up, as many at once as the gate allows: absent is
    /// deleted, present goes back for another try.
    async fn settle_partial(
        &self,
        provider: &SharedProvider,
        batch: &ClaimedBatch,
        items: &[ClaimedItem],
        outcomes: &mut Vec<(i64, ItemOutcome)>,
    ) {
        // A window of lookups in flight (the gate bounds them again by its allowance). Built
        // without stream combinators: their closures trip rustc's Send inference in this boxed,
        // recursive future.
        let at_once = provider.gate().max_concurrency().max(1);
        let mut rest = items.iter();
        let mut running = futures_util::stream::FuturesUnordered::new();
        for item in rest.by_ref().take(at_once) {
            running.push(self.settle_one(provider, batch, item));
        }
        let mut settled = Vec::with_capacity(items.len());
        while let Some(one) = running.next().await {
            settled.push(one);
            if let Some(item) = rest.next() {
                running.push(self.settle_one(provider, batch, item));
            }
        }
        // The ones to try again share one wait, so they are sent together again.
        let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
        let step = attempts.min(provider.gate().failures_in_row());
        let wait = self.retry.delay(step);
        let now = self.clock.instant();
        outcomes.extend(retried_by_own_attempts(settled, items, |item, error| {
            self.outcome_after(item, now, wait, error)
        }));
    }

    /// One lookup after a partial batch, tried up to [`LOOKUP_TRIES`] times (short waits, the gate
    /// holding back throttled ones): a lookup that fails once is not a failed deletion.
    async fn settle_one(
        &self,
        provider: &SharedProvider,
        batch: &ClaimedBatch,
        item: &ClaimedItem,
    ) -> (i64, ItemOutcome) {
        (item.id, self.lookup_outcome(provider, batch, item).await)
    }

    async fn lookup_outcome(
        &self,
        provider: &SharedProvider,
        batch: &ClaimedBatch,
        item: &ClaimedItem,
    ) -> ItemOutcome {
        let kind = provider.kind();
        let mut tries = 0;
        let failure = loop {
            self.metrics.lookup(kind);
            let e = match provider
                .lookup(&batch.scope, batch.repo_id.as_deref(), &item.session_id)
                .await
            {
                Ok(Presence::Absent) => {
                    return ItemOutcome::Deleted {
                        already_absent: false,
                    };
                }
                Ok(p @ (Presence::Present | Presence::Misfiled { .. })) => {
                    let now = self.clock.instant();
                    let why = match p.note(batch.repo_id.as_deref()) {
                        Some(note) => format!("still present after a partial batch delete: {note}"),
                        None => "still present after a partial batch delete".to_string(),
                    };
                    return self.outcome_after(item, now, self.retry.delay(item.attempts), &why);
                }
                Err(e) => e,
            };
            tries += 1;
            match after_failed_lookup(&e.action, tries) {
                LookupNext::Release => return ItemOutcome::Release,
                LookupNext::Again => {}
                LookupNext::AgainAfterBackoff => {
                    let step = (tries - 1).min(provider.gate().failures_in_row().saturating_sub(1));
                    let wait = self.retry.delay(step).min(LOOKUP_MAX_WAIT);
                    self.clock.sleep(wait).await;
                }
                LookupNext::GiveUp => break e,
            }
        };
        // Still unknown after every try: this round of delete and lookups did not confirm the
        // chat, which is one failed attempt (so a lookup that can never answer ends in `dead`
        // after `max_attempts`, instead of a delete-and-look loop until `give_up_after`).
        let now = self.clock.instant();
        self.outcome_after(
            item,
            now,
            self.retry.delay(item.attempts),
            &format!("not known whether deleted: the lookup after a partial batch failed {tries} time(s): {failure}"),
        )
    }

    /// What a failed delete call means for its items (see [`Action`]); the gate has already
    /// taken the answer in. Returns the parts to send again: the two halves of a refused batch,
    /// or the rest after the bad IDs named.
    fn on_failure(
        &self,
        provider: &SharedProvider,
        items: Vec<ClaimedItem>,
        e: &ProviderError,
        now: Millis,
        outcomes: &mut Vec<(i64, ItemOutcome)>,
    ) -> Vec<Vec<ClaimedItem>> {
        let kind = provider.kind();
        let refused = || ItemOutcome::Dead {
            error: format!("refused by the provider: {e}"),
        };
        match &e.action {
            Action::Retry => {
                // One wait for the whole batch, so its items are claimed, and sent, together
                // again. It grows with the provider's failures in a row, not only the items'
                // attempts: a provider that answers most calls gets its odd failure back soon.
                let attempts = items.iter().map(|i| i.attempts).max().unwrap_or(0);
                let step = attempts.min(provider.gate().failures_in_row().saturating_sub(1));
                let wait = self.retry.delay(step);
                outcomes.extend(items.iter().map(|i| {
                    let o = self.outcome_after(i, now, wait, &e.to_string());
                    if matches!(o, ItemOutcome::Retry { .. }) {
                        self.metrics.retry(kind, e.cause_label());
                    }
                    (i.id, o)
                }));
            }
            Action::RetryAfter(_) | Action::Throttled => {
                let at = provider.gate().resume_at().max(now);
                outcomes.extend(items.iter().map(|i| {
                    let o = self.defer_outcome(i, now, at, &e.to_string());
                    if matches!(o, ItemOutcome::Defer { .. }) {
                        self.metrics.retry(kind, e.cause_label());
                    }
                    (i.id, o)
                }));
            }
            Action::Rejected if items.len() == 1 => outcomes.push((items[0].id, refused())),
            Action::Rejected => {
                self.metrics.split(kind);
                let mut left = items;
                let right = left.split_off(left.len() / 2);
                return vec![left, right];
            }
            // The gate paused itself; the store hears of it when the batch is recorded.
            Action::Pause(_) => {
                outcomes.extend(items.iter().map(|i| (i.id, ItemOutcome::Release)));
            }
        }
        Vec::new()
    }

    /// Back to pending at `at` without counting an attempt; dead once `give_up_after` has passed.
    fn defer_outcome(
        &self,
        item: &ClaimedItem,
        now: Millis,
        at: Millis,
        error: &str,
    ) -> ItemOutcome {
        match self.retry.defer(item.first_attempt, now, at) {
            Next::At(at) => ItemOutcome::Defer {
                at,
                error: error.to_string(),
            },
            // A deferral counts no attempt: only the give-up window can end it.
            Next::GiveUp => gave_up(item.attempts, "retry.give_up_after has passed", error),
        }
    }

    /// Another try after `wait` (counting an attempt), or dead when attempts or time are used up.
    fn outcome_after(
        &self,
        item: &ClaimedItem,
        now: Millis,
        wait: Duration,
        error: &str,
    ) -> ItemOutcome {
        match self
            .retry
            .after(item.attempts, item.first_attempt, now, wait)
        {
            Next::At(at) => ItemOutcome::Retry {
                at,
                error: error.to_string(),
            },
            Next::GiveUp => gave_up(item.attempts + 1, "attempts or time used up", error),
        }
    }
}

/// Whether a failed write of a provider's state for `status` stops the lane. Only `status` reads
/// that row, and the gate itself is in memory, so a transient store failure (busy, a full disk, a
/// read-only file) is an outage the lane goes on through; anything else stops it.
fn status_write_stops_the_lane(e: &StoreError) -> bool {
    !e.is_transient()
}

/// The lookups' outcomes after a partial batch, where each failed lookup (`Retry`) is decided
/// again by `again` from its *own* item: its attempts and first try say whether it may have
/// another or is given up on. An id that is not among `items` keeps the outcome it has.
fn retried_by_own_attempts(
    settled: Vec<(i64, ItemOutcome)>,
    items: &[ClaimedItem],
    mut again: impl FnMut(&ClaimedItem, &str) -> ItemOutcome,
) -> impl Iterator<Item = (i64, ItemOutcome)> {
    settled.into_iter().map(move |(id, o)| {
        let o = match (o, items.iter().find(|i| i.id == id)) {
            (ItemOutcome::Retry { error, .. }, Some(item)) => again(item, &error),
            (o, _) => o,
        };
        (id, o)
    })
}

/// An item given up on, keeping its last error and saying why.
fn gave_up(attempts: u32, why: &str, error: &str) -> ItemOutcome {
    ItemOutcome::Dead {
        error: format!("gave up after {attempts} attempt(s) ({why}): {error}"),
    }
}

/// The audit event of one batch: what was sent and what each ID came to.
fn batch_audit(
    batch: &ClaimedBatch,
    outcomes: &[(i64, ItemOutcome)],
    summary: &[String],
) -> crate::audit::BatchAnswered {
    let by_id: std::collections::HashMap<i64, &str> = batch
        .items
        .iter()
        .map(|i| (i.id, i.session_id.as_str()))
        .collect();
    let sid = |id: i64| by_id.get(&id).copied().unwrap_or("").to_string();
    let mut answered = crate::audit::BatchAnswered {
        batch_id: batch.batch_id,
        provider: batch.provider.to_string(),
        scope: batch.scope.clone(),
        repo_id: batch.repo_id.clone(),
        sent: batch.items.len() as u64,
        deleted: Vec::new(),
        retry: Vec::new(),
        dead: Vec::new(),
        released: 0,
        answer: summary.to_vec(),
    };
    for (id, o) in outcomes {
        match o {
            ItemOutcome::Deleted { .. } => answered.deleted.push(sid(*id)),
            ItemOutcome::Retry { .. } | ItemOutcome::Defer { .. } => answered.retry.push(sid(*id)),
            ItemOutcome::Dead { error } => answered.dead.push(crate::audit::DeadChat {
                session_id: sid(*id),
                error: error.clone(),
            }),
            ItemOutcome::Release => answered.released += 1,
        }
    }
    answered
}

/// The store's copy of a gate's state.
fn gate_row(v: &GateView) -> GateRow {
    GateRow {
        provider: v.provider.to_string(),
        state: v.state.as_str().to_string(),
        rate_per_s: v.rate,
        rate_learned: v.learned,
        concurrency: v.allowed as u32,
        max_concurrency: v.max_concurrency as u32,
        resume_at_ms: v.resume_at.map(|m| m.0),
        next_probe_ms: v.pause.as_ref().map(|p| p.next_probe.0),
        throttles: v.throttles,
        updated_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_stops_the_lane_only_when_the_store_failure_is_not_transient() {
        use rusqlite::ffi;
        let sqlite = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None).into();
        assert!(!status_write_stops_the_lane(&StoreError::Busy(sqlite(
            ffi::SQLITE_BUSY
        ))));
        assert!(!status_write_stops_the_lane(&StoreError::Unwritable(
            sqlite(ffi::SQLITE_FULL)
        )));
        assert!(status_write_stops_the_lane(&StoreError::Invalid(
            "unknown item state".into()
        )));
        assert!(status_write_stops_the_lane(&StoreError::NotFound(
            "no work item 7".into()
        )));
    }

    #[test]
    fn after_a_partial_batch_each_failed_lookup_is_judged_by_its_own_attempts() {
        let item = |id, attempts| ClaimedItem {
            id,
            session_id: format!("s{id}"),
            attempts,
            first_attempt: Millis(0),
        };
        // The second and fourth items are one failure from giving up; the others are fresh.
        let items = [item(1, 0), item(2, 24), item(3, 0), item(4, 24)];
        let retry = |error: &str| ItemOutcome::Retry {
            at: Millis(5),
            error: error.into(),
        };
        let settled = vec![
            (4, retry("lookup failed")),
            (1, retry("lookup failed")),
            (
                3,
                ItemOutcome::Deleted {
                    already_absent: false,
                },
            ),
            (2, retry("lookup failed")),
            // Not in this batch (cannot happen, but must not borrow another item's count).
            (9, retry("lookup failed")),
        ];
        let mut seen = Vec::new();
        let out: Vec<_> = retried_by_own_attempts(settled, &items, |it, error| {
            seen.push(it.id);
            if it.attempts + 1 >= 25 {
                gave_up(it.attempts + 1, "attempts used up", error)
            } else {
                ItemOutcome::Retry {
                    at: Millis(i64::from(it.attempts) + 100),
                    error: error.into(),
                }
            }
        })
        .collect();
        let dead = |o: &ItemOutcome| matches!(o, ItemOutcome::Dead { error } if error.starts_with("gave up after 25 attempt(s)"));
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].0, 4);
        assert!(dead(&out[0].1), "{:?}", out[0]);
        assert_eq!(
            out[1],
            (
                1,
                ItemOutcome::Retry {
                    at: Millis(100),
                    error: "lookup failed".into()
                }
            )
        );
        assert_eq!(
            out[2],
            (
                3,
                ItemOutcome::Deleted {
                    already_absent: false
                }
            )
        );
        assert_eq!(out[3].0, 2);
        assert!(dead(&out[3].1), "{:?}", out[3]);
        assert_eq!(
            out[4],
            (9, retry("lookup failed")),
            "an unknown id keeps its outcome"
        );
        assert_eq!(
            seen,
            [4, 1, 2],
            "only failed lookups of this batch are judged again"
        );
    }

    #[test]
    fn a_lane_is_paused_if_any_worker_paused_else_cancelled_if_any_was() {
        use LaneEnd::*;
        let p = || Paused("401".into());
        assert_eq!(lane_end([]), Drained);
        assert_eq!(lane_end([Drained, Drained]), Drained);
        assert_eq!(lane_end([Drained, Cancelled, Drained]), Cancelled);
        assert_eq!(
            lane_end([p(), Cancelled]),
            p(),
            "a later cancel keeps the pause"
        );
        assert_eq!(lane_end([Cancelled, p(), Drained]), p());
    }

    #[test]
    fn a_failed_lookup_is_tried_three_times_unless_the_provider_paused_or_refused() {
        use LookupNext::*;
        let throttled = [
            Action::Throttled,
            Action::RetryAfter(Duration::from_secs(2)),
        ];
        for tries in 1..LOOKUP_TRIES {
            assert_eq!(
                after_failed_lookup(&Action::Retry, tries),
                AgainAfterBackoff
            );
            for a in &throttled {
                assert_eq!(after_failed_lookup(a, tries), Again, "{a:?} at {tries}");
            }
        }
        assert_eq!(LOOKUP_TRIES, 3);
        assert_eq!(after_failed_lookup(&Action::Retry, 3), GiveUp);
        for a in &throttled {
            assert_eq!(after_failed_lookup(a, 3), GiveUp, "{a:?}");
        }
        assert_eq!(after_failed_lookup(&Action::Rejected, 1), GiveUp);
        for tries in [1, 3, 9] {
            assert_eq!(
                after_failed_lookup(&Action::Pause("403".into()), tries),
                Release
            );
        }
    }

    fn row(state: &str, rate: f64) -> GateRow {
        GateRow {
            provider: "convai".into(),
            state: state.into(),
            rate_per_s: Some(rate),
            rate_learned: false,
            concurrency: 2,
            max_concurrency: 2,
            resume_at_ms: None,
            next_probe_ms: None,
            throttles: 0,
            updated_ms: None,
        }
    }

    #[test]
    fn the_gate_is_written_for_status_at_once_on_a_new_state_and_at_most_each_second_otherwise() {
        let mut m = Mirrored::default();
        let t0 = Millis(1_000_000);
        let at = |ms: i64| Millis(t0.0 + ms);
        assert_eq!(
            m.look(None, &row("running", 10.0), t0, false),
            (false, true),
            "first look"
        );
        assert_eq!(
            m.look(None, &row("running", 10.0), at(10), false),
            (false, false)
        );
        // A new rate waits for the second to pass; the same row is never rewritten.
        assert_eq!(
            m.look(None, &row("running", 12.0), at(500), false),
            (false, false)
        );
        assert_eq!(
            m.look(None, &row("running", 12.0), at(1_000), false),
            (false, true)
        );
        // A new state is written at once, and `force` writes whatever it is.
        assert_eq!(
            m.look(None, &row("throttled", 12.0), at(1_100), false),
            (false, true)
        );
        assert_eq!(
            m.look(None, &row("throttled", 12.0), at(1_200), true),
            (false, true)
        );
        assert_eq!(
            m.look(None, &row("throttled", 12.0), at(9_000), false),
            (false, false)
        );
        // A pause is news once, and so is its end.
        let paused = Some("401 from the provider".to_string());
        assert_eq!(
            m.look(paused.clone(), &row("paused", 0.0), at(9_030), false),
            (true, true)
        );
        assert_eq!(
            m.look(paused, &row("paused", 0.0), at(9_040), false),
            (false, false)
        );
        assert_eq!(
            m.look(None, &row("running", 1.0), at(9_050), false),
            (true, true)
        );
    }

    #[test]
    fn a_batch_is_held_exactly_while_its_holding_lives() {
        let set: Arc<Mutex<HashSet<i64>>> = Default::default();
        set.lock().unwrap().extend([7, 8]);
        let seven = Holding {
            set: set.clone(),
            batch_id: 7,
        };
        let eight = Holding {
            set: set.clone(),
            batch_id: 8,
        };
        drop(seven);
        // A daemon claims a batch every few milliseconds for months: a holding that outlived its
        // batch would grow this set without end, and spare that batch from the reaper.
        assert_eq!(*set.lock().unwrap(), HashSet::from([8]));
        drop(eight);
        assert!(set.lock().unwrap().is_empty());
    }
}
