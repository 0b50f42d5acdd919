//! Human-readable text for the CLI's non-JSON output. Pure functions of the data, so they are
//! tested without a terminal. No secret ever reaches these types.
//!
//! Text from outside (a feeder's reference, hold reason, IDs; a provider's error) may carry
//! control characters: an ESC sequence recolours or retitles the operator's terminal. Every value
//! from outside is shown through [`one_line`] (every control character escaped), and everything
//! the CLI prints passes [`terminal_safe`] (every control character but newline and tab escaped).

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use crate::store::holds::Hold;
use crate::store::requests::{RequestDetail, RequestSummary};
use crate::store::rules::RuleRow;
use crate::store::status::{GateRow, Status};

/// Whether `c` is shown escaped: C0 and C1 controls, DEL, and the bidirectional overrides that
/// reorder what a terminal shows.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_into(out: &mut String, c: char) {
    let n = c as u32;
    if n < 0x100 {
        let _ = write!(out, "\\x{n:02x}");
    } else {
        let _ = write!(out, "\\u{{{n:x}}}");
    }
}

/// `text` for a terminal: every control character except newline and tab escaped (`\x1b`).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c != '\n' && c != '\t' && unsafe_char(c))
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c != '\n' && c != '\t' && unsafe_char(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A value from outside on one line: every control character escaped, newlines included.
pub fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            escape_into(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

pub fn time(ts: i64) -> String {
    // RFC 3339 ends at 9999-12-31T23:59:59Z; a feeder that writes milliseconds goes past it.
    if !(0..=253_402_300_799).contains(&ts) {
        return ts.to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(ts as u64)).to_string()
}

pub fn ago(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(secs.max(0) as u64)).to_string()
}

pub fn status_text(st: &Status, now: i64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "queue (work items by provider):");
    if st.items.is_empty() {
        let _ = writeln!(o, "  empty");
    }
    for (provider, counts) in &st.items {
        let parts: Vec<String> = counts
            .by_state()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        let _ = writeln!(o, "  {provider:<10} {}", parts.join(", "));
    }
    let parts: Vec<String> = st
        .requests
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let _ = writeln!(
        o,
        "requests: {}",
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    );
    if let Some(age) = st.oldest_pending_age_secs {
        let _ = writeln!(o, "oldest pending item: {} old", ago(age));
    }
    let _ = writeln!(o, "dead items: {}", st.dead_items);
    for d in &st.overdue {
        let _ = writeln!(
            o,
            "OVERDUE request {} (ref {}): due {} ({} ago), {}",
            d.id,
            one_line(d.external_ref.as_deref().unwrap_or("-")),
            time(d.due_at),
            ago(now - d.due_at),
            d.state
        );
    }
    for d in &st.due_soon {
        let _ = writeln!(
            o,
            "due soon: request {} (ref {}): due {}, {}",
            d.id,
            one_line(d.external_ref.as_deref().unwrap_or("-")),
            time(d.due_at),
            d.state
        );
    }
    for p in &st.paused_providers {
        let _ = writeln!(o, "PAUSED provider {}: {}", p.provider, one_line(&p.reason));
    }
    let l = &st.listings;
    if l.pending > 0 {
        let _ = writeln!(
            o,
            "listings by subject to come: {} ({} after a failed try)",
            l.pending, l.retrying
        );
    }
    if l.failed_total > 0 {
        let _ = writeln!(
            o,
            "FAILED listings by subject: {} (their requests end failed; chats they would find may remain)",
            l.failed_total
        );
    }
    for f in &l.failed {
        let _ = writeln!(
            o,
            "  request {} (ref {}): {} {}: {}; `forgetd requests retry {}` asks again",
            f.request_id,
            one_line(f.external_ref.as_deref().unwrap_or("-")),
            f.provider,
            one_line(&f.scope),
            one_line(f.reason.as_deref().unwrap_or("")),
            f.request_id
        );
    }
    if !st.gates.is_empty() {
        let _ = writeln!(o, "providers (politeness gate, as the daemon last saw it):");
    }
    for g in &st.gates {
        let _ = writeln!(o, "  {}", gate_line(g, now));
    }
    if !st.instances.is_empty() {
        let _ = writeln!(o, "instances on this queue:");
    }
    for i in &st.instances {
        let _ = writeln!(
            o,
            "  {} on {} (pid {}, {}): {}, heartbeat {} ms ago; {} chat(s) in flight in {} batch(es)",
            i.id,
            i.host,
            i.pid,
            i.version,
            if i.alive {
                "alive"
            } else {
                "SILENT (to be rescued)"
            },
            i.heartbeat_age_ms,
            i.items_in_flight,
            i.open_batches
        );
    }
    for r in &st.rules_awaiting_approval {
        let _ = writeln!(
            o,
            "rule {r} is waiting for `forgetd rules approve {r}` (its run exceeded max_deletions)"
        );
    }
    let v = &st.verification;
    if v.verified_absent + v.waiting + v.unverified + v.reappeared > 0 {
        let _ = writeln!(
            o,
            "read back (deleted chats): {} absent, {} waiting, {} UNVERIFIED; {} reappearance(s) after a confirmed deletion",
            v.verified_absent, v.waiting, v.unverified, v.reappeared
        );
    }
    o
}

