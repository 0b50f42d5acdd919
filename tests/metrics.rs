//! /metrics and /healthz scraped over HTTP from the real daemon while it drains.

mod common;
use common::*;

use std::time::Duration;

use forgetd::clock::SystemClock;
use forgetd::simulator::{Faults, Simulator};

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_change_as_a_drain_proceeds() {
    let s = Scratch::new();
    let sim = Simulator::start(
        std::sync::Arc::new(SystemClock),
        Faults {
            throttle_rate: 0.3,
            retry_after: Duration::from_secs(1),
            ..Faults::default()
        },
        5,
    )
    .await
    .unwrap();
    for i in 0..30 {
        sim.add_convai_chat("char", &format!("m{i}"), 1);
    }
    let port = free_port();
    let cfg = sim_config(
        &s,
        &sim,
        &["app-1"],
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    let before = wait_for("the metrics listener to come up", scrape).await;
    assert_eq!(metric(&before, "forgetd_deletions_total"), 0.0);
    // Every known series is there before its first event, at 0.
    for series in [
        "forgetd_deletions_total{provider=\"convai\",outcome=\"deleted\"} 0",
        "forgetd_deletions_total{provider=\"koosearch\",outcome=\"dead\"} 0",
        "forgetd_retries_total{provider=\"convai\",cause=\"server_error\"} 0",
        "forgetd_throttled_total{provider=\"koosearch\"} 0",
        "forgetd_delete_calls_total{provider=\"convai\"} 0",
        "forgetd_lookups_total{provider=\"koosearch\"} 0",
        "forgetd_batch_splits_total{provider=\"convai\"} 0",
        "forgetd_token_refreshes_total{provider=\"convai\"} 0",
        // Each gate: running, no rate (none configured, never throttled), its concurrency.
        "forgetd_gate_state{provider=\"convai\",state=\"running\"} 1",
        "forgetd_gate_state{provider=\"convai\",state=\"paused\"} 0",
        "forgetd_gate_state{provider=\"koosearch\",state=\"throttled\"} 0",
        "forgetd_gate_calls_per_second{provider=\"koosearch\"} 0.0",
    ] {
        assert!(
            before.lines().any(|l| l == series),
            "missing {series}:\n{before}"
        );
    }
    assert!(
        before
            .lines()
            .any(|l| l.starts_with("forgetd_build_info{version=\"")
                && l.contains(",commit=\"")
                && l.ends_with("} 1")),
        "{before}"
    );
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let csv: String = std::iter::once("provider,scope,session_id,subject".to_string())
        .chain(
            (0..30).map(|i| format!("convai,char,m{i},{}", if i < 20 { "mia" } else { "other" })),
        )
        .collect::<Vec<_>>()
        .join("\n");
    let f = s.write("inv.csv", &csv);
    assert_eq!(
        code(&s.forgetd(&["sessions", "import", f.to_str().unwrap()])),
        0
    );
    assert_eq!(code(&s.forgetd(&["erase", "--subject", "mia"])), 0);

    let after = wait_for("20 deletions in /metrics", || async {
        let t = scrape().await?;
        let done = metric(
            &t,
            "forgetd_deletions_total{provider=\"convai\",outcome=\"deleted\"}",
        ) >= 20.0;
        done.then_some(t)
    })
    .await;
    assert_eq!(
        metric(
            &after,
            "forgetd_deletions_total{provider=\"convai\",outcome=\"deleted\"}"
        ),
        20.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "forgetd_items{provider=\"convai\",state=\"deleted\"}"
        ),
        20.0,
        "{after}"
    );
    assert!(
        metric(&after, "forgetd_batch_duration_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("forgetd_provider_paused{provider=\"convai\"} 0"),
        "{after}"
    );
    assert!(
        metric(&after, "forgetd_gate_concurrency{provider=\"convai\"}") >= 1.0,
        "{after}"
    );
    if metric(&after, "forgetd_throttled_total") > 0.0 {
        assert!(
            metric(
                &after,
                "forgetd_retries_total{provider=\"convai\",cause=\"throttled\"}"
            ) > 0.0,
            "{after}"
        );
    }
    // The chain's head was written to the journal at start (the anchor), and has moved since.
    let anchored = metric(&after, "forgetd_audit_anchored_seq");
    assert!(anchored >= 1.0, "{after}");
    assert!(
        metric(&after, "forgetd_audit_head_seq") > anchored,
        "{after}"
    );
    // KooSearch fetched its IAM token to list and delete: the counter went up.
    assert!(
        metric(
            &after,
            "forgetd_token_refreshes_total{provider=\"koosearch\"}"
        ) >= 1.0,
        "{after}"
    );
    child.start_kill().unwrap();
}
