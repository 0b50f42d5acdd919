//! The status page: server-rendered HTML (maud escapes every value, so a feeder's ref cannot
//! become markup), one small script that swaps in a fresh body every [`super::REFRESH`], and one
//! stylesheet. Nothing is fetched from elsewhere; the page works offline.
//!
//! What it shows, most urgent first: requests by due date (overdue in red, due within 7 days in
//! amber), each provider's gate (running, throttled with the learned rate, paused with the reason
//! and next probe) and queue by state, the latest failures with their reasons, rules with their
//! next run and last result, and how many holds are active. Numbers carry `data-*` attributes
//! naming what they count, so the browser test reads them without parsing prose.

use maud::{DOCTYPE, Markup, html};
use serde::Serialize;

use crate::report::time;
use crate::store::queue::ItemState;
use crate::store::rules::RuleRow;
use crate::store::status::{OVERVIEW_REQUESTS, Overview, SOON_SECS};

/// Everything one rendering needs, read at one instant.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Unix seconds the snapshot was taken.
    pub now: i64,
    #[serde(flatten)]
    pub overview: Overview,
    pub rules: Vec<RuleLine>,
    /// The providers this daemon is configured for (shown even before their first call).
    pub configured: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RuleLine {
    pub name: String,
    pub provider: String,
    pub scope: String,
    pub schedule: String,
    pub timezone: String,
    pub max_age: String,
    /// The next occurrence after now (unix seconds), when the schedule parses.
    pub next_run: Option<i64>,
    /// How a DST change moves that run, when it does (`forgetd rules next` says the same).
    pub next_run_dst: Option<String>,
    pub last_run_at: Option<i64>,
    /// Matched chats of a run waiting for `rules approve`.
    pub awaiting_matched: Option<u64>,
}

impl Snapshot {
    /// Every provider worth a row: configured ones, and any with items or a gate record.
    pub fn provider_names(&self) -> Vec<String> {
        let st = &self.overview.status;
        let mut names: std::collections::BTreeSet<String> =
            self.configured.iter().cloned().collect();
        names.extend(st.items.keys().cloned());
        names.extend(st.gates.iter().map(|g| g.provider.clone()));
        names.into_iter().collect()
    }

    pub fn new(overview: Overview, rules: Vec<RuleRow>, configured: Vec<String>, now: i64) -> Self {
        let rules = rules
            .into_iter()
            .map(|r| {
                let next = crate::schedule::Schedule::parse(&r.schedule, &r.timezone)
                    .ok()
                    .and_then(|s| s.upcoming(now, 1).pop());
                RuleLine {
                    next_run: next.as_ref().map(|u| u.at),
                    next_run_dst: next.and_then(|u| u.dst),
                    name: r.name,
                    provider: r.provider.to_string(),
                    scope: r.scope,
                    schedule: r.schedule,
                    timezone: r.timezone,
                    max_age: r.max_age,
                    last_run_at: r.last_run_at,
                    awaiting_matched: r
                        .awaiting_approval
                        .filter(|_| !r.approved)
                        .and(r.awaiting_matched),
                }
            })
            .collect();
        Self {
            now,
            overview,
            rules,
            configured,
        }
    }
}

