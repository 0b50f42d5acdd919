//! The nouns every module shares: providers, chats, item and request states.
//!
//! A chat is identified by (provider, scope, session_id), never by its ID alone: the same ID under
//! another character or application is another chat and must never be deleted in its place.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A provider forgetd can delete at, by its key (`convai`, `koosearch`): the key used in the
/// database, the config and the CLI.
///
/// This leaf knows no provider by name. Each provider's folder defines its constant
/// (`ProviderKind::CONVAI` lives in `providers/convai/`), and `providers::registry` is the one
/// list of them: parsing a key (`FromStr`, serde, SQL) and [`ProviderKind::all`] read it, so a
/// third provider is its folder plus one registry line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProviderKind(&'static str);

impl ProviderKind {
    /// For a provider folder's own constant; everyone else parses a key against the registry.
    pub const fn named(key: &'static str) -> Self {
        Self(key)
    }

    /// The key used in the database, the config and the CLI.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for ProviderKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// A key no registered provider has.
#[derive(Debug, thiserror::Error)]
#[error("unknown provider \"{key}\": expected {expected}")]
pub struct UnknownProvider {
    pub key: String,
    /// The registered keys, quoted and joined ("\"convai\" or \"koosearch\"").
    pub expected: String,
}

/// One chat at one provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChatKey {
    pub provider: ProviderKind,
    pub scope: String,
    pub session_id: String,
}

impl ChatKey {
    pub fn new(provider: ProviderKind, scope: &str, session_id: &str) -> Self {
        Self {
            provider,
            scope: scope.to_string(),
            session_id: session_id.to_string(),
        }
    }
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
