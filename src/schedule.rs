//! Schedules: cron expressions and when a rule is due, as pure functions of an injected "now".
//!
//! Rules: cron expressions have 5 fields (minute hour day-of-month month day-of-week, Sunday 0 or
//! 7, day-of-month/day-of-week OR-ed as in Vixie cron) or 6 with seconds first. A schedule names
//! wall-clock times in the rule's IANA time zone; occurrences are decided on that wall clock
//! alone, and each wall-clock time runs at most once:
//! - a time the zone skips (spring forward) runs once, at the jump (the first instant after the
//!   gap); several skipped times collapse into that one run;
//! - a time the zone repeats (fall back) runs once, at its first instant; interval schedules
//!   (`*/30 * * * *`) therefore do not run again in the repeated hour (a retention rule's cutoff is
//!   an age, so a second sweep within the hour would find nothing the first did not).
//!
//! The zone's offset is looked up per occurrence, never frozen. A schedule that never fires is
//! refused. Missed runs are made up once, not replayed. A leaf: no forgetd imports, no clock
//! reads.

use chrono::{TimeZone, Utc};
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

    /// The first run strictly after `after` (unix seconds), as unix seconds: the next wall-clock
    /// time in the rule's zone after `after`'s wall-clock time that the schedule names and that
    /// has not run yet (see the module's rules for skipped and repeated times).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        use chrono::offset::LocalResult;
        let after_utc = Utc.timestamp_opt(after, 0).single()?;
        // The wall clock of the zone at `after`, carried as a naive time (in a zone-free
        // calendar, so the cron arithmetic sees every wall-clock time once).
        let mut wall = after_utc.with_timezone(&self.tz).naive_local();
        // Each candidate is a wall-clock time; a bounded walk (a candidate is skipped only when
        // its instant is not after `after`, which happens for at most the hour a fall back
        // repeats, plus the gap's collapsed times).
        for _ in 0..10_000 {
            let next = self
                .cron
                .find_next_occurrence(&Utc.from_utc_datetime(&wall), false)
                .ok()?
                .naive_utc();
            let instant = match self.tz.from_local_datetime(&next) {
                LocalResult::Single(t) => t.timestamp(),
                // Repeated: its first instant.
                LocalResult::Ambiguous(first, _) => first.timestamp(),
                // Skipped: the jump, i.e. the first wall-clock minute after it that exists.
                LocalResult::None => self.after_gap(next)?,
            };
            if instant > after {
                return Some(instant);
            }
            // Already run (its first copy, or the jump it collapsed into, is not after `after`).
            wall = next;
        }
        None
    }

    /// The instant a spring-forward gap containing `wall` ends (zone transitions fall on whole
    /// minutes; a gap is at most a few hours).
    fn after_gap(&self, wall: chrono::NaiveDateTime) -> Option<i64> {
        use chrono::Timelike;
        let minute = wall.with_second(0)?.with_nanosecond(0)?;
        (1..=24 * 60).find_map(|m| {
            self.tz
                .from_local_datetime(&(minute + chrono::Duration::minutes(m)))
                .earliest()
                .map(|t| t.timestamp())
        })
    }
}

/// One upcoming run of a schedule (`forgetd rules next`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Upcoming {
    /// Unix seconds.
    pub at: i64,
    /// The wall-clock time in the rule's zone, RFC 3339 with its offset.
    pub local: String,
    /// The same moment in UTC.
    pub utc: String,
    /// Set when a DST change moves this run: the named time is skipped (it runs at the jump),
    /// occurs twice (it runs at the first), or the zone's offset changed since the run before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
}