/// The script: fetch the fragment, swap it in, count refreshes, mark the page stale on failure.
pub const SCRIPT: &str = r#""use strict";
// forgetd status page: refreshes the body in place, without reloading the page.
(function () {
  var body = document.body;
  var every = Number(body.dataset.refreshMs) || 5000;
  // The next refresh is planned only once this one answered: a slow daemon is never asked twice.
  function refresh() {
    fetch("/status/fragment", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        document.getElementById("main").innerHTML = text;
        body.dataset.refreshes = String(Number(body.dataset.refreshes || 0) + 1);
        body.classList.remove("stale");
      })
      .catch(function () { body.classList.add("stale"); })
      .then(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
"#;

pub const STYLE: &str = r#"
:root { font-family: system-ui, sans-serif; color: #1d1d1f; background: #fafafa; }
body { margin: 1.5rem auto; max-width: 72rem; padding: 0 1rem; }
body.stale #asof::after { content: " (not updating: the daemon does not answer)"; color: #b3261e; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
#asof { color: #555; font-size: .9rem; margin: 0 0 1rem; }
.tiles { display: flex; gap: .8rem; flex-wrap: wrap; }
.tile { background: #fff; border: 1px solid #ddd; border-radius: .4rem; padding: .6rem .9rem; min-width: 9rem; }
.tile b { display: block; font-size: 1.5rem; }
.tile.bad { border-color: #b3261e; color: #b3261e; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #eee; font-size: .92rem; }
th { background: #f0f0f0; }
tr.overdue td { background: #fde7e6; color: #8c1d18; }
tr.soon td { background: #fff4d6; color: #6b4f00; }
.state-paused { color: #b3261e; font-weight: 600; }
.state-throttled { color: #8a5a00; font-weight: 600; }
.state-running { color: #1b6e2d; }
.muted { color: #777; }
@media print { body.stale #asof::after { content: ""; } }
"#;

/// The whole page.
pub fn full(s: &Snapshot) -> String {
    let refresh_ms = super::REFRESH.as_millis() as u64;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "forgetd status" }
                link rel="stylesheet" href="/status.css";
                script src="/status.js" defer {}
            }
            body data-refresh-ms=(refresh_ms) data-refreshes="0" {
                h1 { "forgetd" }
                main id="main" { (body(s)) }
            }
        }
    }
    .into_string()
}

/// The body alone, which the script swaps in.
pub fn fragment(s: &Snapshot) -> String {
    body(s).into_string()
}

fn when(ts: i64, now: i64) -> String {
    if ts <= now {
        format!("{} ({} ago)", time(ts), rough(now - ts))
    } else {
        format!("{} (in {})", time(ts), rough(ts - now))
    }
}

/// A span to the precision a glance needs: "2d 23h", "5h 4m", "12m", "40s".
fn rough(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (d, h, _) if d > 0 => format!("{d}d {h}h"),
        (_, h, m) if h > 0 => format!("{h}h {m}m"),
        (_, _, m) if m > 0 => format!("{m}m"),
        _ => format!("{s}s"),
    }
}

fn body(s: &Snapshot) -> Markup {
    let st = &s.overview.status;
    let now = s.now;
    html! {
        p id="asof" data-now=(now) { "as of " (time(now)) }
        div class="tiles" {
            div class={ "tile" @if !st.overdue.is_empty() { " bad" } } {
                b data-count="overdue" { (st.overdue.len()) } "overdue requests"
            }
            div class="tile" { b data-count="due-soon" { (st.due_soon.len()) } "due within 7 days" }
            div class="tile" { b data-count="open" { (s.overview.open_total) } "open requests" }
            div class={ "tile" @if st.dead_items > 0 { " bad" } } {
                b data-count="dead" { (st.dead_items) } "dead items"
            }
            div class="tile" { b data-count="holds" { (s.overview.active_holds) } "active holds" }
            div class={ "tile" @if st.listings.failed_total > 0 { " bad" } } {
                b data-count="listings-failed" { (st.listings.failed_total) } "failed listings by subject"
            }
            div class="tile" {
                b data-count="oldest-pending" {
                    @match st.oldest_pending_age_secs { Some(a) => (rough(a)), None => "none" }
                }
                "oldest pending item"
            }
        }
        h2 { "Requests by due date" }
        @if s.overview.open_requests.is_empty() {
            p class="muted" { "No open requests." }
        } @else {
            table id="requests" {
                tr { th { "id" } th { "ref" } th { "state" } th { "due" } th { "chats left" } }
                @for r in &s.overview.open_requests {
                    @let class = if r.due_at <= now { "overdue" } else if r.due_at <= now + SOON_SECS { "soon" } else { "" };
                    tr class=(class) data-request=(r.id) {
                        td { (r.id) }
                        td { (r.external_ref.as_deref().unwrap_or("—")) }
                        td { (r.state) }
                        td { (when(r.due_at, now)) }
                        td data-left=(r.items_left) { (r.items_left) " of " (r.items) }
                    }
                }
            }
            @if s.overview.open_total as usize > s.overview.open_requests.len() {
                p class="muted" {
                    "The " (OVERVIEW_REQUESTS) " soonest due of " (s.overview.open_total)
                    "; `forgetd requests list` has them all."
                }
            }
        }
        h2 { "Providers" }
        table id="providers" {
            tr {
                th { "provider" } th { "gate" }
                @for state in ItemState::ALL { th { (state.as_str()) } }
            }
            @for provider in s.provider_names() {
                tr data-provider=(provider) {
                    td { (provider) }
                    td { (gate_cell(s, &provider)) }
                    @for state in ItemState::ALL {
                        td data-count=(format!("{provider}:{}", state.as_str())) {
                            (st.items.get(&provider).map(|c| c.get(state)).unwrap_or(0))
                        }
                    }
                }
            }
        }
        h2 { "Latest failures" }
        @if s.overview.failures.is_empty() {
            p class="muted" { "None." }
        } @else {
            table id="failures" {
                tr { th { "when" } th { "provider" } th { "state" } th { "attempts" } th { "reason" } }
                @for f in &s.overview.failures {
                    tr {
                        td { (when(f.at, now)) }
                        td { (f.provider) }
                        td { @if f.state == "dead" { "dead" } @else { "retrying" } }
                        td { (f.attempts) }
                        td { (f.error) }
                    }
                }
            }
        }
        @if !st.listings.failed.is_empty() {
            h2 { "Listings by subject that failed" }
            p class="muted" {
                "Their requests end failed: chats these listings would find may remain. Fix the cause, then `forgetd requests retry ID`."
            }
            table id="listings-failed" {
                tr { th { "when" } th { "request" } th { "ref" } th { "provider / scope" } th { "reason" } }
                @for l in &st.listings.failed {
                    tr data-request=(l.request_id) {
                        td { @match l.finished_at { Some(t) => (when(t, now)), None => "—" } }
                        td { (l.request_id) }
                        td { (l.external_ref.as_deref().unwrap_or("—")) }
                        td { (l.provider) " / " (l.scope) }
                        td { (l.reason.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        h2 { "Rules" }
        @if s.rules.is_empty() {
            p class="muted" { "No retention rules." }
        } @else {
            table id="rules" {
                tr { th { "rule" } th { "provider / scope" } th { "max age" } th { "schedule" } th { "next run" } th { "last run" } }
                @for r in &s.rules {
                    tr data-rule=(r.name) {
                        td { (r.name) }
                        td { (r.provider) " / " (r.scope) }
                        td { (r.max_age) }
                        td { (r.schedule) " (" (r.timezone) ")" }
                        td {
                            @match r.next_run { Some(t) => (when(t, now)), None => "—" }
                            @if let Some(d) = &r.next_run_dst { br; span class="dst" data-dst=(r.name) { "DST: " (d) } }
                        }
                        td {
                            @match r.last_run_at { Some(t) => (when(t, now)), None => "never" }
                            @if let Some(run) = s.overview.last_runs.get(&r.name) {
                                br;
                                span data-last-run=(r.name) {
                                    "matched " (run.matched) ", queued " (run.enqueued) ", held " (run.held)
                                    @if let Some(o) = &run.outcome { " (" (o) ")" }
                                }
                            }
                            @if let Some(n) = r.awaiting_matched {
                                br; strong { "waiting for approval: " (n) " chats matched (forgetd rules approve " (r.name) ")" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn gate_cell(s: &Snapshot, provider: &str) -> Markup {
    let st = &s.overview.status;
    let now_ms = s.now * 1000;
    let gate = st.gates.iter().find(|g| g.provider == provider);
    let paused = st.paused_providers.iter().find(|p| p.provider == provider);
    html! {
        @if let Some(p) = paused {
            span class="state-paused" data-gate="paused" { "paused" }
            ": " (p.reason)
            @if let Some(next) = gate.and_then(|g| g.next_probe_ms) {
                "; next probe " (when(next / 1000, s.now))
            }
        } @else if let Some(g) = gate {
            @let throttled = g.resume_at_ms.is_some_and(|t| t > now_ms) || g.state == "throttled";
            @if throttled {
                span class="state-throttled" data-gate="throttled" { "throttled" }
            } @else {
                span class="state-running" data-gate="running" { "running" }
            }
            @if let Some(rate) = g.rate_per_s {
                ", " (format!("{rate:.1}")) " calls/s" @if g.rate_learned { " (learned)" }
            }
            ", concurrency " (g.concurrency) "/" (g.max_concurrency)
            @if g.throttles > 0 { ", " (g.throttles) " throttled answer(s)" }
        } @else {
            span class="muted" data-gate="unknown" { "not started yet" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_provider_has_a_row_before_its_first_call() {
        let snap = Snapshot::new(
            Overview::default(),
            Vec::new(),
            vec!["koosearch".into(), "convai".into()],
            1_800_000_000,
        );
        let page = full(&snap);
        for p in ["convai", "koosearch"] {
            assert!(
                page.contains(&format!("<tr data-provider=\"{p}\">")),
                "{page}"
            );
            assert!(
                page.contains(&format!("data-count=\"{p}:pending\">0<")),
                "{page}"
            );
        }
        assert_eq!(page.matches("not started yet").count(), 2);
        assert!(page.contains("No open requests.") && page.contains("No retention rules."));
    }

    #[test]
    fn a_rule_whose_next_run_a_dst_change_moves_says_so() {
        let (_d, mut store) = crate::store::testing::temp_store();
        let rule = crate::config::RuleSpec {
            name: "nightly".into(),
            provider: crate::model::ProviderKind::CONVAI,
            scope: "*".into(),
            max_age: std::time::Duration::from_secs(86_400),
            schedule: "30 2 * * *".into(),
            timezone: "Europe/Berlin".into(),
            discover: false,
            max_deletions: 10,
        };
        store.add_rule(&rule, 1).unwrap();
        // 2026-03-28 12:00 UTC: the next 02:30 does not exist in Berlin (the clocks jump).
        let snap = Snapshot::new(
            Overview::default(),
            store.list_rules().unwrap(),
            vec!["convai".into()],
            1_774_699_200,
        );
        let page = full(&snap);
        assert!(page.contains("data-dst=\"nightly\""), "{page}");
        assert!(page.contains("runs once, at the jump"), "{page}");
        // A day later, the next run is an ordinary one.
        let snap = Snapshot::new(
            Overview::default(),
            store.list_rules().unwrap(),
            vec!["convai".into()],
            1_774_699_200 + 86_400,
        );
        assert!(!full(&snap).contains("data-dst="));
    }

    #[test]
    fn spans_are_rounded_for_a_glance() {
        assert_eq!(super::rough(3 * 86_400 - 4), "2d 23h");
        assert_eq!(super::rough(5 * 3600 + 4 * 60 + 9), "5h 4m");
        assert_eq!(super::rough(12 * 60 + 59), "12m");
        assert_eq!(super::rough(40), "40s");
        assert_eq!(super::rough(-5), "0s");
    }
}
