//! The daemon: `forgetd run` and `forgetd run --once`.
//!
//! Start-up, in order, each step able to stop it with the right exit code before any work: the
//! config has a provider and every secret it names is readable (78), the database opens and passes
//! `PRAGMA quick_check`, the daemon lock is taken (75), every in-flight item returns to pending
//! (the lock proves no other worker holds a lease), the config's rules are synced, and only then
//! READY=1 goes to systemd.
//!
//! Running, four tasks share one cancellation token:
//! - intake: polls `PRAGMA data_version` (a cheap in-memory read) every 250 ms; when another
//!   connection committed, resolves new requests and wakes the executor. It also sends WATCHDOG=1
//!   (so a stuck loop is caught, not hidden by a timer) and a STATUS= summary every 10 s.
//! - scheduler: runs each retention rule when its cron schedule says, one run at a time; a run
//!   missed while the daemon was down is made up once (see [`crate::scheduler`]).
//! - executor: the lanes that delete (see [`crate::executor`]).
//! - signals: SIGTERM/SIGINT stop claiming, let in-flight batches finish within
//!   `shutdown_timeout`, return the rest to pending, STOPPING=1, exit 0. SIGHUP reloads and
//!   validates the config file; a bad one is logged and the old one kept; rules are re-synced.
//!   (Provider connections and limits take effect at the next start.)
//!
//! `--once` resolves, runs every rule once, drains the queue waiting out backoffs, and reports.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::audit::SubjectKey;
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::executor::{Executor, LaneEnd, Mode};
use crate::model::ProviderKind;
use crate::resolve::{Patience, Resolver};
use crate::store::lock::DaemonLock;
use crate::store::queue::ItemState;
use crate::store::{AsyncStore, Store};

const INTAKE_POLL: Duration = Duration::from_millis(250);
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// How often overdue requests are logged and the audit chain's head is written to the journal.
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// How often requests whose discovery failed are tried again.
const RESOLVE_RETRY: Duration = Duration::from_secs(30);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub once: bool,
    /// The config file to re-read on SIGHUP (with `db_override` applied again).
    pub config_path: Option<PathBuf>,
    pub db_override: Option<PathBuf>,
}

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

/// Everything a running daemon needs, set up by [`prepare`].
pub struct Prepared {
    pub config: Config,
    pub store: AsyncStore,
    pub executor: Arc<Executor>,
    pub resolver: Arc<Resolver>,
    _lock: DaemonLock,
}

/// Problems appear in JSON as their messages.
fn as_messages<S: serde::Serializer>(v: &[OnceProblem], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|p| p.to_string()))
}

