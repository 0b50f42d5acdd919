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
use std::path::{Path, PathBuf};
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
/// The character the retention rule covers.
const RETAINED_CHARACTER: &str = CHARACTERS[3];
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
    /// Read-after-delete verification: every deleted chat read back.
    pub verification: crate::store::verification::VerificationCounts,
    /// The chat planted to come back after its deletion was confirmed (the simulator's
    /// `resurrect` fault): caught by reading it back, and deleted again.
    pub planted_reappearance: String,
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
    remove_previous(&opts.db);
    let sim = Simulator::start(clock.clone(), faults(opts.faults), 7).await?;
    // Secrets go through files, as in production: the config only names them.
    let secrets = tempfile::tempdir()?;
    let mut config = sim.config(secrets.path(), &APPLICATIONS)?;
    config.database = crate::config::Database::Sqlite(opts.db.clone());
    config.retry.base_delay = Duration::from_millis(100);
    config.retry.max_delay = Duration::from_secs(2);
    config.rules = vec![retention_rule()];
    // Read every deletion back at once (the daemon waits 10 minutes by default).
    config.verify.after = Some(Duration::ZERO);

    let mut store =
        Store::open(&opts.db).with_context(|| format!("creating {}", opts.db.display()))?;
    let world = World::seed(&sim, &mut store, opts.chats, now)?;
    let requests = world.file_requests(&mut store, now, config.daemon.deadline)?;
    drop(store);
    // One chat whose deletion the provider confirms but does not keep, once.
    let planted = world.planted().clone();
    sim.update_faults(|f| {
        f.resurrect.insert(planted.session_id.clone(), 1);
    });

    // The simulator expires its IAM token mid-run: the client must refresh it.
    let expire = {
        let st = sim_handle(&sim);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            st();
        })
    };
    let daemon = crate::daemon::Daemon::build(config, clock.clone())?;
    let once = daemon.run_once().await?;
    expire.abort();

    let mut r = measure(&opts, &sim, &world, &once)?;
    r.requests = requests;
    r.planted_reappearance = planted.to_string();
    r.checks_failed = world.check(&r, &sim, opts.faults);
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

