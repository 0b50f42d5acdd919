//! Configuration: the TOML file, parsed and validated into typed values before anything runs.
//!
//! Rules this module keeps:
//! - Every problem is reported at once: unknown keys (collected with `serde_ignored`, named by
//!   their full path), bad durations, bad URLs, missing provider settings, literal secrets. One
//!   [`ConfigError`] lists them all; the CLI exits 78 on it.
//! - A secret in the file is always a *reference* ([`SecretRef`]): `env:NAME`, `file:/path` or
//!   `credential:NAME` (`$CREDENTIALS_DIRECTORY/NAME`, systemd `LoadCredential=`). A literal value is
//!   refused without echoing it. Resolved secrets live in [`secrecy::SecretString`], whose `Debug`
//!   is redacted; nothing in this module ever formats a secret's value.
//! - `http://` is accepted only for loopback hosts; everything else must be `https://`.
//! - No config file at all means defaults and no providers (fine for the CLI; `run` refuses it).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::fields::{self, duration, required};
use crate::model::ProviderKind;
use crate::providers::registry::{self, REGISTRY};
use crate::providers::{Configured, Settings};
use crate::schedule::Schedule;

/// Where the queue is: a SQLite file (the default, and the embedded choice) or a PostgreSQL
/// database shared by several instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(PgTarget),
}

impl Database {
    /// `--db`'s value: a `postgres://` URL, or a SQLite file's path. A URL is checked by
    /// [`Database::check`], not here: the command line's parser would echo a refused value, and
    /// a URL may carry a password.
    pub fn from_arg(text: &std::ffi::OsStr) -> Self {
        match text.to_str() {
            Some(t) if PgTarget::is_url(t) => Self::Postgres(PgTarget {
                url: t.to_string(),
                password: None,
            }),
            _ => Self::Sqlite(PathBuf::from(text)),
        }
    }

    /// What `--db` could not check: a PostgreSQL URL must not carry a password.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Postgres(t) => check_pg_url(&t.url).map_err(|e| format!("--db: {e}")),
            Self::Sqlite(_) => Ok(()),
        }
    }

    /// The SQLite file, when the queue is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(t) => write!(f, "{t}"),
        }
    }
}

/// A PostgreSQL URL forgetd accepts: no password in it (the password is `[database] password`, a
/// secret reference, so it never sits in a config file or a process list).
fn check_pg_url(text: &str) -> Result<(), String> {
    let u = url::Url::parse(text).map_err(|e| format!("not a PostgreSQL URL ({e})"))?;
    if u.password().is_some() {
        return Err("a password in the database URL is not accepted (it is not shown); give it as [database] password = \"env:NAME\", \"file:/path\" or \"credential:NAME\"".into());
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        return Err("a password in the database URL is not accepted (it is not shown); give it as [database] password = a secret reference".into());
    }
    Ok(())
}

/// Where to connect: a libpq connection string or `postgres://` URL, and the password's
/// reference. Printing it never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub url: String,
    pub password: Option<crate::secret::SecretRef>,
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL with a password is refused when the config is read; this is only a second guard.
        match url::Url::parse(&self.url) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("redacted"));
                write!(f, "{u}")
            }
            _ => f.write_str(&self.url),
        }
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.to_string())
            .field("password", &self.password)
            .finish()
    }
}

