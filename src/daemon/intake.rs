//! Intake: notices what feeders committed and resolves it. Every tick reads `PRAGMA
//! data_version` (a cheap in-memory read that changes when another connection commits); when it
//! changed, or when requests whose discovery failed are due another try, it resolves received
//! requests, seals the audit links other processes appended without the chain key (and writes
//! the closing events they left to the daemon), wakes the executor, and tells the scheduler the
//! rules may have changed.

use anyhow::Result;
use tokio::sync::Notify;

use crate::clock::SharedClock;
use crate::executor::Executor;
use crate::resolve::{Patience, Resolver};
use crate::store::AsyncStore;

/// How often intake looks.
pub(super) const POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often requests whose discovery failed are tried again.
const RESOLVE_RETRY_MS: i64 = 30_000;

#[derive(Default)]
pub(super) struct Intake {
    last_version: Option<i64>,
    /// Some received request could not be resolved (its discovery failed).
    unresolved: bool,
    last_retry_ms: i64,
}

impl Intake {
    pub(super) async fn tick(
        &mut self,
        store: &AsyncStore,
        resolver: &Resolver,
        executor: &Executor,
        clock: &SharedClock,
        rules_changed: &Notify,
    ) -> Result<()> {
        let version = store.call(|s| s.data_version()).await?;
        let now_ms = clock.now_ms();
        let retry_due = self.unresolved && now_ms - self.last_retry_ms >= RESOLVE_RETRY_MS;
        if self.last_version == Some(version) && !retry_due {
            return Ok(());
        }
        if self.last_version.is_some_and(|v| v != version) {
            // Another connection committed: rules may have changed (`forgetd rules add`).
            rules_changed.notify_one();
        }
        self.last_version = Some(version);
        self.last_retry_ms = now_ms;
        let now = clock.now();
        store
            .call(move |s| {
                s.seal_late()?;
                s.close_deferred(now)
            })
            .await?;
        let (n, failures) = resolver.resolve_received(Patience::Brief).await?;
        self.unresolved = !failures.is_empty();
        if n > 0 {
            executor.wake();
        }
        Ok(())
    }
}
