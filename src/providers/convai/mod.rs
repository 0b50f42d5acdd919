//! Convai character chat history (seed: ../shared/seeds/000_*, facts: ../shared/providers.md).
//!
//! Calls, all `POST` with a JSON body and the `CONVAI-API-KEY` header:
//! - delete: `/character/chatHistory/delete` `{"charID", "sessionIDs": [...]}` → 200
//!   `{"status": "SUCCESSFULLY DELETED"}` (or the Chinese page's `删除成功`). Only these confirm a
//!   deletion ([`parse_delete_answer`]): any other 200 is unclear, retried and never counted.
//! - list: `/character/chatHistory/list` `{"charID", "limit": "-1"}` → one unpaginated JSON array of
//!   `{"sessionID", "date": "DD-MM-YYYY", "time": "HH:MM:SS", ...}`, parsed as a stream (bounded
//!   memory however long). No zone is documented: the date and time are read as UTC.
//!
//! - details: `/character/chatHistory/details` `{"charID", "sessionID"}` → an array of turns.
//!   Read back only (verification): turns mean the chat is there; `[]`, 400 or 404 show nothing
//!   (what Convai answers for a deleted session is not documented, so neither proves absence).
//!
//! Reading back a deleted chat ([`Provider::read_back`]) lists its character once for all of the
//! batch (absence is proven only by a well-formed listing that omits the ID) and asks details of
//! each chat (a listing could hide a session whose turns are still readable).
//!
//! Status mapping (providers.md): 401 → pause (the key is refused; Convai has no token to
//! refresh); 403 or 404 on the delete path → pause, "delete API not enabled for this key" (never
//! "already deleted"); 429 → retry after its Retry-After, or without one [`Action::Throttled`]
//! (the gate learns the wait and the rate: Convai publishes no limit); 400/422 → the batch's content
//! was refused, split it; 5xx and 408 → retry; anything else → pause with the status named.
//! Unknown IDs and partial deletes are undocumented: a documented success confirms the whole
//! batch, and a repeated delete of a gone session is success.
//!
//! Every call passes the provider's [`Gate`]: a delete under the executor's [`Pass`], a listing
//! or lookup under its own.

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::{StatusCode, Url};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{SeqAccess, Visitor};

use super::gate::{Gate, Pass};
use super::http::{self, DETAIL_LEN, MAX_BODY, truncate};
use super::registry::Registration;
use super::{
    Action, BuildError, ChatSink, DeleteBatch, DeleteOutcome, ListedChat, Operation, Presence,
    Provider, ProviderError, probe,
};
use crate::model::ProviderKind;

mod config;
pub use config::{ConvaiConfig, DEFAULT_BASE_URL};

impl ProviderKind {
    /// Convai character chat history.
    pub const CONVAI: ProviderKind = ProviderKind::named("convai");
}
const KIND: ProviderKind = ProviderKind::CONVAI;

/// Convai's line in the registry.
pub static REGISTRATION: Registration = Registration {
    kind: KIND,
    settings: config::parse,
    // A character ID is opaque text; rules and holds check its length.
    check_scope: |_| Ok(()),
};

pub struct ConvaiClient {
    http: reqwest::Client,
    /// Every call passes it; its clock reads "now" for Retry-After dates.
    gate: Arc<Gate>,
    base: Url,
    api_key: SecretString,
    /// Knows the API key: every answer is cleaned of it before it is read.
    redact: crate::redact::Redactor,
    batch_size: usize,
}

impl std::fmt::Debug for ConvaiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvaiClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// `{"ERROR": "...", "Reference ID": "..."}`
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "ERROR")]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListedSession {
    #[serde(rename = "sessionID")]
    session_id: Option<String>,
    date: Option<String>,
    time: Option<String>,
}

