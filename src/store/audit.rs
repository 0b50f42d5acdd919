//! The audit trail's statements: appending a link inside the caller's transaction, walking the
//! chain, the head, and reading a request's closing event back as its typed form
//! ([`crate::audit::RequestClosed`]). The chain's arithmetic and rules are [`crate::audit`]'s.

use std::ops::ControlFlow;

use super::Tx;
use super::db::{Engine, Sql};
use crate::args;

use super::{Result, Store};
use crate::audit::{
    BrokenLink, Event, GENESIS, RequestClosed, RequestReceived, RequestVerified, SealCheck,
    Verification, link_hash,
};

/// Appends one event, sealed when the transaction carries the chain key; returns its hash. The
/// payload gets the transaction's actor. A certifying event needs the key: without it the append
/// is refused (a dry run, which rolls back, skips it), so no keyless process can write one.
pub fn append(tx: &Tx<'_>, at: i64, request_id: Option<i64>, event: &Event) -> Result<String> {
    let kind = event.kind();
    if Event::certifying(kind) && tx.chain_key().is_none() {
        if tx.is_dry_run() {
            return Ok(String::new());
        }
        return Err(super::StoreError::Keyless { kind });
    }
    let (prev_seq, prev_hash): (i64, String) = tx
        .row_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .unwrap_or((0, GENESIS.to_string()));
    let seq = prev_seq + 1;
    let mut data = event.data();
    if let Some(obj) = data.as_object_mut() {
        obj.insert(
            "actor".into(),
            serde_json::to_value(tx.actor()).expect("plain data serializes"),
        );
    }
    let data = data.to_string();
    let hash = link_hash(&prev_hash, seq, at, kind, request_id, &data);
    tx.exec(
        "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![seq, at, kind, request_id, data, prev_hash, hash],
    )?;
    if let Some(key) = tx.chain_key() {
        tx.exec(
            "INSERT INTO audit_seals (seq, seal, late) VALUES (?1, ?2, 0)",
            args![seq, key.seal(seq, &hash, false)],
        )?;
    }
    Ok(hash)
}

/// A request's closing event: its sequence number, hash, time and content, and whether it closed
/// the request complete (`request.completed`) or failed.
#[derive(Debug, Clone)]
pub struct ClosingEvent {
    pub seq: i64,
    pub hash: String,
    pub at: i64,
    pub complete: bool,
    pub closed: RequestClosed,
}

/// A request's `request.received` event: what forgetd recorded when it took the request in.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub seq: i64,
    pub hash: String,
    pub received: RequestReceived,
}

/// A request's `request.verified` event: its sequence number, hash and content.
#[derive(Debug, Clone)]
pub struct VerifiedEvent {
    pub seq: i64,
    pub hash: String,
    pub verified: RequestVerified,
}

/// The triggers that make the audit table and its seals append-only (the schema's).
pub const APPEND_ONLY_TRIGGERS: [&str; 4] = [
    "audit_log_is_append_only_no_update",
    "audit_log_is_append_only_no_delete",
    "audit_seals_are_append_only_no_update",
    "audit_seals_are_append_only_no_delete",
];

/// What late sealing did ([`Store::seal_late`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LateSeals {
    pub sealed: u64,
    /// Unsealed certifying links after the chain became keyed: written without the key (forged,
    /// or by an old forgetd). Never sealed; `audit verify` reports them.
    pub refused: Vec<i64>,
}

/// A chat: provider, scope, session ID.
pub type Chat = (String, String, String);

/// What the trail's certifying events say about some chats ([`Store::chat_evidence`]).
#[derive(Debug, Default)]
pub struct Evidence {
    pub chats: std::collections::HashMap<Chat, ChatEvidence>,
}

/// One chat's evidence: the links (seq) that recorded it deleted, read back present, and read
/// back absent (with the time).
#[derive(Debug, Default, Clone)]
pub struct ChatEvidence {
    pub deleted: Vec<i64>,
    pub reappeared: Vec<i64>,
    pub absent: Vec<(i64, i64)>,
}

