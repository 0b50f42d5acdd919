//! Discovery that ends and tells (issue 34), through the real binary against the simulator, on a
//! SQLite file or PostgreSQL (`FORGETD_TEST_ENGINE=postgres`): a subject KooSearch refuses, a
//! listing that repeats its page or never ends, a `total` that is too low, a daemon whose intake,
//! watchdog and SIGTERM never wait on a listing, and (PostgreSQL) one lister per listing across
//! instances. Every case has decoys (another person's chats) that must stay untouched, and the
//! subject must appear in no output, log line, status or audit event.

mod common;
use common::notify::Notify;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::model::{ChatKey, ProviderKind};
use forgetd::simulator::{Faults, ListingFault, Simulator};
use tokio::process::{Child, Command};

const APPS: [&str; 2] = ["app-a", "app-b"];

async fn sim(faults: Faults) -> Simulator {
    Simulator::start(Arc::new(SystemClock), faults, 34)
        .await
        .unwrap()
}

/// `person` has one Convai chat the inventory knows and `koo` KooSearch chats in each
/// application that only a listing finds; Bob (the decoy) has one of each, once.
fn seed(s: &Scratch, sim: &Simulator, person: &str, koo: usize) {
    let decoy = !sim.exists(ProviderKind::CONVAI, "char-a", "bob-c");
    for (who, koo) in [(person, koo), ("bob", 1)] {
        if who == "bob" && !decoy {
            continue;
        }
        let tag = tag(who);
        sim.add_convai_chat("char-a", &format!("{tag}-c"), 1_700_000_000);
        s.add_chat("convai", "char-a", &format!("{tag}-c"), who);
        for app in APPS {
            for i in 0..koo {
                sim.add_koosearch_chat(
                    app,
                    &format!("{tag}-{app}-k{i}"),
                    Some(who),
                    None,
                    1_700_000_000,
                );
            }
        }
    }
}

