//! The executor against the simulator with each fault alone and all mixed, on an injected clock
//! (backoffs and Retry-After cost no real time): every targeted chat deleted, no untargeted chat
//! ever named in a delete call (decoys: other people's chats, the same ID under another character
//! or application), retries bounded, Retry-After honoured on the simulator's own timestamps, and
//! dead items only where the fault was permanent.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use forgetd::args;
use forgetd::clock::{ManualClock, SharedClock};
use forgetd::config::Config;
use forgetd::model::ProviderKind;
use forgetd::simulator::{Faults, Simulator};
use forgetd::store::db::Sql;
use forgetd::store::inventory::NewSession;

type Chat = forgetd::model::ChatKey;

struct World {
    sim: Simulator,
    s: common::Scratch,
    clock: ManualClock,
    targeted: Vec<Chat>,
    decoys: Vec<Chat>,
}

const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];
const REQUESTED: [&str; 2] = ["alice", "carol"];

async fn world(faults: Faults, per_person: usize) -> World {
    world_on(ManualClock::new(1_800_000_000_000), faults, per_person).await
}

async fn world_on(clock: ManualClock, faults: Faults, per_person: usize) -> World {
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared, faults, 9).await.unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    let mut targeted = Vec::new();
    let mut decoys = Vec::new();
    for (pi, person) in PEOPLE.iter().enumerate() {
        let requested = REQUESTED.contains(person);
        for n in 0..per_person {
            let ch = if n % 2 == 0 { "char-a" } else { "char-b" };
            let sid = format!("{person}-c{n}");
            common::seed_convai_chat(&sim, &mut store, ch, &sid, person);
            let app = if n % 2 == 0 { "app-a" } else { "app-b" };
            let kid = format!("{person}-k{n}");
            sim.add_koosearch_chat(
                app,
                &kid,
                Some(person),
                if n % 3 == 0 { Some("kb-1") } else { None },
                1_700_000_000,
            );
            // KooSearch chats are found by discovery (user_name), not fed.
            let list = if requested {
                &mut targeted
            } else {
                &mut decoys
            };
            list.push(Chat::new(ProviderKind::CONVAI, ch, &sid));
            list.push(Chat::new(ProviderKind::KOOSEARCH, app, &kid));
            // The same session ID under a third character belongs to someone else.
            if pi == 0 && n == 0 {
                sim.add_convai_chat("char-z", &sid, 1_700_000_000);
                store
                    .add_session(&NewSession {
                        provider: "convai".into(),
                        scope: "char-z".into(),
                        session_id: sid.clone(),
                        subject: Some("zed".into()),
                        ..Default::default()
                    })
                    .unwrap();
                decoys.push(Chat::new(ProviderKind::CONVAI, "char-z", &sid));
            }
        }
    }
    for (i, p) in REQUESTED.iter().enumerate() {
        store
            .file_request(p, Some(&format!("R{i}")), 1_800_000_000, 30 * 86_400)
            .unwrap();
    }
    World {
        sim,
        s,
        clock,
        targeted,
        decoys,
    }
}

fn config(w: &World) -> Config {
    let mut c = w.sim.config(w.s.dir.path(), &["app-a", "app-b"]).unwrap();
    w.s.use_in(&mut c);
    c.retry.base_delay = Duration::from_secs(1);
    c.retry.max_delay = Duration::from_secs(60);
    c.retry.max_attempts = 25;
    for p in &mut c.providers {
        p.limits.batch_size = 7;
        p.limits.concurrency = 3;
        p.limits.timeout = Duration::from_millis(400);
    }
    c
}

struct Outcome {
    report: forgetd::daemon::OnceReport,
    deletes: usize,
}

async fn drain(w: &World) -> Outcome {
    let prepared = forgetd::daemon::Daemon::build(config(w), Arc::new(w.clock.clone())).unwrap();
    let report = prepared.run_once().await.unwrap();
    let deletes = w.sim.calls().iter().filter(|c| c.op == "delete").count();
    Outcome { report, deletes }
}