/// One provider's gate: state, rate (learned or configured), concurrency, when it was seen.
pub fn gate_line(g: &GateRow, now: i64) -> String {
    let mut line = format!("{:<10} {}", g.provider, g.state);
    if let Some(at) = g.resume_at_ms.filter(|_| g.state == "throttled") {
        let _ = write!(line, " until {}", time(at.div_euclid(1000)));
    }
    if let Some(at) = g.next_probe_ms.filter(|_| g.state == "paused") {
        let _ = write!(line, ", next probe {}", time(at.div_euclid(1000)));
    }
    match (g.rate_per_s, g.rate_learned) {
        (Some(r), true) => {
            let _ = write!(line, ", learned rate {r:.1} calls/s");
        }
        (Some(r), false) => {
            let _ = write!(line, ", rate {r:.1} calls/s (requests_per_second)");
        }
        (None, _) => line.push_str(", no rate limit (none configured, never throttled)"),
    }
    let _ = write!(
        line,
        ", concurrency {}/{}, {} throttled answer(s)",
        g.concurrency, g.max_concurrency, g.throttles
    );
    if let Some(at) = g.updated_ms {
        let _ = write!(line, " (seen {} ago)", ago(now - at.div_euclid(1000)));
    }
    line
}

pub fn requests_text(list: &[RequestSummary], now: i64) -> String {
    let mut o = String::new();
    if list.is_empty() {
        o.push_str("no erasure requests\n");
    }
    for r in list {
        let overdue = if r.due_at <= now && !matches!(r.state, crate::model::RequestState::Complete)
        {
            " OVERDUE"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "{:>6}  {:<12} ref {:<24} due {}{overdue}  items: {} deleted, {} held, {} dead, {} open",
            r.id,
            r.state.as_str(),
            one_line(r.external_ref.as_deref().unwrap_or("-")),
            time(r.due_at),
            r.items.deleted,
            r.items.held,
            r.items.dead,
            r.items.pending + r.items.in_flight
        );
    }
    o
}

pub fn request_detail_text(d: &RequestDetail, now: i64) -> String {
    let s = &d.summary;
    let mut o = String::new();
    let _ = writeln!(o, "request {} ({})", s.id, s.state);
    let _ = writeln!(
        o,
        "  ref:       {}",
        one_line(s.external_ref.as_deref().unwrap_or("-"))
    );
    let _ = writeln!(o, "  received:  {}", time(s.received_at));
    let _ = writeln!(
        o,
        "  due:       {}{}",
        time(s.due_at),
        if s.due_at <= now && s.completed_at.is_none() {
            " (OVERDUE)"
        } else {
            ""
        }
    );
    if let Some(t) = s.resolved_at {
        let _ = writeln!(o, "  resolved:  {}", time(t));
    }
    if let Some(t) = s.completed_at {
        let _ = writeln!(o, "  finished:  {}", time(t));
    }
    if let Some(t) = s.verified_at {
        let _ = writeln!(
            o,
            "  verified:  {} (every deleted chat read back absent)",
            time(t)
        );
    }
    if !d.listings.is_empty() {
        let _ = writeln!(o, "  listings by subject ({}):", d.listings.len());
        for l in &d.listings {
            let mut line = format!("    {} {}  {}", l.provider, one_line(&l.scope), l.state);
            match l.state.as_str() {
                "done" => {
                    let _ = write!(line, ", found {}", l.found);
                }
                "failed" => {
                    let _ = write!(
                        line,
                        " after {} attempt(s): {} (chats this listing would find may remain; `forgetd requests retry {}` asks again)",
                        l.attempts,
                        one_line(l.last_error.as_deref().unwrap_or("")),
                        s.id
                    );
                }
                _ => {
                    if let Some(e) = &l.last_error {
                        let _ = write!(
                            line,
                            ", {} failed attempt(s), next {}; last error: {}",
                            l.attempts,
                            l.next_at.map(time).unwrap_or_else(|| "now".into()),
                            one_line(e)
                        );
                    }
                }
            }
            let _ = writeln!(o, "{line}");
        }
    }
    let _ = writeln!(o, "  items ({}):", d.items.len());
    for i in &d.items {
        let mut line = format!(
            "    {}/{}/{}  {}",
            i.provider,
            one_line(&i.scope),
            one_line(&i.session_id),
            i.state
        );
        if let Some(out) = i.outcome.as_deref().filter(|o| *o != i.state) {
            let _ = write!(line, " ({})", out.replace('_', " "));
        }
        if let Some(reason) = &i.hold_reason {
            let _ = write!(
                line,
                " hold {}: {}",
                i.hold_id.unwrap_or(0),
                one_line(reason)
            );
        }
        // A held chat's last error is history (a failed call, a read-back before the hold): the
        // hold is what decides it now.
        if !matches!(i.state.as_str(), "deleted" | "held")
            && let Some(e) = &i.last_error
        {
            let _ = write!(
                line,
                " attempts {}, last error: {}",
                i.attempts,
                one_line(e)
            );
        }
        if i.state == "deleted" {
            match i.verify_state.as_deref() {
                Some("verified_absent") => {
                    let _ = write!(
                        line,
                        ", read back absent {}",
                        i.verified_at.map(time).unwrap_or_default()
                    );
                }
                Some("unverified") => {
                    let _ = write!(
                        line,
                        ", UNVERIFIED: {}",
                        one_line(i.verify_error.as_deref().unwrap_or(""))
                    );
                }
                Some("not_checked") => {
                    line.push_str(", not read back (deleted before verification)")
                }
                _ => line.push_str(", not read back yet"),
            }
        }
        if i.reappeared > 0 {
            let _ = write!(
                line,
                " (reappeared {} time(s) after a confirmed deletion)",
                i.reappeared
            );
        }
        let _ = writeln!(o, "{line}");
    }
    o
}