impl PgTarget {
    /// Whether `text` names a PostgreSQL database rather than a SQLite file.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (`None`: built-in defaults).
    pub source: Option<PathBuf>,
    pub database: Database,
    pub daemon: DaemonConfig,
    pub retry: RetryConfig,
    pub http: Option<HttpConfig>,
    pub audit: AuditConfig,
    pub verify: VerifyConfig,
    /// The `[providers.<key>]` tables, in registry order; each provider's own settings are read
    /// by its folder's `config.rs`.
    pub providers: Vec<Configured>,
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// An erasure request is due this long after it was received (GDPR Art. 12(3): one month).
    pub deadline: Duration,
    /// How long a claimed batch stays in flight before another worker may take it back.
    pub lease: Duration,
    /// How long in-flight batches may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// PostgreSQL: how often an instance says it is alive. One silent for five of these is
    /// taken for dead, and its claims are returned to the queue.
    pub heartbeat: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub give_up_after: Duration,
    /// The longest Retry-After honoured by waiting; a longer one pauses the provider and probes.
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    /// Keys the subject hash. `None`: a generated key file beside the database.
    pub subject_key: Option<SecretRef>,
    /// The Ed25519 seed (32 bytes) that signs certificates. `None`: a generated key file
    /// beside the database.
    pub signing_key: Option<SecretRef>,
}

/// `[verify]`: reading deleted chats back ([`crate::verify`]).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// How long after a confirmed deletion a chat is read back; `None`: never (`after = "off"`).
    pub after: Option<Duration>,
    /// The most of a provider's calls that reading back may take while deletions are waiting.
    pub share: f64,
    /// Reads that cannot decide, per chat, before it is reported unverified.
    pub max_attempts: u32,
    /// How many times a chat read back present is deleted again before it goes dead.
    pub max_reappearances: u32,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            after: Some(defaults::VERIFY_AFTER),
            share: defaults::VERIFY_SHARE,
            max_attempts: defaults::VERIFY_MAX_ATTEMPTS,
            max_reappearances: defaults::VERIFY_MAX_REAPPEARANCES,
        }
    }
}

/// A retention rule as written in the config file (or given to `forgetd rules add`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub name: String,
    pub provider: ProviderKind,
    /// A character/application ID, or `"*"` for every scope of the provider.
    pub scope: String,
    pub max_age: Duration,
    pub schedule: String,
    pub timezone: String,
    pub discover: bool,
    pub max_deletions: u64,
}

/// Every problem found in a configuration file, reported together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Syntax {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<String> },
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("the audit subject key: {0}")]
    SubjectKey(#[source] crate::audit::KeyError),
    #[error("{0}")]
    Other(String),
}

pub use crate::secret::{MIN_SUBJECT_KEY_LEN, SecretError, SecretRef};

const SUBJECT_KEY: &str = "audit.subject_key";

// ---------------------------------------------------------------------------------------------
// The raw file shape. Durations and references stay strings here so that validation can report
// every bad one, not just the first serde meets.

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    /// Set in config.example.toml: a copy nobody edited must not start a service against the
    /// example's placeholders (or real provider hosts with placeholder IDs).
    unedited_example: Option<bool>,
    // Each section is read on its own ([`fields::table`]), so a value of the wrong type in one
    // (`max_attempts = "20"`) is one problem among the others, not the end of reading.
    database: Option<toml::Table>,
    daemon: Option<toml::Table>,
    retry: Option<toml::Table>,
    http: Option<toml::Table>,
    audit: Option<toml::Table>,
    verify: Option<toml::Table>,
    /// Each provider's table is handed to its folder whole (its keys are its own).
    providers: Option<toml::Table>,
    #[serde(default)]
    rules: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
