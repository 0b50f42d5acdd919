//! Patience with a database that cannot be written for a while: a full disk, a file system the
//! kernel turned read-only, a lock another process holds past the busy timeout, an I/O error.
//!
//! The daemon must neither drop what it holds (a provider's answer not yet recorded is a
//! deletion that would be sent again) nor exit into a restart loop that ends at systemd's start
//! limit with the service dead. So its writes go through [`AsyncStore::persist`]: it says what is
//! wrong once, keeps trying with backoff, says when it resumed, and [`Outage`] shows the outage
//! to `/healthz` and `/metrics` while it lasts.
//!
//! Rules:
//! - Only transient errors ([`StoreError::is_transient`]) wait; a refusal, a damaged file or a
//!   bug is returned at once.
//! - An operation is retried whole. Each store operation is one transaction, which SQLite rolled
//!   back when it failed, so trying it again cannot apply half of it twice. Closures read the
//!   clock inside, so a lease taken after an hour's wait starts when it is taken.
//! - One error when an outage starts, a warning a minute while it lasts, one line when it ends:
//!   a full disk must not also fill the journal.
//! - An outage ends only after [`SETTLE`] without a refused write. A full disk refuses some
//!   writes and takes others: SQLite reuses WAL space a rolled-back transaction had extended, so
//!   a small commit can land between refused ones. One success is not "space returned".
//! - Cancellation ends the wait with [`StoreError::Abandoned`]: shutdown is not held hostage by
//!   the disk, and what was abandoned is sent again after the restart (deletions are idempotent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's Instant: the same as std's in the daemon, and paused with tokio's clock in tests.
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{AsyncStore, Result, Store, StoreError};

/// The first wait after a failed write; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two tries: space that returns is used within this.
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// How often a lasting outage is mentioned again.
const REMIND_EVERY: Duration = Duration::from_secs(60);
/// How long writes must go without a refusal before an outage is over.
pub const SETTLE: Duration = Duration::from_secs(10);

/// What the daemon knows about the database's writability, shared by every handle of one
/// [`AsyncStore`].
#[derive(Default)]
pub struct Outage {
    current: Mutex<Option<Current>>,
    /// Writes that failed with a transient error, since start.
    failures: AtomicU64,
}

/// An error kept to be shown while the outage lasts (a store error, or the intake's, which
/// carries one).
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

struct Current {
    since: Instant,
    reminded: Instant,
    /// The last refusal.
    failed_at: Instant,
    /// A write landed after the last refusal.
    landed: bool,
    what: &'static str,
    error: SharedError,
}

/// An outage as `/healthz` and `/metrics` show it.
#[derive(Debug, Clone)]
pub struct OutageView {
    /// How long the database has refused writes.
    pub lasted: Duration,
    /// What was being written when it last failed ("recording a batch's answer").
    pub what: &'static str,
    /// The last error.
    pub error: SharedError,
}

impl Outage {
    /// The outage in progress, if any (one that has settled ends here, and says so).
    pub fn current(&self) -> Option<OutageView> {
        let mut c = self.current.lock().unwrap();
        Self::settle(&mut c);
        c.as_ref().map(|c| OutageView {
            lasted: c.since.elapsed(),
            what: c.what,
            error: c.error.clone(),
        })
    }

    /// Writes that failed with a transient error since the daemon started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Notes a transient failure of `what`: an error the first time, a warning a minute after.
    /// Callers that do not wait (the intake loop) call it too, so the outage has one voice.
    pub fn failed(&self, what: &'static str, error: SharedError) -> SharedError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut c = self.current.lock().unwrap();
        let now = Instant::now();
        match c.as_mut() {
            None => {
                tracing::error!(
                    error = %crate::errors::render_error(&*error),
                    writing = what,
                    "cannot write the database; keeping what is held and trying again every few seconds (free disk space, or make the file system writable)"
                );
                *c = Some(Current {
                    since: now,
                    reminded: now,
                    failed_at: now,
                    landed: false,
                    what,
                    error: error.clone(),
                });
            }
            Some(cur) => {
                if now.duration_since(cur.reminded) >= REMIND_EVERY {
                    tracing::warn!(
                        error = %crate::errors::render_error(&*error),
                        lasted = %humantime::format_duration(Duration::from_secs(now.duration_since(cur.since).as_secs())),
                        "still cannot write the database; still trying"
                    );
                    cur.reminded = now;
                }
                cur.what = what;
                cur.error = error.clone();
                cur.failed_at = now;
                cur.landed = false;
            }
        }
        error
    }

