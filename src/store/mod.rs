//! The store: the one SQLite file forgetd and its feeders share, its schema and migrations, and
//! every query forgetd runs against it.
//!
//! Rules:
//! - The schema lives in `migrations/*.sql`, embedded in the binary and applied at every open
//!   (`rusqlite_migration`, tracked in `PRAGMA user_version`). A database from a newer forgetd is
//!   refused rather than misread.
//! - Feeders (other users, Debian's sqlite3 3.40, foreign keys off) write `sessions` and
//!   `erasure_requests` directly, so bad rows are refused by named CHECKs and literal-message
//!   triggers in the schema itself, not by Rust code they never run.
//! - The file is shared through a group: the directory forgetd creates is 0770, the database 0660,
//!   and SQLite gives its -wal/-shm files the database's mode. World bits are never set; an
//!   existing file that has them is tightened at open.
//! - WAL mode (feeders write while the daemon reads), `synchronous = FULL`, a busy timeout so
//!   short feeder writes never surface as errors. FULL, not NORMAL: a commit is on the disk
//!   before forgetd goes on, so a provider's confirmation, once recorded, survives power loss or
//!   a file system the kernel aborts. NORMAL lost the last recorded deletions when ext4 went
//!   read-only under the daemon (tests/storage_faults.rs), and sending again cannot bring their
//!   record back: the provider no longer has the chats, so discovery finds nothing to record.
//! - Async code never touches a [`rusqlite::Connection`]: [`AsyncStore`] owns one connection on a
//!   dedicated thread and runs closures there. One thread rather than `spawn_blocking` because a
//!   single writer serializes the daemon's own writes (no SQLITE_BUSY between its own tasks) and
//!   keeps prepared statements cached on one connection.
//!
//! The API is domain operations (file a request, resolve it, run a rule, claim a batch, finish
//! it, append to the audit trail, read a certificate's record), never SQL or connections handed
//! out: only `connection()`, for tests and tools, exposes one, and nothing outside this folder
//! calls it (`tests/architecture.rs`). That is the seam for a second engine: `Store` is the
//! SQLite engine today; PostgreSQL will make it an enum over engines with these same operations
//! (an enum rather than a trait object, because the two differ in how they claim and notify, and
//! callers should not pay for dynamic dispatch on every statement), each engine in its own folder.
//!
//! Submodules: [`queue`] (work-item state machine and batch claims), [`requests`] (erasure
//! requests), [`resolution`] (requests and rule runs into work items, and `plan`), [`inventory`]
//! (sessions and import), [`holds`], [`rules`], [`lock`] (the daemon lock), [`status`],
//! [`verification`] (reading deleted chats back: what is due, what was seen).

pub mod audit;
pub mod db;
pub mod discovery;
pub mod holds;
pub mod inventory;
pub mod lock;
pub mod migrate_to;
pub mod outage;
pub mod pg;
pub mod queue;
pub mod requests;
pub mod resolution;
pub mod rules;
pub mod status;
pub mod verification;

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::args;
pub use crate::config::{Database, PgTarget};
use rusqlite_migration::{M, Migrations};

const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("migrations/001_init.sql")),
    M::up(include_str!("migrations/002_feeder_life.sql")).foreign_key_check(),
    M::up(include_str!("migrations/003_provider_registry.sql")).foreign_key_check(),
    M::up(include_str!("migrations/004_provider_gate.sql")),
    M::up(include_str!("migrations/005_verification.sql")),
    M::up(include_str!("migrations/006_keyed_chain.sql")),
    M::up(include_str!("migrations/007_held_index.sql")),
    M::up(include_str!("migrations/008_discovery.sql")),
];

/// A backup copy under its temporary name (removed if dropped), until [`Backup::keep`].
#[derive(Debug)]
pub struct Backup {
    dest: PathBuf,
    tmp: tempfile::TempPath,
    pub pages: u64,
}

impl Backup {
    /// Where the copy is while it is checked.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the checked copy to its name (never over a file that appeared there meanwhile), and
    /// makes the move durable.
    pub fn keep(self) -> Result<PathBuf> {
        let dest = self.dest;
        let io = |source| StoreError::Io {
            path: dest.clone(),
            source,
        };
        self.tmp.persist_noclobber(&dest).map_err(|e| io(e.error))?;
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(dest)
    }
}

