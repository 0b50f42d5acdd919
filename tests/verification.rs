//! Read-after-delete verification against the simulator, on an injected clock: a chat whose
//! deletion the provider confirms but does not keep is caught by reading it back and deleted
//! again; one that keeps coming back goes dead with the reason; a read that cannot decide is
//! reported unverified and never verified; the certificate says which. Decoys (another person's
//! chats, the same ID under another character) are never named in a delete call and stay.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use forgetd::certificate::Certificate;
use forgetd::clock::{ManualClock, SharedClock};
use forgetd::config::Config;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use forgetd::store::Store;

struct World {
    sim: Simulator,
    s: common::Scratch,
    clock: ManualClock,
    targeted: Vec<ChatKey>,
    decoys: Vec<ChatKey>,
    request: i64,
}

/// Alice (requested) and Bob (a decoy) each have 3 Convai and 3 KooSearch chats; Bob also has a
/// Convai chat whose ID is the same as one of Alice's, under another character.
async fn world(faults: Faults) -> World {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared, faults, 17).await.unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    let (mut targeted, mut decoys) = (Vec::new(), Vec::new());
    for person in ["alice", "bob"] {
        for n in 0..3 {
            let sid = format!("{person}-c{n}");
            common::seed_convai_chat(&sim, &mut store, "char-a", &sid, person);
            let kid = format!("{person}-k{n}");
            sim.add_koosearch_chat("app-a", &kid, Some(person), None, 1_700_000_000);
            let list = if person == "alice" {
                &mut targeted
            } else {
                &mut decoys
            };
            list.push(ChatKey::new(ProviderKind::CONVAI, "char-a", &sid));
            list.push(ChatKey::new(ProviderKind::KOOSEARCH, "app-a", &kid));
        }
    }
    // Same ID as one of Alice's, another character, Bob's.
    sim.add_convai_chat("char-z", "alice-c0", 1_700_000_000);
    decoys.push(ChatKey::new(ProviderKind::CONVAI, "char-z", "alice-c0"));
    let request = store
        .file_request("alice", Some("ticket-1"), 1_800_000_000, 30 * 86_400)
        .unwrap()
        .id;
    World {
        sim,
        s,
        clock,
        targeted,
        decoys,
        request,
    }
}

fn config(w: &World, verify: &str) -> Config {
    common::in_process_config(&w.s, &w.sim, &["app-a"], verify)
}

/// A daemon on `w`'s database and simulator, with `verify` as its `[verify]` table.
fn daemon(w: &World, verify: &str) -> forgetd::daemon::Daemon {
    forgetd::daemon::Daemon::build(config(w, verify), Arc::new(w.clock.clone())).unwrap()
}

fn store(w: &World) -> Store {
    w.s.store()
}

fn check_decoys(w: &World) {
    let named: HashSet<ChatKey> = w.sim.named_in_deletes();
    for d in &w.decoys {
        assert!(w.sim.has(d), "decoy {d:?} was deleted");
        assert!(!named.contains(d), "decoy {d:?} was named in a delete call");
    }
}

fn deletes_naming(w: &World, id: &str) -> usize {
    w.sim
        .calls()
        .iter()
        .filter(|c| c.op == "delete" && c.status == 200 && c.ids.iter().any(|i| i == id))
        .count()
}

