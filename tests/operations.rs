//! What an operator does around the daemon: backups while it runs, logging settings checked
//! before anything starts.

mod common;
use common::*;

#[test]
fn a_backup_while_a_feeder_writes_is_whole_checked_and_never_overwrites() {
    let s = Scratch::new();
    assert_eq!(code(&s.forgetd(&["status"])), 0);
    // The daemon's own connection stays open meanwhile, so recent commits sit in -wal (as in
    // production) and the main file alone lags behind.
    let live = rusqlite::Connection::open(s.db()).unwrap();
    live.execute_batch(
        "PRAGMA wal_autocheckpoint = 0;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1999)
         INSERT INTO sessions (provider, scope, session_id, subject)
         SELECT 'convai', 'c', 's' || i, 'p' || i FROM n;
         INSERT INTO erasure_requests (subject, external_ref) VALUES ('p1', 'R1');",
    )
    .unwrap();
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "p2", "--ref", "R2"])),
        0
    );
    // The naive copy of the file alone, for contrast: it misses what is still in -wal.
    let naive = s.path("naive.db");
    std::fs::copy(s.db(), &naive).unwrap();
    let naive_count = sqlite3(&naive, "SELECT count(*) FROM sessions");
    let backup = s.path("backup.db");
    let o = s.forgetd(&["backup", backup.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("integrity ok, audit chain intact"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        stdout(&sqlite3(&backup, "SELECT count(*) FROM sessions")).trim(),
        "2000"
    );
    assert_eq!(
        stdout(&sqlite3(&backup, "SELECT count(*) FROM erasure_requests")).trim(),
        "2"
    );
    assert_ne!(
        stdout(&naive_count).trim(),
        "2000",
        "the naive copy was complete: the WAL was checkpointed, so this test proves nothing"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a backup holds personal data");
    let again = s.forgetd(&["backup", backup.to_str().unwrap()]);
    assert_eq!(code(&again), 1);
    assert_eq!(
        stdout(&sqlite3(&backup, "SELECT count(*) FROM sessions")).trim(),
        "2000"
    );
    drop(live);
}

#[test]
fn a_backup_killed_halfway_leaves_no_file_under_its_name() {
    let s = Scratch::new();
    assert_eq!(code(&s.forgetd(&["status"])), 0);
    // Big enough that the copy takes many steps (256 pages each, 5 ms apart).
    let o = s.sqlite3(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 199999)
         INSERT INTO sessions (provider, scope, session_id, subject)
         SELECT 'convai', 'c', 's' || i, printf('%.100c', 'p') || i FROM n;",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let backup = s.path("backup.db");
    let mut child = std::process::Command::new(BIN)
        .arg("--db")
        .arg(s.db())
        .args(["backup", backup.to_str().unwrap()])
        .spawn()
        .unwrap();
    // SIGKILL as soon as the copy is being written.
    let started = std::time::Instant::now();
    let partial = loop {
        let found = std::fs::read_dir(s.dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".backup.db.partial-"))
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the copy never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::symlink_metadata(&backup).is_err(),
        "a killed backup left a file under the backup's name"
    );
    // The next backup to that name is whole; the killed one's leftover is named as partial.
    let o = s.forgetd(&["backup", backup.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        stdout(&sqlite3(&backup, "SELECT count(*) FROM sessions")).trim(),
        "200000"
    );
    assert!(
        partial
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("partial")
    );
}

#[test]
fn an_invalid_log_setting_is_a_configuration_error_naming_it() {
    let s = Scratch::new();
    for (var, value) in [("FORGETD_LOG", "verbose=="), ("FORGETD_LOG_FORMAT", "xml")] {
        let o = std::process::Command::new(BIN)
            .args(["--db", s.db().to_str().unwrap(), "status"])
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(code(&o), 78, "{var}={value}: {}", stderr(&o));
        assert!(stderr(&o).contains(var), "{}", stderr(&o));
    }
    // A valid one still works, and an unknown level word is refused rather than silencing all.
    let o = std::process::Command::new(BIN)
        .args(["--db", s.db().to_str().unwrap(), "status"])
        .env("FORGETD_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(code(&o), 78, "{}", stderr(&o));
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let s = Scratch::new();
    assert_eq!(code(&s.forgetd(&["status"])), 0);
    for i in 0..300 {
        let o = s.forgetd(&["erase", "--subject", &format!("p{i}")]);
        if i == 0 {
            assert_eq!(code(&o), 0, "{}", stderr(&o));
        }
    }
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} --db {} requests list --json | head -c 10 >/dev/null",
            s.db().display()
        ))
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    assert!(
        !stderr(&o).contains("panicked") && !stderr(&o).contains("Broken pipe"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn requests_show_json_names_each_key_once() {
    let s = Scratch::new();
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "alice", "--ref", "R1"])),
        0
    );
    let o = s.forgetd(&["requests", "show", "1", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).matches("\"items\"").count(), 1, "{}", stdout(&o));
}