/// Keeps the `providers` table equal to the registry, so the schema accepts exactly the
/// providers this binary serves. Writes only when they differ (a CLI open stays read-only).
fn sync_providers(store: &mut Store) -> Result<()> {
    use db::Sql;
    let mut wanted: Vec<String> = crate::providers::registry::REGISTRY
        .iter()
        .map(|r| r.kind.as_str().to_string())
        .collect();
    wanted.sort();
    if store.provider_keys()? == wanted {
        return Ok(());
    }
    store.write(|tx| {
        tx.exec("DELETE FROM providers", args![])?;
        for key in &wanted {
            tx.exec("INSERT INTO providers (key) VALUES (?1)", args![key])?;
        }
        Ok(())
    })
}

/// The schema version this binary writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database directory {dir} does not exist; forgetd creates the database only inside an existing directory (check --db and [database] path, or create it: install -d -m 2770 -o forgetd -g forgetd {dir})"
    )]
    NoDirectory { dir: PathBuf },
    #[error("cannot prepare database file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this forgetd knows ({known}); run the forgetd that wrote it, or upgrade"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("database {path} is damaged or not a forgetd database: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("migrating database {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    PgOpen {
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error("the database is busy (another process holds a write lock); try again")]
    Busy(#[source] DbError),
    #[error("the database cannot be written (read-only, its disk is full, or an I/O error): {0}")]
    Unwritable(#[source] DbError),
    #[error("gave up {what} at shutdown: the database still could not be written")]
    Abandoned {
        what: &'static str,
        #[source]
        source: outage::SharedError,
    },
    #[error("the database file is damaged; stop forgetd and restore it from a backup")]
    Damaged(#[source] DbError),
    #[error("refused: {message}")]
    Refused {
        message: String,
        #[source]
        source: DbError,
    },
    #[error("{0}")]
    NotFound(String),
    #[error(
        "only forgetd's own user writes `{kind}` events (they certify erasure and are sealed with the chain key, which this user cannot read): let the daemon do this, or run the command as root or forgetd"
    )]
    Keyless { kind: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Sql(#[source] DbError),
    #[error("PostgreSQL: {0}")]
    Pg(#[source] postgres::Error),
    #[error("the PostgreSQL connection was lost {0}; the next operation reconnects")]
    ConnectionLost(&'static str),
    #[error(
        "this instance ({instance}) was declared dead by another (its heartbeat stopped for too long) and its claims were handed on; stopping so no chat is sent twice (systemd restarts it as a new instance)"
    )]
    Fenced { instance: String },
    #[error("reading the database: {0}")]
    Column(#[source] db::ColError),
    #[error("the database returned no row where one was expected")]
    NoRow,
}

/// An engine's own error, kept whole as the cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Pg(#[from] postgres::Error),
}

impl From<postgres::Error> for StoreError {
    /// Sorts PostgreSQL's errors as SQLite's are sorted, by SQLSTATE: busy (a lock wait timed
    /// out, a deadlock, a serialization failure: try again), unwritable (the connection, the
    /// disk, a read-only server after a failover), refused (a constraint or a trigger said no,
    /// worded as SQLite words it), or anything else.
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let Some(code) = e.code().cloned() else {
            // No SQLSTATE: the connection itself failed (closed, I/O).
            return Self::Unwritable(e.into());
        };
        let class = &code.code()[..2];
        if code == SqlState::T_R_SERIALIZATION_FAILURE
            || code == SqlState::T_R_DEADLOCK_DETECTED
            || code == SqlState::LOCK_NOT_AVAILABLE
        {
            Self::Busy(e.into())
        } else if class == "08"
            || class == "57"
            || class == "53"
            || code == SqlState::READ_ONLY_SQL_TRANSACTION
            || code == SqlState::IO_ERROR
        {
            Self::Unwritable(e.into())
        } else if code == SqlState::DATA_CORRUPTED || code == SqlState::INDEX_CORRUPTED {
            Self::Damaged(e.into())
        } else if class == "23" || code == SqlState::RAISE_EXCEPTION {
            Self::Refused {
                message: pg_constraint_message(&e),
                source: e.into(),
            }
        } else {
            Self::Sql(e.into())
        }
    }
}

/// A PostgreSQL refusal in SQLite's words, so feeders and operators read the same on both:
/// "CHECK constraint failed: `<name>`", "UNIQUE constraint failed: `<name>`", or a trigger's text.
pub fn pg_constraint_message(e: &postgres::Error) -> String {
    use postgres::error::SqlState;
    let Some(db) = e.as_db_error() else {
        return e.to_string();
    };
    match (db.code(), db.constraint()) {
        (c, Some(name)) if *c == SqlState::CHECK_VIOLATION => {
            format!("CHECK constraint failed: {name}")
        }
        (c, Some(name)) if *c == SqlState::UNIQUE_VIOLATION => {
            format!("UNIQUE constraint failed: {name}")
        }
        (c, _) if *c == SqlState::NOT_NULL_VIOLATION => format!(
            "NOT NULL constraint failed: {}.{}",
            db.table().unwrap_or("?"),
            db.column().unwrap_or("?")
        ),
        _ => db.message().to_string(),
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's errors into what a caller can act on: busy (try again), unwritable (disk or
    /// permissions), refused (a constraint said no, with its message), or anything else.
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy(e.into()),
            Some(
                ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure,
            ) => Self::Unwritable(e.into()),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Self::Damaged(e.into()),
            Some(ErrorCode::ConstraintViolation) => Self::Refused {
                message: constraint_message(&e),
                source: e.into(),
            },
            _ => Self::Sql(e.into()),
        }
    }
}