struct RawDatabase {
    path: Option<PathBuf>,
    /// PostgreSQL instead of a file: `postgres://user@host/db?sslmode=...`, no password.
    url: Option<String>,
    /// The PostgreSQL password, as a secret reference.
    password: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDaemon {
    deadline: Option<String>,
    lease: Option<String>,
    shutdown_timeout: Option<String>,
    heartbeat: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRetry {
    base_delay: Option<String>,
    max_delay: Option<String>,
    max_attempts: Option<i64>,
    give_up_after: Option<String>,
    max_retry_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawHttp {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAudit {
    subject_key: Option<String>,
    signing_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawVerify {
    after: Option<String>,
    share: Option<f64>,
    max_attempts: Option<i64>,
    max_reappearances: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawRule {
    name: Option<String>,
    provider: Option<String>,
    scope: Option<String>,
    max_age: Option<String>,
    schedule: Option<String>,
    timezone: Option<String>,
    discover: Option<bool>,
    max_deletions: Option<i64>,
}

// ---------------------------------------------------------------------------------------------

/// Defaults, in one place (config.example.toml repeats them in its comments).
pub mod defaults {
    use std::time::Duration;
    pub const DEADLINE: Duration = Duration::from_secs(30 * 86_400);
    pub const LEASE: Duration = Duration::from_secs(5 * 60);
    pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEARTBEAT: Duration = Duration::from_secs(2);
    pub const BASE_DELAY: Duration = Duration::from_secs(1);
    pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
    pub const MAX_ATTEMPTS: u32 = 20;
    pub const GIVE_UP_AFTER: Duration = Duration::from_secs(7 * 86_400);
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
    pub const MAX_DELETIONS: u64 = 10_000;
    pub const HTTP_LISTEN: &str = "127.0.0.1:9464";
    pub const VERIFY_AFTER: Duration = Duration::from_secs(10 * 60);
    pub const VERIFY_SHARE: f64 = 0.2;
    pub const VERIFY_MAX_ATTEMPTS: u32 = 5;
    pub const VERIFY_MAX_REAPPEARANCES: u32 = 3;
}

fn validate_database(raw: Option<RawDatabase>, p: &mut Vec<String>) -> Database {
    let Some(raw) = raw else {
        return Database::Sqlite(default_database_path());
    };
    match (raw.path, raw.url) {
        (Some(_), Some(_)) => {
            p.push(
                "[database]: give `path` (a SQLite file) or `url` (PostgreSQL), not both".into(),
            );
            Database::Sqlite(default_database_path())
        }
        (path, None) => {
            if raw.password.is_some() {
                p.push(
                    "[database] password is for a PostgreSQL `url`; a SQLite file has none".into(),
                );
            }
            Database::Sqlite(path.unwrap_or_else(default_database_path))
        }
        (None, Some(url)) => {
            if !PgTarget::is_url(&url) {
                p.push("[database] url: must start with postgres:// or postgresql:// (a SQLite file is `path`)".into());
            } else if let Err(e) = check_pg_url(&url) {
                p.push(format!("[database] url: {e}"));
            }
            let password = raw
                .password
                .and_then(|v| match crate::secret::SecretRef::parse(&v) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        p.push(format!("[database] password: {e}"));
                        None
                    }
                });
            Database::Postgres(PgTarget { url, password })
        }
    }
}

/// The default database path: `$STATE_DIRECTORY/forgetd.db` under systemd, else `./forgetd.db`.
pub fn default_database_path() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several colon-separated directories; the first is ours.
        Some(dirs) if !dirs.is_empty() => {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            PathBuf::from(first).join("forgetd.db")
        }
        _ => PathBuf::from("forgetd.db"),
    }
}

impl Config {
    /// The configuration used when no file is given.
    pub fn defaults() -> Self {
        Self {
            source: None,
            database: Database::Sqlite(default_database_path()),
            daemon: DaemonConfig {
                deadline: defaults::DEADLINE,
                lease: defaults::LEASE,
                shutdown_timeout: defaults::SHUTDOWN_TIMEOUT,
                heartbeat: defaults::HEARTBEAT,
            },
            retry: RetryConfig {
                base_delay: defaults::BASE_DELAY,
                max_delay: defaults::MAX_DELAY,
                max_attempts: defaults::MAX_ATTEMPTS,
                give_up_after: defaults::GIVE_UP_AFTER,
                max_retry_after: defaults::MAX_RETRY_AFTER,
            },
            http: None,
            audit: AuditConfig {
                subject_key: None,
                signing_key: None,
            },
            verify: VerifyConfig::default(),
            providers: Vec::new(),
            rules: Vec::new(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|source| ConfigError::Syntax {
            path: origin.to_string(),
            source,
        })?;
        let raw: RawConfig = serde_ignored::deserialize(de, |path| {
            unknown.push(format!("unknown key `{}`", fields::key_path(&path)))
        })
        .map_err(|source| ConfigError::Syntax {
            path: origin.to_string(),
            source,
        })?;
        let mut problems = unknown;
        let config = validate(raw, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// What is allowed but probably a mistake: a placeholder left from the example
    /// (`scope = "<charID>"`), a metrics listener off loopback. `check-config` prints these; the
    /// daemon logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(h) = &self.http
            && !h.listen.ip().is_loopback()
        {
            w.push(format!(
                "`http.listen` = \"{}\" is not a loopback address: /metrics and /healthz have no authentication; keep them on 127.0.0.1 or behind your scraper's network policy",
                h.listen
            ));
        }
        let placeholder = |v: &str| v.contains('<') && v.contains('>');
        for r in &self.rules {
            if placeholder(&r.scope) {
                w.push(format!(
                    "rule {}: scope \"{}\" looks like the example's placeholder; put the real {} scope ID there",
                    r.name, r.scope, r.provider
                ));
            }
        }
        w
    }

    /// The providers this config enables.
    pub fn kinds(&self) -> Vec<ProviderKind> {
        self.providers.iter().map(|c| c.kind()).collect()
    }

    pub fn provider(&self, kind: ProviderKind) -> Option<&Configured> {
        self.providers.iter().find(|c| c.kind() == kind)
    }

    pub fn provider_mut(&mut self, kind: ProviderKind) -> Option<&mut Configured> {
        self.providers.iter_mut().find(|c| c.kind() == kind)
    }

    pub fn limits(&self, kind: ProviderKind) -> Option<&crate::providers::ProviderLimits> {
        self.provider(kind).map(|c| &c.limits)
    }

    /// The settings of the provider whose settings type is `T`, when it is configured.
    pub fn settings<T: Settings>(&self) -> Option<&T> {
        self.providers.iter().find_map(|c| c.settings::<T>())
    }

    /// Configures a provider, replacing its earlier settings.
    pub fn set_provider(&mut self, configured: Configured) {
        self.remove_provider(configured.kind());
        self.providers.push(configured);
        let order = |k: ProviderKind| REGISTRY.iter().position(|r| r.kind == k);
        self.providers.sort_by_key(|c| order(c.kind()));
    }

    pub fn remove_provider(&mut self, kind: ProviderKind) {
        self.providers.retain(|c| c.kind() != kind);
    }

    /// Every secret reference the config names, with the key it sits under.
    pub fn secret_refs(&self) -> Vec<(String, &SecretRef)> {
        let mut v = Vec::new();
        if let Some(key) = &self.audit.subject_key {
            v.push((SUBJECT_KEY.to_string(), key));
        }
        if let Some(key) = &self.audit.signing_key {
            v.push(("audit.signing_key".to_string(), key));
        }
        for c in &self.providers {
            v.extend(c.settings.secrets());
        }
        v
    }

    /// Reads every secret the config names, so that a missing one fails start-up (exit 78) rather
    /// than the first delete. Returns every failure, so `check-config` and start-up report them all at once.
    pub fn check_secrets(&self) -> Vec<SecretError> {
        self.secret_refs()
            .into_iter()
            .filter_map(|(name, r)| {
                if name == SUBJECT_KEY {
                    // A key is bytes (`head -c 32 /dev/urandom`), not text.
                    match r.read_bytes() {
                        Err(e) => Some(e),
                        Ok(k) if k.expose_secret().len() < MIN_SUBJECT_KEY_LEN => {
                            Some(SecretError::TooShort {
                                reference: r.to_string(),
                                len: k.expose_secret().len(),
                            })
                        }
                        Ok(_) => None,
                    }
                } else if name == "audit.signing_key" {
                    // An Ed25519 seed: 32 bytes of any value, not text (its length is checked
                    // where the key is loaded).
                    r.read_bytes().err()
                } else {
                    r.read().err()
                }
            })
            .collect()
    }

    /// [`Config::check_secrets`] as one [`ConfigError`] listing every unreadable secret.
    pub fn verify_secrets(&self) -> Result<(), ConfigError> {
        let failures = self.check_secrets();
        if failures.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Invalid {
            path: self
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(defaults)".into()),
            problems: failures.iter().map(|e| e.to_string()).collect(),
        })
    }
}

/// `daemon.bogus`, `rules[2].nme`: serde_ignored's path without its `?` for options.
fn validate(raw: RawConfig, p: &mut Vec<String>) -> Config {
    if raw.unedited_example == Some(true) {
        p.push(
            "this is the unedited example configuration (`unedited_example = true`): fill in your providers, secrets and rules, then delete that line".into(),
        );
    }
    fn section<T: serde::de::DeserializeOwned>(
        t: Option<toml::Table>,
        at: &str,
        p: &mut Vec<String>,
    ) -> Option<T> {
        fields::table(t?, at, p)
    }
    let database = validate_database(section::<RawDatabase>(raw.database, "database", p), p);
    let daemon = validate_daemon(section(raw.daemon, "daemon", p).unwrap_or_default(), p);
    let retry = validate_retry(section(raw.retry, "retry", p).unwrap_or_default(), p);
    let http = section(raw.http, "http", p).map(|h| validate_http(h, p));
    let audit = validate_audit(section(raw.audit, "audit", p), p);
    let verify = validate_verify(section(raw.verify, "verify", p).unwrap_or_default(), p);
    let (providers, tables) = validate_providers(raw.providers.unwrap_or_default(), p);
    // Kept with their index, so a rule after one that could not be read is still named by its
    // own place in the file.
    let rules: Vec<(usize, RawRule)> = raw
        .rules
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, fields::table(t, &format!("rules[{i}]"), p)?)))
        .collect();
    let rules = validate_rules(rules, &tables, p);
    Config {
        source: None,
        database,
        daemon,
        retry,
        http,
        audit,
        verify,
        providers,
        rules,
    }
}

