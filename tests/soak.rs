//! Soak: the real daemon for a set time against the simulator while feeders write without pause,
//! holds come and go, a rule fires every minute, the simulator's faults switch on and off in
//! phases (5xx bursts, a throttling window, tokens killed, a slow provider), and the daemon is
//! SIGKILLed and SIGHUPed at random. Then: every request filed complete (or failed with a reason
//! for each chat), nothing deleted while held, no decoy named, each deletion recorded once, the
//! chain valid, memory and descriptors flat, the WAL bounded; pickup latency is reported.
//!
//! Bounded in `cargo test` (`FORGETD_SOAK_SECS`, default 100). The long run, whose figures are
//! in docs/BENCHMARKS.md:
//! `FORGETD_SOAK_SECS=1800 cargo test --release --test soak -- --nocapture`.
//! `FORGETD_SOAK_KILL_SECS` sets the mean time between SIGKILLs (0: never, one daemon life).

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The Python feeder: one connection, commands as JSON lines on stdin, one acknowledgement per
/// committed command on stdout (with the time it committed). It retries a busy database as a
/// feeder written from the README would.
const PY_FEEDER: &str = r#"
import json, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=10)
for line in sys.stdin:
    c = json.loads(line)
    for attempt in range(20):
        try:
            with db:
                for s in c["sessions"]:
                    db.execute("INSERT INTO sessions (provider, scope, session_id, subject, created_at) "
                               "VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, scope, session_id) DO NOTHING", s)
                if c["request"]:
                    db.execute("INSERT INTO erasure_requests (subject, external_ref) VALUES (?, ?) "
                               "ON CONFLICT (external_ref) DO NOTHING", c["request"])
            break
        except sqlite3.OperationalError as e:
            time.sleep(0.1)
    else:
        print("err", c["tag"], flush=True)
        continue
    print("ok", c["tag"], int(time.time() * 1000), flush=True)
"#;

/// What one feeder command writes.
#[derive(serde::Serialize, Clone)]
struct FeedCommand {
    tag: String,
    /// (provider, scope, session_id, subject, created_at)
    sessions: Vec<(String, String, String, String, i64)>,
    /// (subject, external_ref)
    request: Option<(String, String)>,
}

impl FeedCommand {
    fn sql(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        let mut sql = String::from("BEGIN;");
        for (p, sc, id, subject, at) in &self.sessions {
            sql.push_str(&format!(
                "INSERT INTO sessions (provider, scope, session_id, subject, created_at) VALUES ({}, {}, {}, {}, {at}) ON CONFLICT (provider, scope, session_id) DO NOTHING;",
                q(p),
                q(sc),
                q(id),
                q(subject)
            ));
        }
        if let Some((subject, r)) = &self.request {
            sql.push_str(&format!(
                "INSERT INTO erasure_requests (subject, external_ref) VALUES ({}, {}) ON CONFLICT (external_ref) DO NOTHING;",
                q(subject),
                q(r)
            ));
        }
        sql.push_str("COMMIT;");
        sql
    }
}

