//! Both provider clients wired to a running simulator on an injected clock, for the tests that
//! drive them directly.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use forgetd::clock::{ManualClock, SharedClock};
use forgetd::config::{
    ConvaiConfig, IamConfig, KooSearchAuth, KooSearchConfig, ProviderLimits, SecretRef,
};
use forgetd::providers::DeleteBatch;
use forgetd::providers::convai::ConvaiClient;
use forgetd::providers::koosearch::KooSearchClient;
use forgetd::simulator::{self, Faults, Simulator};

pub const APP: &str = "app-1";

pub struct Env {
    pub sim: Simulator,
    pub clock: ManualClock,
    pub _dir: tempfile::TempDir,
    pub convai: ConvaiClient,
    pub koo: Arc<KooSearchClient>,
}

pub async fn env(faults: Faults, timeout: Duration) -> Env {
    let clock = ManualClock::new(1_800_000_000_000);
    let shared: SharedClock = Arc::new(clock.clone());
    let sim = Simulator::start(shared.clone(), faults, 42).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), simulator::CONVAI_KEY).unwrap();
    std::fs::write(dir.path().join("p"), simulator::IAM_PASSWORD).unwrap();
    let limits = ProviderLimits {
        batch_size: 100,
        concurrency: 4,
        requests_per_second: None,
        timeout,
    };
    let convai = ConvaiClient::new(
        &ConvaiConfig {
            base_url: sim.convai_url.parse().unwrap(),
            api_key: SecretRef::File(dir.path().join("k")),
            limits: limits.clone(),
        },
        shared.clone(),
    )
    .unwrap();
    let koo = Arc::new(
        KooSearchClient::new(
            &KooSearchConfig {
                endpoint: sim.koosearch_url.parse().unwrap(),
                project_id: simulator::PROJECT_ID.into(),
                applications: vec![APP.into()],
                discover_by_user_name: true,
                auth: KooSearchAuth::Iam(IamConfig {
                    endpoint: sim.iam_url.parse().unwrap(),
                    domain: simulator::IAM_DOMAIN.into(),
                    user: simulator::IAM_USER.into(),
                    password: SecretRef::File(dir.path().join("p")),
                    project: simulator::IAM_PROJECT.into(),
                }),
                limits,
            },
            shared,
        )
        .unwrap(),
    );
    for i in 0..10 {
        sim.add_convai_chat("char", &format!("s{i}"), 1_700_000_000);
        sim.add_koosearch_chat(APP, &format!("k{i}"), Some("alice"), None, 1_700_000_000);
    }
    Env {
        sim,
        clock,
        _dir: dir,
        convai,
        koo,
    }
}

pub fn b(scope: &str, ids: &[&str]) -> DeleteBatch {
    DeleteBatch {
        scope: scope.into(),
        repo_id: None,
        ids: ids.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn token_calls(sim: &Simulator) -> usize {
    sim.calls()
        .iter()
        .filter(|c| c.op == "token" && c.status == 201)
        .count()
}
