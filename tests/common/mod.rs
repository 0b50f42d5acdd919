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
    /// Runs SQL through Debian's sqlite3 (the feeders' client), foreign keys off as its default.
    pub fn sqlite3(&self, sql: &str) -> Output {
        sqlite3(&self.db(), sql)
    }
}

pub fn sqlite3(db: &Path, sql: &str) -> Output {
    Command::new("sqlite3")
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

/// Writes a config pointing at a running simulator, secrets in files beside it. `extra` is
/// appended (rules, retry settings).
pub fn sim_config(
    s: &Scratch,
    sim: &forgetd::simulator::Simulator,
    applications: &[&str],
    extra: &str,
) -> PathBuf {
    let convai = s.write("convai.key", forgetd::simulator::CONVAI_KEY);
    let iam = s.write("iam.password", forgetd::simulator::IAM_PASSWORD);
    let apps = applications
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"[database]
path = "{db}"

[retry]
base_delay = "20ms"
max_delay = "200ms"

[daemon]
shutdown_timeout = "5s"

[providers.convai]
base_url = "{convai_url}"
api_key = "file:{convai}"
timeout = "2s"

[providers.koosearch]
endpoint = "{koo}"
project_id = "{project}"
applications = [{apps}]
timeout = "2s"
[providers.koosearch.iam]
endpoint = "{iam_url}"
domain = "{domain}"
user = "{user}"
password = "file:{iam}"
project = "{region}"

{extra}
"#,
        db = s.db().display(),
        convai_url = sim.convai_url,
        convai = convai.display(),
        koo = sim.koosearch_url,
        project = forgetd::simulator::PROJECT_ID,
        iam_url = sim.iam_url,
        domain = forgetd::simulator::IAM_DOMAIN,
        user = forgetd::simulator::IAM_USER,
        iam = iam.display(),
        region = forgetd::simulator::IAM_PROJECT,
    );
    s.write("forgetd.toml", &text)
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
