//! One provider's politeness gate: every call to that provider (delete, lookup, listing,
//! discovery, an IAM token) asks it for permission first and tells it the answer afterwards.
//!
//! It owns, on the injected clock:
//! - **Retry-After.** After a throttle that names a wait, no call of any kind starts before it has
//!   passed. A wait longer than `retry.max_retry_after` becomes a pause ([`ProviderError::capped`]).
//! - **Pause and probe.** An answer that says an operator must act (credentials, permission, API
//!   not enabled) pauses the provider: calls are refused at once, without touching the network,
//!   except one probe when it is due (30 s, doubling to 15 min). A success of a call that started
//!   after the pause lifts it; a failed probe doubles the delay.
//! - **Concurrency allowance.** At most `allowed` calls in flight (a [`Pass`] holds a slot);
//!   halved by a throttle, one more per success, up to `concurrency`.
//! - **Rate allowance.** Calls start paced at the learned rate: each takes the next free start time
//!   (`1 / rate` apart), so there is no burst. With `requests_per_second` set, the rate starts there
//!   and never goes above it; without it there is no rate until the provider first throttles.
//!
//! Learning the rate (a provider that throttles without publishing its limit):
//! - A throttle after a success opens an *episode*: the rate is cut to 90% of the lower of the
//!   current rate and the calls the provider *admitted* in the last second (a measurement, not a
//!   guess; with fewer than two admitted and no rate yet there is nothing to measure, and no rate
//!   is invented: the wait alone answers it).
//!   Only a call that started after the cut counts, so one burst of answers to calls already on
//!   the wire is one cut, not four.
//! - Further throttles in the same episode (no success since) do not cut again: the new rate has
//!   not been tried yet, the provider's window is still full. They double the wait instead.
//! - While calls succeed *and the rate is what held them back* (a provider that is idle or slowed
//!   by concurrency teaches nothing) the rate grows: exponentially (+0.4/s per success, ×1.5 a
//!   second) back to 97% of the rate that was last throttled, then linearly and patiently up to
//!   it, taking [`PROBE_PATIENCE`] throttle-costs, and exponentially again past it (a rate that
//!   held there is no longer the limit). A throttle costs its wait plus the wasted call: a told
//!   Retry-After of 1 s makes the gate patient (20 s near the old rate), a short learned wait
//!   makes it brisk (a few seconds at 10/s). Between throttles the rate spends most of its time
//!   just under the limit, and throttles stay a few percent of calls.
//! - The wait after a throttle that names none is learned too: one call interval at the new rate,
//!   doubled for every further throttle in a row, at most [`MAX_QUIET`] (the 5 s a fixed default
//!   used to wait every time).
//! - Admitted calls are counted by when they *started*: the provider's window held the calls that
//!   reached it in the second before the one it refused. Calls still on the wire are not known
//!   yet, so the measurement can fall short by the calls in flight; growth makes up for it.
//!
//! **Background calls** (read-after-delete verification, [`crate::verify`]) enter through
//! [`Gate::enter_background`] with a share: while any foreground call (a delete, a listing, a
//! lookup) wants the provider, a background call starts only if background calls would then be at
//! most that share of the calls started in the last [`SHARE_WINDOW`]; when nothing else wants the
//! provider it goes at the gate's own pace. They pass the same rate, concurrency, throttle and
//! pause rules as every other call: reading back is never impolite, and never slows deletion by
//! more than its share.
//!
//! Rules: the gate decides when calls may start; it never decides what an answer means (each
//! provider's classification does, into an [`Action`]). It keeps no secrets.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Action, Operation, ProviderError, ProviderLimits};
use crate::clock::{Millis, SharedClock};
use crate::model::ProviderKind;

pub const FIRST_PROBE: Duration = Duration::from_secs(30);
pub const MAX_PROBE: Duration = Duration::from_secs(15 * 60);
/// The longest wait after a throttle that named none.
pub const MAX_QUIET: Duration = Duration::from_secs(5);
/// The slowest learned rate: one call every ten seconds.
pub const MIN_RATE: f64 = 0.1;
/// How many throttle-costs of time should pass between two throttles once the rate is found.
pub const PROBE_PATIENCE: f64 = 20.0;
/// The span over which admitted calls are counted to measure a rate.
const WINDOW: Duration = Duration::from_secs(1);
/// The cut that opens a throttling episode.
const CUT: f64 = 0.9;
/// Below this share of the last throttled rate, the rate grows quickly.
const NEAR: f64 = 0.97;
/// Quick growth: calls/s added per success (at r calls a second: e^0.4 ≈ ×1.5 a second).
const QUICK: f64 = 0.4;
/// The span over which background calls' share of started calls is counted.
pub const SHARE_WINDOW: Duration = Duration::from_secs(10);
/// How often a background call that yielded looks again without being woken.
const SHARE_RECHECK: Duration = Duration::from_millis(500);