/// The message SQLite attached to a constraint failure ("CHECK constraint failed: `<name>`", a
/// trigger's text, "UNIQUE constraint failed: ...").
pub fn constraint_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The engine under a [`Store`].
pub(crate) enum Backend {
    Sqlite(Connection),
    /// In a cell because statements take `&self` ([`db::Sql`]) and the client needs `&mut`;
    /// one store is used by one thread at a time.
    Pg(Box<std::cell::RefCell<pg::PgConn>>),
}

/// One connection to the database, for synchronous use (CLI commands, the store thread).
pub struct Store {
    pub(crate) backend: Backend,
    database: Database,
    /// Seals audit links as they are appended ([`crate::audit`]); `None`: this process cannot
    /// read the key (a CLI run by a feeder) and appends unsealed links for the daemon to seal.
    chain_key: Option<std::sync::Arc<crate::audit::ChainKey>>,
    /// PostgreSQL: counts other connections' commits, from LISTEN ([`Store::data_version`]).
    listener: Option<pg::listen::Listener>,
    /// PostgreSQL: this daemon's instance id once registered ([`pg::instances`]); its batches
    /// carry it.
    instance: Option<String>,
    /// Whether deletions are read back ([`crate::verify`]): a deleted chat's work item then keeps
    /// its owner until it is read back, so a chat the provider did not keep comes back still
    /// covered by its person's holds. Off: the owner goes with the confirmation.
    read_back: bool,
    /// Who this store's changes are by, in the audit trail: the user who ran the command, or the
    /// daemon once it says so ([`Store::set_actor`]).
    actor: crate::audit::Actor,
}

/// A write transaction, carrying the chain key when the store has one: every audit append in it
/// is sealed ([`audit::append`]), and no caller can forget to pass the key. Dropped without
/// [`Tx::commit`], it rolls back, on either engine.
pub struct Tx<'a> {
    inner: Option<TxInner<'a>>,
    chain_key: Option<&'a crate::audit::ChainKey>,
    /// The instance claims are made for (PostgreSQL daemons).
    instance: Option<&'a str>,
    actor: &'a crate::audit::Actor,
    /// Rolled back whatever happens (`plan`): certifying events are skipped, not refused.
    dry_run: bool,
}

enum TxInner<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    /// `BEGIN` was sent on this connection; `COMMIT` or `ROLLBACK` ends it.
    Pg(&'a std::cell::RefCell<pg::PgConn>),
}

impl db::Sql for Tx<'_> {
    fn conn(&self) -> db::Conn<'_> {
        match self
            .inner
            .as_ref()
            .expect("a transaction is open until it ends")
        {
            TxInner::Sqlite(t) => db::Conn::Sqlite(t),
            TxInner::Pg(c) => db::Conn::Pg(c),
        }
    }
}

impl db::Sql for Store {
    fn conn(&self) -> db::Conn<'_> {
        match &self.backend {
            Backend::Sqlite(c) => db::Conn::Sqlite(c),
            Backend::Pg(c) => db::Conn::Pg(c),
        }
    }
}