/// The subject hash the request's first `request.received` recorded (sealed as forgetd wrote
/// it), if it was taken in.
pub(crate) fn received_subject_hash(tx: &Tx<'_>, request_id: i64) -> Result<Option<String>> {
    let data: Option<String> = tx.row_opt(
        "SELECT data FROM audit_log WHERE request_id = ?1 AND kind = 'request.received'
         ORDER BY seq LIMIT 1",
        args![request_id],
        |r| r.get(0),
    )?;
    Ok(
        data.and_then(|d| match Event::parse("request.received", &d) {
            Ok(Event::RequestReceived(r)) => Some(r.subject_hash),
            _ => None,
        }),
    )
}

/// How one listing by subject stood, by the trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListingOutcome {
    pub provider: String,
    pub scope: String,
    #[serde(flatten)]
    pub state: ListingState,
    /// The event that settled it.
    pub seq: Option<i64>,
    /// The keyed hash of the subject a `request.discovered` says was listed.
    #[serde(skip)]
    pub listed_hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ListingState {
    NotFinished,
    Done { found: u64 },
    Failed { reason: String },
}

impl Store {
    /// Walks the trail's `batch.answered`, `chat.reappeared` and `chats.read_back` events for
    /// what they say about `chats`. A certificate checks every claim it makes against this, not
    /// against rows (a row can be edited; a sealed link cannot). One pass over those links.
    pub fn chat_evidence(&self, chats: &std::collections::BTreeSet<Chat>) -> Result<Evidence> {
        let mut out = Evidence::default();
        let mut note = |chat: Chat, f: &mut dyn FnMut(&mut ChatEvidence)| {
            if chats.contains(&chat) {
                f(out.chats.entry(chat).or_default());
            }
        };
        self.scan(
            "SELECT seq, at, kind, data FROM audit_log
             WHERE kind IN ('batch.answered', 'chat.reappeared', 'chats.read_back') ORDER BY seq",
            args![],
            |r| {
                let (seq, at, kind, data): (i64, i64, String, String) =
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                // A link that does not read as its kind was not written by forgetd: it proves
                // nothing (and `audit verify` says what is wrong with it).
                match Event::parse(&kind, &data) {
                    Ok(Event::BatchAnswered(b)) => {
                        for sid in b.deleted {
                            note((b.provider.clone(), b.scope.clone(), sid), &mut |e| {
                                e.deleted.push(seq)
                            });
                        }
                    }
                    Ok(Event::ChatReappeared(c)) => {
                        note((c.provider, c.scope, c.session_id), &mut |e| {
                            e.reappeared.push(seq)
                        });
                    }
                    Ok(Event::ChatsReadBack(c)) => {
                        for chat in c.chats {
                            note(
                                (c.provider.clone(), chat.scope, chat.session_id),
                                &mut |e| e.absent.push((seq, at)),
                            );
                        }
                    }
                    _ => {}
                }
                Ok(ControlFlow::<()>::Continue(()))
            },
        )?;
        Ok(out)
    }

