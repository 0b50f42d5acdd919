//! The SPEC's feeder contract, driven through the real binary and Debian's sqlite3 (3.40): the
//! schema must work for a feeder on an older SQLite, with foreign keys off, refusing bad rows at
//! INSERT with a message that says what is wrong.

mod common;
use common::*;

fn init(s: &Scratch) {
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// The spelling for this test's engine, where SQLite's and PostgreSQL's differ (a BLOB literal,
/// a function one of them lacks, the engine's own words for a type it enforces).
fn pick<'a>(s: &Scratch, sqlite: &'a str, postgres: &'a str) -> &'a str {
    if s.on_pg() { postgres } else { sqlite }
}

#[test]
fn feeder_sqlite3_is_debian_3_40_or_newer() {
    let o = std::process::Command::new("sqlite3")
        .arg("--version")
        .output()
        .unwrap();
    let v = stdout(&o);
    assert!(v.starts_with("3."), "{v}");
}

#[test]
fn a_plain_insert_with_only_contract_columns_works_through_sqlite3() {
    let s = Scratch::new();
    init(&s);
    let o = s.sqlite3(
        "INSERT INTO sessions(provider, scope, session_id, subject) VALUES ('convai', 'char-1', 'abc123', 'alice');
         INSERT INTO sessions(provider, scope, session_id, subject, repo_id, created_at) VALUES ('koosearch', 'app-1', 'chat_1-x', 'alice', 'kb-1', 1700000000);
         INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1');
         INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1') ON CONFLICT(external_ref) DO NOTHING;
         SELECT count(*), min(state), CASE WHEN min(received_at) > 1700000000 THEN 1 ELSE 0 END FROM erasure_requests;",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "1|received|1");
    // the daemon's view agrees
    let o = s.forgetd(&["requests", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["external_ref"], "DSR-1");
    assert_eq!(v[0]["state"], "received");
    assert!(v[0]["id"].as_i64().is_some());
}

#[test]
fn a_plain_insert_of_an_existing_ref_fails_on_unique() {
    let s = Scratch::new();
    init(&s);
    s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('a', 'R');");
    let o = s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('a', 'R');");
    assert_ne!(code(&o), 0);
    // Each engine's own words, naming the column (SQLite) or its constraint (PostgreSQL).
    let unique = pick(
        &s,
        "UNIQUE constraint failed: erasure_requests.external_ref",
        "erasure_requests_external_ref_key",
    );
    assert!(stderr(&o).contains(unique), "{}", stderr(&o));
}

/// Each kind of bad row is refused at INSERT, and the message names the rule broken.
#[test]
fn each_kind_of_bad_row_is_refused_with_its_message() {
    let s = Scratch::new();
    init(&s);
    let cases = [
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('openai', 'c', 's')",
            "sessions_provider_must_be_a_key_of_providers: SELECT key FROM providers",
        ),
        (
            pick(
                &s,
                "INSERT INTO sessions(provider, scope, session_id) VALUES (CAST('convai' AS BLOB), 'c', 's')",
                "INSERT INTO sessions(provider, scope, session_id) VALUES ('\\x636f6e766169'::bytea, 'c', 's')",
            ),
            // bytes are not the key 'convai' (PostgreSQL stores their hex spelling as the text):
            // the trigger refuses before the CHECK is reached
            "sessions_provider_must_be_a_key_of_providers",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', 'moved');
             UPDATE sessions SET provider = 'openai' WHERE session_id = 'moved'",
            "sessions_provider_must_be_a_key_of_providers",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', '')",
            "sessions_session_id_must_be_1_to_64_chars",
        ),
        (
            pick(
                &s,
                "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', printf('%.65c', 'x'))",
                "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', repeat('x', 65))",
            ),
            "sessions_session_id_must_be_1_to_64_chars",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', '', 's')",
            "sessions_scope_must_be_1_to_64_chars_and_not_star",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('koosearch', 'app', 'bad id')",
            "sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('koosearch', 'app/x', 'ok')",
            "sessions_koosearch_ids_must_be_A_Z_a_z_0_9_underscore_dash",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, subject) VALUES ('convai', 'c', 's', '   ')",
            "sessions_subject_must_be_null_or_not_blank",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, repo_id) VALUES ('convai', 'c', 's', 'kb')",
            "sessions_repo_id_only_for_koosearch",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, created_at) VALUES ('convai', 'c', 's', '2024-01-01')",
            // a type the column enforces: PostgreSQL's own words (a documented difference)
            pick(
                &s,
                "sessions_created_at_must_be_unix_seconds",
                "invalid input syntax for type bigint",
            ),
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id, created_at) VALUES ('convai', 'c', 's', -5)",
            "sessions_created_at_must_be_unix_seconds",
        ),
        (
            "INSERT INTO sessions(provider, scope, session_id) VALUES ('convai', 'c', '-1')",
            "sessions_convai_session_id_minus_1_means_new_session_not_a_chat",
        ),
        (
            "INSERT INTO erasure_requests(subject) VALUES ('')",
            "erasure_requests_subject_must_not_be_blank",
        ),
        (
            "INSERT INTO erasure_requests(subject, state) VALUES ('a', 'complete')",
            "state and progress columns are set by forgetd",
        ),
        (
            "INSERT INTO erasure_requests(subject, received_at) VALUES ('a', 'yesterday')",
            pick(
                &s,
                "erasure_requests_received_at_must_be_unix_seconds",
                "invalid input syntax for type bigint",
            ),
        ),
    ];
    assert_each_refused(|sql| s.sqlite3(sql), &cases);
    // The one valid row (the UPDATE's target) kept its provider; nothing else got in.
    let o = s.sqlite3(
        "SELECT (SELECT count(*) FROM sessions WHERE NOT (session_id = 'moved' AND provider = 'convai'))
              + (SELECT count(*) FROM erasure_requests)",
    );
    assert_eq!(
        stdout(&o).trim(),
        "0",
        "nothing half-valid entered the queue"
    );
}