#[test]
fn erase_refuses_a_ref_filed_for_another_subject_and_says_when_a_request_existed() {
    let s = Scratch::new();
    let first = s.forgetd(&["erase", "--subject", "alice", "--ref", "R1", "--json"]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let v: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    assert_eq!(v["existed"], false);
    let again = s.forgetd(&["erase", "--subject", "alice", "--ref", "R1", "--json"]);
    assert_eq!(code(&again), 0);
    let w: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(
        (w["existed"].clone(), w["id"].clone()),
        (true.into(), v["id"].clone())
    );
    let other = s.forgetd(&["erase", "--subject", "bob", "--ref", "R1"]);
    assert_eq!(code(&other), 1, "{}", stderr(&other));
    assert!(
        stderr(&other).contains("for another subject"),
        "{}",
        stderr(&other)
    );
    assert_eq!(
        stdout(&s.sqlite3("SELECT count(*) FROM erasure_requests")).trim(),
        "1"
    );
}

#[test]
fn audit_export_refuses_a_broken_record_unless_forced() {
    let s = Scratch::new();
    assert_eq!(
        code(&s.forgetd(&["erase", "--subject", "nobody-known", "--ref", "R1"])),
        0
    );
    let cfg = unreachable_convai_config(&s, "");
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let export = |force: bool| {
        let mut a = vec!["audit", "export", "--request", "1"];
        if force {
            a.push("--force");
        }
        s.forgetd(&a)
    };
    assert_eq!(code(&export(false)), 0, "{}", stderr(&export(false)));
    // The append-only triggers dropped: nothing edited yet, but nothing prevents it either.
    assert_eq!(
        code(&s.sqlite3("DROP TRIGGER audit_log_is_append_only_no_update;")),
        0
    );
    let o = export(false);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("append-only triggers are missing"),
        "{}",
        stderr(&o)
    );
    // And an edited link: named, and a forced certificate says BROKEN first.
    assert_eq!(
        code(&s.sqlite3("UPDATE audit_log SET data = '{}' WHERE seq = 1;")),
        0
    );
    let o = export(false);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("broken at event 1"), "{}", stderr(&o));
    let o = export(true);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("BROKEN"), "{}", stdout(&o));
}

#[test]
fn holds_list_counts_the_chats_a_subject_hold_covers_queued_or_not() {
    let s = Scratch::new();
    for (id, subject) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
        s.add_chat("convai", "char", id, subject);
    }
    let held = s.forgetd(&["holds", "add", "--subject", "alice", "--reason", "lit"]);
    assert_eq!(code(&held), 0, "{}", stderr(&held));
    // Nothing is queued yet (no request): the hold still covers alice's two chats, not bob's.
    let o = s.forgetd(&["holds", "list"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("subject alice")
            && stdout(&o).contains("covers 2 known chat(s), holding 0 queued item(s)"),
        "{}",
        stdout(&o)
    );
    let j = s.forgetd(&["holds", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&j)).unwrap();
    assert_eq!(v[0]["chats_covered"], 2, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_on_a_terminal_shows_progress_then_a_summary() {
    use forgetd::simulator::{Faults, Simulator};
    let s = Scratch::new();
    // Slow enough answers that the drain takes a few seconds: the line is redrawn meanwhile.
    let sim = Simulator::start(
        std::sync::Arc::new(forgetd::clock::SystemClock),
        Faults {
            latency: std::time::Duration::from_millis(300),
            ..Faults::default()
        },
        1,
    )
    .await
    .unwrap();
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[providers.convai]\n",
        "[providers.convai]\nbatch_size = 2\nconcurrency = 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    for i in 0..20 {
        sim.add_convai_chat("char-1", &format!("c{i}"), 1_700_000_000);
        s.add_chat("convai", "char-1", &format!("c{i}"), "alice");
    }
    sim.add_convai_chat("char-1", "decoy", 1_700_000_000);
    s.add_chat("convai", "char-1", "decoy", "bob");
    assert_eq!(code(&s.forgetd(&["erase", "--subject", "alice"])), 0);
    let cfg = cfg.to_str().unwrap().to_string();
    // Under a pseudo-terminal (util-linux `script`), as an operator at a shell would see it.
    let (code_, screen) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        let db = s.db();
        move || {
            let line = format!(
                "'{BIN}' --config '{cfg}' --db '{}' run --once",
                db.display()
            );
            let o = std::process::Command::new("script")
                .args(["-q", "-e", "-c", &line, "/dev/null"])
                .env("COLUMNS", "200")
                .output()
                .expect("script (util-linux)");
            (code(&o), stdout(&o))
        }
    })
    .await
    .unwrap();
    assert_eq!(code_, 0, "{screen}");
    assert!(
        screen.contains("item(s) left"),
        "no progress line: {screen}"
    );
    assert!(screen.contains("/s, ETA "), "no rate and ETA: {screen}");
    assert!(
        screen.contains("deleted 20, held 0, dead 0, pending 0"),
        "{screen}"
    );
    assert!(
        screen.contains("took ") && screen.contains("(deleted convai 20,"),
        "{screen}"
    );
    assert_eq!(
        sim.remaining(forgetd::model::ProviderKind::CONVAI),
        1,
        "the decoy stays"
    );
    // Off a terminal (a pipe, a log): the summary only, no progress line.
    let o = s.forgetd(&["--config", &cfg, "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("left") && !stdout(&o).contains("left"));
    assert!(stdout(&o).contains("nothing deleted"), "{}", stdout(&o));
}