impl ConvaiClient {
    /// A client whose every call passes `gate` (built from the provider's limits).
    pub fn new(config: &ConvaiConfig, gate: Arc<Gate>) -> Result<Self, BuildError> {
        let limits = gate.limits().clone();
        let api_key = config.api_key.read()?;
        Ok(Self {
            redact: crate::redact::Redactor::knowing([&api_key]),
            http: http::client(limits.timeout).map_err(|source| BuildError::Http {
                provider: KIND,
                source,
            })?,
            gate,
            base: config.base_url.clone(),
            api_key,
            batch_size: limits.batch_size,
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        let joined = format!("{}{}", u.path().trim_end_matches('/'), path);
        u.set_path(&joined);
        u
    }

    /// One POST under `pass`: a 200 comes back as the response (its body unread), anything else
    /// as the classified error, which the gate sees.
    async fn post(
        &self,
        pass: &mut Pass,
        operation: Operation,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(v) = http::secret_header(&self.api_key) {
            req = req.header("CONVAI-API-KEY", v);
        }
        pass.call(operation, async {
            let resp = req
                .send()
                .await
                .map_err(|e| http::transport(KIND, operation, e))?;
            let status = resp.status();
            if status == StatusCode::OK {
                return Ok(resp);
            }
            let headers = resp.headers().clone();
            let body = http::read_body(KIND, operation, resp, MAX_BODY, &self.redact).await?;
            Err(Self::classify(
                self.gate.clock().now_ms(),
                operation,
                status,
                &headers,
                &body,
            ))
        })
        .await
    }

    /// Maps a non-200 answer to what to do next, by status code only.
    fn classify(
        now_ms: i64,
        operation: Operation,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|b| b.error)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let message = truncate(&message, DETAIL_LEN);
        let code = status.as_u16();
        let action = match code {
            // A one-chat read of a gone chat may well answer this: no chat, not a pause.
            400 | 404 | 422 if operation == Operation::Read => Action::Rejected,
            401 => Action::Pause(format!(
                "Convai refused the API key (HTTP 401: {message}); put a valid key where providers.convai.api_key points"
            )),
            403 | 404 if operation == Operation::Delete => Action::Pause(format!(
                "Convai's chat-history delete API is not enabled for this key (HTTP {code}: {message}); ask Convai to enable it"
            )),
            403 => Action::Pause(format!(
                "Convai denied permission (HTTP 403: {message}); ask Convai to grant this key the chat-history API"
            )),
            404 => Action::Pause(format!(
                "Convai's chat-history API answered 404 ({message}): check providers.convai.base_url; if it is right, the API is not enabled for this key"
            )),
            // A plan quota, not a rate: retrying soon spends the quota's reset day in a loop.
            // (A quota answer that names its wait is taken at its word, like any Retry-After;
            // one longer than `retry.max_retry_after` pauses anyway.)
            429 if is_plan_quota(&message) && http::retry_after(headers, now_ms).is_none() => {
                Action::Pause(format!(
                    "Convai's plan quota is used up (HTTP 429: {message}); no retry helps before the plan's quota resets or the plan is raised: forgetd probes rarely and resumes on the first success"
                ))
            }
            429 => http::retry_after(headers, now_ms)
                .map(Action::RetryAfter)
                .unwrap_or(Action::Throttled),
            400 | 422 => Action::Rejected,
            408 | 500..=599 => match http::retry_after(headers, now_ms) {
                Some(d) => Action::RetryAfter(d),
                None => Action::Retry,
            },
            _ => Action::Pause(format!(
                "Convai answered HTTP {code} ({message}); check providers.convai.base_url"
            )),
        };
        ProviderError::new(KIND, operation, action, format!("HTTP {code}: {message}"))
            .with_status(code)
    }

    /// Streams the list of a character's sessions into `sink`; `limit` as Convai takes it (a
    /// string; "-1" is all).
    async fn list(
        &self,
        scope: &str,
        limit: &str,
        sink: ChatSink<'_>,
    ) -> Result<(), ProviderError> {
        let pass = self.gate.enter(Operation::List).await?;
        self.list_under(pass, scope, limit, sink).await
    }

    /// [`Self::list`] under a pass already taken (a background one when reading back).
    async fn list_under(
        &self,
        mut pass: Pass,
        scope: &str,
        limit: &str,
        sink: ChatSink<'_>,
    ) -> Result<(), ProviderError> {
        let op = Operation::List;
        let resp = self
            .post(
                &mut pass,
                op,
                "/character/chatHistory/list",
                &serde_json::json!({"charID": scope, "limit": limit}),
            )
            .await?;
        // The pass (a concurrency slot) is held while the answer streams in.
        // Parse on a blocking thread from a synchronous view of the body stream; hand sessions
        // back through a small bounded channel, so memory stays flat however long the array.
        use futures_util::TryStreamExt;
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ListedChat>(256);
        let scope_owned = scope.to_string();
        let parser = tokio::task::spawn_blocking(move || {
            parse_list(reader, &scope_owned, |c| tx.blocking_send(c).is_ok())
        });
        while let Some(chat) = rx.recv().await {
            sink(chat);
        }
        let parsed = parser.await;
        drop(pass);
        match parsed {
            Ok(Ok(())) => Ok(()),
            // The streamed answer never passed `read_body`: its parse error (which may quote the
            // answer) is cleaned here.
            Ok(Err(e)) => Err(http::unparseable(
                KIND,
                op,
                200,
                &[],
                self.redact.clean_str(&e.to_string()),
            )),
            Err(join) => Err(
                ProviderError::new(KIND, op, Action::Retry, "list parser failed").with_source(join),
            ),
        }
    }
}

impl ConvaiClient {
    /// One session's turns (`/character/chatHistory/details`), under a background pass.
    async fn details(
        &self,
        scope: &str,
        session_id: &str,
        share: f64,
    ) -> Result<super::Sighting, ProviderError> {
        let op = Operation::Read;
        let mut pass = self.gate.enter_background(op, share).await?;
        let body = serde_json::json!({"charID": scope, "sessionID": session_id});
        match self
            .post(&mut pass, op, "/character/chatHistory/details", &body)
            .await
        {
            Ok(resp) => {
                let body = http::read_body(KIND, op, resp, MAX_BODY, &self.redact).await?;
                parse_details(&body).map_err(|why| http::unparseable(KIND, op, 200, &body, why))
            }
            Err(e) if e.action == Action::Rejected => Ok(super::Sighting::Nothing),
            Err(e) => Err(e),
        }
    }
}

/// Reads a details answer: an array with any turn means the session is there; `[]` shows
/// nothing; anything else is unclear.
pub fn parse_details(body: &[u8]) -> Result<super::Sighting, String> {
    match serde_json::from_slice::<serde_json::Value>(body).map_err(|e| e.to_string())? {
        serde_json::Value::Array(turns) if turns.is_empty() => Ok(super::Sighting::Nothing),
        serde_json::Value::Array(_) => Ok(super::Sighting::Seen),
        _ => Err("a details answer that is not an array".into()),
    }
}

/// Parses Convai's list array from `reader`, calling `each` per session (stops if it returns false).
pub fn parse_list(
    reader: impl std::io::Read,
    scope: &str,
    mut each: impl FnMut(ListedChat) -> bool,
) -> Result<(), serde_json::Error> {
    struct Each<'a, F> {
        scope: &'a str,
        each: &'a mut F,
    }
    impl<'de, F: FnMut(ListedChat) -> bool> Visitor<'de> for Each<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of sessions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(s) = seq.next_element::<ListedSession>()? {
                let Some(id) = s.session_id.filter(|i| !i.is_empty() && i != "-1") else {
                    continue;
                };
                let created_at = match (s.date.as_deref(), s.time.as_deref()) {
                    (Some(d), Some(t)) => parse_date_time(d, t),
                    (Some(d), None) => parse_date_time(d, "00:00:00"),
                    _ => None,
                };
                let chat = ListedChat {
                    scope: self.scope.to_string(),
                    session_id: id,
                    created_at,
                    repo_id: None,
                };
                if !(self.each)(chat) {
                    break;
                }
            }
            // Drain what remains so a stopped consumer does not make the parse fail.
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    serde::Deserializer::deserialize_seq(
        &mut de,
        Each {
            scope,
            each: &mut each,
        },
    )?;
    de.end()
}

