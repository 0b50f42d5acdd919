//! The real binary as systemd runs it: READY=1 over NOTIFY_SOCKET, an erasure request inserted
//! with plain SQL picked up and carried out at the simulator, STOPPING=1 and exit 0 on SIGTERM,
//! SIGHUP with a good and a bad config, a second daemon refused with 75, and a SIGKILL while the
//! simulator holds an answer back.

mod common;
use common::notify::Notify;
use common::*;

use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, Simulator};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

fn daemon(cfg: &std::path::Path, notify: Option<&Notify>) -> Child {
    // Through a shell that execs the binary, so WATCHDOG_PID can name the daemon's own pid as
    // systemd sets it (sd_notify honours WATCHDOG_USEC only for that pid).
    let mut c = Command::new("sh");
    c.args([
        "-c",
        "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
        BIN,
        "--config",
        cfg.to_str().unwrap(),
        "run",
    ])
    .env("FORGETD_LOG", "info")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    if let Some(n) = notify {
        // As systemd passes them for a unit with WatchdogSec=2s.
        c.env("NOTIFY_SOCKET", &n.path)
            .env("WATCHDOG_USEC", "2000000");
    }
    c.spawn().unwrap()
}

/// Waits for a signalled daemon to exit, asserts it exited 0, and returns its log.
async fn stopped(child: Child) -> String {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the daemon did not stop in time")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    let st = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

async fn seeded_sim() -> Simulator {
    let sim = Simulator::start(std::sync::Arc::new(SystemClock), Faults::default(), 1)
        .await
        .unwrap();
    sim.add_convai_chat("char-a", "alice-1", 1_700_000_000);
    sim.add_convai_chat("char-a", "bob-1", 1_700_000_000);
    sim.add_convai_chat("char-b", "alice-1", 1_700_000_000); // same ID, other character, bob's
    sim.add_koosearch_chat("app-1", "alice-k1", Some("alice"), None, 1_700_000_000);
    sim.add_koosearch_chat("app-1", "bob-k1", Some("bob"), None, 1_700_000_000);
    sim
}

/// A scratch directory, the seeded simulator, and a config pointing at it. On PostgreSQL the
/// heartbeat is short, so a killed instance is taken for dead within a second.
async fn setup() -> (Scratch, Simulator, std::path::PathBuf) {
    let s = Scratch::new();
    let sim = seeded_sim().await;
    let cfg = sim_config(&s, &sim, &["app-1"], "");
    if s.on_pg() {
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "shutdown_timeout = \"5s\"",
            "shutdown_timeout = \"5s\"\nheartbeat = \"200ms\"",
        );
        std::fs::write(&cfg, text).unwrap();
    }
    (s, sim, cfg)
}

type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The daemon built and run in this process (no config file: a reload is refused), with the
/// channel that tells it to reload or stop.
fn in_process(
    config: forgetd::config::Config,
    clock: forgetd::clock::SharedClock,
) -> (tokio::sync::mpsc::Sender<forgetd::daemon::Control>, Running) {
    let daemon = forgetd::daemon::Daemon::build(config, clock).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let options = forgetd::daemon::RunOptions {
        once: false,
        config_path: None,
        db_override: None,
    };
    (tx, tokio::spawn(daemon.run_until(options, rx)))
}

