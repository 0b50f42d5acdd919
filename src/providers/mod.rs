//! Provider clients behind one trait, [`Provider`]: delete a batch of chat IDs in one scope, list
//! chats for discovery, look one chat up, and say what the caller should do when a call fails.
//!
//! Rules:
//! - Answers are classified by HTTP status and provider error code, never by message text (the
//!   providers' pages are localized; messages differ by language).
//! - Every failure is a [`ProviderError`] whose [`Action`] says what to do next: retry, retry after
//!   a given time, split the batch to isolate a bad ID, or pause the provider until an operator
//!   acts. Re-authentication is handled inside the client that needs it (KooSearch refreshes its
//!   IAM token once); it surfaces only as a pause when refreshing did not help.
//! - "Already gone" is success only when the provider says so for that ID. A 403/404 on Convai's
//!   delete path means the delete API is not enabled for the key: a pause, never "deleted".
//! - Secrets go only into headers marked sensitive; no error or log line carries them.
//!
//! Adding a provider: a folder here holding its config table ([`Settings`]), its client (a type
//! implementing [`Provider`]), its ID rules and its answer classification, with a
//! [`registry::Registration`]; then one line in [`registry::REGISTRY`]. The test-only `ledger`
//! provider is the proof: one folder and one (`#[cfg(test)]`) registry line.

pub mod convai;
pub mod gate;
pub mod http;
pub mod koosearch;
#[cfg(test)]
mod ledger;
pub mod limits;
pub mod probe;
pub mod registry;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::SharedClock;
use crate::model::ProviderKind;
use crate::secret::{SecretError, SecretRef};
use gate::{Gate, Pass};

pub use limits::ProviderLimits;

/// One delete call's worth: IDs of one scope (and, for KooSearch, one knowledge base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBatch {
    pub scope: String,
    pub repo_id: Option<String>,
    pub ids: Vec<String>,
}

/// What a successful delete call established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The provider confirmed the whole batch (Convai's "SUCCESSFULLY DELETED"; KooSearch's
    /// deleted_count == total_count). A repeated delete of a gone chat answers the same way.
    AllDeleted,
    /// KooSearch deleted fewer than it was sent. The client does not guess which: the executor
    /// looks each ID up ([`Provider::lookup`]) before marking anything.
    Partial { total: u64, deleted: u64 },
}

/// Whether a chat exists at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    /// Present, but the provider lists it under another container than the one the inventory
    /// named (KooSearch: another `knowledge_repo_id`): deletions sent for the inventory's do not
    /// reach it. The inventory is likely wrong.
    Misfiled {
        listed_repo_id: String,
    },
}

impl Presence {
    /// Why a deletion did not reach the chat, when the provider shows why.
    pub fn note(&self, inventory_repo_id: Option<&str>) -> Option<String> {
        match self {
            Presence::Misfiled { listed_repo_id } => Some(format!(
                "the provider lists it under repo_id {listed_repo_id}, not {} as the inventory says: deletions were sent for the wrong repo_id; correct `sessions.repo_id` (and the queued item follows on the next request or rule), then `forgetd requests retry`",
                inventory_repo_id.unwrap_or("none")
            )),
            _ => None,
        }
    }
}

/// A chat found by listing at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedChat {
    pub scope: String,
    pub session_id: String,
    /// Unix seconds, when the provider says (Convai's date/time read as UTC; KooSearch's ms).
    pub created_at: Option<i64>,
    pub repo_id: Option<String>,
}

