//! The nouns every module shares: providers, chats, item and request states.
//!
//! A chat is identified by (provider, scope, session_id), never by its ID alone: the same ID under
//! another character or application is another chat and must never be deleted in its place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A provider forgetd can delete at. Adding one: a variant here, its module under
/// `providers/`, and one line in `providers::build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Convai,
    #[serde(rename = "koosearch")]
    KooSearch,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Convai, ProviderKind::KooSearch];

    /// The key used in the database, the config and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Convai => "convai",
            Self::KooSearch => "koosearch",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown provider \"{0}\": expected \"convai\" or \"koosearch\"")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderKind {
    type Err = UnknownProvider;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "convai" => Ok(Self::Convai),
            "koosearch" => Ok(Self::KooSearch),
            _ => Err(UnknownProvider(s.to_string())),
        }
    }
}

/// One chat at one provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChatKey {
    pub provider: ProviderKind,
    pub scope: String,
    pub session_id: String,
}

impl fmt::Display for ChatKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.scope, self.session_id)
    }
}

/// The state of an erasure request, as feeders read it in `erasure_requests.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Filed; forgetd has not resolved it to chats yet.
    Received,
    /// Resolved; some items are still pending or in flight.
    InProgress,
    /// Every item is deleted or held.
    Complete,
    /// Some item went dead (`requests retry ID` gives it another round).
    Failed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::InProgress => "in_progress",
            Self::Complete => "complete",
            Self::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "received" => Self::Received,
            "in_progress" => Self::InProgress,
            "complete" => Self::Complete,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
