//! What `forgetd doctor` learns from a provider: each read-only call it tried, the class of the
//! answer, and what to do next. The calls themselves belong to each provider's folder
//! ([`super::Provider::doctor`]); the classes are shared, so an operator reads one vocabulary.
//!
//! Rules: a class is decided from the classified [`ProviderError`] (status and action), never from
//! message text; the advice is the provider's own pause reason where it gave one (it names the
//! config key to fix); nothing here holds or prints a secret (errors never carry one).

use serde::Serialize;

use super::{Action, ProviderError};
use crate::model::ProviderKind;

/// How a provider answered one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerClass {
    Ok,
    /// The credentials were refused (401; IAM refused the user or password).
    Unauthenticated,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// The API is not there for this account or address (404 on the API's path).
    ApiNotEnabled,
    /// No answer at all: DNS, connection refused, TLS, timeout.
    Unreachable,
    /// 429: the credentials could not be judged.
    Throttled,
    /// An answer none of the above (5xx, a body that does not parse, a status nobody documents).
    Unexpected,
    /// Not tried, and why is in the advice (nothing to try it on; an earlier check failed).
    NotTested,
}

impl AnswerClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::ApiNotEnabled => "API not enabled",
            Self::Unreachable => "unreachable",
            Self::Throttled => "throttled",
            Self::Unexpected => "unexpected answer",
            Self::NotTested => "not tested",
        }
    }

    /// The class of a failed call, from its status and classified action.
    pub fn of(e: &ProviderError) -> Self {
        match (e.status, &e.action) {
            (_, Action::RetryAfter(_) | Action::Throttled) | (Some(429), _) => Self::Throttled,
            (Some(401), _) => Self::Unauthenticated,
            (Some(403), _) => Self::Forbidden,
            (Some(404), _) => Self::ApiNotEnabled,
            (None, Action::Retry) => Self::Unreachable,
            _ => Self::Unexpected,
        }
    }
}

/// One check: what was tried, how it was answered, what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub tried: String,
    pub class: AnswerClass,
    /// The provider's answer when it was not ok (status, code, message; never a secret).
    pub answer: Option<String>,
    /// What to do next, when not ok.
    pub next: Option<String>,
}

impl Check {
    pub fn passed(tried: impl Into<String>) -> Self {
        Self {
            tried: tried.into(),
            class: AnswerClass::Ok,
            answer: None,
            next: None,
        }
    }

    pub fn not_tested(tried: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            tried: tried.into(),
            class: AnswerClass::NotTested,
            answer: None,
            next: Some(why.into()),
        }
    }

    /// A failed call: its class, the answer (with its causes: a transport error's own words are
    /// in its source), and the advice: the provider's pause reason, or the class's general one.
    pub fn failed(tried: impl Into<String>, e: &ProviderError, address: &str) -> Self {
        let class = AnswerClass::of(e);
        let mut answer = e.summary.clone();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            answer.push_str(": ");
            answer.push_str(&c.to_string());
            cause = c.source();
        }
        let next = match (&e.action, class) {
            (Action::Pause(reason), _) => reason.clone(),
            (_, AnswerClass::Throttled) => format!(
                "{} is throttling, so the credentials could not be judged; run doctor again in a minute (a running daemon shares the limit)",
                e.provider
            ),
            (_, AnswerClass::Unreachable) => format!(
                "nothing answered at {address}: check the address in the config, DNS, the firewall and any proxy"
            ),
            _ => format!(
                "{} answered in a way forgetd does not expect; if it persists, check the address ({address}) and the provider's status page",
                e.provider
            ),
        };
        Self {
            tried: tried.into(),
            class,
            answer: Some(answer),
            next: Some(next),
        }
    }

    pub fn of<T>(tried: impl Into<String>, r: &Result<T, ProviderError>, address: &str) -> Self {
        match r {
            Ok(_) => Self::passed(tried),
            Err(e) => Self::failed(tried, e, address),
        }
    }
}

/// A provider's checks, and notes on what the checks cannot show.
#[derive(Debug, Clone, Serialize)]
pub struct Checkup {
    pub provider: ProviderKind,
    /// Where the provider is reached (no credentials in it).
    pub address: String,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

impl Checkup {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.class == AnswerClass::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Operation;
    use std::time::Duration;

    fn err(status: Option<u16>, action: Action) -> ProviderError {
        let e = ProviderError::new(ProviderKind::CONVAI, Operation::List, action, "x");
        match status {
            Some(s) => e.with_status(s),
            None => e,
        }
    }

    #[test]
    fn classes_follow_status_and_action_not_text() {
        let pause = || Action::Pause("fix it".into());
        assert_eq!(
            AnswerClass::of(&err(Some(401), pause())),
            AnswerClass::Unauthenticated
        );
        assert_eq!(
            AnswerClass::of(&err(Some(403), pause())),
            AnswerClass::Forbidden
        );
        assert_eq!(
            AnswerClass::of(&err(Some(404), pause())),
            AnswerClass::ApiNotEnabled
        );
        assert_eq!(
            AnswerClass::of(&err(None, Action::Retry)),
            AnswerClass::Unreachable
        );
        assert_eq!(
            AnswerClass::of(&err(Some(429), Action::RetryAfter(Duration::from_secs(1)))),
            AnswerClass::Throttled
        );
        assert_eq!(
            AnswerClass::of(&err(Some(429), Action::Throttled)),
            AnswerClass::Throttled
        );
        assert_eq!(
            AnswerClass::of(&err(Some(503), Action::Retry)),
            AnswerClass::Unexpected
        );
        assert_eq!(
            AnswerClass::of(&err(Some(200), Action::Retry)),
            AnswerClass::Unexpected
        );
        let c = Check::failed("t", &err(Some(401), pause()), "http://x");
        assert_eq!(
            c.next.as_deref(),
            Some("fix it"),
            "the provider's own advice"
        );
    }
}