/// Which kind of call a provider answered: part of every error, and an input to classifying it
/// (a 403/404 on Convai's delete path means "API not enabled", on a listing it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// A batch delete.
    Delete,
    /// A listing: discovery, retention, or the lookup of one chat.
    List,
    /// Reading one chat back by its ID (Convai's details call, KooSearch's one-chat GET), for
    /// verification: a 400/404 there means "no such chat", never a pause.
    Read,
    /// Fetching an auth token (KooSearch's IAM).
    Token,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::List => "list",
            Self::Read => "read",
            Self::Token => "IAM token",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller should do after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Transient (transport, timeout, 5xx, an answer that could not be parsed): back off, retry.
    Retry,
    /// Throttled, and told for how long: wait at least this long, then retry; slow down.
    RetryAfter(Duration),
    /// Throttled without a wait named (no Retry-After): slow down; the gate learns how long to
    /// wait and how fast to go ([`gate`]).
    Throttled,
    /// The provider refused the request's content (bad parameters; neither provider names the
    /// bad IDs): split the batch to isolate them; a single refused ID is dead.
    Rejected,
    /// Stop using this provider until an operator acts (credentials, permission, API not
    /// enabled, wrong endpoint). The reason says what to fix.
    Pause(String),
}

/// A failed provider call. `detail` is the provider's answer, truncated, never a secret.
#[derive(Debug, thiserror::Error)]
#[error("{provider} {operation}: {summary}")]
pub struct ProviderError {
    pub provider: ProviderKind,
    pub operation: Operation,
    pub action: Action,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub summary: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    pub fn new(
        provider: ProviderKind,
        operation: Operation,
        action: Action,
        summary: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            operation,
            action,
            status: None,
            code: None,
            summary: summary.into(),
            source: None,
        }
    }
    /// The same failure again, for another chat that one failed call answered for (a listing
    /// read back for many chats): same action and summary, without the source.
    pub fn repeated(&self) -> Self {
        Self {
            provider: self.provider,
            operation: self.operation,
            action: self.action.clone(),
            status: self.status,
            code: self.code.clone(),
            summary: self.summary.clone(),
            source: None,
        }
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }
    pub fn with_code(mut self, code: Option<String>) -> Self {
        self.code = code;
        self
    }
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }
    /// Applies the Retry-After cap (`retry.max_retry_after`): a provider that asks for a longer
    /// wait (a year, a date in 9999) pauses, visibly and with probes, instead of freezing its
    /// lane for that long with nothing in `status`.
    pub fn capped(mut self, cap: Duration) -> Self {
        if let Action::RetryAfter(d) = self.action
            && d > cap
        {
            self.action = Action::Pause(format!(
                "{} asked to wait {} (Retry-After), longer than retry.max_retry_after ({}); probing until it answers again",
                self.provider,
                humantime::format_duration(Duration::from_secs(d.as_secs())),
                humantime::format_duration(cap)
            ));
        }
        self
    }

    /// The same failure without the provider's own words: for a call that carried personal data
    /// (a listing by `user_name`), whose answer may quote it back ("Invalid parameter
    /// user_name: '...'"). What is kept is what forgetd chose to say: the status, the error code
    /// and the class of failure; a pause keeps its reason (forgetd's sentence, never the
    /// provider's text).
    pub fn without_provider_text(mut self, why: &str) -> Self {
        let what = match (self.status, &self.code) {
            (Some(s), Some(c)) => format!("HTTP {s} {c}"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, _) => self.cause_label().replace('_', " "),
        };
        self.summary = format!("{what} ({why})");
        // The source may be a parse error over the answer, or a transport error: keep only a
        // transport error, whose URL was already removed.
        if self.status.is_some() {
            self.source = None;
        }
        self
    }

    /// Every value [`ProviderError::cause_label`] gives.
    pub const CAUSES: [&'static str; 6] = [
        "throttled",
        "server_error",
        "bad_answer",
        "transport",
        "rejected",
        "paused",
    ];

    /// A short label for metrics and logs: which class of failure this was.
    pub fn cause_label(&self) -> &'static str {
        match (&self.action, self.status) {
            (Action::RetryAfter(_) | Action::Throttled, _) => "throttled",
            (Action::Retry, Some(s)) if s >= 500 => "server_error",
            (Action::Retry, Some(_)) => "bad_answer",
            (Action::Retry, None) => "transport",
            (Action::Rejected, _) => "rejected",
            (Action::Pause(_), _) => "paused",
        }
    }
}