pub fn rules_text(list: &[RuleRow]) -> String {
    let mut o = String::new();
    if list.is_empty() {
        o.push_str("no retention rules\n");
    }
    for r in list {
        let _ = writeln!(
            o,
            "{} (from {}): {} scope {} older than {}, schedule \"{}\" {}{}, ceiling {}{}",
            r.name,
            match r.origin {
                crate::store::rules::RuleOrigin::Config => "the config file",
                crate::store::rules::RuleOrigin::Cli => "the CLI",
            },
            r.provider,
            r.scope,
            r.max_age,
            r.schedule,
            r.timezone,
            if r.discover { ", discovers" } else { "" },
            r.max_deletions,
            match (r.awaiting_approval, r.approved) {
                (Some(_), false) => " — WAITING FOR APPROVAL",
                (Some(_), true) => " — approved, runs next time",
                _ => "",
            }
        );
    }
    o
}

pub fn holds_text(list: &[Hold]) -> String {
    let mut o = String::new();
    if list.is_empty() {
        o.push_str("no active holds\n");
    }
    for h in list {
        let target = match &h.subject {
            Some(s) => format!("subject {}", one_line(s)),
            None => format!(
                "chat {}/{}/{}",
                h.provider.as_deref().unwrap_or(""),
                one_line(h.scope.as_deref().unwrap_or("")),
                one_line(h.session_id.as_deref().unwrap_or(""))
            ),
        };
        let _ = writeln!(
            o,
            "{:>4}  {target}  since {}  covers {} known chat(s), holding {} queued item(s)  reason: {}",
            h.id,
            time(h.created_at),
            h.chats_covered,
            h.items_held,
            one_line(&h.reason)
        );
    }
    o
}

pub fn plan_text(p: &crate::resolve::Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plan for {}: {} chat(s) would be deleted, {} held",
        p.target, p.delete, p.held
    );
    if let Some(r) = &p.rule {
        let _ = writeln!(
            o,
            "  cutoff {} (created at or before is expired); {} matched",
            time(r.cutoff),
            r.matched
        );
    }
    for c in &p.chats {
        let mut line = format!(
            "  {:<16} {}/{}/{}",
            c.action,
            c.provider,
            one_line(&c.scope),
            one_line(&c.session_id)
        );
        if let Some(h) = &c.hold_reason {
            let _ = write!(line, "  (hold: {})", one_line(h));
        }
        let _ = writeln!(o, "{line}");
    }
    for n in &p.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

