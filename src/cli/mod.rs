//! The command line: `forgetd [--config FILE] [--db FILE] <command>`, per the SPEC's contract.
//!
//! Rules: every command that opens the database creates it (inside an existing directory only)
//! and applies migrations. `--json` output is one JSON document on stdout; human output is plain
//! text; diagnostics go to stderr.
//! Exit codes: 0 success, 1 failure at run time, 2 usage error (clap's own, and ours via
//! [`UsageError`]), 75 database busy / daemon lock held, 78 configuration error. The mapping from
//! error to code is [`exit_code`], which walks the error's causes.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::model::ProviderKind;
use crate::store::StoreError;
use crate::store::lock::LockError;

#[derive(Debug, Parser)]
#[command(
    name = "forgetd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FORGETD_COMMIT"), ")"),
    about = "Erases chat histories at Convai and Huawei Cloud KooSearch, on time and provably"
)]
pub struct Cli {
    /// Config file (TOML). Without one, forgetd runs on defaults with no providers.
    #[arg(long, global = true, env = "FORGETD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database file; overrides `[database] path`.
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon. --once: resolve, run every rule once, drain everything, then exit.
    Run {
        #[arg(long)]
        once: bool,
    },
    /// The whole pipeline against built-in simulated providers, with a report.
    Demo {
        /// Chats to seed (spread over providers, characters and applications).
        #[arg(long, default_value_t = 3000)]
        chats: usize,
        /// Leave the simulator's faults off.
        #[arg(long)]
        no_faults: bool,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: throughput against the provider limit, CPU per ID, memory, idle CPU
    /// (see docs/BENCHMARKS.md); --retention: the retention sweep over a large inventory.
    Bench {
        /// Smaller runs (a fifth of the items, shorter idle window).
        #[arg(long)]
        quick: bool,
        #[arg(long)]
        retention: bool,
        #[arg(long, default_value_t = 10_000_000)]
        sweep_sessions: u64,
        #[arg(long, default_value_t = 1_000_000)]
        sweep_expired: u64,
    },
    /// (benchmark child) one real run of a rule without discovery.
    #[command(hide = true)]
    BenchSweep { rule: String },
    /// What would be deleted, deleting nothing.
    Plan {
        #[arg(long, conflicts_with = "rule", required_unless_present = "rule")]
        subject: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The audit trail: verify the hash chain, or export a certificate of erasure.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// File an erasure request for a subject; prints its id.
    Erase {
        #[arg(long)]
        subject: String,
        /// Your own reference; filing the same ref again changes nothing.
        #[arg(long = "ref", value_name = "REF")]
        external_ref: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The chat inventory.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Erasure requests.
    #[command(subcommand)]
    Requests(RequestsCommand),
    /// Queue depth by state and provider, overdue requests, dead items, paused providers.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Retention rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Legal holds.
    #[command(subcommand)]
    Holds(HoldsCommand),
    /// Validate the configuration and the secrets it names, then exit.
    CheckConfig,
    /// Run the simulated providers in the foreground, for rehearsing with the real daemon.
    Simulator {
        /// Convai listens here, KooSearch on the next port, IAM on the one after (port 0: any).
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Write a config pointing at the simulator here, and its three secrets (convai-api-key,
        /// iam-password, audit-key) beside it, as systemd credentials.
        #[arg(long, value_name = "FILE")]
        config_out: Option<PathBuf>,
        /// KooSearch application IDs the simulator serves (repeatable).
        #[arg(long = "application", value_name = "ID", default_values_t = ["app-1".to_string()])]
        applications: Vec<String>,
        /// A chat ID the simulated providers refuse (HTTP 400), so its erasure fails (repeatable).
        #[arg(long, value_name = "ID")]
        refuse: Vec<String>,
        /// The database path to write into the config (`[database] path`); without it the
        /// config uses the default ($STATE_DIRECTORY/forgetd.db under systemd, else ./forgetd.db).
        #[arg(long, value_name = "FILE")]
        database: Option<PathBuf>,
    },
    /// Copy the database consistently while the daemon runs (SQLite's online backup), then check
    /// the copy (integrity and audit chain).
    Backup {
        /// Where the copy goes; must not exist yet.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Add one chat to the inventory.
    Add {
        #[arg(long)]
        provider: ProviderKind,
        #[arg(long)]
        scope: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        subject: Option<String>,
        /// Unix seconds or RFC 3339; default now.
        #[arg(long, value_name = "T")]
        created_at: Option<String>,
        #[arg(long)]
        repo_id: Option<String>,
    },
    /// Import chats from CSV (header = column names) or JSON lines; `-` reads stdin.
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Give a request's dead items another round.
    Retry {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Add(RuleArgs),
    /// Remove a rule added with `rules add` (config rules are changed in the file).
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Release a run held back by the rule's max_deletions.
    Approve {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    pub name: String,
    #[arg(long)]
    pub provider: ProviderKind,
    /// Character/application ID, or "*" for every scope.
    #[arg(long)]
    pub scope: String,
    /// e.g. "30d"
    #[arg(long)]
    pub max_age: String,
    /// 5-field cron, or 6 with seconds first.
    #[arg(long)]
    pub schedule: String,
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Also list chats at the provider.
    #[arg(long)]
    pub discover: bool,
    #[arg(long, default_value_t = crate::config::defaults::MAX_DELETIONS)]
    pub max_deletions: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HoldsCommand {
    /// Hold a subject (--subject) or one chat (--provider --scope --id).
    Add {
        #[arg(long, conflicts_with_all = ["provider", "scope", "id"], required_unless_present = "id")]
        subject: Option<String>,
        #[arg(long, requires_all = ["scope", "id"])]
        provider: Option<ProviderKind>,
        #[arg(long, requires_all = ["provider", "id"])]
        scope: Option<String>,
        #[arg(long, requires_all = ["provider", "scope"])]
        id: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
    Remove {
        hold_id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first broken link and exits 1 if any.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// A certificate of erasure for one request. Refused (exit 1) when the audit chain does not
    /// verify or its append-only triggers are missing, unless --force.
    Export {
        #[arg(long)]
        request: i64,
        #[arg(long)]
        json: bool,
        /// Print the certificate even on a broken record; it then says BROKEN at its top.
        #[arg(long)]
        force: bool,
    },
}

/// A usage mistake found after parsing (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Maps an error to the SPEC's exit codes by walking its causes.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<crate::config::SecretError>() {
            return 78;
        }
        if cause.is::<UsageError>() {
            return 2;
        }
        if let Some(LockError::Held { .. }) = cause.downcast_ref::<LockError>() {
            return 75;
        }
        if let Some(StoreError::Busy(_)) = cause.downcast_ref::<StoreError>() {
            return 75;
        }
    }
    1
}

/// Loads the configuration the flags name (defaults without `--config`), with `--db` applied.
pub fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    if let Some(db) = &cli.db {
        config.database = db.clone();
    }
    Ok(config)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon says what it does; other commands (the demo's output is its report) speak only
    // of trouble unless FORGETD_LOG asks for more.
    // A short command piped into `head` must stop quietly when the pipe closes, as Unix tools
    // do, not panic on EPIPE. Only for those: the long-running commands keep Rust's default
    // (SIGPIPE ignored), so a peer closing a socket is an error to handle, never a kill.
    if !matches!(
        cli.command,
        Command::Run { .. }
            | Command::Demo { .. }
            | Command::Bench { .. }
            | Command::BenchSweep { .. }
            | Command::Simulator { .. }
    ) {
        // SAFETY: restoring a signal's default disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let logging = match cli.command {
        Command::Run { .. } | Command::Bench { .. } => crate::logging::init_daemon(),
        _ => crate::logging::init_cli(),
    };
    if let Err(e) = logging {
        eprintln!("forgetd: {e}");
        return ExitCode::from(78);
    }
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("forgetd: {}", render_error(&e));
            ExitCode::from(code)
        }
    }
}

pub use crate::errors::render as render_error;
