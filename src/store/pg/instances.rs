//! Several instances on one PostgreSQL queue: each one's row and heartbeat, the rescue of a dead
//! one's claims, and leaving cleanly. Every statement here is PostgreSQL's; on SQLite these
//! operations do nothing (one daemon per file, proved by its lock).
//!
//! Rules:
//! - Liveness is the server's clock only (`forgetd_now_ms()`); an instance is dead when its row
//!   has not been renewed for five heartbeats.
//! - A heartbeat that finds its own row gone means a rescuer declared this instance dead and
//!   returned its claims: the instance must stop at once ([`StoreError::Fenced`]), since another
//!   may already be sending those chats. A late answer of it changes nothing either way: every
//!   outcome is written only `WHERE batch_id = ? AND state = 'in_flight'`.
//! - Rescue runs on every instance (no leader): the dead rows are taken `FOR UPDATE SKIP
//!   LOCKED`, so two rescuers never return the same instance's items twice.
//! - A claim needs its instance's row (locked `FOR KEY SHARE` while it claims): an instance
//!   taken for dead cannot claim in the moment before its heartbeat learns it, so every claim
//!   has an instance a rescuer can find. Claims left without one by an older version are
//!   handed back by the same rescue.
//! - An instance returns its own expired leases only ([`super::super::queue`]); a live peer's
//!   batch may outlive its lease while that peer still waits for the answer.

use crate::args;
use crate::store::db::Sql;
use crate::store::{Backend, Result, Store, StoreError};

/// What one heartbeat did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// Instances alive on the queue, this one included: they share each provider's limits.
    pub live: u64,
    /// Dead instances whose claims were returned.
    pub rescued_instances: u64,
    /// Their in-flight chats, now pending again (or held, if a hold now covers them).
    pub rescued_items: u64,
}