/// Looks for one chat in a listing: the lookup of providers that have no per-chat call.
pub(crate) struct Finder {
    target: String,
    found: bool,
    /// The container the listing filed it under, when it said.
    listed_repo_id: Option<String>,
}

impl Finder {
    pub(crate) fn new(session_id: &str) -> Self {
        Self {
            target: session_id.to_string(),
            found: false,
            listed_repo_id: None,
        }
    }
    pub(crate) fn see(&mut self, c: &ListedChat) {
        if c.session_id == self.target {
            self.found = true;
            self.listed_repo_id = c.repo_id.clone();
        }
    }
    /// The presence, knowing where the inventory files the chat: listed under another
    /// container, it is [`Presence::Misfiled`].
    pub(crate) fn presence_for(&self, expected_repo_id: Option<&str>) -> Presence {
        match (&self.listed_repo_id, expected_repo_id) {
            (Some(listed), Some(expected)) if self.found && listed != expected => {
                Presence::Misfiled {
                    listed_repo_id: listed.clone(),
                }
            }
            _ => self.presence(),
        }
    }
    pub(crate) fn presence(&self) -> Presence {
        if self.found {
            Presence::Present
        } else {
            Presence::Absent
        }
    }
}

/// One deleted chat to read back ([`Provider::read_back`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBackChat {
    pub session_id: String,
    pub repo_id: Option<String>,
}

/// What one read call said about one chat, combined by [`read_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// The chat's content came back: it is there.
    Seen,
    /// A well-formed listing of the chat's scope (or of its ID) omits it: the proof of absence.
    Omitted,
    /// The call answered and showed nothing (a 404 or empty answer to a one-chat read): not a
    /// proof of absence by itself, but no sign of the chat either.
    Nothing,
}

