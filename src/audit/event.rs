//! The audit trail's one event model: every kind of event is a variant of [`Event`] with a typed
//! payload, written by the store ([`crate::store::audit::append`]) and read back by the
//! certificate, the status page and the CLI through the same types. No event is built from
//! untyped JSON, and the list of kinds ([`Event::KINDS`]) is the one the README documents (a test
//! compares them).
//!
//! Rules:
//! - A link stores `kind` and `data` (the payload's JSON object) separately; the link's hash covers
//!   both ([`super::link_hash`]). The payload also carries `actor`: who made the change (the
//!   daemon, or the Unix user who ran the CLI), added by the store as it appends.
//! - [`Event::certifying`] names the kinds that state what was erased and for whom: only a process
//!   holding the chain key writes them, sealed as it writes them; never sealed late.
//! - Payloads never carry a subject in clear (a keyed hash at most), nor a secret: provider text in
//!   them has passed [`crate::redact`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who made a change: the daemon (or `run --once`), or the Unix user who ran a CLI command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Actor {
    Daemon,
    User { uid: u32, name: Option<String> },
}

impl Actor {
    /// This process's user (a CLI command).
    pub fn current_user() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        Actor::User {
            uid,
            name: user_name(uid),
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Daemon => f.write_str("the daemon"),
            Actor::User {
                uid,
                name: Some(name),
            } => write!(f, "user {name} (uid {uid})"),
            Actor::User { uid, name: None } => write!(f, "uid {uid}"),
        }
    }
}

/// The login name of `uid` from the password database, if it has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwuid_r writes into `pwd` and `buf` only.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    name.to_str().ok().map(str::to_string)
}

