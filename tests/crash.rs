//! Crash suite: the real daemon, SIGKILLed at random moments many times during a large drain
//! against the simulator (whose state lives in this test process, outside the daemon), restarted
//! until done. Every targeted chat deleted, no untargeted chat ever named in a delete call, no
//! request lost, each deletion recorded once, the audit chain valid.
//!
//! Bounded here (`FORGETD_CRASH_ROUNDS`, default 8 kills); the long version:
//! `FORGETD_CRASH_ROUNDS=200 cargo test --release --test crash -- --nocapture`.

mod common;
use common::crash_world::{env_or, world};
use common::*;

use std::time::Duration;

use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_deletes_nothing_else() {
    let rounds: usize = env_or("FORGETD_CRASH_ROUNDS", 8);
    let seed: u64 = env_or("FORGETD_CRASH_SEED", 20261123);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = Scratch::new();
    let w = world(&s, seed, 40 * (rounds / 8).max(1), "").await;
    let mut kills = 0;
    while kills < rounds {
        let mut child = tokio::process::Command::new(BIN)
            .args(["--config", w.cfg.to_str().unwrap(), "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let after = Duration::from_millis(rng.random_range(30..500));
        tokio::time::sleep(after).await;
        child.start_kill().unwrap(); // SIGKILL
        let _ = child.wait().await;
        kills += 1;
        if w.done() {
            break;
        }
    }
    w.finish_and_check(&s, kills);
    eprintln!(
        "{kills} SIGKILLs, {} delete calls, seed {seed}",
        w.delete_calls()
    );
}
