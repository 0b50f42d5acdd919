//! The proof that the feeder's-life class of bug is gone, not just its known instances: a
//! model-based test of the whole pipeline.
//!
//! A proptest strategy generates feeder histories: chats recorded (the same ID under two
//! characters) and inventory rows deleted by hand, people asking once, twice, and with the same
//! ref again, subject and chat holds placed and lifted in any order, a retention rule with a
//! small ceiling added and approved, request rows a feeder tries to delete, values of the wrong
//! type tried. Between steps come `run --once` drains, each through a freshly prepared daemon
//! (a restart: lock, migrations, in-flight release), against the real store and the simulator.
//!
//! A small reference model says, before each drain, which chats may be named in a delete call
//! (targeted by a request or a rule run and covered by no hold) and, after it, which must be gone.
//! Both are checked against the simulator's own record of every call.
//!
//! `cargo test` runs a bounded number of histories (24); `FORGETD_MODEL_CASES=2000 cargo test
//! --release --test feeder_model` is the long run (`FORGETD_MODEL_STATS=FILE` writes one line per
//! history: steps, drains, delete calls). Shrunk failures are kept as regression tests below.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use forgetd::clock::{Clock, ManualClock, SharedClock};
use forgetd::config::{Config, RuleSpec};
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use forgetd::store::holds::HoldTarget;
use proptest::prelude::*;

mod common;

const PEOPLE: [&str; 3] = ["ann", "ben", "cat"];
const SCOPES: [&str; 2] = ["char-a", "char-b"];
const MAX_DELETIONS: u64 = 3;
const DAY: i64 = 86_400;

/// A chat: (scope index, id index); the same id under the other scope is another chat.
type Chat = (usize, usize);

#[derive(Debug, Clone)]
enum Step {
    AddChat {
        chat: Chat,
        owner: Option<usize>,
        old: bool,
    },
    DeleteRow(Chat),
    File {
        person: usize,
        r#ref: usize,
    },
    HoldSubject(usize),
    HoldChat(Chat),
    Lift(usize),
    AddRule,
    Approve,
    DeleteRequestRow(usize),
    WrongType(usize),
    Drain,
}

fn chat() -> impl Strategy<Value = Chat> {
    (0..SCOPES.len(), 0..5usize)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (chat(), proptest::option::weighted(0.8, 0..PEOPLE.len()), any::<bool>())
            .prop_map(|(chat, owner, old)| Step::AddChat { chat, owner, old }),
        1 => chat().prop_map(Step::DeleteRow),
        3 => (0..PEOPLE.len(), 0..2usize).prop_map(|(person, r#ref)| Step::File { person, r#ref }),
        2 => (0..PEOPLE.len()).prop_map(Step::HoldSubject),
        1 => chat().prop_map(Step::HoldChat),
        2 => (0..4usize).prop_map(Step::Lift),
        1 => Just(Step::AddRule),
        1 => Just(Step::Approve),
        1 => (0..4usize).prop_map(Step::DeleteRequestRow),
        1 => (0..4usize).prop_map(Step::WrongType),
        3 => Just(Step::Drain),
    ]
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 1..28).prop_map(|mut v| {
        v.push(Step::Drain);
        v
    })
}

#[derive(Debug, Clone)]
enum HoldOn {
    Subject(usize),
    Chat(Chat),
}

/// What forgetd must do, computed from the history alone.
#[derive(Debug, Default)]
struct Model {
    /// Chats ever recorded (once each), at the provider until deleted.
    known: BTreeSet<Chat>,
    /// The inventory rows that exist and their owners.
    rows: BTreeMap<Chat, Option<usize>>,
    old: BTreeSet<Chat>,
    /// Chats that became work items, with the owner they were resolved for.
    items: BTreeMap<Chat, Option<usize>>,
    deleted: BTreeSet<Chat>,
    /// Filed refs, and whether each was resolved yet.
    requests: BTreeMap<(usize, usize), bool>,
    /// Holds in the order placed: (store id, target, active).
    holds: Vec<(i64, HoldOn, bool)>,
    rule: bool,
    awaiting: Option<u64>,
    approved_up_to: Option<u64>,
}

