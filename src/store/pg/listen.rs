//! Pickup without polling on PostgreSQL: a thread with its own connection `LISTEN`s on the
//! schema's `forgetd_intake` channel (requests filed, holds and rules changed, by feeders or any
//! instance) and counts what other connections sent. The count is [`super::super::Store::data_version`]
//! on PostgreSQL, so the daemon's intake reads an atomic where SQLite's reads a pragma.
//!
//! Rules:
//! - Our own commits (the store connection's server process) are not counted: `data_version`
//!   means "another connection committed".
//! - A quiet channel costs one `SELECT 1` every [`PING`], which is also how a dead connection is
//!   noticed. After a reconnect the count moves once, since notifications may have been missed
//!   while it was down: the intake then looks at the tables itself.
//! - Dropping the [`Listener`] stops the thread within one [`PING`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::PgTarget;
use crate::store::Result;

/// How long the listener waits before it checks its connection and the stop flag.
const PING: Duration = Duration::from_secs(2);

/// The channels forgetd's triggers and store notify on.
pub const INTAKE: &str = "forgetd_intake";

/// A running listener; its count moves when another connection commits something to act on.
#[derive(Debug)]
pub struct Listener {
    count: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
}

impl Listener {
    /// Connects (so a wrong target fails here, not silently later) and starts the thread.
    /// `own_pid` is the store connection's server process.
    pub fn start(target: &PgTarget, own_pid: i32) -> Result<Self> {
        let config = super::dialer_of(target)?;
        let client = connect(&config).map_err(|e| crate::store::StoreError::PgOpen {
            target: target.to_string(),
            source: e,
        })?;
        let count = Arc::new(AtomicI64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        // The thread owns the client from here: it is never dropped on a runtime thread.
        std::thread::Builder::new()
            .name("forgetd-listen".into())
            .spawn(move || run(config, client, own_pid, &c, &s))
            .map_err(|e| {
                crate::store::StoreError::Invalid(format!("cannot start the listener thread: {e}"))
            })?;
        Ok(Self { count, stop })
    }

    /// The count of other connections' notifications so far.
    pub fn version(&self) -> i64 {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn connect(dialer: &super::Dialer) -> std::result::Result<postgres::Client, postgres::Error> {
    let mut client = dialer.dial()?;
    super::off_runtime(|| client.batch_execute(&format!("LISTEN {INTAKE}")))?;
    Ok(client)
}

fn run(
    config: super::Dialer,
    mut client: postgres::Client,
    own_pid: i32,
    count: &AtomicI64,
    stop: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Acquire) {
        match wait(&mut client, own_pid, count) {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "the PostgreSQL listener lost its connection; reconnecting");
                loop {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    if let Ok(c) = connect(&config) {
                        client = c;
                        // Whatever was sent while we were away is looked for in the tables.
                        count.fetch_add(1, Ordering::AcqRel);
                        break;
                    }
                }
            }
        }
    }
}

/// Waits up to [`PING`] for notifications, counts the others' ones, then checks the connection.
fn wait(
    client: &mut postgres::Client,
    own_pid: i32,
    count: &AtomicI64,
) -> std::result::Result<(), postgres::Error> {
    {
        let mut notes = client.notifications();
        let mut iter = notes.timeout_iter(PING);
        while let Some(n) = iter.next()? {
            if n.process_id() != own_pid {
                count.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    client.batch_execute("SELECT 1")
}