impl<'a> Tx<'a> {
    /// The chain key, when this process holds it.
    pub(crate) fn chain_key(&self) -> Option<&crate::audit::ChainKey> {
        self.chain_key
    }
    /// The instance this transaction claims for, when it is a registered PostgreSQL daemon's.
    pub(crate) fn instance(&self) -> Option<&str> {
        self.instance
    }
    /// Who the changes in this transaction are by.
    pub(crate) fn actor(&self) -> &crate::audit::Actor {
        self.actor
    }
    /// Whether this transaction will be rolled back whatever happens.
    pub(crate) fn is_dry_run(&self) -> bool {
        self.dry_run
    }
    pub(crate) fn set_dry_run(&mut self) {
        self.dry_run = true;
    }
    pub(crate) fn commit(mut self) -> Result<()> {
        match self.inner.take() {
            Some(TxInner::Sqlite(t)) => Ok(t.commit()?),
            Some(TxInner::Pg(c)) => c.borrow_mut().end(true),
            None => Ok(()),
        }
    }
    pub(crate) fn rollback(mut self) -> Result<()> {
        match self.inner.take() {
            Some(TxInner::Sqlite(t)) => Ok(t.rollback()?),
            Some(TxInner::Pg(c)) => c.borrow_mut().end(false),
            None => Ok(()),
        }
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // SQLite's transaction rolls itself back when dropped; PostgreSQL's is told to.
        if let Some(TxInner::Pg(c)) = self.inner.take() {
            let _ = c.borrow_mut().end(false);
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.database)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        prepare_files(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // The first statement that reads the file is where a non-database shows itself.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| classify_open_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("could not switch to WAL (journal_mode is {mode})"),
            });
        }
        // Foreign keys stay off while migrating: rebuilding a table (SQLite's "12 steps") drops
        // the parent that other tables reference. Each migration checks them before it commits.
        // The WAL is cut back to 16 MiB when it is rewound: a burst (an import, a reader that held
        // it open) does not leave a large file behind for good.
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 16777216; PRAGMA foreign_keys = OFF;",
        )
            .map_err(open_err)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify_open_error(path, e))?;
        if found > SCHEMA_VERSION as i64 {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        if (found as usize) < SCHEMA_VERSION {
            Migrations::from_slice(MIGRATIONS)
                .to_latest(&mut conn)
                .map_err(|source| StoreError::Migrate {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        conn.execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(open_err)?;
        tighten_sidecars(path);
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = Self {
            backend: Backend::Sqlite(conn),
            database: Database::Sqlite(path.to_path_buf()),
            chain_key: None,
            listener: None,
            instance: None,
            read_back: true,
            actor: crate::audit::Actor::current_user(),
        };
        sync_providers(&mut store)?;
        Ok(store)
    }

    /// Opens the database `config` names: a SQLite file ([`Store::open`]) or a PostgreSQL
    /// database, migrated to this binary's schema either way.
    pub fn connect(database: &Database) -> Result<Self> {
        Self::connect_with(database, true)
    }

    /// A PostgreSQL target for [`Store::copy_into`]: migrated, its audit chain's keyed start
    /// left for the copy to carry over.
    pub fn connect_for_copy(database: &Database) -> Result<Self> {
        Self::connect_with(database, false)
    }

    fn connect_with(database: &Database, keyed_start: bool) -> Result<Self> {
        match database {
            Database::Sqlite(path) => Self::open(path),
            Database::Postgres(target) => {
                let conn = pg::PgConn::open(target, keyed_start)?;
                let mut store = Self {
                    backend: Backend::Pg(Box::new(std::cell::RefCell::new(conn))),
                    database: database.clone(),
                    chain_key: None,
                    listener: None,
                    instance: None,
                    read_back: true,
                    actor: crate::audit::Actor::current_user(),
                };
                sync_providers(&mut store)?;
                Ok(store)
            }
        }
    }

    /// The database this store is connected to.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The SQLite file, when the queue is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.database {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }

    /// The keys of the `providers` table: what the schema accepts in `sessions.provider`.
    pub fn provider_keys(&self) -> Result<Vec<String>> {
        use db::Sql;
        self.rows("SELECT key FROM providers ORDER BY key", args![], |r| {
            r.get(0)
        })
    }

    /// Direct access to the SQLite connection, for tests and tools; forgetd's own code goes
    /// through the typed methods. Panics on PostgreSQL: a test that needs it is SQLite's alone.
    pub fn connection(&self) -> &Connection {
        match &self.backend {
            Backend::Sqlite(c) => c,
            Backend::Pg(_) => panic!("connection() is SQLite's; this store is on PostgreSQL"),
        }
    }

    /// The same, under the name unit tests use.
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &Connection {
        self.connection()
    }

    /// Copies the database with SQLite's online backup API: a consistent snapshot while the
    /// daemon and feeders keep writing (copying the file alone is not one: in WAL mode recent
    /// commits live in `-wal`). The copy is written under a temporary name beside `file` (mode
    /// 0600, never through a link) and reaches `file` only by [`Backup::keep`], after the caller
    /// checked it: a backup killed halfway leaves no file under the backup's name. `file` must
    /// not exist.
    pub fn backup_to(&self, file: &Path) -> Result<Backup> {
        let Backend::Sqlite(conn) = &self.backend else {
            return Err(StoreError::Invalid(
                "`forgetd backup` copies a SQLite file; back a PostgreSQL queue up with pg_dump (or the server's own backups)".into(),
            ));
        };
        let io = |source| StoreError::Io {
            path: file.to_path_buf(),
            source,
        };
        if std::fs::symlink_metadata(file).is_ok() {
            return Err(io(std::io::Error::from(std::io::ErrorKind::AlreadyExists)));
        }
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // tempfile creates it 0600 with O_EXCL: never through a planted link.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempfile_in(dir)
            .map_err(io)?
            .into_temp_path();
        let mut dst = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: tmp.to_path_buf(),
            source,
        })?;
        let pages = {
            let backup = rusqlite::backup::Backup::new(conn, &mut dst)?;
            // Small steps with short pauses, so writers are never held up for long.
            backup.run_to_completion(256, Duration::from_millis(5), None)?;
            backup.progress().pagecount.max(0) as u64
        };
        drop(dst);
        Ok(Backup {
            dest: file.to_path_buf(),
            tmp,
            pages,
        })
    }

    /// `PRAGMA quick_check`: run by the daemon at start so a damaged file is found before work.
    /// On PostgreSQL the server keeps its own files; the check is that the append-only triggers
    /// stand ([`Store::missing_audit_triggers`] reports which do not).
    pub fn quick_check(&self) -> Result<()> {
        let Backend::Sqlite(conn) = &self.backend else {
            return Ok(());
        };
        let mut stmt = conn.prepare("PRAGMA quick_check")?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt {
                path: self.database.to_string().into(),
                detail: rows.into_iter().take(5).collect::<Vec<_>>().join("; "),
            })
        }
    }

    /// Runs `f` in an IMMEDIATE transaction (takes the write lock up front, so two writers wait on
    /// the busy timeout instead of failing on upgrade).
    pub(crate) fn write<T>(&mut self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let tx = self.begin()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// A write transaction carrying this store's chain key: IMMEDIATE on SQLite; on
    /// PostgreSQL READ COMMITTED, with the row and advisory locks each operation takes itself.
    pub(crate) fn begin(&mut self) -> Result<Tx<'_>> {
        let chain_key = self.chain_key.as_deref();
        let instance = self.instance.as_deref();
        let actor = &self.actor;
        let inner = match &mut self.backend {
            Backend::Sqlite(c) => TxInner::Sqlite(
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
            ),
            Backend::Pg(c) => {
                c.get_mut().begin()?;
                TxInner::Pg(c)
            }
        };
        Ok(Tx {
            inner: Some(inner),
            chain_key,
            instance,
            actor,
            dry_run: false,
        })
    }

    /// Gives this store the audit chain's key: from now on it seals what it appends.
    pub fn set_chain_key(&mut self, key: crate::audit::ChainKey) {
        self.chain_key = Some(std::sync::Arc::new(key));
    }

    /// Records this store's changes as the daemon's (the daemon and `run --once` say so; a CLI
    /// command's are its user's).
    pub fn set_actor(&mut self, actor: crate::audit::Actor) {
        self.actor = actor;
    }

    /// Whether deletions will be read back (`[verify] after` is not off): a deleted chat's owner
    /// is then kept on its work item until the read-back settles it.
    pub fn set_read_back(&mut self, on: bool) {
        self.read_back = on;
    }

    /// Whether this store seals what it appends.
    pub fn holds_chain_key(&self) -> bool {
        self.chain_key.is_some()
    }

    /// Changes when another connection commits something forgetd must act on. The daemon polls
    /// this (a cheap in-memory read) to notice feeder writes without re-querying tables: SQLite's
    /// `PRAGMA data_version`; on PostgreSQL the count of notifications from other connections
    /// (the schema's triggers send them), read from a listening thread started on first use.
    pub fn data_version(&mut self) -> Result<i64> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.query_row("PRAGMA data_version", [], |r| r.get(0))?),
            Backend::Pg(c) => {
                if self.listener.is_none() {
                    let Database::Postgres(target) = &self.database else {
                        unreachable!("a PostgreSQL backend has a PostgreSQL target")
                    };
                    let own = c.borrow().backend_pid;
                    self.listener = Some(pg::listen::Listener::start(target, own)?);
                }
                Ok(self.listener.as_ref().map_or(0, |l| l.version()))
            }
        }
    }
}

