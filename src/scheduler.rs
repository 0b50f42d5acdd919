//! Retention scheduling: the loop that runs each rule when its schedule says so.
//!
//! Rules: one rule run at a time (a slow run delays the next, never overlaps it); rules re-read
//! from the database every pass; waits on the injected clock. When a rule is due is
//! [`crate::schedule`]'s pure arithmetic (cron, time zones, DST, catch-up).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::resolve::{Patience, Resolver};
pub use crate::schedule::{Due, Schedule, ScheduleError, due};
use crate::store::AsyncStore;

/// Runs retention rules on their schedules until cancelled: one rule run at a time (a slow run
/// delays the next, never overlaps it), rules re-read from the database every pass (changes need
/// no restart), waits on the injected clock. `wake` announces new work to the executor.
pub async fn run_schedules(
    resolver: Arc<Resolver>,
    store: AsyncStore,
    wake: impl Fn() + Send,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let now = clock.now();
        let rules = match store.call(|s| s.list_rules()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "scheduler: cannot read rules");
                Vec::new()
            }
        };
        let mut next_wake = now + 60;
        for rule in rules {
            if cancel.is_cancelled() {
                return;
            }
            if rule.awaiting_approval.is_some() && !rule.approved {
                continue; // held by its ceiling until `rules approve`
            }
            let Ok(schedule) = Schedule::parse(&rule.schedule, &rule.timezone) else {
                tracing::error!(rule = %rule.name, schedule = %rule.schedule, "rule has an invalid schedule; skipped");
                continue;
            };
            match due(&schedule, rule.last_run_at, rule.created_at, clock.now()) {
                Due::Now => {
                    if let Err(e) = resolver.run_rule(&rule, Patience::Brief).await {
                        tracing::error!(rule = %rule.name, error = %format!("{e:#}"), "retention rule run failed; retrying at its next schedule");
                        let (at, name) = (clock.now(), rule.name.clone());
                        let _ = store.call(move |s| s.mark_rule_attempt(&name, at)).await;
                    }
                    wake();
                    next_wake = clock.now();
                }
                Due::At(t) => next_wake = next_wake.min(t),
                Due::Never => {}
            }
        }
        // Look again at least every second: rules may change in the database at any time.
        let wait = Duration::from_secs((next_wake - clock.now()).clamp(0, 1) as u64);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep(wait.max(Duration::from_millis(1))) => {}
        }
    }
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::Store;

    #[tokio::test]
    async fn runs_each_scheduled_time_once_in_order_and_picks_up_new_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let start = 1_800_000_000_000; // ms, on a whole minute boundary's neighbourhood
        let clock = ManualClock::new(start);
        let mut s = Store::open(&path).unwrap();
        let spec = |name: &str, expr: &str| crate::config::RuleSpec {
            name: name.into(),
            provider: crate::model::ProviderKind::CONVAI,
            scope: "*".into(),
            max_age: Duration::from_secs(86_400),
            schedule: expr.into(),
            timezone: "UTC".into(),
            discover: false,
            max_deletions: 10,
        };
        s.add_rule(&spec("every-10s", "*/10 * * * * *"), start / 1000)
            .unwrap();
        let store = AsyncStore::spawn(s);
        let resolver = Arc::new(Resolver {
            store: store.clone(),
            providers: Vec::new(),
            key: Arc::new(crate::audit::SubjectKey::from_bytes(&[1; 32])),
            clock: Arc::new(clock.clone()),
            deadline_secs: 0,
            retry: crate::executor::retry::RetryPolicy::new(
                &crate::config::Config::defaults().retry,
            ),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_schedules(
            resolver,
            store,
            || {},
            Arc::new(clock.clone()),
            cancel.clone(),
        ));
        // let 60 s of injected time pass, then add a rule through another connection
        while clock.now_ms() < start + 60_000 {
            tokio::task::yield_now().await;
        }
        Store::open(&path)
            .unwrap()
            .add_rule(&spec("late", "*/30 * * * * *"), clock.now())
            .unwrap();
        while clock.now_ms() < start + 120_000 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        task.await.unwrap();
        let s = Store::open(&path).unwrap();
        let starts = s.rule_runs().unwrap();
        let every: Vec<i64> = starts
            .iter()
            .filter(|r| r.0 == "every-10s")
            .map(|r| r.1)
            .collect();
        assert!(
            (11..=13).contains(&every.len()),
            "one run per 10 s over ~2 min: {every:?}"
        );
        assert!(
            every.windows(2).all(|w| w[1] - w[0] >= 10),
            "never twice for one scheduled time: {every:?}"
        );
        let late = starts.iter().filter(|r| r.0 == "late").count();
        assert!(
            (1..=3).contains(&late),
            "a rule added in the database runs without restart: {late}"
        );
    }
}