impl Schedule {
    /// The next `count` runs strictly after `from`, each with its DST note.
    pub fn upcoming(&self, from: i64, count: usize) -> Vec<Upcoming> {
        use chrono::offset::LocalResult;
        use chrono::{Offset, SecondsFormat};
        let offset_at = |t: i64| {
            Utc.timestamp_opt(t, 0)
                .single()
                .map(|u| u.with_timezone(&self.tz).offset().fix())
        };
        let mut out = Vec::with_capacity(count);
        let (mut after, mut offset_before) = (from, offset_at(from));
        while out.len() < count {
            let Some(at) = self.next_after(after) else {
                break;
            };
            let Some(utc) = Utc.timestamp_opt(at, 0).single() else {
                break;
            };
            let local = utc.with_timezone(&self.tz);
            let wall = local.naive_local();
            let offset = local.offset().fix();
            let named = self
                .cron
                .is_time_matching(&Utc.from_utc_datetime(&wall))
                .unwrap_or(true);
            let dst = if !named {
                Some("the time the schedule names does not exist this day (the clocks jump forward): it runs once, at the jump".to_string())
            } else if matches!(
                self.tz.from_local_datetime(&wall),
                LocalResult::Ambiguous(..)
            ) {
                Some("this time occurs twice this day (the clocks go back): it runs once, at the first".to_string())
            } else if offset_before.is_some_and(|b| b != offset) {
                Some(format!(
                    "the zone's UTC offset changes to {offset} before this run (it keeps its wall-clock time)"
                ))
            } else {
                None
            };
            out.push(Upcoming {
                at,
                local: local.to_rfc3339_opts(SecondsFormat::Secs, false),
                utc: utc.to_rfc3339_opts(SecondsFormat::Secs, true),
                dst,
            });
            after = at;
            offset_before = Some(offset);
        }
        out
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
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
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
        chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()
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

    /// The rule runs the scheduler would make from `from` to `to`, looking every minute (as the
    /// daemon would, on time), each run recorded as the rule's last run.
    fn simulate(expr: &str, tz: &str, from: &str, to: &str) -> Vec<i64> {
        let s = Schedule::parse(expr, tz).unwrap();
        let (mut now, end) = (ts(from), ts(to));
        let created = now;
        let mut last = None;
        let mut ran = Vec::new();
        while now <= end {
            if due(&s, last, created, now) == Due::Now {
                ran.push(now);
                last = Some(now);
            }
            now += 60;
        }
        ran
    }

    #[test]
    fn a_daily_rule_runs_exactly_once_on_every_dst_day_whatever_its_time() {
        // (zone, a day before a transition, two days after it)
        let transitions = [
            // Spring forward, northern: 02:00 -> 03:00.
            (
                "Europe/Berlin",
                "2026-03-28T00:00:00Z",
                "2026-03-30T23:00:00Z",
            ),
            (
                "America/New_York",
                "2026-03-07T06:00:00Z",
                "2026-03-10T04:00:00Z",
            ),
            // Fall back, northern: 03:00 -> 02:00 (Berlin), 02:00 -> 01:00 (New York).
            (
                "Europe/Berlin",
                "2026-10-24T00:00:00Z",
                "2026-10-26T23:00:00Z",
            ),
            (
                "America/New_York",
                "2026-10-31T05:00:00Z",
                "2026-11-03T05:00:00Z",
            ),
            // Southern hemisphere: Sydney falls back in April, springs forward in October.
            (
                "Australia/Sydney",
                "2026-04-03T14:00:00Z",
                "2026-04-06T14:00:00Z",
            ),
            (
                "Australia/Sydney",
                "2026-10-02T14:00:00Z",
                "2026-10-05T14:00:00Z",
            ),
            // A 30-minute shift: Lord Howe, 02:00 -> 02:30 in October, 02:00 -> 01:30 in April.
            (
                "Australia/Lord_Howe",
                "2026-10-02T14:00:00Z",
                "2026-10-05T14:00:00Z",
            ),
            (
                "Australia/Lord_Howe",
                "2026-04-03T14:00:00Z",
                "2026-04-06T14:00:00Z",
            ),
            // A zone that changed its rules: Sao Paulo kept DST until 2019, none since.
            (
                "America/Sao_Paulo",
                "2018-11-02T03:00:00Z",
                "2018-11-05T03:00:00Z",
            ),
            (
                "America/Sao_Paulo",
                "2019-11-01T03:00:00Z",
                "2019-11-04T03:00:00Z",
            ),
        ];
        for (tz, from, to) in transitions {
            let zone: Tz = tz.parse().unwrap();
            for (h, m) in [
                (0, 30),
                (1, 0),
                (1, 15),
                (1, 30),
                (1, 45),
                (1, 59),
                (2, 0),
                (2, 15),
                (2, 30),
                (2, 59),
                (3, 0),
                (4, 0),
                (12, 0),
            ] {
                let expr = format!("{m} {h} * * *");
                let ran = simulate(&expr, tz, from, to);
                // One run per local calendar day that the window covers whole.
                let mut days: Vec<chrono::NaiveDate> = ran
                    .iter()
                    .map(|t| {
                        Utc.timestamp_opt(*t, 0)
                            .unwrap()
                            .with_timezone(&zone)
                            .date_naive()
                    })
                    .collect();
                let n = days.len();
                days.dedup();
                assert_eq!(days.len(), n, "{tz} {expr}: two runs on one day: {ran:?}");
                assert!(n >= 2, "{tz} {expr}: {ran:?}");
            }
        }
    }

    #[test]
    fn a_skipped_time_runs_once_at_the_jump_and_times_before_it_keep_their_day() {
        // The cases: Europe/Berlin, 2026-03-29, 02:00 CET -> 03:00 CEST.
        for (expr, on_the_day) in [
            ("30 1 * * *", "2026-03-29T01:30:00+01:00"),
            ("0 1 * * *", "2026-03-29T01:00:00+01:00"),
            ("59 1 * * *", "2026-03-29T01:59:00+01:00"),
            ("30 2 * * *", "2026-03-29T03:00:00+02:00"),
        ] {
            let r = runs(expr, "Europe/Berlin", "2026-03-28T12:00:00Z", 2);
            assert_eq!(r[0], ts(on_the_day), "{expr}");
            let berlin: Tz = "Europe/Berlin".parse().unwrap();
            assert_eq!(
                Utc.timestamp_opt(r[1], 0)
                    .unwrap()
                    .with_timezone(&berlin)
                    .date_naive(),
                chrono::NaiveDate::from_ymd_opt(2026, 3, 30).unwrap(),
                "{expr}: the next run is the next day's: {r:?}"
            );
        }
        // A rule added at 01:25 for 01:15 runs the next day, not at the jump.
        let s = Schedule::parse("15 1 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            due(
                &s,
                None,
                ts("2026-03-29T01:25:00+01:00"),
                ts("2026-03-29T03:00:00+02:00")
            ),
            Due::At(ts("2026-03-30T01:15:00+02:00"))
        );
        // Several skipped times collapse into one run at the jump.
        let r = simulate(
            "*/15 * * * *",
            "Europe/Berlin",
            "2026-03-29T00:50:00Z",
            "2026-03-29T01:20:00Z",
        );
        assert_eq!(
            r,
            vec![ts("2026-03-29T01:00:00Z"), ts("2026-03-29T01:15:00Z")],
            "01:45 CET, then the jump for 02:00-03:00, then 03:15 CEST"
        );
    }

