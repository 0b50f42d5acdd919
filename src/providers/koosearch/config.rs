//! `[providers.koosearch]`: endpoint, project, the applications to search, and how to
//! authenticate (a fixed `token`, or a `[providers.koosearch.iam]` table for password auth
//! against Huawei IAM). The shared limit keys are read by `providers::limits`.
//!
//! Rule: a problem in one part (an unreadable password reference, say) is reported as itself,
//! never as a follow-on ("provider koosearch has no table").

use std::any::Any;
use std::sync::Arc;

use reqwest::Url;
use serde::Deserialize;

use super::{KIND, KooSearchClient, is_id};
use crate::fields::{self, Problems};
use crate::model::ProviderKind;
use crate::providers::gate::Gate;
use crate::providers::{BuildError, Settings, SharedProvider};
use crate::secret::SecretRef;

#[derive(Debug, Clone, PartialEq)]
pub struct KooSearchConfig {
    pub endpoint: Url,
    pub project_id: String,
    pub applications: Vec<String>,
    pub discover_by_user_name: bool,
    pub auth: KooSearchAuth,
    /// How far one listing may walk (pages, time).
    pub listing: super::ListingBounds,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KooSearchAuth {
    /// A fixed token (no refresh; a 401 pauses the provider).
    Token(SecretRef),
    /// Password auth against Huawei IAM, token cached and refreshed.
    Iam(IamConfig),
}

#[derive(Debug, Clone, PartialEq)]
pub struct IamConfig {
    pub endpoint: Url,
    pub domain: String,
    pub user: String,
    pub password: SecretRef,
    pub project: String,
}

#[derive(Debug, Deserialize)]
struct Raw {
    endpoint: Option<String>,
    project_id: Option<String>,
    #[serde(default)]
    applications: Vec<String>,
    discover_by_user_name: Option<bool>,
    token: Option<String>,
    iam: Option<RawIam>,
    listing_max_pages: Option<i64>,
    listing_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawIam {
    endpoint: Option<String>,
    domain: Option<String>,
    user: Option<String>,
    password: Option<String>,
    project: Option<String>,
}

const AT: &str = "providers.koosearch";

/// Reads the table; see [`crate::providers::registry::Registration::settings`].
pub(super) fn parse(table: toml::Table, p: &mut Problems) -> Option<Arc<dyn Settings>> {
    let k: Raw = crate::fields::table(table, AT, p)?;
    let endpoint = fields::url(p, &format!("{AT}.endpoint"), k.endpoint.as_deref());
    let project_id = fields::required(p, &format!("{AT}.project_id"), k.project_id);
    if !project_id.is_empty() && !is_id(&project_id) {
        p.push(format!(
            "`{AT}.project_id` = \"{project_id}\": must be 1 to 64 characters of A-Z a-z 0-9 _ -"
        ));
    }
    for app in &k.applications {
        if !is_id(app) {
            p.push(format!(
                "`{AT}.applications`: \"{app}\" must be 1 to 64 characters of A-Z a-z 0-9 _ -"
            ));
        }
    }
    let discover_by_user_name = k
        .discover_by_user_name
        .unwrap_or(!k.applications.is_empty());
    if discover_by_user_name && k.applications.is_empty() {
        p.push(format!(
            "`{AT}.discover_by_user_name` is true but `applications` is empty: list the application IDs to search"
        ));
    }
    let auth = match (k.token, k.iam) {
        (Some(_), Some(_)) => {
            p.push(format!(
                "`{AT}`: give either `token` or the `[{AT}.iam]` table, not both"
            ));
            None
        }
        (None, None) => {
            p.push(format!("`{AT}`: needs `token` or a `[{AT}.iam]` table"));
            None
        }
        (Some(t), None) => {
            fields::secret(p, &format!("{AT}.token"), Some(&t)).map(KooSearchAuth::Token)
        }
        (None, Some(iam)) => {
            let endpoint = fields::url(p, &format!("{AT}.iam.endpoint"), iam.endpoint.as_deref());
            let domain = fields::required(p, &format!("{AT}.iam.domain"), iam.domain);
            let user = fields::required(p, &format!("{AT}.iam.user"), iam.user);
            let password =
                fields::secret(p, &format!("{AT}.iam.password"), iam.password.as_deref());
            let project = fields::required(p, &format!("{AT}.iam.project"), iam.project);
            match (endpoint, password) {
                (Some(endpoint), Some(password)) => Some(KooSearchAuth::Iam(IamConfig {
                    endpoint,
                    domain,
                    user,
                    password,
                    project,
                })),
                _ => None,
            }
        }
    };
    let mut listing = super::ListingBounds::default();
    match k.listing_max_pages {
        None => {}
        Some(n) if (1..=super::MAX_PAGES as i64).contains(&n) => listing.max_pages = n as u32,
        Some(n) => p.push(format!(
            "`{AT}.listing_max_pages` = {n}: must be 1 to {} (KooSearch's largest page_num)",
            super::MAX_PAGES
        )),
    }
    listing.timeout = fields::duration(
        p,
        &format!("{AT}.listing_timeout"),
        k.listing_timeout.as_deref(),
        listing.timeout,
    );
    Some(Arc::new(KooSearchConfig {
        listing,
        endpoint: endpoint?,
        project_id,
        applications: k.applications,
        discover_by_user_name,
        auth: auth?,
    }))
}

impl Settings for KooSearchConfig {
    fn kind(&self) -> ProviderKind {
        KIND
    }
    fn secrets(&self) -> Vec<(String, &SecretRef)> {
        match &self.auth {
            KooSearchAuth::Token(t) => vec![(format!("{AT}.token"), t)],
            KooSearchAuth::Iam(i) => vec![(format!("{AT}.iam.password"), &i.password)],
        }
    }
    fn describe(&self) -> String {
        let auth = match &self.auth {
            KooSearchAuth::Token(t) => format!("token from {t}"),
            KooSearchAuth::Iam(i) => format!(
                "IAM {} as {} (password from {})",
                i.endpoint, i.user, i.password
            ),
        };
        format!("{} project {} ({auth})", self.endpoint, self.project_id)
    }
    fn build(&self, gate: Arc<Gate>) -> Result<SharedProvider, BuildError> {
        Ok(Arc::new(KooSearchClient::new(self, gate)?))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
