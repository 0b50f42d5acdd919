//! Retention scheduling: when each rule runs.
//!
//! Rules: cron expressions have 5 fields (minute hour day-of-month month day-of-week, Sunday 0 or
//! 7, day-of-month/day-of-week OR-ed as in Vixie cron) or 6 with seconds first. Times are computed
//! in the rule's IANA time zone from an injected "now", so a DST change is followed (the zone's
//! offset is looked up per occurrence, never frozen).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::resolve::{Patience, Resolver};
use crate::store::AsyncStore;
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    expr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "schedule \"{expr}\" is not a cron expression ({reason}); write 5 fields \"min hour dom mon dow\" or 6 with seconds first"
    )]
    Cron { expr: String, reason: String },
    #[error("time zone \"{0}\" is not an IANA zone name such as \"Europe/Berlin\" or \"UTC\"")]
    Zone(String),
    #[error(
        "schedule \"{0}\" never fires (no such day, e.g. 30 February); check its day-of-month and month"
    )]
    Never(String),
}

impl Schedule {
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(ScheduleError::Cron {
                expr: expr.to_string(),
                reason: format!("it has {fields} fields"),
            });
        }
        let tz: Tz = timezone
            .parse()
            .map_err(|_| ScheduleError::Zone(timezone.to_string()))?;
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .dom_and_dow(false)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Cron {
                expr: expr.to_string(),
                reason: e.to_string(),
            })?;
        let schedule = Self {
            cron,
            tz,
            expr: expr.to_string(),
        };
        // A schedule naming a day that does not exist (`0 3 30 2 *`) would be accepted by cron
        // syntax and never run, costing a search at every tick. Every real schedule fires within
        // eight years of any date (29 February does, every leap year).
        const FROM: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
        const EIGHT_YEARS: i64 = 8 * 366 * 86_400;
        match schedule.next_after(FROM) {
            Some(t) if t <= FROM + EIGHT_YEARS => Ok(schedule),
            _ => Err(ScheduleError::Never(expr.to_string())),
        }
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first run strictly after `after` (unix seconds), as unix seconds.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start: DateTime<Tz> = self
            .tz
            .from_utc_datetime(&Utc.timestamp_opt(after, 0).single()?.naive_utc());
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|t| t.timestamp())
    }
}

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
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    #[test]
    fn five_and_six_fields_parse_other_counts_do_not() {
        assert!(Schedule::parse("0 3 * * *", "UTC").is_ok());
        assert!(Schedule::parse("30 0 3 * * *", "UTC").is_ok());
        assert!(Schedule::parse("* * * *", "UTC").is_err());
        assert!(Schedule::parse("0 0 3 * * * 2030", "UTC").is_err());
        assert!(Schedule::parse("0 3 * * *", "Mars/Olympus").is_err());
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_leap_days_are_not() {
        for never in ["0 3 30 2 *", "0 3 31 4 *", "0 0 31 2,4,6,9,11 *"] {
            let e = Schedule::parse(never, "UTC").unwrap_err();
            assert!(matches!(e, ScheduleError::Never(_)), "{never}: {e}");
        }
        assert!(Schedule::parse("0 3 29 2 *", "UTC").is_ok());
        // Vixie cron: day-of-month OR day-of-week, so this fires every Monday too.
        assert!(Schedule::parse("0 3 30 2 1", "UTC").is_ok());
    }

    #[test]
    fn five_fields_run_on_the_minute_in_utc() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T03:00:00Z")),
            Some(ts("2026-01-02T03:00:00Z"))
        );
    }

    #[test]
    fn sunday_is_0_or_7() {
        let a = Schedule::parse("0 0 * * 0", "UTC").unwrap();
        let b = Schedule::parse("0 0 * * 7", "UTC").unwrap();
        let t = ts("2026-11-23T00:00:00Z"); // a Monday
        assert_eq!(a.next_after(t), Some(ts("2026-11-29T00:00:00Z")));
        assert_eq!(a.next_after(t), b.next_after(t));
    }
}