/// A long-lived Python feeder process.
struct PyFeeder {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    acks: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PyFeeder {
    fn start(db: &Path) -> Self {
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", PY_FEEDER])
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 (the README's feeder) must be installed");
        let stdin = child.stdin.take().unwrap();
        let acks = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, stdin, acks }
    }
    /// Writes `c` and waits for its acknowledgement: the commit time (unix ms).
    async fn feed(&mut self, c: &FeedCommand) -> i64 {
        let mut line = serde_json::to_string(c).unwrap();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let ack = self.acks.next_line().await.unwrap().expect("feeder died");
        let f: Vec<&str> = ack.split(' ').collect();
        assert_eq!(f[0], "ok", "a feeder could not commit: {ack}");
        f[2].parse().unwrap()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One daemon process's life: its samples of resident memory (KiB) and open descriptors.
#[derive(Default)]
struct Segment {
    pid: u32,
    started: Option<Instant>,
    samples: Vec<(f64, u64, usize)>,
}

impl Segment {
    fn sample(&mut self) {
        let Some(t0) = self.started else { return };
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map(|d| d.count());
        if let (Ok(status), Ok(fds)) = (status, fds) {
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.samples.push((t0.elapsed().as_secs_f64(), rss, fds));
        }
    }
    /// Samples after the first `warmup` seconds (start-up allocates and caches).
    fn settled(&self, warmup: f64) -> Vec<(f64, u64, usize)> {
        self.samples
            .iter()
            .copied()
            .filter(|s| s.0 >= warmup)
            .collect()
    }
    fn span(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.0)
    }
}

/// Least-squares slope of `y` over `x`, per minute.
fn slope_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// A hold on one subject, from when `holds add` returned until `holds remove` started.
struct HoldSpan {
    subject: String,
    placed_ms: i64,
    lifted_ms: Option<i64>,
    id: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Calm,
    ServerErrors,
    Throttling,
    TokensKilled,
    Slow,
}

const PHASES: [Phase; 5] = [
    Phase::Calm,
    Phase::ServerErrors,
    Phase::Throttling,
    Phase::TokensKilled,
    Phase::Slow,
];

fn apply(sim: &Simulator, phase: Phase) {
    sim.update_faults(|f| {
        *f = Faults {
            latency: Duration::from_millis(5),
            ..Faults::default()
        };
        match phase {
            Phase::Calm | Phase::TokensKilled => {}
            Phase::ServerErrors => f.error_rate = 0.3,
            Phase::Throttling => {
                f.throttle_rate = 0.3;
                f.retry_after = Duration::from_secs(1);
            }
            Phase::Slow => f.latency = Duration::from_millis(300),
        }
    });
    if phase == Phase::TokensKilled {
        sim.expire_tokens();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_fed_continuously_through_faults_kills_and_reloads_keeps_every_promise() {
    let secs: u64 = std::env::var("FORGETD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("FORGETD_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261202);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = Scratch::new();
    let sim = Simulator::start(
        std::sync::Arc::new(SystemClock),
        Faults {
            latency: Duration::from_millis(5),
            ..Faults::default()
        },
        seed,
    )
    .await
    .unwrap();
    let port = free_port();
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n\n[verify]\nafter = \"5s\"\n\n\
             [[rules]]\nname = \"rule-char-30d\"\nprovider = \"convai\"\nscope = \"char-r\"\n\
             max_age = \"30d\"\nschedule = \"* * * * *\"\n"
        ),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nbatch_size = 20\nconcurrency = 2",
    );
    std::fs::write(&cfg, text).unwrap();
    let db = s.db();
    // The schema exists before the feeders connect.
    assert_eq!(code(&s.forgetd(&["status"])), 0);

    // FORGETD_SOAK_LOG=FILE keeps every daemon life's log (appended), to read after a failure.
    let log = std::env::var_os("FORGETD_SOAK_LOG");
    let start_daemon = || {
        let stderr = match &log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
                .into(),
            None => std::process::Stdio::null(),
        };
        tokio::process::Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap(), "run"])
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut daemon = start_daemon();
    let mut segments = vec![Segment {
        pid: daemon.id().unwrap(),
        started: Some(Instant::now()),
        ..Default::default()
    }];

    let mut feeders = [PyFeeder::start(&db), PyFeeder::start(&db)];
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.busy_timeout(Duration::from_secs(10)).unwrap();

    // Who is who: requested people (some under holds), decoys nobody asks about, rule chats.
    let mut requested: HashMap<String, Vec<ChatKey>> = HashMap::new();
    let mut decoys: HashSet<ChatKey> = HashSet::new();
    let mut subject_of: HashMap<ChatKey, String> = HashMap::new();
    let mut expired: Vec<(ChatKey, i64)> = Vec::new();
    let mut fresh: HashSet<ChatKey> = HashSet::new();
    let mut holds: Vec<HoldSpan> = Vec::new();
    // Requests: ref -> (commit time, daemon segment at commit).
    let mut filed: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    let mut picked: HashMap<String, i64> = HashMap::new();
    let mut pickup_ms: Vec<i64> = Vec::new();
    let mut listed: HashSet<String> = HashSet::new();
    let mut listed_ms: Vec<i64> = Vec::new();

