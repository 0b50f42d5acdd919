//! When to try an item again, and when to give up.
//!
//! Exponential backoff with full jitter (a uniform wait in `[0, min(max_delay, base * 2^n)]`),
//! computed by the `retry-policies` crate; the server's Retry-After takes precedence when longer.
//! An item goes dead after `max_attempts` answers that said "try again", or once `give_up_after`
//! has passed since its first send, whichever comes first, keeping its last error.
//!
//! `retry-policies` answers with a wall-clock `SystemTime`; only the delay it implies is used, and
//! it is applied to the injected clock, so tests drive retries without sleeping.

use std::time::{Duration, SystemTime};

use retry_policies::policies::ExponentialBackoff;
use retry_policies::{Jitter, RetryDecision, RetryPolicy as _};

use crate::clock::Millis;
use crate::config::RetryConfig;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: ExponentialBackoff,
    max_attempts: u32,
    give_up_after: Duration,
    /// The longest Retry-After waited out; see [`crate::providers::ProviderError::capped`].
    pub max_retry_after: Duration,
}

/// What to do with an item after a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time.
    At(Millis),
    /// Attempts or time are used up.
    GiveUp,
}

impl RetryPolicy {
    pub fn new(c: &RetryConfig) -> Self {
        let backoff = ExponentialBackoff::builder()
            .retry_bounds(c.base_delay, c.max_delay)
            .jitter(Jitter::Full)
            .base(2)
            .build_with_max_retries(c.max_attempts);
        Self {
            backoff,
            max_attempts: c.max_attempts,
            give_up_after: c.give_up_after,
            max_retry_after: c.max_retry_after,
        }
    }

    /// The full-jitter delay before retry number `past + 1`.
    pub fn delay(&self, past: u32) -> Duration {
        let start = SystemTime::now();
        match self.backoff.should_retry(start, past) {
            RetryDecision::Retry { execute_after } => execute_after
                .duration_since(start)
                .unwrap_or(Duration::ZERO),
            RetryDecision::DoNotRetry => Duration::ZERO,
        }
    }

    /// Decides an item's next step. `attempts` counts earlier "try again" answers (this failure
    /// not included); `retry_after` is the provider's minimum wait, if it gave one.
    pub fn next(
        &self,
        attempts: u32,
        first_attempt: Millis,
        now: Millis,
        retry_after: Option<Duration>,
    ) -> Next {
        let wait = self
            .delay(attempts)
            .max(retry_after.unwrap_or(Duration::ZERO));
        self.after(attempts, first_attempt, now, wait)
    }

    /// [`next`](Self::next) with the wait already chosen (one wait for a whole failed batch, so
    /// its items stay together and are sent together again).
    pub fn after(&self, attempts: u32, first_attempt: Millis, now: Millis, wait: Duration) -> Next {
        let attempts_after = attempts + 1;
        if attempts_after >= self.max_attempts || now.since(first_attempt) >= self.give_up_after {
            return Next::GiveUp;
        }
        let at = now.after(wait);
        if at.since(first_attempt) >= self.give_up_after {
            // Never schedule past the give-up window: one last try at its edge.
            return Next::At(Millis(first_attempt.after(self.give_up_after).0 - 1));
        }
        Next::At(at)
    }

    /// An item put off without counting an attempt (throttled, a lookup that could not decide):
    /// due at `at`, or given up once `give_up_after` has passed since its first send (the last
    /// try is kept inside the window, as in [`next`](Self::next)).
    pub fn defer(&self, first_attempt: Millis, now: Millis, at: Millis) -> Next {
        let end = first_attempt.after(self.give_up_after);
        if now >= end {
            return Next::GiveUp;
        }
        Next::At(at.min(Millis(end.0 - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32, give_up: Duration) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_attempts,
            give_up_after: give_up,
            max_retry_after: Duration::from_secs(3600),
        })
    }

    #[test]
    fn delays_stay_within_the_full_jitter_envelope() {
        let p = policy(100, Duration::from_secs(86400));
        for n in 0..12u32 {
            let cap = Duration::from_secs(1)
                .saturating_mul(1 << n)
                .min(Duration::from_secs(60));
            for _ in 0..50 {
                assert!(p.delay(n) <= cap, "retry {n}");
            }
        }
        // full jitter: some delays are well below the cap
        assert!((0..200).any(|_| p.delay(6) < Duration::from_secs(30)));
    }

    #[test]
    fn delays_grow_with_the_attempt_and_are_not_zero() {
        // Full jitter draws from [0, cap]: of 200 draws, some lie in the upper three quarters
        // (all 200 below cap/4 has odds of 4^-200). A delay that is always zero is a retry storm.
        let p = policy(100, Duration::from_secs(86400));
        for (n, cap) in [(0u32, 1u64), (3, 8), (5, 32)] {
            let quarter = Duration::from_millis(cap * 250);
            assert!(
                (0..200).any(|_| p.delay(n) > quarter),
                "retry {n}: every delay at most {quarter:?}"
            );
        }
    }

    #[test]
    fn retry_after_takes_precedence_when_longer() {
        let p = policy(100, Duration::from_secs(86400));
        match p.next(0, Millis(0), Millis(1_000), Some(Duration::from_secs(30))) {
            Next::At(t) => assert!(t >= Millis(31_000)),
            Next::GiveUp => panic!(),
        }
    }

    #[test]
    fn a_deferral_counts_no_attempt_but_keeps_the_give_up_window() {
        let p = policy(3, Duration::from_secs(100));
        let zero = Millis(0);
        assert_eq!(
            p.defer(zero, Millis(5_000), Millis(6_000)),
            Next::At(Millis(6_000))
        );
        assert_eq!(
            p.defer(zero, Millis(99_000), Millis(200_000)),
            Next::At(Millis(99_999)),
            "never past the window"
        );
        assert_eq!(
            p.defer(zero, Millis(100_000), Millis(101_000)),
            Next::GiveUp
        );
    }

    #[test]
    fn gives_up_after_attempts_or_window() {
        let p = policy(3, Duration::from_secs(100));
        let (zero, ms) = (Millis(0), Millis);
        assert!(matches!(p.next(1, zero, zero, None), Next::At(_)));
        assert_eq!(p.next(2, zero, zero, None), Next::GiveUp);
        assert_eq!(p.next(0, zero, ms(100_000), None), Next::GiveUp);
        match p.next(0, zero, ms(99_000), Some(Duration::from_secs(50))) {
            Next::At(t) => assert_eq!(t, ms(99_999)),
            Next::GiveUp => panic!(),
        }
    }
}
