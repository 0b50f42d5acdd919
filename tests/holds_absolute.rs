//! A legal hold is absolute (SPEC, "Invariants that hold on every path"): a chat a hold covers
//! when its delete call is sent is never named in that call, whatever path queued it. One test per
//! path an adversarial review found open, each against the real store and the simulator (whose
//! ledger records every call), with decoys that must stay untouched:
//! - `requests retry` of a failed request whose person was put under a hold since;
//! - the restart after a crash mid-call (SQLite: the lock's release of in-flight items; on
//!   PostgreSQL: the rescue of a dead instance's claim), with a hold placed while no one ran;
//! - a feeder re-attributing a queued chat to a person under a hold (UPDATE, and DELETE + INSERT);
//! - a chat held after its confirmed deletion and then read back present;
//! - and the real daemon SIGKILLed while its call hangs, a hold placed meanwhile.
//!
//! Each also checks that the held chat is reported held, with the hold's reason, where its
//! deletion would have been: the request (`requests show`) and the certificate.
//! Runs on both engines (`FORGETD_TEST_ENGINE=postgres`).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use forgetd::certificate::Certificate;
use forgetd::clock::{Clock, ManualClock, SharedClock};
use forgetd::config::Config;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use forgetd::store::Store;
use forgetd::store::holds::HoldTarget;

const DEADLINE: i64 = 30 * 86_400;

struct World {
    sim: Simulator,
    s: common::Scratch,
    clock: ManualClock,
    request: i64,
    /// Not Alice's: Carol's chats, and Carol's chat with one of Alice's IDs under another
    /// character. Never to be named.
    decoys: Vec<ChatKey>,
}

fn key(scope: &str, id: &str) -> ChatKey {
    ChatKey::new(ProviderKind::CONVAI, scope, id)
}

/// Alice has a-0, a-1, a-2 under char-a; Bob b-0; Carol c-0 and a twin of a-0 under char-z.
/// Alice's request is filed (not resolved).
async fn world() -> World {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared, Faults::default(), 5)
        .await
        .unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    for (scope, id, person) in [
        ("char-a", "a-0", "alice"),
        ("char-a", "a-1", "alice"),
        ("char-a", "a-2", "alice"),
        ("char-a", "b-0", "bob"),
        ("char-a", "c-0", "carol"),
        ("char-z", "a-0", "carol"),
    ] {
        common::seed_convai_chat(&sim, &mut store, scope, id, person);
    }
    let request = store
        .file_request("alice", Some("DSR-1"), clock.now(), DEADLINE)
        .unwrap()
        .id;
    World {
        sim,
        s,
        clock,
        request,
        decoys: vec![key("char-a", "c-0"), key("char-z", "a-0")],
    }
}

fn config(w: &World, extra: &str) -> Config {
    let mut c = common::in_process_config(
        &w.s,
        &w.sim,
        &[],
        &format!("[verify]\nafter = \"10m\"\n{extra}"),
    );
    c.remove_provider(ProviderKind::KOOSEARCH);
    c.retry.base_delay = Duration::from_millis(100);
    c.retry.max_delay = Duration::from_secs(1);
    c
}

async fn drain(w: &World, extra: &str, retry_max_attempts: Option<u32>) {
    let mut c = config(w, extra);
    if let Some(n) = retry_max_attempts {
        c.retry.max_attempts = n;
    }
    let d = forgetd::daemon::Daemon::build(c, Arc::new(w.clock.clone())).unwrap();
    d.run_once().await.unwrap();
}

/// Resolves the filed request without draining it: its chats queued.
fn resolve(w: &World) {
    let mut s = w.s.store();
    let req = s.received_requests(10).unwrap().remove(0);
    s.resolve_request(&req, &[], &[], "hash", w.clock.now(), DEADLINE)
        .unwrap();
}

/// Chats named in delete calls from call number `since` on.
fn named_since(w: &World, since: usize) -> BTreeSet<ChatKey> {
    named_since_sim(&w.sim, since)
}

fn check_decoys(w: &World) {
    let named = w.sim.named_in_deletes();
    for d in &w.decoys {
        assert!(w.sim.has(d), "decoy {d:?} deleted");
        assert!(!named.contains(d), "decoy {d:?} named in a delete call");
    }
}

