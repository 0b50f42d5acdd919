//! Time, injected. Everything that waits or compares against "now" (backoff, Retry-After, leases,
//! schedules) reads a [`Clock`] so tests drive time without sleeping and without tokio's paused
//! clock, which fights real loopback sockets.
//!
//! [`SystemClock`] is the real one. [`ManualClock`] only moves when told to, or when something
//! sleeps on it: a sleep on a manual clock advances it and returns at once, so a test that drains
//! a queue full of backoffs finishes in milliseconds while every recorded time stays exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
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

/// A clock that moves only when advanced or slept on.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
        }
    }
    pub fn advance(&self, d: Duration) {
        self.now_ms
            .fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
    pub fn set_ms(&self, ms: i64) {
        self.now_ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
    fn sleep(&self, d: Duration) -> Sleep {
        self.advance(d);
        // Yield once so a loop that only sleeps still lets other tasks run.
        Box::pin(tokio::task::yield_now())
    }
}

pub fn ms(d: Duration) -> i64 {
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
}
