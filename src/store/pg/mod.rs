//! The PostgreSQL engine: connecting (`[database] url`), the session's settings, the schema's
//! migrations, and running the statements the store files write for [`super::db::Sql`].
//!
//! Rules:
//! - One connection per [`super::Store`], as with SQLite: the store thread serializes a
//!   daemon's statements. The sync `postgres` client blocks on a runtime of its own, which
//!   panics on a thread that already runs tokio; a call from such a thread (the daemon's set-up,
//!   `plan`, `doctor`) runs on a scoped thread instead ([`PgConn::call`]), so no caller has to
//!   know.
//! - Statements keep SQLite's `?N` placeholders in the source; they become `$N` once per text,
//!   and the prepared statement is cached for the connection's life.
//! - Arguments are bound leniently, as SQLite's affinity would take them: an integer bound where
//!   PostgreSQL inferred text is sent as its digits, never refused for the Rust type alone.
//! - The schema (`migrations/*.sql`) is applied at open, every pending file in one
//!   transaction, under an advisory lock, so instances that start together migrate once. A
//!   database from a newer forgetd is refused, as on SQLite.
//! - Write transactions take turns over every instance ([`PgConn::begin`]); claims still lock
//!   rows `FOR UPDATE SKIP LOCKED`, so the claim stays right if that ever changes.
//! - Durability: `synchronous_commit = on` for forgetd's session whatever the server's default,
//!   for the reason SQLite runs `synchronous = FULL` (a recorded confirmation must survive).
//! - The password never appears in a URL forgetd accepts; it comes from `[database] password`
//!   (a secret reference), and nothing here prints it.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

pub mod instances;
pub mod listen;
pub mod tls;

use super::db::{Col, Value};
use super::{Result, StoreError};
pub use crate::config::PgTarget;

/// The PostgreSQL schema, in order; each entry is one version. 006 is SQLite's version 6 written
/// directly; 007 on are PostgreSQL's own (several instances).
const MIGRATIONS: &[(i64, &str)] = &[
    (6, include_str!("migrations/006_baseline.sql")),
    (7, include_str!("migrations/007_instances.sql")),
    (8, include_str!("migrations/008_trigger_search_path.sql")),
    (9, include_str!("migrations/009_held_index.sql")),
    (10, include_str!("migrations/010_discovery.sql")),
];

/// The schema version this binary writes on PostgreSQL.
pub const SCHEMA_VERSION: i64 = 10;

