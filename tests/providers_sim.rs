//! Both clients against the simulator: success, already-deleted IDs, every error class, both
//! KooSearch casings, IAM token refresh ahead of expiry and on 401, concurrent batches sharing one
//! refresh, and no secret in any log line or error.

use std::time::Duration;

use forgetd::model::ProviderKind;
use forgetd::providers::{Action, DeleteOutcome, Presence, Provider};
use forgetd::simulator::{self, Faults};

mod sim_clients;
use sim_clients::*;

#[tokio::test]
async fn success_and_already_deleted_ids() {
    let e = env(Faults::default(), Duration::from_secs(5)).await;
    assert_eq!(
        e.convai
            .delete_alone(&b("char", &["s1", "s2"]))
            .await
            .unwrap(),
        DeleteOutcome::AllDeleted
    );
    assert!(!e.sim.exists(ProviderKind::CONVAI, "char", "s1"));
    // Convai: deleting again is a 200 (idempotent)
    assert_eq!(
        e.convai.delete_alone(&b("char", &["s1"])).await.unwrap(),
        DeleteOutcome::AllDeleted
    );
    assert_eq!(
        e.koo.delete_alone(&b(APP, &["k1"])).await.unwrap(),
        DeleteOutcome::AllDeleted
    );
    // KooSearch: an already-deleted ID is not counted deleted; the lookup settles it as absent
    assert_eq!(
        e.koo.delete_alone(&b(APP, &["k1", "k2"])).await.unwrap(),
        DeleteOutcome::Partial {
            total: 2,
            deleted: 1
        }
    );
    assert_eq!(
        e.koo.lookup(APP, None, "k1").await.unwrap(),
        Presence::Absent
    );
    assert_eq!(
        e.koo.lookup(APP, None, "k3").await.unwrap(),
        Presence::Present
    );
    // the same ID under another scope is another chat
    e.sim.add_convai_chat("other", "s3", 1);
    e.convai.delete_alone(&b("char", &["s3"])).await.unwrap();
    assert!(e.sim.exists(ProviderKind::CONVAI, "other", "s3"));
}

