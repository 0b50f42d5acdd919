//! Helpers shared by the integration tests: the real binary, temporary databases, Debian's sqlite3.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_forgetd");

/// A temporary directory with a database path in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("forgetd.db")
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
            .arg(self.db())
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
    /// Runs SQL through Debian's sqlite3 (the feeders' client), foreign keys off as its default.
    pub fn sqlite3(&self, sql: &str) -> Output {
        sqlite3(&self.db(), sql)
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
        "[database]\npath = \"{db}\"\n\n[retry]\nbase_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n[daemon]\nshutdown_timeout = \"5s\"\n\n{providers}\n{extra}\n",
        db = s.db().display(),
    );
    s.write("forgetd.toml", &text)
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

/// A config with Convai at a loopback port nothing listens on, for runs that must not reach a
/// provider (an empty queue, start-up checks); `extra` is appended (rules).
pub fn unreachable_convai_config(s: &Scratch, extra: &str) -> PathBuf {
    let key = s.write("unreachable.key", "key");
    s.write(
        "unreachable.toml",
        &format!(
            "[providers.convai]\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"file:{}\"\n{extra}",
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