/// The `status` texts Convai documents for a successful delete: the English page's and the
/// Chinese seed's. Compared trimmed and case-insensitively; nothing else confirms a deletion.
pub const SUCCESS_STATUSES: &[&str] = &["SUCCESSFULLY DELETED", "删除成功"];

/// Reads a delete call's 200 answer. Only the documented success form confirms the batch: an
/// object whose `status` is one of [`SUCCESS_STATUSES`] and that carries no error key. Anything
/// else (an `ERROR`/`error`/`Error` key, an unknown or failed status, `{}`, a non-object) is
/// unclear: the caller retries it with the body kept and never counts it as deleted.
pub fn parse_delete_answer(body: &[u8]) -> Result<DeleteOutcome, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    if let Some(key) = map.keys().find(|k| k.eq_ignore_ascii_case("error")) {
        return Err(format!("an error key ({key}) in a 200 answer"));
    }
    match map.get("status") {
        Some(serde_json::Value::String(status)) => {
            let status = status.trim();
            if SUCCESS_STATUSES
                .iter()
                .any(|ok| ok.eq_ignore_ascii_case(status))
            {
                Ok(DeleteOutcome::AllDeleted)
            } else {
                Err(format!(
                    "status {status:?} is not a documented success ({})",
                    SUCCESS_STATUSES.join(" / ")
                ))
            }
        }
        Some(_) => Err("status is not a string".into()),
        None => Err("no status in a 200 answer".into()),
    }
}