fn validate_daemon(d: RawDaemon, p: &mut Vec<String>) -> DaemonConfig {
    DaemonConfig {
        deadline: duration(
            p,
            "daemon.deadline",
            d.deadline.as_deref(),
            defaults::DEADLINE,
        ),
        lease: duration(p, "daemon.lease", d.lease.as_deref(), defaults::LEASE),
        shutdown_timeout: duration(
            p,
            "daemon.shutdown_timeout",
            d.shutdown_timeout.as_deref(),
            defaults::SHUTDOWN_TIMEOUT,
        ),
        heartbeat: duration(
            p,
            "daemon.heartbeat",
            d.heartbeat.as_deref(),
            defaults::HEARTBEAT,
        ),
    }
}

fn validate_retry(r: RawRetry, p: &mut Vec<String>) -> RetryConfig {
    let retry = RetryConfig {
        base_delay: duration(
            p,
            "retry.base_delay",
            r.base_delay.as_deref(),
            defaults::BASE_DELAY,
        ),
        max_delay: duration(
            p,
            "retry.max_delay",
            r.max_delay.as_deref(),
            defaults::MAX_DELAY,
        ),
        max_attempts: match r.max_attempts {
            None => defaults::MAX_ATTEMPTS,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(n) => {
                p.push(format!(
                    "`retry.max_attempts` = {n}: must be between 1 and 10000"
                ));
                defaults::MAX_ATTEMPTS
            }
        },
        give_up_after: duration(
            p,
            "retry.give_up_after",
            r.give_up_after.as_deref(),
            defaults::GIVE_UP_AFTER,
        ),
        max_retry_after: duration(
            p,
            "retry.max_retry_after",
            r.max_retry_after.as_deref(),
            defaults::MAX_RETRY_AFTER,
        ),
    };
    if retry.base_delay > retry.max_delay {
        p.push(format!(
            "`retry.base_delay` ({}) is longer than `retry.max_delay` ({})",
            humantime::format_duration(retry.base_delay),
            humantime::format_duration(retry.max_delay)
        ));
    }
    retry
}