fn exists(w: &World, c: &Chat) -> bool {
    w.sim.has(c)
}

/// The assertions every fault case shares.
fn check_safe(w: &World) {
    let named: HashSet<Chat> = w.sim.named_in_deletes();
    for d in &w.decoys {
        assert!(exists(w, d), "decoy {d:?} was deleted");
        assert!(!named.contains(d), "decoy {d:?} was named in a delete call");
    }
    // Retry-After honoured: after a 429 naming some IDs, no call names them again too early.
    let calls = w.sim.calls();
    for (i, c) in calls.iter().enumerate() {
        if c.op != "delete" || c.status != 429 || c.fault != "throttled" {
            continue;
        }
        let retry_after_ms = 2_000;
        for later in &calls[i + 1..] {
            if later.op == "delete"
                && later.provider == c.provider
                && later.ids.iter().any(|id| c.ids.contains(id))
            {
                assert!(
                    later.at_ms >= c.at_ms + retry_after_ms,
                    "re-sent {} ms after a 429 with Retry-After 2 s:\n{c:?}\n{later:?}",
                    later.at_ms - c.at_ms
                );
            }
        }
    }
}

fn check_all_deleted(w: &World, o: &Outcome) {
    for t in &w.targeted {
        assert!(
            !exists(w, t),
            "targeted chat {t:?} survived; report {:?}",
            o.report.problems
        );
    }
    assert!(o.report.clean(), "{:?}", o.report.problems);
    assert_eq!(o.report.dead, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_faults_deletes_exactly_the_targeted_chats() {
    let w = world(Faults::default(), 10).await;
    let o = drain(&w).await;
    check_safe(&w);
    check_all_deleted(&w, &o);
    // 2 people x 10 chats per provider, batches of at most 7, split by scope and knowledge base
    assert!(o.deletes <= 16, "{} delete calls", o.deletes);
    // The report `run --once` prints counts what happened: each provider's deletions, no
    // retries on a calm day, and at least every delete call among the calls.
    let per = |kind: ProviderKind| w.targeted.iter().filter(|c| c.provider == kind).count() as u64;
    let st = &o.report.stats;
    assert_eq!(st.deleted.get("convai"), Some(&per(ProviderKind::CONVAI)));
    assert_eq!(
        st.deleted.get("koosearch"),
        Some(&per(ProviderKind::KOOSEARCH))
    );
    assert!(st.retries.values().all(|c| c.values().all(|n| *n == 0)));
    assert!(st.calls >= o.deletes as u64, "{} calls", st.calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transient_fault_alone_is_retried_to_completion_with_bounded_calls() {
    let cases = [
        (
            "500/503",
            Faults {
                error_rate: 0.3,
                ..Faults::default()
            },
        ),
        (
            "429 + Retry-After",
            Faults {
                throttle_rate: 0.3,
                retry_after: Duration::from_secs(2),
                ..Faults::default()
            },
        ),
        (
            "connection reset",
            Faults {
                reset_rate: 0.3,
                ..Faults::default()
            },
        ),
        (
            "hung answers",
            Faults {
                hang_rate: 0.2,
                ..Faults::default()
            },
        ),
        (
            "malformed bodies",
            Faults {
                malformed_rate: 0.3,
                ..Faults::default()
            },
        ),
        (
            "partial batches",
            Faults {
                partial_rate: 0.6,
                ..Faults::default()
            },
        ),
        (
            "token expiry",
            Faults {
                token_ttl: Duration::from_secs(3),
                error_rate: 0.2,
                ..Faults::default()
            },
        ),
        (
            "server rate limit",
            Faults {
                rate_limit: Some(2),
                ..Faults::default()
            },
        ),
    ];
    for (name, faults) in cases {
        let w = world(faults, 10).await;
        let o = drain(&w).await;
        check_safe(&w);
        check_all_deleted(&w, &o);
        assert!(
            o.deletes <= 80,
            "{name}: {} delete calls is a retry storm",
            o.deletes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_id_goes_dead_alone_and_its_batch_mates_are_deleted() {
    let w = world(
        Faults {
            bad_ids: ["alice-c2".to_string(), "carol-k3".to_string()].into(),
            ..Faults::default()
        },
        10,
    )
    .await;
    let o = drain(&w).await;
    check_safe(&w);
    assert_eq!(o.report.dead, 2, "{:?}", o.report.problems);
    assert!(!o.report.clean());
    // The counters agree: one dead chat at each provider, the rest of their batches deleted.
    let st = &o.report.stats;
    assert_eq!(st.dead.get("convai"), Some(&1));
    assert_eq!(st.dead.get("koosearch"), Some(&1));
    assert_eq!(
        st.deleted.values().sum::<u64>() as usize,
        w.targeted.len() - 2
    );
    for t in &w.targeted {
        let bad = t.session_id == "alice-c2" || t.session_id == "carol-k3";
        assert_eq!(exists(&w, t), bad, "{t:?}");
    }
    let store = w.s.store();
    let err: String = store
        .row(
            "SELECT last_error FROM work_items WHERE session_id = 'alice-c2'",
            args![],
            |r| r.get(0),
        )
        .unwrap();
    assert!(err.contains("400"), "the provider's message is kept: {err}");
    let states: Vec<String> = store
        .list_requests(0)
        .unwrap()
        .iter()
        .map(|r| r.state.to_string())
        .collect();
    assert_eq!(states, vec!["failed", "failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_failure_pauses_one_provider_while_the_other_finishes() {
    let w = world(
        Faults {
            auth_fail: [ProviderKind::CONVAI].into(),
            ..Faults::default()
        },
        6,
    )
    .await;
    let o = drain(&w).await;
    check_safe(&w);
    assert!(
        o.report
            .problems
            .iter()
            .any(|p| p.to_string().contains("convai is paused")),
        "{:?}",
        o.report.problems
    );
    assert_eq!(o.report.dead, 0);
    for t in &w.targeted {
        assert_eq!(exists(&w, t), t.provider == ProviderKind::CONVAI, "{t:?}");
    }
    let store = w.s.store();
    let st = store.status(0, 0).unwrap();
    assert_eq!(st.paused_providers.len(), 1);
    assert!(st.paused_providers[0].reason.contains("API key"));
    let attempts: i64 = store
        .row(
            "SELECT max(attempts) FROM work_items WHERE provider = 'convai'",
            args![],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        attempts, 0,
        "a paused provider's items keep their attempt counts"
    );
    // The audit trail says the refused batch's chats were released, not retried or dead.
    let released: i64 = common::audit_events(&store, "batch.answered")
        .iter()
        .filter(|d| d["provider"] == "convai" && d["released"] == d["sent"])
        .map(|d| d["released"].as_i64().unwrap())
        .sum();
    assert!(released >= 1, "no convai batch recorded as released");
    // After the operator fixes the key, the next run finishes the job.
    w.sim.update_faults(|f| f.auth_fail.clear());
    drop(store);
    let o = drain(&w).await;
    check_all_deleted(&w, &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_mixed_at_high_rates() {
    let faults = Faults {
        error_rate: 0.15,
        throttle_rate: 0.1,
        retry_after: Duration::from_secs(2),
        reset_rate: 0.1,
        hang_rate: 0.05,
        malformed_rate: 0.1,
        partial_rate: 0.3,
        token_ttl: Duration::from_secs(30),
        bad_ids: ["bob-c0".to_string()].into(), // a decoy's ID: never sent anyway
        ..Faults::default()
    };
    let w = world(faults, 20).await;
    let o = drain(&w).await;
    check_safe(&w);
    check_all_deleted(&w, &o);
    assert!(o.deletes <= 200, "{} delete calls", o.deletes);
    let v = w.s.store().verify_audit().unwrap();
    assert!(v.broken.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failing_provider_goes_dead_after_max_attempts_not_forever() {
    let w = world(
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        3,
    )
    .await;
    let o = drain(&w).await;
    check_safe(&w);
    assert_eq!(
        o.report.dead as usize,
        w.targeted.len(),
        "{:?}",
        o.report.problems
    );
    // 25 attempts per item, batches of at most 7 over 4 scopes per provider
    assert!(o.deletes <= 25 * 8 * 2, "{}", o.deletes);
    // Each dead item says how many attempts it was given.
    let store = w.s.store();
    let errors: Vec<String> = store
        .rows(
            "SELECT last_error FROM work_items WHERE state = 'dead'",
            args![],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(errors.len(), w.targeted.len());
    for e in &errors {
        assert!(e.starts_with("gave up after 25 attempt(s)"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_provider_is_probed_with_backoff_and_resumes_when_fixed() {
    use forgetd::executor::Mode;
    // A stepped clock: only this test moves time, one second at a time, so the number of probes
    // in a span of paused time is fixed by the back-off alone (an auto-advancing clock let idle
    // workers run time ahead while the test was not looking, and the count varied run to run).
    let w = world_on(
        ManualClock::stepped(1_800_000_000_000),
        Faults {
            auth_fail: [ProviderKind::CONVAI].into(),
            ..Faults::default()
        },
        4,
    )
    .await;
    let prepared = forgetd::daemon::Daemon::build(config(&w), Arc::new(w.clock.clone())).unwrap();
    prepared.resolver.resolve_received().await.unwrap();
    prepared
        .resolver
        .discover_due(forgetd::resolve::Patience::Full, false)
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let exec = prepared.executor.clone();
    let c = cancel.clone();
    let task = tokio::spawn(async move { exec.run(Mode::Forever, c).await });
    let refused = |w: &World| -> Vec<i64> {
        w.sim
            .calls()
            .iter()
            .filter(|c| c.provider == ProviderKind::CONVAI && c.op == "delete" && c.status == 401)
            .map(|c| c.at_ms)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let step = || async {
        assert!(std::time::Instant::now() < deadline, "test ran out of time");
        w.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let span = |at: &[i64]| at.last().copied().unwrap_or(0) - at.first().copied().unwrap_or(0);
    while span(&refused(&w)) < 450_000 {
        step().await;
    }
    // Refused: the calls on the wire when the lane paused (at most one per worker, 3), then
    // probes at >= 30 s, +60 s, +120 s, +240 s: the fourth probe ends the span at >= 450 s.
    // Without back-off a probe every 30 s would give 15. (The exact doubling is `lane`'s unit
    // test; a worker that is slow in real time can only make probes later, never more.)
    let at = refused(&w);
    let biggest_gap = at.windows(2).map(|x| x[1] - x[0]).max().unwrap_or(0);
    assert!(
        at.len() <= 3 + 4,
        "{} refused calls in {} s is not backing off: {at:?}",
        at.len(),
        span(&at) / 1000
    );
    assert!(biggest_gap >= 120_000, "the probe delay grew: {at:?}");
    // KooSearch kept working meanwhile
    assert!(
        w.targeted
            .iter()
            .filter(|t| t.provider == ProviderKind::KOOSEARCH)
            .all(|t| !exists(&w, t))
    );
    // The operator fixes the key: the next probe succeeds and the lane drains.
    w.sim.update_faults(|f| f.auth_fail.clear());
    while w.targeted.iter().any(|t| exists(&w, t)) {
        step().await;
    }
    // `status` is a mirror of the gate, written when the lane next looks (on a change of state,
    // at most once a second): under load the resume reaches it a moment after the last deletion.
    // Step until it does; `step` fails the test if it never does.
    while !prepared
        .store
        .call(|s| s.status(0, 0))
        .await
        .unwrap()
        .paused_providers
        .is_empty()
    {
        step().await;
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
    check_safe(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_placed_after_a_batch_was_claimed_still_keeps_it_from_being_sent() {
    use forgetd::store::holds::HoldTarget;
    let w = world(
        Faults {
            latency: Duration::from_millis(150),
            ..Faults::default()
        },
        0,
    )
    .await;
    for i in 1..=3 {
        w.sim
            .add_convai_chat("char-h", &format!("h{i}"), 1_700_000_000);
        w.s.store()
            .add_session(&NewSession {
                provider: "convai".into(),
                scope: "char-h".into(),
                session_id: format!("h{i}"),
                subject: Some("hana".into()),
                ..Default::default()
            })
            .unwrap();
    }
    w.s.store()
        .file_request("hana", Some("H"), 1_800_000_000, 86_400)
        .unwrap();
    let mut c = config(&w);
    c.remove_provider(ProviderKind::KOOSEARCH);
    let limits = &mut c.provider_mut(ProviderKind::CONVAI).unwrap().limits;
    limits.batch_size = 1;
    limits.concurrency = 1;
    let prepared = forgetd::daemon::Daemon::build(c, Arc::new(w.clock.clone())).unwrap();
    let run = tokio::spawn(async move { prepared.run_once().await.unwrap() });
    // With one slot, two chats in flight means one is on the wire and the other (the later batch)
    // was claimed ahead. Hold that one and every chat still pending.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut s = w.s.store();
    let others: Vec<String> = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw a batch claimed ahead"
        );
        let rows: Vec<(String, String, Option<i64>)> = s
            .rows(
                "SELECT session_id, state, batch_id FROM work_items ORDER BY batch_id",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let in_flight: Vec<&(String, String, Option<i64>)> =
            rows.iter().filter(|r| r.1 == "in_flight").collect();
        if in_flight.len() == 2 {
            let ahead = in_flight.iter().max_by_key(|r| r.2).unwrap().0.clone();
            let mut v: Vec<String> = rows
                .iter()
                .filter(|r| r.1 == "pending")
                .map(|r| r.0.clone())
                .collect();
            v.push(ahead);
            break v;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    for id in &others {
        s.add_hold(
            &HoldTarget::Chat(forgetd::model::ChatKey {
                provider: ProviderKind::CONVAI,
                scope: "char-h".into(),
                session_id: id.clone(),
            }),
            "late hold",
            1,
        )
        .unwrap();
    }
    let report = run.await.unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    let named = w.sim.named_in_deletes();
    for id in &others {
        assert!(
            !named.contains(&Chat::new(ProviderKind::CONVAI, "char-h", id)),
            "{id} was sent despite its hold"
        );
        assert!(w.sim.exists(ProviderKind::CONVAI, "char-h", id));
    }
    assert_eq!(report.held as usize, others.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_of_any_kind_reaches_a_provider_before_a_retry_after_it_gave() {
    // A server-side limit of 3 calls a second that answers 429 with Retry-After: 2 s, and
    // partial KooSearch batches, so lookups and discovery listings meet the limit as well as
    // deletes. One call in flight per provider, so every call after a 429 was started after the
    // client had its answer: none may reach the simulator within the 2 s.
    let w = world(
        Faults {
            rate_limit: Some(3),
            limit_retry_after: Some(Duration::from_secs(2)),
            partial_rate: 0.5,
            ..Faults::default()
        },
        6,
    )
    .await;
    let mut c = config(&w);
    for p in &mut c.providers {
        p.limits.concurrency = 1;
    }
    let daemon = forgetd::daemon::Daemon::build(c, Arc::new(w.clock.clone())).unwrap();
    let report = daemon.run_once().await.unwrap();
    check_safe(&w);
    for t in &w.targeted {
        assert!(!exists(&w, t), "{t:?} survived: {:?}", report.problems);
    }
    let calls = w.sim.calls();
    let mut throttled_ops = HashSet::new();
    for (i, c) in calls.iter().enumerate() {
        if c.status != 429 {
            continue;
        }
        throttled_ops.insert(c.op);
        for later in calls[i + 1..].iter().filter(|l| l.provider == c.provider) {
            assert!(
                later.at_ms >= c.at_ms + 2_000,
                "a {} call reached {} {} ms after a 429 ({}) with Retry-After 2 s",
                later.op,
                c.provider,
                later.at_ms - c.at_ms,
                c.op
            );
        }
    }
    assert!(
        throttled_ops.contains("list") && throttled_ops.contains("delete"),
        "the limit met listings and deletes: {throttled_ops:?}"
    );
    // What the gate learned is in `status` (the rate itself wanders around the limit: cut
    // below it by each throttle, grown past it while nothing is throttled).
    let st = w.s.store().status(0, 0).unwrap();
    let koo = st
        .gates
        .iter()
        .find(|g| g.provider == "koosearch")
        .expect("the gate's state was written");
    assert!(koo.rate_learned, "{koo:?}");
    assert!(koo.rate_per_s.is_some_and(|r| r < 6.0), "{koo:?}");
    assert!(koo.throttles > 0, "{koo:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_one_page_are_all_resolved_in_one_run() {
    // Intake reads received requests 64 at a time: 70 people need a second page.
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared, Faults::default(), 9)
        .await
        .unwrap();
    let s = common::Scratch::new();
    let mut store = s.store();
    let (mut targeted, mut decoys) = (Vec::new(), Vec::new());
    for n in 0..71 {
        let (person, sid) = (format!("p{n:02}"), format!("p{n:02}-c"));
        common::seed_convai_chat(&sim, &mut store, "char-a", &sid, &person);
        let chat = Chat::new(ProviderKind::CONVAI, "char-a", &sid);
        // The last one is nobody's request: the decoy.
        if n == 70 {
            decoys.push(chat);
            continue;
        }
        store
            .file_request(&person, Some(&format!("R{n}")), 1_800_000_000, 30 * 86_400)
            .unwrap();
        targeted.push(chat);
    }
    drop(store);
    let w = World {
        sim,
        s,
        clock,
        targeted,
        decoys,
    };
    let o = drain(&w).await;
    assert_eq!(o.report.resolved_requests, 70);
    check_safe(&w);
    check_all_deleted(&w, &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_gives_a_refused_listing_a_few_quick_tries_and_run_once_all_the_policy_allows() {
    // Every listing is refused: a 429 with or without a Retry-After, or a 503. Requests are
    // resolved at once to the inventory's chats, whatever the listings do. The daemon's resolver
    // (Brief) must stay responsive: three quick tries, or one when the provider names a wait
    // over 5 s, and the listing is asked again later. `run --once` (Full) tries as long as the
    // retry policy allows (25 attempts here), then the listing fails. Two requests, two
    // applications: four listings, each its own.
    use forgetd::resolve::Patience::{self, Brief, Full};
    // (the 429's Retry-After in seconds, or None for none, or 503 for a 503 answer)
    let cases: [(Option<u64>, Patience, usize); 8] = [
        (Some(1), Brief, 3),
        (Some(5), Brief, 3),
        (Some(6), Brief, 1),
        (None, Brief, 3),
        (Some(503), Brief, 3),
        (Some(1), Full, 25),
        (None, Full, 25),
        (Some(503), Full, 25),
    ];
    for (retry_after, patience, tries) in cases {
        let faults = match retry_after {
            Some(503) => Faults {
                list_error_rate: 1.0,
                ..Faults::default()
            },
            _ => Faults {
                rate_limit: Some(0),
                limit_retry_after: retry_after.map(Duration::from_secs),
                ..Faults::default()
            },
        };
        let w = world(faults, 1).await;
        let d = forgetd::daemon::Daemon::build(config(&w), Arc::new(w.clock.clone())).unwrap();
        let case = format!("Retry-After {retry_after:?}, {patience:?}");
        assert_eq!(d.resolver.resolve_received().await.unwrap(), 2, "{case}");
        assert!(
            w.s.store().received_requests(10).unwrap().is_empty(),
            "{case}: resolved at once, without a listing"
        );
        let pass = d.resolver.discover_due(patience, false).await.unwrap();
        assert_eq!(pass.asked, 4, "{case}");
        let lists = w.sim.calls().iter().filter(|c| c.op == "list").count();
        assert_eq!(lists, 4 * tries, "{case}: listing calls");
        match patience {
            Brief => assert_eq!((pass.retrying.len(), pass.failed.len()), (4, 0), "{case}"),
            Full => assert_eq!((pass.retrying.len(), pass.failed.len()), (0, 4), "{case}"),
        }
        for f in pass.failed.iter().chain(&pass.retrying) {
            for person in PEOPLE {
                assert!(
                    !f.to_string().contains(person),
                    "{case}: {f} names the subject"
                );
            }
        }
        let list = w.s.store().list_requests(86_400).unwrap();
        assert!(
            list.iter().all(|r| r.state.as_str() == "in_progress"),
            "{case}: {list:?}"
        );
        assert!(w.sim.calls().iter().all(|c| c.op != "delete"), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_koosearch_id_outside_its_alphabet_in_a_listing_is_skipped_and_never_sent() {
    // KooSearch lists these as Alice's, but its chat_id rule (A-Z a-z 0-9 _ -, 1 to 64) refuses
    // them: discovery skips them with a warning, and the rest of her chats are deleted as usual.
    let w = world(Faults::default(), 2).await;
    let long = "k".repeat(65);
    let bad = ["alice.k9", "alice k9", "ä-k9", long.as_str()];
    for id in bad {
        w.sim
            .add_koosearch_chat("app-a", id, Some("alice"), None, 1_700_000_000);
    }
    let o = drain(&w).await;
    check_safe(&w);
    check_all_deleted(&w, &o);
    let named = w.sim.named_in_deletes();
    for id in bad {
        let chat = Chat::new(ProviderKind::KOOSEARCH, "app-a", id);
        assert!(exists(&w, &chat), "{id:?} was deleted");
        assert!(!named.contains(&chat), "{id:?} was named in a delete call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_plan_quota_pauses_convai_instead_of_retrying_and_the_next_run_resumes() {
    // Convai's 429 "API usage limit exceeded for current plan." is a monthly quota, not a rate:
    // the provider is paused with that reason after one refused call, never retried in a loop
    // as a rate limit is; KooSearch carries on. Once the quota is back, the next run deletes.
    let w = world(
        Faults {
            plan_quota_used: true,
            ..Faults::default()
        },
        4,
    )
    .await;
    let o = drain(&w).await;
    let convai_deletes = |w: &World| {
        w.sim
            .calls()
            .iter()
            .filter(|c| c.provider == ProviderKind::CONVAI && c.op == "delete")
            .count()
    };
    // At most the calls already on the wire when the first refusal came back (concurrency 3).
    let refused = convai_deletes(&w);
    assert!(
        (1..=3).contains(&refused),
        "a quota is not retried: {refused} calls"
    );
    let paused: Vec<String> = o.report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        paused
            .iter()
            .any(|p| p.contains("provider convai is paused") && p.contains("plan quota is used up")),
        "{paused:?}"
    );
    let status = w.s.store().status(0, 0).unwrap();
    assert!(
        status
            .paused_providers
            .iter()
            .any(|p| p.provider == "convai" && p.reason.contains("plan quota")),
        "{:?}",
        status.paused_providers
    );
    // KooSearch was not held up by Convai's quota.
    assert!(
        w.targeted
            .iter()
            .filter(|c| c.provider == ProviderKind::KOOSEARCH)
            .all(|c| !exists(&w, c)),
        "KooSearch's chats wait for Convai's quota"
    );
    check_safe(&w);
    w.sim.update_faults(|f| f.plan_quota_used = false);
    let o = drain(&w).await;
    check_safe(&w);
    check_all_deleted(&w, &o);
}
