//! `forgetd demo`: the whole pipeline against the built-in simulator, with a report.
//!
//! Seeds a realistic data set (several Convai characters and KooSearch applications, a few
//! thousand chats, dozens of people, decoys: other people's chats and the same chat ID under
//! another character; some chats only KooSearch can find), places a legal hold on a person and
//! on one chat, files erasure requests, adds a 30-day retention rule, switches some faults on
//! (5xx, 429 with Retry-After, broken connections, malformed answers, partial batches, an expired
//! token, an ID the provider refuses), runs the daemon until the work is done, and reports what
//! each provider confirmed, what was held and why, what failed, the retries and their causes, and
//! how long it took. Every count is checked against what the simulator itself saw; a mismatch
//! fails the demo (exit 1).
//!
//! The database stays at `./forgetd-demo.db` (replaced on each run) for `status`, `requests`
//! and `audit` to inspect.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::clock::{SharedClock, SystemClock};
use crate::config::RuleSpec;
use crate::model::{ChatKey, ProviderKind};
use crate::simulator::{Faults, Simulator};
use crate::store::Store;
use crate::store::holds::HoldTarget;
use crate::store::inventory::NewSession;
use crate::store::queue::ItemState;

pub struct DemoOptions {
    pub chats: usize,
    pub faults: bool,
    pub json: bool,
    pub db: PathBuf,
}

const CHARACTERS: [&str; 4] = ["char-aurora", "char-basil", "char-cobalt", "char-dune"];
const APPLICATIONS: [&str; 3] = ["app-support", "app-sales", "app-hr"];
const PEOPLE: usize = 48;
const REQUESTED: usize = 12;

#[derive(Debug, Default, Serialize)]
pub struct DemoReport {
    pub seconds: f64,
    pub chats_seeded: usize,
    pub requests: usize,
    pub deleted_by_provider: BTreeMap<String, u64>,
    pub simulator_deleted_by_provider: BTreeMap<String, u64>,
    pub held: Vec<String>,
    pub dead: Vec<String>,
    pub retries: BTreeMap<String, BTreeMap<String, u64>>,
    pub throttled: BTreeMap<String, u64>,
    pub calls: u64,
    pub simulator_calls: usize,
    pub rule_runs: Vec<crate::resolve::RuleRun>,
    pub decoys_untouched: bool,
    pub untargeted_named_in_deletes: usize,
    pub audit_events: u64,
    pub audit_intact: bool,
    pub checks_failed: Vec<String>,
    pub database: String,
}

fn id(prefix: &str, n: usize) -> String {
    format!(
        "{prefix}{n:06x}{:08x}",
        (n as u64).wrapping_mul(2_654_435_761) as u32
    )
}