    let began = Instant::now();
    let deadline = began + Duration::from_secs(secs);
    // Kills: a few per run, so a long run also has long-lived processes to measure.
    // `FORGETD_SOAK_KILL_SECS` sets the mean interval; 0 never kills, so the whole run is one
    // daemon life (the memory question needs one long life, not several short ones).
    let kill_every = std::env::var("FORGETD_SOAK_KILL_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or((secs / 4).clamp(20, 300)) as f64;
    let never = Duration::from_secs(secs + 3600);
    let until_kill = |rng: &mut rand::rngs::StdRng| {
        if kill_every == 0.0 {
            never
        } else {
            Duration::from_secs_f64(kill_every * rng.random_range(0.5..1.5))
        }
    };
    let mut next_kill = Instant::now() + until_kill(&mut rng);
    let mut next_hup = Instant::now() + Duration::from_secs(rng.random_range(4..12));
    let mut next_phase = Instant::now() + Duration::from_secs(12);
    let mut phase_i = 0;
    let mut next_sample = Instant::now();
    let (mut kills, mut hups, mut phases_run) = (0, 0, vec![Phase::Calm]);
    let mut n: u64 = 0;

    while Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_sample {
            segments.last_mut().unwrap().sample();
            next_sample = now + Duration::from_secs(1);
        }
        {
            // Pickup: the first time a filed request is seen past `received` (looked at every
            // round, about every 150 ms).
            let mut st = reader
                .prepare_cached(
                    "SELECT external_ref FROM erasure_requests WHERE state <> 'received' AND received_at >= ?1",
                )
                .unwrap();
            let since = (now_ms() / 1000) - 600;
            let refs: Vec<String> = st
                .query_map([since], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            drop(st);
            let seen = now_ms();
            let segment = segments.len() - 1;
            for r in refs {
                if picked.contains_key(&r) {
                    continue;
                }
                if let Some((at, seg)) = filed.get(&r) {
                    picked.insert(r.clone(), seen);
                    // A request filed while one daemon ran, and picked up by the same one.
                    if *seg == segment {
                        pickup_ms.push(seen - at);
                    }
                }
            }
            // Listed: the first time every listing by subject of a picked-up request has ended
            // (its discovered chats joined it), by the same daemon.
            let mut st = reader
                .prepare_cached(
                    "SELECT r.external_ref FROM erasure_requests r
                     WHERE r.state <> 'received' AND r.received_at >= ?1
                       AND EXISTS (SELECT 1 FROM request_discovery d WHERE d.request_id = r.id)
                       AND NOT EXISTS (SELECT 1 FROM request_discovery d
                                       WHERE d.request_id = r.id AND d.state = 'pending')",
                )
                .unwrap();
            let refs: Vec<String> = st
                .query_map([since], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            drop(st);
            for r in refs {
                if listed.contains(&r) {
                    continue;
                }
                listed.insert(r.clone());
                if let Some((at, seg)) = filed.get(&r)
                    && *seg == segment
                    && picked.contains_key(&r)
                {
                    listed_ms.push(seen - at);
                }
            }
        }
        if now >= next_kill {
            daemon.start_kill().unwrap(); // SIGKILL
            let _ = daemon.wait().await;
            kills += 1;
            daemon = start_daemon();
            segments.push(Segment {
                pid: daemon.id().unwrap(),
                started: Some(Instant::now()),
                ..Default::default()
            });
            next_kill = Instant::now() + until_kill(&mut rng);
        }
        if now >= next_hup {
            let pid = daemon.id().unwrap().to_string();
            assert!(
                std::process::Command::new("kill")
                    .args(["-HUP", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            hups += 1;
            next_hup = now + Duration::from_secs(rng.random_range(4..12));
        }
        if now >= next_phase {
            phase_i = (phase_i + 1) % PHASES.len();
            apply(&sim, PHASES[phase_i]);
            phases_run.push(PHASES[phase_i]);
            next_phase = now + Duration::from_secs(rng.random_range(8..16));
        }

        // Holds come and go: lift an old one now and then.
        if rng.random_bool(0.05)
            && let Some(h) = holds
                .iter_mut()
                .filter(|h| h.lifted_ms.is_none())
                .find(|h| now_ms() - h.placed_ms > 5_000)
        {
            h.lifted_ms = Some(now_ms());
            let o = s.forgetd(&["holds", "remove", &h.id]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }

        // One person per round.
        n += 1;
        let person = format!("u{n:05}");
        let kind = n % 10;
        let created = 1_790_000_000;
        let mut sessions = Vec::new();
        let mut chats = Vec::new();
        for (k, ch) in ["char-a", "char-b"].iter().enumerate() {
            let id = format!("{person}-c{k}");
            sim.add_convai_chat(ch, &id, created);
            sessions.push((
                "convai".to_string(),
                ch.to_string(),
                id.clone(),
                person.clone(),
                created,
            ));
            chats.push(ChatKey::new(ProviderKind::CONVAI, ch, &id));
        }
        let kid = format!("{person}-k0");
        sim.add_koosearch_chat("app-1", &kid, Some(&person), None, created);
        chats.push(ChatKey::new(ProviderKind::KOOSEARCH, "app-1", &kid));
        // The rule's chats: one long expired, one fresh (a decoy the rule must leave).
        let old = ChatKey::new(ProviderKind::CONVAI, "char-r", &format!("{person}-old"));
        let new = ChatKey::new(ProviderKind::CONVAI, "char-r", &format!("{person}-new"));
        let now_s = now_ms() / 1000;
        sim.add_convai_chat("char-r", &old.session_id, 1_600_000_000);
        sim.add_convai_chat("char-r", &new.session_id, now_s);
        sessions.push((
            "convai".into(),
            "char-r".into(),
            old.session_id.clone(),
            format!("{person}-rule"),
            1_600_000_000,
        ));
        sessions.push((
            "convai".into(),
            "char-r".into(),
            new.session_id.clone(),
            format!("{person}-rule"),
            now_s,
        ));
        fresh.insert(new);
        for c in &chats {
            subject_of.insert(c.clone(), person.clone());
        }
        let request = if kind == 0 || kind == 5 {
            decoys.extend(chats.iter().cloned());
            None
        } else {
            if kind == 3 {
                // Held before the request is filed.
                let o = s.forgetd(&["holds", "add", "--subject", &person, "--reason", "soak"]);
                assert_eq!(code(&o), 0, "{}", stderr(&o));
                holds.push(HoldSpan {
                    subject: person.clone(),
                    placed_ms: now_ms(),
                    lifted_ms: None,
                    id: stdout(&o).trim().to_string(),
                });
            }
            requested.insert(person.clone(), chats.clone());
            Some((person.clone(), format!("R-{person}")))
        };
        let cmd = FeedCommand {
            tag: person.clone(),
            sessions,
            request: request.clone(),
        };
        let committed = match n % 3 {
            0 => {
                let sql = cmd.sql();
                let db2 = db.clone();
                let o = tokio::task::spawn_blocking(move || sqlite3(&db2, &sql))
                    .await
                    .unwrap();
                assert_eq!(code(&o), 0, "{}", stderr(&o));
                now_ms()
            }
            i => feeders[i as usize - 1].feed(&cmd).await,
        };
        expired.push((old, committed));
        if let Some((_, r)) = request {
            filed.insert(r, (committed, segments.len() - 1));
        }
        tokio::time::sleep(Duration::from_millis(120)).await;
    }

    // The cut-off: no more feeding, faults off; every filed request must end.
    let cut_off = now_ms();
    apply(&sim, Phase::Calm);
    for f in &mut feeders {
        let _ = f.child.start_kill();
    }
    let mut open = i64::MAX;
    let end_by = Instant::now() + Duration::from_secs(240);
    while Instant::now() < end_by {
        segments.last_mut().unwrap().sample();
        open = reader
            .query_row(
                "SELECT count(*) FROM erasure_requests WHERE state NOT IN ('complete', 'failed')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if open != 0 {
        let items: Vec<String> = reader
            .prepare(
                "SELECT r.id || ' ' || r.state || ': ' || group_concat(w.session_id || '=' || w.state || coalesce('(' || w.last_error || ')', ''), ', ')
                 FROM erasure_requests r JOIN request_items ri ON ri.request_id = r.id JOIN work_items w ON w.id = ri.item_id
                 WHERE r.state NOT IN ('complete', 'failed') GROUP BY r.id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let listings: Vec<String> = reader
            .prepare(
                "SELECT d.request_id || ' ' || d.provider || '/' || d.scope || ' ' || d.state || ' attempts ' || d.attempts
                        || ' next ' || d.next_at || coalesce(' lease ' || d.lease_until, '') || coalesce(' (' || d.last_error || ')', '')
                 FROM request_discovery d JOIN erasure_requests r ON r.id = d.request_id
                 WHERE r.state NOT IN ('complete', 'failed')",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        panic!(
            "requests still open 4 minutes after the cut-off: {items:#?}\ntheir listings: {listings:#?}"
        );
    }
    let pid = daemon.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let st = daemon.wait().await.unwrap();
    assert!(st.success(), "the daemon did not stop cleanly: {st}");

    // Every request filed is there and complete, or failed with a reason for each chat.
    let mut stmt = reader
        .prepare("SELECT external_ref, state FROM erasure_requests")
        .unwrap();
    let states: HashMap<String, String> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(stmt);
    let mut failed = 0;
    for r in filed.keys() {
        match states.get(r).map(String::as_str) {
            Some("complete") => {}
            Some("failed") => {
                failed += 1;
                let unexplained: i64 = reader
                    .query_row(
                        "SELECT count(*) FROM work_items w JOIN request_items ri ON ri.item_id = w.id
                         JOIN erasure_requests e ON e.id = ri.request_id
                         WHERE e.external_ref = ?1 AND w.state = 'dead' AND w.last_error IS NULL",
                        [r],
                        |row| row.get(0),
                    )
                    .unwrap();
                let unexplained_listings: i64 = reader
                    .query_row(
                        "SELECT count(*) FROM request_discovery d JOIN erasure_requests e ON e.id = d.request_id
                         WHERE e.external_ref = ?1 AND d.state = 'failed' AND d.last_error IS NULL",
                        [r],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert_eq!(
                    unexplained_listings, 0,
                    "request {r}'s listing failed without a reason"
                );
                assert_eq!(unexplained, 0, "request {r} failed without a reason");
            }
            other => panic!("request {r} lost or unfinished: {other:?}"),
        }
    }

    // Nothing deleted while held, no decoy named, the rule left fresh chats.
    let calls = sim.calls();
    let mut named_at: HashMap<ChatKey, Vec<i64>> = HashMap::new();
    for c in calls.iter().filter(|c| c.op == "delete") {
        for id in &c.ids {
            named_at
                .entry(ChatKey::new(c.provider, &c.scope, id))
                .or_default()
                .push(c.at_ms);
        }
    }
    // The hold is checked right before each call; what remains is the time from that check to
    // the call reaching the simulator, and the CLI's own commit after `placed_ms` was read.
    let margin = 100;
    for h in &holds {
        for chat in &requested[&h.subject] {
            for at in named_at.get(chat).into_iter().flatten() {
                let held = *at > h.placed_ms + margin && h.lifted_ms.is_none_or(|l| *at < l);
                assert!(!held, "{chat:?} named in a delete at {at} while held");
            }
            if h.lifted_ms.is_none() {
                assert!(sim.has(chat), "{chat:?} deleted under a standing hold");
            }
        }
    }
    for d in &decoys {
        assert!(
            !named_at.contains_key(d) && sim.has(d),
            "decoy {d:?} of {} touched",
            subject_of[d]
        );
    }
    for f in &fresh {
        assert!(
            !named_at.contains_key(f) && sim.has(f),
            "fresh {f:?} touched by the rule"
        );
    }
    for (person, chats) in &requested {
        let standing = holds
            .iter()
            .any(|h| &h.subject == person && h.lifted_ms.is_none());
        if !standing && states.get(&format!("R-{person}")).map(String::as_str) == Some("complete") {
            for c in chats {
                assert!(!sim.has(c), "{c:?} of {person} survived a complete request");
            }
        }
    }
    // The rule ran every minute: chats expired more than two minutes before the cut-off are gone.
    for (c, at) in &expired {
        if *at < cut_off - 120_000 {
            assert!(!sim.has(c), "expired {c:?} (filed at {at}) still there");
        }
    }

    // Each deletion recorded once, though kills made some batches go out twice.
    let mut stmt = reader
        .prepare(
            "SELECT json_extract(audit_log.data, '$.provider') || '/' || json_extract(audit_log.data, '$.scope') || '/' || j.value
             FROM audit_log, json_each(json_extract(audit_log.data, '$.deleted')) j WHERE kind = 'batch.answered'",
        )
        .unwrap();
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for k in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        *recorded.entry(k.unwrap()).or_default() += 1;
    }
    drop(stmt);
    let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "recorded deleted more than once: {twice:?}"
    );
    let o = s.forgetd(&["audit", "verify"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Memory and descriptors: flat within each daemon's life (after a warm-up).
    let warmup = 5.0;
    let mut report = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let pts = seg.settled(warmup);
        if pts.len() < 15 {
            continue;
        }
        let rss: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1 as f64)).collect();
        let fds: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.2 as f64)).collect();
        let (fd_min, fd_max) = (
            pts.iter().map(|p| p.2).min().unwrap(),
            pts.iter().map(|p| p.2).max().unwrap(),
        );
        let third = pts.len() / 3;
        let mean =
            |xs: &[(f64, u64, usize)]| xs.iter().map(|p| p.1 as f64).sum::<f64>() / xs.len() as f64;
        let (early, late) = (mean(&pts[..third]), mean(&pts[pts.len() - third..]));
        // A leak grows at one rate all life long; caches filling (SQLite's page cache, the
        // allocator's arenas) grow fast first and then flatten: the slope of each third tells.
        let thirds: Vec<String> = rss
            .chunks(third.max(1))
            .take(3)
            .map(|c| format!("{:+.0}", slope_per_min(c)))
            .collect();
        report.push(format!(
            "  daemon {i}: {:.0} s, RSS {:.1} -> {:.1} MiB (slope {:+.1} KiB/min; by thirds {} KiB/min), fds {fd_min}..{fd_max} (slope {:+.2}/min)",
            seg.span(),
            early / 1024.0,
            late / 1024.0,
            slope_per_min(&rss),
            thirds.join(", "),
            slope_per_min(&fds)
        ));
        assert!(
            fd_max - fd_min <= 24,
            "daemon {i}: descriptors grew from {fd_min} to {fd_max}"
        );
        assert!(
            late <= early * 1.5 + 8.0 * 1024.0,
            "daemon {i}: memory grew from {early:.0} to {late:.0} KiB"
        );
    }

    // The file: WAL checkpointed, nothing but live pages.
    let size = |p: &str| std::fs::metadata(s.path(p)).map_or(0, |m| m.len());
    let (db_bytes, wal_bytes) = (size("forgetd.db"), size("forgetd.db-wal"));
    let (pages, free): (i64, i64) = reader
        .query_row(
            "SELECT (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let rows: (i64, i64) = reader
        .query_row(
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM work_items)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        wal_bytes <= 20 << 20,
        "the WAL grew to {wal_bytes} bytes: not checkpointed"
    );
    assert!(
        free * 5 <= pages.max(100),
        "{free} of {pages} pages free: the file holds dead space"
    );

    pickup_ms.sort();
    listed_ms.sort();
    let deletes = calls.iter().filter(|c| c.op == "delete").count();
    eprintln!(
        "soak: {secs} s, seed {seed}: {} people, {} requests ({failed} failed with reasons), {} holds ({} lifted), {kills} SIGKILLs, {hups} SIGHUPs, {} fault phases, {deletes} delete calls\n\
         pickup latency (request committed -> seen resolved by the same daemon; looked at every ~150 ms): p50 {} ms, p99 {} ms, max {} ms over {} requests\n\
         listed latency (request committed -> every listing by subject ended, same daemon): p50 {} ms, p99 {} ms, max {} ms over {} requests\n\
         database: {:.1} MiB file ({pages} pages, {free} free), WAL {:.1} MiB, {} sessions, {} work items\n{}",
        n,
        filed.len(),
        holds.len(),
        holds.iter().filter(|h| h.lifted_ms.is_some()).count(),
        phases_run.len(),
        percentile(&pickup_ms, 0.5),
        percentile(&pickup_ms, 0.99),
        pickup_ms.last().copied().unwrap_or(0),
        pickup_ms.len(),
        percentile(&listed_ms, 0.5),
        percentile(&listed_ms, 0.99),
        listed_ms.last().copied().unwrap_or(0),
        listed_ms.len(),
        db_bytes as f64 / (1 << 20) as f64,
        wal_bytes as f64 / (1 << 20) as f64,
        rows.0,
        rows.1,
        report.join("\n")
    );
}