/// Why a provider is paused and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    pub since: Millis,
    pub next_probe: Millis,
    pub probe_delay: Duration,
}

/// What the gate is doing, for `status`, metrics and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    Running,
    /// Waiting out a throttle (until `resume_at`).
    Throttled,
    Paused,
}

impl GateState {
    pub const ALL: [GateState; 3] = [Self::Running, Self::Throttled, Self::Paused];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Throttled => "throttled",
            Self::Paused => "paused",
        }
    }
}

/// A copy of the gate's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct GateView {
    pub provider: ProviderKind,
    pub state: GateState,
    /// Calls per second it paces at; `None`: no limit (none configured, none learned yet).
    pub rate: Option<f64>,
    /// Whether `rate` was learned from throttles (false: configured or none).
    pub learned: bool,
    pub allowed: usize,
    pub max_concurrency: usize,
    pub inflight: usize,
    /// While throttled: when calls may start again.
    pub resume_at: Option<Millis>,
    pub pause: Option<Pause>,
    pub throttles: u64,
}

struct State {
    allowed: usize,
    inflight: usize,
    rate: Option<f64>,
    learned: bool,
    /// The rate at the last informed throttle: where the patient approach starts.
    top: Option<f64>,
    /// What the last throttle cost (its wait): how patient the slow approach is.
    throttle_cost: Duration,
    /// The earliest start of the next call, in fractional ms on the injected clock.
    next_start: f64,
    resume_at: Millis,
    pause: Option<Pause>,
    probe_out: bool,
    /// Bumped by every throttle and pause: a waiting call re-takes its start time.
    epoch: u64,
    last_cut: Millis,
    /// Throttles in a row without a success between them.
    streak: u32,
    /// Transient failures (5xx, transport, unclear answers) in a row, over every kind of call.
    failures: u32,
    /// Start times of admitted calls, the last [`WINDOW`] and a little more.
    admitted: VecDeque<Millis>,
    throttles: u64,
    /// Foreground callers waiting for a pass or holding one: background calls yield to them.
    demand: usize,
    /// Start times of calls over the last [`SHARE_WINDOW`], and whether each was background.
    starts: VecDeque<(Millis, bool)>,
    /// Background callers within their share, waiting for a slot: the next free slots are
    /// theirs (a foreground worker that re-enters at once would otherwise always win them).
    bg_ready: usize,
}

pub struct Gate {
    kind: ProviderKind,
    clock: SharedClock,
    limits: ProviderLimits,
    max_retry_after: Duration,
    /// Instances sharing the provider's configured limits (PostgreSQL: the live instances on
    /// the queue; 1 otherwise). This gate keeps to its share of them.
    share: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    /// Notified when a slot frees, a pause lifts or starts: waiters look again.
    changed: Notify,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("provider", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Permission for calls under one concurrency slot, held until dropped.
pub struct Pass {
    gate: Arc<Gate>,
    probe: bool,
    /// A start time already taken by [`Pass::ready`].
    turn: Option<Turn>,
    /// `None` for a background pass; a foreground pass keeps its demand counted until dropped.
    demand: Option<Demand>,
}

/// One foreground caller's claim on the provider, counted from the moment it asks for a pass
/// (dropped with the pass, or when the wait is abandoned or refused).
struct Demand(Arc<Gate>);

impl Demand {
    fn new(gate: &Arc<Gate>) -> Self {
        gate.state.lock().unwrap().demand += 1;
        Self(gate.clone())
    }
}

/// A background caller within its share, waiting for a slot (see `State::bg_ready`).
struct Ready(Arc<Gate>);

impl Ready {
    fn new(gate: &Arc<Gate>) -> Self {
        gate.state.lock().unwrap().bg_ready += 1;
        Self(gate.clone())
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.bg_ready = s.bg_ready.saturating_sub(1);
        drop(s);
        self.0.changed.notify_waiters();
    }
}

impl Drop for Demand {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.demand = s.demand.saturating_sub(1);
        drop(s);
        self.0.changed.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy)]
struct Turn {
    started: Millis,
    /// Whether the rate held this call back (only then does success teach a higher rate).
    paced: bool,
}

impl Gate {
    /// `max_retry_after` is `retry.max_retry_after`: longer Retry-After waits pause instead.
    pub fn new(
        kind: ProviderKind,
        limits: &ProviderLimits,
        max_retry_after: Duration,
        clock: SharedClock,
    ) -> Arc<Self> {
        let rate = limits.requests_per_second;
        Arc::new(Self {
            kind,
            clock,
            limits: limits.clone(),
            max_retry_after,
            share: std::sync::atomic::AtomicUsize::new(1),
            state: Mutex::new(State {
                allowed: limits.concurrency,
                inflight: 0,
                rate,
                learned: false,
                top: None,
                throttle_cost: Duration::ZERO,
                next_start: 0.0,
                resume_at: Millis(0),
                pause: None,
                probe_out: false,
                epoch: 0,
                last_cut: Millis(i64::MIN),
                streak: 0,
                failures: 0,
                admitted: VecDeque::new(),
                throttles: 0,
                demand: 0,
                starts: VecDeque::new(),
                bg_ready: 0,
            }),
            changed: Notify::new(),
        })
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }
    /// The limits this gate (and its provider's client) were built with.
    pub fn limits(&self) -> &ProviderLimits {
        &self.limits
    }
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }
    /// The configured concurrency: the most calls ever in flight.
    pub fn max_concurrency(&self) -> usize {
        self.limits.concurrency
    }

