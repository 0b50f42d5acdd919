//! The command line: `forgetd [--config FILE] [--db FILE] <command>`, per the SPEC's contract.
//!
//! Rules: every command that opens the database creates it (inside an existing directory only)
//! and applies migrations. `--json` output is one JSON document on stdout; human output is plain
//! text; diagnostics go to stderr.
//! Exit codes: 0 success, 1 failure at run time, 2 usage error (clap's own, and ours via
//! [`UsageError`]), 75 database busy / daemon lock held, 78 configuration error. The mapping from
//! error to code is [`exit_code`], which walks the error's causes.
//! One class, one code, whichever layer finds it: a value on the command line that is not valid
//! is a usage error (2) whether clap, forgetd's own parsing or the table's CHECK constraint
//! refuses it ([`InvalidArgument`]); what the data's state refuses (no such request, rule or hold;
//! a rule that exists already; a bad line in an imported file) is a failure (1).

/// `print!` for the CLI's text output: what it prints passes [`crate::report::terminal_safe`], so a
/// feeder's or provider's control characters cannot drive the operator's terminal.
macro_rules! out {
    ($($arg:tt)*) => {
        print!("{}", $crate::report::terminal_safe(&format!($($arg)*)))
    };
}

/// `eprintln!` through [`crate::report::terminal_safe`]: errors and warnings quote feeders' and
/// providers' text too.
macro_rules! errln {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::report::terminal_safe(&format!($($arg)*)))
    };
}

/// `println!` through [`crate::report::terminal_safe`] (see `out!`).
macro_rules! outln {
    () => { println!() };
    ($($arg:tt)*) => {
        println!("{}", $crate::report::terminal_safe(&format!($($arg)*)))
    };
}