#[test]
fn hostile_content_is_stored_verbatim() {
    let s = Scratch::new();
    init(&s);
    let evil = "x'); DROP TABLE sessions; --\u{7}\t";
    let o = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "convai",
        "--scope",
        "c",
        "--id",
        evil,
        "--subject",
        "Robert'); DROP TABLE erasure_requests;--",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.sqlite3("SELECT session_id, subject FROM sessions");
    assert!(stdout(&o).contains("DROP TABLE sessions"), "{}", stdout(&o));
    let o = s.forgetd(&[
        "erase",
        "--subject",
        "Robert'); DROP TABLE erasure_requests;--",
        "--ref",
        "r'1",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn filing_the_same_ref_twice_yields_one_request() {
    let s = Scratch::new();
    let a = s.forgetd(&["erase", "--subject", "alice", "--ref", "DSR-7"]);
    let b = s.forgetd(&["erase", "--subject", "alice", "--ref", "DSR-7"]);
    assert_eq!(code(&a), 0, "{}", stderr(&a));
    assert_eq!(code(&b), 0);
    assert_eq!(stdout(&a), stdout(&b));
    assert!(
        stdout(&a).trim().parse::<i64>().is_ok(),
        "prints the id alone: {:?}",
        stdout(&a)
    );
    let j = s.forgetd(&["erase", "--subject", "alice", "--ref", "DSR-7", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&j)).unwrap();
    assert_eq!(v["id"].to_string(), stdout(&a).trim());
    assert_eq!(v["external_ref"], "DSR-7");
    assert_eq!(v["state"], "received");
    let o = s.sqlite3("SELECT count(*) FROM erasure_requests");
    assert_eq!(stdout(&o).trim(), "1");
}

#[test]
fn database_files_are_group_shared_never_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    let nested = s.path("state").join("forgetd.db");
    let status = || {
        std::process::Command::new(BIN)
            .arg("--db")
            .arg(&nested)
            .arg("status")
            .output()
            .unwrap()
    };
    // A missing directory is not created: a typo must not answer "empty" (exit 1, named).
    let o = status();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!nested.parent().unwrap().exists());
    std::fs::create_dir(nested.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        nested.parent().unwrap(),
        std::fs::Permissions::from_mode(0o2770),
    )
    .unwrap();
    let o = status();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&nested), 0o660);
}