/// The database and its companions from an earlier run.
fn remove_previous(db: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock", ".audit-key"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// `--faults`: a little of every fault the simulator has, and one ID Convai refuses.
fn faults(on: bool) -> Faults {
    if !on {
        return Faults::default();
    }
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
}

fn retention_rule() -> RuleSpec {
    RuleSpec {
        name: "convai-30-days".into(),
        provider: ProviderKind::CONVAI,
        scope: RETAINED_CHARACTER.into(),
        max_age: Duration::from_secs(30 * 86_400),
        schedule: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        discover: false,
        max_deletions: 100_000,
    }
}

fn person(n: usize) -> String {
    format!("user-{n:03}")
}

/// What was seeded, and so what must happen: the chats to delete, the decoys to leave, the
/// holds and the one chat the provider refuses.
struct World {
    inventory: Vec<NewSession>,
    targeted: Vec<ChatKey>,
    decoys: Vec<ChatKey>,
    /// The chat held as evidence.
    evidence: ChatKey,
    /// The person under a litigation hold.
    held_person: String,
    /// The chat Convai refuses (with `--faults` it goes dead).
    refused: ChatKey,
    chats: usize,
}

impl World {
    /// Seeds the simulated providers, the inventory and the holds.
    fn seed(sim: &Simulator, store: &mut Store, chats: usize, now: i64) -> Result<World> {
        let mut w = World {
            inventory: Vec::new(),
            targeted: Vec::new(),
            decoys: Vec::new(),
            evidence: ChatKey::new(ProviderKind::CONVAI, "", ""),
            held_person: person(2),
            refused: ChatKey::new(ProviderKind::CONVAI, CHARACTERS[0], &id("conv-bad-", 1)),
            chats: chats + 3,
        };
        for n in 0..chats {
            w.seed_chat(sim, n, now);
        }
        w.seed_twins(sim, now);
        // A chat the provider refuses (it will go dead, and its request fail, with the reason).
        let bad = w.refused.clone();
        sim.add_convai_chat(&bad.scope, &bad.session_id, now - 86_400);
        w.inventory
            .push(session(&bad, Some(person(1)), None, now - 86_400));
        for s in &w.inventory {
            store.add_session(s)?;
        }
        // Legal holds: a person under litigation hold, and one chat kept as evidence.
        store.add_hold(
            &HoldTarget::Subject(w.held_person.clone()),
            "litigation hold LH-2026-014",
            now,
        )?;
        w.evidence = w
            .targeted
            .iter()
            .find(|k| k.provider == ProviderKind::CONVAI)
            .cloned()
            .context("no Convai chat to hold")?;
        store.add_hold(
            &HoldTarget::Chat(w.evidence.clone()),
            "evidence in complaint C-77",
            now,
        )?;
        Ok(w)
    }

    /// Chat `n`: two thirds at Convai, a third at KooSearch (a fifth of those not in the
    /// inventory: only discovery finds them); ages spread over 90 days.
    fn seed_chat(&mut self, sim: &Simulator, n: usize, now: i64) {
        let owner = n % PEOPLE;
        let requested = owner < REQUESTED;
        let age_days = (n * 7919 % 90) as i64;
        let created = now - age_days * 86_400 - 3600;
        let (chat, expired) = if !n.is_multiple_of(3) {
            let ch = CHARACTERS[n % CHARACTERS.len()];
            let chat = ChatKey::new(ProviderKind::CONVAI, ch, &id("", n));
            sim.add_convai_chat(ch, &chat.session_id, created);
            self.inventory
                .push(session(&chat, Some(person(owner)), None, created));
            (chat, ch == RETAINED_CHARACTER && age_days >= 30)
        } else {
            let app = APPLICATIONS[n % APPLICATIONS.len()];
            let chat = ChatKey::new(ProviderKind::KOOSEARCH, app, &id("koo-", n));
            let repo = n.is_multiple_of(2).then_some("kb-handbook");
            sim.add_koosearch_chat(app, &chat.session_id, Some(&person(owner)), repo, created);
            if !n.is_multiple_of(5) {
                self.inventory
                    .push(session(&chat, Some(person(owner)), repo, created));
            }
            (chat, false)
        };
        if requested || expired {
            self.targeted.push(chat);
        } else {
            self.decoys.push(chat);
        }
    }

    /// The same session ID under two characters: only the requested person's goes.
    fn seed_twins(&mut self, sim: &Simulator, now: i64) {
        let twin = id("twin-", 1);
        for (ch, owner) in [
            (CHARACTERS[0], person(0)),
            (CHARACTERS[1], person(PEOPLE - 1)),
        ] {
            sim.add_convai_chat(ch, &twin, now - 86_400);
            let chat = ChatKey::new(ProviderKind::CONVAI, ch, &twin);
            self.inventory
                .push(session(&chat, Some(owner), None, now - 86_400));
        }
        self.targeted
            .push(ChatKey::new(ProviderKind::CONVAI, CHARACTERS[0], &twin));
        self.decoys
            .push(ChatKey::new(ProviderKind::CONVAI, CHARACTERS[1], &twin));
    }

    fn file_requests(&self, store: &mut Store, now: i64, deadline: Duration) -> Result<usize> {
        for n in 0..REQUESTED {
            store.file_request(
                &person(n),
                Some(&format!("DSR-2026-{n:04}")),
                now,
                deadline.as_secs() as i64,
            )?;
        }
        Ok(REQUESTED)
    }

    /// Whether a hold covers the chat: the evidence chat, or a chat of the held person.
    /// The chat the demo plants to reappear: a targeted Convai chat that is neither held nor
    /// refused.
    fn planted(&self) -> &ChatKey {
        self.targeted
            .iter()
            .find(|k| k.provider == ProviderKind::CONVAI && !self.is_held(k) && **k != self.refused)
            .expect("the demo targets Convai chats")
    }

    fn is_held(&self, k: &ChatKey) -> bool {
        *k == self.evidence
            || self.inventory.iter().any(|s| {
                s.provider == k.provider.as_str()
                    && s.scope == k.scope
                    && s.session_id == k.session_id
                    && s.subject.as_deref() == Some(self.held_person.as_str())
            })
    }

    /// Every check of the report against what the simulator saw; the failures, in words.
    fn check(&self, r: &DemoReport, sim: &Simulator, faults: bool) -> Vec<String> {
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
                format!(
                    "{kind}: forgetd recorded {ours} deletions, the simulator performed {theirs}"
                ),
            );
        }
        let must_go: Vec<&ChatKey> = self
            .targeted
            .iter()
            .filter(|k| !self.is_held(k) && **k != self.refused)
            .collect();
        let gone = must_go.iter().filter(|k| !sim.has(k)).count();
        fail(
            gone == must_go.len(),
            format!("{} of {} targeted chats were deleted", gone, must_go.len()),
        );
        let held: Vec<&ChatKey> = self.targeted.iter().filter(|k| self.is_held(k)).collect();
        fail(
            held.iter().all(|k| sim.has(k)),
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
        let deleted: u64 = r.deleted_by_provider.values().sum();
        fail(
            r.verification.verified_absent == deleted,
            format!(
                "{} of {deleted} deleted chats were read back absent",
                r.verification.verified_absent
            ),
        );
        fail(
            r.verification.reappeared == 1,
            format!(
                "the planted reappearance was seen {} time(s), not once",
                r.verification.reappeared
            ),
        );
        fail(
            r.dead.len() == usize::from(faults),
            format!(
                "expected {} dead item(s), found {}",
                usize::from(faults),
                r.dead.len()
            ),
        );
        checks
    }
}

fn session(
    chat: &ChatKey,
    subject: Option<String>,
    repo: Option<&str>,
    created: i64,
) -> NewSession {
    NewSession {
        provider: chat.provider.as_str().into(),
        scope: chat.scope.clone(),
        session_id: chat.session_id.clone(),
        subject,
        repo_id: repo.map(str::to_string),
        created_at: Some(created),
    }
}

/// The report's numbers: forgetd's record, and the simulator's.
fn measure(
    opts: &DemoOptions,
    sim: &Simulator,
    world: &World,
    once: &crate::daemon::OnceReport,
) -> Result<DemoReport> {
    let mut r = DemoReport {
        chats_seeded: world.chats,
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
    r.decoys_untouched = world.decoys.iter().all(|k| sim.has(k));
    let named = sim.named_in_deletes();
    r.untargeted_named_in_deletes = world.decoys.iter().filter(|d| named.contains(d)).count();
    r.verification = store.verification_counts()?;
    let v = store.verify_audit()?;
    r.audit_events = v.events;
    r.audit_intact = v.broken.is_none();
    Ok(r)
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
    let v = &r.verification;
    let _ = writeln!(
        o,
        "read back after deletion: {} absent, {} unverified, {} waiting; {} reappeared after a confirmed deletion and {} deleted again ({} was planted to)",
        v.verified_absent,
        v.unverified,
        v.waiting,
        v.reappeared,
        if v.reappeared == 1 { "was" } else { "were" },
        r.planted_reappearance
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
