//! Helpers shared by the integration tests: the real binary, temporary databases, Debian's sqlite3.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod crash_world;
pub mod notify;

pub const BIN: &str = env!("CARGO_BIN_EXE_forgetd");

/// A temporary directory with a database in it: a SQLite file, or with
/// `FORGETD_TEST_ENGINE=postgres` a fresh PostgreSQL database (see [`pg`]).
pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database of this test, dropped with it.
    pub pg: Option<pg::TestDb>,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            pg: pg::engine_is_postgres().then(pg::TestDb::create),
        }
    }
    /// The SQLite file (the default engine's database, and the path tests that are SQLite's
    /// alone use).
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("forgetd.db")
    }
    /// What `--db` takes for this test's database: the file, or the PostgreSQL URL.
    pub fn db_arg(&self) -> std::ffi::OsString {
        match &self.pg {
            Some(pg) => pg.url.clone().into(),
            None => self.db().into(),
        }
    }
    /// This test's database, as a config names it.
    pub fn database(&self) -> forgetd::config::Database {
        forgetd::config::Database::from_arg(&self.db_arg())
    }
    /// The `[database]` table (and on PostgreSQL the `[audit]` keys it needs) of a config.
    pub fn database_toml(&self) -> String {
        match &self.pg {
            None => format!("[database]\npath = \"{}\"\n", self.db().display()),
            Some(pg) => {
                let subject = self.write("subject.key", &"s".repeat(32));
                let signing = self.write("signing.key", &"k".repeat(32));
                format!(
                    "[database]\nurl = \"{}\"\n\n[audit]\nsubject_key = \"file:{}\"\nsigning_key = \"file:{}\"\n",
                    pg.url,
                    subject.display(),
                    signing.display()
                )
            }
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    /// `forgetd --db <db> args...`
    pub fn forgetd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--db")
            .arg(self.db_arg())
            .args(args)
            .env_remove("FORGETD_CONFIG")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
    /// Records one chat of `subject` through the CLI (`sessions add`), asserting it was taken.
    pub fn add_chat(&self, provider: &str, scope: &str, id: &str, subject: &str) {
        let o = self.forgetd(&[
            "sessions",
            "add",
            "--provider",
            provider,
            "--scope",
            scope,
            "--id",
            id,
            "--subject",
            subject,
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    /// Runs SQL as a feeder does: through Debian's sqlite3 (foreign keys off, its default), or
    /// on PostgreSQL through psql (`|`-separated, unaligned, stopping at the first error).
    pub fn sqlite3(&self, sql: &str) -> Output {
        match &self.pg {
            Some(pg) => pg.psql(sql),
            None => sqlite3(&self.db(), sql),
        }
    }
    /// Whether this test runs on PostgreSQL.
    pub fn on_pg(&self) -> bool {
        self.pg.is_some()
    }
    /// Points a config at this test's database. On PostgreSQL the audit keys cannot live beside
    /// a file, so they are named as files in the scratch directory (as `database_toml` does).
    pub fn use_in(&self, c: &mut forgetd::config::Config) {
        c.database = self.database();
        if self.on_pg() {
            let key = |name: &str, byte: &str| {
                let p = self.write(name, &byte.repeat(32));
                Some(forgetd::secret::SecretRef::File(p))
            };
            c.audit.subject_key = key("subject.key", "s");
            c.audit.signing_key = key("signing.key", "k");
        }
    }
    /// A store on this test's database, migrated, as forgetd's own user has it: with the chain
    /// key the daemon uses (the key file beside the SQLite file, or on PostgreSQL the one
    /// `use_in` configures), so it seals what it appends and may write certifying events.
    pub fn store(&self) -> forgetd::store::Store {
        let mut s = self.feeder_store();
        let key = if self.on_pg() {
            let p = self.write("subject.key", &"s".repeat(32));
            forgetd::audit::SubjectKey::load(Some(&forgetd::secret::SecretRef::File(p)), None)
        } else {
            forgetd::audit::SubjectKey::load(None, Some(&self.db()))
        }
        .unwrap();
        s.set_chain_key(key.chain_key());
        s
    }
    /// A store as a feeder's user has it: the database, not forgetd's key.
    pub fn feeder_store(&self) -> forgetd::store::Store {
        forgetd::store::Store::connect(&self.database()).unwrap()
    }
}

/// Debian's sqlite3 as a feeder runs it: with the busy timeout the README asks feeders for.
pub fn sqlite3(db: &Path, sql: &str) -> Output {
    Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg("-bail")
        .arg(db)
        .arg(sql)
        .output()
        .expect("Debian's sqlite3 must be installed (.ci/run installs it)")
}

/// Runs each statement with `run` (sqlite3 or psql as some user) and asserts it is refused with
/// a message containing its expected text.
pub fn assert_each_refused<S: AsRef<str>>(run: impl Fn(&str) -> Output, cases: &[(&str, S)]) {
    for (sql, expected) in cases {
        let expected = expected.as_ref();
        let o = run(sql);
        assert_ne!(code(&o), 0, "accepted: {sql}");
        assert!(
            stderr(&o).contains(expected),
            "{sql}\n  expected: {expected}\n  got: {}",
            stderr(&o)
        );
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Writes a config pointing at a running simulator (its own builder, secrets in files beside
/// it), with fast retries for tests. `extra` is appended (rules, more settings).
pub fn sim_config(
    s: &Scratch,
    sim: &forgetd::simulator::Simulator,
    applications: &[&str],
    extra: &str,
) -> PathBuf {
    let providers = sim
        .config_toml(
            applications,
            forgetd::simulator::Secrets::Files(s.dir.path()),
        )
        .unwrap();
    let text = format!(
        "{db}\n[retry]\nbase_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n[daemon]\nshutdown_timeout = \"5s\"\n\n{providers}\n{extra}\n",
        db = s.database_toml(),
    );
    s.write("forgetd.toml", &text)
}

/// The simulator's configuration, in memory, on this test's database (`use_in`), with the
/// `[verify]` table of `verify_toml` (empty: the default) and retries capped at a minute: what
/// an in-process daemon on the injected clock is built from.
pub fn in_process_config(
    s: &Scratch,
    sim: &forgetd::simulator::Simulator,
    applications: &[&str],
    verify_toml: &str,
) -> forgetd::config::Config {
    let mut c = sim.config(s.dir.path(), applications).unwrap();
    c.verify = forgetd::config::Config::parse(verify_toml, "test")
        .unwrap()
        .verify;
    s.use_in(&mut c);
    c.retry.max_delay = std::time::Duration::from_secs(60);
    c
}

/// Polls `f` every 50 ms until it gives a value; panics naming `what` after 30 s. The one
/// waiting helper of the integration tests (real time: for a child process or a listener;
/// logic on forgetd's clock is driven by a `ManualClock` instead).
pub async fn wait_for<T, F>(what: &str, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// [`wait_for`] a condition.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    wait_for(what, || std::future::ready(f().then_some(()))).await
}

/// Waits until no instance counts as alive on the PostgreSQL queue (the killed ones' rows
/// expired, on the server's clock), so the next instance rescues their claims at its start;
/// nothing to wait for on SQLite.
pub async fn until_no_instance_is_alive(s: &Scratch) {
    if s.on_pg() {
        eventually("the killed instances' heartbeats expired", || {
            stdout(&s.sqlite3(
                "SELECT count(*) FROM forgetd_instances WHERE expires_ms >= forgetd_now_ms()",
            ))
            .trim()
                == "0"
        })
        .await;
    }
}

/// A config with Convai at a loopback port nothing listens on, for runs that must not reach a
/// provider (an empty queue, start-up checks); `extra` is appended (rules).
pub fn unreachable_convai_config(s: &Scratch, extra: &str) -> PathBuf {
    let key = s.write("unreachable.key", "key");
    s.write(
        "unreachable.toml",
        &format!(
            "{}[providers.convai]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"file:{}\"\n{extra}",
            s.database_toml(),
            key.display()
        ),
    )
}

/// A loopback port free a moment ago (for a daemon's `[http] listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The path of an external tool (Chromium, promtool), or `None` after saying SKIP when it is
/// missing; with `FORGETD_TOOLS_REQUIRED=1` (as in `.ci/run`) a missing tool fails the test.
pub fn tool(name: &str) -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if found.is_none() {
        let required = std::env::var("FORGETD_TOOLS_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{name} is required here (FORGETD_TOOLS_REQUIRED=1) but missing"
        );
        eprintln!("SKIP: {name} missing (apt install chromium prometheus)");
    }
    found
}

/// The data of every audit event of `kind`, oldest first (on either engine: `data` is JSON text).
pub fn audit_events(store: &forgetd::store::Store, kind: &str) -> Vec<serde_json::Value> {
    use forgetd::store::db::Sql;
    store
        .rows(
            "SELECT data FROM audit_log WHERE kind = ?1 ORDER BY seq",
            forgetd::args![kind],
            |r| r.get::<String>(0),
        )
        .unwrap()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// A Convai chat of `subject` at the simulator and in the inventory.
pub fn seed_convai_chat(
    sim: &forgetd::simulator::Simulator,
    store: &mut forgetd::store::Store,
    scope: &str,
    session_id: &str,
    subject: &str,
) {
    sim.add_convai_chat(scope, session_id, 1_700_000_000);
    store
        .add_session(&forgetd::store::inventory::NewSession {
            provider: "convai".into(),
            scope: scope.into(),
            session_id: session_id.into(),
            subject: Some(subject.into()),
            ..Default::default()
        })
        .unwrap();
}

/// PostgreSQL for the integration tests: `FORGETD_TEST_ENGINE=postgres` runs a suite on it, and
/// `FORGETD_TEST_PG` names the server (a libpq connection string, e.g. `host=/tmp/pg
/// user=postgres`; `.ci/run` starts a throwaway cluster and sets it). Each test gets a database
/// of its own, dropped when the test ends.
pub mod pg {
    use std::process::{Command, Output};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub fn engine_is_postgres() -> bool {
        std::env::var("FORGETD_TEST_ENGINE").is_ok_and(|v| v == "postgres")
    }

    /// The server's connection string, or `None` after saying SKIP; with `FORGETD_PG_REQUIRED=1`
    /// (as in `.ci/run`) a missing server fails the test.
    pub fn server() -> Option<String> {
        let found = std::env::var("FORGETD_TEST_PG")
            .ok()
            .filter(|v| !v.is_empty());
        if found.is_none() {
            let required = std::env::var("FORGETD_PG_REQUIRED").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "PostgreSQL is required here (FORGETD_PG_REQUIRED=1) but FORGETD_TEST_PG is not set"
            );
            eprintln!(
                "SKIP: no PostgreSQL server (set FORGETD_TEST_PG, e.g. host=/tmp/pg user=postgres)"
            );
        }
        found
    }

    fn field<'a>(conn: &'a str, key: &str) -> Option<&'a str> {
        conn.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// One test's database.
    pub struct TestDb {
        pub name: String,
        pub url: String,
        /// How psql reaches the server (as which user).
        server: String,
        /// The superuser's connection string, which creates and drops.
        admin_server: String,
        /// Whether dropping this value drops the database.
        drops: bool,
    }

    impl TestDb {
        pub fn create() -> Self {
            let server = server().expect("FORGETD_TEST_ENGINE=postgres needs FORGETD_TEST_PG");
            static N: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "forgetd_t_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let host = field(&server, "host").unwrap_or("/var/run/postgresql");
            let user = field(&server, "user").unwrap_or("postgres");
            let url = format!("postgresql://{user}@{}/{name}", host.replace('/', "%2F"));
            let db = Self {
                name,
                url,
                admin_server: server.clone(),
                server,
                drops: true,
            };
            let o = db.admin(&format!("CREATE DATABASE {}", db.name));
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            db
        }

        /// A database someone else created (e.g. docs/postgres-roles.sql), reached as `user`
        /// and dropped with this value.
        pub fn adopt(name: &str, user: &str) -> Self {
            let admin = server().expect("FORGETD_TEST_ENGINE=postgres needs FORGETD_TEST_PG");
            let host = field(&admin, "host").unwrap_or("/var/run/postgresql");
            let url = format!("postgresql://{user}@{}/{name}", host.replace('/', "%2F"));
            let server = match field(&admin, "user") {
                Some(u) => admin.replace(&format!("user={u}"), &format!("user={user}")),
                None => format!("{admin} user={user}"),
            };
            Self {
                name: name.to_string(),
                url,
                server,
                admin_server: admin,
                drops: true,
            }
        }

        /// The same database reached by psql as another role (a feeder's user); dropping it
        /// leaves the database to `self`.
        pub fn as_user(&self, user: &str) -> Self {
            let mut other = Self::adopt(&self.name, user);
            other.drops = false;
            other
        }

        fn admin(&self, sql: &str) -> Output {
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(format!("{} dbname=postgres", self.admin_server))
                .args(["-c", sql])
                .output()
                .expect("psql must be installed (.ci/run installs postgresql)")
        }

        /// A libpq connection string for this database (psql, psycopg).
        pub fn conninfo(&self) -> String {
            format!("{} dbname={}", self.server, self.name)
        }

        /// psql as a feeder runs it, on this database: the statements one by one (each its own
        /// transaction, as sqlite3 runs them), stopping at the first error.
        pub fn psql(&self, sql: &str) -> Output {
            use std::io::Write;
            let mut child = Command::new("psql")
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-F",
                    "|",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                ])
                .arg(format!("{} dbname={}", self.server, self.name))
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("psql must be installed (.ci/run installs postgresql)");
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(sql.as_bytes()).unwrap();
            stdin.write_all(b";\n").unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            if !self.drops {
                return;
            }
            let _ = self.admin(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
