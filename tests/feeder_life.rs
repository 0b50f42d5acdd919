//! The feeder's life (SPEC, "The feeder's life"), each rule tried as a real application would
//! break it: people who ask twice, overlapping holds, rows deleted by hand, drivers that send
//! bytes, ambiguous provider answers, approvals and Retry-Afters out of proportion. Real SQLite
//! files written with Debian's sqlite3, the real binary, the simulator or wiremock on loopback;
//! every test keeps decoys and checks them untouched.

mod common;
use common::*;

use std::sync::Arc;

use forgetd::clock::SystemClock;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const C: ProviderKind = ProviderKind::CONVAI;

async fn sim() -> Simulator {
    Simulator::start(Arc::new(SystemClock), Faults::default(), 5)
        .await
        .unwrap()
}

/// A scratch directory whose database exists (with forgetd's schema), as a feeder finds it.
fn fresh() -> Scratch {
    let s = Scratch::new();
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    s
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A Convai chat at the simulator and in the inventory, owned by `subject`.
fn chat(s: &Scratch, sim: &Simulator, ch: &str, id: &str, subject: &str, created_at: i64) {
    sim.add_convai_chat(ch, id, created_at);
    let sql = format!(
        "INSERT INTO sessions (provider, scope, session_id, subject, created_at) VALUES ('convai', '{ch}', '{id}', '{subject}', {created_at});"
    );
    let o = s.sqlite3(&sql);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

fn file(s: &Scratch, subject: &str, r: &str) {
    let o = s.sqlite3(&format!(
        "INSERT INTO erasure_requests (subject, external_ref) VALUES ('{subject}', '{r}');"
    ));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// A `[[rules]]` table for a 30-day Convai rule on `char-a`; `extra` adds keys.
fn rule_toml(name: &str, extra: &str) -> String {
    format!(
        "[[rules]]\nname = \"{name}\"\nprovider = \"convai\"\nscope = \"char-a\"\nmax_age = \"30d\"\nschedule = \"0 3 * * *\"\n{extra}"
    )
}

fn run_once(s: &Scratch, cfg: &std::path::Path) -> std::process::Output {
    s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"])
}

fn hold_subject(s: &Scratch, subject: &str, reason: &str) -> String {
    let o = s.forgetd(&["holds", "add", "--subject", subject, "--reason", reason]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn state_of(s: &Scratch, r: &str) -> String {
    stdout(&s.sqlite3(&format!(
        "SELECT state FROM erasure_requests WHERE external_ref = '{r}'"
    )))
    .trim()
    .to_string()
}

fn show(s: &Scratch, r: &str) -> serde_json::Value {
    let id = stdout(&s.sqlite3(&format!(
        "SELECT id FROM erasure_requests WHERE external_ref = '{r}'"
    )));
    let o = s.forgetd(&["requests", "show", id.trim(), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// What a feeder that means it runs to delete a request anyway: the guarding trigger dropped,
/// then the row deleted. On SQLite (foreign keys off, sqlite3's default) that leaves the
/// request's items behind; PostgreSQL always enforces the foreign key, so the feeder deletes the
/// request's item links first (and names the trigger's table).
fn drop_the_guard_and_delete(s: &Scratch, r: &str) -> String {
    if s.on_pg() {
        format!(
            "DROP TRIGGER erasure_requests_are_records_and_cannot_be_deleted ON erasure_requests;
             DELETE FROM request_items WHERE request_id IN (SELECT id FROM erasure_requests WHERE external_ref = '{r}');
             DELETE FROM erasure_requests WHERE external_ref = '{r}';"
        )
    } else {
        format!(
            "DROP TRIGGER erasure_requests_are_records_and_cannot_be_deleted;
             DELETE FROM erasure_requests WHERE external_ref = '{r}';"
        )
    }
}

/// Tests of SQLite's own mechanisms (storage classes, a file beside the database, its
/// migrations from version 1) say so and pass on PostgreSQL, where the column types, the
/// `[audit]` keys and a baseline of their own stand in (tests/postgres.rs covers those).
fn sqlite_only(s: &Scratch, what: &str) -> bool {
    if s.on_pg() {
        eprintln!("SKIP on PostgreSQL: {what} is SQLite's own");
    }
    !s.on_pg()
}

fn named(sim: &Simulator, ch: &str, id: &str) -> bool {
    sim.named_in_deletes()
        .contains(&forgetd::model::ChatKey::new(C, ch, id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifting_one_of_two_subject_holds_frees_nothing_after_the_request_completed() {
    let s = fresh();
    let sim = sim().await;
    let t = now() - 86_400;
    let cfg = sim_config(&s, &sim, &[], "");
    chat(&s, &sim, "char-a", "alice-1", "alice", t);
    chat(&s, &sim, "char-a", "alice-2", "alice", t);
    chat(&s, &sim, "char-a", "bob-1", "bob", t); // decoy
    let first = hold_subject(&s, "alice", "litigation");
    let _second = hold_subject(&s, "alice", "regulator inquiry");
    file(&s, "alice", "R1");
    assert_eq!(code(&run_once(&s, &cfg)), 0);
    assert_eq!(state_of(&s, "R1"), "complete");
    let held = show(&s, "R1")["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "held")
        .count();
    assert_eq!(held, 2);
    let o = s.forgetd(&["holds", "remove", &first]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for id in ["alice-1", "alice-2", "bob-1"] {
        assert!(sim.exists(C, "char-a", id), "{id} was deleted");
        assert!(
            !named(&sim, "char-a", id),
            "{id} was named in a delete call"
        );
    }
    assert_eq!(state_of(&s, "R1"), "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_recorded_while_a_request_ran_stays_its_owners_for_holds_and_later_requests() {
    let s = fresh();
    let sim = sim().await;
    let old = now() - 90 * 86_400;
    // Convai refuses the key first, so the request stays open while a chat is recorded.
    sim.update_faults(|f| {
        f.auth_fail.insert(C);
    });
    // Deletions are read back at once: a deleted chat's row goes when its read-back proves it gone.
    let cfg = sim_config(
        &s,
        &sim,
        &[],
        &format!(
            "[verify]\nafter = \"0s\"\n{}",
            rule_toml("convai-30-days", "")
        ),
    );
    // The rule is added once the request has completed, below.
    let rule_cfg = std::fs::read_to_string(&cfg).unwrap();
    let no_rule_cfg = s.write("norule.toml", rule_cfg.split("[[rules]]").next().unwrap());
    chat(&s, &sim, "char-a", "bob-1", "bob", now() - 60);
    chat(&s, &sim, "char-a", "carol-1", "carol", now() - 60); // decoy
    file(&s, "bob", "B1");
    assert_eq!(code(&run_once(&s, &no_rule_cfg)), 1, "Convai is paused");
    assert_eq!(state_of(&s, "B1"), "in_progress");
    // While B1 is open, bob has two new chats (one old enough for the rule), alice has one.
    chat(&s, &sim, "char-a", "bob-2", "bob", old);
    chat(&s, &sim, "char-a", "bob-3", "bob", now() - 60);
    sim.update_faults(|f| f.auth_fail.clear());
    let o = run_once(&s, &no_rule_cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(state_of(&s, "B1"), "complete");
    assert!(!sim.exists(C, "char-a", "bob-1"));
    // bob-2 and bob-3 are still bob's: a subject hold covers bob-2 (expired) against the rule...
    let o = s.sqlite3("SELECT session_id FROM sessions WHERE subject = 'bob' ORDER BY 1");
    assert_eq!(stdout(&o), "bob-2\nbob-3\n");
    let hold = hold_subject(&s, "bob", "evidence");
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        sim.exists(C, "char-a", "bob-2"),
        "the rule deleted a held chat"
    );
    assert!(!named(&sim, "char-a", "bob-2"));
    // ...and bob's second request covers both, listing them as held.
    file(&s, "bob", "B2");
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let b2 = show(&s, "B2");
    assert_eq!(b2["state"], "complete");
    let items: Vec<(String, String)> = b2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["session_id"].as_str().unwrap().to_string(),
                i["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        items,
        vec![
            ("bob-2".to_string(), "held".to_string()),
            ("bob-3".to_string(), "held".to_string())
        ]
    );
    assert!(sim.exists(C, "char-a", "bob-2"));
    assert!(sim.exists(C, "char-a", "bob-3"));
    assert!(!named(&sim, "char-a", "bob-3"));
    // Lifting the hold returns both to B2, and they go.
    assert_eq!(code(&s.forgetd(&["holds", "remove", &hold])), 0);
    assert_eq!(state_of(&s, "B2"), "in_progress");
    assert_eq!(code(&run_once(&s, &cfg)), 0);
    assert_eq!(state_of(&s, "B2"), "complete");
    assert!(!sim.exists(C, "char-a", "bob-2"));
    assert!(!sim.exists(C, "char-a", "bob-3"));
    assert!(sim.exists(C, "char-a", "carol-1"), "decoy deleted");
    assert!(!named(&sim, "char-a", "carol-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_hold_survives_a_feeder_deleting_the_inventory_row() {
    let s = fresh();
    let sim = sim().await;
    let t = now() - 86_400;
    let cfg = sim_config(&s, &sim, &[], "");
    chat(&s, &sim, "char-a", "alice-1", "alice", t);
    let first = hold_subject(&s, "alice", "one");
    let _second = hold_subject(&s, "alice", "two");
    file(&s, "alice", "A1");
    assert_eq!(code(&run_once(&s, &cfg)), 0);
    // The application forgets the chat by hand; the work item still knows whose it is.
    assert_eq!(
        code(&s.sqlite3("DELETE FROM sessions WHERE session_id = 'alice-1'")),
        0
    );
    assert_eq!(code(&s.forgetd(&["holds", "remove", &first])), 0);
    assert_eq!(code(&run_once(&s, &cfg)), 0);
    assert!(sim.exists(C, "char-a", "alice-1"));
    assert!(!named(&sim, "char-a", "alice-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_records_a_feeder_delete_is_refused_and_ids_are_never_reused() {
    let s = fresh();
    let sim = sim().await;
    let t = now() - 86_400;
    let cfg = sim_config(&s, &sim, &[], "");
    chat(&s, &sim, "char-a", "alice-1", "alice", t);
    chat(&s, &sim, "char-a", "bob-1", "bob", t);
    chat(&s, &sim, "char-a", "carol-1", "carol", t); // decoy
    file(&s, "alice", "A1");
    let o = s.sqlite3("DELETE FROM erasure_requests WHERE external_ref = 'A1'");
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("requests are records and cannot be deleted"),
        "{}",
        stderr(&o)
    );
    // A feeder that drops the trigger and deletes an open request anyway does not stop the
    // executor, and the next request does not inherit the old id or its items.
    assert_eq!(code(&run_once(&s, &cfg)), 0);
    let o = s.sqlite3(&drop_the_guard_and_delete(&s, "A1"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    file(&s, "bob", "B1");
    let id = stdout(&s.sqlite3("SELECT id FROM erasure_requests WHERE external_ref = 'B1'"));
    assert_eq!(
        id.trim(),
        "2",
        "AUTOINCREMENT: id 1 is never handed out again"
    );
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let b1 = show(&s, "B1");
    assert_eq!(b1["state"], "complete");
    let ids: Vec<&str> = b1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["bob-1"]);
    let cert = s.forgetd(&["audit", "export", "--request", "2", "--json"]);
    assert!(!stdout(&cert).contains("alice-1"), "{}", stdout(&cert));
    assert!(sim.exists(C, "char-a", "carol-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_request_deleted_under_a_running_daemon_does_not_stop_deletion() {
    let s = fresh();
    let sim = sim().await;
    let t = now() - 86_400;
    sim.update_faults(|f| {
        f.auth_fail.insert(C);
    });
    let cfg = sim_config(&s, &sim, &[], "");
    chat(&s, &sim, "char-a", "alice-1", "alice", t);
    chat(&s, &sim, "char-a", "bob-1", "bob", t);
    file(&s, "alice", "A1");
    file(&s, "bob", "B1");
    assert_eq!(code(&run_once(&s, &cfg)), 1);
    let o = s.sqlite3(&drop_the_guard_and_delete(&s, "A1"));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    sim.update_faults(|f| f.auth_fail.clear());
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(state_of(&s, "B1"), "complete");
    assert!(!sim.exists(C, "char-a", "bob-1"));
}

#[test]
fn values_of_the_wrong_storage_class_are_refused_at_insert_by_name() {
    let s = Scratch::new();
    if !sqlite_only(&s, "a column's storage class") {
        return;
    }
    assert_eq!(code(&s.forgetd(&["status"])), 0);
    let cases = [
        (
            "INSERT INTO erasure_requests (subject) VALUES (x'616c696365')",
            "erasure_requests_subject_must_be_text",
        ),
        (
            "INSERT INTO erasure_requests (subject, external_ref) VALUES ('a', x'01')",
            "erasure_requests_external_ref_must_be_null_or_text",
        ),
        (
            "INSERT INTO erasure_requests (subject, received_at) VALUES ('a', 'yesterday')",
            "erasure_requests_received_at_must_be_unix_seconds",
        ),
        (
            "INSERT INTO erasure_requests (subject, due_at) VALUES ('a', 'tomorrow')",
            "erasure_requests_due_at_must_be_null_or_unix_seconds",
        ),
        (
            "INSERT INTO sessions (provider, scope, session_id) VALUES ('convai', 'c', x'6162')",
            "sessions_session_id_must_be_text",
        ),
        (
            "INSERT INTO sessions (provider, scope, session_id) VALUES ('convai', x'6162', 's')",
            "sessions_scope_must_be_text",
        ),
        (
            "INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', 's', x'6162')",
            "sessions_subject_must_be_null_or_text",
        ),
        (
            "INSERT INTO sessions (provider, scope, session_id, repo_id) VALUES ('koosearch', 'c', 's', x'6162')",
            "sessions_repo_id_must_be_null_or_text",
        ),
        (
            "INSERT INTO sessions (provider, scope, session_id, created_at) VALUES ('convai', 'c', 's', '2026-01-01')",
            "sessions_created_at_must_be_unix_seconds",
        ),
    ];
    let cases: Vec<(&str, String)> = cases
        .iter()
        .map(|(q, c)| (*q, format!("CHECK constraint failed: {c}")))
        .collect();
    assert_each_refused(|sql| s.sqlite3(sql), &cases);
    // An integer where text is meant is what the feeder means (affinity makes it text).
    let o = s.sqlite3("INSERT INTO sessions (provider, scope, session_id, subject) VALUES ('convai', 'c', 4711, 4711)");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // An UPDATE is held to the same rules.
    let o = s.sqlite3("UPDATE sessions SET subject = x'00' WHERE session_id = '4711'");
    assert!(stderr(&o).contains("sessions_subject_must_be_null_or_text"));
    let o = s.sqlite3("SELECT count(*) FROM erasure_requests");
    assert_eq!(stdout(&o).trim(), "0", "nothing half-valid entered");
    assert_eq!(code(&s.forgetd(&["status"])), 0);
}

/// Convai behind wiremock, answering every delete with `answer`.
async fn convai_answering(answer: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/character/chatHistory/delete"))
        .respond_with(answer)
        .mount(&server)
        .await;
    server
}

/// Alice's chat `s1` under character `c` (through the CLI) and her request `A1`.
fn alice_asks_about_one_chat(s: &Scratch) {
    let o = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "convai",
        "--scope",
        "c",
        "--id",
        "s1",
        "--subject",
        "alice",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    file(s, "alice", "A1");
}

fn convai_only_config(s: &Scratch, url: &str, extra: &str) -> std::path::PathBuf {
    let key = s.write("convai.key", "k");
    s.write(
        "c.toml",
        &format!(
            "{}[retry]\nbase_delay = \"10ms\"\nmax_delay = \"20ms\"\nmax_attempts = 3\n{extra}\n[providers.convai]\nbase_url = \"{url}\"\napi_key = \"file:{}\"\ntimeout = \"2s\"\n",
            s.database_toml(),
            key.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_that_is_not_the_documented_success_is_never_counted_as_deleted() {
    for body in [
        r#"{"error": "quota exceeded"}"#,
        r#"{"Error": "x"}"#,
        r#"{"status": "FAILED"}"#,
        "{}",
    ] {
        let s = fresh();
        let server = convai_answering(ResponseTemplate::new(200).set_body_string(body)).await;
        let cfg = convai_only_config(&s, &server.uri(), "");
        alice_asks_about_one_chat(&s);
        let o = run_once(&s, &cfg);
        assert_eq!(code(&o), 1, "{body}: {}", stderr(&o));
        assert_eq!(state_of(&s, "A1"), "failed", "{body}");
        let shown = show(&s, "A1");
        let item = &shown["items"][0];
        assert_eq!(item["state"], "dead", "{body}");
        assert_eq!(item["attempts"], 3, "{body}: retried, not counted");
        let err = item["last_error"].as_str().unwrap();
        assert!(
            err.contains(&body[..body.len().min(10)]),
            "{body}: the body is kept: {err}"
        );
        let deleted = stdout(&s.sqlite3("SELECT count(*) FROM work_items WHERE state = 'deleted'"));
        assert_eq!(deleted.trim(), "0", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_koosearch_lookup_that_is_not_a_listing_proves_nothing_after_a_partial_batch() {
    let s = Scratch::new();
    let server = MockServer::start().await;
    let app = "app-1";
    let project = "0123456789abcdef0123456789abcdef";
    let prefix = format!("/v1/{project}/applications/{app}/uni-search/chat-history");
    Mock::given(method("DELETE"))
        .and(path(format!("{prefix}/batch")))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(r#"{"total_count":2,"deleted_count":1}"#),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(prefix.clone()))
        .respond_with(ResponseTemplate::new(200).set_body_string("{}"))
        .mount(&server)
        .await;
    let token = s.write("token", "t");
    let cfg = s.write(
        "c.toml",
        &format!(
            "{}[retry]\nbase_delay = \"10ms\"\nmax_delay = \"20ms\"\nmax_attempts = 3\n[providers.koosearch]\nendpoint = \"{}\"\nproject_id = \"{project}\"\napplications = [\"{app}\"]\ndiscover_by_user_name = false\ntoken = \"file:{}\"\ntimeout = \"2s\"\n",
            s.database_toml(),
            server.uri(),
            token.display()
        ),
    );
    for id in ["k1", "k2"] {
        let o = s.forgetd(&[
            "sessions",
            "add",
            "--provider",
            "koosearch",
            "--scope",
            app,
            "--id",
            id,
            "--subject",
            "alice",
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    file(&s, "alice", "A1");
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let deleted = stdout(&s.sqlite3("SELECT count(*) FROM work_items WHERE state = 'deleted'"));
    assert_eq!(deleted.trim(), "0", "an empty object is not a listing");
    assert_eq!(state_of(&s, "A1"), "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_releases_the_run_that_was_shown_and_no_bigger_one() {
    let s = fresh();
    let sim = sim().await;
    let old = now() - 90 * 86_400;
    let cfg = sim_config(&s, &sim, &[], &rule_toml("r", "max_deletions = 2\n"));
    for i in 0..3 {
        chat(&s, &sim, "char-a", &format!("old-{i}"), "p", old);
    }
    chat(&s, &sim, "char-a", "young", "p", now() - 60); // decoy: not expired
    assert_eq!(code(&run_once(&s, &cfg)), 0, "a held run is a warning");
    assert_eq!(sim.remaining(C), 4, "held by its ceiling");
    assert_eq!(code(&s.forgetd(&["rules", "approve", "r"])), 0);
    // Between the approval and the next run, 50 more chats expire: the run waits again.
    let mut sql = String::new();
    for i in 3..53 {
        sim.add_convai_chat("char-a", &format!("old-{i}"), old);
        sql.push_str(&format!(
            "INSERT INTO sessions (provider, scope, session_id, created_at) VALUES ('convai', 'char-a', 'old-{i}', {old});"
        ));
    }
    assert_eq!(code(&s.sqlite3(&sql)), 0);
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        sim.remaining(C),
        54,
        "an approval of 3 released nothing of 53"
    );
    let rules: serde_json::Value =
        serde_json::from_str(&stdout(&s.forgetd(&["rules", "list", "--json"]))).unwrap();
    assert_eq!(rules[0]["awaiting_matched"], 53, "{rules}");
    assert_eq!(code(&s.forgetd(&["rules", "approve", "r"])), 0);
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sim.remaining(C), 1);
    assert!(sim.exists(C, "char-a", "young"));
    assert!(!named(&sim, "char-a", "young"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_the_cap_pauses_the_provider_instead_of_freezing_it() {
    for header in ["315360000", "Fri, 31 Dec 9999 23:59:59 GMT"] {
        let s = fresh();
        let server = convai_answering(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", header)
                .set_body_string(
                    r#"{"ERROR": "API rate limit exceeded. Please try again later."}"#,
                ),
        )
        .await;
        let cfg = convai_only_config(&s, &server.uri(), "max_retry_after = \"10m\"");
        alice_asks_about_one_chat(&s);
        let started = std::time::Instant::now();
        let o = run_once(&s, &cfg);
        assert_eq!(code(&o), 1, "{header}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("retry.max_retry_after"),
            "{header}: {}",
            stderr(&o)
        );
        // Not a timing assertion: a frozen lane would not have returned at all.
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        let st: serde_json::Value =
            serde_json::from_str(&stdout(&s.forgetd(&["status", "--json"]))).unwrap();
        assert!(
            st["paused_providers"].to_string().contains("Retry-After"),
            "{header}: status shows the pause: {st}"
        );
        assert_eq!(state_of(&s, "A1"), "in_progress");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_overlong_convai_id_in_a_listing_does_not_fail_the_rule() {
    let s = fresh();
    let sim = sim().await;
    let old = now() - 90 * 86_400;
    let cfg = sim_config(&s, &sim, &[], &rule_toml("r", "discover = true\n"));
    let long = "é".repeat(65);
    sim.add_convai_chat("char-a", &long, old);
    sim.add_convai_chat("char-a", "listed-only", old);
    // 64 characters (128 bytes in UTF-8) is a valid ID: counted in characters, as the schema does.
    let sixty_four = "é".repeat(64);
    sim.add_convai_chat("char-a", &sixty_four, old);
    sim.add_convai_chat("char-b", "other-character", old); // decoy
    let o = run_once(&s, &cfg);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!sim.exists(C, "char-a", "listed-only"));
    assert!(!sim.exists(C, "char-a", &sixty_four));
    assert!(
        sim.exists(C, "char-a", &long),
        "an invalid ID is never sent"
    );
    assert!(sim.exists(C, "char-b", "other-character"));
}

#[test]
fn a_schedule_that_never_fires_is_refused() {
    let s = Scratch::new();
    let o = s.forgetd(&[
        "rules",
        "add",
        "never",
        "--provider",
        "convai",
        "--scope",
        "c",
        "--max-age",
        "30d",
        "--schedule",
        "0 3 30 2 *",
    ]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("never fires"), "{}", stderr(&o));
    let cfg = unreachable_convai_config(
        &s,
        "[[rules]]\nname = \"never\"\nprovider = \"convai\"\nscope = \"c\"\nmax_age = \"30d\"\nschedule = \"0 3 30 2 *\"\n",
    );
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "check-config"]);
    assert_eq!(code(&o), 78, "{}", stderr(&o));
    assert!(stderr(&o).contains("never fires"), "{}", stderr(&o));
}

#[test]
fn an_audit_key_that_is_a_link_readable_by_others_or_short_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    if !sqlite_only(&s, "the audit key generated beside the database file") {
        return;
    }
    let key = forgetd::audit::SubjectKey::key_path(&s.db());
    let victim = s.path("victim");
    std::fs::write(&victim, [7u8; 40]).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&victim, &key).unwrap();
    let cfg = unreachable_convai_config(&s, "");
    let run = || s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    let o = run();
    assert_eq!(code(&o), 78);
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, [7u8; 40]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run();
    assert_eq!(code(&o), 78);
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    std::fs::write(&key, [7u8; 1]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = run();
    assert_eq!(code(&o), 78);
    assert!(stderr(&o).contains("too short"), "{}", stderr(&o));
    // A binary key of 32 random bytes (not UTF-8) is a good key.
    let mut bytes = [0xffu8; 32];
    bytes[0] = 0xc3;
    std::fs::write(&key, bytes).unwrap();
    let o = run();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        [7u8; 40],
        "the link's target is untouched"
    );
}

#[test]
fn a_version_1_database_with_live_work_migrates_keeping_every_row() {
    let s = Scratch::new();
    if !sqlite_only(&s, "the schema of version 1") {
        return;
    }
    let v1 = include_str!("../src/store/migrations/001_init.sql");
    // (A leading newline: sqlite3 would read an argument starting with "--" as an option.)
    let seed = format!(
        "\n{v1}
         INSERT INTO sessions (provider, scope, session_id, subject, created_at)
           VALUES ('convai', 'c', 's1', 'alice', 100), ('convai', 'c', 's2', x'626f62', 100);
         INSERT INTO erasure_requests (subject, external_ref, received_at) VALUES ('alice', 'A1', 100);
         INSERT INTO erasure_requests (subject, external_ref, received_at) VALUES (x'626f62', 'B1', 100);
         INSERT INTO work_items (provider, scope, session_id, due_at, created_at) VALUES ('convai', 'c', 's1', 200, 100);
         INSERT INTO request_items (request_id, item_id) VALUES (1, 1);
         UPDATE erasure_requests SET state = 'in_progress', due_at = 200 WHERE id = 1;
         PRAGMA user_version = 1;"
    );
    let o = s.sqlite3(&seed);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let q = |sql: &str| stdout(&s.sqlite3(sql)).trim().to_string();
    assert_eq!(
        q("PRAGMA user_version"),
        forgetd::store::SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        q("SELECT group_concat(key, ',') FROM (SELECT key FROM providers ORDER BY key)"),
        "convai,koosearch",
        "the schema accepts exactly the registered providers"
    );
    assert_eq!(
        q(
            "SELECT id || ':' || provider || ':' || due_at || ':' || created_at || ':' || state FROM work_items"
        ),
        "1:convai:200:100:pending",
        "the rebuilt work_items kept the row, its id and its columns"
    );
    assert_eq!(
        q(
            "SELECT group_concat(id || ':' || subject || ':' || typeof(subject), ',') FROM erasure_requests"
        ),
        "1:alice:text,2:bob:text",
        "rows kept, the BLOB subject read as the text it encoded"
    );
    assert_eq!(
        q("SELECT typeof(subject) FROM sessions WHERE session_id = 's2'"),
        "text"
    );
    assert_eq!(
        q("SELECT subject FROM work_items WHERE session_id = 's1'"),
        "alice"
    );
    assert_eq!(
        q("SELECT count(*) FROM request_items WHERE request_id = 1"),
        "1"
    );
    assert_eq!(q("PRAGMA foreign_key_check"), "");
    // The next request gets a fresh id, and the new rules hold.
    let o = s.forgetd(&["erase", "--subject", "carol"]);
    assert_eq!(stdout(&o).trim(), "3");
    let o = s.sqlite3("DELETE FROM erasure_requests WHERE id = 1");
    assert!(
        stderr(&o).contains("requests are records"),
        "{}",
        stderr(&o)
    );
}