/// A random instance id: 16 bytes as hex.
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Store {
    /// This store's instance id, once registered (PostgreSQL daemons).
    pub fn instance_id(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// Registers this process as an instance working the queue (PostgreSQL; a no-op on SQLite).
    /// `ttl` is how long it counts as alive without a heartbeat.
    pub fn register_instance(&mut self, ttl: std::time::Duration) -> Result<()> {
        if !matches!(self.backend, Backend::Pg(_)) {
            return Ok(());
        }
        let id = new_id();
        let ttl_ms = ttl.as_millis() as i64;
        self.exec(
            "INSERT INTO forgetd_instances (id, host, pid, version, started_ms, heartbeat_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, forgetd_now_ms(), forgetd_now_ms(), forgetd_now_ms() + ?5)",
            args![id, host_name(), std::process::id(), env!("CARGO_PKG_VERSION"), ttl_ms],
        )?;
        tracing::info!(instance = %id, "registered as a forgetd instance on the shared queue");
        self.instance = Some(id);
        Ok(())
    }

    /// Renews this instance's row, then returns the claims of instances that stopped renewing
    /// theirs. [`StoreError::Fenced`] when this instance's own row is gone.
    pub fn instance_beat(&mut self, ttl: std::time::Duration) -> Result<Beat> {
        let Some(me) = self.instance.clone() else {
            return Ok(Beat::default());
        };
        let ttl_ms = ttl.as_millis() as i64;
        let renewed = self.exec(
            "UPDATE forgetd_instances SET heartbeat_ms = forgetd_now_ms(), expires_ms = forgetd_now_ms() + ?2
             WHERE id = ?1",
            args![me, ttl_ms],
        )?;
        if renewed == 0 {
            return Err(StoreError::Fenced { instance: me });
        }
        let mut beat = self.rescue_dead_instances()?;
        beat.live = self.row(
            "SELECT count(*) FROM forgetd_instances WHERE expires_ms >= forgetd_now_ms()",
            args![],
            |r| r.get(0),
        )?;
        Ok(beat)
    }

    /// Returns the in-flight items of every instance whose heartbeat expired, and removes their
    /// rows; one audit event per instance rescued.
    pub fn rescue_dead_instances(&mut self) -> Result<Beat> {
        let me = self.instance.clone().unwrap_or_default();
        let at = crate::clock::Clock::now(&crate::clock::SystemClock);
        self.write(|tx| {
            let dead: Vec<(String, Option<String>, Option<i64>)> = tx.rows(
                "SELECT id, host, pid FROM forgetd_instances
                 WHERE expires_ms < forgetd_now_ms() AND id <> ?1
                 ORDER BY id FOR UPDATE SKIP LOCKED",
                args![me],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            // Claims whose instance has no row at all: none can arise now (a claim needs its
            // instance's row), but a queue worked by a version before that rule may hold some,
            // and nobody else would ever hand them back.
            let orphaned: Vec<(String, Option<String>, Option<i64>)> = tx.rows(
                "SELECT DISTINCT b.instance_id FROM work_items w JOIN batches b ON b.id = w.batch_id
                 WHERE w.state = 'in_flight' AND b.instance_id IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM forgetd_instances i WHERE i.id = b.instance_id)
                 ORDER BY 1",
                args![],
                |r| Ok((r.get(0)?, None, None)),
            )?;
            let mut beat = Beat::default();
            for (id, host, pid) in dead.into_iter().chain(orphaned) {
                let items = hand_back(tx, &id, at)?;
                crate::store::discovery::release_listings_of(tx, &id)?;
                crate::store::audit::append(
                    tx,
                    at,
                    None,
                    &crate::audit::Event::InstanceRescued(crate::audit::InstanceRescued {
                        instance: id.clone(),
                        host: host.clone(),
                        pid,
                        items: items.len() as u64,
                        by: me.clone(),
                    }),
                )?;
                match &host {
                    Some(host) => tracing::warn!(instance = %id, host, pid, items = items.len(), "an instance stopped its heartbeat; its claimed chats are back in the queue"),
                    None => tracing::warn!(instance = %id, items = items.len(), "claimed chats of an instance that has no row are back in the queue"),
                }
                beat.rescued_instances += 1;
                beat.rescued_items += items.len() as u64;
            }
            Ok(beat)
        })
    }

    /// Leaves the queue: this instance's in-flight items go back to pending and its row goes, so
    /// the others take over at once instead of after five heartbeats.
    pub fn deregister_instance(&mut self) -> Result<u64> {
        let Some(me) = self.instance.take() else {
            return Ok(0);
        };
        let at = crate::clock::Clock::now(&crate::clock::SystemClock);
        self.write(|tx| Ok(hand_back(tx, &me, at)?.len() as u64))
    }
}

/// An instance's in-flight items back to pending (holds applied again) and its row removed;
/// returns the items.
fn hand_back(tx: &crate::store::Tx<'_>, instance: &str, now: i64) -> Result<Vec<i64>> {
    let items: Vec<i64> = tx.rows(
        "UPDATE work_items w SET state = 'pending', lease_expires_ms = NULL, batch_id = NULL
         FROM batches b
         WHERE w.batch_id = b.id AND w.state = 'in_flight' AND b.instance_id = ?1
         RETURNING w.id",
        args![instance],
        |r| r.get(0),
    )?;
    crate::store::holds::withhold(
        tx,
        crate::store::holds::Queued::Items(&items),
        now,
        Some(crate::store::holds::HeldAt::Rescue),
    )?;
    tx.exec(
        "DELETE FROM forgetd_instances WHERE id = ?1",
        args![instance],
    )?;
    Ok(items)
}

/// Before a claim (a batch, a listing): this instance's row must still be there, locked against
/// a rescue until the claim commits. An instance taken for dead claims nothing
/// ([`StoreError::Fenced`]): its claims would belong to no one. No-op for a process that is not
/// a registered instance (SQLite, the CLI).
pub(crate) fn claim_while_alive(tx: &crate::store::Tx<'_>) -> Result<()> {
    let Some(me) = tx.instance() else {
        return Ok(());
    };
    let alive = tx.row_opt(
        "SELECT id FROM forgetd_instances WHERE id = ?1 FOR KEY SHARE",
        args![me],
        |r| r.get::<String>(0),
    )?;
    if alive.is_none() {
        return Err(StoreError::Fenced {
            instance: me.to_string(),
        });
    }
    Ok(())
}
