//! Retention scheduling: the loop that runs each rule when its schedule says so.
//!
//! Rules: one rule run at a time (a slow run delays the next, never overlaps it); rules re-read
//! from the database on every pass. When a rule is due is [`crate::schedule`]'s pure arithmetic
//! (cron, time zones, DST, catch-up) on the injected clock. Between passes the loop sleeps until
//! the earliest next run ([`timer`]: tokio-cron-scheduler in production, the injected clock in
//! tests), or until `rules_changed` says the database changed (the daemon's intake pokes it when
//! another connection commits: `forgetd rules add/approve`, a feeder) or a reload happened; at
//! most an hour, so a missed poke or a jump of the wall clock costs at most that.

pub mod timer;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::resolve::{Patience, Resolver};
pub use crate::schedule::{Due, Schedule, ScheduleError, due};
use crate::store::AsyncStore;
pub use timer::Timer;

/// The longest the loop sleeps without looking at the rules again.
const MAX_SLEEP_SECS: i64 = 3600;

/// Runs retention rules on their schedules until cancelled (see the module doc). `wake`
/// announces new work to the executor.
pub async fn run_schedules(
    resolver: Arc<Resolver>,
    store: AsyncStore,
    wake: impl Fn() + Send,
    clock: SharedClock,
    timer: Timer,
    rules_changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        let next = run_due_rules(&resolver, &store, &wake, &clock, &cancel).await;
        let at = next.min(clock.now() + MAX_SLEEP_SECS);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = rules_changed.notified() => {}
            r = timer.wait_until(at) => if let Err(e) = r {
                tracing::error!(error = %e, "scheduler: the timer failed; looking again in a second");
                clock.sleep(std::time::Duration::from_secs(1)).await;
            },
        }
    }
    timer.shutdown().await;
}

/// One pass: runs every rule that is due, one at a time; returns when the next one is (unix
/// seconds).
async fn run_due_rules(
    resolver: &Resolver,
    store: &AsyncStore,
    wake: &impl Fn(),
    clock: &SharedClock,
    cancel: &CancellationToken,
) -> i64 {
    let rules = match store.call(|s| s.list_rules()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "scheduler: cannot read rules; trying again in a minute");
            return clock.now() + 60;
        }
    };
    let mut next = i64::MAX;
    for rule in rules {
        if cancel.is_cancelled() {
            break;
        }
        if rule.awaiting_approval.is_some() && !rule.approved {
            continue; // held by its ceiling until `rules approve` (a database change: a poke)
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
                // Look again soon: the run took time, and its rule's next time moved on.
                next = clock.now();
            }
            Due::At(t) => next = next.min(t),
            Due::Never => {}
        }
    }
    next
}

#[cfg(test)]
mod loop_tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::Store;
    use std::time::Duration;

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
            listing_lease: std::time::Duration::from_secs(60),
        });
        let cancel = CancellationToken::new();
        let poke = Arc::new(Notify::new());
        let task = tokio::spawn(run_schedules(
            resolver,
            store,
            || {},
            Arc::new(clock.clone()),
            Timer::Injected(Arc::new(clock.clone())),
            poke.clone(),
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
        // What the daemon's intake does when another connection commits.
        poke.notify_one();
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

    #[tokio::test]
    async fn the_scheduler_loop_runs_each_rule_once_through_a_spring_forward_night() {
        // Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST. The daemon's loop on the
        // injected clock, from 23:00 UTC the evening before to 03:00 UTC.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let start = 1_774_738_800_000; // 2026-03-28T23:00:00Z
        let clock = ManualClock::new(start);
        let mut s = Store::open(&path).unwrap();
        let spec = |name: &str, expr: &str| crate::config::RuleSpec {
            name: name.into(),
            provider: crate::model::ProviderKind::CONVAI,
            scope: "*".into(),
            max_age: Duration::from_secs(86_400),
            schedule: expr.into(),
            timezone: "Europe/Berlin".into(),
            discover: false,
            max_deletions: 10,
        };
        for (name, expr) in [
            ("at-0130", "30 1 * * *"),
            ("at-0230", "30 2 * * *"),
            ("at-0300", "0 3 * * *"),
        ] {
            s.add_rule(&spec(name, expr), start / 1000).unwrap();
        }
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
            listing_lease: std::time::Duration::from_secs(60),
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_schedules(
            resolver,
            store,
            || {},
            Arc::new(clock.clone()),
            Timer::Injected(Arc::new(clock.clone())),
            Arc::new(Notify::new()),
            cancel.clone(),
        ));
        while clock.now_ms() < start + 4 * 3_600_000 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        task.await.unwrap();
        let runs = Store::open(&path).unwrap().rule_runs().unwrap();
        let of =
            |name: &str| -> Vec<i64> { runs.iter().filter(|r| r.0 == name).map(|r| r.1).collect() };
        // 01:30 CET once (00:30Z), not again at the jump; 02:30 (skipped) once, at the jump
        // (01:00Z); 03:00 CEST once, at the same instant.
        assert_eq!(of("at-0130"), [1_774_744_200], "{runs:?}");
        assert_eq!(of("at-0230"), [1_774_746_000], "{runs:?}");
        assert_eq!(of("at-0300"), [1_774_746_000], "{runs:?}");
    }
}