pub async fn run(opts: DemoOptions) -> Result<ExitCode> {
    let started = Instant::now();
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now();
    for suffix in ["", "-wal", "-shm", ".lock", ".audit-key"] {
        let mut p = opts.db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let faults = if opts.faults {
        Faults {
            latency: Duration::from_millis(3),
            error_rate: 0.04,
            throttle_rate: 0.02,
            retry_after: Duration::from_secs(1),
            reset_rate: 0.02,
            malformed_rate: 0.02,
            partial_rate: 0.1,
            bad_ids: [id("conv-bad-", 1)].into_iter().collect(),
            ..Faults::default()
        }
    } else {
        Faults::default()
    };
    let sim = Simulator::start(clock.clone(), faults, 7).await?;

    // Secrets go through files, as in production: the config only names them.
    let secrets = tempfile::tempdir()?;
    let mut config = sim.config(secrets.path(), &APPLICATIONS)?;
    config.database = opts.db.clone();
    config.retry.base_delay = Duration::from_millis(100);
    config.retry.max_delay = Duration::from_secs(2);
    config.rules = vec![RuleSpec {
        name: "convai-30-days".into(),
        provider: ProviderKind::CONVAI,
        scope: CHARACTERS[3].into(),
        max_age: Duration::from_secs(30 * 86_400),
        schedule: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        discover: false,
        max_deletions: 100_000,
    }];

    // Seed the providers and the inventory.
    let mut store =
        Store::open(&opts.db).with_context(|| format!("creating {}", opts.db.display()))?;
    let person = |n: usize| format!("user-{n:03}");
    let mut inventory = Vec::new();
    let mut targeted: Vec<(ProviderKind, String, String)> = Vec::new();
    let mut decoys: Vec<(ProviderKind, String, String)> = Vec::new();
    let retained_char = CHARACTERS[3];
    for n in 0..opts.chats {
        let owner = n % PEOPLE;
        let requested = owner < REQUESTED;
        let age_days = (n * 7919 % 90) as i64;
        let created = now - age_days * 86_400 - 3600;
        if n % 3 != 0 {
            let ch = CHARACTERS[n % CHARACTERS.len()];
            let sid = id("", n);
            sim.add_convai_chat(ch, &sid, created);
            inventory.push(NewSession {
                provider: "convai".into(),
                scope: ch.into(),
                session_id: sid.clone(),
                subject: Some(person(owner)),
                repo_id: None,
                created_at: Some(created),
            });
            let expired = ch == retained_char && age_days >= 30;
            if requested || expired {
                targeted.push((ProviderKind::CONVAI, ch.into(), sid));
            } else {
                decoys.push((ProviderKind::CONVAI, ch.into(), sid));
            }
        } else {
            let app = APPLICATIONS[n % APPLICATIONS.len()];
            let sid = id("koo-", n);
            let repo = if n % 2 == 0 {
                Some("kb-handbook")
            } else {
                None
            };
            sim.add_koosearch_chat(app, &sid, Some(&person(owner)), repo, created);
            // A fifth of KooSearch chats are not in the inventory: only discovery finds them.
            if n % 5 != 0 {
                inventory.push(NewSession {
                    provider: "koosearch".into(),
                    scope: app.into(),
                    session_id: sid.clone(),
                    subject: Some(person(owner)),
                    repo_id: repo.map(str::to_string),
                    created_at: Some(created),
                });
            }
            if requested {
                targeted.push((ProviderKind::KOOSEARCH, app.into(), sid));
            } else {
                decoys.push((ProviderKind::KOOSEARCH, app.into(), sid));
            }
        }
    }
    // The same session ID under two characters: only the requested person's goes.
    let twin = id("twin-", 1);
    for (ch, owner) in [
        (CHARACTERS[0], person(0)),
        (CHARACTERS[1], person(PEOPLE - 1)),
    ] {
        sim.add_convai_chat(ch, &twin, now - 86_400);
        inventory.push(NewSession {
            provider: "convai".into(),
            scope: ch.into(),
            session_id: twin.clone(),
            subject: Some(owner),
            repo_id: None,
            created_at: Some(now - 86_400),
        });
    }
    targeted.push((ProviderKind::CONVAI, CHARACTERS[0].into(), twin.clone()));
    decoys.push((ProviderKind::CONVAI, CHARACTERS[1].into(), twin.clone()));
    // A chat the provider refuses (it will go dead, and its request fail, with the reason).
    let bad = id("conv-bad-", 1);
    sim.add_convai_chat(CHARACTERS[0], &bad, now - 86_400);
    inventory.push(NewSession {
        provider: "convai".into(),
        scope: CHARACTERS[0].into(),
        session_id: bad.clone(),
        subject: Some(person(1)),
        repo_id: None,
        created_at: Some(now - 86_400),
    });
    for s in &inventory {
        store.add_session(s)?;
    }
    // Legal holds: a person under litigation hold, and one chat kept as evidence.
    store.add_hold(
        &HoldTarget::Subject(person(2)),
        "litigation hold LH-2026-014",
        now,
    )?;
    let evidence = targeted
        .iter()
        .find(|(p, _, _)| *p == ProviderKind::CONVAI)
        .cloned()
        .context("no Convai chat to hold")?;
    let evidence = ChatKey {
        provider: evidence.0,
        scope: evidence.1,
        session_id: evidence.2,
    };
    store.add_hold(
        &HoldTarget::Chat(evidence.clone()),
        "evidence in complaint C-77",
        now,
    )?;
    let mut requests = 0;
    for n in 0..REQUESTED {
        store.file_request(
            &person(n),
            Some(&format!("DSR-2026-{n:04}")),
            now,
            config.daemon.deadline.as_secs() as i64,
        )?;
        requests += 1;
    }
    drop(store);

    // Chats that must survive: decoys, and everything the holds cover.
    let held_people = [person(2)];
    let is_held = |k: &(ProviderKind, String, String)| {
        (k.0 == evidence.provider && k.1 == evidence.scope && k.2 == evidence.session_id)
            || inventory.iter().any(|s| {
                s.provider == k.0.as_str()
                    && s.scope == k.1
                    && s.session_id == k.2
                    && s.subject
                        .as_deref()
                        .is_some_and(|x| held_people.contains(&x.to_string()))
            })
    };
    let must_go: Vec<_> = targeted
        .iter()
        .filter(|k| !is_held(k) && k.2 != bad)
        .cloned()
        .collect();

    let expire = {
        let st = sim_handle(&sim);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            st();
        })
    };
    let prepared = crate::daemon::Daemon::build(config, clock.clone())?;
    let once = prepared.run_once().await?;
    expire.abort();

    // Check every count against the simulator.
    let mut r = DemoReport {
        chats_seeded: opts.chats + 3,
        requests,
        rule_runs: once.rule_runs.clone(),
        retries: once.stats.retries.clone(),
        throttled: once.stats.throttled.clone(),
        calls: once.stats.calls,
        database: opts.db.display().to_string(),
        ..DemoReport::default()
    };
    let store = Store::open(&opts.db)?;
    let status = store.status(0, 0)?;
    for kind in ProviderKind::all() {
        let n = status
            .items
            .get(kind.as_str())
            .map_or(0, |c| c.get(ItemState::Deleted));
        r.deleted_by_provider.insert(kind.to_string(), n);
        let s = sim.deleted().iter().filter(|d| d.0 == kind).count();
        r.simulator_deleted_by_provider
            .insert(kind.to_string(), s as u64);
    }
    r.held = store.item_lines(ItemState::Held)?;
    r.dead = store.item_lines(ItemState::Dead)?;
    r.simulator_calls = sim.calls().len();
    r.decoys_untouched = decoys.iter().all(|(p, s, i)| sim.exists(*p, s, i));
    let named = sim.named_in_deletes();
    r.untargeted_named_in_deletes = decoys.iter().filter(|d| named.contains(d)).count();
    let v = store.verify_audit()?;
    r.audit_events = v.events;
    r.audit_intact = v.broken.is_none();

    let mut checks: Vec<String> = Vec::new();
    let mut fail = |cond: bool, what: String| {
        if !cond {
            checks.push(what);
        }
    };
    for kind in ProviderKind::all() {
        let ours = r.deleted_by_provider[kind.as_str()];
        let theirs = r.simulator_deleted_by_provider[kind.as_str()];
        fail(
            ours == theirs,
            format!("{kind}: forgetd recorded {ours} deletions, the simulator performed {theirs}"),
        );
    }
    let gone = must_go
        .iter()
        .filter(|(p, s, i)| !sim.exists(*p, s, i))
        .count();
    fail(
        gone == must_go.len(),
        format!("{} of {} targeted chats were deleted", gone, must_go.len()),
    );
    let kept = targeted
        .iter()
        .filter(|k| is_held(k))
        .filter(|(p, s, i)| sim.exists(*p, s, i))
        .count();
    fail(
        kept == targeted.iter().filter(|k| is_held(k)).count(),
        "a held chat was deleted".into(),
    );
    fail(r.decoys_untouched, "a decoy chat was deleted".into());
    fail(
        r.untargeted_named_in_deletes == 0,
        format!(
            "{} untargeted chats were named in delete calls",
            r.untargeted_named_in_deletes
        ),
    );
    fail(r.audit_intact, "the audit chain does not verify".into());
    fail(
        r.dead.len() == usize::from(opts.faults),
        format!(
            "expected {} dead item(s), found {}",
            usize::from(opts.faults),
            r.dead.len()
        ),
    );
    r.checks_failed = checks;
    r.seconds = started.elapsed().as_secs_f64();

    if opts.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", report_text(&r));
    }
    Ok(if r.checks_failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn sim_handle(sim: &Simulator) -> impl FnOnce() + Send + 'static {
    let expire = sim.expirer();
    move || expire()
}

