//! Crash suite: the real daemon, SIGKILLed at random moments many times during a large drain
//! against the simulator (whose state lives in this test process, outside the daemon), restarted
//! until done. Every targeted chat deleted, no untargeted chat ever named in a delete call, no
//! request lost, each deletion recorded once, the audit chain valid.
//!
//! Bounded here (`FORGETD_CRASH_ROUNDS`, default 8 kills); the long version:
//! `FORGETD_CRASH_ROUNDS=200 cargo test --release --test crash -- --nocapture`.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_deletes_nothing_else() {
    let rounds: usize = std::env::var("FORGETD_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let seed: u64 = std::env::var("FORGETD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261123);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = Scratch::new();
    let faults = Faults {
        latency: Duration::from_millis(4),
        error_rate: 0.05,
        partial_rate: 0.1,
        ..Faults::default()
    };
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), faults, seed)
        .await
        .unwrap();
    let cfg = sim_config(&s, &sim, &["app-1", "app-2"], "");
    // settle small batches so a drain spans many calls
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nbatch_size = 10\nconcurrency = 2",
    );
    std::fs::write(&cfg, text).unwrap();

    // the long version drains more, so the kills keep landing mid-drain
    let per_person = 40 * (rounds / 8).max(1);
    let mut targeted = BTreeSet::new();
    let mut decoys = BTreeSet::new();
    let mut csv = String::from("provider,scope,session_id,subject\n");
    for p in 0..30 {
        let person = format!("p{p:02}");
        let requested = p < 15;
        for n in 0..per_person {
            let ch = format!("char-{}", n % 4);
            let id = format!("{person}-c{n}");
            sim.add_convai_chat(&ch, &id, 1_700_000_000);
            csv.push_str(&format!("convai,{ch},{id},{person}\n"));
            let app = if n % 2 == 0 { "app-1" } else { "app-2" };
            let kid = format!("{person}-k{n}");
            sim.add_koosearch_chat(app, &kid, Some(&person), None, 1_700_000_000);
            let set = if requested {
                &mut targeted
            } else {
                &mut decoys
            };
            set.insert(ChatKey::new(ProviderKind::CONVAI, &ch, &id));
            set.insert(ChatKey::new(ProviderKind::KOOSEARCH, app, &kid));
            if n == 0 {
                // the same ID under a character nobody asked about
                sim.add_convai_chat("char-z", &id, 1_700_000_000);
                decoys.insert(ChatKey::new(ProviderKind::CONVAI, "char-z", &id));
            }
        }
    }
    let f = s.write("inv.csv", &csv);
    assert_eq!(
        code(&s.forgetd(&["sessions", "import", f.to_str().unwrap()])),
        0
    );
    for p in 0..15 {
        // filed through plain SQL while daemons come and go
        let o = s.sqlite3(&format!(
            "INSERT INTO erasure_requests(subject, external_ref) VALUES ('p{p:02}', 'R{p}')"
        ));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }

    let mut kills = 0;
    while kills < rounds {
        let mut child = tokio::process::Command::new(BIN)
            .args(["--config", cfg.to_str().unwrap(), "run"])
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
        if targeted.iter().all(|t| !sim.has(t)) {
            break;
        }
    }
    // Finish the job with one uninterrupted run.
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    for t in &targeted {
        assert!(!sim.has(t), "targeted {t:?} survived {kills} kills");
    }
    let named = sim.named_in_deletes();
    for d in &decoys {
        assert!(sim.has(d), "decoy {d:?} deleted");
        assert!(!named.contains(d), "decoy {d:?} named in a delete call");
    }
    let states = stdout(&s.sqlite3("SELECT state, count(*) FROM erasure_requests GROUP BY state"));
    assert_eq!(states.trim(), "complete|15", "no request lost");
    // Each chat is recorded deleted once, though crashes made some batches go out twice.
    let o = s.sqlite3(
        "SELECT json_extract(audit_log.data, '$.provider') || '/' || json_extract(audit_log.data, '$.scope') || '/' || j.value
         FROM audit_log, json_each(json_extract(audit_log.data, '$.deleted')) j WHERE kind = 'batch.answered'",
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in stdout(&o).lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    assert_eq!(
        counts.len(),
        targeted.len(),
        "every targeted chat recorded deleted"
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "a chat recorded deleted twice"
    );
    let v = s.forgetd(&["audit", "verify"]);
    assert_eq!(code(&v), 0, "{}", stdout(&v));
    eprintln!(
        "{kills} SIGKILLs, {} delete calls, seed {seed}",
        sim.calls().iter().filter(|c| c.op == "delete").count()
    );
}
