//! `forgetd doctor`: before a change window, proves each configured provider's credentials and
//! reachability with read-only calls, and says per provider what was tried, how it was answered
//! (one vocabulary: [`AnswerClass`]) and what to do. It deletes nothing and writes nothing at the
//! providers.
//!
//! Rules: the calls are each provider's own ([`crate::providers::Provider::doctor`]), made through
//! its politeness gate like any other; the scopes asked about are ones the inventory or the rules
//! already name ([`Store::scopes_to_check`]), never invented; the report holds no secret (errors
//! never carry one, and the addresses are the configured URLs). Passing means every check
//! answered ok: a check that could not be tried is not a pass.

use serde::Serialize;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::providers::probe::{AnswerClass, Checkup};
use crate::store::Store;

/// What doctor found, provider by provider.
#[derive(Debug, Serialize)]
pub struct Report {
    pub providers: Vec<Checkup>,
    /// Every check of every provider answered ok.
    pub passed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Build(#[from] crate::providers::BuildError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs every configured provider's checks, one provider after the other.
pub async fn run(
    config: &Config,
    store: &Store,
    clock: SharedClock,
) -> Result<Report, DoctorError> {
    let providers =
        crate::providers::build(&config.providers, config.retry.max_retry_after, clock)?;
    let mut report = Report {
        providers: Vec::new(),
        passed: true,
    };
    for p in providers {
        let known = store.scopes_to_check(p.kind().as_str())?;
        let checkup = p.doctor(&known).await;
        report.passed &= checkup.passed();
        report.providers.push(checkup);
    }
    Ok(report)
}

impl Report {
    /// "provider (class)" for each check that did not pass.
    pub fn failures(&self) -> Vec<String> {
        self.providers
            .iter()
            .flat_map(|p| {
                p.checks
                    .iter()
                    .filter(|c| c.class != AnswerClass::Ok)
                    .map(move |c| format!("{} ({})", p.provider, c.class.as_str()))
            })
            .collect()
    }
}
