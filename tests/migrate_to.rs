//! `forgetd migrate-to URL`: a half-drained SQLite queue moved to PostgreSQL keeps every id, ref,
//! state, hold and rule; its audit chain verifies there with the same key and head; the same
//! certificate comes out of both; the drain finishes on PostgreSQL; new requests never reuse an
//! id; a second move into the now-used database is refused, and so is a move while a daemon
//! works the source.
//!
//! Needs a PostgreSQL server (`FORGETD_TEST_PG`; SKIP without it).

mod common;
use common::*;

use std::sync::Arc;

use forgetd::clock::SystemClock;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};

fn json(o: &std::process::Output) -> serde_json::Value {
    assert_eq!(code(o), 0, "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_queue_moves_to_postgresql_whole_and_goes_on_there() {
    if pg::server().is_none() {
        return;
    }
    let target = pg::TestDb::create();
    let s = Scratch {
        dir: tempfile::tempdir().unwrap(),
        pg: None,
    };
    let sim = Simulator::start(Arc::new(SystemClock), Faults::default(), 5)
        .await
        .unwrap();
    for (ch, id) in [
        ("char-a", "a1"),
        ("char-b", "a2"),
        ("char-a", "b1"),
        ("char-c", "c1"),
    ] {
        sim.add_convai_chat(ch, id, 1_700_000_000);
    }
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    let cfg = cfg.to_str().unwrap();
    let import = s.write(
        "inv.csv",
        "provider,scope,session_id,subject\nconvai,char-a,a1,alice\nconvai,char-b,a2,alice\nconvai,char-a,b1,bob\nconvai,char-c,c1,carol\n",
    );
    assert_eq!(
        code(&s.forgetd(&["sessions", "import", import.to_str().unwrap()])),
        0
    );
    assert_eq!(
        code(&s.forgetd(&["holds", "add", "--subject", "bob", "--reason", "litigation"])),
        0
    );
    s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1')");
    let o = s.forgetd(&["--config", cfg, "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Half-drained: alice done, bob's request held, carol's filed after the drain.
    s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('bob', 'DSR-2')");
    let o = s.forgetd(&["--config", cfg, "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('carol', 'DSR-3')");
    // A daemon working the source: the move waits for it to stop (exit 75).
    // READY=1 comes after the lock is taken; a probing `run --once` would race the daemon for
    // it (and the daemon, losing, exits 75 itself).
    let mut ready = notify::Notify::new(&s, "notify.sock");
    let mut daemon = std::process::Command::new(BIN)
        .args(["--config", cfg, "run"])
        .env("NOTIFY_SOCKET", &ready.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        ready.wait_for("READY=1").await,
        "the daemon never became ready"
    );
    assert_eq!(
        s.forgetd(&["--config", cfg, "run", "--once"]).status.code(),
        Some(75),
        "a second run while the daemon holds the lock"
    );
    let o = s.forgetd(&["--config", cfg, "migrate-to", &target.url]);
    assert_eq!(code(&o), 75, "{}", stderr(&o));
    let _ = daemon.kill();
    let _ = daemon.wait();

    // What the source holds as it moves (the daemon appended to its chain meanwhile).
    let requests_before = json(&s.forgetd(&["requests", "list", "--json"]));
    let alice_id = requests_before[0]["id"].to_string();
    let cert_before = json(&s.forgetd(&[
        "--config",
        cfg,
        "audit",
        "export",
        "--request",
        &alice_id,
        "--json",
    ]));
    let verify_before = json(&s.forgetd(&["--config", cfg, "audit", "verify", "--json"]));

    let o = s.forgetd(&["--config", cfg, "migrate-to", &target.url]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("audit chain verified on the target"), "{out}");
    assert!(out.contains(&format!("url = \"{}\"", target.url)), "{out}");
    // Moving again into the database now in use is refused, and changes nothing.
    let o = s.forgetd(&["--config", cfg, "migrate-to", &target.url]);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("already holds forgetd data"),
        "{}",
        stderr(&o)
    );

    // The same queue on PostgreSQL: the config switched as migrate-to printed.
    let text = std::fs::read_to_string(cfg).unwrap();
    let db_line = format!("path = \"{}\"", s.db().display());
    assert!(text.contains(&db_line));
    let pg_cfg = s.write(
        "pg.toml",
        &text.replace(
            &db_line,
            &format!(
                "url = \"{}\"\n\n[audit]\nsubject_key = \"file:{}.audit-key\"\nsigning_key = \"file:{}.signing-key\"",
                target.url,
                s.db().display(),
                s.db().display()
            ),
        ),
    );
    let pg_cfg = pg_cfg.to_str().unwrap();
    let on_pg = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["--config", pg_cfg])
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        json(&on_pg(&["requests", "list", "--json"])),
        requests_before
    );
    let verify_after = json(&on_pg(&["audit", "verify", "--json"]));
    assert_eq!(verify_after["head"], verify_before["head"]);
    assert_eq!(verify_after["events"], verify_before["events"]);
    assert!(verify_after["broken"].is_null(), "{verify_after}");
    assert_eq!(
        json(&on_pg(&[
            "audit",
            "export",
            "--request",
            &alice_id,
            "--json"
        ])),
        cert_before,
        "the same certificate from both engines"
    );
    let holds = json(&on_pg(&["holds", "list", "--json"]));
    assert_eq!(holds.as_array().unwrap().len(), 1, "{holds}");

    // The drain goes on there: carol's request completes, bob's chat stays held.
    let o = on_pg(&["run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!sim.exists(ProviderKind::CONVAI, "char-c", "c1"));
    assert!(
        sim.exists(ProviderKind::CONVAI, "char-a", "b1"),
        "the held chat stays"
    );
    // A new filing takes a fresh id, above every moved one.
    let o = target.psql(
        "INSERT INTO erasure_requests(subject, external_ref) VALUES ('dave', 'DSR-4') RETURNING id",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let new_id: i64 = stdout(&o).lines().next().unwrap().trim().parse().unwrap();
    let max_moved = requests_before
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .max()
        .unwrap();
    assert!(
        new_id > max_moved,
        "id {new_id} reuses or precedes {max_moved}"
    );
}