/// Whether a rule should run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now,
    /// Next run at this unix time.
    At(i64),
    Never,
}

/// A rule is due when the first scheduled time after its last run (or, never run, after it was
/// created) has come. A daemon that was down over several scheduled times finds the first of them
/// past and runs once; the run records `now` as its last run, so the missed ones are not replayed.
pub fn due(schedule: &Schedule, last_run_at: Option<i64>, created_at: i64, now: i64) -> Due {
    match schedule.next_after(last_run_at.unwrap_or(created_at)) {
        Some(t) if t <= now => Due::Now,
        Some(t) => Due::At(t),
        None => Due::Never,
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    fn runs(expr: &str, tz: &str, from: &str, n: usize) -> Vec<i64> {
        let s = Schedule::parse(expr, tz).unwrap();
        let mut t = ts(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t
            })
            .collect()
    }

    #[test]
    fn spring_forward_runs_once_at_the_first_valid_time_after_the_gap() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let r = runs("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3);
        assert_eq!(
            r,
            vec![
                ts("2026-03-28T02:30:00+01:00"),
                ts("2026-03-29T03:00:00+02:00"),
                ts("2026-03-30T02:30:00+02:00")
            ]
        );
        // A time outside the gap keeps its wall-clock hour across the change (offset not frozen).
        let r = runs("0 3 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3);
        assert_eq!(
            r,
            vec![
                ts("2026-03-28T03:00:00+01:00"),
                ts("2026-03-29T03:00:00+02:00"),
                ts("2026-03-30T03:00:00+02:00")
            ]
        );
    }

    #[test]
    fn fall_back_runs_once_though_the_hour_repeats() {
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice, the rule runs once.
        let r = runs("30 2 * * *", "Europe/Berlin", "2026-10-23T12:00:00Z", 3);
        assert_eq!(
            r,
            vec![
                ts("2026-10-24T02:30:00+02:00"),
                ts("2026-10-25T02:30:00+02:00"),
                ts("2026-10-26T02:30:00+01:00")
            ]
        );
    }

    #[test]
    fn six_fields_take_seconds_first() {
        let r = runs("15 0 12 * * *", "UTC", "2026-01-01T00:00:00Z", 2);
        assert_eq!(
            r,
            vec![ts("2026-01-01T12:00:15Z"), ts("2026-01-02T12:00:15Z")]
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_as_in_vixie_cron() {
        // the 1st of the month, or any Monday
        let r = runs("0 0 1 * 1", "UTC", "2026-06-28T12:00:00Z", 3);
        assert_eq!(
            r,
            vec![
                ts("2026-06-29T00:00:00Z"),
                ts("2026-07-01T00:00:00Z"),
                ts("2026-07-06T00:00:00Z")
            ]
        );
        // a * in one of them leaves only the other
        let r = runs("0 0 * * 1", "UTC", "2026-06-28T12:00:00Z", 2);
        assert_eq!(
            r,
            vec![ts("2026-06-29T00:00:00Z"), ts("2026-07-06T00:00:00Z")]
        );
    }

    #[test]
    fn a_run_missed_while_down_is_made_up_once() {
        let s = Schedule::parse("0 3 * * *", "UTC").unwrap();
        let last = ts("2026-01-01T03:00:00Z");
        let now = ts("2026-01-05T10:00:00Z"); // down for four scheduled runs
        assert_eq!(due(&s, Some(last), 0, now), Due::Now);
        // the run records now as its last run: the other missed runs are not replayed
        assert_eq!(
            due(&s, Some(now), 0, now),
            Due::At(ts("2026-01-06T03:00:00Z"))
        );
        // a rule never run counts from its creation
        assert_eq!(
            due(&s, None, ts("2026-01-05T09:00:00Z"), now),
            Due::At(ts("2026-01-06T03:00:00Z"))
        );
        assert_eq!(due(&s, None, ts("2026-01-04T09:00:00Z"), now), Due::Now);
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
            provider: crate::model::ProviderKind::Convai,
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
