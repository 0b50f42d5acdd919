//! `run --once`: resolve every received request, run every rule once, drain the queue waiting
//! out backoffs, and say what is left. Its exit decision reads typed [`OnceProblem`]s, never
//! its own messages.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::executor::{LaneEnd, Mode};
use crate::model::ProviderKind;
use crate::resolve::Patience;
use crate::store::queue::ItemState;

/// The result of `run --once`.
#[derive(Debug, Default, serde::Serialize)]
pub struct OnceReport {
    pub resolved_requests: usize,
    pub rule_runs: Vec<crate::resolve::RuleRun>,
    pub stats: crate::executor::Stats,
    pub pending: u64,
    pub in_flight: u64,
    pub dead: u64,
    pub held: u64,
    /// Deleted chats not read back yet (their deletion is confirmed, not yet shown to hold).
    pub unread: u64,
    /// Why the run exits 1: items pending, in flight or dead, a paused provider, a failure.
    #[serde(serialize_with = "as_messages")]
    pub problems: Vec<OnceProblem>,
    /// Worth saying, but no reason to fail (a rule held by its ceiling, a rule of an unconfigured provider).
    pub warnings: Vec<String>,
}

impl OnceReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Problems appear in JSON as their messages.
fn as_messages<S: serde::Serializer>(v: &[OnceProblem], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|p| p.to_string()))
}

/// Why `run --once` exits 1. Typed, so the exit decision never reads its own messages.
#[derive(Debug, thiserror::Error)]
pub enum OnceProblem {
    #[error("{0}")]
    Listing(#[from] crate::resolve::ListingProblem),
    #[error("rule {rule}: {error:#}")]
    Rule { rule: String, error: anyhow::Error },
    #[error("provider {provider} is paused: {reason}")]
    Paused {
        provider: ProviderKind,
        reason: String,
    },
    #[error("{count} item(s) wait for provider {provider}, which is not configured")]
    Unconfigured { provider: String, count: u64 },
    #[error("{0} item(s) are dead (see `forgetd status` and `forgetd requests show ID`)")]
    Dead(u64),
    #[error("{0} item(s) are still in flight")]
    InFlight(u64),
    #[error("{0} item(s) are still pending")]
    Pending(u64),
}

/// `run --once`: resolve, run every rule once, drain, report.
pub(super) async fn run(p: &Daemon) -> Result<OnceReport> {
    // PostgreSQL: the heartbeat runs from the start (discovery can outlast five heartbeats);
    // a fence (this instance declared dead) stops the drain, since another instance now has
    // its claims.
    let fence = CancellationToken::new();
    let stop_beat = CancellationToken::new();
    let beat = p.config.database.sqlite_path().is_none().then(|| {
        super::spawn_heartbeat(
            p.store.clone(),
            p.executor.clone(),
            p.config.daemon.heartbeat,
            super::instance_ttl(&p.config),
            stop_beat.clone(),
            fence.clone(),
        )
    });
    let mut report = OnceReport::default();
    // The inventory may have changed since the last run: holds follow re-attributed chats.
    let now = p.clock.now();
    p.store.call(move |s| s.recheck_holds(now)).await?;
    report.resolved_requests = p.resolver.resolve_received().await?;
    // Every pending listing is asked now (a later try the daemon had scheduled included),
    // waiting out the retry policy; a paused provider's listing keeps waiting, and a pass that
    // only met such listings ends the asking.
    loop {
        let pass = p.resolver.discover_due(Patience::Full, false).await?;
        let settled = pass.done + pass.failed.len();
        for f in pass.failed.into_iter().chain(pass.retrying) {
            report.problems.push(f.into());
        }
        if settled == 0 {
            break;
        }
    }
    let rules = p.store.call(|s| s.list_rules()).await?;
    for rule in rules {
        if !p.config.kinds().contains(&rule.provider) {
            report.warnings.push(format!(
                "rule {} names provider {}, which is not configured; it did not run",
                rule.name, rule.provider
            ));
            continue;
        }
        match p.resolver.run_rule(&rule, Patience::Full).await {
            Ok(run) => {
                if run.awaiting_approval {
                    // Nothing was queued, so nothing is pending: a warning, not a failure.
                    report.warnings.push(format!(
                        "rule {} matched {} chats, more than its max_deletions ({}): nothing queued until `forgetd rules approve {}`",
                        rule.name, run.matched, rule.max_deletions, rule.name
                    ));
                }
                report.rule_runs.push(run);
            }
            Err(error) => report.problems.push(OnceProblem::Rule {
                rule: rule.name.clone(),
                error,
            }),
        }
    }
    let ends = p.executor.run(Mode::Once, fence.clone()).await;
    stop_beat.cancel();
    if let Some(beat) = beat {
        if let Ok(Err(e)) = beat.await {
            return Err(e);
        }
        p.store.call(|s| s.deregister_instance()).await?;
    }
    let ends = ends?;
    for (kind, end) in ends {
        if let LaneEnd::Paused(reason) = end {
            report.problems.push(OnceProblem::Paused {
                provider: kind,
                reason,
            });
        }
    }
    report.stats = p.executor.stats();
    let status = p.store.call(|s| s.status(0, 0)).await?;
    report.unread = status.verification.waiting;
    for (provider, counts) in &status.items {
        report.pending += counts.get(ItemState::Pending);
        report.in_flight += counts.get(ItemState::InFlight);
        report.dead += counts.get(ItemState::Dead);
        report.held += counts.get(ItemState::Held);
        let configured = provider
            .parse::<ProviderKind>()
            .is_ok_and(|k| p.config.kinds().contains(&k));
        if !configured && counts.get(ItemState::Pending) > 0 {
            report.problems.push(OnceProblem::Unconfigured {
                provider: provider.clone(),
                count: counts.get(ItemState::Pending),
            });
        }
    }
    if report.dead > 0 {
        report.problems.push(OnceProblem::Dead(report.dead));
    }
    // On a shared PostgreSQL queue the instances still working it hold what is in flight, and
    // will take what is pending: theirs to finish, not this run's failure.
    let others = status.instances.len();
    if others > 0 && report.in_flight + report.pending > 0 {
        report.warnings.push(format!(
            "{others} other instance(s) still work this queue: {} chat(s) in flight and {} pending are theirs to finish",
            report.in_flight, report.pending
        ));
        report.in_flight = 0;
        report.pending = 0;
    }
    if report.in_flight > 0 {
        report
            .problems
            .push(OnceProblem::InFlight(report.in_flight));
    }
    // Pending items behind a pause or a missing provider are already explained.
    let explained = report.problems.iter().any(|p| {
        matches!(
            p,
            OnceProblem::Paused { .. } | OnceProblem::Unconfigured { .. }
        )
    });
    if report.pending > 0 && !explained {
        report.problems.push(OnceProblem::Pending(report.pending));
    }
    Ok(report)
}
