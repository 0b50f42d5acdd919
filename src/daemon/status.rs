//! What the daemon says about itself while it runs: the systemd STATUS= line every 10 s, and
//! every 5 minutes the overdue requests and the audit chain's head in the journal (the journal
//! keeps the head outside the database: a rewritten trail would no longer match it).

use anyhow::Result;

use crate::clock::SharedClock;
use crate::store::AsyncStore;
use crate::store::queue::ItemState;

/// How often STATUS= is sent.
pub(super) const STATUS_EVERY_MS: i64 = 10_000;
/// How often overdue requests are logged and the audit head is written to the journal.
pub(super) const REPORT_EVERY_MS: i64 = 300_000;

/// The reporter's memory between ticks.
#[derive(Default)]
pub(super) struct Reporter {
    last_status_ms: Option<i64>,
    last_report_ms: Option<i64>,
    last_head: Option<(i64, String)>,
}

impl Reporter {
    /// Sends STATUS= and writes the periodic journal lines when they are due.
    pub(super) async fn tick(
        &mut self,
        store: &AsyncStore,
        clock: &SharedClock,
        deadline_secs: i64,
        metrics: &crate::metrics::Metrics,
    ) -> Result<()> {
        let now_ms = clock.now_ms();
        if self
            .last_status_ms
            .is_some_and(|t| now_ms - t < STATUS_EVERY_MS)
        {
            return Ok(());
        }
        self.last_status_ms = Some(now_ms);
        let now = clock.now();
        let st = store.call(move |s| s.status(now, deadline_secs)).await?;
        let line = status_line(&st);
        super::notify(&[sd_notify::NotifyState::Status(&line)]);
        if self
            .last_report_ms
            .is_some_and(|t| now_ms - t < REPORT_EVERY_MS)
        {
            return Ok(());
        }
        self.last_report_ms = Some(now_ms);
        for o in &st.overdue {
            tracing::warn!(
                request = o.id,
                due_at = o.due_at,
                "erasure request is overdue"
            );
        }
        let head = store.call(|s| s.audit_head()).await?;
        if head.is_some() && head != self.last_head {
            if let Some((seq, hash)) = &head {
                tracing::info!(audit_seq = seq, audit_hash = %hash, "audit chain head");
                metrics.audit_anchored_seq.set(*seq);
            }
            self.last_head = head;
        }
        Ok(())
    }
}

pub(super) fn status_line(st: &crate::store::status::Status) -> String {
    let sum = |state| st.total(state);
    let mut line = format!(
        "pending {}, in flight {}, deleted {}, held {}, dead {}; requests open {}",
        sum(ItemState::Pending),
        sum(ItemState::InFlight),
        sum(ItemState::Deleted),
        sum(ItemState::Held),
        sum(ItemState::Dead),
        st.requests.get("in_progress").copied().unwrap_or(0)
            + st.requests.get("received").copied().unwrap_or(0)
    );
    if !st.overdue.is_empty() {
        line.push_str(&format!(", {} OVERDUE", st.overdue.len()));
    }
    for p in &st.paused_providers {
        line.push_str(&format!("; {} PAUSED", p.provider));
    }
    for g in st
        .gates
        .iter()
        .filter(|g| g.state == "throttled" || g.rate_learned)
    {
        if let Some(r) = g.rate_per_s.filter(|_| g.rate_learned) {
            line.push_str(&format!(
                "; {} {} at {r:.1}/s (learned)",
                g.provider, g.state
            ));
        } else {
            line.push_str(&format!("; {} {}", g.provider, g.state));
        }
    }
    line
}
