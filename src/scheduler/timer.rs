//! The scheduler's alarm clock: wait until a unix second, or until woken.
//!
//! Production uses tokio-cron-scheduler's `JobScheduler` with one one-shot job per wait, at the
//! instant forgetd's own schedule arithmetic computed ([`crate::schedule`]: cron, zones, DST,
//! catch-up). What is due stays forgetd's decision; the crate only fires. It is used this way
//! because, as a scheduler of cron jobs, 0.15 freezes a zone's offset when a job is created,
//! skips missed runs and overlaps slow ones, all of which forgetd must not do; and it ticks on
//! the wall clock every 500 ms and hangs on a current-thread runtime, so tests (and `run --once`)
//! use [`Timer::Injected`], which sleeps on the injected clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::clock::SharedClock;

pub enum Timer {
    /// Sleeps on the injected clock (tests; a `ManualClock` makes waits free).
    Injected(SharedClock),
    /// tokio-cron-scheduler fires a one-shot job at the computed instant (production; needs a
    /// multi-thread runtime).
    Cron {
        jobs: JobScheduler,
        clock: SharedClock,
    },
}

/// Why a timer could not be set up or armed.
#[derive(Debug, thiserror::Error)]
#[error("the scheduler's timer (tokio-cron-scheduler): {0}")]
pub struct TimerError(#[from] tokio_cron_scheduler::JobSchedulerError);

impl Timer {
    /// The production timer, started.
    pub async fn cron(clock: SharedClock) -> Result<Timer, TimerError> {
        let jobs = JobScheduler::new().await?;
        jobs.start().await?;
        Ok(Timer::Cron { jobs, clock })
    }

    /// Waits until unix second `at` (at once if it has passed). Cancel-safe: dropping the wait
    /// removes its job.
    pub async fn wait_until(&self, at: i64) -> Result<(), TimerError> {
        match self {
            Timer::Injected(clock) => {
                let d = Duration::from_millis((at * 1000 - clock.now_ms()).max(1) as u64);
                clock.sleep(d).await;
                Ok(())
            }
            Timer::Cron { jobs, clock } => {
                // The crate schedules a one-shot job at `whole seconds of now + whole seconds of
                // the duration` (both truncated): a duration in whole seconds counted from this
                // second makes that `at` itself, never earlier (a fraction would fire early).
                let d = Duration::from_secs((at - clock.now()).max(1) as u64);
                let fired = Arc::new(Notify::new());
                let f = fired.clone();
                let id = jobs
                    .add(Job::new_one_shot(d, move |_, _| f.notify_one())?)
                    .await?;
                // Removes the job if this wait is dropped before it fired (woken otherwise).
                let _guard = RemoveOnDrop {
                    jobs: jobs.clone(),
                    id,
                };
                fired.notified().await;
                Ok(())
            }
        }
    }

    pub async fn shutdown(self) {
        if let Timer::Cron { mut jobs, .. } = self {
            let _ = jobs.shutdown().await;
        }
    }
}

struct RemoveOnDrop {
    jobs: JobScheduler,
    id: uuid::Uuid,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (jobs, id) = (self.jobs.clone(), self.id);
        // A fired one-shot job is already gone; removing it again is harmless.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = jobs.remove(&id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    /// The production timer really fires (on the wall clock: this is the one place it is read),
    /// and a wait given up before it fired leaves no job behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cron_timer_fires_at_the_instant_and_forgets_abandoned_waits() {
        let clock: SharedClock = Arc::new(SystemClock);
        let timer = Timer::cron(clock.clone()).await.unwrap();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            timer.wait_until(clock.now() + 3600),
        );
        assert!(
            abandoned.await.is_err(),
            "an hour away: not fired within 50 ms"
        );
        let at = clock.now() + 1;
        tokio::time::timeout(Duration::from_secs(10), timer.wait_until(at))
            .await
            .expect("fired")
            .unwrap();
        assert!(clock.now() >= at, "never early");
        tokio::time::sleep(Duration::from_millis(100)).await; // the removal task runs
        if let Timer::Cron { jobs, .. } = &timer {
            let mut jobs = jobs.clone();
            assert_eq!(
                jobs.time_till_next_job().await.unwrap(),
                None,
                "neither the fired job nor the abandoned one is left"
            );
        }
        timer.shutdown().await;
    }
}
