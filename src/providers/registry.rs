//! The one list of providers forgetd serves, and everything that turns a key into a provider:
//! parsing a [`ProviderKind`] (text, serde, SQL), the CLI's `--provider` values, the config's
//! `[providers.<key>]` tables, the database's `providers` table.
//!
//! Adding a provider: its folder under `providers/` (config, client, answers; a `REGISTRATION`)
//! and one line in [`REGISTRY`]. Nothing else in forgetd names a provider; the schema checks
//! feeders' rows against the `providers` table the store keeps equal to this list.

use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use super::Settings;
use crate::fields::Problems;
use crate::model::{ProviderKind, UnknownProvider};

/// What a provider tells the rest of forgetd about itself.
pub struct Registration {
    pub kind: ProviderKind,
    /// Reads its `[providers.<key>]` table (the shared limit keys already taken out): every
    /// problem onto `problems`, `None` when the table is unusable.
    pub settings: fn(table: toml::Table, problems: &mut Problems) -> Option<Arc<dyn Settings>>,
    /// Whether a scope (character, application ID) can exist at this provider: rule scopes and
    /// hold targets are checked with it before the database sees them.
    pub check_scope: fn(scope: &str) -> Result<(), String>,
}

/// Every provider, in the order `check-config`, `status` and `/metrics` list them.
pub static REGISTRY: &[&Registration] = &[
    &super::convai::REGISTRATION,
    &super::koosearch::REGISTRATION,
    #[cfg(test)]
    &super::ledger::REGISTRATION,
];

/// The registration of a provider.
pub fn registration(kind: ProviderKind) -> &'static Registration {
    REGISTRY
        .iter()
        .find(|r| r.kind == kind)
        .expect("a ProviderKind is only made by a registered provider or by parsing its key")
}

impl ProviderKind {
    /// Every registered provider.
    pub fn all() -> impl Iterator<Item = ProviderKind> {
        REGISTRY.iter().map(|r| r.kind)
    }

    /// Checks a scope against the provider's ID rules.
    pub fn check_scope(self, scope: &str) -> Result<(), String> {
        (registration(self).check_scope)(scope)
    }
}

fn expected() -> String {
    let keys: Vec<String> = ProviderKind::all().map(|k| format!("\"{k}\"")).collect();
    match keys.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "no provider (none is registered)".into(),
    }
}

impl FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProviderKind::all()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownProvider {
                key: s.to_string(),
                expected: expected(),
            })
    }
}

impl<'de> Deserialize<'de> for ProviderKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = std::borrow::Cow::<'de, str>::deserialize(d)?;
        key.parse().map_err(serde::de::Error::custom)
    }
}

impl rusqlite::types::FromSql for ProviderKind {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
    }
}

impl rusqlite::ToSql for ProviderKind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_its_provider_and_nothing_else_parses() {
        for kind in ProviderKind::all() {
            assert_eq!(kind.as_str().parse::<ProviderKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<ProviderKind>(&json).unwrap(), kind);
        }
        let e = "Convai".parse::<ProviderKind>().unwrap_err().to_string();
        assert!(e.contains("\"convai\", \"koosearch\""), "{e}");
        assert!(serde_json::from_str::<ProviderKind>("\"openai\"").is_err());
    }

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = ProviderKind::all().collect();
        let n = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }
}
