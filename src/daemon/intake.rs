//! Intake: notices what feeders committed and resolves it. Every tick reads `PRAGMA
//! data_version` (a cheap in-memory read that changes when another connection commits); when it
//! changed, it resolves received requests to the inventory's chats (no provider call: the
//! listings by subject are the resolver task's, woken here), seals the audit links other processes appended without the chain key (and writes
//! the closing events they left to the daemon), re-checks the queue against the holds (a feeder
//! may have re-attributed a chat), wakes the executor, and tells the scheduler the rules may have
//! changed. The hold re-check also runs every [`RECHECK_HOLDS_MS`] without a change seen: on
//! PostgreSQL an inventory change notifies no one.
//!
//! A tick that fails because the database cannot be written (disk full, read-only) is not the
//! daemon's end: it is noted in the store's [`crate::store::outage::Outage`] (said once), and the
//! next try waits [`OUTAGE_RETRY`]. What was filed stays filed: it is looked at again when the
//! try succeeds.

use anyhow::Result;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::executor::Executor;
use crate::resolve::Resolver;
use crate::store::{AsyncStore, StoreError};

/// How often intake looks.
pub(super) const POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often the queue is re-checked against the holds when no commit was seen.
const RECHECK_HOLDS_MS: i64 = 60_000;
/// How long intake rests after the database refused a write.
const OUTAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
pub(super) struct Intake {
    last_version: Option<i64>,
    last_recheck_ms: i64,
    /// While the database refuses writes: the next try is not before this (tokio time).
    rest_until: Option<tokio::time::Instant>,
}

impl Intake {
    /// One look; `Err` only for what waiting cannot cure.
    pub(super) async fn tick(
        &mut self,
        store: &AsyncStore,
        resolver: &Resolver,
        executor: &Executor,
        clock: &SharedClock,
        rules_changed: &Notify,
        listings_due: &Notify,
    ) -> Result<()> {
        // Ends an outage that has settled (and says so), though nothing else asks.
        let _ = store.outage().current();
        if self
            .rest_until
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return Ok(());
        }
        match self
            .look(
                store,
                resolver,
                executor,
                clock,
                rules_changed,
                listings_due,
            )
            .await
        {
            Ok(()) => {
                self.rest_until = None;
                Ok(())
            }
            Err(e) if transient(&e) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                store
                    .outage()
                    .failed("resolving what feeders filed", e.into());
                self.rest_until = Some(tokio::time::Instant::now() + OUTAGE_RETRY);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn look(
        &mut self,
        store: &AsyncStore,
        resolver: &Resolver,
        executor: &Executor,
        clock: &SharedClock,
        rules_changed: &Notify,
        listings_due: &Notify,
    ) -> Result<()> {
        let version = store.call(|s| s.data_version()).await?;
        let now_ms = clock.now_ms();
        if self.last_version == Some(version) {
            if now_ms - self.last_recheck_ms >= RECHECK_HOLDS_MS {
                let now = clock.now();
                store.call(move |s| s.recheck_holds(now)).await?;
                self.last_recheck_ms = now_ms;
            }
            return Ok(());
        }
        self.last_recheck_ms = now_ms;
        if self.last_version.is_some_and(|v| v != version) {
            // Another connection committed: rules may have changed (`forgetd rules add`).
            rules_changed.notify_one();
        }
        let now = clock.now();
        store
            .call(move |s| {
                s.seal_late()?;
                // Another connection committed: a feeder may have re-attributed a queued chat,
                // toward a held person (the claim and the send check that anyway; this shows it
                // held at once) or away from one (this frees it).
                s.recheck_holds(now)?;
                s.close_deferred(now)
            })
            .await?;
        let n = resolver.resolve_received().await?;
        // Seen only once resolved: a look the disk refused is made again.
        self.last_version = Some(version);
        if n > 0 {
            executor.wake();
            listings_due.notify_one();
        }
        Ok(())
    }
}

/// Whether `e` is a store error that waiting can cure (anywhere in its chain).
pub(super) fn transient(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<StoreError>())
        .any(|s| s.is_transient())
}
