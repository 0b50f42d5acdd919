//! The settings every provider's table shares: `batch_size`, `concurrency`,
//! `requests_per_second`, `timeout`. Read here, once, for every provider; the provider's own
//! `config.rs` reads the rest of its table.
//!
//! Rules: a value of the wrong TOML type is a problem like any other (named by its key, the rest
//! of the file still checked); a provider may cap `batch_size` lower (KooSearch: 100 per call).

use std::time::Duration;

use crate::fields::{self, Problems};

/// Defaults for the shared keys (config.example.toml repeats them in its comments).
pub mod defaults {
    use std::time::Duration;
    pub const BATCH_SIZE: usize = 100;
    pub const CONCURRENCY: usize = 4;
    pub const TIMEOUT: Duration = Duration::from_secs(30);
}

/// The keys [`take`] reads.
pub const KEYS: &[&str] = &[
    "batch_size",
    "concurrency",
    "requests_per_second",
    "timeout",
];

/// Settings every provider shares.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimits {
    pub batch_size: usize,
    pub concurrency: usize,
    /// The gate's starting rate and its ceiling; `None`: no limit until the provider throttles,
    /// then a learned one ([`super::gate`]).
    pub requests_per_second: Option<f64>,
    pub timeout: Duration,
}

impl Default for ProviderLimits {
    fn default() -> Self {
        Self {
            batch_size: defaults::BATCH_SIZE,
            concurrency: defaults::CONCURRENCY,
            requests_per_second: None,
            timeout: defaults::TIMEOUT,
        }
    }
}

/// Removes the shared keys from a provider's table and validates them; `prefix` is the table's
/// path (`providers.convai`).
pub fn take(table: &mut toml::Table, prefix: &str, p: &mut Problems) -> ProviderLimits {
    let mut int = |p: &mut Problems, key: &str| match table.remove(key) {
        None => None,
        Some(toml::Value::Integer(n)) => Some(n),
        Some(other) => {
            p.push(format!(
                "`{prefix}.{key}` = {other}: must be an integer (no quotes)"
            ));
            None
        }
    };
    let batch_size = int(p, "batch_size");
    let concurrency = int(p, "concurrency");
    let batch_size = fields::positive(
        p,
        &format!("{prefix}.batch_size"),
        batch_size,
        defaults::BATCH_SIZE,
        100,
    );
    let concurrency = fields::positive(
        p,
        &format!("{prefix}.concurrency"),
        concurrency,
        defaults::CONCURRENCY,
        256,
    );
    let requests_per_second = match table.remove("requests_per_second") {
        None => None,
        Some(v) => match v.as_float().or(v.as_integer().map(|n| n as f64)) {
            Some(r) if r.is_finite() && r > 0.0 => Some(r),
            Some(r) => {
                p.push(format!(
                    "`{prefix}.requests_per_second` = {r}: must be above zero (omit it for no limit)"
                ));
                None
            }
            None => {
                p.push(format!(
                    "`{prefix}.requests_per_second` = {v}: must be a number (no quotes)"
                ));
                None
            }
        },
    };
    let timeout = match table.remove("timeout") {
        None => None,
        Some(toml::Value::String(s)) => Some(s),
        Some(other) => {
            p.push(format!(
                "`{prefix}.timeout` = {other}: must be a duration in quotes, e.g. \"30s\""
            ));
            None
        }
    };
    let timeout = fields::duration(
        p,
        &format!("{prefix}.timeout"),
        timeout.as_deref(),
        defaults::TIMEOUT,
    );
    ProviderLimits {
        batch_size,
        concurrency,
        requests_per_second,
        timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_are_taken_out_and_type_errors_named() {
        let mut t: toml::Table =
            "batch_size = \"20\"\nconcurrency = 2\nrequests_per_second = 5\ntimeout = 3\nbase_url = \"x\""
                .parse()
                .unwrap();
        let mut p = Problems::new();
        let l = take(&mut t, "providers.x", &mut p);
        assert_eq!(l.concurrency, 2);
        assert_eq!(l.requests_per_second, Some(5.0));
        assert_eq!(l.batch_size, defaults::BATCH_SIZE);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("providers.x.batch_size") && p[0].contains("integer"));
        assert!(p[1].contains("providers.x.timeout"));
        assert_eq!(t.keys().collect::<Vec<_>>(), ["base_url"]);
    }
}