/// The chat is held with `reason` in `requests show` and in the certificate (every format reads
/// the same certificate), and the request is complete.
fn reported_held(s: &Store, w: &World, id: &str, reason: &str) {
    let detail = s.request_detail(w.request, DEADLINE).unwrap();
    let item = detail
        .items
        .iter()
        .find(|i| i.scope == "char-a" && i.session_id == id)
        .unwrap_or_else(|| panic!("{id} is not among the request's chats: {detail:?}"));
    assert_eq!(item.state, "held", "{item:?}");
    assert_eq!(item.hold_reason.as_deref(), Some(reason), "{item:?}");
    let text = forgetd::report::request_detail_text(&detail, w.clock.now());
    assert!(text.contains(&format!("{id}  held")), "{text}");
    assert!(!text.contains("deleting it again"), "{text}");
    assert_eq!(detail.summary.state.as_str(), "complete", "{detail:?}");
    let cert = Certificate::build(s, w.request).unwrap();
    let held: Vec<_> = cert
        .held
        .iter()
        .filter(|h| h.session_id == id && h.scope == "char-a")
        .collect();
    assert_eq!(held.len(), 1, "{cert:?}");
    assert_eq!(held[0].reason.as_deref(), Some(reason));
    assert!(
        cert.deleted
            .values()
            .flatten()
            .all(|c| !(c.session_id == id && c.scope == "char-a")),
        "a held chat is certified deleted: {cert:?}"
    );
    let json = serde_json::to_value(&cert).unwrap();
    assert!(
        json["held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["session_id"] == id && h["reason"] == reason),
        "{json}"
    );
    assert!(cert.text().contains(reason), "{}", cert.text());
    let html = forgetd::certificate::html::render(&cert, None);
    let held_table = &html[html
        .find("id=\"held\"")
        .expect("the HTML has its held table")..];
    assert!(
        held_table.contains(id) && held_table.contains(&escape(reason)),
        "{html}"
    );
    // Signed: the same certificate under an Ed25519 signature, checked offline.
    let key = forgetd::signing::CertSigner::from_seed([9; 32]);
    let signed = key.sign(&cert).unwrap();
    let text = serde_json::to_string(&signed).unwrap();
    let back = forgetd::signing::verify(&text, &key.public_key_hex()).unwrap();
    let body = serde_json::to_value(&back).unwrap();
    assert!(body.to_string().contains(reason), "{body}");
}

/// Text as maud escapes it in HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_failed_request_never_sends_a_chat_held_since() {
    let w = world().await;
    w.sim.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    drain(&w, "", Some(1)).await;
    let mut s = w.s.store();
    assert_eq!(
        s.request_detail(w.request, DEADLINE)
            .unwrap()
            .summary
            .state
            .as_str(),
        "failed"
    );
    s.add_hold(
        &HoldTarget::Subject("alice".into()),
        "litigation 12",
        w.clock.now(),
    )
    .unwrap();
    w.sim.set_faults(Faults::default());
    let before = w.sim.calls().len();
    assert_eq!(s.retry_request(w.request, w.clock.now()).unwrap(), 3);
    drain(&w, "", None).await;
    let named = named_since(&w, before);
    assert!(named.is_empty(), "held chats sent after a retry: {named:?}");
    for id in ["a-0", "a-1", "a-2"] {
        assert!(w.sim.has(&key("char-a", id)));
        reported_held(&s, &w, id, "litigation 12");
    }
    let retried = common::audit_events(&s, "request.retried");
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0]["held"], 3);
    check_decoys(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_after_a_crash_mid_call_never_sends_a_chat_held_meanwhile() {
    let w = world().await;
    resolve(&w);
    // The crashed worker's claim: every one of Alice's chats in flight under its lease. On
    // PostgreSQL it is an instance's, declared dead (its heartbeat expired) before the restart.
    let mut crashed = w.s.store();
    if w.s.on_pg() {
        crashed.register_instance(Duration::from_secs(600)).unwrap();
    }
    let batch = crashed
        .claim_batch(
            ProviderKind::CONVAI,
            w.clock.instant(),
            Duration::from_secs(300),
            10,
        )
        .unwrap()
        .unwrap();
    assert_eq!(batch.items.len(), 3);
    if let Some(pg) = &w.s.pg {
        let id = crashed.instance_id().unwrap().to_string();
        let out = pg.psql(&format!(
            "UPDATE forgetd_instances SET expires_ms = 0 WHERE id = '{id}'"
        ));
        assert!(out.status.success(), "{}", common::stderr(&out));
    }
    let mut s = w.s.store();
    s.add_hold(
        &HoldTarget::Chat(key("char-a", "a-1")),
        "evidence 4",
        w.clock.now(),
    )
    .unwrap();
    drain(&w, "", None).await;
    let named = named_since(&w, 0);
    assert!(
        !named.contains(&key("char-a", "a-1")),
        "the held chat was sent after the restart: {named:?}"
    );
    assert!(w.sim.has(&key("char-a", "a-1")));
    for id in ["a-0", "a-2"] {
        assert!(!w.sim.has(&key("char-a", id)), "{id} not deleted");
    }
    reported_held(&s, &w, "a-1", "evidence 4");
    check_decoys(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_chat_re_attributed_to_a_held_person_is_never_sent() {
    let w = world().await;
    resolve(&w);
    let feeder = |sql: &str| {
        let out = match &w.s.pg {
            Some(pg) => pg.psql(sql),
            None => w.s.sqlite3(sql),
        };
        assert!(out.status.success(), "{sql}: {}", common::stderr(&out));
    };
    let mut s = w.s.store();
    s.add_hold(
        &HoldTarget::Subject("bob".into()),
        "bob's case",
        w.clock.now(),
    )
    .unwrap();
    // The feeder corrects its inventory: a-1 and a-2 were Bob's all along (one by UPDATE, one
    // by DELETE and INSERT).
    feeder("UPDATE sessions SET subject = 'bob' WHERE scope = 'char-a' AND session_id = 'a-1'");
    feeder(
        "DELETE FROM sessions WHERE scope = 'char-a' AND session_id = 'a-2';
         INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'char-a', 'a-2', 'bob')",
    );
    drain(&w, "", None).await;
    let named = named_since(&w, 0);
    assert_eq!(
        named,
        BTreeSet::from([key("char-a", "a-0")]),
        "only Alice's chat that no hold covers may be sent"
    );
    for id in ["a-1", "a-2", "b-0"] {
        assert!(w.sim.has(&key("char-a", id)), "{id} deleted");
    }
    reported_held(&s, &w, "a-1", "bob's case");
    reported_held(&s, &w, "a-2", "bob's case");
    check_decoys(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_held_after_its_deletion_that_comes_back_is_held_not_certified_deleted() {
    let w = world().await;
    w.sim.set_faults(Faults {
        resurrect: [("a-1".to_string(), 1)].into(),
        ..Faults::default()
    });
    drain(&w, "", None).await;
    let mut s = w.s.store();
    // (the simulator confirmed a-1's deletion and kept it: it reads back present)
    let first = Certificate::build(&s, w.request).unwrap();
    assert_eq!(first.deleted.values().flatten().count(), 3);
    s.add_hold(
        &HoldTarget::Chat(key("char-a", "a-1")),
        "regulator asked",
        w.clock.now(),
    )
    .unwrap();
    let before = w.sim.calls().len();
    w.clock.advance(Duration::from_secs(11 * 60));
    drain(&w, "", None).await;
    assert!(w.sim.has(&key("char-a", "a-1")), "it came back");
    let named = named_since(&w, before);
    assert!(named.is_empty(), "deleted again under a hold: {named:?}");
    reported_held(&s, &w, "a-1", "regulator asked");
    let cert = Certificate::build(&s, w.request).unwrap();
    assert!(
        !cert.text().contains("deleted again"),
        "the held chat is not described as deleted again: {}",
        cert.text()
    );
    assert_eq!(cert.deleted.values().flatten().count(), 2);
    check_decoys(&w);
}

/// The second path as an operator meets it: the real daemon's delete call hangs at the provider,
/// a chat hold is placed while it hangs, the daemon is SIGKILLed, and the restart (`run --once`)
/// names the held chat in no call made after the hold was committed. (The hung call itself named
/// it before the hold: a call on the wire cannot be recalled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_while_a_call_hangs_survives_a_sigkill_and_the_restart() {
    let s = common::Scratch::new();
    let sim = Simulator::start(Arc::new(forgetd::clock::SystemClock), Faults::default(), 3)
        .await
        .unwrap();
    {
        let mut store = s.store();
        for (scope, id, person) in [
            ("char-a", "a-0", "alice"),
            ("char-a", "a-1", "alice"),
            ("char-a", "a-2", "alice"),
            ("char-a", "c-0", "carol"),
            ("char-z", "a-1", "carol"),
        ] {
            common::seed_convai_chat(&sim, &mut store, scope, id, person);
        }
        store
            .file_request("alice", Some("DSR-7"), 1_800_000_000, DEADLINE)
            .unwrap();
    }
    let cfg = common::sim_config(&s, &sim, &[], "");
    sim.hold_deletes(true);
    let mut daemon = tokio::process::Command::new(common::BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::eventually("the delete call reached the provider and hangs", || {
        sim.calls().iter().any(|c| c.op == "delete")
    })
    .await;
    let hung = named_since_sim(&sim, 0);
    assert!(hung.contains(&key("char-a", "a-1")), "{hung:?}");
    s.store()
        .add_hold(&HoldTarget::Chat(key("char-a", "a-1")), "subpoena", 1)
        .unwrap();
    let after_hold = sim.calls().len();
    daemon.start_kill().unwrap(); // SIGKILL
    let _ = daemon.wait().await;
    sim.hold_deletes(false);
    common::until_no_instance_is_alive(&s).await;
    let o = tokio::process::Command::new(common::BIN)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", common::stderr(&o));
    let named = named_since_sim(&sim, after_hold);
    assert!(
        !named.contains(&key("char-a", "a-1")),
        "the held chat was named after its hold: {named:?}"
    );
    for id in ["a-0", "a-2"] {
        assert!(!sim.has(&key("char-a", id)), "{id} not deleted");
    }
    let store = s.store();
    let detail = store.request_detail(1, DEADLINE).unwrap();
    let held = detail.items.iter().find(|i| i.session_id == "a-1").unwrap();
    assert_eq!(
        (held.state.as_str(), held.hold_reason.as_deref()),
        ("held", Some("subpoena"))
    );
    let named_all = sim.named_in_deletes();
    for d in [key("char-a", "c-0"), key("char-z", "a-1")] {
        assert!(
            sim.has(&d) && !named_all.contains(&d),
            "decoy {d:?} touched"
        );
    }
}

/// Chats named in the delete calls a simulator recorded from call number `since` on.
fn named_since_sim(sim: &Simulator, since: usize) -> BTreeSet<ChatKey> {
    sim.calls()[since..]
        .iter()
        .filter(|c| c.op == "delete")
        .flat_map(|c| c.ids.iter().map(|id| key(&c.scope, id)))
        .collect()
}

/// A hold placed while a batch's call is on the wire, and the provider refuses the batch (one
/// bad ID): the batch is split and its halves sent again, each after the hold check; the held
/// chat is in no half, whichever half it falls in (a check that only reported chats it had just
/// held let the second half name a chat the first half's check had held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_after_a_hold_names_the_held_chat_in_no_half() {
    let w = world().await;
    w.sim.set_faults(Faults {
        bad_ids: ["a-0".to_string()].into(),
        ..Faults::default()
    });
    w.sim.hold_deletes(true);
    let d = forgetd::daemon::Daemon::build(config(&w, ""), Arc::new(w.clock.clone())).unwrap();
    let run = tokio::spawn(async move { d.run_once().await.unwrap() });
    common::eventually("the batch's call reached the provider", || {
        w.sim.calls().iter().any(|c| c.op == "delete")
    })
    .await;
    assert_eq!(named_since(&w, 0).len(), 3, "one call with the three chats");
    w.s.store()
        .add_hold(
            &HoldTarget::Chat(key("char-a", "a-2")),
            "placed mid-call",
            w.clock.now(),
        )
        .unwrap();
    let after_hold = w.sim.calls().len();
    w.sim.hold_deletes(false);
    run.await.unwrap();
    let named = named_since(&w, after_hold);
    assert!(
        named.contains(&key("char-a", "a-1")),
        "the split was sent: {named:?}"
    );
    assert!(
        !named.contains(&key("char-a", "a-2")),
        "a half named the held chat: {named:?}"
    );
    assert!(w.sim.has(&key("char-a", "a-2")));
    assert!(!w.sim.has(&key("char-a", "a-1")));
    check_decoys(&w);
}