#[tokio::test]
async fn koosearch_answers_in_both_casings_and_the_client_reads_both() {
    let e = env(Faults::default(), Duration::from_secs(5)).await;
    for i in 0..10 {
        let out = e
            .koo
            .delete_alone(&b(APP, &[&format!("k{i}")]))
            .await
            .unwrap();
        assert_eq!(out, DeleteOutcome::AllDeleted, "delete {i}");
    }
    // The simulator picks a casing per answer (seeded): check it really sent both.
    let http = reqwest::Client::new();
    let token = e.sim.issued_tokens().pop().unwrap();
    let mut casings = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let body: serde_json::Value = http
            .delete(format!(
                "{}/v1/{}/applications/{APP}/uni-search/chat-history/batch",
                e.sim.koosearch_url,
                simulator::PROJECT_ID
            ))
            .header("X-Auth-Token", &token)
            .json(&serde_json::json!({"chat_ids": ["zz"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        casings.insert(if body.get("totalCount").is_some() {
            "camel"
        } else {
            "snake"
        });
    }
    assert_eq!(casings.len(), 2);
}

#[tokio::test]
async fn every_error_class_is_classified() {
    type Check = fn(&Action) -> bool;
    let cases: Vec<(Faults, Check)> = vec![
        (
            Faults {
                error_rate: 1.0,
                ..Faults::default()
            },
            |a| matches!(a, Action::Retry | Action::RetryAfter(_)),
        ),
        (
            Faults {
                throttle_rate: 1.0,
                retry_after: Duration::from_secs(4),
                ..Faults::default()
            },
            |a| *a == Action::RetryAfter(Duration::from_secs(4)),
        ),
        (
            Faults {
                malformed_rate: 1.0,
                ..Faults::default()
            },
            |a| *a == Action::Retry,
        ),
        (
            Faults {
                reset_rate: 1.0,
                ..Faults::default()
            },
            |a| *a == Action::Retry,
        ),
        (
            Faults {
                hang_rate: 1.0,
                ..Faults::default()
            },
            |a| *a == Action::Retry,
        ),
        (
            Faults {
                bad_ids: ["s1".to_string(), "k1".to_string()].into(),
                ..Faults::default()
            },
            |a| *a == Action::Rejected,
        ),
        (
            Faults {
                rate_limit: Some(0),
                ..Faults::default()
            },
            |a| matches!(a, Action::RetryAfter(_)),
        ),
        (
            Faults {
                concurrency_limit: Some(0),
                ..Faults::default()
            },
            |a| matches!(a, Action::RetryAfter(_)),
        ),
        (
            Faults {
                auth_fail: [ProviderKind::CONVAI, ProviderKind::KOOSEARCH].into(),
                ..Faults::default()
            },
            |a| matches!(a, Action::Pause(_)),
        ),
    ];
    for (i, (faults, check)) in cases.into_iter().enumerate() {
        let e = env(faults, Duration::from_millis(300)).await;
        let ce = e
            .convai
            .delete_alone(&b("char", &["s1", "s2"]))
            .await
            .unwrap_err();
        assert!(check(&ce.action), "case {i} convai: {:?} {ce}", ce.action);
        let ke = e
            .koo
            .delete_alone(&b(APP, &["k1", "k2"]))
            .await
            .unwrap_err();
        assert!(
            check(&ke.action),
            "case {i} koosearch: {:?} {ke}",
            ke.action
        );
    }
    let e = env(
        Faults {
            delete_disabled: true,
            ..Faults::default()
        },
        Duration::from_secs(5),
    )
    .await;
    let ce = e
        .convai
        .delete_alone(&b("char", &["s1"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&ce.action, Action::Pause(r) if r.contains("not enabled")),
        "{ce}"
    );
    assert!(
        e.sim.exists(ProviderKind::CONVAI, "char", "s1"),
        "a disabled delete API deleted nothing"
    );
}

#[tokio::test]
async fn token_is_refreshed_ahead_of_expiry_without_a_401() {
    let e = env(
        Faults {
            token_ttl: Duration::from_secs(3600),
            ..Faults::default()
        },
        Duration::from_secs(5),
    )
    .await;
    e.koo.delete_alone(&b(APP, &["k1"])).await.unwrap();
    assert_eq!(token_calls(&e.sim), 1);
    e.clock.advance(Duration::from_secs(50 * 60));
    e.koo.delete_alone(&b(APP, &["k2"])).await.unwrap();
    assert_eq!(token_calls(&e.sim), 1, "still fresh at 50 of 60 minutes");
    e.clock.advance(Duration::from_secs(5 * 60)); // 55 min: inside the last tenth of its life
    e.koo.delete_alone(&b(APP, &["k3"])).await.unwrap();
    assert_eq!(token_calls(&e.sim), 2, "refreshed ahead of expiry");
    assert!(
        !e.sim.calls().iter().any(|c| c.status == 401),
        "no call was refused"
    );
}

#[tokio::test]
async fn a_401_refreshes_once_and_retries() {
    let e = env(Faults::default(), Duration::from_secs(5)).await;
    e.koo.delete_alone(&b(APP, &["k1"])).await.unwrap();
    e.sim.expire_tokens(); // as a password change would
    assert_eq!(
        e.koo.delete_alone(&b(APP, &["k2"])).await.unwrap(),
        DeleteOutcome::AllDeleted
    );
    assert_eq!(token_calls(&e.sim), 2);
    assert_eq!(e.sim.calls().iter().filter(|c| c.status == 401).count(), 1);
    // refused even with a fresh token: pause after exactly one refresh
    e.sim.update_faults(|f| {
        f.auth_fail.insert(ProviderKind::KOOSEARCH);
    });
    let err = e.koo.delete_alone(&b(APP, &["k3"])).await.unwrap_err();
    assert!(
        matches!(&err.action, Action::Pause(r) if r.contains("freshly issued")),
        "{err}"
    );
    assert_eq!(token_calls(&e.sim), 3);
}

#[tokio::test]
async fn concurrent_batches_share_one_refresh() {
    let e = env(
        Faults {
            latency: Duration::from_millis(20),
            ..Faults::default()
        },
        Duration::from_secs(5),
    )
    .await;
    for i in 10..42 {
        e.sim
            .add_koosearch_chat(APP, &format!("k{i}"), None, None, 1);
    }
    let run = |range: std::ops::Range<usize>| {
        let handles: Vec<_> = range
            .map(|i| {
                let k = e.koo.clone();
                tokio::spawn(async move { k.delete_alone(&b(APP, &[&format!("k{i}")])).await })
            })
            .collect();
        async move {
            for h in handles {
                h.await.unwrap().unwrap();
            }
        }
    };
    run(0..16).await;
    assert_eq!(
        token_calls(&e.sim),
        1,
        "16 concurrent first calls, one token"
    );
    e.sim.expire_tokens();
    run(16..32).await;
    assert_eq!(token_calls(&e.sim), 2, "16 concurrent 401s, one refresh");
}