impl Model {
    fn held(&self, c: &Chat) -> bool {
        self.holds.iter().any(|(_, h, active)| {
            *active
                && match h {
                    HoldOn::Chat(x) => x == c,
                    HoldOn::Subject(p) => {
                        self.items.get(c).copied().flatten() == Some(*p)
                            || self.rows.get(c).copied().flatten() == Some(*p)
                    }
                }
        })
    }

    fn enqueue(&mut self, c: Chat, owner: Option<usize>) {
        let e = self.items.entry(c).or_insert(owner);
        if e.is_none() {
            *e = owner;
        }
    }

    /// Resolution and the rule run of one `run --once`; returns the chats that may be named.
    fn before_drain(&mut self) -> BTreeSet<Chat> {
        let unresolved: Vec<(usize, usize)> = self
            .requests
            .iter()
            .filter(|(_, resolved)| !**resolved)
            .map(|(k, _)| *k)
            .collect();
        for (person, r) in unresolved {
            let chats: Vec<Chat> = self
                .rows
                .iter()
                .filter(|(_, o)| **o == Some(person))
                .map(|(c, _)| *c)
                .collect();
            for c in chats {
                if !self.deleted.contains(&c) {
                    self.enqueue(c, Some(person));
                }
            }
            self.requests.insert((person, r), true);
        }
        if self.rule {
            let matched: Vec<Chat> = self
                .rows
                .keys()
                .filter(|c| c.0 == 0 && self.old.contains(c) && !self.deleted.contains(c))
                .copied()
                .collect();
            let n = matched.len() as u64;
            let approved = self.awaiting.is_some() && self.approved_up_to.is_some_and(|u| n <= u);
            if n > MAX_DELETIONS && !approved {
                self.awaiting = Some(n);
                self.approved_up_to = None;
            } else {
                self.awaiting = None;
                self.approved_up_to = None;
                for c in matched {
                    let owner = self.rows[&c];
                    self.enqueue(c, owner);
                }
            }
        }
        self.items
            .keys()
            .filter(|c| !self.deleted.contains(c) && !self.held(c))
            .copied()
            .collect()
    }

    /// After a drain, what it was allowed to delete is gone. (Rows of deleted chats may leave the
    /// inventory, data minimisation; nothing above reads a deleted chat's row.)
    fn after_drain(&mut self, gone: &BTreeSet<Chat>) {
        self.deleted.extend(gone.iter().copied());
    }
}

struct World {
    s: common::Scratch,
    feeder: std::cell::RefCell<Feeder>,
    sim: Simulator,
    clock: ManualClock,
}

/// A feeder's own connection: rusqlite on SQLite, the `postgres` client on PostgreSQL. Its
/// statements are written once, with `?N` placeholders (rewritten to `$N` for PostgreSQL).
enum Feeder {
    Sqlite(rusqlite::Connection),
    /// Always `Some` but while dropped.
    Pg(Option<postgres::Client>),
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime too: off this test's runtime.
        if let Self::Pg(c) = self {
            let c = c.take();
            std::thread::spawn(move || drop(c)).join().unwrap();
        }
    }
}

/// A statement argument.
enum Arg<'a> {
    Text(Option<&'a str>),
    Int(i64),
}

impl Feeder {
    fn open(s: &common::Scratch) -> Self {
        match &s.pg {
            None => {
                let c = rusqlite::Connection::open(s.db()).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                Self::Sqlite(c)
            }
            // The sync client runs a runtime of its own: it is connected (and used) off this
            // test's runtime, on a thread of its own.
            Some(pg) => {
                let info = pg.conninfo();
                std::thread::spawn(move || {
                    Self::Pg(Some(
                        postgres::Client::connect(&info, postgres::NoTls).unwrap(),
                    ))
                })
                .join()
                .unwrap()
            }
        }
    }

