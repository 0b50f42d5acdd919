//! The certificate of erasure (`forgetd audit export --request ID`): what a privacy officer hands a
//! regulator. Built from sealed audit events, never from columns a feeder can edit: the reference,
//! subject hash, received and due dates from `request.received`; the state, close time and every
//! chat's fate from the request's latest closing event (`request.completed` / `request.failed`);
//! verification from `request.verified`. Anchored by the closing event's hash and the verified
//! chain head. A read model: it writes nothing and runs no SQL of its own.
//!
//! Rules:
//! - What the row says and the chain says differ (someone edited the row): the certificate states
//!   the chain's value and a notice naming the difference, in every format.
//! - A request re-opened after its last close (a chat changed fate) certifies nothing until it
//!   closes again; a chat whose state now differs from what the closing event states is named in
//!   a notice and the request is not called verified.
//! - *Verified* means every chat the certificate calls deleted was read back absent (by the
//!   request's verification event) at or after its confirmed deletion.
//!
//! Read-after-delete verification ([`crate::verify`]) adds, per deleted chat, whether it was read
//! back absent: from the request's `request.verified` event when every chat was (chained, like the
//! closing event), else from each chat's current record (not read back yet, unverified and why).
//! A request is *verified* only with that event.
//!
//! Wording matters: forgetd can prove that the provider *confirmed* a deletion, not what the
//! provider does inside (it may soft-delete), and Convai's long-term memory is a separate store
//! that deleting chat sessions does not touch. The certificate says both.

pub mod html;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::report::{one_line, time};
use crate::store::audit::ListingState;
use crate::store::{Result, Store};

/// Words for a person: a listing by subject and how it ended.
pub fn describe_listing(l: &crate::store::audit::ListingOutcome) -> String {
    let what = format!("{} {}", l.provider, one_line(&l.scope));
    match &l.state {
        ListingState::Done { found } => format!("{what}: complete, {found} chat(s) listed"),
        ListingState::Failed { reason } => format!(
            "{what}: FAILED ({}); chats this listing would have found may remain at the provider",
            one_line(reason)
        ),
        ListingState::NotFinished => format!("{what}: not finished"),
    }
}

pub const CAVEATS: [&str; 2] = [
    "Each deletion listed was confirmed by the provider's API at the time shown; how the provider erases internally (it may soft-delete first) is outside what forgetd can observe.",
    "Convai keeps long-term character memory in a separate store that deleting chat sessions does not touch.",
];

#[derive(Debug, Clone, Serialize)]
pub struct CertChat {
    pub scope: String,
    pub session_id: String,
    pub confirmed_at: Option<i64>,
    pub outcome: Option<String>,
    pub verification: CertVerification,
}

/// Whether a deleted chat was read back absent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertVerification {
    /// `verified_absent`, `pending` (not read back yet), `unverified` (the reads could not
    /// decide), `not_checked` (deleted before forgetd read deletions back).
    pub status: String,
    pub at: Option<i64>,
    /// Why it is not verified, when it is not.
    pub detail: Option<String>,
    /// Times the chat was read back present after a confirmed deletion (and deleted again).
    pub reappeared: u32,
}

impl CertVerification {
    fn pending() -> Self {
        Self {
            status: "pending".into(),
            at: None,
            detail: Some("not read back yet".into()),
            reappeared: 0,
        }
    }

    /// Words for a person.
    pub fn describe(&self) -> String {
        let mut s = match self.status.as_str() {
            "verified_absent" => {
                format!("read back absent {}", self.at.map(time).unwrap_or_default())
            }
            "unverified" => format!(
                "UNVERIFIED: {}",
                self.detail
                    .as_deref()
                    .unwrap_or("the reads could not decide")
            ),
            "not_checked" => {
                "not read back (deleted while forgetd did not read deletions back)".into()
            }
            _ => "not read back yet".into(),
        };
        if self.reappeared > 0 {
            s.push_str(&format!(
                "; reappeared {} time(s) after a confirmed deletion and was deleted again",
                self.reappeared
            ));
        }
        s
    }
}

