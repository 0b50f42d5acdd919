//! The daemon: `forgetd run` and `forgetd run --once`.
//!
//! Start-up, in order, each step able to stop it with the right exit code before any work: the
//! config has a provider and every secret it names is readable (78), the database opens and passes
//! `PRAGMA quick_check`, the daemon lock is taken (75), every in-flight item returns to pending
//! (the lock proves no other worker holds a lease), the config's rules are synced, and only then
//! READY=1 goes to systemd.
//!
//! [`Daemon::build`] does those checks; [`Daemon::run_until`] runs until its control channel
//! says stop (mini-redis style: the shutdown is injected, so tests drive a real daemon without
//! signals). Running, the tasks share one cancellation token:
//! - `intake`: every 250 ms, resolves what feeders committed and wakes the executor; the same
//!   tick sends WATCHDOG=1 (a stuck loop is caught, not hidden by a timer) and `status`'s
//!   STATUS= line every 10 s, overdue requests and the audit head every 5 minutes.
//! - scheduler: runs each retention rule when its cron schedule says, one run at a time; a run
//!   missed while the daemon was down is made up once (see [`crate::scheduler`]).
//! - executor: the lanes that delete (see [`crate::executor`]).
//! - control ([`signals`] in production): Stop ends claiming, lets in-flight batches finish
//!   within `shutdown_timeout`, returns the rest to pending, STOPPING=1, returns. Reload
//!   (`reload`) re-reads and validates the config file; a bad one is logged and the old one
//!   kept; rules are re-synced. (Provider connections and limits take effect at the next start.)
//!
//! `once` is `--once`: resolve, run every rule once, drain waiting out backoffs, report.

mod intake;
mod once;
mod reload;
pub mod signals;
mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use once::{OnceProblem, OnceReport};
pub use signals::Control;

use crate::audit::SubjectKey;
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::executor::{Executor, ExecutorError, LaneEnd, Mode};
use crate::model::ProviderKind;
use crate::resolve::Resolver;
use crate::store::lock::DaemonLock;
use crate::store::{AsyncStore, Store};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub once: bool,
    /// The config file to re-read on SIGHUP (with `db_override` applied again).
    pub config_path: Option<PathBuf>,
    pub db_override: Option<crate::config::Database>,
}

/// A daemon ready to work: the checks of the module doc passed, the lock is held.
pub struct Daemon {
    pub config: Config,
    pub store: AsyncStore,
    pub executor: Arc<Executor>,
    pub resolver: Arc<Resolver>,
    clock: SharedClock,
    _lock: Option<DaemonLock>,
}

impl Daemon {
    /// The checks and set-up that come before any work (see the module doc).
    pub fn build(config: Config, clock: SharedClock) -> Result<Daemon> {
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
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
        let mut store = Store::connect(&config.database)
            .with_context(|| format!("opening {}", config.database))?;
        store.quick_check()?;
        // One daemon per SQLite file; PostgreSQL takes several instances (their claims lock rows).
        let lock = match config.database.sqlite_path() {
            Some(path) => Some(DaemonLock::acquire(path)?),
            None => {
                // An instance among others: its row, and the claims of any that died.
                store.register_instance(instance_ttl(&config))?;
                store.rescue_dead_instances()?;
                None
            }
        };
        // The chain key first: every link this process appends is sealed as it is written.
        let key = SubjectKey::load(
            config.audit.subject_key.as_ref(),
            config.database.sqlite_path(),
        )
        .map_err(ConfigError::SubjectKey)?;
        store.set_chain_key(key.chain_key());
        store.set_actor(crate::audit::Actor::Daemon);
        store.set_read_back(config.verify.after.is_some());
        // Links appended without the key since the last run (a feeder's CLI), and those of an
        // unkeyed chain from before schema 6, get their seals; finished requests whose closing
        // event was left to the daemon get it.
        let sealed = store.seal_late()?;
        if sealed.sealed > 0 {
            tracing::info!(
                links = sealed.sealed,
                "sealed audit links appended without the chain key"
            );
        }
        store.close_deferred(clock.now())?;
        // SQLite's lock proves no other worker holds a lease (on PostgreSQL this does nothing).
        let released = store.release_all_in_flight(clock.now())?;
        // Listings a crashed run had claimed are asked again at once (SQLite: the lock proves no
        // other resolver holds them; PostgreSQL: claims run out, or the rescuer frees them).
        store.release_listings(true)?;
        if released > 0 {
            tracing::info!(
                items = released,
                "returned in-flight items of a previous run to pending"
            );
        }
        for kind in ProviderKind::all() {
            store.set_provider_paused(kind, None, clock.now())?;
        }
        store.sync_config_rules(
            &config.rules,
            config.source.as_ref().map(|p| p.display().to_string()),
            crate::store::rules::ConfigSync::Start,
            clock.now(),
        )?;
        let providers = crate::providers::build(
            &config.providers,
            config.retry.max_retry_after,
            clock.clone(),
        )?;
        let store = AsyncStore::spawn(store);
        let executor = Arc::new(Executor::new(
            &config,
            store.clone(),
            providers.clone(),
            clock.clone(),
        ));
        let resolver = Arc::new(Resolver {
            store: store.clone(),
            listing_lease: Resolver::lease_for(&providers),
            providers,
            key: Arc::new(key),
            clock: clock.clone(),
            deadline_secs: config.daemon.deadline.as_secs() as i64,
            retry: crate::executor::retry::RetryPolicy::new(&config.retry),
        });
        Ok(Daemon {
            config,
            store,
            executor,
            resolver,
            clock,
            _lock: lock,
        })
    }

