//! Probe: round-trip time of the simulator's delete call at a set latency, with a bare HTTP client
//! and with forgetd's Convai client (not part of the suite; see docs/BENCHMARKS.md).
use std::sync::Arc;
use std::time::{Duration, Instant};

use forgetd::providers::Provider;

#[tokio::main]
async fn main() {
    let latency = Duration::from_millis(
        std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(50),
    );
    let sim = forgetd::simulator::Simulator::start(
        Arc::new(forgetd::clock::SystemClock),
        forgetd::simulator::Faults {
            latency,
            ..Default::default()
        },
        1,
    )
    .await
    .unwrap();
    sim.set_record_ids(false);
    let ids: Vec<String> = (0..100).map(|i| format!("s{i:09}")).collect();
    let c = reqwest::Client::new();
    let n = 40;
    let t = Instant::now();
    for _ in 0..n {
        c.post(format!("{}/character/chatHistory/delete", sim.convai_url))
            .header("CONVAI-API-KEY", forgetd::simulator::CONVAI_KEY)
            .json(&serde_json::json!({"charID": "c", "sessionIDs": ids}))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    println!(
        "bare client: mean RTT {:.2} ms at {} ms latency",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64,
        latency.as_millis()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), forgetd::simulator::CONVAI_KEY).unwrap();
    let client = forgetd::providers::convai::ConvaiClient::new(
        &forgetd::providers::convai::ConvaiConfig {
            base_url: sim.convai_url.parse().unwrap(),
            api_key: forgetd::config::SecretRef::File(dir.path().join("k")),
        },
        forgetd::providers::gate::Gate::new(
            forgetd::model::ProviderKind::CONVAI,
            &forgetd::providers::ProviderLimits {
                batch_size: 100,
                concurrency: 4,
                requests_per_second: None,
                timeout: Duration::from_secs(5),
            },
            Duration::from_secs(3600),
            std::sync::Arc::new(forgetd::clock::SystemClock),
        ),
    )
    .unwrap();
    let batch = forgetd::providers::DeleteBatch {
        scope: "c".into(),
        repo_id: None,
        ids,
    };
    let t = Instant::now();
    for _ in 0..n {
        client.delete_alone(&batch).await.unwrap();
    }
    println!(
        "forgetd client: mean RTT {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
    // Four concurrent callers, no database: the best a client with concurrency 4 can do.
    let client = Arc::new(client);
    let t = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (c, b) = (client.clone(), batch.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    c.delete_alone(&b).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "4 concurrent, no database: {:.0} IDs/s = {:.1}% of {:.0}",
        8000.0 / el,
        8000.0 / el / (400.0 / latency.as_secs_f64()) * 100.0,
        400.0 / latency.as_secs_f64()
    );
}