/// Combines what a chat's read calls said: present if any saw it; absent only when a listing
/// omitted it and no call failed or saw it; otherwise the first failure (undecided).
pub fn read_verdict(
    kind: ProviderKind,
    sightings: impl IntoIterator<Item = Result<Sighting, ProviderError>>,
) -> Result<Presence, ProviderError> {
    let mut omitted = false;
    let mut failure = None;
    for s in sightings {
        match s {
            Ok(Sighting::Seen) => return Ok(Presence::Present),
            Ok(Sighting::Omitted) => omitted = true,
            Ok(Sighting::Nothing) => {}
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None if omitted => Ok(Presence::Absent),
        None => Err(ProviderError::new(
            kind,
            Operation::Read,
            Action::Retry,
            "no listing answered for this chat: absence is not proven",
        )),
    }
}

/// A sink for listed chats, so listing streams instead of building a list in memory.
pub type ChatSink<'a> = &'a mut (dyn FnMut(ListedChat) + Send);

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;
    /// The gate every call to this provider passes ([`gate`]).
    fn gate(&self) -> &Arc<Gate>;
    /// The largest batch one delete call may carry.
    fn max_batch(&self) -> usize;
    /// Client-side check of an ID before sending; `Err(reason)` means it can never be valid here.
    fn check_id(&self, session_id: &str) -> Result<(), String>;
    /// Deletes a batch of chats in one scope, under `pass` (from [`Gate::enter`] on this
    /// provider's gate: the caller may check something right before the call, see [`Pass::ready`]).
    async fn delete(
        &self,
        pass: &mut Pass,
        batch: &DeleteBatch,
    ) -> Result<DeleteOutcome, ProviderError>;
    /// One delete call with a pass of its own (tools and tests; the executor takes its pass
    /// first, to check legal holds right before the call).
    async fn delete_alone(&self, batch: &DeleteBatch) -> Result<DeleteOutcome, ProviderError> {
        let mut pass = self.gate().enter(Operation::Delete).await?;
        self.delete(&mut pass, batch).await
    }
    /// Lists every chat of one scope (retention discovery). Listings and lookups take their
    /// own pass.
    async fn list_scope(&self, scope: &str, sink: ChatSink<'_>) -> Result<(), ProviderError>;
    /// Lists the chats of one person in one scope, where the provider can (`Ok(false)`: it cannot).
    async fn list_subject(
        &self,
        scope: &str,
        subject: &str,
        sink: ChatSink<'_>,
    ) -> Result<bool, ProviderError>;
    /// The scopes to search for a subject's chats (KooSearch: the configured applications).
    fn subject_scopes(&self) -> Vec<String>;
    /// The longest one listing may take (its own bound, or the call timeout for a provider whose
    /// listing is one call): a resolver's claim on a listing lasts longer than this.
    fn listing_bound(&self) -> Duration {
        Duration::from_secs(600)
    }
    /// Looks one chat up (after a partial delete).
    async fn lookup(
        &self,
        scope: &str,
        repo_id: Option<&str>,
        session_id: &str,
    ) -> Result<Presence, ProviderError>;
    /// Reads deleted chats of one scope back (verification, [`crate::verify`]), one answer per
    /// chat in order: `Absent` only when a well-formed listing omits it and no read shows it;
    /// `Present` when any read shows it; an error when the reads could not decide. Every call
    /// takes a background pass ([`Gate::enter_background`] with `share`).
    async fn read_back(
        &self,
        scope: &str,
        chats: &[ReadBackChat],
        share: f64,
    ) -> Vec<Result<Presence, ProviderError>>;
    /// How many auth tokens this client fetched (metrics); providers without tokens say 0.
    fn token_refreshes(&self) -> u64 {
        0
    }
    /// Read-only calls that prove this provider's credentials and reachability (`forgetd
    /// doctor`), deleting nothing: what each tried and how it was answered. `known`: scopes the
    /// inventory and the rules name for this provider, most recent first.
    async fn doctor(&self, known: &[String]) -> probe::Checkup;
}

pub type SharedProvider = Arc<dyn Provider>;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Keeps the [`SecretError`] in the cause chain, so the CLI maps it to exit 78.
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("building the HTTP client for {provider}: {source}")]
    Http {
        provider: ProviderKind,
        #[source]
        source: reqwest::Error,
    },
}

/// A provider's own settings, read from its `[providers.<key>]` table by its `config.rs`.
pub trait Settings: std::fmt::Debug + Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;
    /// Every secret reference it names, with the key it sits under (`providers.convai.api_key`).
    fn secrets(&self) -> Vec<(String, &SecretRef)>;
    /// One line for `check-config`: where it points and where its secrets come from (never a
    /// secret's value).
    fn describe(&self) -> String;
    /// The client, whose every call passes `gate` (built from this provider's limits; secrets
    /// are read here).
    fn build(&self, gate: Arc<Gate>) -> Result<SharedProvider, BuildError>;
    /// For code that knows which provider it configures (tests, `demo`): see
    /// [`Configured::settings`].
    fn as_any(&self) -> &dyn Any;
}

/// One configured provider: its own settings and the limits every provider has.
#[derive(Debug, Clone)]
pub struct Configured {
    pub settings: Arc<dyn Settings>,
    pub limits: ProviderLimits,
}

impl Configured {
    pub fn new(settings: impl Settings, limits: ProviderLimits) -> Self {
        Self {
            settings: Arc::new(settings),
            limits,
        }
    }
    pub fn kind(&self) -> ProviderKind {
        self.settings.kind()
    }
    /// The settings as their concrete type, when they are of that provider.
    pub fn settings<T: Settings>(&self) -> Option<&T> {
        self.settings.as_any().downcast_ref()
    }
}