fn audit_kinds(w: &World, kind: &str) -> usize {
    common::audit_events(&store(w), kind).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_that_reappears_after_a_confirmed_deletion_is_caught_and_deleted_again() {
    let w = world(Faults {
        resurrect: [("alice-c1".to_string(), 1), ("alice-k2".to_string(), 1)].into(),
        ..Faults::default()
    })
    .await;
    w.sim.set_record_ids(true);
    let d = daemon(&w, "[verify]\nafter = \"0s\"\n");
    let report = d.run_once().await.unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    for t in &w.targeted {
        assert!(!w.sim.has(t), "{t:?} is still at the provider");
    }
    check_decoys(&w);
    // The two unkept deletions were confirmed, read back present, and sent again: twice each.
    assert_eq!(deletes_naming(&w, "alice-c1"), 2);
    assert_eq!(deletes_naming(&w, "alice-k2"), 2);
    assert_eq!(deletes_naming(&w, "alice-c0"), 1);
    // Read back with the providers' read calls (listing and one-chat reads).
    assert!(w.sim.calls().iter().any(|c| c.op == "read"
        && c.provider == ProviderKind::KOOSEARCH
        && c.ids.contains(&"alice-k0".to_string())));
    assert!(w.sim.calls().iter().any(|c| c.op == "read"
        && c.provider == ProviderKind::CONVAI
        && c.ids.contains(&"alice-c0".to_string())));
    let s = store(&w);
    let detail = s.request_detail(w.request, 30 * 86_400).unwrap();
    assert_eq!(detail.summary.state.as_str(), "complete");
    assert!(
        detail.summary.verified_at.is_some(),
        "every deleted chat was read back absent"
    );
    for i in &detail.items {
        assert_eq!(i.state, "deleted", "{i:?}");
        assert_eq!(i.verify_state.as_deref(), Some("verified_absent"), "{i:?}");
        let expect = u32::from(i.session_id == "alice-c1" || i.session_id == "alice-k2");
        assert_eq!(i.reappeared, expect, "{i:?}");
    }
    assert_eq!(audit_kinds(&w, "chat.reappeared"), 2);
    assert_eq!(audit_kinds(&w, "request.verified"), 1);
    assert!(s.verify_audit().unwrap().broken.is_none());
    // The certificate: verified, per chat, and the reappearances said.
    let cert = Certificate::build(&s, w.request).unwrap();
    assert!(cert.verified.is_some());
    let text = cert.text();
    assert!(text.contains("verified:    yes"), "{text}");
    assert!(text.contains("reappeared 1 time(s)"), "{text}");
    assert_eq!(
        cert.deleted
            .values()
            .flatten()
            .filter(|c| c.verification.status == "verified_absent")
            .count(),
        6
    );
    // The metric an alert rule watches.
    let metrics = d
        .executor
        .metrics()
        .render(
            &d.store,
            &d.executor.providers(),
            1_800_000_000,
            30 * 86_400,
        )
        .await
        .unwrap();
    assert!(
        metrics.contains("forgetd_reappeared_total{provider=\"convai\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("forgetd_reappeared_total{provider=\"koosearch\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_that_keeps_coming_back_goes_dead_with_the_reason_after_its_bound() {
    let w = world(Faults {
        resurrect: [("alice-k1".to_string(), 100)].into(),
        ..Faults::default()
    })
    .await;
    w.sim.set_record_ids(true);
    let d = daemon(&w, "[verify]\nafter = \"0s\"\nmax_reappearances = 2\n");
    let report = d.run_once().await.unwrap();
    assert!(
        !report.clean(),
        "a chat the provider does not keep is a failure"
    );
    assert_eq!(report.dead, 1);
    // Deleted, then twice again, then given up: three confirmed deletes, no fourth.
    assert_eq!(deletes_naming(&w, "alice-k1"), 3);
    check_decoys(&w);
    let s = store(&w);
    let detail = s.request_detail(w.request, 30 * 86_400).unwrap();
    assert_eq!(detail.summary.state.as_str(), "failed");
    assert!(detail.summary.verified_at.is_none());
    let item = detail
        .items
        .iter()
        .find(|i| i.session_id == "alice-k1")
        .unwrap();
    assert_eq!(item.state, "dead");
    assert_eq!(item.reappeared, 3);
    let why = item.last_error.as_deref().unwrap();
    assert!(why.contains("does not keep this deletion"), "{why}");
    assert!(why.contains("requests retry"), "{why}");
    assert_eq!(audit_kinds(&w, "chat.reappeared"), 3);
    assert!(s.verify_audit().unwrap().broken.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_cannot_decide_is_reported_unverified_and_never_verified() {
    let w = world(Faults {
        read_error_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let d = daemon(&w, "[verify]\nafter = \"0s\"\nmax_attempts = 3\n");
    let report = d.run_once().await.unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    // Each later run reads again what is due; the backoff is at most an hour.
    for _ in 0..3 {
        w.clock.advance(Duration::from_secs(2 * 3600));
        d.run_once().await.unwrap();
    }
    let s = store(&w);
    let detail = s.request_detail(w.request, 30 * 86_400).unwrap();
    assert_eq!(detail.summary.state.as_str(), "complete");
    assert!(detail.summary.verified_at.is_none(), "never verified");
    for i in &detail.items {
        assert_eq!(i.verify_state.as_deref(), Some("unverified"), "{i:?}");
        let why = i.verify_error.as_deref().unwrap();
        assert!(why.contains("503"), "{why}");
    }
    // Three reads per chat, no more: 6 chats, one-chat reads only (the listings answered).
    let reads = w
        .sim
        .calls()
        .iter()
        .filter(|c| c.op == "read" && c.status == 503)
        .count();
    assert_eq!(reads, 6 * 3);
    assert_eq!(audit_kinds(&w, "request.verified"), 0);
    let cert = Certificate::build(&s, w.request).unwrap();
    assert!(cert.verified.is_none());
    let text = cert.text();
    assert!(
        text.contains("UNVERIFIED: 3 read(s) could not decide"),
        "{text}"
    );
    assert!(
        text.contains(
            "no: 6 chat(s) read back without a decision (gave up); 0 of 6 deleted chat(s) read back absent"
        ),
        "{text}"
    );
    check_decoys(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_back_waits_for_its_delay_and_can_be_turned_off() {
    let w = world(Faults::default()).await;
    let d = daemon(&w, "[verify]\nafter = \"10m\"\n");
    d.run_once().await.unwrap();
    let reads = |w: &World| w.sim.calls().iter().filter(|c| c.op == "read").count();
    assert_eq!(reads(&w), 0, "nothing is read back before its delay");
    let s = store(&w);
    assert_eq!(s.read_backs_waiting().unwrap(), 6);
    w.clock.advance(Duration::from_secs(11 * 60));
    d.run_once().await.unwrap();
    assert_eq!(s.read_backs_waiting().unwrap(), 0);
    assert!(s.request_verified_at(w.request).unwrap().is_some());

    let w = world(Faults::default()).await;
    let d = daemon(&w, "[verify]\nafter = \"off\"\n");
    d.run_once().await.unwrap();
    w.clock.advance(Duration::from_secs(86_400));
    d.run_once().await.unwrap();
    assert_eq!(reads(&w), 0, "verification is off");
    let cert = Certificate::build(&store(&w), w.request).unwrap();
    assert!(
        cert.text()
            .contains("no: 6 chat(s) deleted while forgetd did not read deletions back; 0 of 6"),
        "{}",
        cert.text()
    );
}

/// `run --once` asked to stop (SIGTERM) does not go on to read deletions back: the due read-backs
/// stay due, untouched, for the next run, which then does them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_told_to_stop_leaves_due_read_backs_for_the_next_run() {
    use forgetd::executor::Mode;
    let w = world(Faults::default()).await;
    let d = daemon(&w, "[verify]\nafter = \"10m\"\n");
    d.run_once().await.unwrap();
    w.clock.advance(Duration::from_secs(11 * 60));
    let calls = |w: &World| w.sim.calls().len();
    let before = calls(&w);
    let s = store(&w);
    assert_eq!(s.read_backs_waiting().unwrap(), 6);
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    d.executor.run(Mode::Once, cancel).await.unwrap();
    assert_eq!(calls(&w), before, "a stopped run called a provider");
    assert_eq!(s.read_backs_waiting().unwrap(), 6);
    // The decoy check of this test: the same run, not stopped, does read them back.
    d.executor
        .run(Mode::Once, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert!(calls(&w) > before);
    assert_eq!(s.read_backs_waiting().unwrap(), 0);
}

/// The daemon reads back beside its executor: a chat the provider does not keep is found and
/// deleted again while the daemon runs, and the request ends verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reads_deletions_back_while_it_runs_and_deletes_a_reappeared_chat_again() {
    let w = world(Faults {
        resurrect: [("alice-k0".to_string(), 1)].into(),
        ..Faults::default()
    })
    .await;
    w.sim.set_record_ids(true);
    let d = daemon(&w, "[verify]\nafter = \"0s\"\n");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let options = forgetd::daemon::RunOptions {
        once: false,
        config_path: None,
        db_override: None,
    };
    let running = tokio::spawn(d.run_until(options, rx));
    let s = store(&w);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.request_verified_at(w.request).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request was not verified within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(forgetd::daemon::Control::Stop("test"))
        .await
        .unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(deletes_naming(&w, "alice-k0"), 2);
    for t in &w.targeted {
        assert!(!w.sim.has(t), "{t:?} is still at the provider");
    }
    check_decoys(&w);
    assert_eq!(audit_kinds(&w, "chat.reappeared"), 1);
    assert!(s.verify_audit().unwrap().broken.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_sent_for_the_wrong_knowledge_base_is_not_counted_and_names_the_real_one() {
    // The inventory files Alice's KooSearch chat under knowledge base R1; KooSearch has it in
    // R2, and confirms a deletion naming R1 without performing it. `run --once` must not count
    // it deleted, and the dead item must say the inventory's repo_id is the likely cause, with
    // the knowledge base KooSearch lists it under. Bob's chat in R1 (a decoy) stays.
    let sim = Simulator::start(
        Arc::new(forgetd::clock::SystemClock),
        Faults {
            repo_must_match: true,
            ..Faults::default()
        },
        40,
    )
    .await
    .unwrap();
    let s = common::Scratch::new();
    sim.add_koosearch_chat(
        "app-a",
        "alice-k1",
        Some("alice"),
        Some("R2"),
        1_700_000_000,
    );
    sim.add_koosearch_chat("app-a", "bob-k1", Some("bob"), Some("R1"), 1_700_000_000);
    let cfg = common::sim_config(
        &s,
        &sim,
        &["app-a"],
        "[verify]\nafter = \"0s\"\nmax_reappearances = 1\n",
    );
    let cfg = cfg.to_str().unwrap();
    for (id, who) in [("alice-k1", "alice"), ("bob-k1", "bob")] {
        let o = s.forgetd(&[
            "--config",
            cfg,
            "sessions",
            "add",
            "--provider",
            "koosearch",
            "--scope",
            "app-a",
            "--id",
            id,
            "--subject",
            who,
            "--repo-id",
            "R1",
        ]);
        assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    }
    let o = s.forgetd(&[
        "--config",
        cfg,
        "erase",
        "--subject",
        "alice",
        "--ref",
        "R-1",
    ]);
    assert_eq!(common::code(&o), 0, "{}", common::stderr(&o));
    let o = s.forgetd(&["--config", cfg, "run", "--once"]);
    let (out, err) = (common::stdout(&o), common::stderr(&o));
    assert_eq!(common::code(&o), 1, "{out}\n{err}");
    assert!(
        out.contains("deleted 0,") && out.contains("nothing deleted"),
        "{out}"
    );
    assert!(err.contains("confirmed did not hold"), "{err}");
    let o = s.forgetd(&["--config", cfg, "requests", "show", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let item = &v["items"][0];
    assert_eq!(item["state"], "dead", "{v:#}");
    let why = item["last_error"].as_str().unwrap();
    assert!(
        why.contains("lists it under repo_id R2, not R1 as the inventory says"),
        "{why}"
    );
    assert!(sim.exists(ProviderKind::KOOSEARCH, "app-a", "alice-k1"));
    assert!(sim.exists(ProviderKind::KOOSEARCH, "app-a", "bob-k1"));
    assert!(!sim.named_in_deletes().contains(&ChatKey::new(
        ProviderKind::KOOSEARCH,
        "app-a",
        "bob-k1"
    )));
}
