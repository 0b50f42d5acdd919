//! Metrics: the Prometheus registry and what `/metrics` renders (the listener that serves it,
//! with `/healthz` and the status page, is [`crate::web`]).
//!
//! Event counters (deletions, retries, 429s, delete calls, lookups, splits, batch latency) are
//! updated by the executor through the typed methods here as things happen, every known series
//! created at 0 when a provider is registered; the executor's [`Stats`] are read back from them,
//! so reports and `/metrics` cannot disagree; queue gauges (items by state, oldest pending age, overdue requests, paused providers)
//! are read from the database at scrape time, so they are never stale and cost nothing between
//! scrapes; each provider's gate (state, paced rate, allowed concurrency, throttled answers of
//! every kind of call) is read from the gate itself ([`Metrics::observe_gate`]). Names follow Prometheus conventions (`_total` counters, base units, `forgetd_`
//! prefix); docs/METRICS.md lists them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::model::ProviderKind;
use crate::providers::gate::{GateState, GateView};
use crate::providers::{ProviderError, SharedProvider};
use crate::store::AsyncStore;

type Labels = Vec<(String, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    deletions: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    throttled: Family<Labels, Counter>,
    delete_calls: Family<Labels, Counter>,
    lookups: Family<Labels, Counter>,
    splits: Family<Labels, Counter>,
    read_backs: Family<Labels, Counter>,
    reappeared: Family<Labels, Counter>,
    requests_verified: Counter,
    read_backs_waiting: Gauge,
    pub batch_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    items: Family<Labels, Gauge>,
    oldest_pending: Gauge,
    overdue: Gauge,
    due_soon: Gauge,
    /// Listings by subject, by state (pending, retrying, failed).
    listings: Family<Labels, Gauge>,
    paused: Family<Labels, Gauge>,
    token_refreshes: Family<Labels, Counter>,
    gate_state: Family<Labels, Gauge>,
    gate_rate: Family<Labels, Gauge<f64, AtomicU64>>,
    gate_concurrency: Family<Labels, Gauge>,
    /// When the daemon's intake loop last went round (unix ms), for /healthz.
    pub heartbeat_ms: AtomicI64,
    /// The same, exported: an alert rule sees a stale heartbeat while the process still answers.
    heartbeat_seconds: Gauge,
    /// How long the database has refused writes (0 when it takes them), and how many writes it
    /// refused since start ([`crate::store::outage`]).
    unwritable_seconds: Gauge,
    write_failures: Counter,
    /// The audit chain's last sequence number (read at scrape time).
    audit_head_seq: Gauge,
    /// The last sequence number written to the journal as the chain's anchor (by the daemon's
    /// reporter, every 5 minutes when the head moved).
    pub audit_anchored_seq: Gauge,
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
        let delete_calls = Family::<Labels, Counter>::default();
        let lookups = Family::<Labels, Counter>::default();
        let splits = Family::<Labels, Counter>::default();
        let read_backs = Family::<Labels, Counter>::default();
        let reappeared = Family::<Labels, Counter>::default();
        let requests_verified = Counter::default();
        let read_backs_waiting = Gauge::default();
        let batch_seconds = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let items = Family::<Labels, Gauge>::default();
        let oldest_pending = Gauge::default();
        let overdue = Gauge::default();
        let due_soon = Gauge::default();
        let listings = Family::<Labels, Gauge>::default();
        let paused = Family::<Labels, Gauge>::default();
        let token_refreshes = Family::<Labels, Counter>::default();
        let build_info = Family::<Labels, Gauge>::default();
        let gate_state = Family::<Labels, Gauge>::default();
        let gate_rate = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let gate_concurrency = Family::<Labels, Gauge>::default();
        let heartbeat_seconds = Gauge::default();
        let unwritable_seconds = Gauge::default();
        let write_failures = Counter::default();
        registry.register(
            "database_unwritable_seconds",
            "How long the database has refused the daemon's writes (disk full, read-only, locked); 0 while it takes them",
            unwritable_seconds.clone(),
        );
        registry.register(
            "database_write_failures",
            "The daemon's writes the database refused for a while (each is tried again)",
            write_failures.clone(),
        );
        let audit_head_seq = Gauge::default();
        let audit_anchored_seq = Gauge::default();
        registry.register(
            "audit_head_seq",
            "The audit chain's last sequence number",
            audit_head_seq.clone(),
        );
        registry.register(
            "audit_anchored_seq",
            "The last audit sequence number written to the journal as the chain's anchor",
            audit_anchored_seq.clone(),
        );
        registry.register(
            "heartbeat_timestamp_seconds",
            "When the daemon's intake loop last went round (unix seconds); 0 before the first round",
            heartbeat_seconds.clone(),
        );
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
        registry.register(
            "throttled",
            "Throttled answers (429, APIG.0308) by provider, from every kind of call",
            throttled.clone(),
        );
        registry.register(
            "delete_calls",
            "Delete calls sent, by provider",
            delete_calls.clone(),
        );
        registry.register(
            "lookups",
            "Single-chat lookups after a partial batch, by provider",
            lookups.clone(),
        );
        registry.register(
            "batch_splits",
            "Refused batches split to isolate a bad ID, by provider",
            splits.clone(),
        );
        registry.register(
            "read_backs",
            "Deleted chats read back (verification), by provider and result: absent, reappeared, undecided (read again later), unverified (given up; never counted as verified)",
            read_backs.clone(),
        );
        registry.register(
            "reappeared",
            "Chats read back present after their deletion was confirmed, by provider (each is deleted again, or dead past [verify] max_reappearances)",
            reappeared.clone(),
        );
        registry.register(
            "requests_verified",
            "Complete erasure requests whose every deleted chat was read back absent",
            requests_verified.clone(),
        );
        registry.register(
            "read_backs_waiting",
            "Deleted chats not read back yet (waiting for [verify] after, or read again after an undecided read)",
            read_backs_waiting.clone(),
        );
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
            "discovery_listings",
            "Listings by subject for erasure requests: pending (to come), retrying (pending after a failed try), failed (the request ends failed)",
            listings.clone(),
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
        registry.register(
            "gate_state",
            "1 for the state a provider's politeness gate is in (running, throttled, paused), 0 for the others",
            gate_state.clone(),
        );
        registry.register(
            "gate_calls_per_second",
            "The rate a provider's gate paces calls at, configured or learned from throttling (0: no limit)",
            gate_rate.clone(),
        );
        registry.register(
            "gate_concurrency",
            "Calls a provider's gate allows in flight now (halved by a throttle, up to the configured concurrency)",
            gate_concurrency.clone(),
        );
        registry.register(
            "build_info",
            "1, labelled with the version and the commit this daemon was built from",
            build_info.clone(),
        );
        build_info
            .get_or_create(&labels(&[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("FORGETD_COMMIT")),
            ]))
            .set(1);
        Self {
            registry,
            deletions,
            retries,
            throttled,
            delete_calls,
            lookups,
            splits,
            read_backs,
            reappeared,
            requests_verified,
            read_backs_waiting,
            batch_seconds,
            items,
            oldest_pending,
            overdue,
            listings,
            due_soon,
            paused,
            token_refreshes,
            gate_state,
            gate_rate,
            gate_concurrency,
            heartbeat_ms: AtomicI64::new(0),
            heartbeat_seconds,
            unwritable_seconds,
            write_failures,
            audit_head_seq,
            audit_anchored_seq,
        }
    }

    /// Creates every known series of a provider at 0, so a counter exists before its first
    /// event (a series that appears only later reads as "no data", and `rate()` misses its
    /// first increase).
    pub fn register_provider(&self, kind: ProviderKind) {
        let k = kind.as_str();
        for outcome in DELETION_OUTCOMES {
            drop(
                self.deletions
                    .get_or_create(&labels(&[("provider", k), ("outcome", outcome)])),
            );
        }
        for cause in ProviderError::CAUSES {
            drop(
                self.retries
                    .get_or_create(&labels(&[("provider", k), ("cause", cause)])),
            );
        }
        for f in [
            &self.throttled,
            &self.delete_calls,
            &self.lookups,
            &self.splits,
        ] {
            drop(f.get_or_create(&labels(&[("provider", k)])));
        }
        for state in GateState::ALL {
            drop(
                self.gate_state
                    .get_or_create(&labels(&[("provider", k), ("state", state.as_str())])),
            );
        }
        for result in READ_BACK_RESULTS {
            drop(
                self.read_backs
                    .get_or_create(&labels(&[("provider", k), ("result", result)])),
            );
        }
        drop(self.reappeared.get_or_create(&labels(&[("provider", k)])));
        drop(self.gate_rate.get_or_create(&labels(&[("provider", k)])));
        // The latency histogram too: its buckets at 0 before the first call, so a quantile panel
        // shows "no calls" instead of "no data".
        drop(
            self.batch_seconds
                .get_or_create(&labels(&[("provider", k)])),
        );
        drop(
            self.gate_concurrency
                .get_or_create(&labels(&[("provider", k)])),
        );
    }

    /// Counts one round of read-backs ([`crate::verify`]).
    pub fn observe_read_backs(
        &self,
        kind: ProviderKind,
        s: &crate::store::verification::ReadBackSummary,
    ) {
        let k = kind.as_str();
        for (result, n) in [
            ("absent", s.absent),
            ("reappeared", s.reappeared),
            ("undecided", s.undecided),
            ("unverified", s.unverified),
        ] {
            self.read_backs
                .get_or_create(&labels(&[("provider", k), ("result", result)]))
                .inc_by(n);
        }
        self.reappeared
            .get_or_create(&labels(&[("provider", k)]))
            .inc_by(s.reappeared);
        self.requests_verified.inc_by(s.requests_verified);
    }

    /// Reads a provider's gate into the gate gauges; the throttled counter catches up to the
    /// gate's own count (never back).
    pub fn observe_gate(&self, v: &GateView) {
        let k = v.provider.as_str();
        for state in GateState::ALL {
            self.gate_state
                .get_or_create(&labels(&[("provider", k), ("state", state.as_str())]))
                .set((state == v.state) as i64);
        }
        self.gate_rate
            .get_or_create(&labels(&[("provider", k)]))
            .set(v.rate.unwrap_or(0.0));
        self.gate_concurrency
            .get_or_create(&labels(&[("provider", k)]))
            .set(v.allowed as i64);
        let c = one(&self.throttled, v.provider);
        c.inc_by(v.throttles.saturating_sub(c.get()));
    }

    /// A chat's deletion ended: `deleted` or `dead`.
    pub fn deletion(&self, kind: ProviderKind, outcome: &'static str) {
        debug_assert!(DELETION_OUTCOMES.contains(&outcome));
        self.deletions
            .get_or_create(&labels(&[
                ("provider", kind.as_str()),
                ("outcome", outcome),
            ]))
            .inc();
    }
    /// An item was sent back for another try.
    pub fn retry(&self, kind: ProviderKind, cause: &'static str) {
        self.retries
            .get_or_create(&labels(&[("provider", kind.as_str()), ("cause", cause)]))
            .inc();
    }
    pub fn delete_call(&self, kind: ProviderKind) {
        one(&self.delete_calls, kind).inc();
    }
    pub fn lookup(&self, kind: ProviderKind) {
        one(&self.lookups, kind).inc();
    }
    pub fn split(&self, kind: ProviderKind) {
        one(&self.splits, kind).inc();
    }

    /// The executor's counters for `kinds`, read back from the series above: `run --once` and
    /// the demo report the same numbers `/metrics` exports, from one place.
    pub fn stats(&self, kinds: impl IntoIterator<Item = ProviderKind>) -> Stats {
        let read = |f: &Family<Labels, Counter>, l: &Labels| f.get(l).map(|c| c.get()).unwrap_or(0);
        let mut st = Stats::default();
        for kind in kinds {
            let k = kind.as_str();
            let p = labels(&[("provider", k)]);
            st.calls += read(&self.delete_calls, &p);
            st.lookups += read(&self.lookups, &p);
            st.splits += read(&self.splits, &p);
            let put = |m: &mut BTreeMap<String, u64>, n: u64| {
                if n > 0 {
                    m.insert(k.to_string(), n);
                }
            };
            put(&mut st.throttled, read(&self.throttled, &p));
            put(&mut st.reappeared, read(&self.reappeared, &p));
            put(
                &mut st.deleted,
                read(
                    &self.deletions,
                    &labels(&[("provider", k), ("outcome", "deleted")]),
                ),
            );
            put(
                &mut st.dead,
                read(
                    &self.deletions,
                    &labels(&[("provider", k), ("outcome", "dead")]),
                ),
            );
            for cause in ProviderError::CAUSES {
                let n = read(&self.retries, &labels(&[("provider", k), ("cause", cause)]));
                if n > 0 {
                    st.retries
                        .entry(k.to_string())
                        .or_default()
                        .insert(cause.to_string(), n);
                }
            }
        }
        st
    }

    /// Reads the queue gauges from the database and renders everything in the text format.
    pub async fn render(
        &self,
        store: &AsyncStore,
        providers: &[SharedProvider],
        now: i64,
        deadline_secs: i64,
    ) -> Result<String, crate::store::StoreError> {
        let (st, head, waiting) = store
            .call(move |s| {
                Ok::<_, crate::store::StoreError>((
                    s.status(now, deadline_secs)?,
                    s.audit_head()?,
                    s.read_backs_waiting()?,
                ))
            })
            .await?;
        self.read_backs_waiting.set(waiting as i64);
        self.audit_head_seq
            .set(head.map(|(seq, _)| seq).unwrap_or(0));
        self.items.clear();
        // Every state of every configured provider (and of any provider with items), zeros
        // included: a series that vanishes, or never appears, reads as "no data", not 0.
        let empty = Default::default();
        let configured = providers.iter().map(|p| p.kind().to_string());
        let known: std::collections::BTreeSet<String> =
            configured.chain(st.items.keys().cloned()).collect();
        for p in &known {
            let counts = st.items.get(p).unwrap_or(&empty);
            for (state, n) in counts.by_state() {
                self.items
                    .get_or_create(&labels(&[("provider", p), ("state", state.as_str())]))
                    .set(n as i64);
            }
        }
        self.oldest_pending
            .set(st.oldest_pending_age_secs.unwrap_or(0));
        self.heartbeat_seconds.set(
            self.heartbeat_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                .div_euclid(1000),
        );
        self.overdue.set(st.overdue.len() as i64);
        for (state, n) in [
            ("pending", st.listings.pending),
            ("retrying", st.listings.retrying),
            ("failed", st.listings.failed_total),
        ] {
            self.listings
                .get_or_create(&labels(&[("state", state)]))
                .set(n as i64);
        }
        self.due_soon.set(st.due_soon.len() as i64);
        let outage = store.outage();
        self.unwritable_seconds.set(
            outage
                .current()
                .map_or(0, |o| o.lasted.as_secs().max(1) as i64),
        );
        self.write_failures
            .inc_by(outage.failures().saturating_sub(self.write_failures.get()));
        for p in providers {
            self.observe_gate(&p.gate().view());
            let kind = p.kind().to_string();
            let paused = st.paused_providers.iter().any(|x| x.provider == kind);
            self.paused
                .get_or_create(&labels(&[("provider", &kind)]))
                .set(paused as i64);
            // The client counts its token fetches; the counter catches up to it (never back).
            let c = self
                .token_refreshes
                .get_or_create(&labels(&[("provider", &kind)]))
                .clone();
            c.inc_by(p.token_refreshes().saturating_sub(c.get()));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        Ok(out)
    }
}