fn report_text(r: &DemoReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "forgetd demo: {} chats seeded at the simulated providers, {} erasure requests filed, 1 retention rule",
        r.chats_seeded, r.requests
    );
    let _ = writeln!(o, "\ndeleted (forgetd's record / what the simulator saw):");
    for (p, n) in &r.deleted_by_provider {
        let _ = writeln!(
            o,
            "  {p:<10} {n} / {}",
            r.simulator_deleted_by_provider.get(p).copied().unwrap_or(0)
        );
    }
    for run in &r.rule_runs {
        let _ = writeln!(
            o,
            "retention rule {}: {} chats older than the cutoff, {} queued, {} held",
            run.rule, run.matched, run.enqueued, run.held
        );
    }
    let _ = writeln!(o, "\nheld ({}), and why:", r.held.len());
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for h in &r.held {
        let (chat, reason) = h.split_once(": ").unwrap_or((h, ""));
        by_reason.entry(reason).or_default().push(chat);
    }
    for (reason, chats) in by_reason {
        let more = if chats.len() > 3 {
            format!(", … {} more", chats.len() - 3)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "  {:>4} × \"{reason}\": {}{more}",
            chats.len(),
            chats.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(o, "\nfailed ({}):", r.dead.len());
    for d in &r.dead {
        let _ = writeln!(o, "  {d}");
    }
    let _ = writeln!(
        o,
        "\n{} delete calls ({} calls reached the simulator, listings and tokens included)",
        r.calls, r.simulator_calls
    );
    let _ = writeln!(o, "retries by cause:");
    if r.retries.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for (p, causes) in &r.retries {
        for (c, n) in causes {
            let _ = writeln!(o, "  {p:<10} {c:<14} {n}");
        }
    }
    for (p, n) in &r.throttled {
        let _ = writeln!(o, "  {p:<10} 429 answers honoured (Retry-After): {n}");
    }
    let _ = writeln!(
        o,
        "\ndecoys (other people's chats, the same ID under another character) untouched: {}",
        if r.decoys_untouched && r.untargeted_named_in_deletes == 0 {
            "yes, none named in any delete call"
        } else {
            "NO"
        }
    );
    let _ = writeln!(
        o,
        "audit trail: {} events, {}",
        r.audit_events,
        if r.audit_intact {
            "chain verified"
        } else {
            "BROKEN"
        }
    );
    let _ = writeln!(o, "took {:.1} s", r.seconds);
    if r.checks_failed.is_empty() {
        let _ = writeln!(o, "\nevery count matches what the simulator saw.");
    } else {
        let _ = writeln!(o, "\nCHECKS FAILED:");
        for c in &r.checks_failed {
            let _ = writeln!(o, "  {c}");
        }
    }
    let _ = writeln!(
        o,
        "\nThe database is left at {} for you to inspect:",
        r.database
    );
    // As the user invoked us (target/release/forgetd under `cargo run`), else plain `forgetd`.
    let exe = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "forgetd".into());
    for cmd in [
        "status",
        "requests list",
        "requests show 1",
        "holds list",
        "audit verify",
        "audit export --request 1",
    ] {
        let _ = writeln!(o, "  {exe} --db {} {cmd}", r.database);
    }
    o
}