pub fn doctor_text(r: &crate::doctor::Report) -> String {
    let mut o = String::new();
    let mut checks = 0;
    for p in &r.providers {
        let _ = writeln!(o, "{}  {}", p.provider, p.address);
        for c in &p.checks {
            checks += 1;
            let _ = writeln!(o, "  {:<17} {}", c.class.as_str(), c.tried);
            if let Some(a) = &c.answer {
                let _ = writeln!(o, "  {:<17} answer: {a}", "");
            }
            if let Some(n) = &c.next {
                let _ = writeln!(o, "  {:<17} next: {n}", "");
            }
        }
        for n in &p.notes {
            let _ = writeln!(o, "  note: {n}");
        }
    }
    if r.passed {
        let _ = writeln!(
            o,
            "doctor: every check passed ({checks} check(s), {} provider(s)); nothing was deleted",
            r.providers.len()
        );
    } else {
        let _ = writeln!(
            o,
            "doctor: not every check passed: {}; nothing was deleted",
            r.failures().join(", ")
        );
    }
    o
}

/// One rule's upcoming runs (`forgetd rules next`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleRuns {
    pub rule: String,
    pub schedule: String,
    pub timezone: String,
    pub runs: Vec<crate::schedule::Upcoming>,
}

pub fn rule_runs_text(all: &[RuleRuns]) -> String {
    let mut o = String::new();
    if all.is_empty() {
        o.push_str("no rules\n");
    }
    for r in all {
        let _ = writeln!(
            o,
            "rule {}: \"{}\" in {}",
            one_line(&r.rule),
            one_line(&r.schedule),
            r.timezone
        );
        for u in &r.runs {
            let _ = write!(o, "  {}  ({})", u.local, u.utc);
            if let Some(d) = &u.dst {
                let _ = write!(o, "  DST: {d}");
            }
            o.push('\n');
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_outside_are_shown_escaped() {
        let hostile = "DSR-1\u{1b}]0;owned\u{7}\u{1b}[31mred\nsecond\u{202e}txt";
        assert_eq!(
            one_line(hostile),
            "DSR-1\\x1b]0;owned\\x07\\x1b[31mred\\x0asecond\\u{202e}txt"
        );
        assert_eq!(
            terminal_safe(hostile),
            "DSR-1\\x1b]0;owned\\x07\\x1b[31mred\nsecond\\u{202e}txt"
        );
        assert!(matches!(
            terminal_safe("plain\ttext\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        // C1's single-byte CSI too.
        assert_eq!(one_line("a\u{9b}31m"), "a\\x9b31m");
    }
    use crate::store::status::{DueRequest, PausedProvider};

    #[test]
    fn status_names_overdue_requests_paused_providers_and_held_rules() {
        let mut st = Status::default();
        st.items
            .entry("convai".into())
            .or_default()
            .add(crate::store::queue::ItemState::Pending, 3);
        st.overdue.push(DueRequest {
            id: 7,
            external_ref: Some("DSR-7".into()),
            due_at: 1_000,
            state: "in_progress".into(),
        });
        st.paused_providers.push(PausedProvider {
            provider: "koosearch".into(),
            reason: "IAM refused".into(),
            paused_at: Some(1),
        });
        st.rules_awaiting_approval.push("big-rule".into());
        let text = status_text(&st, 1_000 + 86_400);
        assert!(text.contains("convai     pending 3"), "{text}");
        assert!(
            text.contains("OVERDUE request 7 (ref DSR-7)") && text.contains("1day ago"),
            "{text}"
        );
        assert!(
            text.contains("PAUSED provider koosearch: IAM refused"),
            "{text}"
        );
        assert!(text.contains("forgetd rules approve big-rule"), "{text}");
    }

    #[test]
    fn status_shows_each_gate_with_its_learned_rate_or_its_pause() {
        let mut st = Status::default();
        let row = |provider: &str, state: &str| GateRow {
            provider: provider.into(),
            state: state.into(),
            rate_per_s: None,
            rate_learned: false,
            concurrency: 2,
            max_concurrency: 4,
            resume_at_ms: None,
            next_probe_ms: None,
            throttles: 0,
            updated_ms: Some(1_000_000),
        };
        st.gates.push(GateRow {
            rate_per_s: Some(9.43),
            rate_learned: true,
            resume_at_ms: Some(1_002_000),
            throttles: 12,
            ..row("convai", "throttled")
        });
        st.gates.push(GateRow {
            next_probe_ms: Some(1_030_000),
            ..row("koosearch", "paused")
        });
        let text = status_text(&st, 1_003);
        assert!(
            text.contains("convai     throttled until 1970-01-01T00:16:42Z, learned rate 9.4 calls/s, concurrency 2/4, 12 throttled answer(s) (seen 3s ago)"),
            "{text}"
        );
        assert!(
            text.contains("koosearch  paused, next probe 1970-01-01T00:17:10Z, no rate limit"),
            "{text}"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(ago(90), "1m 30s");
    }
}
