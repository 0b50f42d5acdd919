//! Resolution through the real binary against the simulator: a person's chats at both providers
//! (some only KooSearch can find), other people's chats never resolved, legal holds on a subject
//! and on one chat, rule ages at the boundary, the ceiling that stops a runaway rule, `plan`
//! agreeing with what a real run sends, and the personal data left after completion.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::sync::Arc;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};

type Chat = ChatKey;

async fn sim() -> Simulator {
    Simulator::start(Arc::new(SystemClock), Faults::default(), 3)
        .await
        .unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn planned(
    s: &Scratch,
    cfg: &std::path::Path,
    args: &[&str],
) -> (BTreeSet<Chat>, BTreeSet<Chat>, serde_json::Value) {
    let mut full = vec!["--config", cfg.to_str().unwrap(), "plan", "--json"];
    full.extend_from_slice(args);
    let o = s.forgetd(&full);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut delete = BTreeSet::new();
    let mut held = BTreeSet::new();
    for c in v["chats"].as_array().unwrap() {
        let chat = chat(
            c["provider"].as_str().unwrap(),
            c["scope"].as_str().unwrap(),
            c["session_id"].as_str().unwrap(),
        );
        match c["action"].as_str().unwrap() {
            "delete" => delete.insert(chat),
            "held" => held.insert(chat),
            other => panic!("unexpected plan action {other}"),
        };
    }
    (delete, held, v)
}

/// The id of the request filed last. Not always 1 for the first: on PostgreSQL a `plan` (a
/// rolled-back filing) uses an id up, as sequences never go back.
fn last_request(s: &Scratch) -> String {
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&s.forgetd(&["requests", "list", "--json"]))).unwrap();
    list.as_array().unwrap().last().unwrap()["id"].to_string()
}

