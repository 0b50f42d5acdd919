//! Both provider clients wired to a running simulator on an injected clock, for the tests that
//! drive them directly.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use forgetd::clock::{ManualClock, SharedClock};
use forgetd::model::ProviderKind;
use forgetd::providers::convai::{ConvaiClient, ConvaiConfig};
use forgetd::providers::gate::Gate;
use forgetd::providers::koosearch::{KooSearchClient, KooSearchConfig};
use forgetd::providers::{DeleteBatch, ProviderLimits};
use forgetd::simulator::{Faults, Simulator};

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
    let config = sim.config(dir.path(), &[APP]).unwrap();
    let limits = ProviderLimits {
        timeout,
        ..ProviderLimits::default()
    };
    let gate = |kind| Gate::new(kind, &limits, Duration::from_secs(3600), shared.clone());
    let convai = ConvaiClient::new(
        config.settings::<ConvaiConfig>().unwrap(),
        gate(ProviderKind::CONVAI),
    )
    .unwrap();
    let koo = Arc::new(
        KooSearchClient::new(
            config.settings::<KooSearchConfig>().unwrap(),
            gate(ProviderKind::KOOSEARCH),
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