macro_rules! events {
    ($( $(#[$doc:meta])* $variant:ident($payload:ty) = $kind:literal, certifying: $cert:literal; )*) => {
        /// One audit event: its kind (the variant) and its typed payload.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", content = "data")]
        pub enum Event {
            $( $(#[$doc])* #[serde(rename = $kind)] $variant($payload), )*
        }

        impl Event {
            /// Every kind, in the order the README lists them.
            pub const KINDS: &'static [&'static str] = &[$($kind),*];

            /// The kinds that certify what was erased ([`Event::certifying`]).
            pub const CERTIFYING: &'static [&'static str] = {
                const ALL: &[(&str, bool)] = &[$(($kind, $cert)),*];
                const N: usize = {
                    let mut n = 0;
                    let mut i = 0;
                    while i < ALL.len() {
                        if ALL[i].1 { n += 1; }
                        i += 1;
                    }
                    n
                };
                const OUT: [&str; N] = {
                    let mut out = [""; N];
                    let (mut i, mut j) = (0, 0);
                    while i < ALL.len() {
                        if ALL[i].1 { out[j] = ALL[i].0; j += 1; }
                        i += 1;
                    }
                    out
                };
                &OUT
            };

            /// The kind as stored in the trail.
            pub fn kind(&self) -> &'static str {
                match self {
                    $( Event::$variant(_) => $kind, )*
                }
            }
        }
    };
}

events! {
    /// The daemon started with a configuration (`rules_changed`: config rules added or changed).
    ConfigLoaded(ConfigChange) = "config.loaded", certifying: false;
    /// SIGHUP: the configuration was read again.
    ConfigReloaded(ConfigChange) = "config.reloaded", certifying: false;
    /// A request was taken in: its reference, keyed subject hash, and dates, as forgetd recorded
    /// them (the certificate reads these, never the editable columns).
    RequestReceived(RequestReceived) = "request.received", certifying: true;
    /// A request's chats were found: counts per provider, held, discovered, and the listings
    /// still to ask (`discovering`).
    RequestResolved(RequestResolved) = "request.resolved", certifying: false;
    /// One listing for the request's subject ended: the chats it found joined the request.
    RequestDiscovered(RequestDiscovered) = "request.discovered", certifying: true;
    /// One listing for the request's subject could not be completed (refused, unending, failing
    /// past the retry policy): chats it would have found may remain; the request ends failed.
    RequestDiscoveryFailed(RequestDiscoveryFailed) = "request.discovery_failed", certifying: true;
    /// One batch's answer: what was sent and what each chat came to.
    BatchAnswered(BatchAnswered) = "batch.answered", certifying: true;
    /// An answer that came after its claim was taken back; certifies nothing.
    BatchAnsweredLate(BatchAnswered) = "batch.answered_late", certifying: false;
    /// A request closed with every chat deleted or held.
    RequestCompleted(RequestClosed) = "request.completed", certifying: true;
    /// A request closed with some chat given up.
    RequestFailed(RequestClosed) = "request.failed", certifying: true;
    /// A closed request is at work again: a chat of it changed after the close.
    RequestReopened(RequestReopened) = "request.reopened", certifying: false;
    /// Every deleted chat of the request's current completion was read back absent.
    RequestVerified(RequestVerified) = "request.verified", certifying: true;
    /// A chat was read back present after a confirmed deletion.
    ChatReappeared(ChatReappeared) = "chat.reappeared", certifying: true;
    /// Deleted chats read back absent: the evidence a certificate's "read back absent" rests on.
    ChatsReadBack(ChatsReadBack) = "chats.read_back", certifying: true;
    /// A retention rule ran.
    RuleRun(RuleRunEvent) = "rule.run", certifying: false;
    /// A rule's run matched more than its ceiling and waits for approval.
    RuleHeldForApproval(RuleHeld) = "rule.held_for_approval", certifying: false;
    /// `rules add`: a rule was added.
    RuleAdded(RuleAdded) = "rule.added", certifying: false;
    /// `rules remove`: a rule was removed.
    RuleRemoved(RuleNamed) = "rule.removed", certifying: false;
    /// `rules approve`: the held run may delete up to `up_to` chats.
    RuleApproved(RuleApproved) = "rule.approved", certifying: false;
    /// A legal hold was placed.
    HoldPlaced(HoldPlaced) = "hold.placed", certifying: false;
    /// A legal hold was lifted.
    HoldLifted(HoldLifted) = "hold.lifted", certifying: false;
    /// Queued chats a standing hold covers were taken out of the queue.
    ChatsHeld(ChatsHeld) = "chats.held", certifying: false;
    /// Held chats no standing hold covers went back to the queue.
    ChatsFreed(ChatsFreed) = "chats.freed", certifying: false;
    /// `requests retry`: a request's dead chats got another round.
    RequestRetried(RequestRetried) = "request.retried", certifying: false;
    /// A provider was paused (the reason is redacted provider text).
    ProviderPaused(ProviderPaused) = "provider.paused", certifying: false;
    /// A provider's pause ended.
    ProviderResumed(ProviderNamed) = "provider.resumed", certifying: false;
    /// PostgreSQL: a dead instance's claims were handed back.
    InstanceRescued(InstanceRescued) = "instance.rescued", certifying: false;
}

impl Event {
    /// Whether this kind certifies what was erased.
    pub fn certifying(kind: &str) -> bool {
        Self::CERTIFYING.contains(&kind)
    }

    /// The payload as a JSON object (the link's `data`, before the store adds the actor).
    pub fn data(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("event payloads are plain data");
        v.get_mut("data")
            .map(serde_json::Value::take)
            .unwrap_or(serde_json::Value::Null)
    }

    /// Reads a stored link back as its event.
    pub fn parse(kind: &str, data: &str) -> Result<Self, serde_json::Error> {
        let data: serde_json::Value = serde_json::from_str(data)?;
        serde_json::from_value(serde_json::json!({"kind": kind, "data": data}))
    }

    /// Who made the change a stored link records, when it says.
    pub fn actor_of(data: &str) -> Option<Actor> {
        let v: serde_json::Value = serde_json::from_str(data).ok()?;
        serde_json::from_value(v.get("actor")?.clone()).ok()
    }
}

/// `chats.read_back`: chats of one provider whose confirmed deletion was read back absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatsReadBack {
    pub provider: String,
    pub chats: Vec<ScopedChat>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScopedChat {
    pub scope: String,
    pub session_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigChange {
    /// The config file, when there is one (the demo's is built in).
    pub source: Option<String>,
    pub rules_changed: Vec<String>,
    pub rules_removed: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestReceived {
    pub external_ref: Option<String>,
    pub subject_hash: String,
    pub received_at: i64,
    pub due_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestResolved {
    pub items: u64,
    pub held: u64,
    pub discovered: u64,
    pub per_provider: BTreeMap<String, u64>,
    /// The listings by subject still to come (each ends in `request.discovered` or
    /// `request.discovery_failed`). Absent in links written before discovery was a stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovering: Vec<Listing>,
}

/// One listing by subject: a provider and a scope (for KooSearch, an application).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listing {
    pub provider: String,
    pub scope: String,
}

/// `request.discovered`: `found` chats listed for the subject, `added` of them new to the
/// request, which now has `items` chats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestDiscovered {
    pub provider: String,
    pub scope: String,
    /// The keyed hash of the subject that was listed (the certificate checks it is the one
    /// `request.received` recorded).
    pub subject_hash: String,
    pub found: u64,
    pub added: u64,
    pub held: u64,
    pub items: u64,
}

/// `request.discovery_failed`: why the listing could not be completed (forgetd's words and the
/// provider's status and code, never its text, which may quote the subject), after how many
/// attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestDiscoveryFailed {
    pub provider: String,
    pub scope: String,
    pub reason: String,
    pub attempts: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchAnswered {
    pub batch_id: i64,
    pub provider: String,
    pub scope: String,
    pub repo_id: Option<String>,
    pub sent: u64,
    pub deleted: Vec<String>,
    pub retry: Vec<String>,
    pub dead: Vec<DeadChat>,
    pub released: u64,
    /// The provider's answer in words (redacted).
    pub answer: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadChat {
    pub session_id: String,
    pub error: String,
}

/// `request.reopened`: the request was closed (`was`: complete or failed, by event
/// `closing_seq`) and a chat of it changed, so it is at work again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestReopened {
    pub was: String,
    pub closing_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleRunEvent {
    pub rule: String,
    pub cutoff: i64,
    pub matched: u64,
    pub enqueued: u64,
    pub held: u64,
    pub discovered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleHeld {
    pub rule: String,
    pub matched: u64,
    pub max_deletions: u64,
    pub cutoff: i64,
    pub approved_up_to: Option<u64>,
}

/// `rule.added`: a rule as `rules add` gave it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleAdded {
    pub rule: String,
    pub provider: String,
    pub scope: String,
    /// Seconds.
    pub max_age: u64,
    pub schedule: String,
    pub timezone: String,
    pub discover: bool,
    pub max_deletions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleNamed {
    pub rule: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleApproved {
    pub rule: String,
    /// The held run's count: a next run matching more waits for approval again.
    pub up_to: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldPlaced {
    pub hold_id: i64,
    pub target: HoldTargetRecord,
    pub reason: String,
    pub items_held: u64,
}

/// What a hold covers, as the trail says it: a subject is never named.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldTargetRecord {
    Subject,
    Chat {
        provider: String,
        scope: String,
        session_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderPaused {
    pub provider: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProviderNamed {
    pub provider: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceRescued {
    pub instance: String,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub items: u64,
    pub by: String,
}

/// The closing event of a request (`request.completed` / `request.failed`): every chat with its
/// outcome. Written by the store when a request finishes, read by the certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestClosed {
    pub items: Vec<ClosedItem>,
}

/// One chat of a closed request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClosedItem {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    /// The work item's state: `deleted`, `held` or `dead`.
    pub state: String,
    pub outcome: Option<String>,
    pub confirmed_at: Option<i64>,
    pub last_error: Option<String>,
    pub hold_id: Option<i64>,
    pub hold_reason: Option<String>,
}

/// `request.verified`: every deleted chat of a complete request was read back absent (read-after-
/// delete verification, [`crate::verify`]). Written once per completion, read by the certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestVerified {
    pub items: Vec<VerifiedItem>,
    /// Written by a forgetd that records each read-back as a `chats.read_back` event: the
    /// certificate then takes read-backs from those, not from this summary (built from rows).
    /// Absent (false) in events of a forgetd before them, whose summary is the only record.
    #[serde(default)]
    pub per_chat_evidence: bool,
}

/// One chat read back absent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifiedItem {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub verified_at: i64,
}

/// `chat.reappeared`: a chat whose deletion had been confirmed was read back present.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatReappeared {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    /// When the deletion that did not hold was confirmed.
    pub confirmed_at: Option<i64>,
    pub read_at: i64,
    /// The how-manyth time it came back.
    pub times: u32,
    /// Queued to be deleted again (false: given up, the item is dead).
    pub deleting_again: bool,
}

/// `chats.held`: queued chats a legal hold covers were taken out of the queue by the one rule that
/// decides what may be sent ([`crate::store::holds`]), on the path named by `at` (a claim, the
/// check right before a call, a retry, a lease returned, a read-back). A hold's own placement is
/// recorded by `hold.placed` instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatsHeld {
    pub at: String,
    pub chats: Vec<HeldChat>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeldChat {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub hold_id: i64,
}

/// `chats.freed`: held chats that no standing hold covers any longer (a feeder moved them away
/// from the held person) went back to the queue; `hold_id` is the hold that had kept each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatsFreed {
    pub chats: Vec<HeldChat>,
}

/// `hold.lifted`: a hold was removed; `freed` chats went back to the queue (a chat another hold
/// still covers stays held and is not counted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HoldLifted {
    pub hold_id: i64,
    pub freed: u64,
    /// Chats another standing hold covers: still held, under that hold now.
    #[serde(default)]
    pub reheld: u64,
}

/// `request.retried`: `requests retry` gave a request's dead chats another round; `revived` went
/// back to the queue, `held` of them a legal hold covers now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRetried {
    pub revived: u64,
    pub held: u64,
    /// Failed listings by subject asked again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rediscovering: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_as_the_event_it_was_written_as() {
        let e = Event::HoldLifted(HoldLifted {
            hold_id: 3,
            freed: 2,
            reheld: 0,
        });
        assert_eq!(e.kind(), "hold.lifted");
        let data = e.data().to_string();
        assert_eq!(Event::parse("hold.lifted", &data).unwrap(), e);
        assert!(Event::parse("hold.placed", &data).is_err());
        assert!(Event::parse("no.such.kind", &data).is_err());
        // The actor the store adds does not get in the way of reading.
        let mut with_actor = e.data();
        with_actor["actor"] = serde_json::to_value(Actor::Daemon).unwrap();
        assert_eq!(
            Event::parse("hold.lifted", &with_actor.to_string()).unwrap(),
            e
        );
        assert_eq!(
            Event::actor_of(&with_actor.to_string()),
            Some(Actor::Daemon)
        );
    }

    #[test]
    fn the_certifying_kinds_are_the_ones_that_state_what_was_erased() {
        assert_eq!(
            Event::CERTIFYING,
            [
                "request.received",
                "request.discovered",
                "request.discovery_failed",
                "batch.answered",
                "request.completed",
                "request.failed",
                "request.verified",
                "chat.reappeared",
                "chats.read_back"
            ]
        );
        let mut kinds = Event::KINDS.to_vec();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), Event::KINDS.len(), "each kind once");
    }
}