    /// Runs one statement; the engine's refusal comes back as its message.
    fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, String> {
        match self {
            Self::Sqlite(c) => {
                let params: Vec<Box<dyn rusqlite::ToSql>> = args
                    .iter()
                    .map(|a| match a {
                        Arg::Text(t) => Box::new(t.map(str::to_string)) as Box<dyn rusqlite::ToSql>,
                        Arg::Int(i) => Box::new(*i),
                    })
                    .collect();
                c.execute(sql, rusqlite::params_from_iter(params))
                    .map(|n| n as u64)
                    .map_err(|e| e.to_string())
            }
            Self::Pg(c) => {
                let sql = pg_placeholders(sql);
                std::thread::scope(|t| {
                    t.spawn(|| {
                        let params: Vec<Box<dyn postgres::types::ToSql + Sync>> = args
                            .iter()
                            .map(|a| match a {
                                Arg::Text(t) => Box::new(t.map(str::to_string))
                                    as Box<dyn postgres::types::ToSql + Sync>,
                                Arg::Int(i) => Box::new(*i),
                            })
                            .collect();
                        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                            params.iter().map(|p| p.as_ref()).collect();
                        c.as_mut()
                            .unwrap()
                            .execute(&sql, &refs)
                            .map_err(|e| e.to_string())
                    })
                    .join()
                    .unwrap()
                })
            }
        }
    }

