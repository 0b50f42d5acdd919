//! The record proves what happened (issue 33), on a SQLite file or PostgreSQL
//! (`FORGETD_TEST_ENGINE=postgres`): a certificate states what forgetd recorded, not a row someone
//! edited; it states each chat's fate as it is now, after changes that came after the close;
//! every state change a command makes is an event with its actor; a provider's echo of a secret
//! is never stored or shown; feeders' control characters never reach the operator's terminal raw.
//! (The keyless forgery of a verified certificate is `keyed_chain.rs`'s.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use forgetd::audit::Event;
use forgetd::certificate::Certificate;
use forgetd::clock::{ManualClock, SharedClock};
use forgetd::config::Config;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{CONVAI_KEY, Faults, Simulator};
use forgetd::store::holds::HoldTarget;

use common::{code, stdout};

struct World {
    sim: Simulator,
    s: common::Scratch,
    clock: ManualClock,
    request: i64,
}

/// Alice (requested, ref DSR-1) has 3 Convai and 3 KooSearch chats; Bob (a decoy) has one of each.
async fn world(faults: Faults) -> World {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared, faults, 23).await.unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    for (person, n) in [("alice", 3), ("bob", 1)] {
        for i in 0..n {
            common::seed_convai_chat(
                &sim,
                &mut store,
                "char-a",
                &format!("{person}-c{i}"),
                person,
            );
            sim.add_koosearch_chat(
                "app-a",
                &format!("{person}-k{i}"),
                Some(person),
                None,
                1_700_000_000,
            );
        }
    }
    let request = store
        .file_request("alice", Some("DSR-1"), 1_800_000_000, 30 * 86_400)
        .unwrap()
        .id;
    World {
        sim,
        s,
        clock,
        request,
    }
}

fn config(w: &World, extra: &str) -> Config {
    common::in_process_config(&w.s, &w.sim, &["app-a"], extra)
}

async fn run_once(w: &World, extra: &str) {
    let d = forgetd::daemon::Daemon::build(config(w, extra), Arc::new(w.clock.clone())).unwrap();
    d.run_once().await.unwrap();
}

