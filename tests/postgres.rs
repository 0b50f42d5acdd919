//! The queue on PostgreSQL, through the real binary and psql as a feeder runs it: the feeder
//! contract with SQLite's constraint names and trigger messages, the append-only audit tables
//! (TRUNCATE included), pickup by notification in a running daemon beside a second instance,
//! and a URL that carries a password refused without echoing it.
//!
//! Needs a server: `FORGETD_TEST_PG` (see tests/common `pg`); without one each test says SKIP,
//! and with `FORGETD_PG_REQUIRED=1` (`.ci/run`) it fails instead. These run whatever
//! `FORGETD_TEST_ENGINE` says; the suites that run on both engines are listed in `.ci/run`.

mod common;
use common::*;

use std::sync::Arc;

use forgetd::clock::SystemClock;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};

/// A scratch directory with a PostgreSQL database, or `None` (SKIP) without a server.
fn pg_scratch() -> Option<Scratch> {
    pg::server()?;
    Some(Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: Some(pg::TestDb::create()),
    })
}

fn psql_ok(s: &Scratch, sql: &str) -> String {
    let o = s.sqlite3(sql);
    assert_eq!(code(&o), 0, "{sql}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn the_feeder_contract_holds_on_postgresql_with_sqlites_names_and_messages() {
    let Some(s) = pg_scratch() else { return };
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "the first open migrates: {}", stderr(&o));
    // The contract's plain inserts, as a feeder writes them.
    psql_ok(
        &s,
        "INSERT INTO sessions(provider, scope, session_id, subject) VALUES ('convai', 'char-1', 'abc123', 'alice');
         INSERT INTO sessions(provider, scope, session_id, subject, repo_id, created_at) VALUES ('koosearch', 'app-1', 'chat_1-x', 'alice', 'kb-1', 1700000000);
         INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1');
         INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1') ON CONFLICT (external_ref) DO NOTHING",
    );
    assert_eq!(
        psql_ok(
            &s,
            "SELECT count(*), min(state), min(received_at) > 1700000000 FROM erasure_requests"
        ),
        "1|received|t"
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&s.forgetd(&["requests", "list", "--json"]))).unwrap();
    assert_eq!(v[0]["external_ref"], "DSR-1");
    assert_eq!(v[0]["state"], "received");

    // Each kind of bad row is refused, naming the rule as SQLite does.
    let long_name = "sessions_repo_id_only_for_koosearch_1_to_64_of_A_Z_a_z_0_9_underscore_dash";
    let cases = [
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('openai', 'c', 's')",
            "sessions_provider_must_be_a_key_of_providers: SELECT key FROM providers",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', 'moved');
             UPDATE sessions SET provider = 'openai' WHERE session_id = 'moved'",
            "sessions_provider_must_be_a_key_of_providers",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', '')",
            "sessions_session_id_must_be_1_to_64_chars",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', repeat('x', 65))",
            "sessions_session_id_must_be_1_to_64_chars",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', '*', 's')",
            "sessions_scope_must_be_1_to_64_chars_and_not_star",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('koosearch', 'app', 'bad id')",
            "sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, subject) VALUES ('convai', 'c', 's', '   ')",
            "sessions_subject_must_be_null_or_not_blank",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, repo_id) VALUES ('convai', 'c', 's', 'kb')",
            long_name,
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, repo_id) VALUES ('koosearch', 'app', 's', 'k b')",
            long_name,
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, created_at) VALUES ('convai', 'c', 's', -5)",
            "sessions_created_at_must_be_unix_seconds",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', '-1')",
            "sessions_convai_session_id_minus_1_means_new_session_not_a_chat",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', E'\\\\x6162', 's')",
            "sessions_scope_must_be_text",
        ),
        (
            "INSERT INTO erasure_requests(subject) VALUES ('')",
            "erasure_requests_subject_must_not_be_blank",
        ),
        (
            "INSERT INTO erasure_requests(subject, state) VALUES ('a', 'complete')",
            "state and progress columns are set by forgetd",
        ),
        (
            // A type the column enforces: PostgreSQL's own words (a documented difference).
            "INSERT INTO erasure_requests(subject, received_at) VALUES ('a', 'yesterday')",
            "invalid input syntax for type bigint",
        ),
        (
            "INSERT INTO erasure_requests(subject, external_ref) VALUES ('b', 'DSR-1')",
            "erasure_requests_external_ref_key",
        ),
        (
            "DELETE FROM erasure_requests",
            "requests are records and cannot be deleted",
        ),
        (
            // A table of one's own, found first (temporary tables are searched first), does
            // not stand in for forgetd's providers: the trigger's search path is fixed.
            "CREATE TEMP TABLE providers (key text); INSERT INTO providers VALUES ('openai');
             INSERT INTO sessions(provider, scope, session_id) VALUES ('openai', 'c', 'shadow')",
            "sessions_provider_must_be_a_key_of_providers",
        ),
        (
            // TRUNCATE skips row triggers; its own trigger refuses it.
            "TRUNCATE erasure_requests CASCADE",
            "requests are records and cannot be deleted",
        ),
        (
            "INSERT INTO erasure_requests(id, subject) VALUES (99, 'a')",
            "cannot insert a non-DEFAULT value into column \"id\"",
        ),
    ];
    assert_each_refused(|sql| s.sqlite3(sql), &cases);
    // Nothing refused got in; the valid row the UPDATE aimed at kept its provider.
    assert_eq!(
        psql_ok(
            &s,
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM erasure_requests),
                    (SELECT provider FROM sessions WHERE session_id = 'moved')"
        ),
        "3|1|convai"
    );

    // forgetd's own refusals read as on SQLite.
    let o = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "koosearch",
        "--scope",
        "app",
        "--id",
        "bad id",
    ]);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_audit_tables_are_append_only_on_postgresql_truncate_included() {
    let Some(s) = pg_scratch() else { return };
    let o = s.forgetd(&[
        "holds",
        "add",
        "--subject",
        "alice",
        "--reason",
        "litigation",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let before = psql_ok(&s, "SELECT count(*) FROM audit_log");
    assert_eq!(before, "1", "placing a hold is audited");
    for (sql, message) in [
        (
            "UPDATE audit_log SET data = '{}'",
            "audit_log is append-only: rows cannot be changed",
        ),
        (
            "DELETE FROM audit_log",
            "audit_log is append-only: rows cannot be deleted",
        ),
        (
            "TRUNCATE audit_log CASCADE",
            "audit_log is append-only: rows cannot be deleted",
        ),
        (
            "UPDATE audit_keying SET keyed_from_seq = 1000",
            "audit_keying: fixed at migration",
        ),
    ] {
        let o = s.sqlite3(sql);
        assert_ne!(code(&o), 0, "accepted: {sql}");
        assert!(stderr(&o).contains(message), "{sql}: {}", stderr(&o));
    }
    assert_eq!(psql_ok(&s, "SELECT count(*) FROM audit_log"), before);
    let o = s.forgetd(&["audit", "verify"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("intact: 1 event"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_picks_up_a_psql_filing_and_deletes_only_that_persons_chats() {
    let Some(s) = pg_scratch() else { return };
    let sim = Simulator::start(Arc::new(SystemClock), Faults::default(), 3)
        .await
        .unwrap();
    let t = 1_700_000_000;
    sim.add_convai_chat("char-a", "alice-1", t);
    sim.add_convai_chat("char-b", "alice-2", t);
    sim.add_convai_chat("char-a", "bob-1", t);
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    psql_ok(
        &s, "SELECT 1", // the database exists; the daemon's first open migrates it
    );
    let mut daemon = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the daemon migrated the schema", || {
        s.sqlite3("SELECT count(*) FROM providers").status.success()
    })
    .await;
    psql_ok(
        &s,
        "INSERT INTO sessions(provider, scope, session_id, subject) VALUES
            ('convai', 'char-a', 'alice-1', 'alice'), ('convai', 'char-b', 'alice-2', 'alice'),
            ('convai', 'char-a', 'bob-1', 'bob')",
    );
    psql_ok(
        &s,
        "INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-7')",
    );
    // No `run --once`, no restart: the filing's notification wakes the running daemon.
    eventually("the request completed", || {
        psql_ok(
            &s,
            "SELECT state FROM erasure_requests WHERE external_ref = 'DSR-7'",
        ) == "complete"
    })
    .await;
    // `status` shows the instance working the queue.
    let st: serde_json::Value =
        serde_json::from_str(&stdout(&s.forgetd(&["status", "--json"]))).unwrap();
    let instances = st["instances"]
        .as_array()
        .expect("status lists the instances");
    assert_eq!(instances.len(), 1, "{st}");
    assert_eq!(instances[0]["alive"], true);
    assert_eq!(instances[0]["pid"], daemon.id());
    assert_eq!(instances[0]["items_in_flight"], 0);
    // A second instance on the same database is welcome (on SQLite it would exit 75), and
    // finds nothing left to do; it leaves the instance table as it found it.
    let second = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
        .output()
        .unwrap();
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(psql_ok(&s, "SELECT count(*) FROM forgetd_instances"), "1");
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    assert!(!sim.exists(ProviderKind::CONVAI, "char-a", "alice-1"));
    assert!(!sim.exists(ProviderKind::CONVAI, "char-b", "alice-2"));
    assert!(
        sim.exists(ProviderKind::CONVAI, "char-a", "bob-1"),
        "the decoy is untouched"
    );
    assert_eq!(
        sim.named_in_deletes().len(),
        2,
        "only alice's chats were named"
    );
    let o = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(
        code(&o),
        0,
        "{}{}\ndaemon: {}",
        stdout(&o),
        stderr(&o),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_password_in_the_database_url_is_refused_without_being_shown() {
    // No server needed: the URL is refused before any connection.
    let s = Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let o = std::process::Command::new(BIN)
        .args([
            "--db",
            "postgresql://forgetd:hunter2@127.0.0.1:9/forgetd",
            "status",
        ])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert_ne!(code(&o), 0);
    let err = stderr(&o);
    assert!(err.contains("password"), "{err}");
    assert!(!err.contains("hunter2"), "the password is echoed: {err}");
    let cfg = s.write(
        "pg.toml",
        "[database]\nurl = \"postgres://forgetd:hunter2@db.example/forgetd\"\n",
    );
    let o = std::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "check-config"])
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert_ne!(code(&o), 0);
    assert!(!stderr(&o).contains("hunter2"), "{}", stderr(&o));
    assert!(stderr(&o).contains("[database] url"), "{}", stderr(&o));
}

/// The README's two PostgreSQL feeder examples, run as they stand there.
#[test]
fn the_readmes_psql_and_psycopg_examples_work_as_written() {
    let Some(s) = pg_scratch() else { return };
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let readme = include_str!("../README.md");
    let section = readme
        .split("### On PostgreSQL")
        .nth(1)
        .and_then(|t| t.split("\n### ").next())
        .expect("README has its PostgreSQL section");
    let block = |fence: &str| -> String {
        let start = section
            .find(fence)
            .unwrap_or_else(|| panic!("no {fence} block"));
        let body = &section[start + fence.len()..];
        body[..body.find("```").unwrap()].to_string()
    };
    let pg = s.pg.as_ref().unwrap();
    let conn = pg.conninfo();
    let sh = block("```sh\n").replace("\"dbname=forgetd\"", &format!("\"{conn}\""));
    let o = std::process::Command::new("sh")
        .args(["-c", &sh])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "received", "{}", stdout(&o));
    let py = block("```python\n").replace("\"dbname=forgetd\"", &format!("\"{conn}\""));
    // Debian's python3, as a feeder host has it (python3-psycopg).
    let o = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &format!("{py}\nprint(state)")])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "received");
    assert_eq!(
        psql_ok(
            &s,
            "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM erasure_requests)"
        ),
        "2|1",
        "filing again was harmless"
    );
}