    /// Notes a successful write: an outage in progress ends once writes have landed for
    /// [`SETTLE`] without a refusal.
    pub fn succeeded(&self) {
        let mut c = self.current.lock().unwrap();
        if let Some(cur) = c.as_mut() {
            cur.landed = true;
        }
        Self::settle(&mut c);
    }

    fn settle(c: &mut Option<Current>) {
        let settled = c
            .as_ref()
            .is_some_and(|cur| cur.landed && cur.failed_at.elapsed() >= SETTLE);
        if settled && let Some(cur) = c.take() {
            tracing::info!(
                lasted = %humantime::format_duration(Duration::from_secs(cur.failed_at.duration_since(cur.since).as_secs())),
                "the database takes writes again; resuming"
            );
        }
    }
}

impl StoreError {
    /// Whether waiting can cure it: the disk may get space, the file system may be made
    /// writable, the lock may be released. Refusals, damage and bugs cannot.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Busy(_) | Self::Unwritable(_) | Self::ConnectionLost(_)
        )
    }
}

impl AsyncStore {
    /// The database's writability, as this daemon has seen it.
    pub fn outage(&self) -> &Outage {
        &self.outage
    }

    /// Runs `f` on the store thread like [`AsyncStore::call`], but waits out transient errors
    /// (see the module's rules): for the daemon's writes that must not be lost. `what` names
    /// the write in the outage's messages.
    pub async fn persist<R, F>(
        &self,
        what: &'static str,
        cancel: &CancellationToken,
        f: F,
    ) -> Result<R>
    where
        R: Send + 'static,
        F: Fn(&mut Store) -> Result<R> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let mut wait = FIRST_WAIT;
        loop {
            let g = f.clone();
            match self.call(move |s| g(s)).await {
                Ok(r) => {
                    self.outage.succeeded();
                    return Ok(r);
                }
                Err(e) if e.is_transient() => {
                    let error = self.outage.failed(what, Arc::new(e));
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(StoreError::Abandoned { what, source: error }),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(LONGEST_WAIT);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    fn busy() -> StoreError {
        StoreError::Busy(
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            )
            .into(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_fails_transiently_is_tried_again_until_it_lands_and_the_outage_ends() {
        let (_dir, store) = temp_store();
        let store = AsyncStore::spawn(store);
        let tries = Arc::new(AtomicU64::new(0));
        let t = tries.clone();
        let cancel = CancellationToken::new();
        let r = store
            .persist("testing", &cancel, move |_s| {
                if t.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(busy())
                } else {
                    Ok(42)
                }
            })
            .await
            .unwrap();
        assert_eq!(r, 42);
        assert_eq!(tries.load(Ordering::SeqCst), 4);
        assert_eq!(store.outage().failures(), 3);
        assert!(
            store.outage().current().is_some(),
            "one write that lands is not the end of an outage"
        );
        tokio::time::sleep(SETTLE).await;
        assert!(store.outage().current().is_none(), "the outage ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_outage_is_visible_and_cancellation_abandons_the_write() {
        let (_dir, store) = temp_store();
        let store = AsyncStore::spawn(store);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let s = store.clone();
        let write = tokio::spawn(async move {
            s.persist("recording a batch's answer", &c, |_s| Err::<(), _>(busy()))
                .await
        });
        // Paused time: these sleeps cost nothing; the loop ends when the first failure is noted.
        let seen = loop {
            if let Some(seen) = store.outage().current() {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(seen.what, "recording a batch's answer");
        assert!(store.outage().failures() >= 1);
        assert!(!write.is_finished(), "still trying");
        cancel.cancel();
        let e = write.await.unwrap().unwrap_err();
        assert!(matches!(e, StoreError::Abandoned { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_refusal_is_not_waited_out() {
        let (_dir, store) = temp_store();
        let store = AsyncStore::spawn(store);
        let cancel = CancellationToken::new();
        let e = store
            .persist("testing", &cancel, |_s| {
                Err::<(), _>(StoreError::Invalid("no".into()))
            })
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Invalid(_)));
        assert_eq!(store.outage().failures(), 0);
        assert!(store.outage().current().is_none());
    }
}