/// `requests show --json` of the request filed last.
fn last_request_shown(s: &Scratch) -> serde_json::Value {
    let o = s.forgetd(&["requests", "show", &last_request(s), "--json"]);
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// `forgetd sessions add` for a Convai chat, with any further flags; it must succeed.
fn add_convai(s: &Scratch, scope: &str, id: &str, more: &[&str]) {
    let mut args = vec![
        "sessions",
        "add",
        "--provider",
        "convai",
        "--scope",
        scope,
        "--id",
        id,
    ];
    args.extend_from_slice(more);
    let o = s.forgetd(&args);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

fn sent(sim: &Simulator) -> BTreeSet<Chat> {
    sim.named_in_deletes().into_iter().collect()
}

fn chat(p: &str, s: &str, i: &str) -> Chat {
    ChatKey::new(p.parse().unwrap(), s, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_resolves_at_both_providers_plan_matches_the_real_run_and_holds_keep_chats() {
    let s = Scratch::new();
    let sim = sim().await;
    let t = now() - 86_400;
    // alice: fed Convai chats, one fed KooSearch chat, one only KooSearch knows
    for (ch, id) in [("char-a", "a1"), ("char-b", "a2"), ("char-b", "a3")] {
        sim.add_convai_chat(ch, id, t);
    }
    sim.add_koosearch_chat("app-1", "ak-fed", Some("alice"), Some("kb1"), t);
    sim.add_koosearch_chat("app-2", "ak-hidden", Some("alice"), None, t);
    // decoys: bob's chats, the same ID under another character, bob's KooSearch chat
    sim.add_convai_chat("char-a", "b1", t);
    sim.add_convai_chat("char-c", "a1", t);
    sim.add_koosearch_chat("app-1", "bk", Some("bob"), None, t);
    // Deletions read back at once: a deleted chat leaves the inventory when its read-back
    // proves it gone.
    let cfg = sim_config(&s, &sim, &["app-1", "app-2"], "[verify]\nafter = \"0s\"\n");
    let import = s.write(
        "inv.csv",
        "provider,scope,session_id,subject,repo_id\nconvai,char-a,a1,alice,\nconvai,char-b,a2,alice,\nconvai,char-b,a3,alice,\nkoosearch,app-1,ak-fed,alice,kb1\nconvai,char-a,b1,bob,\nconvai,char-c,a1,bob,\nkoosearch,app-1,bk,bob,\n",
    );
    assert_eq!(
        code(&s.forgetd(&["sessions", "import", import.to_str().unwrap()])),
        0
    );
    // one chat of alice's under a chat hold
    let o = s.forgetd(&[
        "holds",
        "add",
        "--provider",
        "convai",
        "--scope",
        "char-b",
        "--id",
        "a3",
        "--reason",
        "evidence",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let hold_id = stdout(&o).trim().to_string();

    let (delete, held, v) = planned(&s, &cfg, &["--subject", "alice"]);
    let expected: BTreeSet<Chat> = [
        chat("convai", "char-a", "a1"),
        chat("convai", "char-b", "a2"),
        chat("koosearch", "app-1", "ak-fed"),
        chat("koosearch", "app-2", "ak-hidden"),
    ]
    .into();
    assert_eq!(delete, expected);
    assert_eq!(held, [chat("convai", "char-b", "a3")].into());
    assert_eq!(
        v["chats"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["session_id"] == "a3")
            .unwrap()["hold_reason"],
        "evidence"
    );
    assert!(sim.named_in_deletes().is_empty(), "plan deleted nothing");
    assert_eq!(
        stdout(&s.sqlite3("SELECT count(*) FROM work_items")).trim(),
        "0",
        "plan left no trace"
    );

    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "alice", "--ref", "R1"])),
        0
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        sent(&sim),
        delete,
        "the real run sent exactly what the plan said"
    );
    assert!(sim.exists(ProviderKind::CONVAI, "char-b", "a3"));
    assert!(sim.exists(ProviderKind::CONVAI, "char-c", "a1"));
    assert!(sim.exists(ProviderKind::KOOSEARCH, "app-1", "bk"));

    // The request is complete with the held chat listed; the certificate names exactly what the
    // simulator deleted.
    let show = last_request_shown(&s);
    assert_eq!(show["state"], "complete");
    let cert: serde_json::Value = serde_json::from_str(&stdout(&s.forgetd(&[
        "audit",
        "export",
        "--request",
        &last_request(&s),
        "--json",
    ])))
    .unwrap();
    let mut certified = BTreeSet::new();
    for (p, chats) in cert["deleted"].as_object().unwrap() {
        for c in chats.as_array().unwrap() {
            certified.insert(chat(
                p,
                c["scope"].as_str().unwrap(),
                c["session_id"].as_str().unwrap(),
            ));
        }
    }
    let simulator_deleted: BTreeSet<Chat> = sim
        .deleted()
        .into_iter()
        .map(|(p, s, i, _)| ChatKey::new(p, &s, &i))
        .collect();
    assert_eq!(certified, simulator_deleted);
    assert_eq!(cert["held"][0]["reason"], "evidence");
    assert_eq!(cert["anchor"]["chain_intact"], true);

    // Personal data after completion: no clear subject in the request or the audit trail, and the
    // inventory maps alice only to what is still live: her held chat stays hers (so her hold and
    // her next request keep seeing it); her deleted chats are gone from it.
    let o = s.sqlite3("SELECT count(*) FROM erasure_requests WHERE subject = 'alice'");
    assert_eq!(stdout(&o).trim(), "0");
    let o = s.sqlite3("SELECT count(*) FROM sessions WHERE subject = 'alice'");
    assert_eq!(
        stdout(&o).trim(),
        cert["held"].as_array().unwrap().len().to_string()
    );
    let o = s.sqlite3("SELECT count(*) FROM audit_log WHERE data LIKE '%alice%'");
    assert_eq!(stdout(&o).trim(), "0", "no raw subject in the audit table");

    // Lifting the hold sends the held chat back to work, and a run deletes it.
    assert_eq!(code(&s.forgetd(&["holds", "remove", &hold_id])), 0);
    assert_eq!(
        stdout(&s.sqlite3("SELECT state FROM erasure_requests")).trim(),
        "in_progress"
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!sim.exists(ProviderKind::CONVAI, "char-b", "a3"));
    assert_eq!(
        stdout(&s.sqlite3("SELECT state FROM erasure_requests")).trim(),
        "complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_hold_keeps_every_known_chat_of_that_person() {
    let s = Scratch::new();
    let sim = sim().await;
    sim.add_convai_chat("c", "x1", 1);
    sim.add_koosearch_chat("app-1", "xk", Some("carol"), None, 1);
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    add_convai(&s, "c", "x1", &["--subject", "carol"]);
    let o = s.forgetd(&[
        "holds",
        "add",
        "--subject",
        "carol",
        "--reason",
        "litigation",
    ]);
    assert_eq!(code(&o), 0);
    assert!(
        stderr(&o).contains("no owner"),
        "the CLI says what a subject hold does not cover: {}",
        stderr(&o)
    );
    assert_eq!(code(&s.forgetd(&["erase", "--subject", "carol"])), 0);
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(sim.named_in_deletes().is_empty());
    assert!(
        sim.exists(ProviderKind::KOOSEARCH, "app-1", "xk"),
        "a discovered chat with the person as user_name is covered"
    );
    let show = last_request_shown(&s);
    assert_eq!(show["state"], "complete");
    assert!(
        show["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["state"] == "held" && i["hold_reason"] == "litigation")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_age_boundary_and_the_ceiling_that_stops_a_runaway_rule() {
    let s = Scratch::new();
    let sim = sim().await;
    let n = now();
    let day = 86_400;
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        "[[rules]]\nname = \"ten-days\"\nprovider = \"convai\"\nscope = \"char-r\"\nmax_age = \"10d\"\nschedule = \"0 3 * * *\"\nmax_deletions = 3\n",
    );
    assert_eq!(code(&s.forgetd(&["status"])), 0);
    // created_at relative to the moment the run will start: a few seconds of slack either side
    let rows = [
        ("old-1", n - 40 * day),
        ("old-2", n - 20 * day),
        ("boundary", n - 10 * day - 2), // exactly-ish max_age: expired
        ("young", n - 10 * day + 120),  // two minutes too young
        ("fresh", n - day),
    ];
    for (id, t) in rows {
        sim.add_convai_chat("char-r", id, t);
        add_convai(&s, "char-r", id, &["--created-at", &t.to_string()]);
    }
    sim.add_convai_chat("char-other", "old-1", n - 40 * day); // same ID, other scope: not the rule's
    add_convai(
        &s,
        "char-other",
        "old-1",
        &["--created-at", &(n - 40 * day).to_string()],
    );

    let (delete, _, _) = planned(&s, &cfg, &["--rule", "ten-days"]);
    assert_eq!(
        delete,
        [
            chat("convai", "char-r", "old-1"),
            chat("convai", "char-r", "old-2"),
            chat("convai", "char-r", "boundary")
        ]
        .into()
    );

    // A runaway: six more expired chats push it over max_deletions = 3.
    for i in 0..3 {
        let id = format!("extra-{i}");
        sim.add_convai_chat("char-r", &id, n - 30 * day);
        add_convai(
            &s,
            "char-r",
            &id,
            &["--created-at", &(n - 30 * day).to_string()],
        );
    }
    let (_, _, v) = planned(&s, &cfg, &["--rule", "ten-days"]);
    assert_eq!(v["rule"]["awaiting_approval"], true);
    assert!(v["notes"][0].as_str().unwrap().contains("max_deletions"));
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(
        code(&o),
        0,
        "nothing pending, in flight or dead: the SPEC's success"
    );
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("rules approve ten-days"),
        "{}",
        stderr(&o)
    );
    assert!(
        sim.named_in_deletes().is_empty(),
        "the ceiling deleted nothing"
    );
    let st: serde_json::Value =
        serde_json::from_str(&stdout(&s.forgetd(&["status", "--json"]))).unwrap();
    assert_eq!(st["rules_awaiting_approval"][0], "ten-days");

    assert_eq!(code(&s.forgetd(&["rules", "approve", "ten-days"])), 0);
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let expected: BTreeSet<Chat> = [
        "old-1", "old-2", "boundary", "extra-0", "extra-1", "extra-2",
    ]
    .iter()
    .map(|i| chat("convai", "char-r", i))
    .collect();
    assert_eq!(sent(&sim), expected);
    assert!(sim.exists(ProviderKind::CONVAI, "char-r", "young"));
    assert!(sim.exists(ProviderKind::CONVAI, "char-other", "old-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovering_rule_finds_expired_chats_the_inventory_does_not_know() {
    let s = Scratch::new();
    let sim = sim().await;
    let n = now();
    sim.add_convai_chat("char-d", "unknown-old", n - 50 * 86_400);
    sim.add_convai_chat("char-d", "unknown-new", n - 86_400);
    sim.add_koosearch_chat("app-1", "k-old", None, None, n - 50 * 86_400);
    sim.add_koosearch_chat("app-1", "k-new", None, None, n - 86_400);
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        "[[rules]]\nname = \"convai-discover\"\nprovider = \"convai\"\nscope = \"char-d\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\ndiscover = true\n\n[[rules]]\nname = \"koo-all\"\nprovider = \"koosearch\"\nscope = \"*\"\nmax_age = \"30d\"\nschedule = \"0 4 * * *\"\ndiscover = true\n",
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        sent(&sim),
        [
            chat("convai", "char-d", "unknown-old"),
            chat("koosearch", "app-1", "k-old")
        ]
        .into()
    );
}
