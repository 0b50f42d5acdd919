//! Retention scheduling: when each rule runs.
//!
//! Rules: cron expressions have 5 fields (minute hour day-of-month month day-of-week, Sunday 0 or
//! 7, day-of-month/day-of-week OR-ed as in Vixie cron) or 6 with seconds first. Times are computed
//! in the rule's IANA time zone from an injected "now", so a DST change is followed (the zone's
//! offset is looked up per occurrence, never frozen).

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
        Ok(Self {
            cron,
            tz,
            expr: expr.to_string(),
        })
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
