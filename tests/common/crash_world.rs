//! The crash suites' shared world (tests/crash.rs: one daemon; tests/crash_multi.rs: three
//! instances on PostgreSQL): a large drain against the simulator with decoys, and the checks
//! after it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};

use super::*;

/// `name` from the environment, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub struct World {
    pub sim: Simulator,
    pub cfg: PathBuf,
    pub targeted: BTreeSet<ChatKey>,
    pub decoys: BTreeSet<ChatKey>,
}

/// 30 people with chats at both providers, 15 of them asking (filed through plain SQL), the
/// same IDs under a character nobody asked about; small batches so a drain spans many calls.
/// `daemon` is appended to the `[daemon]` table; `per_person` grows with the rounds so the
/// kills keep landing mid-drain.
pub async fn world(s: &Scratch, seed: u64, per_person: usize, daemon: &str) -> World {
    let faults = Faults {
        latency: Duration::from_millis(4),
        error_rate: 0.05,
        partial_rate: 0.1,
        ..Faults::default()
    };
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), faults, seed)
        .await
        .unwrap();
    let cfg = sim_config(s, &sim, &["app-1", "app-2"], "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "timeout = \"2s\"",
            "timeout = \"2s\"\nbatch_size = 10\nconcurrency = 2",
        )
        .replace(
            "shutdown_timeout = \"5s\"",
            &format!("shutdown_timeout = \"5s\"\n{daemon}"),
        );
    std::fs::write(&cfg, text).unwrap();
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
    World {
        sim,
        cfg,
        targeted,
        decoys,
    }
}

impl World {
    pub fn done(&self) -> bool {
        self.targeted.iter().all(|t| !self.sim.has(t))
    }

    /// One uninterrupted `run --once` finishes the job; then every promise is checked.
    pub fn finish_and_check(&self, s: &Scratch, kills: usize) {
        let cfg = self.cfg.to_str().unwrap();
        let o = s.forgetd(&["--config", cfg, "run", "--once"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        for t in &self.targeted {
            assert!(!self.sim.has(t), "targeted {t:?} survived {kills} kills");
        }
        let named = self.sim.named_in_deletes();
        for d in &self.decoys {
            assert!(self.sim.has(d), "decoy {d:?} deleted");
            assert!(!named.contains(d), "decoy {d:?} named in a delete call");
        }
        let states =
            stdout(&s.sqlite3("SELECT state, count(*) FROM erasure_requests GROUP BY state"));
        assert_eq!(states.trim(), "complete|15", "no request lost");
        // Each chat is recorded deleted once, though crashes made some batches go out twice.
        let sql = if s.on_pg() {
            "SELECT (data::jsonb ->> 'provider') || '/' || (data::jsonb ->> 'scope') || '/' || j
             FROM audit_log, jsonb_array_elements_text(data::jsonb -> 'deleted') j
             WHERE kind = 'batch.answered'"
        } else {
            "SELECT json_extract(audit_log.data, '$.provider') || '/' || json_extract(audit_log.data, '$.scope') || '/' || j.value
             FROM audit_log, json_each(json_extract(audit_log.data, '$.deleted')) j WHERE kind = 'batch.answered'"
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for line in stdout(&s.sqlite3(sql)).lines() {
            *counts.entry(line.to_string()).or_default() += 1;
        }
        assert_eq!(
            counts.len(),
            self.targeted.len(),
            "every targeted chat recorded deleted"
        );
        assert!(
            counts.values().all(|n| *n == 1),
            "a chat recorded deleted twice"
        );
        let v = s.forgetd(&["--config", cfg, "audit", "verify"]);
        assert_eq!(code(&v), 0, "{}", stdout(&v));
    }

    pub fn delete_calls(&self) -> usize {
        self.sim.calls().iter().filter(|c| c.op == "delete").count()
    }
}
