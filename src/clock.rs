//! Time, injected. Everything that waits or compares against "now" (backoff, Retry-After, leases,
//! schedules) reads a [`Clock`] so tests drive time without sleeping and without tokio's paused
//! clock, which fights real loopback sockets.
//!
//! [`SystemClock`] is the real one. [`ManualClock`] only moves when told to, or when something
//! sleeps on it: a sleep on a manual clock advances it and returns at once, so a test that drains
//! a queue full of backoffs finishes in milliseconds while every recorded time stays exact.
//! [`ManualClock::stepped`] is the strict variant: sleepers wait until the test advances the
//! clock past their deadline, so how far time has run is the test's decision alone (no idle
//! worker can push it ahead while the test is looking elsewhere).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A moment as unix milliseconds: the unit of the executor and of the queue's retry and lease
/// columns (backoffs and Retry-After are sub-second). The rule across forgetd: **a bare `i64`
/// time is unix seconds** (the unit of every feeder-visible column, `Clock::now`); milliseconds
/// always travel as `Millis`, so the two never meet by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Millis(pub i64);

impl Millis {
    /// The unix second this moment falls in.
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// This moment plus `d` (saturating).
    pub fn after(self, d: Duration) -> Millis {
        Millis(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }
    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

impl rusqlite::ToSql for Millis {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl rusqlite::types::FromSql for Millis {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        i64::column_result(v).map(Millis)
    }
}

pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds (raw; most callers want [`Clock::instant`]).
    fn now_ms(&self) -> i64;
    /// Now, as a [`Millis`].
    fn instant(&self) -> Millis {
        Millis(self.now_ms())
    }
    /// Waits `d` on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
    /// Unix time in seconds (the unit of every feeder-visible column).
    fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when advanced or slept on (or, [`stepped`](Self::stepped), only when
/// advanced).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
    /// `Some` for a stepped clock: sleepers wait here until an advance passes their deadline.
    /// The advancing test notifies; every sleeper re-reads the time.
    moved: Option<Arc<tokio::sync::Notify>>,
}

impl ManualClock {
    /// A clock that a sleep advances: waits cost nothing and every sleeper moves time for all.
    pub fn new(start_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
            moved: None,
        }
    }
    /// A clock that only [`advance`](Self::advance) and [`set_ms`](Self::set_ms) move; a sleep
    /// returns once the test has moved time past its deadline.
    pub fn stepped(start_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
            moved: Some(Arc::new(tokio::sync::Notify::new())),
        }
    }
    pub fn advance(&self, d: Duration) {
        self.now_ms.fetch_add(ms(d), Ordering::SeqCst);
        self.wake();
    }
    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
        self.wake();
    }
    fn wake(&self) {
        if let Some(n) = &self.moved {
            n.notify_waiters();
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
    fn sleep(&self, d: Duration) -> Sleep {
        let Some(moved) = self.moved.clone() else {
            self.advance(d);
            // Yield once so a loop that only sleeps still lets other tasks run.
            return Box::pin(tokio::task::yield_now());
        };
        let now = self.now_ms.clone();
        let deadline = self.now_ms() + ms(d);
        Box::pin(async move {
            loop {
                let notified = moved.notified();
                tokio::pin!(notified);
                // Registered before the check, so an advance between the two is not missed.
                notified.as_mut().enable();
                if now.load(Ordering::SeqCst) >= deadline {
                    return;
                }
                notified.await;
            }
        })
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_sleep_advances_instantly() {
        let c = ManualClock::new(1_000);
        c.sleep(Duration::from_secs(90)).await;
        assert_eq!(c.now_ms(), 91_000);
        assert_eq!(c.now(), 91);
    }

    #[tokio::test]
    async fn stepped_clock_sleep_waits_for_the_test_to_advance() {
        let c = ManualClock::stepped(1_000);
        let mut sleep = c.sleep(Duration::from_secs(10));
        assert!(
            futures_util::poll!(&mut sleep).is_pending(),
            "no time has passed"
        );
        c.advance(Duration::from_secs(9));
        assert!(
            futures_util::poll!(&mut sleep).is_pending(),
            "1 s still to go"
        );
        assert_eq!(c.now_ms(), 10_000, "sleeping did not move the clock");
        c.advance(Duration::from_secs(1));
        sleep.await;
    }
}
