//! `[providers.convai]`: where Convai is and where its API key comes from. The shared limit keys
//! are read by `providers::limits`; this file reads the rest and refuses keys it does not know.

use std::any::Any;
use std::sync::Arc;

use reqwest::Url;
use serde::Deserialize;

use super::{ConvaiClient, KIND};
use crate::fields::{self, Problems};
use crate::model::ProviderKind;
use crate::providers::gate::Gate;
use crate::providers::{BuildError, Settings, SharedProvider};
use crate::secret::SecretRef;

pub const DEFAULT_BASE_URL: &str = "https://api.convai.com";

#[derive(Debug, Clone, PartialEq)]
pub struct ConvaiConfig {
    pub base_url: Url,
    pub api_key: SecretRef,
}

#[derive(Debug, Deserialize)]
struct Raw {
    base_url: Option<String>,
    api_key: Option<String>,
}

/// Reads the table; see [`crate::providers::registry::Registration::settings`].
pub(super) fn parse(table: toml::Table, p: &mut Problems) -> Option<Arc<dyn Settings>> {
    let raw: Raw = crate::fields::table(table, "providers.convai", p)?;
    let base_url = fields::url(
        p,
        "providers.convai.base_url",
        Some(raw.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL)),
    );
    let api_key = fields::secret(p, "providers.convai.api_key", raw.api_key.as_deref());
    Some(Arc::new(ConvaiConfig {
        base_url: base_url?,
        api_key: api_key?,
    }))
}

impl Settings for ConvaiConfig {
    fn kind(&self) -> ProviderKind {
        KIND
    }
    fn secrets(&self) -> Vec<(String, &SecretRef)> {
        vec![("providers.convai.api_key".into(), &self.api_key)]
    }
    fn describe(&self) -> String {
        format!("{} (api_key from {})", self.base_url, self.api_key)
    }
    fn build(&self, gate: Arc<Gate>) -> Result<SharedProvider, BuildError> {
        Ok(Arc::new(ConvaiClient::new(self, gate)?))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