    /// This gate's share of the configured concurrency: at least one call, so `n` instances
    /// over a limit below `n` go over it by what one call each needs.
    fn concurrency_cap(&self) -> usize {
        let share = self.share.load(std::sync::atomic::Ordering::Relaxed).max(1);
        (self.limits.concurrency / share).max(1)
    }

    /// This gate's share of the configured `requests_per_second`.
    fn rate_cap(&self) -> Option<f64> {
        let share = self.share.load(std::sync::atomic::Ordering::Relaxed).max(1);
        self.limits.requests_per_second.map(|r| r / share as f64)
    }

    /// Tells the gate how many instances share the provider's configured limits (at least 1):
    /// its concurrency and rate allowances shrink to its share at once and grow back to it as
    /// calls succeed. A rate learned from throttling needs no share: each instance's throttles
    /// teach it its own.
    pub fn set_instances(&self, n: usize) {
        let n = n.max(1);
        if self.share.swap(n, std::sync::atomic::Ordering::Relaxed) == n {
            return;
        }
        let (cap, rate_cap) = (self.concurrency_cap(), self.rate_cap());
        let mut s = self.state.lock().unwrap();
        s.allowed = s.allowed.min(cap);
        if let Some(limit) = rate_cap {
            // Fewer instances: the configured rate's larger share is there at once.
            s.rate = Some(match s.rate {
                Some(r) if s.learned => r.min(limit),
                _ => limit,
            });
        }
        drop(s);
        tracing::info!(provider = %self.kind, instances = n, concurrency = cap, rate = ?rate_cap, "sharing the provider's limits with the other instances");
        self.changed.notify_waiters();
    }

    /// Waits for a concurrency slot. Refused at once (an error whose action is
    /// [`Action::Pause`]) while the provider is paused, unless this call is the due probe.
    pub async fn enter(self: &Arc<Self>, op: Operation) -> Result<Pass, ProviderError> {
        let demand = Demand::new(self);
        self.enter_as(op, Some(demand)).await
    }