/// One connection, with its cache of prepared statements.
pub struct PgConn {
    /// Always `Some` until dropped ([`Drop`] takes it off any runtime thread to close it).
    client: Option<postgres::Client>,
    dialer: Dialer,
    stmts: HashMap<String, postgres::Statement>,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` yet: a lost connection then fails
    /// the transaction instead of reconnecting under it.
    in_tx: bool,
    /// The server process of this connection: notifications it caused are our own.
    pub(crate) backend_pid: i32,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

/// Runs `f` where the sync client may block: here, or on a scoped thread when this thread runs
/// tokio (the client's own runtime cannot start inside another).
pub(crate) fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// How to open a connection to one target: its settings and its TLS ([`tls`]).
#[derive(Clone)]
pub(crate) struct Dialer {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Dialer {
    /// A new connection, off any tokio runtime.
    pub(crate) fn dial(&self) -> std::result::Result<postgres::Client, postgres::Error> {
        off_runtime(|| match &self.tls {
            Some(t) => self.config.connect(t.clone()),
            None => self.config.connect(postgres::NoTls),
        })
    }
}

/// How to connect to `target`: its TLS by libpq's conventions, the password read from its
/// reference.
pub(crate) fn dialer_of(target: &PgTarget) -> Result<Dialer> {
    let tls = tls::parse(&target.url)?;
    let mut config: postgres::Config = tls.url.parse().map_err(|e| StoreError::PgOpen {
        target: target.to_string(),
        source: e,
    })?;
    if let Some(reference) = &target.password {
        use secrecy::ExposeSecret;
        let secret = reference
            .read()
            .map_err(|e| StoreError::Invalid(format!("[database] password: {e}")))?;
        config.password(secret.expose_secret().as_bytes());
    }
    config.application_name("forgetd");
    if tls.mode != tls::Mode::Disable {
        // The handshake is rustls's; the client library only has to ask for it.
        config.ssl_mode(postgres::config::SslMode::Require);
    }
    Ok(Dialer {
        config,
        tls: tls.connector()?,
    })
}

impl PgConn {
    /// Connects, sets the session up, and brings the schema to this binary's version.
    /// `keyed_start`: record the audit chain's keyed start now (every open but `migrate-to`'s,
    /// which carries the source's over).
    pub fn open(target: &PgTarget, keyed_start: bool) -> Result<Self> {
        let dialer = dialer_of(target)?;
        let client = dialer.dial().map_err(|e| StoreError::PgOpen {
            target: target.to_string(),
            source: e,
        })?;
        let mut conn = Self {
            client: Some(client),
            dialer,
            stmts: HashMap::new(),
            in_tx: false,
            backend_pid: 0,
        };
        conn.set_up_session()?;
        conn.migrate(target, keyed_start)?;
        Ok(conn)
    }

    fn set_up_session(&mut self) -> Result<()> {
        self.call(|c| {
            c.batch_execute(
                "SET client_min_messages = warning;
                 SET synchronous_commit = on;
                 SET lock_timeout = '5s';
                 SET idle_in_transaction_session_timeout = '60s';
                 SET bytea_output = 'hex';",
            )
        })?;
        self.backend_pid = self
            .call(|c| c.query_one("SELECT pg_backend_pid()", &[]))?
            .get::<_, i32>(0);
        Ok(())
    }

    /// A new connection when the old one is gone (the server restarted, the network dropped),
    /// unless a transaction was open on it: that one failed, and its caller starts over.
    fn ensure_open(&mut self) -> Result<()> {
        if !self.client_mut().is_closed() {
            return Ok(());
        }
        if self.in_tx {
            return Err(StoreError::ConnectionLost(
                "inside a transaction, which the server rolled back",
            ));
        }
        let old = self.client.replace(self.dialer.dial()?);
        off_runtime(move || drop(old));
        self.stmts.clear();
        self.set_up_session()?;
        tracing::info!("reconnected to PostgreSQL");
        Ok(())
    }

    fn migrate(&mut self, target: &PgTarget, keyed_start: bool) -> Result<()> {
        // One instance migrates at a time; the others then find the schema current.
        self.batch("BEGIN; SELECT pg_advisory_xact_lock(hashtext('forgetd.migrate'));")?;
        let outcome = (|| {
            self.batch("CREATE TABLE IF NOT EXISTS forgetd_schema (version bigint NOT NULL)")?;
            let found: i64 = self
                .query("SELECT coalesce(max(version), 0) FROM forgetd_schema", &[])?
                .first()
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path: target.to_string().into(),
                    found,
                    known: SCHEMA_VERSION as usize,
                });
            }
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
                self.batch(sql)?;
                self.exec(
                    "INSERT INTO forgetd_schema (version) VALUES (?1)",
                    &[Value::I64(*version)],
                )?;
            }
            if !keyed_start {
                return Ok(());
            }
            // The chain's keyed start: the first link appended from now on (kept if present).
            self.exec(
                "INSERT INTO audit_keying (id, keyed_from_seq)
                 SELECT 1, coalesce(max(seq), 0) + 1 FROM audit_log ON CONFLICT DO NOTHING",
                &[],
            )?;
            Ok(())
        })();
        match outcome {
            Ok(()) => self.batch("COMMIT"),
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs `f` on the client, off any tokio runtime.
    fn call<R: Send>(
        &mut self,
        f: impl FnOnce(&mut postgres::Client) -> std::result::Result<R, postgres::Error> + Send,
    ) -> Result<R> {
        let client = self.client_mut();
        Ok(off_runtime(move || f(client))?)
    }

    fn client_mut(&mut self) -> &mut postgres::Client {
        self.client
            .as_mut()
            .expect("the client stays until the connection is dropped")
    }

    /// The prepared statement for `sql` (`?N` placeholders), from the cache or prepared now.
    fn prepare(&mut self, sql: &str) -> Result<postgres::Statement> {
        self.ensure_open()?;
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let text = dollar_placeholders(sql);
        let stmt = self.call(|c| c.prepare(&text))?;
        self.stmts.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    pub(crate) fn exec(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64> {
        let stmt = self.prepare(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        self.call(|c| c.execute(&stmt, &params))
    }

    pub(crate) fn query(&mut self, sql: &str, args: &[Value<'_>]) -> Result<Vec<postgres::Row>> {
        let stmt = self.prepare(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        self.call(|c| c.query(&stmt, &params))
    }

    /// Opens a write transaction: READ COMMITTED, then the writers' advisory lock, held until
    /// it ends. One forgetd writer at a time over every instance, as SQLite's IMMEDIATE
    /// transaction is: a read and the write it decides (the audit chain's head, whether a
    /// request is still `received`, the count that completes a request) cannot interleave with
    /// another instance's, and no order of row and chain locks can deadlock. Provider calls
    /// happen outside transactions, so instances still work in parallel where the time goes.
    pub(crate) fn begin(&mut self) -> Result<()> {
        self.batch("BEGIN; SELECT pg_advisory_xact_lock(hashtext('forgetd.writer'))")?;
        self.in_tx = true;
        Ok(())
    }

    /// Ends the open transaction with `COMMIT` or `ROLLBACK`.
    pub(crate) fn end(&mut self, commit: bool) -> Result<()> {
        self.in_tx = false;
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        if self.client_mut().is_closed() {
            // The server rolled it back when the connection went.
            return if commit {
                Err(StoreError::ConnectionLost(
                    "before COMMIT, so the server rolled the transaction back",
                ))
            } else {
                Ok(())
            };
        }
        self.call(|c| c.batch_execute(sql))
    }

    /// Several statements without arguments, in one round trip.
    pub(crate) fn batch(&mut self, sql: &str) -> Result<()> {
        self.ensure_open()?;
        self.call(|c| c.batch_execute(sql))
    }
}

/// A database made for a benchmark on a server where the caller may create them, dropped with
/// this value.
pub struct ScratchDatabase {
    pub url: String,
    server: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<pid>_<n>` on the server `conninfo` names (a libpq string with `host`
    /// and `user`).
    pub fn create(conninfo: &str, prefix: &str) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let field = |key: &str| {
            conninfo
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
        };
        let host = field("host").unwrap_or_else(|| "/var/run/postgresql".into());
        let user = field("user").unwrap_or_else(|| "postgres".into());
        let db = Self {
            url: format!("postgresql://{user}@{}/{name}", host.replace('/', "%2F")),
            server: conninfo.to_string(),
            name,
        };
        db.admin(&format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    fn admin(&self, sql: &str) -> Result<()> {
        let config: postgres::Config =
            format!("{} dbname=postgres", self.server)
                .parse()
                .map_err(|e| StoreError::PgOpen {
                    target: self.server.clone(),
                    source: e,
                })?;
        off_runtime(|| -> Result<()> {
            let mut c = config.connect(postgres::NoTls)?;
            c.batch_execute(sql)?;
            Ok(())
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let _ = self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime too.
        let client = self.client.take();
        off_runtime(move || drop(client));
    }
}

/// `?1` → `$1`, outside quoted text and identifiers.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// A column of a PostgreSQL row, read by its type.
pub(crate) fn col(row: &postgres::Row, index: usize) -> Result<Col<'_>> {
    let ty = row.columns()[index].type_().clone();
    let got = |e: postgres::Error| StoreError::Pg(e);
    Ok(match ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(index)
            .map_err(got)?
            .map_or(Col::Null, Col::I64),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)
            .map_err(got)?
            .map_or(Col::Null, |v| Col::I64(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)
            .map_err(got)?
            .map_or(Col::Null, |v| Col::I64(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)
            .map_err(got)?
            .map_or(Col::Null, |v| Col::I64(v.into())),
        Type::FLOAT8 => row
            .try_get::<_, Option<f64>>(index)
            .map_err(got)?
            .map_or(Col::Null, Col::F64),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(index)
            .map_err(got)?
            .map_or(Col::Null, |v| Col::F64(v.into())),
        Type::BYTEA => row
            .try_get::<_, Option<&[u8]>>(index)
            .map_err(got)?
            .map_or(Col::Null, Col::Bytes),
        _ => row
            .try_get::<_, Option<&str>>(index)
            .map_err(got)?
            .map_or(Col::Null, Col::Text),
    })
}

/// Not what the statement's parameter takes.
#[derive(Debug, thiserror::Error)]
#[error("a {given} argument cannot be bound to a parameter of type {wanted}")]
struct Unbindable {
    given: &'static str,
    wanted: String,
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let textual = matches!(
            *ty,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
        );
        let refuse = |given| -> Box<dyn StdError + Sync + Send> {
            Box::new(Unbindable {
                given,
                wanted: ty.to_string(),
            })
        };
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::I64(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ if textual => v.to_string().to_sql(&Type::TEXT, out),
                _ => Err(refuse("integer")),
            },
            Value::F64(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ if textual => v.to_string().to_sql(&Type::TEXT, out),
                _ => Err(refuse("real")),
            },
            Value::Text(s) if textual => s.as_ref().to_sql(&Type::TEXT, out),
            Value::Text(_) => Err(refuse("text")),
            Value::Bytes(b) if *ty == Type::BYTEA => b.as_ref().to_sql(ty, out),
            Value::Bytes(_) => Err(refuse("bytes")),
            Value::I64List(ids) if *ty == Type::INT8_ARRAY => ids.as_ref().to_sql(ty, out),
            Value::I64List(_) => Err(refuse("list of integers")),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT ?1, '?2', \"a?\" FROM t WHERE x = ?12"),
            "SELECT $1, '?2', \"a?\" FROM t WHERE x = $12"
        );
    }

    #[test]
    fn a_password_never_shows_in_the_target() {
        let t = PgTarget {
            url: "postgres://forgetd:hunter2@db.example/forgetd".into(),
            password: None,
        };
        assert!(!t.to_string().contains("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
