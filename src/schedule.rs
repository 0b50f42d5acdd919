//! Schedules: cron expressions and when a rule is due, as pure functions of an injected "now".
//!
//! Rules: cron expressions have 5 fields (minute hour day-of-month month day-of-week, Sunday 0 or
//! 7, day-of-month/day-of-week OR-ed as in Vixie cron) or 6 with seconds first. Times are computed
//! in the rule's IANA time zone, so a DST change is followed (the zone's offset is looked up per
//! occurrence, never frozen). A schedule that never fires is refused. Missed runs are made up
//! once, not replayed. A leaf: no forgetd imports, no clock reads.

use chrono::{DateTime, TimeZone, Utc};
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