fn validate_http(h: RawHttp, p: &mut Vec<String>) -> HttpConfig {
    let text = h
        .listen
        .unwrap_or_else(|| defaults::HTTP_LISTEN.to_string());
    match text.parse::<SocketAddr>() {
        Ok(listen) => HttpConfig { listen },
        Err(_) => {
            p.push(format!(
                "`http.listen` = \"{text}\" is not an address:port such as \"127.0.0.1:9464\""
            ));
            HttpConfig {
                listen: defaults::HTTP_LISTEN
                    .parse()
                    .expect("default listen address"),
            }
        }
    }
}

fn validate_audit(raw: Option<RawAudit>, p: &mut Vec<String>) -> AuditConfig {
    let (subject, signing) = raw
        .map(|a| (a.subject_key, a.signing_key))
        .unwrap_or_default();
    let mut read = |key: &str, v: Option<String>| {
        v.and_then(|k| match SecretRef::parse(&k) {
            Ok(r) => Some(r),
            Err(e) => {
                p.push(format!("`audit.{key}`: {e}"));
                None
            }
        })
    };
    AuditConfig {
        subject_key: read("subject_key", subject),
        signing_key: read("signing_key", signing),
    }
}

fn validate_verify(v: RawVerify, p: &mut Vec<String>) -> VerifyConfig {
    let after = match v.after.as_deref() {
        Some("off") => None,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                p.push(format!(
                    "`verify.after` = \"{text}\" is not a duration ({e}); write e.g. \"10m\", \"0s\" (at once) or \"off\""
                ));
                Some(defaults::VERIFY_AFTER)
            }
        },
        None => Some(defaults::VERIFY_AFTER),
    };
    let share = match v.share {
        None => defaults::VERIFY_SHARE,
        Some(s) if s > 0.0 && s <= 0.5 => s,
        Some(s) => {
            p.push(format!(
                "`verify.share` = {s}: must be above 0 and at most 0.5 (the share of a provider's calls reading back may take while deletions wait)"
            ));
            defaults::VERIFY_SHARE
        }
    };
    let mut count = |key: &str, v: Option<i64>, default: u32, lo: i64| match v {
        None => default,
        Some(n) if (lo..=1000).contains(&n) => n as u32,
        Some(n) => {
            p.push(format!(
                "`verify.{key}` = {n}: must be between {lo} and 1000"
            ));
            default
        }
    };
    VerifyConfig {
        after,
        share,
        max_attempts: count(
            "max_attempts",
            v.max_attempts,
            defaults::VERIFY_MAX_ATTEMPTS,
            1,
        ),
        max_reappearances: count(
            "max_reappearances",
            v.max_reappearances,
            defaults::VERIFY_MAX_REAPPEARANCES,
            0,
        ),
    }
}

