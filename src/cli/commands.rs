//! What each command does: open what it needs, call the library, print the result.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    Cli, Command, HoldsCommand, InvalidArgument, RequestsCommand, RuleArgs, RulesCommand,
    SessionsCommand, UsageError, load_config,
};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, RuleSpec};
use crate::model::ChatKey;
use crate::scheduler::Schedule;
use crate::store::Store;
use crate::store::holds::HoldTarget;
use crate::store::inventory::NewSession;

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    let now = SystemClock.now();
    match cli.command {
        Command::Run { once } => run(config, once, cli.config.clone(), cli.db.clone()),
        Command::Demo {
            chats,
            no_faults,
            json,
        } => {
            let rt = runtime()?;
            rt.block_on(crate::demo::run(crate::demo::DemoOptions {
                chats,
                faults: !no_faults,
                json,
                db: match &cli.db {
                    None => "forgetd-demo.db".into(),
                    Some(crate::config::Database::Sqlite(p)) => p.clone(),
                    Some(crate::config::Database::Postgres(_)) => {
                        anyhow::bail!(
                            "`forgetd demo` runs on a local SQLite file; give --db a file path"
                        )
                    }
                },
            }))
        }
        Command::Bench {
            quick,
            retention,
            politeness,
            postgres,
            sweep_sessions,
            sweep_expired,
            holds,
        } => runtime()?.block_on(crate::bench::run(crate::bench::BenchOptions {
            quick,
            postgres,
            retention,
            politeness,
            sweep_sessions,
            sweep_expired,
            holds,
        })),
        Command::BenchSweep { rule } => crate::bench::sweep_child(&config.database, &rule),
        Command::Plan {
            subject,
            rule,
            json,
        } => plan(config, subject, rule, json),
        Command::Audit(cmd) => audit(&config, cmd),
        Command::Certificate(super::CertificateCommand::Verify { file, public_key }) => {
            verify_certificate(&file, &public_key)
        }
        Command::CheckConfig => check_config(&config),
        Command::Doctor { json } => doctor(config, json),
        Command::Simulator {
            listen,
            config_out,
            applications,
            refuse,
            database,
        } => runtime()?.block_on(simulator(
            listen,
            config_out,
            applications,
            refuse,
            database,
        )),
        Command::Backup { file } => backup(&config, &file),
        Command::MigrateTo { url } => migrate_to(&config, &url),
        Command::Generate { dir } => {
            for path in super::generate::write_all(&dir)? {
                outln!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            subject,
            external_ref,
            json,
        } => {
            let mut store = open(&config)?;
            let filed = store
                .file_request(
                    &subject,
                    external_ref.as_deref(),
                    now,
                    config.daemon.deadline.as_secs() as i64,
                )
                .map_err(InvalidArgument::from_store)?;
            if filed.subject_differs {
                // The same ref for another person is a feeder bug; answering with the existing id
                // would let this person's request vanish without a word.
                anyhow::bail!(
                    "ref {:?} was already filed, as request {}, for another subject; nothing was filed (use this person's own ref)",
                    filed.external_ref.as_deref().unwrap_or(""),
                    filed.id
                );
            }
            if json {
                print_json(&filed)?;
            } else {
                outln!("{}", filed.id);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Add {
            provider,
            scope,
            id,
            subject,
            created_at,
            repo_id,
        }) => {
            let created_at = created_at.as_deref().map(parse_time).transpose()?;
            let mut store = open(&config)?;
            let added = store
                .add_session(&NewSession {
                    provider: provider.as_str().to_string(),
                    scope,
                    session_id: id,
                    subject,
                    repo_id,
                    created_at,
                })
                .map_err(InvalidArgument::from_store)?;
            outln!(
                "{}",
                if added {
                    "added"
                } else {
                    "already known (skipped)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Import { file }) => import(&config, &file),
        Command::Requests(cmd) => requests(&config, cmd, now),
        Command::Status { json } => {
            let store = open(&config)?;
            let st = store.status(now, config.daemon.deadline.as_secs() as i64)?;
            if json {
                print_json(&st)?;
            } else {
                out!("{}", crate::report::status_text(&st, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules(cmd) => rules(&config, cmd, now),
        Command::Holds(cmd) => holds(&config, cmd, now),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(
    config: Config,
    once: bool,
    config_path: Option<std::path::PathBuf>,
    db_override: Option<crate::config::Database>,
) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async move {
        let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
        let prepared = crate::daemon::Daemon::build(config, clock.clone())?;
        if once {
            let started = std::time::Instant::now();
            // On a terminal, a line that says how far the drain is; cleared before the summary.
            let progress = std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.set_message("resolving requests and rules");
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                let task = tokio::spawn(super::progress::show(
                    prepared.store.clone(),
                    prepared.executor.clone(),
                    bar.clone(),
                ));
                (bar, task)
            });
            let report = prepared.run_once().await;
            if let Some((bar, task)) = progress {
                task.abort();
                bar.finish_and_clear();
            }
            let report = report?;
            let elapsed = started.elapsed();
            // Counted as deleted only what held: a confirmation read back present is not one.
            let kept = report.stats.kept();
            let deleted: u64 = kept.values().sum();
            let unkept: u64 = report.stats.reappeared.values().sum();
            outln!(
                "resolved {} request(s), ran {} rule(s); deleted {deleted}, held {}, dead {}, pending {}{}",
                report.resolved_requests,
                report.rule_runs.len(),
                report.held,
                report.dead,
                report.pending,
                if report.unread > 0 {
                    format!(
                        " ({} deleted chat(s) not read back yet: a deletion counts as kept once read back absent)",
                        report.unread
                    )
                } else {
                    String::new()
                }
            );
            let by_provider: Vec<String> = kept
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(p, n)| format!("{p} {n}"))
                .collect();
            let retries: u64 = report.stats.retries.values().flat_map(|c| c.values()).sum();
            let throttled: u64 = report.stats.throttled.values().sum();
            outln!(
                "took {} ({}); {} provider call(s), {retries} retried item(s), {throttled} throttled answer(s)",
                humantime::format_duration(std::time::Duration::from_millis(
                    elapsed.as_millis() as u64
                )),
                if by_provider.is_empty() {
                    "nothing deleted".to_string()
                } else {
                    format!(
                        "deleted {}, {:.1}/s",
                        by_provider.join(", "),
                        deleted as f64 / elapsed.as_secs_f64().max(0.001)
                    )
                },
                report.stats.calls
            );
            if unkept > 0 {
                errln!(
                    "forgetd: warning: {unkept} deletion(s) the provider confirmed did not hold (read back present); `forgetd status` and `forgetd requests show ID` say which and why"
                );
            }
            for w in &report.warnings {
                errln!("forgetd: warning: {w}");
            }
            if report.clean() {
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &report.problems {
                    errln!("forgetd: {p}");
                }
                Ok(ExitCode::from(1))
            }
        } else {
            let options = crate::daemon::RunOptions { once, config_path, db_override };
            let control = crate::daemon::signals::install()?;
            prepared.run_until(options, control).await?;
            Ok(ExitCode::SUCCESS)
        }
    })
}

fn plan(
    config: Config,
    subject: Option<String>,
    rule: Option<String>,
    json: bool,
) -> Result<ExitCode> {
    let rt = runtime()?;
    rt.block_on(async move {
        let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
        let now = clock.now();
        let deadline = config.daemon.deadline.as_secs() as i64;
        let mut store = open(&config)?;
        sync_file_rules(&config, &mut store, now)?;
        // Discovery needs the providers; without any configured, the plan is the inventory's.
        let providers = if config.kinds().is_empty() {
            Vec::new()
        } else {
            crate::providers::build(
                &config.providers,
                config.retry.max_retry_after,
                clock.clone(),
            )?
        };
        let plan = if let Some(name) = rule {
            let row = store.get_rule(&name)?;
            let resolver = resolver_for(&config, &store, providers, clock.clone())?;
            let found = resolver
                .discover_for_rule(&row, now, crate::resolve::Patience::Full)
                .await?;
            store.plan_rule(&row, &found, now, deadline)?
        } else {
            let subject = subject.expect("clap requires --subject or --rule");
            // The discovery a real resolution does, retries included.
            let resolver = resolver_for(&config, &store, providers, clock.clone())?;
            let (found, failed) = resolver
                .discover(&subject, crate::resolve::Patience::Full)
                .await;
            let mut plan = store
                .plan_subject(&subject, &found, now, deadline)
                .map_err(InvalidArgument::from_store)?;
            for f in failed {
                plan.notes.push(format!(
                    "the listing by subject at {} {} could not be completed ({}): a real run deletes the chats above and ends the request failed, since chats this listing would find may remain",
                    f.provider, f.scope, f.reason
                ));
            }
            plan
        };
        if json {
            print_json(&plan)?;
        } else {
            out!("{}", crate::report::plan_text(&plan));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn resolver_for(
    config: &Config,
    store: &Store,
    providers: Vec<crate::providers::SharedProvider>,
    clock: crate::clock::SharedClock,
) -> Result<crate::resolve::Resolver> {
    // A second connection for the resolver's store thread (the plan's own stays for the dry run).
    let conn = Store::connect(store.database())?;
    Ok(crate::resolve::Resolver {
        store: crate::store::AsyncStore::spawn(conn),
        listing_lease: crate::resolve::Resolver::lease_for(&providers),
        providers,
        key: std::sync::Arc::new(crate::audit::SubjectKey::from_bytes(&[0; 32])),
        clock,
        deadline_secs: config.daemon.deadline.as_secs() as i64,
        retry: crate::executor::retry::RetryPolicy::new(&config.retry),
    })
}

fn audit(config: &Config, cmd: super::AuditCommand) -> Result<ExitCode> {
    let store = open(config)?;
    match cmd {
        super::AuditCommand::Verify { json } => {
            let v = store.verify_audit()?;
            if json {
                print_json(&v)?;
            } else if let Some(b) = &v.broken {
                outln!("audit trail BROKEN at event {}: {}", b.seq, b.reason);
                outln!("{} event(s) before it verify", v.events);
            } else {
                outln!("audit trail intact: {} event(s), head {}", v.events, v.head);
                match &v.seals {
                    Some(c) => outln!(
                        "seals (keyed chain): {} valid ({} sealed late by the daemon), {} not sealed yet",
                        c.sealed,
                        c.late,
                        c.unsealed
                    ),
                    None => outln!(
                        "seals NOT checked: this user cannot read the chain key, and hashes alone do not show forgetd wrote these events (anyone who can write the database can recompute them); run as root or forgetd to check the seals"
                    ),
                }
            }
            Ok(if v.broken.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        super::AuditCommand::Export {
            request,
            json,
            format,
            force,
        } => {
            let cert = crate::certificate::Certificate::build(&store, request)?;
            if let Some(why) = &cert.broken
                && !force
            {
                anyhow::bail!(
                    "refusing to certify request {request}: {why}; run `forgetd audit verify`, restore from a backup, or give --force for a certificate marked BROKEN"
                );
            }
            let format = if json {
                super::CertFormat::Json
            } else {
                format
            };
            let signer = || {
                crate::signing::CertSigner::load(
                    config.audit.signing_key.as_ref(),
                    config.database.sqlite_path(),
                )
                .context("loading the certificate signing key")
            };
            match format {
                super::CertFormat::Text => out!("{}", cert.text()),
                super::CertFormat::Json => print_json(&cert)?,
                super::CertFormat::Signed => print_json(&signer()?.sign(&cert)?)?,
                super::CertFormat::Html => {
                    let signed = signer()?.sign(&cert)?;
                    out!("{}", crate::certificate::html::render(&cert, Some(&signed)));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        super::AuditCommand::PublicKey => {
            let signer = crate::signing::CertSigner::load(
                config.audit.signing_key.as_ref(),
                config.database.sqlite_path(),
            )
            .context("loading the certificate signing key")?;
            outln!("{}", signer.public_key_hex());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `forgetd certificate verify`: the signature, checked with nothing but the file and the key.
fn verify_certificate(file: &std::path::Path, key: &str) -> Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let key_text = if std::path::Path::new(key).is_file() {
        std::fs::read_to_string(key).with_context(|| format!("reading the key file {key}"))?
    } else {
        key.to_string()
    };
    match crate::signing::verify(&text, key_text.trim()) {
        Ok(signed) if !signed.certificate["broken"].is_null() => {
            // Signed as it was issued: forced out of a record that did not verify.
            errln!(
                "forgetd: certificate {} carries a valid signature, but says its record is BROKEN: {}; it certifies nothing",
                file.display(),
                signed.certificate["broken"]
                    .as_str()
                    .unwrap_or("(no reason given)")
            );
            Ok(ExitCode::from(1))
        }
        Ok(signed) => {
            outln!(
                "certificate {} verifies: request {}, state {}, signed by {}",
                file.display(),
                signed.certificate["request_id"],
                signed.certificate["state"].as_str().unwrap_or("?"),
                signed.signature.public_key
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            errln!(
                "forgetd: certificate {} does NOT verify: {}",
                file.display(),
                crate::errors::render(&anyhow::Error::new(e))
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The config file owns its rules: commands given one see them as the daemon would.
fn sync_file_rules(config: &Config, store: &mut Store, now: i64) -> Result<()> {
    if config.source.is_some() {
        store.sync_config_rules(
            &config.rules,
            config.source.as_ref().map(|p| p.display().to_string()),
            crate::store::rules::ConfigSync::Command,
            now,
        )?;
    }
    Ok(())
}

/// The queue, with the audit chain's key when this user can read it (root, forgetd): then what
/// the command appends is sealed as it is written. A feeder's user cannot, and its appends are
/// sealed by the daemon; certifying events it would cause are left to the daemon too.
fn open(config: &Config) -> Result<Store> {
    let mut store = Store::connect(&config.database)
        .with_context(|| format!("opening the queue at {}", config.database))?;
    match crate::audit::SubjectKey::load_existing(
        config.audit.subject_key.as_ref(),
        config.database.sqlite_path(),
    ) {
        Ok(Some(key)) => store.set_chain_key(key.chain_key()),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "not using the audit key; this command's audit entries are left for the daemon to seal")
        }
    }
    Ok(store)
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Unix seconds, or an RFC 3339 time with `Z` or an offset.
fn parse_time(text: &str) -> Result<i64> {
    Ok(crate::fields::unix_seconds(text).map_err(UsageError)?)
}

fn check_config(config: &Config) -> Result<ExitCode> {
    config.verify_secrets()?;
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no file (defaults)".into());
    outln!("config OK: {source}");
    outln!("  database: {}", config.database);
    for c in &config.providers {
        outln!("  {}: {}", c.kind(), c.settings.describe());
    }
    if config.providers.is_empty() {
        outln!("  no provider configured: `forgetd run` needs at least one");
    }
    outln!("  rules: {}", config.rules.len());
    outln!(
        "  secrets: {} named, all readable",
        config.secret_refs().len()
    );
    for w in config.warnings() {
        errln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

fn doctor(config: Config, json: bool) -> Result<ExitCode> {
    if config.kinds().is_empty() {
        let tables: Vec<String> = crate::model::ProviderKind::all()
            .map(|k| format!("[providers.{k}]"))
            .collect();
        return Err(crate::config::ConfigError::Other(format!(
            "no provider is configured: doctor has nothing to check (add one of {})",
            tables.join(", ")
        ))
        .into());
    }
    config.verify_secrets()?;
    let mut store = open(&config)?;
    sync_file_rules(&config, &mut store, SystemClock.now())?;
    let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
    let report = runtime()?.block_on(crate::doctor::run(&config, &store, clock))?;
    if json {
        print_json(&report)?;
    } else {
        out!("{}", crate::report::doctor_text(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn import(config: &Config, file: &std::path::Path) -> Result<ExitCode> {
    let mut store = open(config)?;
    let (input, size): (Box<dyn std::io::Read>, Option<u64>) = if file.as_os_str() == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let bar = if std::io::stderr().is_terminal() {
        let bar = match size {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let report = store
        .import_sessions(input, |bytes, r| {
            if let Some(b) = &bar {
                b.set_position(bytes);
                b.set_message(format!("{} added, {} known", r.inserted, r.skipped));
            }
        })
        .with_context(|| format!("importing {}", file.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    outln!(
        "imported {} chats ({} already known, skipped)",
        report.inserted,
        report.skipped
    );
    Ok(ExitCode::SUCCESS)
}

fn requests(config: &Config, cmd: RequestsCommand, now: i64) -> Result<ExitCode> {
    let deadline = config.daemon.deadline.as_secs() as i64;
    match cmd {
        RequestsCommand::List { json } => {
            let store = open(config)?;
            let list = store.list_requests(deadline)?;
            if json {
                print_json(&list)?;
            } else {
                out!("{}", crate::report::requests_text(&list, now));
            }
        }
        RequestsCommand::Show { id, json } => {
            let store = open(config)?;
            let detail = store.request_detail(id, deadline)?;
            if json {
                print_json(&detail)?;
            } else {
                out!("{}", crate::report::request_detail_text(&detail, now));
            }
        }
        RequestsCommand::Retry { id, json } => {
            let mut store = open(config)?;
            let n = store.retry_request(id, now)?;
            if json {
                print_json(&serde_json::json!({"id": id, "revived": n}))?;
            } else {
                outln!("request {id}: {n} dead item(s) back to pending");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rule_spec(a: &RuleArgs) -> Result<RuleSpec> {
    let max_age = humantime::parse_duration(&a.max_age).map_err(|e| {
        UsageError(format!(
            "--max-age \"{}\" is not a duration ({e}); e.g. 30d",
            a.max_age
        ))
    })?;
    if max_age.is_zero() {
        return Err(UsageError("--max-age must be longer than zero".into()).into());
    }
    Schedule::parse(&a.schedule, &a.timezone).map_err(|e| UsageError(e.to_string()))?;
    let spec = RuleSpec {
        name: a.name.clone(),
        provider: a.provider,
        scope: a.scope.clone(),
        max_age,
        schedule: a.schedule.clone(),
        timezone: a.timezone.clone(),
        discover: a.discover,
        max_deletions: a.max_deletions,
    };
    spec.check_shape().map_err(UsageError)?;
    if a.max_deletions == 0 {
        return Err(UsageError("--max-deletions must be at least 1".into()).into());
    }
    Ok(spec)
}

fn rules(config: &Config, cmd: RulesCommand, now: i64) -> Result<ExitCode> {
    let mut store = open(config)?;
    sync_file_rules(config, &mut store, now)?;
    match cmd {
        RulesCommand::List { json } => {
            let list = store.list_rules()?;
            if json {
                print_json(&list)?;
            } else {
                out!("{}", crate::report::rules_text(&list));
            }
        }
        RulesCommand::Add(args) => {
            let spec = rule_spec(&args)?;
            store.add_rule(&spec, now)?;
            if args.json {
                print_json(&store.get_rule(&spec.name)?)?;
            } else {
                outln!("rule {} added", spec.name);
            }
        }
        RulesCommand::Remove { name, json } => {
            store.remove_rule(&name, now)?;
            if json {
                print_json(&serde_json::json!({"removed": name}))?;
            } else {
                outln!("rule {name} removed");
            }
        }
        RulesCommand::Next {
            name,
            from,
            count,
            json,
        } => {
            let rules = match &name {
                Some(n) => vec![store.get_rule(n)?],
                None => store.list_rules()?,
            };
            let from = from.unwrap_or(now);
            let mut all = Vec::new();
            for r in rules {
                let schedule = crate::schedule::Schedule::parse(&r.schedule, &r.timezone)
                    .map_err(|e| UsageError(format!("rule {}: {e}", r.name)))?;
                all.push(crate::report::RuleRuns {
                    runs: schedule.upcoming(from, count as usize),
                    rule: r.name,
                    schedule: r.schedule,
                    timezone: r.timezone,
                });
            }
            if json {
                print_json(&all)?;
            } else {
                out!("{}", crate::report::rule_runs_text(&all));
            }
        }
        RulesCommand::Approve { name, json } => {
            store.approve_rule(&name, now)?;
            if json {
                print_json(&serde_json::json!({"approved": name}))?;
            } else {
                outln!("rule {name}: the held run is approved and will delete on its next run");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn holds(config: &Config, cmd: HoldsCommand, now: i64) -> Result<ExitCode> {
    let mut store = open(config)?;
    match cmd {
        HoldsCommand::Add {
            subject,
            provider,
            scope,
            id,
            reason,
            json,
        } => {
            let target = match (subject, provider, scope, id) {
                (Some(s), None, None, None) => HoldTarget::Subject(s),
                (None, Some(provider), Some(scope), Some(session_id)) => {
                    HoldTarget::Chat(ChatKey {
                        provider,
                        scope,
                        session_id,
                    })
                }
                _ => {
                    return Err(UsageError(
                        "holds add takes --subject S, or --provider P --scope SC --id ID".into(),
                    )
                    .into());
                }
            };
            let (hold_id, held) = store
                .add_hold(&target, &reason, now)
                .map_err(InvalidArgument::from_store)?;
            if json {
                print_json(&serde_json::json!({"id": hold_id, "items_held": held.len()}))?;
            } else {
                outln!("{hold_id}");
                if !held.is_empty() {
                    errln!(
                        "forgetd: hold {hold_id} took {} queued chat(s) out of deletion",
                        held.len()
                    );
                }
                if matches!(target, HoldTarget::Subject(_)) {
                    errln!(
                        "forgetd: note: a subject hold covers only chats the inventory attributes to that subject; chats found by provider listing with no owner need a chat hold"
                    );
                }
            }
        }
        HoldsCommand::List { json } => {
            let list = store.list_holds()?;
            if json {
                print_json(&list)?;
            } else {
                out!("{}", crate::report::holds_text(&list));
            }
        }
        HoldsCommand::Remove { hold_id, json } => {
            let freed = store.remove_hold(hold_id, now)?;
            if json {
                print_json(
                    &serde_json::json!({"removed": hold_id, "items_released": freed.len()}),
                )?;
            } else {
                outln!(
                    "hold {hold_id} lifted; {} chat(s) back in the queue",
                    freed.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `forgetd simulator`: the simulated providers until SIGINT/SIGTERM.
async fn simulator(
    listen: std::net::SocketAddr,
    config_out: Option<std::path::PathBuf>,
    applications: Vec<String>,
    refuse: Vec<String>,
    database: Option<std::path::PathBuf>,
) -> Result<ExitCode> {
    use crate::simulator::{CONVAI_KEY, Faults, IAM_PASSWORD, Simulator};
    let faults = Faults {
        bad_ids: refuse.into_iter().collect(),
        ..Faults::default()
    };
    let sim = Simulator::start_on(std::sync::Arc::new(SystemClock), faults, 1, listen)
        .await
        .with_context(|| format!("starting the simulator on {listen}"))?;
    let apps: Vec<&str> = applications.iter().map(String::as_str).collect();
    if let Some(path) = &config_out {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let write = |p: std::path::PathBuf, bytes: &[u8], mode: u32| -> Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&p)
                .with_context(|| format!("writing {}", p.display()))?;
            f.write_all(bytes)
                .with_context(|| format!("writing {}", p.display()))
        };
        let mut text = sim.rehearsal_config(&apps);
        if let Some(db) = &database {
            let db = toml::Value::String(db.display().to_string());
            text = format!("[database]\npath = {db}\n\n{text}");
        }
        write(path.clone(), text.as_bytes(), 0o640)?;
        write(dir.join("convai-api-key"), CONVAI_KEY.as_bytes(), 0o600)?;
        write(dir.join("iam-password"), IAM_PASSWORD.as_bytes(), 0o600)?;
        let key: [u8; 32] = rand::random();
        write(dir.join("audit-key"), &key, 0o600)?;
    }
    outln!("convai    {}", sim.convai_url);
    outln!("koosearch {}", sim.koosearch_url);
    outln!("iam       {}", sim.iam_url);
    match &config_out {
        Some(p) => outln!(
            "config    {} (run: CREDENTIALS_DIRECTORY={} forgetd --config {} run)",
            p.display(),
            p.parent()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            p.display()
        ),
        None => outln!("(no --config-out: nothing written)"),
    }
    std::io::stdout().flush().ok();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(sim);
    Ok(ExitCode::SUCCESS)
}

/// `forgetd migrate-to URL`: the SQLite queue into an empty PostgreSQL database, under the
/// daemon lock, then the chain verified on the target with the same key.
fn migrate_to(config: &Config, url: &str) -> Result<ExitCode> {
    let Some(path) = config.database.sqlite_path() else {
        anyhow::bail!(
            "migrate-to moves a SQLite queue; this one is already on PostgreSQL ({})",
            config.database
        );
    };
    let target = match crate::config::Database::from_arg(std::ffi::OsStr::new(url)) {
        crate::config::Database::Postgres(mut t) => {
            crate::config::Database::Postgres(t.clone())
                .check()
                .map_err(UsageError)?;
            if let crate::config::Database::Postgres(c) = &config.database {
                t.password = c.password.clone();
            }
            crate::config::Database::Postgres(t)
        }
        crate::config::Database::Sqlite(_) => {
            return Err(
                UsageError(format!("migrate-to needs a postgresql:// URL, not {url}")).into(),
            );
        }
    };
    // No daemon may write the source meanwhile.
    let _lock = crate::store::lock::DaemonLock::acquire(path)?;
    let mut source = open(config)?;
    let key = crate::audit::SubjectKey::load_existing(config.audit.subject_key.as_ref(), Some(path))
        .context("reading the audit key (run migrate-to as the user forgetd runs as)")?
        .context("the audit chain's key file is missing; run migrate-to as the user forgetd runs as, beside its key")?;
    source.set_chain_key(key.chain_key());
    let before = source.verify_audit()?;
    if let Some(b) = &before.broken {
        anyhow::bail!(
            "the source's audit chain is broken at event {}: {}; fix that first (`forgetd audit verify`)",
            b.seq,
            b.reason
        );
    }
    let mut dest = Store::connect_for_copy(&target).with_context(|| format!("opening {target}"))?;
    let copied = source
        .copy_into(&mut dest)
        .with_context(|| format!("copying into {target}"))?;
    dest.set_chain_key(key.chain_key());
    let after = dest.verify_audit()?;
    if after.broken.is_some() || after.events != before.events || after.head != before.head {
        anyhow::bail!(
            "the copy's audit chain does not match the source's ({} events, head {} against {} events, head {}); the target was left as copied for inspection",
            after.events,
            after.head,
            before.events,
            before.head
        );
    }
    for (table, n) in &copied.rows {
        outln!("{table}: {n} row(s)");
    }
    outln!(
        "audit chain verified on the target: {} event(s), head {}",
        after.events,
        after.head
    );
    let subject_key = match &config.audit.subject_key {
        Some(r) => r.to_string(),
        None => format!(
            "file:{}",
            crate::audit::SubjectKey::key_path(path).display()
        ),
    };
    // The signing key file is made now if it was not yet, so the reference printed below is
    // one the PostgreSQL config can use at once.
    crate::signing::CertSigner::load(config.audit.signing_key.as_ref(), Some(path))
        .context("loading the certificate signing key")?;
    let signing_key = match &config.audit.signing_key {
        Some(r) => r.to_string(),
        None => format!(
            "file:{}",
            crate::signing::CertSigner::key_path(path).display()
        ),
    };
    outln!("\nSwitch forgetd's config to it (and keep the keys where forgetd can read them):\n");
    outln!("[database]\nurl = \"{url}\"");
    outln!("\n[audit]\nsubject_key = \"{subject_key}\"\nsigning_key = \"{signing_key}\"");
    Ok(ExitCode::SUCCESS)
}

/// `forgetd backup FILE`: SQLite's online backup (consistent while the daemon and feeders write),
/// then `quick_check` and the audit chain on the copy.
fn backup(config: &Config, file: &std::path::Path) -> Result<ExitCode> {
    let store =
        Store::connect(&config.database).with_context(|| format!("opening {}", config.database))?;
    let backup = store
        .backup_to(file)
        .with_context(|| format!("backing up to {}", file.display()))?;
    let pages = backup.pages;
    // Checked under its temporary name; it takes the backup's name only once it passed.
    let v = {
        let copy = Store::open(backup.path())
            .with_context(|| format!("opening the copy {}", backup.path().display()))?;
        copy.quick_check()
            .with_context(|| format!("checking the copy {}", backup.path().display()))?;
        copy.verify_audit()?
    };
    // A faithful copy of a database whose chain is broken is still evidence: kept, and said.
    backup
        .keep()
        .with_context(|| format!("moving the checked copy to {}", file.display()))?;
    if let Some(broken) = &v.broken {
        anyhow::bail!(
            "the copy {} was made, but its audit chain is broken at {broken:?}: the database itself is damaged or was edited; keep both files and run `forgetd audit verify`",
            file.display()
        );
    }
    outln!(
        "backup {}: {pages} pages, integrity ok, audit chain intact ({} events, head {})",
        file.display(),
        v.events,
        v.head
    );
    Ok(ExitCode::SUCCESS)
}
