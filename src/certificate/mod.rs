//! The certificate of erasure (`forgetd audit export --request ID`): what a privacy officer hands a
//! regulator. Built from the audit event that closed the request (`request.completed` or
//! `request.failed`, read back as its typed form [`crate::audit::RequestClosed`] through the
//! store), anchored by that event's hash and the verified chain head, so it states only what the
//! tamper-evident record says. A read model: it writes nothing and runs no SQL of its own.
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

use crate::report::time;
use crate::store::{Result, Store};

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
            "not_checked" => "not read back (deleted before read-back verification)".into(),
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
    /// Why the record behind this certificate cannot be trusted, when it cannot: `audit export`
    /// refuses such a certificate unless forced, and a forced one says BROKEN at its top.
    pub broken: Option<String>,
    pub caveats: Vec<String>,
}

impl Certificate {
    pub fn build(store: &Store, request_id: i64) -> Result<Self> {
        let r = store.request_record(request_id)?;
        let mut cert = Certificate {
            request_id,
            external_ref: r.external_ref,
            subject_hash: r.subject_hash,
            state: r.state,
            received_at: r.received_at,
            due_at: r.due_at,
            completed_at: r.completed_at,
            verified: None,
            deleted: BTreeMap::new(),
            held: Vec::new(),
            failed: Vec::new(),
            anchor: None,
            broken: None,
            caveats: CAVEATS.iter().map(|s| s.to_string()).collect(),
        };
        let Some(event) = store.closing_event(request_id)? else {
            return Ok(cert); // not finished: nothing is certified yet
        };
        let (seq, hash) = (event.seq, event.hash);
        let verified = store.verified_event(request_id, seq)?;
        // Each chat's current record: the source for chats not (yet) verified, and for how
        // often a chat reappeared.
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
        let read_back: BTreeMap<(String, String, String), i64> = verified
            .as_ref()
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
        if let Some(v) = &verified {
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
        for item in event.closed.items {
            let key = (
                item.provider.clone(),
                item.scope.clone(),
                item.session_id.clone(),
            );
            let current = live.get(&key);
            let reappeared = current.map_or(0, |c| c.reappeared);
            let verification = match (read_back.get(&key), current) {
                (Some(at), _) => CertVerification {
                    status: "verified_absent".into(),
                    at: Some(*at),
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
                        detail: Some("deleted before forgetd read deletions back".into()),
                        reappeared,
                    },
                    // Read back absent, but the request's verification is not recorded (yet):
                    // the certificate claims only what the chain holds.
                    Some("verified_absent") => CertVerification {
                        status: "verified_absent".into(),
                        at: c.verified_at,
                        detail: None,
                        reappeared,
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
            (None, true) => None,
        };
        cert.anchor = Some(Anchor {
            event_seq: seq,
            event_hash: hash,
            chain_head: v.head,
            chain_events: v.events,
            chain_intact: v.broken.is_none(),
        });
        Ok(cert)
    }

    /// Whether the request is verified, in words: when, or what is missing.
    pub fn verified_line(&self) -> String {
        if let Some(v) = &self.verified {
            return format!(
                "yes, every deleted chat was read back absent (by {})",
                time(v.verified_at)
            );
        }
        let chats: Vec<&CertChat> = self.deleted.values().flatten().collect();
        if chats.is_empty() {
            return "no deleted chat to read back".into();
        }
        let count = |s: &str| chats.iter().filter(|c| c.verification.status == s).count();
        format!(
            "not yet: {} of {} deleted chat(s) read back absent, {} unverified, {} not read back yet, {} not checked",
            count("verified_absent"),
            chats.len(),
            count("unverified"),
            count("pending"),
            count("not_checked")
        )
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        if let Some(why) = &self.broken {
            let _ = writeln!(
                o,
                "BROKEN — this certificate rests on a damaged record: {why}\n"
            );
        }
        let _ = writeln!(o, "CERTIFICATE OF ERASURE — request {}", self.request_id);
        let _ = writeln!(
            o,
            "  reference:   {}",
            self.external_ref.as_deref().unwrap_or("-")
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
                    c.scope,
                    c.session_id,
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
                    h.scope,
                    h.session_id,
                    h.hold_id.unwrap_or(0),
                    h.reason.as_deref().unwrap_or("")
                );
            }
        }
        if !self.failed.is_empty() {
            let _ = writeln!(o, "\n  NOT deleted (failed):");
            for f in &self.failed {
                let _ = writeln!(
                    o,
                    "    {}/{}/{}  {}",
                    f.provider,
                    f.scope,
                    f.session_id,
                    f.error.as_deref().unwrap_or("")
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
                if a.chain_intact {
                    "verified intact"
                } else {
                    "BROKEN (run `forgetd audit verify`)"
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