/// Each rule checked on its own, then against the others (names unique) and the providers
/// (its provider has a table).
fn validate_rules(
    raw: Vec<(usize, RawRule)>,
    tables: &[ProviderKind],
    p: &mut Vec<String>,
) -> Vec<RuleSpec> {
    let mut rules = Vec::new();
    let mut names = BTreeMap::new();
    for (i, r) in raw {
        let at = match &r.name {
            Some(n) => format!("rules[{i}] ({n})"),
            None => format!("rules[{i}]"),
        };
        // A table that is there but has problems of its own is not reported again here.
        if let Some(provider) = r
            .provider
            .as_deref()
            .and_then(|t| t.parse::<ProviderKind>().ok())
            && !tables.contains(&provider)
        {
            p.push(format!(
                "{at}: provider \"{provider}\" has no [providers.{provider}] table"
            ));
        }
        match validate_rule(r, &at) {
            Ok(rule) => {
                if names.insert(rule.name.clone(), i).is_some() {
                    p.push(format!(
                        "{at}: a rule named \"{}\" is already defined",
                        rule.name
                    ));
                }
                rules.push(rule);
            }
            Err(errs) => p.extend(errs),
        }
    }
    rules
}

/// Hands each `[providers.<key>]` table to its provider: the shared limits first, then the
/// provider's own keys. Returns the usable providers and every key that had a table.
fn validate_providers(
    tables: toml::Table,
    p: &mut Vec<String>,
) -> (Vec<Configured>, Vec<ProviderKind>) {
    let mut present = Vec::new();
    let mut tables = tables;
    for key in tables.keys() {
        if key.parse::<ProviderKind>().is_err() {
            p.push(format!(
                "unknown key `providers.{key}`: forgetd serves {}",
                registry::REGISTRY
                    .iter()
                    .map(|r| format!("[providers.{}]", r.kind))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
    }
    let mut configured = Vec::new();
    for r in REGISTRY {
        let Some(value) = tables.remove(r.kind.as_str()) else {
            continue;
        };
        present.push(r.kind);
        let toml::Value::Table(mut table) = value else {
            p.push(format!("`providers.{}` must be a table", r.kind));
            continue;
        };
        let limits =
            crate::providers::limits::take(&mut table, &format!("providers.{}", r.kind), p);
        if let Some(settings) = (r.settings)(table, p) {
            configured.push(Configured { settings, limits });
        }
    }
    (configured, present)
}

fn validate_rule(r: RawRule, at: &str) -> Result<RuleSpec, Vec<String>> {
    let mut p = Vec::new();
    let name = required(&mut p, &format!("{at}.name"), r.name);
    let provider = match r.provider.as_deref() {
        None => {
            let keys: Vec<String> = ProviderKind::all().map(|k| format!("\"{k}\"")).collect();
            p.push(format!("{at}.provider is required ({})", keys.join(" or ")));
            None
        }
        Some(text) => match text.parse::<ProviderKind>() {
            Ok(k) => Some(k),
            Err(e) => {
                p.push(format!("{at}.provider: {e}"));
                None
            }
        },
    };
    let scope = required(&mut p, &format!("{at}.scope"), r.scope);
    let max_age = match r.max_age.as_deref() {
        None => {
            p.push(format!("{at}.max_age is required (e.g. \"30d\")"));
            Duration::ZERO
        }
        Some(_) => duration(
            &mut p,
            &format!("{at}.max_age"),
            r.max_age.as_deref(),
            Duration::ZERO,
        ),
    };
    let schedule = required(&mut p, &format!("{at}.schedule"), r.schedule);
    let timezone = r.timezone.unwrap_or_else(|| "UTC".to_string());
    if !schedule.is_empty()
        && let Err(e) = Schedule::parse(&schedule, &timezone)
    {
        p.push(format!("{at}: {e}"));
    }
    let max_deletions = match r.max_deletions {
        None => defaults::MAX_DELETIONS,
        Some(n) if n >= 1 => n as u64,
        Some(n) => {
            p.push(format!("{at}.max_deletions = {n}: must be at least 1"));
            defaults::MAX_DELETIONS
        }
    };
    let Some(provider) = provider else {
        return Err(p);
    };
    let spec = RuleSpec {
        name,
        provider,
        scope,
        max_age,
        schedule,
        timezone,
        discover: r.discover.unwrap_or(false),
        max_deletions,
    };
    if let Err(e) = spec.check_shape() {
        p.push(format!("{at}: {e}"));
    }
    if p.is_empty() { Ok(spec) } else { Err(p) }
}

impl RuleSpec {
    /// Checks what the database would also refuse, with a message naming the value.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "rule name \"{}\" must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
                self.name
            ));
        }
        if self.scope.is_empty() || self.scope.len() > 64 {
            return Err(format!(
                "scope \"{}\" must be 1 to 64 characters (a character/application ID, or \"*\" for all)",
                self.scope
            ));
        }
        if self.scope != "*" {
            self.provider.check_scope(&self.scope)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, "test.toml") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            Err(e) => vec![e.to_string()],
            Ok(_) => vec![],
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.daemon.deadline, defaults::DEADLINE);
        assert_eq!(c.retry.max_attempts, 20);
        assert!(c.providers.is_empty());
    }

    #[test]
    fn unknown_keys_are_all_named_with_their_path() {
        let p = problems(
            "[daemon]\nbogus = 1\n[retry]\nbase_dely = \"1s\"\n[providers.convai]\napi_key = \"env:K\"\nbatchsize = 3\n",
        );
        assert!(p.iter().any(|m| m.contains("daemon.bogus")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("retry.base_dely")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("providers.convai.batchsize")),
            "{p:?}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let p = problems(
            "[daemon]\ndeadline = \"soon\"\nlease = \"0s\"\n[retry]\nmax_attempts = 0\n[http]\nlisten = \"nowhere\"\n",
        );
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn literal_secret_is_refused_without_echoing_it() {
        let p = problems("[providers.convai]\napi_key = \"sk-live-abcdef123\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("literal secret"));
        assert!(!p[0].contains("sk-live-abcdef123"));
    }

    #[test]
    fn a_bad_provider_table_is_reported_as_itself_not_as_missing() {
        let p = problems(
            "[providers.koosearch]\nendpoint = \"https://x.example\"\nproject_id = \"p1\"\n[providers.koosearch.iam]\nendpoint = \"https://iam.example\"\ndomain = \"d\"\nuser = \"u\"\npassword = \"hunter2-literal\"\nproject = \"r\"\n[[rules]]\nname = \"r\"\nprovider = \"koosearch\"\nscope = \"*\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("providers.koosearch.iam.password"), "{p:?}");
        assert!(!p[0].contains("hunter2-literal"));
    }

    #[test]
    fn an_unknown_provider_table_names_the_ones_forgetd_serves() {
        let p = problems("[providers.openai]\napi_key = \"env:K\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("providers.openai") && p[0].contains("[providers.convai]"),
            "{p:?}"
        );
    }

    #[test]
    fn koosearch_takes_token_or_iam_not_both() {
        let p = problems(
            "[providers.koosearch]\nendpoint = \"https://x.example\"\nproject_id = \"p1\"\ntoken = \"env:T\"\n[providers.koosearch.iam]\nendpoint = \"https://iam.example\"\ndomain = \"d\"\nuser = \"u\"\npassword = \"env:P\"\nproject = \"r\"\n",
        );
        assert!(p.iter().any(|m| m.contains("not both")), "{p:?}");
    }

    #[test]
    fn rule_needs_an_enabled_provider_and_valid_schedule() {
        let p = problems(
            "[[rules]]\nname = \"r\"\nprovider = \"convai\"\nscope = \"*\"\nmax_age = \"30d\"\nschedule = \"not cron\"\n",
        );
        assert!(
            p.iter().any(|m| m.contains("no [providers.convai]")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("schedule")), "{p:?}");
    }

    #[test]
    fn secret_ref_reads_env_file_and_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "value\n").unwrap();
        let r = SecretRef::parse(&format!("file:{}", dir.path().join("k").display())).unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(r.read().unwrap().expose_secret(), "value");
        assert!(SecretRef::parse("credential:a/b").is_err());
        assert!(SecretRef::parse("file:relative").is_err());
        let missing = SecretRef::Env("FORGETD_TEST_SURELY_UNSET".into())
            .read()
            .unwrap_err();
        assert!(missing.to_string().contains("FORGETD_TEST_SURELY_UNSET"));
    }
}
