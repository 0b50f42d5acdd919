//! `run --once` on a terminal: one line that says how far the drain is (items left, deletions so
//! far, the recent rate, an ETA), redrawn in place on stderr, and cleared before the summary.
//! Off a terminal nothing is drawn: logs and pipes get the summary only.
//!
//! Rules: the line reads the queue (the store's count of pending and in-flight items) and the
//! executor's own counters, never guesses; the rate is over a sliding window so a slow start or a
//! pause does not skew the ETA for long; no ETA is shown until a rate is measured.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::Executor;
use crate::store::AsyncStore;

/// How far back the rate looks.
const WINDOW: Duration = Duration::from_secs(10);
/// How often the line is refreshed.
const EVERY: Duration = Duration::from_millis(500);

/// Deletions per second over the last [`WINDOW`], from (time, total deleted) samples.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub fn observe(&mut self, at: Instant, total: u64) {
        self.samples.push_back((at, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// `None` until two samples at least a second apart exist.
    pub fn per_second(&self) -> Option<f64> {
        let (t0, n0) = *self.samples.front()?;
        let (t1, n1) = *self.samples.back()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs >= 1.0).then(|| n1.saturating_sub(n0) as f64 / secs)
    }
}

/// The progress line.
pub fn line(left: u64, deleted: u64, rate: Option<f64>) -> String {
    let mut text = format!("{left} item(s) left, {deleted} deleted");
    match rate {
        Some(r) if r > 0.0 => {
            let eta = Duration::from_secs((left as f64 / r).ceil() as u64);
            text.push_str(&format!(
                ", {r:.1}/s, ETA {}",
                humantime::format_duration(eta)
            ));
        }
        Some(_) => text.push_str(", 0/s (waiting: a backoff, a throttle or a pause)"),
        None => {}
    }
    text
}

/// Redraws the line until dropped (the caller aborts the task when the run ends).
pub async fn show(store: AsyncStore, executor: Arc<Executor>, bar: indicatif::ProgressBar) {
    let mut window = RateWindow::default();
    loop {
        let left = store.call(|s| s.items_left()).await.unwrap_or(0);
        let deleted: u64 = executor.stats().deleted.values().sum();
        window.observe(Instant::now(), deleted);
        bar.set_message(line(left, deleted, window.per_second()));
        tokio::time::sleep(EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_over_a_sliding_window_before_any_eta() {
        let t = Instant::now();
        let mut w = RateWindow::default();
        w.observe(t, 0);
        assert_eq!(w.per_second(), None, "one sample is no rate");
        w.observe(t + Duration::from_millis(500), 5);
        assert_eq!(w.per_second(), None, "half a second is too short to say");
        w.observe(t + Duration::from_secs(2), 20);
        assert_eq!(w.per_second(), Some(10.0));
        // A stall: later, the window holds only the stall.
        w.observe(t + Duration::from_secs(11), 20);
        w.observe(t + Duration::from_secs(14), 20);
        assert_eq!(w.per_second(), Some(0.0));
        assert_eq!(
            line(100, 20, Some(10.0)),
            "100 item(s) left, 20 deleted, 10.0/s, ETA 10s"
        );
        assert_eq!(line(100, 0, None), "100 item(s) left, 0 deleted");
        assert!(line(5, 20, Some(0.0)).contains("waiting"));
    }
}