    /// `run --once`: see the `once` module.
    pub async fn run_once(&self) -> Result<OnceReport> {
        once::run(self).await
    }
}

/// How long an instance counts as alive without a heartbeat: five of them.
pub(crate) fn instance_ttl(config: &Config) -> std::time::Duration {
    config.daemon.heartbeat * 5
}

/// The instance heartbeat (PostgreSQL), beside the daemon's work until `cancel`: renews this
/// instance and rescues dead ones' claims. Ends with an error only when fenced (this instance was
/// declared dead): the caller must stop. A store that cannot be reached is retried next beat.
pub(crate) fn spawn_heartbeat(
    store: AsyncStore,
    executor: Arc<Executor>,
    every: std::time::Duration,
    ttl: std::time::Duration,
    cancel: CancellationToken,
    on_fence: CancellationToken,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            match store.call(move |s| s.instance_beat(ttl)).await {
                Ok(beat) => {
                    executor.share_limits(beat.live as usize);
                    if beat.rescued_items > 0 {
                        executor.wake();
                    }
                }
                Err(e @ crate::store::StoreError::Fenced { .. }) => {
                    on_fence.cancel();
                    return Err(e.into());
                }
                Err(e) => tracing::warn!(error = %e, "instance heartbeat failed; trying again"),
            }
        }
    })
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this is a no-op; an error only means systemd is not listening.
    let _ = sd_notify::notify(false, states);
}

