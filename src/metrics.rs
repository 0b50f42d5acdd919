//! Metrics and health: Prometheus `/metrics` and `/healthz` on the optional `[http] listen`
//! address (loopback by default).
//!
//! Event counters (deletions, retries, 429s, batch latency) are updated by the executor as things
//! happen; queue gauges (items by state, oldest pending age, overdue requests, paused providers)
//! are read from the database at scrape time, so they are never stale and cost nothing between
//! scrapes. Names follow Prometheus conventions (`_total` counters, base units, `forgetd_`
//! prefix); docs/METRICS.md lists them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::providers::SharedProvider;
use crate::store::AsyncStore;

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub deletions: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub throttled: Family<Labels, Counter>,
    pub batch_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    items: Family<Labels, Gauge>,
    oldest_pending: Gauge,
    overdue: Gauge,
    due_soon: Gauge,
    paused: Family<Labels, Gauge>,
    token_refreshes: Family<Labels, Gauge>,
    /// When the daemon's intake loop last went round (unix ms), for /healthz.
    pub heartbeat_ms: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("forgetd");
        let deletions = Family::<Labels, Counter>::default();
        let retries = Family::<Labels, Counter>::default();
        let throttled = Family::<Labels, Counter>::default();
        let batch_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let items = Family::<Labels, Gauge>::default();
        let oldest_pending = Gauge::default();
        let overdue = Gauge::default();
        let due_soon = Gauge::default();
        let paused = Family::<Labels, Gauge>::default();
        let token_refreshes = Family::<Labels, Gauge>::default();
        registry.register(
            "deletions",
            "Chats by provider and outcome (deleted, dead)",
            deletions.clone(),
        );
        registry.register(
            "retries",
            "Items sent back for another try, by provider and cause",
            retries.clone(),
        );
        registry.register("throttled", "429 answers by provider", throttled.clone());
        registry.register_with_unit(
            "batch_duration",
            "Delete call latency by provider",
            prometheus_client::registry::Unit::Seconds,
            batch_seconds.clone(),
        );
        registry.register("items", "Work items by provider and state", items.clone());
        registry.register_with_unit(
            "oldest_pending_age",
            "Age of the oldest pending item",
            prometheus_client::registry::Unit::Seconds,
            oldest_pending.clone(),
        );
        registry.register(
            "requests_overdue",
            "Open erasure requests past their due date",
            overdue.clone(),
        );
        registry.register(
            "requests_due_soon",
            "Open erasure requests due within 7 days",
            due_soon.clone(),
        );
        registry.register(
            "provider_paused",
            "1 while a provider is paused (auth, permission, API not enabled)",
            paused.clone(),
        );
        registry.register(
            "token_refreshes",
            "IAM tokens fetched, by provider",
            token_refreshes.clone(),
        );
        Self {
            registry,
            deletions,
            retries,
            throttled,
            batch_seconds,
            items,
            oldest_pending,
            overdue,
            due_soon,
            paused,
            token_refreshes,
            heartbeat_ms: AtomicI64::new(0),
        }
    }

    /// Reads the queue gauges from the database and renders everything in the text format.
    pub async fn render(
        &self,
        store: &AsyncStore,
        providers: &[SharedProvider],
        now: i64,
        deadline_secs: i64,
    ) -> Result<String, crate::store::StoreError> {
        let st = store.call(move |s| s.status(now, deadline_secs)).await?;
        self.items.clear();
        for (p, counts) in &st.items {
            // Every state, zeros included: a series that vanishes reads as "no data", not 0.
            for (state, n) in counts.by_state() {
                self.items
                    .get_or_create(&labels(&[("provider", p), ("state", state.as_str())]))
                    .set(n as i64);
            }
        }
        self.oldest_pending
            .set(st.oldest_pending_age_secs.unwrap_or(0));
        self.overdue.set(st.overdue.len() as i64);
        self.due_soon.set(st.due_soon.len() as i64);
        for p in providers {
            let kind = p.kind().to_string();
            let paused = st.paused_providers.iter().any(|x| x.provider == kind);
            self.paused
                .get_or_create(&labels(&[("provider", &kind)]))
                .set(paused as i64);
            self.token_refreshes
                .get_or_create(&labels(&[("provider", &kind)]))
                .set(p.token_refreshes() as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        Ok(out)
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: AsyncStore,
    providers: Vec<SharedProvider>,
    clock: SharedClock,
    deadline_secs: Arc<AtomicI64>,
}

async fn metrics_handler(State(s): State<HttpState>) -> Response {
    let now = s.clock.now();
    match s
        .metrics
        .render(
            &s.store,
            &s.providers,
            now,
            s.deadline_secs.load(Ordering::Relaxed),
        )
        .await
    {
        Ok(text) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

/// Healthy when the intake loop went round within the last 30 s and the database answers.
async fn healthz_handler(State(s): State<HttpState>) -> Response {
    let age_ms = s.clock.now_ms() - s.metrics.heartbeat_ms.load(Ordering::Relaxed);
    if age_ms > 30_000 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("intake loop silent for {} s\n", age_ms / 1000),
        )
            .into_response();
    }
    match s.store.call(|st| st.data_version()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

/// Serves /metrics and /healthz until cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: AsyncStore,
    providers: Vec<SharedProvider>,
    clock: SharedClock,
    deadline_secs: Arc<AtomicI64>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let state = HttpState {
        metrics,
        store,
        providers,
        clock,
        deadline_secs,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