fn classify_open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::from(e),
    }
}

/// Creates the directory (0770) and the database file (0660) if missing, and strips world bits
/// from an existing file, before SQLite opens it. SQLite creates -wal/-shm with the database's
/// mode, so the group can write them too.
fn prepare_files(path: &Path) -> Result<()> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    // No command creates a missing directory: a mistyped --db must not answer "empty" from a
    // database it just made up. The directory is the operator's (systemd's StateDirectory=).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => warn_unless_setgid(dir, &meta),
            Ok(_) | Err(_) => {
                return Err(StoreError::NoDirectory {
                    dir: dir.to_path_buf(),
                });
            }
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
    {
        Ok(file) => {
            // The umask may have taken the group's write bit; put it back.
            file.set_permissions(std::fs::Permissions::from_mode(0o660))
                .map_err(io)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => strip_world_bits(path),
        Err(e) => return Err(io(e)),
    }
    Ok(())
}

/// A directory shared through a group (group-writable) needs the setgid bit, or a feeder's
/// sqlite3 creates `-wal`/`-shm` under its own primary group and the daemon cannot open them.
fn warn_unless_setgid(dir: &Path, meta: &std::fs::Metadata) {
    let mode = meta.permissions().mode();
    if mode & 0o020 != 0 && mode & 0o2000 == 0 {
        tracing::warn!(
            directory = %dir.display(),
            "the database directory is shared through its group but lacks the setgid bit: files a feeder creates (-wal, -shm) get the feeder's own group and the daemon may not open them; run `chmod g+s {}`",
            dir.display()
        );
    }
}