/// A chat-ID-safe tag for a person.
fn tag(who: &str) -> String {
    who.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn config(s: &Scratch, sim: &Simulator, koosearch: &str) -> std::path::PathBuf {
    let cfg = sim_config(s, sim, &APPS, "");
    if koosearch.is_empty() {
        return cfg;
    }
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[providers.koosearch]\n",
        &format!("[providers.koosearch]\n{koosearch}\n"),
    );
    assert!(
        text.contains(koosearch),
        "the koosearch table is in the config"
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn erase(s: &Scratch, cfg: &std::path::Path, subject: &str, r: &str) -> String {
    let o = s.forgetd(&[
        "--config",
        cfg.to_str().unwrap(),
        "erase",
        "--subject",
        subject,
        "--ref",
        r,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn shown(s: &Scratch, cfg: &std::path::Path, id: &str) -> serde_json::Value {
    let o = s.forgetd(&[
        "--config",
        cfg.to_str().unwrap(),
        "requests",
        "show",
        id,
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

fn listing_calls(sim: &Simulator) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.provider == ProviderKind::KOOSEARCH && c.op == "list")
        .count()
}

/// Bob's chats exist and were never named in a delete call.
fn decoys_untouched(sim: &Simulator) {
    let named = sim.named_in_deletes();
    let mut bobs = vec![ChatKey::new(ProviderKind::CONVAI, "char-a", "bob-c")];
    for app in APPS {
        bobs.push(ChatKey::new(
            ProviderKind::KOOSEARCH,
            app,
            &format!("bob-{app}-k0"),
        ));
    }
    for chat in bobs {
        assert!(sim.has(&chat), "decoy {chat:?} deleted");
        assert!(!named.contains(&chat), "decoy {chat:?} named in a delete");
    }
}

/// No form of `subject` in `text` (raw, or as a URL would carry it).
fn no_subject(what: &str, text: &str, subject: &str) {
    let encoded: String = url_encode(subject);
    let form = encoded.replace("%20", "+");
    assert!(
        !text.contains(subject) && !text.contains(&encoded) && !text.contains(&form),
        "{what} names the subject:\n{text}"
    );
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Everything the database holds that a subject must not be in: the audit trail (in clear) and
/// the listings' reasons.
fn stored_text(s: &Scratch) -> String {
    stdout(&s.sqlite3(
        "SELECT group_concat(data, ' ') FROM audit_log;
         SELECT group_concat(coalesce(last_error, ''), ' ') FROM request_discovery;",
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_koosearch_refuses_ends_its_listings_failed_at_once_and_its_known_chats_are_deleted()
 {
    let subject = "alice@example.com";
    let sim = sim(Faults {
        strict_user_name: true,
        ..Faults::default()
    })
    .await;
    let s = Scratch::new();
    let cfg = config(&s, &sim, "");
    seed(&s, &sim, subject, 1);
    // `plan` says what a run would do: delete the known chat, and fail the listings.
    let o = s.forgetd(&[
        "--config",
        cfg.to_str().unwrap(),
        "plan",
        "--subject",
        subject,
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let plan = stdout(&o);
    assert!(
        plan.contains("delete") && plan.contains("alice-example-com-c"),
        "{plan}"
    );
    assert!(
        plan.contains("could not be completed (koosearch list: HTTP 400 KOS.00010002"),
        "{plan}"
    );
    let calls_by_plan = listing_calls(&sim);
    let id = erase(&s, &cfg, subject, "DSR-7");
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    let (out, err) = (stdout(&o), stderr(&o));
    // A listing that failed is a failure of the run: exit 1, with the reason, without the person.
    assert_eq!(code(&o), 1, "{out}\n{err}");
    assert!(err.contains("KOS.00010002"), "{err}");
    no_subject("run --once's output", &format!("{out}\n{err}"), subject);
    // Refused at once: one listing call per application, none repeated.
    assert_eq!(listing_calls(&sim) - calls_by_plan, APPS.len());
    // The chat the inventory knew is deleted all the same.
    let known = ChatKey::new(ProviderKind::CONVAI, "char-a", "alice-example-com-c");
    assert!(!sim.has(&known), "the known chat was not deleted");
    decoys_untouched(&sim);
    let v = shown(&s, &cfg, &id);
    assert_eq!(v["state"], "failed", "{v:#}");
    let listings = v["listings"].as_array().unwrap();
    assert_eq!(listings.len(), APPS.len(), "{v:#}");
    for l in listings {
        assert_eq!(l["state"], "failed", "{l}");
        let why = l["last_error"].as_str().unwrap();
        assert!(why.contains("HTTP 400 KOS.00010002"), "{why}");
    }
    no_subject("requests show", &v.to_string(), subject);
    let st = s.forgetd(&["--config", cfg.to_str().unwrap(), "status"]);
    assert!(
        stdout(&st).contains("FAILED listings by subject: 2"),
        "{}",
        stdout(&st)
    );
    no_subject("status", &stdout(&st), subject);
    no_subject(
        "the database's audit trail and reasons",
        &stored_text(&s),
        subject,
    );
    // The certificate states the failure and cannot say complete.
    let o = s.forgetd(&[
        "--config",
        cfg.to_str().unwrap(),
        "audit",
        "export",
        "--request",
        &id,
    ]);
    let cert = stdout(&o);
    assert!(
        cert.contains("state:       failed"),
        "{cert}\n{}",
        stderr(&o)
    );
    assert!(
        cert.contains("koosearch app-a: FAILED (koosearch list: HTTP 400 KOS.00010002"),
        "{cert}"
    );
    no_subject("the certificate", &cert, subject);
    // Asking again (say the provider accepts the name now) lists again and completes.
    sim.update_faults(|f| f.strict_user_name = false);
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "requests", "retry", &id]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}\n{}", stdout(&o), stderr(&o));
    let v = shown(&s, &cfg, &id);
    assert_eq!(v["state"], "complete", "{v:#}");
    for app in APPS {
        let k = ChatKey::new(
            ProviderKind::KOOSEARCH,
            app,
            &format!("alice-example-com-{app}-k0"),
        );
        assert!(
            !sim.has(&k),
            "{k:?} was not found and deleted after the retry"
        );
    }
    decoys_untouched(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_subject_row_is_edited_lists_no_one_in_its_name() {
    // The listings fail (the provider is down past the retry policy); someone who can write the
    // database then points the request at Bob and sets its listings pending again, hoping
    // forgetd lists Bob (finding, say, nothing) and certifies the request complete.
    let sim = sim(Faults {
        list_error_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let s = Scratch::new();
    let cfg = config(&s, &sim, "");
    seed(&s, &sim, "alice", 1);
    let id = erase(&s, &cfg, "alice", "DSR-12");
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(shown(&s, &cfg, &id)["state"], "failed");
    sim.update_faults(|f| f.list_error_rate = 0.0);
    let o = s.sqlite3(&format!(
        "UPDATE erasure_requests SET subject = 'bob' WHERE id = {id};
         UPDATE request_discovery SET state = 'pending', next_at = 0 WHERE request_id = {id};"
    ));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let calls_before = listing_calls(&sim);
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("subject was changed"), "{}", stderr(&o));
    assert_eq!(listing_calls(&sim), calls_before, "someone was listed");
    decoys_untouched(&sim);
    let v = shown(&s, &cfg, &id);
    assert_eq!(v["state"], "failed", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_repeats_its_page_or_never_ends_fails_and_the_known_chats_are_deleted() {
    // (the fault, the koosearch settings, listing calls per application, the reason's words)
    let cases = [
        (ListingFault::SamePage, "", 2, "repeats page 1"),
        (
            ListingFault::Endless,
            "listing_max_pages = 7",
            7,
            "listing_max_pages (7)",
        ),
    ];
    for (fault, settings, calls, why) in cases {
        let case = format!("{fault:?}");
        let sim = sim(Faults {
            listing: fault,
            ..Faults::default()
        })
        .await;
        let s = Scratch::new();
        let cfg = config(&s, &sim, settings);
        seed(&s, &sim, "alice", 1);
        let id = erase(&s, &cfg, "alice", "DSR-8");
        let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
        assert_eq!(code(&o), 1, "{case}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{case}: {}", stderr(&o));
        assert_eq!(listing_calls(&sim), calls * APPS.len(), "{case}");
        let known = ChatKey::new(ProviderKind::CONVAI, "char-a", "alice-c");
        assert!(!sim.has(&known), "{case}: the known chat was not deleted");
        // Nothing the unending listing named was taken for the person's.
        assert!(
            sim.named_in_deletes()
                .iter()
                .all(|c| !c.session_id.starts_with("endless-")),
            "{case}"
        );
        decoys_untouched(&sim);
        let v = shown(&s, &cfg, &id);
        assert_eq!(v["state"], "failed", "{case}: {v:#}");
        assert!(
            v["listings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["state"] == "failed" && l["last_error"].as_str().unwrap().contains(why)),
            "{case}: {v:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_lower_than_what_is_listed_does_not_end_discovery_early() {
    // 250 chats of Alice's in each application, and a provider whose total says 100.
    let sim = sim(Faults {
        listing: ListingFault::Total(100),
        ..Faults::default()
    })
    .await;
    let s = Scratch::new();
    let cfg = config(&s, &sim, "");
    seed(&s, &sim, "alice", 250);
    let id = erase(&s, &cfg, "alice", "DSR-9");
    let o = s.forgetd(&["--config", cfg.to_str().unwrap(), "run", "--once"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("KooSearch's total said 100 records but the listing held 250"),
        "{}",
        stderr(&o)
    );
    for app in APPS {
        for i in 0..250 {
            let k = ChatKey::new(ProviderKind::KOOSEARCH, app, &format!("alice-{app}-k{i}"));
            assert!(!sim.has(&k), "{k:?} left at the provider");
        }
    }
    decoys_untouched(&sim);
    let v = shown(&s, &cfg, &id);
    assert_eq!(v["state"], "complete", "{v:#}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1 + 2 * 250);
    for l in v["listings"].as_array().unwrap() {
        assert_eq!(
            (l["state"].as_str(), l["found"].as_u64()),
            (Some("done"), Some(250))
        );
    }
}

fn daemon(cfg: &std::path::Path, notify: &Notify) -> Child {
    // Through a shell that execs the binary, so WATCHDOG_PID names the daemon's own pid.
    Command::new("sh")
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            BIN,
            "--config",
            cfg.to_str().unwrap(),
            "run",
        ])
        .env("FORGETD_LOG", "info")
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits for a signalled daemon to exit, asserts it exited 0, and returns its log.
async fn stopped(child: Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the daemon did not stop")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    log
}

fn state_of(s: &Scratch, id: &str) -> String {
    stdout(&s.sqlite3(&format!(
        "SELECT state FROM erasure_requests WHERE id = {id}"
    )))
    .trim()
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_never_waits_on_a_listing_to_take_requests_in_feed_the_watchdog_or_stop() {
    // Every listing is endless and slow (each page takes 100 ms, and there are 65,535 of them):
    // requests are still taken in at once, their known chats deleted, the watchdog fed, and
    // SIGTERM acted on within the shutdown timeout.
    let sim = sim(Faults {
        listing: ListingFault::Endless,
        latency: Duration::from_millis(100),
        ..Faults::default()
    })
    .await;
    let s = Scratch::new();
    let cfg = config(&s, &sim, "");
    seed(&s, &sim, "alice", 1);
    seed(&s, &sim, "carol", 1);
    let mut n = Notify::new(&s, "notify.sock");
    let child = daemon(&cfg, &n);
    assert!(n.wait_for("READY=1").await, "no READY=1: {:?}", n.seen);
    let a = erase(&s, &cfg, "alice", "DSR-10");
    eventually("alice's known chat deleted while her listings run", || {
        !sim.exists(ProviderKind::CONVAI, "char-a", "alice-c")
    })
    .await;
    assert_eq!(state_of(&s, &a), "in_progress");
    // A second request, while the first one's listings are still on the wire.
    let watched_from = n.seen.len();
    let c = erase(&s, &cfg, "carol", "DSR-11");
    eventually("carol's known chat deleted", || {
        !sim.exists(ProviderKind::CONVAI, "char-a", "carol-c")
    })
    .await;
    assert_eq!(state_of(&s, &c), "in_progress");
    assert!(
        n.wait_from(watched_from, "WATCHDOG=1").await.is_some(),
        "the watchdog went unfed while listings ran: {:?}",
        n.seen
    );
    assert!(
        listing_calls(&sim) >= 4,
        "the four listings are on the wire"
    );
    decoys_untouched(&sim);
    // SIGTERM: stopped within shutdown_timeout (5 s), listings dropped and handed back.
    let started = std::time::Instant::now();
    sigterm(&child);
    let log = stopped(child).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let calls_at_exit = listing_calls(&sim);
    let leased =
        stdout(&s.sqlite3("SELECT count(*) FROM request_discovery WHERE lease_owner IS NOT NULL"));
    assert_eq!(leased.trim(), "0", "claims handed back at the stop");
    // Nothing is asked after the exit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(listing_calls(&sim), calls_at_exit);
    for who in ["alice", "carol"] {
        no_subject("the daemon's log", &log, &format!("user_name={who}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_fails_a_refused_listing_at_once_and_says_so_without_the_person() {
    // Odd subjects KooSearch will not take as a user_name: the daemon ends their listings failed
    // at once (no 30-second loop), deletes their known chats, and says so at warning level with
    // the request id and ref; their names are in no log line, status or stored reason.
    let subjects = ["alice@example.com", "Zoë O'Brien", "carol+dsr@example.org"];
    let sim = sim(Faults {
        strict_user_name: true,
        ..Faults::default()
    })
    .await;
    let s = Scratch::new();
    let cfg = config(&s, &sim, "");
    for who in subjects {
        seed(&s, &sim, who, 1);
    }
    let mut n = Notify::new(&s, "notify.sock");
    let child = daemon(&cfg, &n);
    assert!(n.wait_for("READY=1").await, "no READY=1: {:?}", n.seen);
    let ids: Vec<String> = subjects
        .iter()
        .enumerate()
        .map(|(i, who)| erase(&s, &cfg, who, &format!("DSR-odd-{i}")))
        .collect();
    eventually("every request failed", || {
        ids.iter().all(|id| state_of(&s, id) == "failed")
    })
    .await;
    for who in subjects {
        let known = ChatKey::new(ProviderKind::CONVAI, "char-a", &format!("{}-c", tag(who)));
        assert!(!sim.has(&known), "{who}'s known chat was not deleted");
    }
    // Refused once per listing, never asked again.
    assert_eq!(listing_calls(&sim), subjects.len() * APPS.len());
    decoys_untouched(&sim);
    let st = s.forgetd(&["--config", cfg.to_str().unwrap(), "status", "--json"]);
    let status = stdout(&st);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["listings"]["failed_total"], 6, "{v:#}");
    sigterm(&child);
    let log = stopped(child).await;
    for (i, id) in ids.iter().enumerate() {
        let warned = log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("listing for an erasure request could not be completed")
                && l.contains(&format!("request={id}"))
                && l.contains(&format!("DSR-odd-{i}"))
        });
        assert!(warned, "no warning naming request {id} and its ref:\n{log}");
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("erasure request failed")
                && l.contains(&format!("request={id}"))),
            "no failed-request warning for {id}:\n{log}"
        );
    }
    for who in subjects {
        no_subject("the daemon's log", &log, who);
        no_subject("status --json", &status, who);
    }
    no_subject("the database", &stored_text(&s), subjects[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_ask_each_listing_once() {
    // PostgreSQL only: several instances on one queue.
    let s = Scratch::new();
    if !s.on_pg() {
        return;
    }
    let sim = sim(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    })
    .await;
    let cfg = config(&s, &sim, "");
    let people = ["p1", "p2", "p3", "p4", "p5"];
    for p in people {
        seed(&s, &sim, p, 1);
    }
    let mut notes = Vec::new();
    let mut children = Vec::new();
    for i in 0..3 {
        let n = Notify::new(&s, &format!("n{i}.sock"));
        children.push(daemon(&cfg, &n));
        notes.push(n);
    }
    for n in &mut notes {
        assert!(n.wait_for("READY=1").await, "no READY=1: {:?}", n.seen);
    }
    let ids: Vec<String> = people
        .iter()
        .map(|p| erase(&s, &cfg, p, &format!("DSR-{p}")))
        .collect();
    eventually("every request complete", || {
        ids.iter().all(|id| state_of(&s, id) == "complete")
    })
    .await;
    // One instance's listings: one page per person and application, asked once.
    assert_eq!(listing_calls(&sim), people.len() * APPS.len());
    decoys_untouched(&sim);
    for child in &children {
        sigterm(child);
    }
    for child in children {
        stopped(child).await;
    }
}