async fn stop_in_process(
    tx: tokio::sync::mpsc::Sender<forgetd::daemon::Control>,
    running: Running,
) {
    tx.send(forgetd::daemon::Control::Stop("test"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .expect("stopped within the wait")
        .unwrap()
        .unwrap();
}

fn seed_inventory(s: &Scratch) {
    let o = s.forgetd(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.sqlite3(
        "INSERT INTO sessions(provider, scope, session_id, subject) VALUES
           ('convai', 'char-a', 'alice-1', 'alice'), ('convai', 'char-a', 'bob-1', 'bob'),
           ('convai', 'char-b', 'alice-1', 'bob');",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_plain_sql_request_is_carried_out_then_sigterm_stops_cleanly() {
    let (s, sim, cfg) = setup().await;
    seed_inventory(&s);
    let mut n = Notify::new(&s, "notify.sock");
    let child = daemon(&cfg, Some(&n));
    assert!(n.wait_for("READY=1").await, "no READY=1; saw {:?}", n.seen);
    // The intake loop keeps the watchdog fed and reports the queue.
    assert!(
        n.wait_for("WATCHDOG=1").await,
        "no WATCHDOG=1; saw {:?}",
        n.seen
    );
    assert!(
        n.wait_for("STATUS=pending").await,
        "no STATUS= summary; saw {:?}",
        n.seen
    );

    let o =
        s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-1');");
    assert_eq!(code(&o), 0);
    eventually("alice's chats deleted", || {
        !sim.exists(ProviderKind::CONVAI, "char-a", "alice-1")
            && !sim.exists(ProviderKind::KOOSEARCH, "app-1", "alice-k1")
    })
    .await;
    eventually("request complete", || {
        stdout(&s.sqlite3("SELECT state FROM erasure_requests")).trim() == "complete"
    })
    .await;
    // decoys: bob's chats, and alice-1 under the other character
    assert!(sim.exists(ProviderKind::CONVAI, "char-a", "bob-1"));
    assert!(sim.exists(ProviderKind::CONVAI, "char-b", "alice-1"));
    assert!(sim.exists(ProviderKind::KOOSEARCH, "app-1", "bob-k1"));
    let named = sim.named_in_deletes();
    assert!(!named.contains(&ChatKey::new(ProviderKind::CONVAI, "char-b", "alice-1")));

    signal(&child, "-TERM");
    assert!(
        n.wait_for("STOPPING=1").await,
        "no STOPPING=1; saw {:?}",
        n.seen
    );
    // The daemon logs at info by default, each line about a request carrying its id.
    let log = stopped(child).await;
    assert!(
        log.contains("resolved erasure request") && log.contains("request=1"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes off a terminal");
    assert!(
        log.contains("audit chain head") && log.contains("audit_hash="),
        "the head is anchored in the journal: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_database_exits_75() {
    let (s, _sim, cfg) = setup().await;
    if s.on_pg() {
        // PostgreSQL welcomes a second instance (tests/postgres.rs runs one beside a daemon).
        eprintln!("SKIP on PostgreSQL: one daemon per database is SQLite's rule");
        return;
    }
    let mut n = Notify::new(&s, "notify.sock");
    let first = daemon(&cfg, Some(&n));
    assert!(n.wait_for("READY=1").await);
    let second = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        second.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stderr).contains("another forgetd daemon"));
    // the CLI's short writes still work alongside the daemon
    let o = s.forgetd(&["erase", "--subject", "zed", "--ref", "Z1"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    signal(&first, "-TERM");
    stopped(first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_config_and_keeps_the_old_one_on_a_bad_one() {
    let (s, _sim, cfg) = setup().await;
    let mut n = Notify::new(&s, "notify.sock");
    let mut child = daemon(&cfg, Some(&n));
    assert!(n.wait_for("READY=1").await);

    let good = std::fs::read_to_string(&cfg).unwrap()
        + "\n[[rules]]\nname = \"added-by-reload\"\nprovider = \"convai\"\nscope = \"char-a\"\nmax_age = \"3650d\"\nschedule = \"0 3 * * *\"\n";
    std::fs::write(&cfg, &good).unwrap();
    signal(&child, "-HUP");
    // systemd 253+ needs the reload's monotonic time with RELOADING=1.
    assert!(n.wait_for("RELOADING=1").await, "saw {:?}", n.seen);
    let reloading = n.seen.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    eventually("rule synced from the reloaded file", || {
        stdout(&s.forgetd(&["rules", "list", "--json"])).contains("added-by-reload")
    })
    .await;

    std::fs::write(&cfg, good.replace("[daemon]", "[daemon]\nnot_a_key = 1")).unwrap();
    // The READY=1 that ends this second reload (after its RELOADING=1): the bad file has been
    // read and refused by then.
    let mark = n.seen.len();
    signal(&child, "-HUP");
    let second = n.wait_from(mark, "RELOADING=1").await;
    let second = second.unwrap_or_else(|| panic!("no second RELOADING=1; saw {:?}", n.seen));
    assert!(
        n.wait_from(second + 1, "READY=1").await.is_some(),
        "no READY=1 after the bad reload; saw {:?}",
        n.seen
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad reload must not stop the daemon"
    );
    assert!(stdout(&s.forgetd(&["rules", "list", "--json"])).contains("added-by-reload"));

    signal(&child, "-TERM");
    let log = stopped(child).await;
    assert!(
        log.contains("keeping the old one") && log.contains("daemon.not_a_key"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_an_answer_is_held_back_loses_nothing_and_records_each_deletion_once() {
    let (s, sim, cfg) = setup().await;
    seed_inventory(&s);
    s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-K');");
    sim.hold_deletes(true);
    let mut n = Notify::new(&s, "notify.sock");
    let mut child = daemon(&cfg, Some(&n));
    assert!(n.wait_for("READY=1").await);
    eventually("a delete call received and held", || {
        sim.calls().iter().any(|c| c.op == "delete")
    })
    .await;
    child.start_kill().unwrap(); // SIGKILL
    let _ = child.wait().await;
    let state =
        stdout(&s.sqlite3("SELECT state, count(*) FROM work_items GROUP BY state ORDER BY state"));
    assert!(
        state.contains("in_flight"),
        "the killed daemon left its batch in flight: {state}"
    );
    sim.hold_deletes(false);
    until_no_instance_is_alive(&s).await;

    let out = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run", "--once"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sim.exists(ProviderKind::CONVAI, "char-a", "alice-1"));
    assert!(!sim.exists(ProviderKind::KOOSEARCH, "app-1", "alice-k1"));
    assert!(sim.exists(ProviderKind::CONVAI, "char-b", "alice-1"));
    assert_eq!(
        stdout(&s.sqlite3("SELECT state FROM erasure_requests")).trim(),
        "complete"
    );
    // In the record each chat is deleted exactly once, and the chain verifies.
    let recorded: usize = audit_events(&s.store(), "batch.answered")
        .iter()
        .map(|d| d["deleted"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        recorded, 2,
        "each of alice's two chats recorded deleted once"
    );
    let v = s.forgetd(&["--config", cfg.to_str().unwrap(), "audit", "verify"]);
    assert_eq!(code(&v), 0, "{}", stdout(&v));
}

/// The daemon as a library: built by the same `Daemon::build` the binary uses, run until its
/// injected control channel says stop (no signals), with a reload that cannot succeed in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_built_in_process_drains_a_feeders_request_and_stops_when_told() {
    let s = Scratch::new();
    let sim = seeded_sim().await;
    seed_inventory(&s);
    let mut config = sim.config(s.dir.path(), &["app-1"]).unwrap();
    s.use_in(&mut config);
    let (tx, running) = in_process(config, std::sync::Arc::new(SystemClock));
    // No config file was given: the reload is refused and the daemon keeps working.
    tx.send(forgetd::daemon::Control::Reload).await.unwrap();
    let o =
        s.sqlite3("INSERT INTO erasure_requests(subject, external_ref) VALUES ('alice', 'DSR-9');");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    eventually("request complete", || {
        stdout(&s.sqlite3("SELECT state FROM erasure_requests")).trim() == "complete"
    })
    .await;
    assert!(!sim.exists(ProviderKind::CONVAI, "char-a", "alice-1"));
    assert!(
        sim.exists(ProviderKind::CONVAI, "char-b", "alice-1"),
        "decoy"
    );
    assert!(sim.exists(ProviderKind::CONVAI, "char-a", "bob-1"), "decoy");
    // A rule added by another process while the daemon runs is picked up: intake sees the
    // commit and wakes the scheduler, which would otherwise sleep for an hour (no rule was due).
    sim.add_convai_chat("char-r", "old-1", 1_700_000_000);
    let o = s.sqlite3(
        "INSERT INTO sessions(provider, scope, session_id, created_at) VALUES ('convai', 'char-r', 'old-1', 1700000000)",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.forgetd(&[
        "rules",
        "add",
        "old-chats",
        "--provider",
        "convai",
        "--scope",
        "char-r",
        "--max-age",
        "30d",
        "--schedule",
        "* * * * * *",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    eventually("the new rule's chat deleted", || {
        !sim.exists(ProviderKind::CONVAI, "char-r", "old-1")
    })
    .await;
    let runs = stdout(&s.sqlite3("SELECT DISTINCT rule_name FROM rule_runs"));
    assert_eq!(runs.trim(), "old-chats");
    assert!(sim.exists(ProviderKind::CONVAI, "char-a", "bob-1"), "decoy");
    assert!(!running.is_finished(), "the daemon runs until told to stop");
    stop_in_process(tx, running).await;
    let o = s.sqlite3("SELECT count(*) FROM work_items WHERE state = 'in_flight'");
    assert_eq!(stdout(&o).trim(), "0", "{}", stderr(&o));
    if s.on_pg() {
        // It left the queue: its row is gone, so no one waits for it to be taken for dead.
        let o = s.sqlite3("SELECT count(*) FROM forgetd_instances");
        assert_eq!(stdout(&o).trim(), "0", "{}", stderr(&o));
    } else {
        // The lock was released with the daemon: a second one can start.
        assert!(forgetd::store::lock::DaemonLock::acquire(&s.db()).is_ok());
    }
}

/// The lanes idle on the injected clock (up to a second between looks), so on a clock that never
/// moves only intake's wake-up can start them: work filed while they idle is carried out because
/// intake wakes them, not because time passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_clock_that_never_moves_intake_wakes_the_idle_lanes_for_new_work() {
    let s = Scratch::new();
    let sim = seeded_sim().await;
    seed_inventory(&s);
    let mut config = sim.config(s.dir.path(), &["app-1"]).unwrap();
    s.use_in(&mut config);
    let frozen = forgetd::clock::ManualClock::stepped(1_800_000_000_000);
    let (tx, running) = in_process(config, std::sync::Arc::new(frozen));
    // Carol's chat is the decoy nobody asks about.
    sim.add_convai_chat("char-c", "carol-1", 1_700_000_000);
    let o = s.sqlite3(
        "INSERT INTO sessions(provider, scope, session_id, subject) VALUES ('convai', 'char-c', 'carol-1', 'carol');",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // Alice's request first; once it is complete the lanes have nothing left and idle. Then Bob's.
    for (who, reference) in [("alice", "DSR-7"), ("bob", "DSR-8")] {
        let o = s.sqlite3(&format!(
            "INSERT INTO erasure_requests(subject, external_ref) VALUES ('{who}', '{reference}');"
        ));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        eventually(&format!("{who}'s request complete"), || {
            stdout(&s.sqlite3(&format!(
                "SELECT state FROM erasure_requests WHERE external_ref = '{reference}'"
            )))
            .trim()
                == "complete"
        })
        .await;
    }
    for (kind, scope, id) in [
        (ProviderKind::CONVAI, "char-a", "alice-1"),
        (ProviderKind::KOOSEARCH, "app-1", "alice-k1"),
        (ProviderKind::CONVAI, "char-a", "bob-1"),
        (ProviderKind::CONVAI, "char-b", "alice-1"),
        (ProviderKind::KOOSEARCH, "app-1", "bob-k1"),
    ] {
        assert!(!sim.exists(kind, scope, id), "{scope}/{id} deleted");
    }
    assert!(
        sim.exists(ProviderKind::CONVAI, "char-c", "carol-1"),
        "decoy"
    );
    assert!(
        !sim.named_in_deletes()
            .contains(&ChatKey::new(ProviderKind::CONVAI, "char-c", "carol-1")),
        "the decoy was never named"
    );
    stop_in_process(tx, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_runs_and_a_shutdown_log_nothing_at_warning_or_above_but_forgetds_own() {
    // The scheduler library logs ERROR lines in normal operation ("Could not get job metadata",
    // "Error sending created job"): an operator filtering `journalctl -p err` must not see them.
    let (s, sim, cfg) = setup().await;
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\n[[rules]]\nname = \"every-two-seconds\"\nprovider = \"convai\"\nscope = \"char-a\"\nmax_age = \"3650d\"\nschedule = \"*/2 * * * * *\"\n";
    std::fs::write(&cfg, text).unwrap();
    let mut c = Command::new(BIN);
    c.args(["--config", cfg.to_str().unwrap(), "run"])
        .env("FORGETD_LOG", "info")
        .env("FORGETD_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = c.spawn().unwrap();
    eventually("three rule runs", || {
        stdout(&s.sqlite3("SELECT count(*) FROM rule_runs WHERE rule_name = 'every-two-seconds'"))
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
            >= 3
    })
    .await;
    signal(&child, "-TERM");
    let log = stopped(child).await;
    let mut seen = 0;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        seen += 1;
        let level = v["level"].as_str().unwrap_or("");
        let target = v["target"].as_str().unwrap_or("");
        if level == "WARN" || level == "ERROR" {
            assert!(
                target.starts_with("forgetd"),
                "a library's {level} line in normal operation: {line}"
            );
        }
        assert!(
            !target.starts_with("tokio_cron_scheduler"),
            "the scheduler library's line: {line}"
        );
    }
    assert!(seen > 3, "no JSON log lines were read:\n{log}");
    drop(sim);
}
