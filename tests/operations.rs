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
