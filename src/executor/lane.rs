//! One provider's lane: how many batches may be in flight, how fast calls may start, and whether
//! the provider is throttled or paused.
//!
//! - Concurrency: at most `concurrency` batches at once. After a 429 the allowance halves (never
//!   below one) and every following success adds one back: additive increase, multiplicative
//!   decrease, so a throttled provider is not hammered and recovers gradually.
//! - Rate: `requests_per_second` through `governor` (GCRA), with its clock bridged to the injected
//!   clock so tests see the same waits without sleeping.
//! - Throttle: after a 429, no call starts before the Retry-After (or the provider's advised wait)
//!   has passed.
//! - Pause: an authentication or permission failure stops the lane; it is probed again with a
//!   doubling delay (30 s up to 15 min) while its items keep their attempt counts.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::Clock as GovClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

use crate::clock::{Millis, SharedClock};
use crate::providers::ProviderLimits;

pub const FIRST_PROBE: Duration = Duration::from_secs(30);
pub const MAX_PROBE: Duration = Duration::from_secs(15 * 60);

/// governor's view of the injected clock.
#[derive(Clone)]
pub struct GovernorClock(pub SharedClock);

impl GovClock for GovernorClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.now_ms().max(0) as u64)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, GovernorClock, NoOpMiddleware<Duration>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    pub next_probe: Millis,
    pub probe_delay: Duration,
}

pub struct Lane {
    clock: SharedClock,
    max: usize,
    allowed: AtomicUsize,
    inflight: AtomicUsize,
    freed: Notify,
    limiter: Option<Limiter>,
    resume_at: Mutex<Millis>,
    pause: Mutex<Option<Pause>>,
}

/// Holds one of the lane's concurrency slots until dropped.
pub struct Slot(std::sync::Arc<Lane>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        self.0.freed.notify_waiters();
    }
}

impl Lane {
    pub fn new(limits: &ProviderLimits, clock: SharedClock) -> Self {
        let limiter = limits.requests_per_second.map(|rps| {
            let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_micros(1));
            let quota = Quota::with_period(period)
                .expect("non-zero period")
                .allow_burst(NonZeroU32::MIN);
            RateLimiter::direct_with_clock(quota, GovernorClock(clock.clone()))
        });
        Self {
            clock,
            max: limits.concurrency,
            allowed: AtomicUsize::new(limits.concurrency),
            inflight: AtomicUsize::new(0),
            freed: Notify::new(),
            limiter,
            resume_at: Mutex::new(Millis(0)),
            pause: Mutex::new(None),
        }
    }

    /// Waits for a concurrency slot.
    pub async fn slot(self: &std::sync::Arc<Self>) -> Slot {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let cur = self.inflight.load(Ordering::SeqCst);
            if cur < self.allowed.load(Ordering::SeqCst)
                && self
                    .inflight
                    .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                return Slot(self.clone());
            }
            notified.await;
        }
    }

    /// Waits until a call may start: past any throttle, within the rate limit.
    pub async fn ready(&self) {
        loop {
            let resume = *self.resume_at.lock().unwrap();
            let now = self.clock.instant();
            if now < resume {
                self.clock.sleep(resume.since(now)).await;
                continue;
            }
            match &self.limiter {
                None => return,
                Some(l) => match l.check() {
                    Ok(()) => return,
                    Err(not_until) => {
                        let wait =
                            not_until.wait_time_from(GovernorClock(self.clock.clone()).now());
                        self.clock.sleep(wait.max(Duration::from_millis(1))).await;
                    }
                },
            }
        }
    }

    /// A 429: no call before `wait` has passed, and half the concurrency.
    pub fn throttled(&self, wait: Duration) {
        let until = self.clock.instant().after(wait);
        let mut r = self.resume_at.lock().unwrap();
        *r = (*r).max(until);
        let cur = self.allowed.load(Ordering::SeqCst);
        self.allowed.store((cur / 2).max(1), Ordering::SeqCst);
    }

    /// A success: one more batch allowed in flight, up to the configured concurrency.
    pub fn succeeded(&self) {
        let cur = self.allowed.load(Ordering::SeqCst);
        if cur < self.max {
            self.allowed.store(cur + 1, Ordering::SeqCst);
            self.freed.notify_waiters();
        }
    }

    /// The configured concurrency (the most batches ever in flight).
    pub fn max_concurrency(&self) -> usize {
        self.max
    }

    pub fn allowed(&self) -> usize {
        self.allowed.load(Ordering::SeqCst)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Pauses the lane (or, if already paused, doubles the delay to the next probe).
    /// A failure before the probe time is a call that was already on the wire when the lane
    /// paused: it leaves the pause as it is. Only a failed probe doubles the delay.
    pub fn pause(&self, reason: String) -> Pause {
        let mut p = self.pause.lock().unwrap();
        let now = self.clock.instant();
        let delay = match p.as_ref() {
            Some(old) if now < old.next_probe => return old.clone(),
            Some(old) => (old.probe_delay * 2).min(MAX_PROBE),
            None => FIRST_PROBE,
        };
        let next = Pause {
            reason,
            next_probe: now.after(delay),
            probe_delay: delay,
        };
        *p = Some(next.clone());
        next
    }

    /// Lifts a pause; returns whether the lane was paused.
    pub fn resume(&self) -> bool {
        self.pause.lock().unwrap().take().is_some()
    }

    pub fn paused(&self) -> Option<Pause> {
        self.pause.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use std::sync::Arc;

    fn lane(concurrency: usize, rps: Option<f64>, clock: &ManualClock) -> Lane {
        Lane::new(
            &ProviderLimits {
                batch_size: 100,
                concurrency,
                requests_per_second: rps,
                timeout: Duration::from_secs(1),
            },
            Arc::new(clock.clone()),
        )
    }

    #[tokio::test]
    async fn throttling_halves_concurrency_and_success_recovers_it_gradually() {
        let c = ManualClock::new(0);
        let l = Arc::new(lane(8, None, &c));
        l.throttled(Duration::from_secs(3));
        assert_eq!(l.allowed(), 4);
        l.throttled(Duration::from_secs(3));
        assert_eq!(l.allowed(), 2);
        l.ready().await;
        assert_eq!(c.now_ms(), 3_000, "no call before Retry-After");
        l.succeeded();
        assert_eq!(l.allowed(), 3);
    }

    #[tokio::test]
    async fn rate_limit_spaces_calls_on_the_injected_clock() {
        let c = ManualClock::new(1_000_000);
        let l = lane(4, Some(5.0), &c);
        for _ in 0..11 {
            l.ready().await;
        }
        let elapsed = c.now_ms() - 1_000_000;
        assert!(
            (1_900..=2_100).contains(&elapsed),
            "11 calls at 5/s take ~2 s, took {elapsed} ms"
        );
    }

    #[tokio::test]
    async fn pause_probes_back_off() {
        let c = ManualClock::new(0);
        let l = lane(1, None, &c);
        assert_eq!(l.pause("x".into()).probe_delay, FIRST_PROBE);
        // another call that was already on the wire: the pause stands as it is
        assert_eq!(l.pause("x".into()).probe_delay, FIRST_PROBE);
        c.advance(FIRST_PROBE);
        assert_eq!(
            l.pause("x".into()).probe_delay,
            FIRST_PROBE * 2,
            "a failed probe doubles"
        );
        assert!(l.resume());
        assert!(l.paused().is_none());
    }
}
