//! Crash suite for several instances on one PostgreSQL queue: three daemons drain it together
//! against the simulator, and one of them, picked at random, is SIGKILLed at a random moment and
//! restarted, again and again. The others rescue a dead one's claims once its heartbeat expires.
//! Every targeted chat deleted, no untargeted chat ever named in a delete call, no request lost,
//! each deletion recorded once, the audit chain valid, no instance row left behind.
//!
//! PostgreSQL only (`FORGETD_TEST_PG`; SKIP without it). Bounded here
//! (`FORGETD_CRASH_MULTI_ROUNDS`, default 6 kills); the long version:
//! `FORGETD_CRASH_MULTI_ROUNDS=200 cargo test --release --test crash_multi -- --nocapture`.

mod common;
use common::crash_world::{env_or, world};
use common::*;

use std::time::Duration;

use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_killed_at_random_lose_nothing_and_delete_nothing_else() {
    if pg::server().is_none() {
        return;
    }
    let rounds: usize = env_or("FORGETD_CRASH_MULTI_ROUNDS", 6);
    let seed: u64 = env_or("FORGETD_CRASH_SEED", 20261123);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: Some(pg::TestDb::create()),
    };
    // A killed instance is taken for dead after five heartbeats.
    let w = world(&s, seed, 40 * (rounds / 6).max(1), "heartbeat = \"200ms\"").await;
    let cfg = w.cfg.to_str().unwrap().to_string();
    let spawn = || {
        tokio::process::Command::new(BIN)
            .args(["--config", &cfg, "run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut instances: Vec<_> = (0..3).map(|_| spawn()).collect();
    let mut kills = 0;
    while kills < rounds {
        let after = Duration::from_millis(rng.random_range(30..500));
        tokio::time::sleep(after).await;
        let victim = rng.random_range(0..instances.len());
        instances[victim].start_kill().unwrap(); // SIGKILL
        let _ = instances[victim].wait().await;
        kills += 1;
        instances[victim] = spawn();
        if w.done() {
            break;
        }
    }
    for mut child in instances {
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
    // The last ones killed must be taken for dead (5 heartbeats) before their claims return.
    until_no_instance_is_alive(&s).await;
    w.finish_and_check(&s, kills);
    assert_eq!(
        stdout(&s.sqlite3("SELECT count(*) FROM forgetd_instances")).trim(),
        "0",
        "every instance left or was rescued"
    );
    let rescued =
        stdout(&s.sqlite3("SELECT count(*) FROM audit_log WHERE kind = 'instance.rescued'"));
    eprintln!(
        "{kills} SIGKILLs of 3 instances, {} rescued, {} delete calls, seed {seed}",
        rescued.trim(),
        w.delete_calls()
    );
}