/// Runs SQL as a feeder (or anyone who can write the database) would.
fn sql(w: &World, sql: &str) -> String {
    let o = w.s.sqlite3(sql);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl World {
    /// The spelling for this test's engine, where SQLite's and PostgreSQL's differ.
    fn pick<'a>(&self, sqlite: &'a str, postgres: &'a str) -> &'a str {
        if self.s.on_pg() { postgres } else { sqlite }
    }
}

fn decoys_untouched(w: &World) {
    for (p, scope, id) in [
        (ProviderKind::CONVAI, "char-a", "bob-c0"),
        (ProviderKind::KOOSEARCH, "app-a", "bob-k0"),
    ] {
        let key = ChatKey::new(p, scope, id);
        assert!(w.sim.has(&key), "decoy {key:?} deleted");
        assert!(
            !w.sim.named_in_deletes().contains(&key),
            "decoy {key:?} named"
        );
    }
}

/// Every format states the same thing: the text, the JSON, the signed JSON's certificate.
fn formats(w: &World) -> (Certificate, String, String) {
    let cert = Certificate::build(&w.s.store(), w.request).unwrap();
    let text = cert.text();
    let json = serde_json::to_string(&cert).unwrap();
    (cert, text, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_states_what_forgetd_recorded_not_an_edited_row() {
    let w = world(Faults::default()).await;
    run_once(&w, "[verify]\nafter = \"0s\"\n").await;
    let before = Certificate::build(&w.s.store(), w.request).unwrap();
    assert_eq!(before.state, "complete");
    assert!(before.verified.is_some(), "{}", before.text());
    assert!(before.notices.is_empty(), "{:?}", before.notices);
    // The edit: another reference, received 40 days earlier, due after it completed.
    sql(
        &w,
        &format!(
            "UPDATE erasure_requests SET external_ref = 'DSR-9999', received_at = received_at - 40 * 86400, due_at = completed_at + 86400 WHERE id = {}",
            w.request
        ),
    );
    let (cert, text, json) = formats(&w);
    assert_eq!(cert.external_ref.as_deref(), Some("DSR-1"));
    assert_eq!(cert.received_at, before.received_at);
    assert_eq!(cert.due_at, before.due_at);
    assert_eq!(cert.completed_at, before.completed_at);
    assert_eq!(cert.notices.len(), 3, "{:?}", cert.notices);
    assert!(text.contains("reference:   DSR-1"), "{text}");
    assert!(
        text.contains("NOTICE — the request's row was edited") && text.contains("DSR-9999"),
        "{text}"
    );
    assert!(json.contains("\"external_ref\":\"DSR-1\""), "{json}");
    decoys_untouched(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_that_goes_dead_after_its_request_closed_is_certified_failed_not_deleted() {
    // alice-c1 is refused (dead at once); alice-k1 keeps coming back and is given up later.
    let w = world(Faults {
        bad_ids: ["alice-c1".to_string()].into(),
        resurrect: [("alice-k1".to_string(), 100)].into(),
        ..Faults::default()
    })
    .await;
    run_once(&w, "[verify]\nafter = \"0s\"\nmax_reappearances = 2\n").await;
    let s = w.s.store();
    let detail = s.request_detail(w.request, 30 * 86_400).unwrap();
    let state_of = |id: &str| {
        detail
            .items
            .iter()
            .find(|i| i.session_id == id)
            .map(|i| i.state.clone())
            .unwrap()
    };
    assert_eq!(state_of("alice-k1"), "dead");
    assert_eq!(state_of("alice-c1"), "dead");
    // It closed, re-opened when alice-k1 came back, and closed again.
    assert!(!common::audit_events(&s, "request.reopened").is_empty());
    let (cert, text, _) = formats(&w);
    assert_eq!(cert.state, "failed");
    let failed: Vec<&str> = cert.failed.iter().map(|f| f.session_id.as_str()).collect();
    assert!(
        failed.contains(&"alice-k1") && failed.contains(&"alice-c1"),
        "{text}"
    );
    assert!(
        cert.deleted
            .values()
            .flatten()
            .all(|c| c.session_id != "alice-k1"),
        "{text}"
    );
    assert!(cert.verified.is_none());
    assert!(
        cert.verified_line()
            .starts_with("no: the request failed; 4 of 4 deleted chat(s) read back absent"),
        "{text}"
    );
    assert!(cert.notices.is_empty(), "{:?}", cert.notices);
    // The chat is still at the provider, as the certificate says.
    assert!(w.sim.exists(ProviderKind::KOOSEARCH, "app-a", "alice-k1"));
    decoys_untouched(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_held_after_its_confirmed_deletion_is_certified_held_and_the_rest_verified() {
    // alice-k2's first deletion does not hold; by the time it is read back, she is on hold.
    let w = world(Faults {
        resurrect: [("alice-k2".to_string(), 1)].into(),
        ..Faults::default()
    })
    .await;
    run_once(&w, "[verify]\nafter = \"1h\"\n").await;
    let first = Certificate::build(&w.s.store(), w.request).unwrap();
    assert_eq!(first.state, "complete");
    assert!(first.verified.is_none());
    assert!(
        first.verified_line().starts_with("waiting:"),
        "{}",
        first.text()
    );
    w.s.store()
        .add_hold(
            &HoldTarget::Subject("alice".into()),
            "litigation",
            1_800_000_100,
        )
        .unwrap();
    w.clock.advance(Duration::from_secs(2 * 3600));
    run_once(&w, "[verify]\nafter = \"1h\"\n").await;
    let (cert, text, _) = formats(&w);
    assert_eq!(cert.state, "complete");
    let held: Vec<&str> = cert.held.iter().map(|h| h.session_id.as_str()).collect();
    assert_eq!(held, ["alice-k2"], "{text}");
    assert!(
        cert.deleted
            .values()
            .flatten()
            .all(|c| c.session_id != "alice-k2" && c.verification.status == "verified_absent"),
        "{text}"
    );
    assert_eq!(cert.deleted.values().flatten().count(), 5, "{text}");
    assert!(cert.verified.is_some(), "{text}");
    assert!(w.sim.exists(ProviderKind::KOOSEARCH, "app-a", "alice-k2"));
    decoys_untouched(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_a_command_makes_is_an_event_with_its_actor() {
    let w = world(Faults {
        bad_ids: ["alice-c1".to_string()].into(),
        ..Faults::default()
    })
    .await;
    run_once(&w, "").await;
    let cfg = w.s.write("cli.toml", &w.s.database_toml());
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend_from_slice(args);
        let o = w.s.forgetd(&all);
        assert_eq!(
            code(&o),
            0,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout(&o)
    };
    cli(&["holds", "add", "--subject", "bob", "--reason", "case 7"]);
    cli(&["holds", "remove", "1"]);
    cli(&[
        "rules",
        "add",
        "old-chats",
        "--provider",
        "convai",
        "--scope",
        "char-a",
        "--max-age",
        "30d",
        "--schedule",
        "0 3 * * *",
    ]);
    cli(&["rules", "remove", "old-chats"]);
    cli(&["requests", "retry", &w.request.to_string()]);
    let s = w.s.store();
    for kind in [
        "hold.placed",
        "hold.lifted",
        "rule.added",
        "rule.removed",
        "request.retried",
        "request.reopened",
    ] {
        let events = common::audit_events(&s, kind);
        assert_eq!(events.len(), 1, "{kind}: {events:?}");
        assert_eq!(events[0]["actor"]["by"], "user", "{kind}: {events:?}");
        assert_eq!(events[0]["actor"]["uid"], 0, "{kind} by root: {events:?}");
    }
    // The daemon's own changes are the daemon's.
    let completed = common::audit_events(&s, "request.failed");
    assert!(
        completed.iter().all(|e| e["actor"]["by"] == "daemon"),
        "{completed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_echoes_a_secret_never_gets_it_stored_or_shown() {
    let w = world(Faults {
        auth_fail: [ProviderKind::CONVAI].into(),
        echo_secrets: true,
        ..Faults::default()
    })
    .await;
    w.sim.set_record_ids(true);
    run_once(&w, "").await;
    // The simulator did echo: the refusals carried what was sent.
    let cfg = w.s.write("cli.toml", &w.s.database_toml());
    let mut shown = String::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["requests", "show", "1"],
        vec!["requests", "show", "1", "--json"],
    ] {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend(args);
        let o = w.s.forgetd(&all);
        shown.push_str(&stdout(&o));
        shown.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    assert!(
        shown.contains("[redacted]"),
        "the echo was seen and cleaned: {shown}"
    );
    assert!(!shown.contains(CONVAI_KEY), "{shown}");
    // The raw database bytes (file and WAL) carry it nowhere: not in a last error, not in the
    // append-only trail.
    if !w.s.on_pg() {
        let mut bytes = std::fs::read(w.s.db()).unwrap();
        let wal = w.s.db().with_extension("db-wal");
        bytes.extend(std::fs::read(wal).unwrap_or_default());
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(CONVAI_KEY));
        assert!(hay.contains("[redacted]"));
    }
    use forgetd::store::db::Sql;
    let s = w.s.store();
    let everything: Vec<String> = s
        .rows(
            "SELECT data FROM audit_log UNION ALL SELECT coalesce(last_error, '') FROM work_items
             UNION ALL SELECT coalesce(paused_reason, '') FROM provider_state",
            forgetd::args![],
            |r| r.get(0),
        )
        .unwrap();
    let all = everything.join("\n");
    assert!(!all.contains(CONVAI_KEY), "{all}");
    // No IAM token (the simulator's start with MII) stays either.
    assert!(!all.contains("MII"), "{all}");
    assert!(!shown.contains("MII"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feeders_control_characters_never_reach_the_terminal_raw() {
    let w = world(Faults::default()).await;
    let hostile = "DSR-2\u{1b}]0;owned\u{7}\u{1b}[31mRED";
    w.s.store()
        .file_request("alice", Some(hostile), 1_800_000_000, 30 * 86_400)
        .unwrap();
    run_once(&w, "[verify]\nafter = \"0s\"\n").await;
    let cfg = w.s.write("cli.toml", &w.s.database_toml());
    for args in [
        vec!["requests", "list"],
        vec!["requests", "show", "2"],
        vec!["audit", "export", "--request", "2"],
    ] {
        let mut all = vec!["--config", cfg.to_str().unwrap()];
        all.extend(args.iter().copied());
        let o = w.s.forgetd(&all);
        assert_eq!(
            code(&o),
            0,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07),
            "{args:?}"
        );
        assert!(
            stdout(&o).contains("DSR-2\\x1b]0;owned"),
            "{args:?}: {}",
            stdout(&o)
        );
    }
}

/// The README's list of audit events is the event model's.
#[test]
fn the_readme_lists_every_event_kind_and_no_other() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("Events: ").expect("the README's event list");
    let end = start + readme[start..].find("\n\n").unwrap();
    let listed: std::collections::BTreeSet<&str> = readme[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| k.contains('.') && !k.contains(' '))
        .collect();
    let known: std::collections::BTreeSet<&str> = Event::KINDS.iter().copied().collect();
    assert_eq!(listed, known);
}

/// A group member edits rows so that forgetd itself seals a false closing event: a dead chat made
/// "deleted", a request made complete with its closing event left to the daemon, and (on another
/// request) chats never read back made "read back absent". The certificate checks each claim
/// against the trail's batch answers and read-backs, which the rows cannot forge: it names the
/// unrecorded deletion and refuses (BROKEN), and never states the edited read-backs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_edited_so_forgetd_seals_a_false_close_do_not_make_a_certificate_say_so() {
    let w = world(Faults {
        bad_ids: ["alice-c1".to_string()].into(),
        ..Faults::default()
    })
    .await;
    run_once(&w, "[verify]\nafter = \"1h\"\n").await;
    assert_eq!(
        Certificate::build(&w.s.store(), w.request).unwrap().state,
        "failed"
    );
    sql(
        &w,
        &format!(
            "{}
             UPDATE work_items SET state = 'deleted', outcome = 'deleted', finished_at = 1800000001, last_error = NULL WHERE session_id = 'alice-c1';
             UPDATE work_items SET verify_state = 'verified_absent', verified_at = 1800000002 WHERE state = 'deleted';
             UPDATE erasure_requests SET state = 'complete', closing_seq = NULL, verified_at = NULL WHERE id = {};",
            w.pick(
                "DROP TRIGGER work_items_state_transition_must_be_legal;",
                "DROP TRIGGER work_items_state_transition_must_be_legal ON work_items;"
            ),
            w.request
        ),
    );
    // The daemon's next look writes the closing event the rows ask for, sealed.
    let mut daemon = w.s.store();
    assert_eq!(daemon.close_deferred(1_800_000_010).unwrap(), 1);
    assert!(daemon.verify_audit().unwrap().broken.is_none());
    let (cert, text, _) = formats(&w);
    let why = cert.broken.as_deref().unwrap_or_default();
    assert!(
        why.contains("calls convai/char-a/alice-c1 deleted, but no batch answer"),
        "{text}"
    );
    assert!(cert.verified.is_none(), "{text}");
    assert!(
        cert.deleted
            .values()
            .flatten()
            .all(|c| c.verification.status != "verified_absent"),
        "no chat was read back: {text}"
    );
    // `audit export` refuses it.
    let cfg = w.s.write("cli.toml", &w.s.database_toml());
    let o = w.s.forgetd(&[
        "--config",
        cfg.to_str().unwrap(),
        "audit",
        "export",
        "--request",
        &w.request.to_string(),
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(w.sim.exists(ProviderKind::CONVAI, "char-a", "alice-c1"));
    decoys_untouched(&w);
}