/// "25-09-2024" + "20:52:57", read as UTC (no zone is documented).
pub fn parse_date_time(date: &str, time: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%d-%m-%Y %H:%M:%S")
        .ok()?;
    Some(t.and_utc().timestamp())
}

#[async_trait]
impl Provider for ConvaiClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn check_id(&self, session_id: &str) -> Result<(), String> {
        let chars = session_id.chars().count();
        if chars == 0 || chars > 64 {
            return Err("a Convai session ID is 1 to 64 characters".into());
        }
        if session_id == "-1" {
            return Err("\"-1\" means \"new session\" at Convai, never a real session".into());
        }
        Ok(())
    }

    fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    async fn delete(
        &self,
        pass: &mut Pass,
        batch: &DeleteBatch,
    ) -> Result<DeleteOutcome, ProviderError> {
        let op = Operation::Delete;
        let body = serde_json::json!({"charID": batch.scope, "sessionIDs": batch.ids});
        let resp = self
            .post(pass, op, "/character/chatHistory/delete", &body)
            .await?;
        let body = http::read_body(KIND, op, resp, MAX_BODY, &self.redact).await?;
        parse_delete_answer(&body).map_err(|why| http::unparseable(KIND, op, 200, &body, why))
    }

    async fn list_scope(&self, scope: &str, sink: ChatSink<'_>) -> Result<(), ProviderError> {
        self.list(scope, "-1", sink).await
    }

    async fn list_subject(
        &self,
        _scope: &str,
        _subject: &str,
        _sink: ChatSink<'_>,
    ) -> Result<bool, ProviderError> {
        Ok(false) // Convai's list has no owner field: chats are found by subject only via the inventory.
    }

    fn subject_scopes(&self) -> Vec<String> {
        Vec::new()
    }

    async fn lookup(
        &self,
        scope: &str,
        _repo_id: Option<&str>,
        session_id: &str,
    ) -> Result<Presence, ProviderError> {
        let mut finder = super::Finder::new(session_id);
        self.list(scope, "-1", &mut |c: ListedChat| finder.see(&c))
            .await?;
        Ok(finder.presence())
    }

    async fn read_back(
        &self,
        scope: &str,
        chats: &[super::ReadBackChat],
        share: f64,
    ) -> Vec<Result<Presence, ProviderError>> {
        let listed = async {
            let pass = self.gate.enter_background(Operation::List, share).await?;
            let wanted: std::collections::HashSet<&str> =
                chats.iter().map(|c| c.session_id.as_str()).collect();
            let mut seen = std::collections::HashSet::new();
            self.list_under(pass, scope, "-1", &mut |c: ListedChat| {
                if wanted.contains(c.session_id.as_str()) {
                    seen.insert(c.session_id);
                }
            })
            .await?;
            Ok::<_, ProviderError>(seen)
        }
        .await;
        let mut out = Vec::with_capacity(chats.len());
        for c in chats {
            let from_list = match &listed {
                Ok(seen) if seen.contains(&c.session_id) => Ok(super::Sighting::Seen),
                Ok(_) => Ok(super::Sighting::Omitted),
                Err(e) => Err(e.repeated()),
            };
            // Seen in the listing decides it; otherwise the turns may still be readable.
            // A failed listing leaves it undecided: no details call spent on it.
            let from_details = match &from_list {
                Ok(super::Sighting::Seen) => Ok(super::Sighting::Seen),
                Err(e) => Err(e.repeated()),
                Ok(_) => self.details(scope, &c.session_id, share).await,
            };
            out.push(super::read_verdict(KIND, [from_list, from_details]));
        }
        out
    }

    /// One listing of one session, for a character the inventory or a rule names: it proves the
    /// key and the address. The delete API's enablement shows only on a delete, which doctor
    /// never makes: a note says so.
    async fn doctor(&self, known: &[String]) -> probe::Checkup {
        let address = self.base.to_string();
        let mut checks = Vec::new();
        match known.first() {
            None => checks.push(probe::Check::not_tested(
                "list one session of a character (POST /character/chatHistory/list)",
                "no Convai character is known yet (no chat in the inventory, no rule with a character scope); run doctor again once there is one",
            )),
            Some(character) => {
                let tried = format!(
                    "list one session of character {character} (POST /character/chatHistory/list, limit 1)"
                );
                let r = self.list(character, "1", &mut |_| {}).await;
                checks.push(probe::Check::of(tried, &r, &address));
            }
        }
        probe::Checkup {
            provider: KIND,
            address,
            checks,
            notes: vec![
                "whether the delete API is enabled for this key shows only on a delete (403/404 there pauses Convai, visibly), which doctor does not make".into(),
            ],
        }
    }
}