mod commands;
pub mod generate;
pub mod progress;

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
    about = "Erases chat histories at Convai and Huawei Cloud KooSearch, on time and provably",
    long_about = "Erases chat histories at Convai and Huawei Cloud KooSearch, on time and provably.\n\n\
Feeders write erasure requests and the chat inventory into a local SQLite queue (the sessions and \
erasure_requests tables, or the erase and sessions commands); retention rules run on cron \
schedules. The daemon (forgetd run, usually as the systemd service forgetd.service) resolves each \
request to chat IDs, deletes them in idempotent batches with retry, backoff and one politeness \
gate per provider, never deletes a chat under a legal hold, and keeps a tamper-evident audit \
trail from which certificates of erasure are exported. forgetd doctor proves the credentials \
before a change window."
)]
pub struct Cli {
    /// Config file (TOML). Without one, forgetd runs on defaults with no providers.
    #[arg(long, global = true, env = "FORGETD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database: a SQLite file, or a postgres:// URL (no password in it); overrides `[database]`.
    #[arg(long, global = true, value_name = "FILE|URL", value_parser = parse_db)]
    pub db: Option<crate::config::Database>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon. --once: resolve, run every rule once, drain everything, then exit.
    Run {
        /// Resolve, run every rule once, drain everything (waiting out backoffs), then exit: 0
        /// when nothing is left pending, in flight or dead, else 1 with the reason.
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
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: throughput against the provider limit, CPU per ID, memory, idle CPU
    /// (see docs/BENCHMARKS.md); --retention: the retention sweep over a large inventory;
    /// --politeness: unpublished rate limits and the fault mix.
    Bench {
        /// Smaller runs (a fifth of the items, shorter idle window).
        #[arg(long)]
        quick: bool,
        /// Benchmark the retention sweep over a large inventory instead.
        #[arg(long)]
        retention: bool,
        /// Benchmark politeness instead: goodput under limits forgetd is not told, and a drain
        /// under a mix of faults against the same drain without them.
        #[arg(long, conflicts_with = "retention")]
        politeness: bool,
        /// Benchmark the PostgreSQL engine instead, with one and with three instances, beside
        /// SQLite: a libpq connection string of a server where the bench may create and drop
        /// scratch databases (`host=/tmp/pg user=postgres`).
        #[arg(long, value_name = "CONNINFO", conflicts_with_all = ["retention", "politeness"])]
        postgres: Option<String>,
        /// Inventory size for --retention.
        #[arg(long, default_value_t = 10_000_000)]
        sweep_sessions: u64,
        /// How many of those chats are expired, for --retention.
        #[arg(long, default_value_t = 1_000_000)]
        sweep_expired: u64,
        /// Place this many legal holds that cover none of the queued chats before each
        /// throughput run, so every claim and every send runs the hold rule in full.
        #[arg(long, default_value_t = 0, conflicts_with_all = ["retention", "politeness", "postgres"])]
        holds: u64,
    },
    /// (benchmark child) one real run of a rule without discovery.
    #[command(hide = true)]
    BenchSweep { rule: String },
    /// What would be deleted, deleting nothing.
    // One of the two is required: clap's error then names both alternatives.
    #[command(group = clap::ArgGroup::new("what").args(["subject", "rule"]).required(true))]
    Plan {
        /// What a request for this person would delete (give --subject or --rule).
        #[arg(long)]
        subject: Option<String>,
        /// What the next run of this rule would delete.
        #[arg(long)]
        rule: Option<String>,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The audit trail: verify the hash chain, or export a certificate of erasure.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Certificates of erasure, checked without forgetd's database.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// File an erasure request for a subject; prints its id.
    Erase {
        /// The person: your user ID, as written in sessions.subject.
        #[arg(long)]
        subject: String,
        /// Your own reference; filing the same ref again changes nothing.
        #[arg(long = "ref", value_name = "REF")]
        external_ref: Option<String>,
        /// Print one JSON document instead of text.
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
        /// Print one JSON document instead of text.
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
    /// Prove each provider's credentials and reachability with read-only calls, deleting
    /// nothing: per provider what was tried, the answer (ok, unauthenticated, forbidden, API not
    /// enabled, unreachable, throttled) and what to do. Exit 0 only when every check passed.
    Doctor {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
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
    /// Write the manual pages and shell completions (bash, zsh, fish) into DIR, made from these
    /// very definitions: DIR/man/forgetd.1 and one page per command, DIR/completions/.
    Generate {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// Copy the database consistently while the daemon runs (SQLite's online backup), then check
    /// the copy (integrity and audit chain).
    Backup {
        /// Where the copy goes; must not exist yet.
        file: PathBuf,
    },
    /// Move this SQLite queue to PostgreSQL: every row with its id, in one transaction, into an
    /// empty database (stop the daemon first); then verify the audit chain there and print the
    /// config lines to switch to.
    MigrateTo {
        /// The target, `postgresql://user@host/db` (no password; `[database] password` of
        /// `--config` is used if the URL is the configured one).
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Add one chat to the inventory.
    Add {
        /// The provider: convai or koosearch.
        #[arg(long, value_parser = provider_parser())]
        provider: ProviderKind,
        /// The Convai character ID, or the KooSearch application ID.
        #[arg(long)]
        scope: String,
        /// The chat's ID at the provider (Convai sessionID, KooSearch chat_id).
        #[arg(long)]
        id: String,
        /// The person the chat belongs to (omit when unknown).
        #[arg(long)]
        subject: Option<String>,
        /// Unix seconds or RFC 3339; default now.
        #[arg(long, value_name = "T")]
        created_at: Option<String>,
        /// The KooSearch knowledge base the chat belongs to, if any.
        #[arg(long)]
        repo_id: Option<String>,
    },
    /// Import chats from CSV (header = column names) or JSON lines; `-` reads stdin.
    Import {
        /// The file to read, or - for standard input.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Every request with its state and counts.
    List {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One request with each of its chats and their states.
    Show {
        /// The request's id.
        id: i64,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Give a request's dead items another round.
    Retry {
        /// The request's id.
        id: i64,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Every rule with its schedule, last run and any run waiting for approval.
    List {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule (kept in the database; rules from the config file are changed in the file).
    Add(RuleArgs),
    /// Remove a rule added with `rules add` (config rules are changed in the file).
    Remove {
        /// The rule's name.
        name: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The next runs of each rule (or of NAME), in its zone and in UTC, marking the ones a DST
    /// change moves (a skipped time runs at the jump; a repeated one runs once, at the first).
    Next {
        /// Only this rule.
        name: Option<String>,
        /// From this moment (unix seconds or RFC 3339; default: now).
        #[arg(long, value_parser = crate::fields::unix_seconds)]
        from: Option<i64>,
        /// How many runs per rule.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Release a run held back by the rule's max_deletions.
    Approve {
        /// The rule's name.
        name: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    /// The rule's name: 1 to 64 of A-Z a-z 0-9 . _ -
    pub name: String,
    /// The provider: convai or koosearch.
    #[arg(long, value_parser = provider_parser())]
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
    /// The IANA time zone the schedule is read in, e.g. Europe/Berlin (DST-correct).
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Also list chats at the provider.
    #[arg(long)]
    pub discover: bool,
    /// A run that matches more chats than this deletes nothing until `rules approve`.
    #[arg(long, default_value_t = crate::config::defaults::MAX_DELETIONS)]
    pub max_deletions: u64,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HoldsCommand {
    /// Hold a subject (--subject) or one chat (--provider --scope --id).
    // One of the two is required: clap's error then names both alternatives.
    #[command(group = clap::ArgGroup::new("what").args(["subject", "id"]).required(true))]
    Add {
        /// Hold every chat known to belong to this person.
        #[arg(long, conflicts_with_all = ["provider", "scope", "id"])]
        subject: Option<String>,
        /// With --scope and --id: hold one chat. The provider: convai or koosearch.
        #[arg(long, requires_all = ["scope", "id"], value_parser = provider_parser())]
        provider: Option<ProviderKind>,
        /// The chat's character ID (Convai) or application ID (KooSearch).
        #[arg(long, requires_all = ["provider", "id"])]
        scope: Option<String>,
        /// The chat's ID at the provider.
        #[arg(long, requires_all = ["provider", "scope"])]
        id: Option<String>,
        /// Why (a case number, a regulator's letter): shown wherever the hold keeps a chat.
        #[arg(long)]
        reason: String,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Active holds with what each keeps.
    List {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Lift a hold: its chats return to the queue unless another hold covers them.
    Remove {
        /// The hold's id (as `holds add` printed it, or from `holds list`).
        hold_id: i64,
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; names the first broken link and exits 1 if any.
    Verify {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A certificate of erasure for one request. Refused (exit 1) when the audit chain does not
    /// verify or its append-only triggers are missing, unless --force.
    Export {
        /// The request's id (as `erase` printed it, or from `requests list`).
        #[arg(long)]
        request: i64,
        /// Print one JSON document instead of text (as --format json).
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// text; json; signed (the JSON, signed with Ed25519: check it with `forgetd
        /// certificate verify`); html (one self-contained printable page, signature included).
        #[arg(long, value_enum, default_value_t = CertFormat::Text)]
        format: CertFormat,
        /// Print the certificate even on a broken record; it then says BROKEN at its top.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key that signs certificates (hex), to publish for verifiers. Creates the
    /// signing key beside the database on first use unless `[audit] signing_key` names one.
    PublicKey,
}

/// How `audit export` writes a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertFormat {
    Text,
    Json,
    Signed,
    Html,
}

#[derive(Debug, Subcommand)]
pub enum CertificateCommand {
    /// Check a signed certificate offline (no database, no configuration): exit 0 when the
    /// signature holds for the given key, 1 naming what is wrong.
    Verify {
        /// The signed certificate (`audit export --format signed`).
        file: PathBuf,
        /// The organisation's public key: 64 hex characters (as `audit public-key` prints it),
        /// or a file holding them.
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
}

/// `--provider`: one of the providers' keys, listed by `--help` and by the error for any other.
fn provider_parser() -> impl clap::builder::TypedValueParser<Value = ProviderKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(ProviderKind::all().map(ProviderKind::as_str)).map(
        |s| {
            s.parse::<ProviderKind>()
                .expect("only listed values get here")
        },
    )
}

/// A usage mistake found after parsing (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command-line value the database's CHECK constraint refused (exit 2, as [`UsageError`]): the
/// constraint's name, in words, says what a valid value is.
#[derive(Debug, thiserror::Error)]
#[error("invalid argument: {rule}")]
pub struct InvalidArgument {
    pub rule: String,
    #[source]
    pub source: StoreError,
}

impl InvalidArgument {
    /// Makes a CHECK refusal of an argument a usage error; any other store error stays what it
    /// is (a trigger's or UNIQUE refusal is about the data's state, not the value's shape).
    pub fn from_store(e: StoreError) -> anyhow::Error {
        let rule = match &e {
            StoreError::Refused { message, .. } => message
                .strip_prefix("CHECK constraint failed: ")
                .map(|name| name.replace('_', " ")),
            _ => None,
        };
        match rule {
            Some(rule) => InvalidArgument { rule, source: e }.into(),
            None => e.into(),
        }
    }
}

/// Maps an error to the SPEC's exit codes by walking its causes.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<crate::config::SecretError>() {
            return 78;
        }
        if cause.is::<UsageError>() || cause.is::<InvalidArgument>() {
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

fn parse_db(text: &str) -> Result<crate::config::Database, std::convert::Infallible> {
    Ok(crate::config::Database::from_arg(std::ffi::OsStr::new(
        text,
    )))
}

/// Loads the configuration the flags name (defaults without `--config`), with `--db` applied.
pub fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults(),
    };
    if let Some(db) = &cli.db {
        db.check().map_err(ConfigError::Other)?;
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
        errln!("forgetd: {e}");
        return ExitCode::from(78);
    }
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            errln!("forgetd: {}", render_error(&e));
            ExitCode::from(code)
        }
    }
}

pub use crate::errors::render as render_error;