#[test]
fn import_rejects_the_whole_file_on_a_bad_line_and_counts_known_chats() {
    let s = Scratch::new();
    let good = s.write(
        "good.csv",
        "provider,scope,session_id,subject,created_at\nconvai,c,s1,alice,100\nconvai,c,s2,,\n",
    );
    let o = s.forgetd(&["sessions", "import", good.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("imported 2 chats (0 already known"),
        "{}",
        stdout(&o)
    );
    let jsonl = s.write(
        "more.jsonl",
        "{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"s1\"}\n{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"s3\"}\n{\"provider\":\"koosearch\",\"scope\":\"app\",\"session_id\":\"no spaces\"}\n",
    );
    let o = s.forgetd(&["sessions", "import", jsonl.to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("line 3"), "{}", stderr(&o));
    let o = s.sqlite3("SELECT count(*) FROM sessions");
    assert_eq!(
        stdout(&o).trim(),
        "2",
        "nothing from the bad file was imported"
    );
    // stdin works too, and a known chat is skipped and counted
    let mut child = std::process::Command::new(BIN)
        .arg("--db")
        .arg(s.db_arg())
        .args(["sessions", "import", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"provider,scope,session_id\nconvai,c,s1\nconvai,c,s9\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        stdout(&o).contains("imported 1 chats (1 already known"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn unknown_request_id_is_a_runtime_failure() {
    let s = Scratch::new();
    let o = s.forgetd(&["requests", "show", "999"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no erasure request with id 999"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    assert_eq!(code(&s.forgetd(&["erase"])), 2);
    assert_eq!(code(&s.forgetd(&["holds", "add", "--reason", "x"])), 2);
    assert_eq!(
        code(&s.forgetd(&[
            "sessions",
            "add",
            "--provider",
            "openai",
            "--scope",
            "c",
            "--id",
            "s"
        ])),
        2
    );
}

/// A time with an offset names the same moment as its UTC spelling, in `sessions add` and in both
/// import formats; a time that is not one is refused with the line it is on.
#[test]
fn times_with_offsets_are_read_as_the_moment_they_name_everywhere() {
    let s = Scratch::new();
    let add = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "convai",
        "--scope",
        "c",
        "--id",
        "a1",
        "--created-at",
        "2026-01-01T01:00:00+01:00",
    ]);
    assert_eq!(code(&add), 0, "{}", stderr(&add));
    let csv = s.write(
        "t.csv",
        "provider,scope,session_id,created_at\nconvai,c,c1,2025-12-31T19:00:00-05:00\nconvai,c,c2,1767225600\n",
    );
    let o = s.forgetd(&["sessions", "import", csv.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let jsonl = s.write(
        "t.jsonl",
        "{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"j1\",\"created_at\":\"2026-01-01T00:00:00Z\"}\n{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"j2\",\"created_at\":1767225600}\n",
    );
    let o = s.forgetd(&["sessions", "import", jsonl.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let rows = stdout(&s.sqlite3(pick(
        &s,
        "SELECT group_concat(session_id || '=' || created_at, ',') FROM (SELECT * FROM sessions ORDER BY session_id)",
        "SELECT string_agg(session_id || '=' || created_at, ',' ORDER BY session_id) FROM sessions",
    )));
    assert_eq!(
        rows.trim(),
        "a1=1767225600,c1=1767225600,c2=1767225600,j1=1767225600,j2=1767225600"
    );
    let bad = s.write(
        "bad.csv",
        "provider,scope,session_id,created_at\nconvai,c,b1,1767225600\nconvai,c,b2,soon\n",
    );
    let o = s.forgetd(&["sessions", "import", bad.to_str().unwrap()]);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("line 3") && stderr(&o).contains("not a time"),
        "{}",
        stderr(&o)
    );
    let o = s.forgetd(&[
        "sessions",
        "add",
        "--provider",
        "convai",
        "--scope",
        "c",
        "--id",
        "x",
        "--created-at",
        "1969-12-31T23:00:00Z",
    ]);
    assert_eq!(
        code(&o),
        2,
        "a bad value given on the command line is a usage error"
    );
    assert!(stderr(&o).contains("before 1970"), "{}", stderr(&o));
}