/// Whether a 429's message is Convai's plan quota ("API usage limit exceeded for current plan.")
/// rather than its rate limit ("API rate limit exceeded. Please try again later."): by the words
/// that tell them apart, in any case.
fn is_plan_quota(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("usage limit") || m.contains("current plan")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Convai's two 429s: the rate limit slows down and retries; the plan quota pauses.
    #[test]
    fn a_plan_quota_pauses_and_a_rate_limit_throttles() {
        let classify = |body: &[u8]| {
            ConvaiClient::classify(
                0,
                Operation::Delete,
                StatusCode::TOO_MANY_REQUESTS,
                &reqwest::header::HeaderMap::new(),
                body,
            )
            .action
        };
        assert_eq!(
            classify(br#"{"ERROR": "API rate limit exceeded. Please try again later."}"#),
            Action::Throttled
        );
        match classify(br#"{"ERROR": "API usage limit exceeded for current plan."}"#) {
            Action::Pause(why) => assert!(
                why.contains("plan quota is used up") && why.contains("probes rarely"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        // One that names its wait is taken at its word, as every Retry-After is.
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "120".parse().unwrap());
        let named = ConvaiClient::classify(
            0,
            Operation::Delete,
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            br#"{"ERROR": "API usage limit exceeded for current plan."}"#,
        );
        assert_eq!(
            named.action,
            Action::RetryAfter(std::time::Duration::from_secs(120))
        );
    }

    /// Every refusal says what to do next, and which one it is depends on the call: a delete
    /// refused is the delete API not enabled, a listing refused is a missing permission, a gone
    /// chat's read is no chat at all.
    #[test]
    fn each_refusal_is_classified_by_status_and_call_and_names_its_fix() {
        use Operation::{Delete, List, Read};
        let classify = |op, status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            let body = br#"{"ERROR": "nope"}"#;
            ConvaiClient::classify(0, op, status, &reqwest::header::HeaderMap::new(), body)
        };
        let pause = |op, status, says: &str| {
            let e = classify(op, status);
            match &e.action {
                Action::Pause(why) => assert!(
                    why.contains(says) && why.contains("nope"),
                    "{op} {status}: {why}"
                ),
                other => panic!("{op} {status}: {other:?}"),
            }
            assert_eq!(e.status, Some(status));
        };
        for op in [Delete, List, Read] {
            pause(
                op,
                401,
                "put a valid key where providers.convai.api_key points",
            );
            pause(op, 418, "check providers.convai.base_url");
        }
        pause(Delete, 403, "delete API is not enabled for this key");
        pause(Delete, 404, "delete API is not enabled for this key");
        pause(
            List,
            403,
            "ask Convai to grant this key the chat-history API",
        );
        pause(
            Read,
            403,
            "ask Convai to grant this key the chat-history API",
        );
        pause(List, 404, "check providers.convai.base_url; if it is right");
        for status in [400, 404, 422] {
            assert_eq!(classify(Read, status).action, Action::Rejected, "{status}");
        }
        for op in [Delete, List] {
            assert_eq!(classify(op, 400).action, Action::Rejected);
            assert_eq!(classify(op, 422).action, Action::Rejected);
            assert_eq!(classify(op, 429).action, Action::Throttled);
            for status in [408, 500, 503, 599] {
                assert_eq!(classify(op, status).action, Action::Retry, "{status}");
            }
        }
    }

    #[test]
    fn list_parses_as_a_stream_and_reads_dates_as_utc() {
        let body = r#"[{"sessionID":"a1","date":"25-09-2024","time":"20:52:57","is_added_to_memory":true},
                      {"sessionID":"-1"},{"date":"01-01-2024"},{"sessionID":"b2","date":"31-12-2023","time":"00:00:00","extra":{"x":[1]}}]"#;
        let mut got = Vec::new();
        parse_list(body.as_bytes(), "char", |c| {
            got.push(c);
            true
        })
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].session_id, "a1");
        assert_eq!(got[0].created_at, Some(1727297577));
        assert_eq!(got[1].created_at, Some(1703980800));
    }

    #[test]
    fn only_the_documented_success_answer_confirms_a_delete() {
        for ok in [
            r#"{"status": "SUCCESSFULLY DELETED"}"#,
            r#"{"status": "successfully deleted "}"#,
            r#"{"status": "删除成功"}"#,
        ] {
            assert_eq!(
                parse_delete_answer(ok.as_bytes()),
                Ok(DeleteOutcome::AllDeleted),
                "{ok}"
            );
        }
        for unclear in [
            r#"{}"#,
            r#"{"error": "quota"}"#,
            r#"{"Error": "x"}"#,
            r#"{"ERROR": "x", "status": "SUCCESSFULLY DELETED"}"#,
            r#"{"status": "FAILED"}"#,
            r#"{"status": 200}"#,
            r#"{"message": "ok"}"#,
            r#"[]"#,
            r#""SUCCESSFULLY DELETED""#,
            "<html>",
        ] {
            assert!(
                parse_delete_answer(unclear.as_bytes()).is_err(),
                "{unclear} must not confirm a deletion"
            );
        }
    }

    #[test]
    fn an_error_object_is_not_a_list() {
        assert!(parse_list(r#"{"ERROR":"x"}"#.as_bytes(), "c", |_| true).is_err());
        assert!(parse_list(r#"[{"sessionID":"a"}"#.as_bytes(), "c", |_| true).is_err());
    }
}