/// psql as the server's superuser, on the maintenance database.
fn superuser_psql(args: &[&str]) -> std::process::Output {
    let server = pg::server().unwrap();
    std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{server} dbname=postgres"))
        .args(args)
        .output()
        .unwrap()
}

/// Drops the test's roles when the test ends, after its database (declared before it).
struct Roles(Vec<String>);

impl Drop for Roles {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = superuser_psql(&["-c", &format!("DROP ROLE IF EXISTS {r}")]);
        }
    }
}

/// docs/postgres-roles.sql as an operator runs it: before forgetd's first open it makes the two
/// roles and the database; forgetd then creates its schema as a role that is no superuser; run
/// again, it grants the feeder role exactly the feeder contract. The feeder files a request and
/// reads its state, and is refused everything else by the server itself; the daemon, as the
/// owner, deletes only that person's chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_roles_let_a_feeder_feed_and_nothing_more() {
    if pg::server().is_none() {
        return;
    }
    let pid = std::process::id();
    let (owner, feeder, db) = (
        format!("forgetd_owner_{pid}"),
        format!("forgetd_feeder_{pid}"),
        format!("forgetd_roles_{pid}"),
    );
    let _roles = Roles(vec![owner.clone(), feeder.clone()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/postgres-roles.sql");
    let run_script = || {
        let o = superuser_psql(&[
            "-v",
            &format!("owner={owner}"),
            "-v",
            &format!("feeder={feeder}"),
            "-v",
            &format!("db={db}"),
            "-f",
            script,
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        stdout(&o)
    };
    let first = run_script();
    assert!(first.contains("has no forgetd schema yet"), "{first}");
    let s = Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: Some(pg::TestDb::adopt(&db, &owner)),
    };
    let o = superuser_psql(&[
        "-At",
        "-c",
        &format!(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{owner}'"
        ),
    ]);
    assert_eq!(stdout(&o).trim(), "f|f|f", "the owner is an ordinary role");
    // forgetd's first open, as the owner, creates the schema.
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let second = run_script();
    assert!(second.contains("granted"), "{second}");
    assert_eq!(run_script(), second, "running it again changes nothing");

    let f = s.pg.as_ref().unwrap().as_user(&feeder);
    let feed = |sql: &str| {
        let o = f.psql(sql);
        assert_eq!(code(&o), 0, "the feeder may: {sql}\n{}", stderr(&o));
        stdout(&o).trim().to_string()
    };
    feed(
        "INSERT INTO sessions (provider, scope, session_id, subject, created_at) VALUES
           ('convai', 'char-a', 'alice-1', NULL, 1700000000), ('convai', 'char-a', 'bob-1', 'bob', 1700000000),
           ('convai', 'char-a', 'typo', 'alice', 1700000000)
         ON CONFLICT (provider, scope, session_id) DO NOTHING",
    );
    feed("UPDATE sessions SET subject = 'alice' WHERE session_id = 'alice-1'");
    feed("DELETE FROM sessions WHERE session_id = 'typo'");
    feed(
        "INSERT INTO erasure_requests (subject, external_ref) VALUES ('alice', 'DSR-1')
         ON CONFLICT (external_ref) DO NOTHING",
    );
    assert_eq!(
        feed("SELECT state FROM erasure_requests WHERE external_ref = 'DSR-1'"),
        "received"
    );
    // The contract's own refusals still speak to the feeder.
    let o =
        f.psql("INSERT INTO sessions (provider, scope, session_id) VALUES ('openai', 'c', 's')");
    assert!(
        stderr(&o).contains("sessions_provider_must_be_a_key_of_providers"),
        "{}",
        stderr(&o)
    );
    // Everything beyond the contract is refused by the server, whatever the triggers say.
    let refused = [
        (
            "UPDATE erasure_requests SET state = 'complete'",
            "permission denied",
        ),
        (
            "INSERT INTO erasure_requests (subject, state) VALUES ('mallory', 'complete')",
            "permission denied",
        ),
        ("DELETE FROM erasure_requests", "permission denied"),
        (
            "DROP TRIGGER erasure_requests_are_records_and_cannot_be_deleted ON erasure_requests",
            "must be owner",
        ),
        ("TRUNCATE sessions", "permission denied"),
        (
            "UPDATE sessions SET provider = 'koosearch'",
            "permission denied",
        ),
        ("SELECT count(*) FROM audit_log", "permission denied"),
        ("DELETE FROM holds", "permission denied"),
        (
            "UPDATE work_items SET state = 'deleted'",
            "permission denied",
        ),
        ("INSERT INTO rules (name) VALUES ('r')", "permission denied"),
        ("CREATE TABLE mine (i int)", "permission denied"),
        ("CREATE TEMP TABLE mine (i int)", "permission denied"),
        (
            "INSERT INTO sessions (provider, scope, session_id, discovered_at) VALUES ('convai', 'c', 'd', 1)",
            "permission denied",
        ),
        (
            "INSERT INTO sessions (id, provider, scope, session_id) OVERRIDING SYSTEM VALUE VALUES (99, 'convai', 'c', 'e')",
            "permission denied",
        ),
    ];
    assert_each_refused(|sql| f.psql(sql), &refused);
    assert_eq!(
        feed("SELECT count(*) FROM erasure_requests"),
        "1",
        "nothing refused got in"
    );

    // The daemon, as the owner, does the rest.
    let sim = Simulator::start(Arc::new(SystemClock), Faults::default(), 3)
        .await
        .unwrap();
    sim.add_convai_chat("char-a", "alice-1", 1_700_000_000);
    sim.add_convai_chat("char-a", "bob-1", 1_700_000_000);
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        feed("SELECT state FROM erasure_requests WHERE external_ref = 'DSR-1'"),
        "complete"
    );
    assert!(!sim.exists(ProviderKind::CONVAI, "char-a", "alice-1"));
    assert!(sim.exists(ProviderKind::CONVAI, "char-a", "bob-1"));
    assert_eq!(
        sim.named_in_deletes().len(),
        1,
        "only alice's chat was named"
    );
}

/// An instance taken for dead (its heartbeat late) may still be running: once a rescuer has
/// handed its claims back, it claims nothing more, so no claim is left without an instance a
/// rescuer could find. Claims an older version left without one are handed back too.
#[test]
fn an_instance_taken_for_dead_claims_nothing_more_and_no_claim_is_left_ownerless() {
    use forgetd::clock::Millis;
    use forgetd::store::StoreError;
    use forgetd::store::queue::ItemState;
    let Some(s) = pg_scratch() else { return };
    let ttl = std::time::Duration::from_secs(600);
    let lease = std::time::Duration::from_secs(600);
    let (mut a, mut b, mut c) = (s.store(), s.store(), s.store());
    for st in [&mut a, &mut b, &mut c] {
        st.register_instance(ttl).unwrap();
    }
    a.queue_synthetic_items(40).unwrap();
    let now = Millis(1);
    let first = a
        .claim_batch(ProviderKind::CONVAI, now, lease, 10)
        .unwrap()
        .unwrap();
    // (a batch is one scope's: 4 of the 40, spread over 10 characters)
    let n = first.items.len() as u64;
    assert!(n > 0);
    // A stalls past its time (as five missed heartbeats would leave it); B rescues it.
    let a_id = a.instance_id().unwrap().to_string();
    psql_ok(
        &s,
        &format!("UPDATE forgetd_instances SET expires_ms = 0 WHERE id = '{a_id}'"),
    );
    let beat = b.instance_beat(ttl).unwrap();
    assert_eq!((beat.rescued_instances, beat.rescued_items), (1, n));
    assert_eq!(a.count_items(ItemState::InFlight).unwrap(), 0);
    // A wakes and, before its own heartbeat tells it, tries to claim: refused, nothing claimed.
    let e = a.claim_batch(ProviderKind::CONVAI, now, lease, 10);
    assert!(matches!(e, Err(StoreError::Fenced { .. })), "{e:?}");
    assert_eq!(a.count_items(ItemState::InFlight).unwrap(), 0);
    assert!(matches!(
        a.instance_beat(ttl),
        Err(StoreError::Fenced { .. })
    ));
    // C's claim is its own and stays; B's next beat leaves it alone.
    let theirs = c
        .claim_batch(ProviderKind::CONVAI, now, lease, 10)
        .unwrap()
        .unwrap();
    assert_eq!(b.instance_beat(ttl).unwrap().rescued_items, 0);
    assert_eq!(
        a.count_items(ItemState::InFlight).unwrap(),
        theirs.items.len() as u64
    );
    // A claim left without any instance row (what the old race left behind) is handed back.
    let c_id = c.instance_id().unwrap().to_string();
    psql_ok(
        &s,
        &format!("DELETE FROM forgetd_instances WHERE id = '{c_id}'"),
    );
    let beat = b.instance_beat(ttl).unwrap();
    assert_eq!(beat.rescued_items, theirs.items.len() as u64);
    assert_eq!(b.count_items(ItemState::InFlight).unwrap(), 0);
    assert_eq!(b.count_items(ItemState::Pending).unwrap(), 40);
    assert_eq!(
        psql_ok(
            &s,
            "SELECT count(*) FROM audit_log WHERE kind = 'instance.rescued'"
        ),
        "2"
    );
}