    /// The append-only triggers that are missing (someone dropped them to edit the trail).
    pub fn missing_audit_triggers(&self) -> Result<Vec<&'static str>> {
        let mut missing = Vec::new();
        for name in APPEND_ONLY_TRIGGERS {
            // On PostgreSQL a trigger can also be disabled, its quiet way to stop one.
            let sql = match self.engine() {
                Engine::Sqlite => {
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = ?1"
                }
                Engine::Postgres => {
                    "SELECT count(*) FROM pg_trigger WHERE tgname = ?1 AND NOT tgisinternal AND tgenabled <> 'D'"
                }
            };
            let n: i64 = self.row(sql, args![name], |r| r.get(0))?;
            if n == 0 {
                missing.push(name);
            }
        }
        Ok(missing)
    }

    /// Walks the chain from the start.
    pub fn verify_audit(&self) -> Result<Verification> {
        verify(self)
    }

    /// The last `request.completed` / `request.failed` event of a request, if it finished.
    pub fn closing_event(&self, request_id: i64) -> Result<Option<ClosingEvent>> {
        let row: Option<(i64, String, i64, String, String)> = self.row_opt(
            "SELECT seq, hash, at, kind, data FROM audit_log WHERE request_id = ?1
               AND kind IN ('request.completed', 'request.failed')
             ORDER BY seq DESC LIMIT 1",
            args![request_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let Some((seq, hash, at, kind, data)) = row else {
            return Ok(None);
        };
        let (complete, closed) = match Event::parse(&kind, &data) {
            Ok(Event::RequestCompleted(c)) => (true, c),
            Ok(Event::RequestFailed(c)) => (false, c),
            other => {
                return Err(super::StoreError::Invalid(format!(
                    "audit event {seq} (a request's closing event) does not read as one: {}",
                    other.err().map(|e| e.to_string()).unwrap_or_default()
                )));
            }
        };
        Ok(Some(ClosingEvent {
            seq,
            hash,
            at,
            complete,
            closed,
        }))
    }

    /// The request's `request.received` event, when forgetd took it in.
    pub fn received_event(&self, request_id: i64) -> Result<Option<ReceivedEvent>> {
        let row: Option<(i64, String, String)> = self.row_opt(
            "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
               AND kind = 'request.received' ORDER BY seq LIMIT 1",
            args![request_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let Some((seq, hash, data)) = row else {
            return Ok(None);
        };
        match Event::parse("request.received", &data) {
            Ok(Event::RequestReceived(received)) => Ok(Some(ReceivedEvent {
                seq,
                hash,
                received,
            })),
            other => Err(super::StoreError::Invalid(format!(
                "audit event {seq} (a request's receipt) does not read as one: {}",
                other.err().map(|e| e.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// How many chats the request had by its last resolution step before event `before` (its
    /// closing event): the latest `request.discovered` then (certifying: only forgetd writes
    /// it), else the first `request.resolved` (a later one appended by someone else counts for
    /// nothing).
    pub fn resolved_items(&self, request_id: i64, before: i64) -> Result<Option<u64>> {
        let discovered: Option<String> = self.row_opt(
            "SELECT data FROM audit_log WHERE request_id = ?1 AND seq < ?2
               AND kind = 'request.discovered' ORDER BY seq DESC LIMIT 1",
            args![request_id, before],
            |r| r.get(0),
        )?;
        if let Some(Ok(Event::RequestDiscovered(d))) =
            discovered.map(|d| Event::parse("request.discovered", &d))
        {
            return Ok(Some(d.items));
        }
        let resolved: Option<String> = self.row_opt(
            "SELECT data FROM audit_log WHERE request_id = ?1 AND seq < ?2
               AND kind = 'request.resolved' ORDER BY seq LIMIT 1",
            args![request_id, before],
            |r| r.get(0),
        )?;
        Ok(
            resolved.and_then(|d| match Event::parse("request.resolved", &d) {
                Ok(Event::RequestResolved(r)) => Some(r.items),
                _ => None,
            }),
        )
    }

    /// The listings by subject the request's resolution asked for, and how each stood before
    /// event `before` (its closing event), from the trail: the latest `request.discovered` or
    /// `request.discovery_failed` for it after the latest `request.retried` that asked again.
    /// Empty for a request resolved before discovery was a stage.
    pub fn listing_outcomes(&self, request_id: i64, before: i64) -> Result<Vec<ListingOutcome>> {
        let links: Vec<(i64, String, String)> = self.rows(
            "SELECT seq, kind, data FROM audit_log WHERE request_id = ?1 AND seq < ?2
               AND kind IN ('request.resolved', 'request.discovered', 'request.discovery_failed',
                            'request.retried')
             ORDER BY seq",
            args![request_id, before],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut out: Vec<ListingOutcome> = Vec::new();
        let mut resolved_seen = false;
        for (seq, kind, data) in links {
            // A link that does not read is not forgetd's (it writes typed events only): it
            // states nothing here, and `audit verify` names it.
            let Ok(event) = Event::parse(&kind, &data) else {
                continue;
            };
            let mut settle =
                |provider: &str, scope: &str, state: ListingState, hash: Option<&str>| {
                    if let Some(o) = out
                        .iter_mut()
                        .find(|o| o.provider == provider && o.scope == scope)
                    {
                        o.state = state;
                        o.seq = Some(seq);
                        o.listed_hash = hash.map(str::to_string);
                    }
                };
            match event {
                // The first resolution names the listings; a later `request.resolved` is not
                // forgetd's (it resolves a request once).
                Event::RequestResolved(r) if !resolved_seen => {
                    resolved_seen = true;
                    for l in r.discovering {
                        if !out
                            .iter()
                            .any(|o| o.provider == l.provider && o.scope == l.scope)
                        {
                            out.push(ListingOutcome {
                                provider: l.provider,
                                scope: l.scope,
                                state: ListingState::NotFinished,
                                seq: None,
                                listed_hash: None,
                            });
                        }
                    }
                }
                Event::RequestDiscovered(d) => settle(
                    &d.provider,
                    &d.scope,
                    ListingState::Done { found: d.found },
                    Some(&d.subject_hash),
                ),
                Event::RequestDiscoveryFailed(f) => settle(
                    &f.provider,
                    &f.scope,
                    ListingState::Failed { reason: f.reason },
                    None,
                ),
                Event::RequestRetried(r) if r.rediscovering > 0 => {
                    for o in &mut out {
                        if matches!(o.state, ListingState::Failed { .. }) {
                            o.state = ListingState::NotFinished;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// When the request was re-opened after event `since` (its closing event), if it was: the
    /// latest `request.reopened` after it.
    pub fn reopened_after(&self, request_id: i64, since: i64) -> Result<Option<(i64, i64)>> {
        self.row_opt(
            "SELECT seq, at FROM audit_log WHERE request_id = ?1
               AND kind = 'request.reopened' AND seq > ?2 ORDER BY seq DESC LIMIT 1",
            args![request_id, since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The request's `request.verified` event recorded after event `since` (its closing event):
    /// a verification of an earlier completion does not speak for a later one.
    pub fn verified_event(&self, request_id: i64, since: i64) -> Result<Option<VerifiedEvent>> {
        let row: Option<(i64, String, String)> = self.row_opt(
            "SELECT seq, hash, data FROM audit_log WHERE request_id = ?1
               AND kind = 'request.verified' AND seq > ?2
             ORDER BY seq DESC LIMIT 1",
            args![request_id, since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let Some((seq, hash, data)) = row else {
            return Ok(None);
        };
        let verified = match Event::parse("request.verified", &data) {
            Ok(Event::RequestVerified(v)) => v,
            other => {
                return Err(super::StoreError::Invalid(format!(
                    "audit event {seq} (a request's verification) does not read as one: {}",
                    other.err().map(|e| e.to_string()).unwrap_or_default()
                )));
            }
        };
        Ok(Some(VerifiedEvent {
            seq,
            hash,
            verified,
        }))
    }

    /// The last event's sequence number and hash, if any.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>> {
        self.row_opt(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Seals the links other processes appended without the key (marked late), in order, each
    /// checked against its content and its predecessor first; never a certifying link appended
    /// after the chain became keyed. Stops at the first link that does not hold (`audit verify`
    /// names it). Does nothing without the key.
    pub fn seal_late(&mut self) -> Result<LateSeals> {
        if !self.holds_chain_key() {
            return Ok(LateSeals::default());
        }
        self.write(|tx| {
            let key = tx.chain_key().expect("checked above");
            let rows: Vec<Unsealed> = tx.rows(
                "SELECT a.seq, a.at, a.kind, a.request_id, a.data, a.prev_hash, a.hash,
                        (SELECT p.hash FROM audit_log p WHERE p.seq = a.seq - 1)
                 FROM audit_log a LEFT JOIN audit_seals s ON s.seq = a.seq
                 WHERE s.seq IS NULL ORDER BY a.seq",
                args![],
                |r| {
                    Ok(Unsealed {
                        seq: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        request_id: r.get(3)?,
                        data: r.get(4)?,
                        prev_hash: r.get(5)?,
                        hash: r.get(6)?,
                        before: r.get(7)?,
                    })
                },
            )?;
            let mut out = LateSeals::default();
            for u in rows {
                let prev_ok = match &u.before {
                    Some(h) => *h == u.prev_hash,
                    None => u.seq == 1 && u.prev_hash == GENESIS,
                };
                let content_ok =
                    link_hash(&u.prev_hash, u.seq, u.at, &u.kind, u.request_id, &u.data) == u.hash;
                if !prev_ok || !content_ok {
                    tracing::error!(
                        seq = u.seq,
                        "audit link does not hold; not sealing it or anything after it: run `forgetd audit verify`"
                    );
                    break;
                }
                // Whatever the schema says about where keying began (a row anyone who can write
                // the file can change): a certifying link is sealed only as it is written.
                if Event::certifying(&u.kind) {
                    tracing::error!(
                        seq = u.seq,
                        kind = u.kind,
                        "an unsealed certifying audit link: only a process with the chain key writes these, and seals them as it writes, so it was forged (or written by a forgetd older than schema 6 that no later forgetd sealed); not sealed (`forgetd audit verify` reports it)"
                    );
                    out.refused.push(u.seq);
                    continue;
                }
                tx.exec(
                    "INSERT INTO audit_seals (seq, seal, late) VALUES (?1, ?2, 1)",
                    args![u.seq, key.seal(u.seq, &u.hash, true)],
                )?;
                out.sealed += 1;
            }
            Ok(out)
        })
    }

    /// Appends one event in its own transaction (for events that record no other change: the
    /// configuration the daemon loaded).
    pub fn audit(&mut self, at: i64, request_id: Option<i64>, event: &Event) -> Result<String> {
        self.write(|tx| append(tx, at, request_id, event))
    }
}

/// The first link whose seal was made as it was written and verifies under `key`.
fn first_write_time_seal(store: &Store, key: &crate::audit::ChainKey) -> Result<Option<i64>> {
    let mut first = None;
    store.scan(
        "SELECT a.seq, a.hash, s.seal FROM audit_seals s JOIN audit_log a ON a.seq = s.seq
         WHERE s.late = 0 ORDER BY s.seq",
        args![],
        |r| {
            let (seq, hash, seal): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if key.check(seq, &hash, false, &seal) {
                first = Some(seq);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(first)
}

struct Unsealed {
    seq: i64,
    at: i64,
    kind: String,
    request_id: Option<i64>,
    data: String,
    prev_hash: String,
    hash: String,
    /// The previous link's hash.
    before: Option<String>,
}

/// Walks the chain from the start.
fn verify(store: &Store) -> Result<Verification> {
    let key = store.chain_key.as_deref();
    // Where keying began is read from the seals, which only the key makes: the first link with a
    // valid seal made as it was written. Before it, links written by a forgetd older than schema 6
    // may carry late seals (that forgetd's first keyed start made them); from it on, every
    // certifying link needs its write-time seal. Nothing a keyless writer can reach (a row, a
    // trigger) moves that point: deleting seals only turns sealed links into unsealed ones.
    let keyed_from = match key {
        Some(key) => first_write_time_seal(store, key)?,
        None => None,
    };
    let mut seals = key.map(|_| SealCheck::default());
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1i64;
    let mut events = 0u64;
    let sql =
        "SELECT a.seq, a.at, a.kind, a.request_id, a.data, a.prev_hash, a.hash, s.seal, s.late
         FROM audit_log a LEFT JOIN audit_seals s ON s.seq = a.seq ORDER BY a.seq";
    let broke = store.scan(sql, args![], |r| {
        let seq: i64 = r.get(0)?;
        let at: i64 = r.get(1)?;
        let kind: String = r.get(2)?;
        let request_id: Option<i64> = r.get(3)?;
        let data: String = r.get(4)?;
        let prev: String = r.get(5)?;
        let hash: String = r.get(6)?;
        let seal: Option<String> = r.get(7)?;
        let late: Option<bool> = r.get(8)?;
        let broken = |reason: String| Verification {
            events,
            head: expected_prev.clone(),
            broken: Some(BrokenLink { seq, reason }),
            seals: None,
        };
        if seq != expected_seq {
            return Ok(ControlFlow::Break(broken(format!(
                "event {expected_seq} is missing (next is {seq})"
            ))));
        }
        if prev != expected_prev {
            return Ok(ControlFlow::Break(broken(format!(
                "event {seq} does not link to event {}",
                seq - 1
            ))));
        }
        if link_hash(&prev, seq, at, &kind, request_id, &data) != hash {
            return Ok(ControlFlow::Break(broken(format!(
                "event {seq} ({kind}) was altered: its hash does not match its content"
            ))));
        }
        if let (Some(key), Some(check)) = (key, seals.as_mut()) {
            let certifying = Event::certifying(&kind);
            match (&seal, late) {
                (Some(mac), Some(late)) => {
                    if !key.check(seq, &hash, late, mac) {
                        return Ok(ControlFlow::Break(broken(format!(
                            "event {seq} ({kind}) has a seal that is not forgetd's: the link or its seal was forged"
                        ))));
                    }
                    if late && certifying && keyed_from.is_none_or(|k| seq >= k) {
                        return Ok(ControlFlow::Break(broken(format!(
                            "event {seq} ({kind}) is a certifying event sealed late; forgetd seals those only as it writes them"
                        ))));
                    }
                    check.sealed += 1;
                    check.late += u64::from(late);
                }
                _ if certifying => {
                    return Ok(ControlFlow::Break(broken(format!(
                        "event {seq} ({kind}) is a certifying event without a seal: written without forgetd's chain key, so forged (or written by a forgetd older than schema 6 and never sealed)"
                    ))));
                }
                _ => check.unsealed += 1,
            }
        }
        expected_prev = hash;
        expected_seq += 1;
        events += 1;
        Ok(ControlFlow::Continue(()))
    })?;
    if let Some(broken) = broke {
        return Ok(broken);
    }
    Ok(Verification {
        events,
        head: expected_prev,
        broken: None,
        seals,
    })
}

#[cfg(test)]
mod tests {
    use crate::audit::{ConfigChange, Event};
    use crate::store::testing::temp_store;

    /// Appends a link by hand, as an old forgetd (or a writer without the key) would: any kind,
    /// hash-chained, no seal.
    fn raw(conn: &rusqlite::Connection, at: i64, kind: &str, request_id: Option<i64>) -> i64 {
        let (seq, prev): (i64, String) = conn
            .query_row(
                "SELECT coalesce(max(seq), 0) + 1, coalesce((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), ?1) FROM audit_log",
                [crate::audit::GENESIS],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let hash = crate::audit::link_hash(&prev, seq, at, kind, request_id, "{}");
        conn.execute(
            "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?6)",
            rusqlite::params![seq, at, kind, request_id, prev, hash],
        )
        .unwrap();
        seq
    }

    fn loaded() -> Event {
        Event::ConfigLoaded(ConfigChange {
            source: None,
            rules_changed: vec![],
            rules_removed: vec![],
        })
    }

    /// A chain written by a forgetd before schema 6 (no seals): its ordinary links are sealed
    /// late at the daemon's first keyed start, its certifying links never are (nothing but the
    /// key may decide which certifying links to trust, and a late seal is the daemon's word on
    /// the database's), so `audit verify` with the key names the first as unsealed.
    #[test]
    fn an_unkeyed_chain_from_before_schema_6_gets_late_seals_but_never_on_certifying_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forgetd.db");
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            rusqlite_migration::Migrations::new(super::super::MIGRATIONS[..5].to_vec())
                .to_latest(&mut conn)
                .unwrap();
            for (i, kind) in ["config.loaded", "batch.answered", "request.completed"]
                .iter()
                .enumerate()
            {
                raw(&conn, 100 + i as i64, kind, Some(1));
            }
        }
        let mut s = crate::store::Store::open(&path).unwrap();
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        let late = s.seal_late().unwrap();
        assert_eq!((late.sealed, late.refused), (1, vec![2, 3]));
        s.audit(200, None, &loaded()).unwrap();
        let v = s.verify_audit().unwrap();
        let broken = v.broken.expect("unsealed certifying links do not verify");
        assert_eq!(broken.seq, 2);
        assert!(broken.reason.contains("without a seal"), "{broken:?}");
    }

    /// Links before the first write-time seal that an earlier forgetd sealed late (its upgrade of
    /// a pre-schema-6 chain) keep verifying, certifying ones included; a late seal on a
    /// certifying link after it does not, wherever `audit_keying` says keying began.
    #[test]
    fn late_seals_on_certifying_links_count_only_before_the_first_write_time_seal() {
        let (d, mut s) = temp_store();
        let key = crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key();
        // An old forgetd's upgrade: two unsealed links, then sealed late by it.
        for (at, kind) in [(100, "config.loaded"), (101, "request.completed")] {
            raw(s.connection(), at, kind, Some(1));
        }
        let late_seal = |s: &crate::store::Store, seq: i64| {
            let hash: String = s
                .connection()
                .query_row("SELECT hash FROM audit_log WHERE seq = ?1", [seq], |r| {
                    r.get(0)
                })
                .unwrap();
            s.connection()
                .execute(
                    "INSERT INTO audit_seals (seq, seal, late) VALUES (?1, ?2, 1)",
                    rusqlite::params![seq, key.seal(seq, &hash, true)],
                )
                .unwrap();
        };
        late_seal(&s, 1);
        late_seal(&s, 2);
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        s.audit(200, None, &loaded()).unwrap();
        let v = s.verify_audit().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(v.seals.as_ref().map(|c| (c.sealed, c.late)), Some((3, 2)));
        // Raising the keying row (its trigger dropped) changes nothing.
        s.connection()
            .execute_batch(
                "DROP TRIGGER audit_keying_is_fixed_no_update;
                 UPDATE audit_keying SET keyed_from_seq = 1000;",
            )
            .unwrap();
        // A certifying link late-sealed after keying began (as the key holder once did for a
        // keyless writer's forgery) breaks the chain.
        let keyless = crate::store::Store::open(&d.path().join("forgetd.db")).unwrap();
        raw(keyless.connection(), 201, "request.verified", Some(1));
        late_seal(&s, 4);
        let v = s.verify_audit().unwrap();
        assert_eq!(v.broken.as_ref().map(|b| b.seq), Some(4), "{v:?}");
    }

    #[test]
    fn the_head_is_the_last_link_appended() {
        let (_d, mut s) = temp_store();
        assert_eq!(s.audit_head().unwrap(), None, "an empty trail has no head");
        s.audit(100, None, &loaded()).unwrap();
        let second = s.audit(101, Some(7), &loaded()).unwrap();
        assert_eq!(s.audit_head().unwrap(), Some((2, second)));
    }

    /// A first link whose `prev_hash` is not the genesis value was not made by forgetd, even if
    /// its own hash is consistent with it: late sealing stops there and seals nothing.
    #[test]
    fn a_forged_first_link_is_never_sealed_late() {
        let (_d, mut s) = temp_store();
        let wrong_prev = "f".repeat(64);
        let data = "{}";
        let hash = crate::audit::link_hash(&wrong_prev, 1, 100, "config.loaded", None, data);
        s.connection()
            .execute(
                "INSERT INTO audit_log (seq, at, kind, request_id, data, prev_hash, hash)
                 VALUES (1, 100, 'config.loaded', NULL, ?1, ?2, ?3)",
                rusqlite::params![data, wrong_prev, hash],
            )
            .unwrap();
        s.set_chain_key(crate::audit::SubjectKey::from_bytes(&[3; 32]).chain_key());
        let late = s.seal_late().unwrap();
        assert_eq!((late.sealed, late.refused.len()), (0, 0), "{late:?}");
        let seals: i64 = s
            .connection()
            .query_row("SELECT count(*) FROM audit_seals", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seals, 0);
    }

    #[test]
    fn verify_passes_untouched_and_names_the_altered_link() {
        let (_d, mut s) = temp_store();
        for i in 0..5 {
            s.audit(100 + i, Some(i), &loaded()).unwrap();
        }
        let v = s.verify_audit().unwrap();
        assert_eq!(v.events, 5);
        assert!(v.broken.is_none());
        // UPDATE and DELETE are refused ...
        assert!(
            s.connection()
                .execute("UPDATE audit_log SET data = '{}' WHERE seq = 3", [])
                .is_err()
        );
        assert!(
            s.connection()
                .execute("DELETE FROM audit_log WHERE seq = 3", [])
                .is_err()
        );
        // ... so a tamperer drops the trigger first; verify still finds it.
        s.connection()
            .execute_batch("DROP TRIGGER audit_log_is_append_only_no_update; UPDATE audit_log SET data = '{\"n\":99}' WHERE seq = 3;")
            .unwrap();
        let v = s.verify_audit().unwrap();
        assert_eq!(v.broken.as_ref().map(|b| b.seq), Some(3), "{v:?}");
    }
}