/// Builds a client for every configured provider, each with its own [`Gate`] (secrets are read
/// here). `max_retry_after` is `retry.max_retry_after`: a longer Retry-After pauses.
pub fn build(
    configured: &[Configured],
    max_retry_after: Duration,
    clock: SharedClock,
) -> Result<Vec<SharedProvider>, BuildError> {
    configured
        .iter()
        .map(|c| {
            let gate = Gate::new(c.kind(), &c.limits, max_retry_after, clock.clone());
            c.settings.build(gate)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>, action: Action) -> ProviderError {
        let e = ProviderError::new(ProviderKind::KOOSEARCH, Operation::Read, action, "x");
        match status {
            Some(s) => e.with_status(s),
            None => e,
        }
    }

    #[test]
    fn absence_is_proven_only_by_a_listing_that_omits_the_chat() {
        use Sighting::*;
        let k = ProviderKind::KOOSEARCH;
        let verdict = |s: Vec<Result<Sighting, ProviderError>>| read_verdict(k, s);
        // A 404 or an empty answer alone proves nothing: it stays undecided, never "absent".
        assert!(verdict(vec![Ok(Nothing)]).is_err());
        assert!(verdict(vec![]).is_err());
        assert_eq!(
            verdict(vec![Ok(Omitted), Ok(Nothing)]).unwrap(),
            Presence::Absent
        );
        assert_eq!(
            verdict(vec![Ok(Nothing), Ok(Omitted)]).unwrap(),
            Presence::Absent
        );
        // Seen anywhere is present, whatever else was said.
        assert_eq!(
            verdict(vec![Ok(Omitted), Ok(Seen)]).unwrap(),
            Presence::Present
        );
        let e = failed(Some(503), Action::Retry);
        assert_eq!(verdict(vec![Err(e), Ok(Seen)]).unwrap(), Presence::Present);
        // A failed call leaves it undecided even beside an omission: the first failure is kept.
        let (a, b) = (
            failed(Some(503), Action::Retry),
            failed(None, Action::Retry),
        );
        let kept = verdict(vec![Ok(Omitted), Err(a), Err(b)]).unwrap_err();
        assert_eq!(kept.status, Some(503));
    }

    #[test]
    fn a_retry_after_longer_than_the_cap_pauses_and_one_at_the_cap_is_waited_out() {
        let cap = Duration::from_secs(600);
        let at = |d: u64| failed(Some(429), Action::RetryAfter(Duration::from_secs(d))).capped(cap);
        assert_eq!(at(600).action, Action::RetryAfter(cap));
        assert_eq!(at(5).action, Action::RetryAfter(Duration::from_secs(5)));
        assert!(matches!(at(601).action, Action::Pause(ref why) if why.contains("Retry-After")));
        // Only a Retry-After is capped.
        assert_eq!(
            failed(Some(503), Action::Retry).capped(cap).action,
            Action::Retry
        );
    }

    #[test]
    fn each_failure_has_its_metrics_cause() {
        let cases = [
            (failed(Some(429), Action::Throttled), "throttled"),
            (
                failed(Some(429), Action::RetryAfter(Duration::from_secs(1))),
                "throttled",
            ),
            (failed(Some(500), Action::Retry), "server_error"),
            (failed(Some(599), Action::Retry), "server_error"),
            (failed(Some(200), Action::Retry), "bad_answer"),
            (failed(Some(499), Action::Retry), "bad_answer"),
            (failed(None, Action::Retry), "transport"),
            (failed(Some(400), Action::Rejected), "rejected"),
            (failed(Some(401), Action::Pause("key".into())), "paused"),
        ];
        for (e, label) in &cases {
            assert_eq!(e.cause_label(), *label, "{:?} {:?}", e.action, e.status);
            assert!(ProviderError::CAUSES.contains(label));
        }
    }

    #[test]
    fn operations_are_named_in_errors_as_in_the_metrics() {
        let names: Vec<String> = [
            Operation::Delete,
            Operation::List,
            Operation::Read,
            Operation::Token,
        ]
        .iter()
        .map(|o| o.to_string())
        .collect();
        assert_eq!(names, ["delete", "list", "read", "IAM token"]);
        let e = failed(Some(503), Action::Retry);
        assert_eq!(e.to_string(), "koosearch read: x");
    }
}