    /// A pass for a background call (verification) that takes at most `share` of the calls
    /// started while foreground calls want the provider (see the module's docs). Refused like
    /// [`Gate::enter`] while paused; a background call is never the probe of a paused provider.
    pub async fn enter_background(
        self: &Arc<Self>,
        op: Operation,
        share: f64,
    ) -> Result<Pass, ProviderError> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.state.lock().unwrap();
                if let Some(p) = &s.pause {
                    return Err(self.refused(op, p));
                }
                let now = self.clock.instant();
                prune_starts(&mut s.starts, now);
                if s.demand == 0 {
                    None
                } else {
                    let total = s.starts.len() as f64;
                    let background = s.starts.iter().filter(|(_, b)| *b).count() as f64;
                    if background + 1.0 <= share * (total + 1.0) {
                        None
                    } else {
                        Some(())
                    }
                }
            };
            match wait {
                None => {
                    let _ready = Ready::new(self);
                    return self.enter_as(op, None).await;
                }
                // Foreground calls ending (or their demand going) wake this. The recheck is on
                // the tokio timer, not the injected clock: waiting here must not move a test's
                // manual time.
                Some(()) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(SHARE_RECHECK) => {}
                    }
                }
            }
        }
    }

    async fn enter_as(
        self: &Arc<Self>,
        op: Operation,
        demand: Option<Demand>,
    ) -> Result<Pass, ProviderError> {
        let background = demand.is_none();
        let mut demand = demand;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap();
                let now = self.clock.instant();
                let mut probe = false;
                if let Some(p) = &s.pause {
                    if background || now < p.next_probe || s.probe_out {
                        return Err(self.refused(op, p));
                    }
                    probe = true;
                }
                // Slots promised to background callers within their share are not a
                // foreground call's to take.
                let reserved = if background { 0 } else { s.bg_ready };
                if probe || s.inflight + reserved < s.allowed {
                    s.inflight += 1;
                    s.probe_out |= probe;
                    return Ok(Pass {
                        gate: self.clone(),
                        probe,
                        turn: None,
                        demand: demand.take(),
                    });
                }
            }
            changed.await;
        }
    }

    /// Runs one call: a slot, a start time, the call, and its answer told to the gate.
    pub async fn call<T>(
        self: &Arc<Self>,
        op: Operation,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        self.enter(op).await?.call(op, call).await
    }

    /// The error a refused call gets while paused: the pause's reason, and when it is tried again.
    fn refused(&self, op: Operation, p: &Pause) -> ProviderError {
        ProviderError::new(
            self.kind,
            op,
            Action::Pause(p.reason.clone()),
            format!(
                "not sent: {} is paused (next probe in {})",
                self.kind,
                humantime::format_duration(Duration::from_secs(
                    p.next_probe.since(self.clock.instant()).as_secs()
                ))
            ),
        )
    }

    /// Lifts a pause without a probe. Only for `forgetd doctor`, whose checks are independent
    /// questions asked once each (a 404 for one application says nothing of the next); never the
    /// executor's. A throttle's wait stays: doctor stops asking a provider that throttles.
    pub fn lift_pause(&self) {
        let mut s = self.state.lock().unwrap();
        s.pause = None;
        s.probe_out = false;
        s.failures = 0;
        drop(s);
        self.changed.notify_waiters();
    }

    /// The pause, if the provider is paused.
    pub fn paused(&self) -> Option<Pause> {
        self.state.lock().unwrap().pause.clone()
    }

    /// Waits until a paused provider's probe is due, or it is no longer paused.
    pub async fn probe_due(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let s = self.state.lock().unwrap();
                match &s.pause {
                    Some(p) if !s.probe_out => p.next_probe.since(self.clock.instant()),
                    Some(_) => Duration::from_secs(1),
                    None => return,
                }
            };
            if wait.is_zero() {
                return;
            }
            tokio::select! {
                _ = changed => {}
                _ = self.clock.sleep(wait) => {}
            }
        }
    }

    /// Transient failures in a row, over every kind of call since the last admitted answer: how
    /// unwell the provider is, as opposed to how unlucky one batch was. The executor's backoff
    /// grows with it (a provider that answers most calls is not hammered by a slow tail, one that
    /// answers none is left alone longer and longer).
    pub fn failures_in_row(&self) -> u32 {
        self.state.lock().unwrap().failures
    }

    /// When calls may start again after a throttle (now or earlier: not throttled).
    pub fn resume_at(&self) -> Millis {
        self.state.lock().unwrap().resume_at
    }

    pub fn view(&self) -> GateView {
        let s = self.state.lock().unwrap();
        let now = self.clock.instant();
        let state = if s.pause.is_some() {
            GateState::Paused
        } else if now < s.resume_at {
            GateState::Throttled
        } else {
            GateState::Running
        };
        GateView {
            provider: self.kind,
            state,
            rate: s.rate,
            learned: s.learned,
            allowed: s.allowed,
            max_concurrency: self.concurrency_cap(),
            inflight: s.inflight,
            resume_at: (now < s.resume_at).then_some(s.resume_at),
            pause: s.pause.clone(),
            throttles: s.throttles,
        }
    }

    /// Takes the next start time and waits for it. A throttle or pause while waiting makes the
    /// call take a new one (its old time may be too early now).
    async fn turn(&self, op: Operation, probe: bool) -> Result<Turn, ProviderError> {
        loop {
            let (start, epoch, paced) = {
                let mut s = self.state.lock().unwrap();
                if let Some(p) = &s.pause
                    && !probe
                {
                    return Err(self.refused(op, p));
                }
                let now = self.clock.instant().0 as f64;
                let start = now.max(s.resume_at.0 as f64).max(s.next_start);
                let paced = s.rate.is_some() && s.next_start > now.max(s.resume_at.0 as f64);
                if let Some(r) = s.rate {
                    s.next_start = start + 1000.0 / r;
                }
                (start, s.epoch, paced)
            };
            let now = self.clock.instant();
            let wait = (start - now.0 as f64).ceil();
            if wait > 0.0 {
                self.clock.sleep(Duration::from_millis(wait as u64)).await;
                if self.state.lock().unwrap().epoch != epoch {
                    continue;
                }
            }
            return Ok(Turn {
                started: self.clock.instant(),
                paced,
            });
        }
    }

    /// Counts a call's start for the background share.
    fn note_start(&self, at: Millis, background: bool) {
        let mut s = self.state.lock().unwrap();
        prune_starts(&mut s.starts, self.clock.instant());
        s.starts.push_back((at, background));
    }

    /// Tells the gate how a call ended.
    fn observe(&self, turn: Turn, probe: bool, answer: Result<(), &ProviderError>) {
        let now = self.clock.instant();
        let mut s = self.state.lock().unwrap();
        let action = answer.err().map(|e| &e.action);
        match action {
            None | Some(Action::Rejected) => {
                // Admitted: the provider answered the call itself.
                s.streak = 0;
                s.failures = 0;
                // Kept in start order (answers may come back out of order).
                let at = s.admitted.partition_point(|t| *t <= turn.started);
                s.admitted.insert(at, turn.started);
                if answer.is_ok()
                    && let Some(p) = &s.pause
                    && turn.started >= p.since
                {
                    tracing::info!(provider = %self.kind, "provider answered again; resumed");
                    s.pause = None;
                    s.epoch += 1;
                    self.changed.notify_waiters();
                }
                if s.allowed < self.concurrency_cap() {
                    s.allowed += 1;
                    self.changed.notify_waiters();
                }
                if turn.paced {
                    self.grow(&mut s);
                }
            }
            Some(Action::Retry) => s.failures = s.failures.saturating_add(1),
            Some(Action::RetryAfter(wait)) => self.throttled(&mut s, turn, now, Some(*wait)),
            Some(Action::Throttled) => self.throttled(&mut s, turn, now, None),
            Some(Action::Pause(reason)) => {
                let delay = match &s.pause {
                    // A call already on the wire when the provider paused: the pause stands.
                    Some(old) if now < old.next_probe && !probe => None,
                    Some(old) => Some((old.probe_delay * 2).min(MAX_PROBE)),
                    None => Some(FIRST_PROBE),
                };
                if let Some(delay) = delay {
                    let since = s.pause.as_ref().map_or(now, |p| p.since);
                    tracing::error!(provider = %self.kind, reason = %reason, probe_in_s = delay.as_secs(), "provider paused");
                    s.pause = Some(Pause {
                        reason: reason.clone(),
                        since,
                        next_probe: now.after(delay),
                        probe_delay: delay,
                    });
                    s.epoch += 1;
                    self.changed.notify_waiters();
                }
            }
        }
        // Two windows back: a throttled call's window ends at its start, not at its answer.
        let horizon = now.0 - 2 * WINDOW.as_millis() as i64;
        while s.admitted.front().is_some_and(|t| t.0 <= horizon) {
            s.admitted.pop_front();
        }
    }

    /// Additive increase, one success's share of it: quick below the last throttled rate, then
    /// patient.
    fn grow(&self, s: &mut State) {
        let Some(r) = s.rate else { return };
        let ceiling = self.rate_cap().unwrap_or(f64::INFINITY);
        let step = match s.top {
            Some(top) if r >= top => {
                // Past the last throttled rate without a throttle: it is no longer the limit.
                s.top = None;
                QUICK
            }
            Some(top) if r >= NEAR * top => {
                let cost = s.throttle_cost.as_secs_f64().max(0.01);
                // calls/s per second, shared out over the r calls of a second
                (1.0 - NEAR) * top / (PROBE_PATIENCE * cost) / r
            }
            _ => QUICK,
        };
        s.rate = Some((r + step).min(ceiling));
    }

    fn throttled(&self, s: &mut State, turn: Turn, now: Millis, told: Option<Duration>) {
        s.throttles += 1;
        let fresh = turn.started > s.last_cut;
        if fresh {
            s.streak += 1;
        }
        if fresh && s.streak == 1 {
            let from = Millis(turn.started.0 - WINDOW.as_millis() as i64);
            let admitted = s
                .admitted
                .iter()
                .filter(|t| **t > from && **t <= turn.started)
                .count();
            let measured = (admitted >= 2).then(|| admitted as f64 / WINDOW.as_secs_f64());
            let base = match (s.rate, measured) {
                (Some(r), Some(m)) => Some(r.min(m)),
                (Some(r), None) => Some(r),
                (None, m) => m,
            };
            // Nothing to measure and no rate yet (a throttle among the first calls): no rate is
            // invented; the wait is honoured, and the next throttle will have calls to count.
            if let Some(base) = base {
                s.top = Some(base);
                s.rate = Some((base * CUT).max(MIN_RATE));
                s.learned = true;
            }
            s.last_cut = now;
            s.allowed = (s.allowed / 2).max(1);
        } else if fresh {
            // Same episode: a longer wait, no second cut.
            s.last_cut = now;
        }
        let rate = s.rate.unwrap_or(MIN_RATE);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let wait = told.unwrap_or_else(|| {
            let doubled = interval.saturating_mul(1 << s.streak.saturating_sub(1).min(16));
            doubled.min(MAX_QUIET)
        });
        if fresh {
            s.throttle_cost = wait + interval;
        }
        let until = now.after(wait);
        if until > s.resume_at {
            s.resume_at = until;
        }
        s.next_start = s.next_start.max(until.0 as f64);
        s.epoch += 1;
    }
}