/// Why `run --once` exits 1. Typed, so the exit decision never reads its own messages.
#[derive(Debug, thiserror::Error)]
pub enum OnceProblem {
    #[error("{0}")]
    Discovery(#[from] crate::resolve::DiscoveryFailed),
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

/// The checks and set-up that come before any work (see the module doc).
pub fn prepare(config: Config, clock: SharedClock) -> Result<Prepared> {
    if config.kinds().is_empty() {
        let tables: Vec<String> = ProviderKind::all()
            .map(|k| format!("[providers.{k}]"))
            .collect();
        return Err(ConfigError::Other(format!(
            "no provider is configured: `forgetd run` needs at least one of {} (the simulator is reachable only through `forgetd demo`)",
            tables.join(", ")
        ))
        .into());
    }
    config.verify_secrets()?;
    let mut store = Store::open(&config.database)
        .with_context(|| format!("opening {}", config.database.display()))?;
    store.quick_check()?;
    let lock = DaemonLock::acquire(&config.database)?;
    let released = store.release_all_in_flight()?;
    if released > 0 {
        tracing::info!(
            items = released,
            "returned in-flight items of a previous run to pending"
        );
    }
    for kind in ProviderKind::all() {
        store.set_provider_paused(kind, None, clock.now())?;
    }
    let (changed, removed) = store.sync_config_rules(&config.rules, clock.now())?;
    store.audit(
        clock.now(),
        "config.loaded",
        None,
        &serde_json::json!({"source": config.source, "rules_changed": changed, "rules_removed": removed}),
    )?;
    let key = SubjectKey::load(config.audit.subject_key.as_ref(), &config.database)
        .map_err(ConfigError::SubjectKey)?;
    let providers = crate::providers::build(&config.providers, clock.clone())?;
    let store = AsyncStore::spawn(store);
    let executor = Arc::new(Executor::new(
        &config,
        store.clone(),
        providers.clone(),
        clock.clone(),
    ));
    let resolver = Arc::new(Resolver {
        store: store.clone(),
        providers,
        key: Arc::new(key),
        clock: clock.clone(),
        deadline_secs: config.daemon.deadline.as_secs() as i64,
        retry: crate::executor::retry::RetryPolicy::new(&config.retry),
    });
    Ok(Prepared {
        config,
        store,
        executor,
        resolver,
        _lock: lock,
    })
}

/// `run --once`: resolve, run every rule once, drain, report.
pub async fn run_once(p: &Prepared) -> Result<OnceReport> {
    let mut report = OnceReport::default();
    let (n, failures) = p.resolver.resolve_received(Patience::Full).await?;
    report.resolved_requests = n;
    for f in failures {
        report.problems.push(f.into());
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
    let ends = p.executor.run(Mode::Once, CancellationToken::new()).await?;
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

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this is a no-op; an error only means systemd is not listening.
    let _ = sd_notify::notify(false, states);
}

/// `run`: the long-running daemon. Returns when SIGTERM or SIGINT arrives.
pub async fn run_forever(p: Prepared, options: RunOptions, clock: SharedClock) -> Result<()> {
    // Signal handlers go in first: a SIGHUP that arrives between READY=1 and their installation
    // would otherwise kill the process (the default action).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let cancel = CancellationToken::new();
    let Prepared {
        config,
        store,
        executor,
        resolver,
        _lock,
    } = p;
    let deadline_secs = Arc::new(std::sync::atomic::AtomicI64::new(
        config.daemon.deadline.as_secs() as i64,
    ));
    let shutdown_timeout = config.daemon.shutdown_timeout;

    let mut exec = {
        let (e, c) = (executor.clone(), cancel.clone());
        tokio::spawn(async move { e.run(Mode::Forever, c).await })
    };
    let sched = {
        let (r, s, c, cl) = (
            resolver.clone(),
            store.clone(),
            cancel.clone(),
            clock.clone(),
        );
        let e = executor.clone();
        tokio::spawn(
            async move { crate::scheduler::run_schedules(r, s, move || e.wake(), cl, c).await },
        )
    };
    let metrics = executor.metrics();
    metrics
        .heartbeat_ms
        .store(clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
    let http = match &config.http {
        Some(h) => {
            let listener = tokio::net::TcpListener::bind(h.listen)
                .await
                .with_context(|| format!("binding [http] listen = {}", h.listen))?;
            tracing::info!(listen = %h.listen, "serving /metrics and /healthz");
            let (m, st, pr) = (metrics.clone(), store.clone(), executor.providers());
            let (cl, d, c) = (clock.clone(), deadline_secs.clone(), cancel.clone());
            Some(tokio::spawn(async move {
                crate::metrics::serve(listener, m, st, pr, cl, d, c).await
            }))
        }
        None => None,
    };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!(database = %config.database.display(), providers = ?config.kinds(), "forgetd is running");

    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
    let mut last_version = None;
    let mut unresolved = false;
    let mut last_retry = std::time::Instant::now();
    let mut last_status = std::time::Instant::now() - STATUS_EVERY;
    let mut last_report = std::time::Instant::now() - REPORT_EVERY;
    let mut last_head: Option<(i64, String)> = None;
    let mut current = config;
    // Set when the executor ended on its own (it only ends when told to): the daemon then stops
    // with its error, so systemd restarts it and the journal says why, instead of an intake that
    // keeps accepting work no one deletes.
    let mut exec_ended = None;
    loop {
        tokio::select! {
            ended = &mut exec => { exec_ended = Some(ended); break }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break }
            _ = hup.recv() => {
                // systemd 253+ wants the reload's monotonic timestamp with RELOADING=1.
                match sd_notify::NotifyState::monotonic_usec_now() {
                    Ok(at) => notify(&[sd_notify::NotifyState::Reloading, at]),
                    Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
                }
                match reload(&options, &store, clock.now()).await {
                    Ok(new) => {
                        deadline_secs.store(new.daemon.deadline.as_secs() as i64, std::sync::atomic::Ordering::Relaxed);
                        current = new;
                        tracing::info!("SIGHUP: configuration reloaded and rules re-synced");
                        executor.wake();
                    }
                    Err(e) => tracing::error!(error = %crate::errors::render(&e), "SIGHUP: the new configuration is invalid; keeping the old one"),
                }
                notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = tokio::time::sleep(INTAKE_POLL) => {
                // The intake loop is the daemon's heartbeat: if it stalls, systemd's watchdog fires.
                if watchdog {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
                metrics.heartbeat_ms.store(clock.now_ms(), std::sync::atomic::Ordering::Relaxed);
                let version = store.call(|s| s.data_version()).await?;
                // New rows from another connection, or requests whose discovery failed earlier.
                if last_version != Some(version) || (unresolved && last_retry.elapsed() >= RESOLVE_RETRY) {
                    last_version = Some(version);
                    last_retry = std::time::Instant::now();
                    let (n, failures) = resolver.resolve_received(Patience::Brief).await?;
                    unresolved = !failures.is_empty();
                    if n > 0 {
                        executor.wake();
                    }
                }
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = std::time::Instant::now();
                    let (now, d) = (clock.now(), deadline_secs.load(std::sync::atomic::Ordering::Relaxed));
                    let st = store.call(move |s| s.status(now, d)).await?;
                    let line = status_line(&st);
                    notify(&[sd_notify::NotifyState::Status(&line)]);
                    if last_report.elapsed() >= REPORT_EVERY {
                        last_report = std::time::Instant::now();
                        for o in &st.overdue {
                            tracing::warn!(request = o.id, due_at = o.due_at, "erasure request is overdue");
                        }
                        // The journal keeps the chain's head outside the database: rewriting the
                        // trail after this line would no longer match it.
                        let head = store.call(|s| s.audit_head()).await?;
                        if head.is_some() && head != last_head {
                            if let Some((seq, hash)) = &head {
                                tracing::info!(audit_seq = seq, audit_hash = %hash, "audit chain head");
                            }
                            last_head = head;
                        }
                    }
                }
            }
        }
    }
    let _ = current;
    let unexpected = exec_ended.is_some();
    notify(&[sd_notify::NotifyState::Stopping]);
    cancel.cancel();
    let _ = sched.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    let ended = match exec_ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(shutdown_timeout + Duration::from_secs(5), exec).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!("executor did not stop in time");
                Ok(Ok(Vec::new()))
            }
        },
    };
    let released = store.call(|s| s.release_all_in_flight()).await?;
    if released > 0 {
        tracing::info!(items = released, "returned unfinished items to pending");
    }
    match ended {
        Ok(Ok(_)) if unexpected => anyhow::bail!("the executor stopped unexpectedly"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(anyhow::Error::new(e).context("the executor stopped")),
        Err(e) => return Err(anyhow::Error::new(e).context("the executor task failed")),
    }
    tracing::info!("stopped");
    Ok(())
}

fn status_line(st: &crate::store::status::Status) -> String {
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
    line
}

async fn reload(options: &RunOptions, store: &AsyncStore, now: i64) -> Result<Config> {
    let Some(path) = &options.config_path else {
        anyhow::bail!("no config file was given at start; nothing to reload");
    };
    let mut config = Config::load(path)?;
    if let Some(db) = &options.db_override {
        config.database = db.clone();
    }
    let rules = config.rules.clone();
    let source = config.source.clone();
    store
        .call(move |s| -> Result<()> {
            let (changed, removed) = s.sync_config_rules(&rules, now)?;
            s.audit(now, "config.reloaded", None, &serde_json::json!({"source": source, "rules_changed": changed, "rules_removed": removed}))?;
            Ok(())
        })
        .await?;
    Ok(config)
}