    /// The first column of every row, as text.
    fn texts(&mut self, sql: &str) -> Vec<String> {
        match self {
            Self::Sqlite(c) => {
                let mut st = c.prepare(sql).unwrap();
                st.query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            Self::Pg(c) => std::thread::scope(|t| {
                t.spawn(|| {
                    c.as_mut()
                        .unwrap()
                        .query(sql, &[])
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect()
                })
                .join()
                .unwrap()
            }),
        }
    }
}

/// `?1` → `$1`: the one spelling difference between the two engines' placeholders.
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn id(c: Chat) -> String {
    format!("c{}", c.1)
}

fn config(w: &World) -> Config {
    let mut c = w.sim.config(w.s.dir.path(), &[]).unwrap();
    c.remove_provider(ProviderKind::KOOSEARCH);
    w.s.use_in(&mut c);
    c.retry.base_delay = Duration::from_millis(100);
    let limits = &mut c.provider_mut(ProviderKind::CONVAI).unwrap().limits;
    limits.batch_size = 3;
    limits.concurrency = 2;
    c
}

async fn run(history: Vec<Step>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared.clone(), Faults::default(), 1)
        .await
        .unwrap();
    let s = common::Scratch::new();
    drop(s.store());
    let w = World {
        feeder: Feeder::open(&s).into(),
        s,
        sim,
        clock,
    };
    let mut m = Model::default();
    let now = || w.clock.now();
    let key_of = |c: Chat| ChatKey {
        provider: ProviderKind::CONVAI,
        scope: SCOPES[c.0].to_string(),
        session_id: id(c),
    };
    let steps = history.len();
    let drains = history.iter().filter(|s| matches!(s, Step::Drain)).count();
    for step in history {
        match step {
            Step::AddChat { chat, owner, old } => {
                if !m.known.insert(chat) {
                    continue;
                }
                let created = if old { now() - 90 * DAY } else { now() - 60 };
                w.sim.add_convai_chat(SCOPES[chat.0], &id(chat), created);
                w.feeder
                    .borrow_mut()
                    .execute(
                        "INSERT INTO sessions (provider, scope, session_id, subject, created_at)
                         VALUES ('convai', ?1, ?2, ?3, ?4)",
                        &[
                            Arg::Text(Some(SCOPES[chat.0])),
                            Arg::Text(Some(&id(chat))),
                            Arg::Text(owner.map(|p| PEOPLE[p])),
                            Arg::Int(created),
                        ],
                    )
                    .unwrap();
                m.rows.insert(chat, owner);
                if old {
                    m.old.insert(chat);
                }
            }
            Step::DeleteRow(chat) => {
                w.feeder
                    .borrow_mut()
                    .execute(
                        "DELETE FROM sessions WHERE provider = 'convai' AND scope = ?1 AND session_id = ?2",
                        &[Arg::Text(Some(SCOPES[chat.0])), Arg::Text(Some(&id(chat)))],
                    )
                    .unwrap();
                m.rows.remove(&chat);
            }
            Step::File { person, r#ref } => {
                w.feeder
                    .borrow_mut()
                    .execute(
                        "INSERT INTO erasure_requests (subject, external_ref, received_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (external_ref) DO NOTHING",
                        &[
                            Arg::Text(Some(PEOPLE[person])),
                            Arg::Text(Some(&format!("{}-{}", PEOPLE[person], r#ref))),
                            Arg::Int(now()),
                        ],
                    )
                    .unwrap();
                m.requests.entry((person, r#ref)).or_insert(false);
            }
            Step::HoldSubject(p) => {
                let (hid, _) =
                    w.s.store()
                        .add_hold(&HoldTarget::Subject(PEOPLE[p].into()), "model", now())
                        .unwrap();
                m.holds.push((hid, HoldOn::Subject(p), true));
            }
            Step::HoldChat(c) => {
                let (hid, _) =
                    w.s.store()
                        .add_hold(&HoldTarget::Chat(key_of(c)), "model", now())
                        .unwrap();
                m.holds.push((hid, HoldOn::Chat(c), true));
            }
            Step::Lift(n) => {
                let active: Vec<usize> = (0..m.holds.len()).filter(|i| m.holds[*i].2).collect();
                if let Some(&i) = active.get(n % active.len().max(1)) {
                    w.s.store().remove_hold(m.holds[i].0, now()).unwrap();
                    m.holds[i].2 = false;
                }
            }
            Step::AddRule => {
                if m.rule {
                    continue;
                }
                w.s.store()
                    .add_rule(
                        &RuleSpec {
                            name: "r".into(),
                            provider: ProviderKind::CONVAI,
                            scope: SCOPES[0].into(),
                            max_age: Duration::from_secs(30 * DAY as u64),
                            schedule: "0 3 * * *".into(),
                            timezone: "UTC".into(),
                            discover: false,
                            max_deletions: MAX_DELETIONS,
                        },
                        now(),
                    )
                    .unwrap();
                m.rule = true;
            }
            Step::Approve => {
                let ok = w.s.store().approve_rule("r").is_ok();
                prop_assert_eq!(ok, m.rule && m.awaiting.is_some(), "approve");
                if ok {
                    m.approved_up_to = m.awaiting;
                }
            }
            Step::DeleteRequestRow(n) => {
                let e = w.feeder.borrow_mut().execute(
                    "DELETE FROM erasure_requests WHERE id = (SELECT id FROM erasure_requests ORDER BY id LIMIT 1 OFFSET ?1)",
                    &[Arg::Int(n as i64)],
                );
                let count = w
                    .feeder
                    .borrow_mut()
                    .texts("SELECT CAST(count(*) AS TEXT) FROM erasure_requests")[0]
                    .parse::<i64>()
                    .unwrap();
                if (n as i64) < count {
                    prop_assert!(e.is_err(), "a feeder deleted a request row");
                }
                prop_assert_eq!(count as usize, m.requests.len());
            }
            Step::WrongType(n) => {
                // Bytes where text belongs (a BLOB on SQLite, bytea on PostgreSQL), and text
                // where a time belongs.
                let sql = if w.s.on_pg() {
                    [
                        "INSERT INTO erasure_requests (subject) VALUES ('\\x616e6e'::bytea)",
                        "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'char-a', '\\x6330'::bytea, 'ann')",
                        "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', '\\x636861722d61'::bytea, 'c9', 'ann')",
                        "INSERT INTO erasure_requests (subject, received_at) VALUES ('ann', 'now')",
                    ][n % 4]
                } else {
                    [
                        "INSERT INTO erasure_requests (subject) VALUES (x'616e6e')",
                        "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'char-a', x'6330', 'ann')",
                        "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', x'636861722d61', 'c9', 'ann')",
                        "INSERT INTO erasure_requests (subject, received_at) VALUES ('ann', 'now')",
                    ][n % 4]
                };
                prop_assert!(
                    w.feeder.borrow_mut().execute(sql, &[]).is_err(),
                    "accepted: {}",
                    sql
                );
            }
            Step::Drain => {
                let allowed = m.before_drain();
                let before = w.sim.calls().len();
                let prepared = forgetd::daemon::Daemon::build(config(&w), shared.clone()).unwrap();
                let report = prepared.run_once().await.unwrap();
                drop(prepared);
                prop_assert!(
                    report.problems.is_empty(),
                    "drain problems: {:?}",
                    report.problems
                );
                let calls = w.sim.calls();
                let mut named = BTreeSet::new();
                for c in &calls[before..] {
                    if c.op != "delete" {
                        continue;
                    }
                    for sid in &c.ids {
                        let s = SCOPES.iter().position(|x| *x == c.scope).unwrap();
                        let i: usize = sid[1..].parse().unwrap();
                        named.insert((s, i));
                    }
                }
                let extra: Vec<_> = named.difference(&allowed).collect();
                prop_assert!(
                    extra.is_empty(),
                    "named in a delete call but held or never targeted: {:?}",
                    extra
                );
                for c in &m.known {
                    let should_exist = !m.deleted.contains(c) && !allowed.contains(c);
                    prop_assert_eq!(
                        w.sim.exists(ProviderKind::CONVAI, SCOPES[c.0], &id(*c)),
                        should_exist,
                        "chat {:?}",
                        c
                    );
                }
                m.after_drain(&allowed);
                let states = w
                    .feeder
                    .borrow_mut()
                    .texts("SELECT state FROM erasure_requests");
                prop_assert!(
                    states.iter().all(|s| s == "complete"),
                    "every request complete after a fault-free drain: {:?}",
                    states
                );
                w.clock.advance(Duration::from_secs(3600));
            }
        }
    }
    let v = w.s.store().verify_audit().unwrap();
    prop_assert!(v.broken.is_none(), "audit chain: {:?}", v.broken);
    // For the README's figures: one line per history, "steps drains delete-calls".
    if let Some(path) = std::env::var_os("FORGETD_MODEL_STATS") {
        use std::io::Write;
        let deletes = w.sim.calls().iter().filter(|c| c.op == "delete").count();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{steps} {drains} {deletes}").unwrap();
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("FORGETD_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn feeder_histories_never_delete_the_wrong_chat_nor_miss_one(h in history()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(h))?;
    }
}

/// Shrunk from a failure of the model test against a store that dropped the owner of every chat
/// of a completed request (the defect this suite was written for): a chat and a subject hold on
/// the same chat, the request completes with it held, the chat hold is lifted, and the next drain
/// deleted it although the subject hold still stood.
#[test]
fn regression_lifting_a_chat_hold_leaves_the_subject_hold_covering() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(vec![
        Step::HoldChat((0, 3)),
        Step::AddChat {
            chat: (0, 3),
            owner: Some(0),
            old: false,
        },
        Step::HoldSubject(0),
        Step::File {
            person: 0,
            r#ref: 0,
        },
        Step::Drain,
        Step::Lift(2),
        Step::Drain,
    ]))
    .unwrap();
}