fn strip_world_bits(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o007 != 0 {
            // Best effort: a file we do not own stays as it is (and SQLite will say if it can't write).
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o007));
        }
    }
}

fn tighten_sidecars(path: &Path) {
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        strip_world_bits(Path::new(&p));
    }
}

// ---------------------------------------------------------------------------------------------

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A [`Store`] on its own thread, for async callers. Cloning shares the thread.
#[derive(Clone)]
pub struct AsyncStore {
    tx: std::sync::mpsc::Sender<Job>,
    outage: std::sync::Arc<outage::Outage>,
}

impl std::fmt::Debug for AsyncStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncStore")
    }
}

impl AsyncStore {
    pub fn spawn(mut store: Store) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("forgetd-store".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut store);
                }
            })
            .expect("spawn the store thread");
        Self {
            tx,
            outage: Default::default(),
        }
    }

    /// Runs `f` on the store thread and waits for its result without blocking the runtime.
    pub async fn call<R, F>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move |s: &mut Store| {
                let _ = tx.send(f(s));
            }))
            .expect("the store thread outlives its handles");
        rx.await.expect("a store operation panicked")
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A store on a fresh file in a temporary directory (kept alive by the returned guard).
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("forgetd.db")).unwrap();
        // As the daemon has it: sealing what it appends, certifying events included.
        store.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        (dir, store)
    }
}

#[cfg(test)]
mod record_walk;

#[cfg(test)]
mod tests {
    use super::testing::temp_store;
    use super::*;

    #[test]
    fn open_creates_group_shared_files_and_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.db");
        // No command creates a missing directory: a mistyped path is an error, not a new database.
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::NoDirectory { .. }), "{e}");
        assert!(!path.parent().unwrap().exists());
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        let s = Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let v: i64 = s
            .sqlite()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, SCHEMA_VERSION);
        s.sqlite()
            .execute(
                "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai','c','s')",
                [],
            )
            .unwrap();
        let wal = dir.path().join("sub").join("f.db-wal");
        let wmode = std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777;
        assert_eq!(wmode & 0o007, 0, "wal must not be world-readable");
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, s) = temp_store();
        s.sqlite()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        drop(s);
        let err = Store::open(&dir.path().join("forgetd.db")).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn garbage_file_is_reported_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn world_bits_are_stripped_from_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        Store::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0);
    }

    #[tokio::test]
    async fn async_store_runs_closures_off_the_runtime() {
        let (_d, s) = temp_store();
        let a = AsyncStore::spawn(s);
        let n: i64 = a
            .call(|s| {
                s.sqlite()
                    .query_row("SELECT 40 + 2", [], |r| r.get(0))
                    .unwrap()
            })
            .await;
        assert_eq!(n, 42);
    }
}