/// Drops starts older than [`SHARE_WINDOW`].
fn prune_starts(starts: &mut VecDeque<(Millis, bool)>, now: Millis) {
    while let Some((t, _)) = starts.front() {
        if now.since(*t) > SHARE_WINDOW {
            starts.pop_front();
        } else {
            break;
        }
    }
}

impl Pass {
    /// Takes this pass's next start time now (waiting for it), so that a caller can check
    /// something right before its call goes out (the executor's legal-hold recheck).
    pub async fn ready(&mut self, op: Operation) -> Result<(), ProviderError> {
        if self.turn.is_none() {
            let turn = self.gate.turn(op, self.probe).await?;
            self.gate.note_start(turn.started, self.demand.is_none());
            self.turn = Some(turn);
        }
        Ok(())
    }

    /// Whether this pass is the probe of a paused provider.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Runs one call under this pass: its start time (unless [`ready`](Self::ready) took it),
    /// the call, and the answer told to the gate. A Retry-After over the cap comes back as a pause.
    pub async fn call<T>(
        &mut self,
        op: Operation,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let turn = match self.turn.take() {
            Some(t) => t,
            None => {
                let turn = self.gate.turn(op, self.probe).await?;
                self.gate.note_start(turn.started, self.demand.is_none());
                turn
            }
        };
        let result = call.await.map_err(|e| e.capped(self.gate.max_retry_after));
        self.gate
            .observe(turn, self.probe, result.as_ref().map(|_| ()));
        result
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock().unwrap();
        s.inflight = s.inflight.saturating_sub(1);
        if self.probe {
            s.probe_out = false;
        }
        drop(s);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn gate(concurrency: usize, rps: Option<f64>, clock: &ManualClock) -> Arc<Gate> {
        Gate::new(
            ProviderKind::CONVAI,
            &ProviderLimits {
                batch_size: 100,
                concurrency,
                requests_per_second: rps,
                timeout: Duration::from_secs(1),
            },
            Duration::from_secs(3600),
            Arc::new(clock.clone()),
        )
    }

    fn err(action: Action) -> ProviderError {
        ProviderError::new(ProviderKind::CONVAI, Operation::Delete, action, "x")
    }

    async fn answer(g: &Arc<Gate>, a: Option<Action>) -> Result<(), ProviderError> {
        g.call(Operation::Delete, async move {
            match a {
                None => Ok(()),
                Some(a) => Err(err(a)),
            }
        })
        .await
    }

    /// Three instances on one queue keep, together, to the provider's configured limits: each
    /// gate takes a third of the rate and of the concurrency, and all of it back when alone.
    #[tokio::test]
    async fn instances_sharing_a_provider_each_keep_to_their_share_of_its_limits() {
        let c = ManualClock::new(0);
        let g = gate(6, Some(90.0), &c);
        g.set_instances(3);
        let v = g.view();
        assert_eq!((v.max_concurrency, v.allowed), (2, 2));
        assert_eq!(v.rate, Some(30.0));
        // Successes grow the allowance back only up to the share.
        for _ in 0..5 {
            answer(&g, None).await.unwrap();
        }
        assert_eq!(g.view().allowed, 2);
        // Ten calls at the share's pace take a third of a second each thirtieth.
        let start = c.now_ms();
        for _ in 0..10 {
            let mut pass = g.enter(Operation::Delete).await.unwrap();
            pass.ready(Operation::Delete).await.unwrap();
            drop(pass);
        }
        assert!(
            c.now_ms() - start >= 9 * 1000 / 30,
            "ten calls at 30/s need at least 300 ms, took {}",
            c.now_ms() - start
        );
        g.set_instances(1);
        let v = g.view();
        assert_eq!((v.max_concurrency, v.rate), (6, Some(90.0)));
        // More instances than calls allowed: each keeps one.
        g.set_instances(10);
        assert_eq!(g.view().max_concurrency, 1);
    }

    #[tokio::test]
    async fn no_call_starts_before_a_retry_after_and_a_throttle_halves_concurrency() {
        let c = ManualClock::new(0);
        let g = gate(8, None, &c);
        let _ = answer(&g, Some(Action::RetryAfter(Duration::from_secs(3)))).await;
        assert_eq!(g.view().allowed, 4);
        assert_eq!(g.view().state, GateState::Throttled);
        let started = g.call(Operation::List, async { Ok(c.now_ms()) }).await;
        assert_eq!(
            started.unwrap(),
            3_000,
            "a listing waits out a delete's Retry-After"
        );
        assert_eq!(g.view().allowed, 5, "a success adds one back");
    }

    #[tokio::test]
    async fn background_calls_take_at_most_their_share_while_foreground_calls_want_the_provider() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let c = ManualClock::new(0);
        let g = gate(2, Some(10.0), &c);
        let done = Arc::new(AtomicBool::new(false));
        let bg = {
            let (g, done) = (g.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                loop {
                    let mut p = g.enter_background(Operation::Read, 0.2).await.unwrap();
                    if done.load(SeqCst) {
                        return n;
                    }
                    p.call(Operation::Read, async { Ok(()) }).await.unwrap();
                    n += 1;
                }
            })
        };
        let mut fg = Vec::new();
        for _ in 0..2 {
            let g = g.clone();
            fg.push(tokio::spawn(async move {
                for _ in 0..60 {
                    answer(&g, None).await.unwrap();
                }
            }));
        }
        for f in fg {
            f.await.unwrap();
        }
        done.store(true, SeqCst);
        let n = bg.await.unwrap();
        let share = f64::from(n) / f64::from(n + 120);
        assert!(
            share <= 0.21,
            "background took {n} of {} calls ({share:.2}) with a share of 0.2",
            n + 120
        );
        assert!(n >= 20, "background was starved: {n} calls beside 120");
        // Nothing else wants the provider: background calls go at the gate's own pace (10/s).
        let start = c.now_ms();
        for _ in 0..10 {
            let mut p = g.enter_background(Operation::Read, 0.2).await.unwrap();
            p.call(Operation::Read, async { Ok(()) }).await.unwrap();
        }
        assert!(c.now_ms() - start <= 1_100, "{} ms", c.now_ms() - start);
        // And a background call is never a paused provider's probe.
        let _ = answer(&g, Some(Action::Pause("x".into()))).await;
        c.advance(FIRST_PROBE);
        assert!(g.enter_background(Operation::Read, 0.2).await.is_err());
        assert!(g.enter(Operation::Delete).await.unwrap().is_probe());
    }

    #[tokio::test]
    async fn a_configured_rate_spaces_calls_on_the_injected_clock() {
        let c = ManualClock::new(1_000_000);
        let g = gate(4, Some(5.0), &c);
        for _ in 0..11 {
            answer(&g, None).await.unwrap();
        }
        let elapsed = c.now_ms() - 1_000_000;
        assert!(
            (1_900..=2_100).contains(&elapsed),
            "11 calls at 5/s take ~2 s, took {elapsed} ms"
        );
        assert_eq!(g.view().rate, Some(5.0), "never above requests_per_second");
    }

    #[tokio::test]
    async fn the_first_untold_throttle_measures_the_admitted_rate_and_waits_briefly() {
        let c = ManualClock::new(0);
        let g = gate(4, None, &c);
        for _ in 0..10 {
            answer(&g, None).await.unwrap();
            c.advance(Duration::from_millis(50));
        }
        let before = c.now_ms();
        let _ = answer(&g, Some(Action::Throttled)).await;
        let v = g.view();
        assert_eq!(v.rate, Some(9.0), "90% of 10 admitted in the last second");
        assert!(v.learned);
        let resumed = v.resume_at.unwrap().0 - before;
        assert!(
            (100..=120).contains(&resumed),
            "one interval at 9/s, not a fixed 5 s: {resumed} ms"
        );
    }

    #[tokio::test]
    async fn answers_to_calls_on_the_wire_cut_once_and_a_throttle_before_any_success_waits_longer()
    {
        let c = ManualClock::stepped(10_000);
        let g = gate(4, Some(20.0), &c);
        // Four calls go out at once (the first rate slot), all answered 429 later.
        let mut passes = Vec::new();
        for _ in 0..4 {
            let mut p = g.enter(Operation::Delete).await.unwrap();
            c.advance(Duration::from_millis(50));
            p.ready(Operation::Delete).await.unwrap();
            passes.push(p);
        }
        for mut p in passes {
            let _ = p
                .call(Operation::Delete, async {
                    Err::<(), _>(err(Action::Throttled))
                })
                .await;
        }
        assert_eq!(g.view().rate, Some(18.0), "one cut for one burst");
        let first_wait = g.view().resume_at.unwrap().0 - c.now_ms();
        c.advance(Duration::from_secs(10));
        let t = c.now_ms();
        let _ = answer(&g, Some(Action::Throttled)).await;
        assert_eq!(
            g.view().rate,
            Some(18.0),
            "no success since the cut: no second cut"
        );
        let second_wait = g.view().resume_at.unwrap().0 - t;
        assert!(
            (second_wait - 2 * first_wait).abs() <= 2,
            "the wait doubles instead: {first_wait} ms, then {second_wait} ms"
        );
        c.advance(Duration::from_secs(10));
        answer(&g, None).await.unwrap();
        c.advance(Duration::from_secs(1));
        let _ = answer(&g, Some(Action::Throttled)).await;
        assert!(
            g.view().rate.unwrap() < 18.0,
            "after a success, a new episode cuts"
        );
    }

    #[tokio::test]
    async fn the_rate_grows_only_when_it_held_calls_back_and_slowly_near_the_last_throttle() {
        let c = ManualClock::new(0);
        let g = gate(1, Some(100.0), &c);
        let _ = answer(&g, Some(Action::RetryAfter(Duration::from_secs(1)))).await;
        assert_eq!(g.view().rate, Some(90.0));
        // Idle calls (one a second) are not held back by a 90/s rate: no growth.
        for _ in 0..5 {
            c.advance(Duration::from_secs(1));
            answer(&g, None).await.unwrap();
        }
        assert_eq!(
            g.view().rate,
            Some(90.0),
            "an idle provider teaches nothing"
        );
        // Back to back: quick growth to 97 of 100 (×1.5 a second: a fifth of a second) ...
        let t0 = c.now_ms();
        while g.view().rate.unwrap() < 97.0 {
            answer(&g, None).await.unwrap();
        }
        let quick = c.now_ms() - t0;
        assert!((100..=400).contains(&quick), "quick phase took {quick} ms");
        // ... then patience: 20 throttle costs (1 s + one interval each) for the last 3%.
        let t1 = c.now_ms();
        while g.view().rate.unwrap() < 99.9 {
            answer(&g, None).await.unwrap();
        }
        let slow = c.now_ms() - t1;
        assert!(
            (18_000..=21_000).contains(&slow),
            "slow phase took {slow} ms"
        );
    }

    #[tokio::test]
    async fn past_the_last_throttled_rate_the_rate_grows_quickly_again() {
        let c = ManualClock::new(0);
        let g = gate(1, None, &c);
        for _ in 0..20 {
            c.advance(Duration::from_millis(50));
            answer(&g, None).await.unwrap();
        }
        let _ = answer(&g, Some(Action::Throttled)).await;
        assert_eq!(
            g.view().rate,
            Some(18.0),
            "90% of 20 admitted in the last second"
        );
        while g.view().rate.unwrap() < 20.0 {
            answer(&g, None).await.unwrap();
        }
        let t = c.now_ms();
        while c.now_ms() - t < 1_000 {
            answer(&g, None).await.unwrap();
        }
        let r = g.view().rate.unwrap();
        assert!(r > 26.0, "×1.5 a second past the old limit, got {r}");
    }

    #[tokio::test]
    async fn a_pause_refuses_calls_without_sending_and_admits_one_probe_when_due() {
        let c = ManualClock::stepped(0);
        let g = gate(2, None, &c);
        let reason = Action::Pause("put a valid key".into());
        let _ = answer(&g, Some(reason.clone())).await;
        let sent = std::sync::atomic::AtomicUsize::new(0);
        let refused = g
            .call(Operation::List, async {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(refused.action, Action::Pause(ref r) if r == "put a valid key"));
        assert_eq!(sent.into_inner(), 0, "refused without a call");
        c.advance(FIRST_PROBE);
        let probe = g.enter(Operation::Delete).await.unwrap();
        assert!(probe.is_probe());
        assert!(
            g.enter(Operation::Delete).await.is_err(),
            "one probe at a time"
        );
        let mut probe = probe;
        let _ = probe
            .call(Operation::Delete, async {
                Err::<(), _>(err(reason.clone()))
            })
            .await;
        drop(probe);
        assert_eq!(
            g.paused().unwrap().probe_delay,
            FIRST_PROBE * 2,
            "a failed probe doubles"
        );
        c.advance(FIRST_PROBE * 2);
        answer(&g, None).await.unwrap();
        assert!(g.paused().is_none(), "a probe's success resumes");
        assert_eq!(g.view().state, GateState::Running);
    }

    #[tokio::test]
    async fn a_retry_after_over_the_cap_pauses() {
        let c = ManualClock::new(0);
        let g = gate(1, None, &c);
        let e = answer(&g, Some(Action::RetryAfter(Duration::from_secs(7200))))
            .await
            .unwrap_err();
        assert!(matches!(e.action, Action::Pause(_)));
        assert_eq!(g.view().state, GateState::Paused);
    }
}