    #[test]
    fn an_interval_schedule_does_not_run_the_repeated_hour_again() {
        // 2026-10-25, Berlin: 02:00-02:59 happens twice; each wall-clock time runs once.
        let r = simulate(
            "*/30 * * * *",
            "Europe/Berlin",
            "2026-10-24T23:45:00Z",
            "2026-10-25T02:10:00Z",
        );
        assert_eq!(
            r,
            vec![
                ts("2026-10-25T02:00:00+02:00"),
                ts("2026-10-25T02:30:00+02:00"),
                ts("2026-10-25T03:00:00+01:00")
            ]
        );
        // A run that came late, in the repeated hour, does not make its time run again.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let late = ts("2026-10-25T02:10:00+01:00");
        assert_eq!(s.next_after(late), Some(ts("2026-10-26T02:30:00+01:00")));
    }

    #[test]
    fn upcoming_runs_say_which_a_dst_change_moves() {
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let r = s.upcoming(ts("2026-03-27T12:00:00Z"), 4);
        let at: Vec<&str> = r.iter().map(|u| u.local.as_str()).collect();
        assert_eq!(
            at,
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00"
            ]
        );
        assert!(r[0].dst.is_none());
        assert!(
            r[1].dst
                .as_deref()
                .unwrap()
                .contains("does not exist this day"),
            "{r:?}"
        );
        assert!(r[2].dst.is_none(), "{r:?}");
        assert_eq!(r[1].utc, "2026-03-29T01:00:00Z");
        let r = s.upcoming(ts("2026-10-24T12:00:00Z"), 2);
        assert!(
            r[0].dst.as_deref().unwrap().contains("occurs twice"),
            "{r:?}"
        );
        assert!(
            r[1].dst
                .as_deref()
                .unwrap()
                .contains("offset changes to +01:00"),
            "{r:?}"
        );
        let noon = Schedule::parse("0 12 * * *", "Europe/Berlin").unwrap();
        let r = noon.upcoming(ts("2026-03-28T13:00:00Z"), 2);
        assert!(
            r[0].dst
                .as_deref()
                .unwrap()
                .contains("offset changes to +02:00"),
            "{r:?}"
        );
        assert!(r[1].dst.is_none(), "{r:?}");
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
