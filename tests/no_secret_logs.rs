//! No secret (API key, IAM password, IAM token) in any log line or error, with every log level
//! captured. Its own test binary: a process-wide subscriber, no other test racing tracing's
//! callsite registration.

mod sim_clients;
use sim_clients::*;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use forgetd::model::ProviderKind;
use forgetd::providers::Provider;
use forgetd::simulator::{self, Faults};

/// A writer that keeps every log line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_appears_in_any_log_line_or_error() {
    let logs = Captured::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let e = env(Faults::default(), Duration::from_millis(300)).await;
    let mut errors = Vec::new();
    e.koo.delete_alone(&b(APP, &["k1"])).await.unwrap();
    e.sim.expire_tokens();
    e.koo.delete_alone(&b(APP, &["k2"])).await.unwrap();
    // The refused credentials last: they pause each provider's gate, which then refuses calls
    // without sending them.
    for faults in [
        Faults {
            malformed_rate: 1.0,
            ..Faults::default()
        },
        Faults {
            bad_ids: ["k3".to_string(), "s3".to_string()].into(),
            ..Faults::default()
        },
        Faults {
            auth_fail: [ProviderKind::CONVAI, ProviderKind::KOOSEARCH].into(),
            ..Faults::default()
        },
    ] {
        e.sim.set_faults(faults);
        errors.push(
            e.convai
                .delete_alone(&b("char", &["s3"]))
                .await
                .unwrap_err(),
        );
        errors.push(e.koo.delete_alone(&b(APP, &["k3"])).await.unwrap_err());
    }
    let mut tokens = e.sim.issued_tokens();
    tokens.push("MII".into()); // every simulator token starts so
    let text = format!(
        "{}\n{}\n{:?}\n{:?}",
        String::from_utf8_lossy(&logs.0.lock().unwrap()),
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        errors,
        (&e.convai, &e.koo)
    );
    assert!(
        text.contains("fetched an IAM token"),
        "the capture works: {text}"
    );
    for secret in [simulator::CONVAI_KEY, simulator::IAM_PASSWORD]
        .iter()
        .map(|s| s.to_string())
        .chain(tokens)
    {
        assert!(!text.contains(&secret), "secret {secret:?} leaked:\n{text}");
    }
}