/// The request's verification event, when every deleted chat was read back absent.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedAnchor {
    pub event_seq: i64,
    pub event_hash: String,
    pub verified_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertHeld {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub hold_id: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertFailed {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Anchor {
    pub event_seq: i64,
    pub event_hash: String,
    pub chain_head: String,
    pub chain_events: u64,
    pub chain_intact: bool,
    /// Whether the chain's seals were checked (this process holds the chain key): without them
    /// the hashes alone do not show forgetd wrote the events.
    pub seals_checked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Certificate {
    pub request_id: i64,
    pub external_ref: Option<String>,
    pub subject_hash: Option<String>,
    pub state: String,
    pub received_at: i64,
    pub due_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// Set when every deleted chat was read back absent (the `request.verified` event).
    pub verified: Option<VerifiedAnchor>,
    /// provider -> chats whose deletion the provider confirmed
    pub deleted: BTreeMap<String, Vec<CertChat>>,
    pub held: Vec<CertHeld>,
    pub failed: Vec<CertFailed>,
    pub anchor: Option<Anchor>,
    /// When the request was re-opened after its last close (a chat changed fate): nothing is
    /// certified until it closes again.
    pub reopened_at: Option<i64>,
    /// The listings by subject (KooSearch by `user_name`) its resolution asked, and how each
    /// ended, from the trail. A failed one means chats it would have found may remain.
    pub listings: Vec<crate::store::audit::ListingOutcome>,
    /// Differences between the sealed record and the database's current rows (an edited
    /// reference or date, a chat whose state changed since the closing event).
    pub notices: Vec<String>,
    /// A chat's state now differs from what the latest closing event states (a new closing
    /// event is due): the request is not stated verified.
    pub changed_since_close: bool,
    /// Why the record behind this certificate cannot be trusted, when it cannot: `audit export`
    /// refuses such a certificate unless forced, and a forced one says BROKEN at its top.
    pub broken: Option<String>,
    pub caveats: Vec<String>,
}

impl Certificate {
    pub fn build(store: &Store, request_id: i64) -> Result<Self> {
        let row = store.request_record(request_id)?;
        let received = store.received_event(request_id)?;
        let mut notices = Vec::new();
        // The reference, person and dates as forgetd recorded them when it took the request in;
        // the row's values only for a request not taken in yet (nothing is certified then).
        let (external_ref, subject_hash, received_at, due_at) = match &received {
            Some(e) => {
                let r = &e.received;
                let mut differs = |what: &str, recorded: String, now: String| {
                    if recorded != now {
                        notices.push(format!(
                            "the request's row was edited after forgetd recorded it: {what} is {now} in the row, {recorded} in the sealed record (audit event {}); this certificate states the record",
                            e.seq
                        ));
                    }
                };
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
                differs(
                    "the reference",
                    opt(&r.external_ref),
                    opt(&row.external_ref),
                );
                differs(
                    "the received time",
                    time(r.received_at),
                    time(row.received_at),
                );
                differs(
                    "the due date",
                    time(r.due_at),
                    row.due_at.map(time).unwrap_or_else(|| "none".into()),
                );
                if row.subject_hash.as_deref() != Some(r.subject_hash.as_str()) {
                    notices.push(format!(
                        "the request's row was edited after forgetd recorded it: its subject hash differs from the sealed record (audit event {})",
                        e.seq
                    ));
                }
                (
                    r.external_ref.clone(),
                    Some(r.subject_hash.clone()),
                    r.received_at,
                    Some(r.due_at),
                )
            }
            None => (
                row.external_ref.clone(),
                row.subject_hash.clone(),
                row.received_at,
                row.due_at,
            ),
        };
        let mut cert = Certificate {
            request_id,
            external_ref,
            subject_hash,
            state: row.state.clone(),
            received_at,
            due_at,
            completed_at: None,
            verified: None,
            deleted: BTreeMap::new(),
            held: Vec::new(),
            failed: Vec::new(),
            anchor: None,
            reopened_at: None,
            listings: Vec::new(),
            notices,
            changed_since_close: false,
            broken: None,
            caveats: CAVEATS.iter().map(|s| s.to_string()).collect(),
        };
        let Some(event) = store.closing_event(request_id)? else {
            return Ok(cert); // not finished: nothing is certified yet
        };
        if received.is_none() {
            cert.notices.push(
                "the request's receipt is not in the audit trail: its reference and dates are the row's"
                    .into(),
            );
        }
        if let Some((_, at)) = store.reopened_after(request_id, event.seq)? {
            // At work again since its last close: the closing event no longer stands.
            cert.state = "in_progress".into();
            cert.reopened_at = Some(at);
            return Ok(cert);
        }
        let (seq, hash) = (event.seq, event.hash);
        cert.state = if event.complete { "complete" } else { "failed" }.into();
        cert.completed_at = Some(event.at);
        let verified = store.verified_event(request_id, seq)?;
        // Each chat's current record: the source for chats not (yet) verified, for how often a
        // chat reappeared, and to find a chat whose fate changed since the closing event.
        let live: BTreeMap<(String, String, String), crate::store::verification::ItemVerification> =
            store
                .request_verification(request_id)?
                .into_iter()
                .map(|v| {
                    (
                        (v.provider.clone(), v.scope.clone(), v.session_id.clone()),
                        v,
                    )
                })
                .collect();
        // Every claim below is checked against the trail's certifying events, not the rows:
        // a group member can edit a row so the daemon records something false in a sealed
        // closing event, but cannot forge the batch answers and read-backs it would need.
        let wanted: std::collections::BTreeSet<(String, String, String)> = event
            .closed
            .items
            .iter()
            .map(|i| (i.provider.clone(), i.scope.clone(), i.session_id.clone()))
            .collect();
        let evidence = store.chat_evidence(&wanted)?;
        // A forgetd before per-chat read-back events recorded read-backs only in
        // `request.verified` (sealed, so not forgeable): such an event still counts. One written
        // since says so, and is a summary of rows, never evidence.
        let legacy_read_back: BTreeMap<(String, String, String), i64> = verified
            .as_ref()
            .filter(|v| !v.verified.per_chat_evidence)
            .map(|v| {
                v.verified
                    .items
                    .iter()
                    .map(|i| {
                        (
                            (i.provider.clone(), i.scope.clone(), i.session_id.clone()),
                            i.verified_at,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut unproven = Vec::new();
        if let Some(found) = store.resolved_items(request_id, seq)?
            && found != event.closed.items.len() as u64
        {
            unproven.push(format!(
                "the closing event lists {} chat(s), the request's resolution found {found}",
                event.closed.items.len()
            ));
        }
        // The listings by subject: a request is complete only when each of them ended with its
        // chats found; one that failed (or never ended) leaves chats it would find possibly
        // remaining, which the certificate says, and which a completion cannot be.
        cert.listings = store.listing_outcomes(request_id, seq)?;
        for l in &cert.listings {
            match &l.state {
                ListingState::Done { .. } if l.listed_hash != cert.subject_hash => {
                    unproven.push(format!(
                        "the listing by subject at {} {} listed someone other than the person the request was received for",
                        l.provider, l.scope
                    ));
                }
                ListingState::Done { .. } => {}
                ListingState::Failed { .. } | ListingState::NotFinished if event.complete => {
                    unproven.push(format!(
                        "the closing event says complete, but the listing by subject at {} {} {} in the trail",
                        l.provider,
                        l.scope,
                        if matches!(l.state, ListingState::Failed { .. }) {
                            "failed"
                        } else {
                            "never ended"
                        }
                    ));
                }
                _ => {}
            }
        }
        let mut stale = false;
        let mut all_read_back = true;
        for item in event.closed.items {
            let key = (
                item.provider.clone(),
                item.scope.clone(),
                item.session_id.clone(),
            );
            let current = live.get(&key);
            let now_state = current.map_or("gone", |c| c.state.as_str());
            if now_state != item.state {
                stale = true;
                cert.changed_since_close = true;
                cert.notices.push(format!(
                    "{}/{}/{} is {now_state} now, not {} as the closing event states: a new closing event follows when it settles",
                    item.provider, item.scope, item.session_id, item.state
                ));
            }
            let reappeared = current.map_or(0, |c| c.reappeared);
            let ev = evidence.chats.get(&key).cloned().unwrap_or_default();
            // Its deletion: a batch answer before the close, after its last reappearance then.
            let came_back = ev.reappeared.iter().copied().filter(|s| *s < seq).max();
            let deletion = ev
                .deleted
                .iter()
                .copied()
                .filter(|d| *d < seq && came_back.is_none_or(|b| *d > b))
                .max();
            if item.state == "deleted" && deletion.is_none() {
                unproven.push(format!(
                    "the closing event calls {}/{}/{} deleted, but no batch answer in the trail recorded its deletion{}",
                    item.provider,
                    item.scope,
                    item.session_id,
                    if came_back.is_some() {
                        " after it last reappeared"
                    } else {
                        ""
                    }
                ));
            }
            // Read back absent after that deletion and after any reappearance, by a sealed
            // read-back event (or, from before those, the request's verification event).
            let after = ev
                .reappeared
                .iter()
                .copied()
                .max()
                .unwrap_or(0)
                .max(deletion.unwrap_or(i64::MAX));
            let absent_at = ev
                .absent
                .iter()
                .filter(|(s, _)| *s > after)
                .map(|(_, at)| *at)
                .min()
                .or_else(|| {
                    legacy_read_back
                        .get(&key)
                        .copied()
                        .filter(|_| deletion.is_some() && ev.reappeared.is_empty())
                });
            if item.state == "deleted" && absent_at.is_none() {
                all_read_back = false;
            }
            let verification = match (absent_at, current) {
                (Some(at), _) => CertVerification {
                    status: "verified_absent".into(),
                    at: Some(at),
                    detail: None,
                    reappeared,
                },
                (None, Some(c)) if c.state == "deleted" => match c.verify_state.as_deref() {
                    Some("unverified") => CertVerification {
                        status: "unverified".into(),
                        at: c.verified_at,
                        detail: Some(format!(
                            "{} read(s) could not decide: {}",
                            c.verify_attempts,
                            c.verify_error.as_deref().unwrap_or("no answer")
                        )),
                        reappeared,
                    },
                    Some("not_checked") => CertVerification {
                        status: "not_checked".into(),
                        at: None,
                        detail: Some(
                            "deleted while forgetd did not read deletions back (`[verify] after` off, or before read-back existed)"
                                .into(),
                        ),
                        reappeared,
                    },
                    // Read back absent by the current row, but the trail does not say so: the
                    // certificate claims only what the trail holds.
                    Some("verified_absent") => CertVerification {
                        detail: Some(
                            "read back absent by the current row, but no read-back in the audit trail says so"
                                .into(),
                        ),
                        reappeared,
                        ..CertVerification::pending()
                    },
                    _ => CertVerification {
                        reappeared,
                        ..CertVerification::pending()
                    },
                },
                _ => CertVerification {
                    reappeared,
                    ..CertVerification::pending()
                },
            };
            match item.state.as_str() {
                "deleted" => cert
                    .deleted
                    .entry(item.provider)
                    .or_default()
                    .push(CertChat {
                        scope: item.scope,
                        session_id: item.session_id,
                        confirmed_at: item.confirmed_at,
                        outcome: item.outcome,
                        verification,
                    }),
                "held" => cert.held.push(CertHeld {
                    provider: item.provider,
                    scope: item.scope,
                    session_id: item.session_id,
                    hold_id: item.hold_id,
                    reason: item.hold_reason,
                }),
                _ => cert.failed.push(CertFailed {
                    provider: item.provider,
                    scope: item.scope,
                    session_id: item.session_id,
                    error: item.last_error,
                }),
            }
        }
        if let Some(v) = &verified
            && event.complete
            && all_read_back
            && !stale
        {
            cert.verified = Some(VerifiedAnchor {
                event_seq: v.seq,
                event_hash: v.hash.clone(),
                verified_at: v
                    .verified
                    .items
                    .iter()
                    .map(|i| i.verified_at)
                    .max()
                    .unwrap_or(0),
            });
        }
        let v = store.verify_audit()?;
        let missing = store.missing_audit_triggers()?;
        cert.broken = match (&v.broken, missing.is_empty()) {
            (Some(b), _) => Some(format!(
                "audit chain broken at event {}: {}",
                b.seq, b.reason
            )),
            (None, false) => Some(format!(
                "the audit table's append-only triggers are missing ({}): the trail may have been edited",
                missing.join(", ")
            )),
            (None, true) if !unproven.is_empty() => Some(format!(
                "{}; the request's rows were edited so forgetd recorded what did not happen",
                unproven.join("; ")
            )),
            (None, true) => None,
        };
        cert.anchor = Some(Anchor {
            event_seq: seq,
            event_hash: hash,
            chain_head: v.head,
            chain_events: v.events,
            chain_intact: v.broken.is_none(),
            seals_checked: v.seals.is_some(),
        });
        Ok(cert)
    }

    /// Whether the request is verified, in words: verified (when), waiting (for what), or not
    /// verified (why) — never "not yet" for a request that can no longer be verified.
    pub fn verified_line(&self) -> String {
        if let Some(v) = &self.verified {
            return format!(
                "yes, every deleted chat was read back absent (by {})",
                time(v.verified_at)
            );
        }
        if self.reopened_at.is_some() {
            return "no: the request is at work again; it is verified after it closes again".into();
        }
        let chats: Vec<&CertChat> = self.deleted.values().flatten().collect();
        if chats.is_empty() {
            return "no deleted chat to read back".into();
        }
        let count = |s: &str| chats.iter().filter(|c| c.verification.status == s).count();
        let (absent, unverified, pending, unchecked) = (
            count("verified_absent"),
            count("unverified"),
            count("pending"),
            count("not_checked"),
        );
        if self.state != "failed" && !self.changed_since_close && pending > 0 {
            format!(
                "waiting: {absent} of {} deleted chat(s) read back absent, {pending} to be read back (forgetd reads each deletion back `[verify] after` its confirmation){}",
                chats.len(),
                if unverified + unchecked > 0 {
                    format!(
                        "; {unverified} could not be decided and {unchecked} were not read back, so the request will not be verified"
                    )
                } else {
                    String::new()
                }
            )
        } else {
            let mut why = Vec::new();
            if self.state == "failed" {
                why.push("the request failed".to_string());
            }
            if unverified > 0 {
                why.push(format!(
                    "{unverified} chat(s) read back without a decision (gave up)"
                ));
            }
            if unchecked > 0 {
                why.push(format!(
                    "{unchecked} chat(s) deleted while forgetd did not read deletions back"
                ));
            }
            if self.changed_since_close {
                why.push("a chat changed since the closing event".into());
            }
            if why.is_empty() {
                why.push(
                    "the audit trail does not record every deleted chat read back absent".into(),
                );
            }
            format!(
                "no: {}; {absent} of {} deleted chat(s) read back absent",
                why.join(", "),
                chats.len()
            )
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        if let Some(why) = &self.broken {
            let _ = writeln!(
                o,
                "BROKEN — this certificate rests on a damaged record: {why}\n"
            );
        }
        for n in &self.notices {
            let _ = writeln!(o, "NOTICE — {}", one_line(n));
        }
        if !self.notices.is_empty() {
            let _ = writeln!(o);
        }
        let _ = writeln!(o, "CERTIFICATE OF ERASURE — request {}", self.request_id);
        let _ = writeln!(
            o,
            "  reference:   {}",
            one_line(self.external_ref.as_deref().unwrap_or("-"))
        );
        let _ = writeln!(
            o,
            "  subject:     keyed hash {}",
            self.subject_hash.as_deref().unwrap_or("-")
        );
        let _ = writeln!(o, "  state:       {}", self.state);
        let _ = writeln!(o, "  received:    {}", time(self.received_at));
        if let Some(d) = self.due_at {
            let _ = writeln!(o, "  due:         {}", time(d));
        }
        if let Some(c) = self.completed_at {
            let _ = writeln!(o, "  completed:   {}", time(c));
        }
        if self.anchor.is_some() {
            let _ = writeln!(o, "  verified:    {}", self.verified_line());
        }
        if let Some(at) = self.reopened_at {
            let _ = writeln!(
                o,
                "\nThis request was re-opened {} (a chat changed fate after it closed); nothing is certified until it closes again.",
                time(at)
            );
            return o;
        }
        if self.anchor.is_none() {
            let _ = writeln!(
                o,
                "\nThis request is not finished; nothing is certified yet."
            );
            return o;
        }
        for (provider, chats) in &self.deleted {
            let _ = writeln!(
                o,
                "\n  {provider}: deletion confirmed by the provider for {} chat(s):",
                chats.len()
            );
            for c in chats {
                let _ = writeln!(
                    o,
                    "    {}/{}  confirmed {}; {}",
                    one_line(&c.scope),
                    one_line(&c.session_id),
                    c.confirmed_at.map(time).unwrap_or_default(),
                    c.verification.describe()
                );
            }
        }
        if !self.held.is_empty() {
            let _ = writeln!(o, "\n  held under legal hold (not deleted):");
            for h in &self.held {
                let _ = writeln!(
                    o,
                    "    {}/{}/{}  hold {}: {}",
                    h.provider,
                    one_line(&h.scope),
                    one_line(&h.session_id),
                    h.hold_id.unwrap_or(0),
                    one_line(h.reason.as_deref().unwrap_or(""))
                );
            }
        }
        if !self.listings.is_empty() {
            let _ = writeln!(
                o,
                "\n  listings by subject (chats the provider finds for the person):"
            );
            for l in &self.listings {
                let _ = writeln!(o, "    {}", describe_listing(l));
            }
        }
        if !self.failed.is_empty() {
            let _ = writeln!(o, "\n  NOT deleted (failed):");
            for f in &self.failed {
                let _ = writeln!(
                    o,
                    "    {}/{}/{}  {}",
                    f.provider,
                    one_line(&f.scope),
                    one_line(&f.session_id),
                    one_line(f.error.as_deref().unwrap_or(""))
                );
            }
        }
        if let Some(a) = &self.anchor {
            let _ = writeln!(
                o,
                "\n  anchored by audit event {} (hash {})",
                a.event_seq, a.event_hash
            );
            let _ = writeln!(
                o,
                "  audit chain: {} event(s), head {}, {}",
                a.chain_events,
                a.chain_head,
                match (a.chain_intact, a.seals_checked) {
                    (true, true) => "verified intact, seals checked",
                    (true, false) =>
                        "hashes intact; seals NOT checked (this user cannot read the chain key: run as root or forgetd)",
                    (false, _) => "BROKEN (run `forgetd audit verify`)",
                }
            );
        }
        if let Some(v) = &self.verified {
            let _ = writeln!(
                o,
                "  verified by audit event {} (hash {})",
                v.event_seq, v.event_hash
            );
        }
        let _ = writeln!(o);
        for c in &self.caveats {
            let _ = writeln!(o, "  note: {c}");
        }
        o
    }
}