/// The `outcome` label values of `forgetd_deletions_total`.
pub const DELETION_OUTCOMES: [&str; 2] = ["deleted", "dead"];
/// The `result` label of `forgetd_read_backs_total`.
pub const READ_BACK_RESULTS: [&str; 4] = ["absent", "reappeared", "undecided", "unverified"];

fn one(f: &Family<Labels, Counter>, kind: ProviderKind) -> Counter {
    f.get_or_create(&labels(&[("provider", kind.as_str())]))
        .clone()
}

/// What the executor did, per provider (`run --once`, the demo report): a view of [`Metrics`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub calls: u64,
    pub deleted: BTreeMap<String, u64>,
    pub dead: BTreeMap<String, u64>,
    /// provider -> cause -> count of items sent back for another try
    pub retries: BTreeMap<String, BTreeMap<String, u64>>,
    pub throttled: BTreeMap<String, u64>,
    /// provider -> confirmed deletions read back present afterwards (they did not hold)
    pub reappeared: BTreeMap<String, u64>,
    pub lookups: u64,
    pub splits: u64,
    /// provider -> why it is paused (from the executor's lanes, not a counter)
    pub paused: BTreeMap<String, String>,
}

impl Stats {
    /// provider -> deletions that held: confirmed ones, less those read back present since.
    pub fn kept(&self) -> BTreeMap<String, u64> {
        self.deleted
            .iter()
            .map(|(p, n)| {
                let back = self.reappeared.get(p).copied().unwrap_or(0);
                (p.clone(), n.saturating_sub(back))
            })
            .collect()
    }
}