impl Daemon {
    /// `run`: the long-running daemon, until `control` says stop (or closes). The CLI passes
    /// [`signals::install`]; tests pass their own channel.
    pub async fn run_until(
        self,
        options: RunOptions,
        mut control: mpsc::Receiver<Control>,
    ) -> Result<()> {
        let Daemon {
            config,
            store,
            executor,
            resolver,
            clock,
            _lock,
        } = self;
        // Every task stops on this one token: the executor, the scheduler, the HTTP listener.
        let cancel = CancellationToken::new();
        let deadline_secs = Arc::new(AtomicI64::new(config.daemon.deadline.as_secs() as i64));
        let shutdown_timeout = config.daemon.shutdown_timeout;
        // Sender: intake (another connection committed) and reload; receiver: the scheduler.
        let rules_changed = Arc::new(tokio::sync::Notify::new());
        // Sender: intake (requests resolved); receiver: the resolver task.
        let listings_due = Arc::new(tokio::sync::Notify::new());
        let signals = Signals {
            deadline_secs: deadline_secs.clone(),
            rules_changed: rules_changed.clone(),
            listings_due: listings_due.clone(),
            cancel: cancel.clone(),
        };
        let mut tasks =
            Tasks::spawn(&config, &store, &executor, &resolver, &clock, &signals).await?;
        // PostgreSQL: this instance's heartbeat; a fence stops the daemon (see `spawn_heartbeat`).
        let mut beat = config.database.sqlite_path().is_none().then(|| {
            spawn_heartbeat(
                store.clone(),
                executor.clone(),
                config.daemon.heartbeat,
                instance_ttl(&config),
                cancel.clone(),
                CancellationToken::new(),
            )
        });
        let mut fenced = None;
        let metrics = executor.metrics();
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("ready"),
        ]);
        tracing::info!(database = %config.database, providers = ?config.kinds(), "forgetd is running");

        let mut watchdog_usec = 0u64;
        let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec);
        let mut intake = intake::Intake::default();
        let mut reporter = status::Reporter::default();
        // Set when the executor ended on its own (it only ends when told to): the daemon then
        // stops with its error, so systemd restarts it and the journal says why, instead of an
        // intake that keeps accepting work no one deletes.
        let mut exec_ended = None;
        loop {
            tokio::select! {
                ended = &mut tasks.exec => { exec_ended = Some(ended); break }
                ended = async { beat.as_mut().expect("guarded").await }, if beat.is_some() => {
                    beat = None;
                    if let Ok(Err(e)) = ended {
                        tracing::error!(error = %e, "stopping");
                        fenced = Some(e);
                        break;
                    }
                }
                c = control.recv() => match c {
                    Some(Control::Stop(why)) => { tracing::info!("{why}: stopping"); break }
                    None => { tracing::info!("control channel closed: stopping"); break }
                    Some(Control::Reload) => {
                        // systemd 253+ wants the reload's monotonic timestamp with RELOADING=1.
                        match sd_notify::NotifyState::monotonic_usec_now() {
                            Ok(at) => notify(&[sd_notify::NotifyState::Reloading, at]),
                            Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
                        }
                        match reload::reload(&options, &store, clock.now()).await {
                            Ok(new) => {
                                deadline_secs.store(new.daemon.deadline.as_secs() as i64, Ordering::Relaxed);
                                tracing::info!("SIGHUP: configuration reloaded and rules re-synced");
                                rules_changed.notify_one();
                                executor.wake();
                            }
                            Err(e) => tracing::error!(error = %crate::errors::render(&e), "SIGHUP: the new configuration is invalid; keeping the old one"),
                        }
                        notify(&[sd_notify::NotifyState::Ready]);
                    }
                },
                _ = tokio::time::sleep(intake::POLL) => {
                    // The intake loop is the daemon's heartbeat: if it stalls, systemd's watchdog fires.
                    if watchdog {
                        notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                    metrics.heartbeat_ms.store(clock.now_ms(), Ordering::Relaxed);
                    intake.tick(&store, &resolver, &executor, &clock, &rules_changed, &listings_due).await?;
                    if let Err(e) = reporter.tick(&store, &clock, deadline_secs.load(Ordering::Relaxed), &metrics).await {
                        // The reporter only reads; a busy or unreadable moment is said by the outage.
                        if !intake::transient(&e) {
                            return Err(e);
                        }
                    }
                }
            }
        }
        tasks
            .stop(
                exec_ended,
                &signals.cancel,
                &store,
                shutdown_timeout,
                &clock,
            )
            .await?;
        if let Some(e) = fenced {
            return Err(e);
        }
        // Hand this instance's claims over now rather than after five missed heartbeats.
        if let Err(e) = store.call(|s| s.deregister_instance()).await {
            tracing::warn!(error = %e, "could not leave the shared queue cleanly; the others take over when this instance's heartbeat expires");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// What the main loop shares with its tasks.
struct Signals {
    /// The request deadline, changed by a reload (the metrics' "due soon" reads it).
    deadline_secs: Arc<AtomicI64>,
    /// Poked when rules may have changed; the scheduler listens.
    rules_changed: Arc<tokio::sync::Notify>,
    /// Poked when requests were resolved: their listings are due; the resolver task listens.
    listings_due: Arc<tokio::sync::Notify>,
    /// Every task stops on it.
    cancel: CancellationToken,
}

/// How the executor's lanes ended.
type LaneEnds = Result<Vec<(ProviderKind, LaneEnd)>, ExecutorError>;

/// The tasks `run_until` starts beside its own loop.
struct Tasks {
    exec: tokio::task::JoinHandle<LaneEnds>,
    sched: tokio::task::JoinHandle<()>,
    /// The resolver's listings by subject.
    listings: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Tasks {
    async fn spawn(
        config: &Config,
        store: &AsyncStore,
        executor: &Arc<Executor>,
        resolver: &Arc<Resolver>,
        clock: &SharedClock,
        signals: &Signals,
    ) -> Result<Tasks> {
        let Signals {
            deadline_secs,
            rules_changed,
            listings_due,
            cancel,
        } = signals;
        let exec = {
            let (e, c) = (executor.clone(), cancel.clone());
            tokio::spawn(async move { e.run(Mode::Forever, c).await })
        };
        let listings = {
            let (r, w, e, c) = (
                resolver.clone(),
                listings_due.clone(),
                executor.clone(),
                cancel.clone(),
            );
            tokio::spawn(r.run(w, move || e.wake(), c))
        };
        let timer = crate::scheduler::Timer::cron(clock.clone()).await?;
        let sched = {
            let (r, s, c, cl) = (
                resolver.clone(),
                store.clone(),
                cancel.clone(),
                clock.clone(),
            );
            let (e, changed) = (executor.clone(), rules_changed.clone());
            tokio::spawn(async move {
                crate::scheduler::run_schedules(r, s, move || e.wake(), cl, timer, changed, c).await
            })
        };
        let metrics = executor.metrics();
        metrics
            .heartbeat_ms
            .store(clock.now_ms(), Ordering::Relaxed);
        let http = match &config.http {
            Some(h) => {
                let listener = tokio::net::TcpListener::bind(h.listen)
                    .await
                    .with_context(|| format!("binding [http] listen = {}", h.listen))?;
                tracing::info!(listen = %h.listen, "serving the status page, /metrics and /healthz");
                let (m, st, pr) = (metrics.clone(), store.clone(), executor.providers());
                let (cl, d, c) = (clock.clone(), deadline_secs.clone(), cancel.clone());
                Some(tokio::spawn(async move {
                    crate::web::serve(listener, m, st, pr, cl, d, c).await
                }))
            }
            None => None,
        };
        Ok(Tasks {
            exec,
            sched,
            listings,
            http,
        })
    }
}

impl Tasks {
    /// STOPPING=1, every task told to stop, in-flight batches given `shutdown_timeout`, the
    /// rest returned to pending. `exec_ended` is set when the executor ended on its own (it
    /// only ends when told to): that is an error.
    async fn stop(
        self,
        exec_ended: Option<Result<LaneEnds, tokio::task::JoinError>>,
        cancel: &CancellationToken,
        store: &AsyncStore,
        shutdown_timeout: Duration,
        clock: &SharedClock,
    ) -> Result<()> {
        let Tasks {
            exec,
            sched,
            listings,
            http,
        } = self;
        let unexpected = exec_ended.is_some();
        notify(&[sd_notify::NotifyState::Stopping]);
        cancel.cancel();
        let _ = sched.await;
        let _ = listings.await;
        if let Some(h) = http {
            let _ = h.await;
        }
        let ended = match exec_ended {
            Some(ended) => ended,
            None => {
                match tokio::time::timeout(shutdown_timeout + Duration::from_secs(5), exec).await {
                    Ok(ended) => ended,
                    Err(_) => {
                        tracing::warn!("executor did not stop in time");
                        Ok(Ok(Vec::new()))
                    }
                }
            }
        };
        let now = clock.now();
        match store.call(move |s| s.release_all_in_flight(now)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "returned unfinished items to pending"),
            // Nothing is lost: the next start returns them (it holds the lock, so no one else
            // can hold their leases). The executor's own error below says why it stopped.
            Err(e) if e.is_transient() => tracing::warn!(
                error = %e,
                "could not return unfinished items to pending now; the next start does"
            ),
            Err(e) => return Err(e.into()),
        }
        match ended {
            Ok(Ok(_)) if unexpected => anyhow::bail!("the executor stopped unexpectedly"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("the executor stopped")),
            Err(e) => return Err(anyhow::Error::new(e).context("the executor task failed")),
        }
        Ok(())
    }
}
