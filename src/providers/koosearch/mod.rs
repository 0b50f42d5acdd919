//! Huawei Cloud KooSearch "uni-search" chat history (seed: ../shared/seeds/002_*, facts:
//! ../shared/providers.md).
//!
//! Prefix `{endpoint}/v1/{project_id}/applications/{application_id}/uni-search`, header
//! `X-Auth-Token` (see [`iam`]). The scope of a chat is its application ID.
//! - batch delete: `DELETE .../chat-history/batch` `{"chat_ids": [...], "repo_ids": [...]}` → 200
//!   `{"total_count","deleted_count"}`, or camelCase as the doc's example shows: both are read. A
//!   batch carries chats of one knowledge base (or none), so `repo_ids` is that ID repeated per
//!   chat as in the doc's example, and never more than 100 entries.
//! - list: `GET .../chat-history?user_name=&repo_id=&chat_id=&page_num=&page_size=`, pages of
//!   `{"total","pages","current","records": [{"chat_id","knowledge_repo_id","create_date_time"
//!   (epoch ms, as a string),"is_del"}]}`. Records marked `is_del` are treated as absent.
//! - one chat: `GET .../chat-history/{chat_id}?repo_id=` → the question and answer. Read back only
//!   (verification): content means the chat is there; 400/404, `is_del` or an empty object show
//!   nothing (the answer for a deleted chat is not documented, so neither proves absence).
//!
//! Reading back a deleted chat ([`Provider::read_back`]) asks both: the listing filtered by its
//! `chat_id` (the proof of absence is a well-formed listing that omits it) and the one-chat GET.
//!
//! Errors: `{"error_code","error_msg"}`; codes are compared case-insensitively, messages never.
//! 429 / `APIG.0308` → retry after its Retry-After, or without one [`Action::Throttled`] (the
//! gate learns the wait and the rate; Huawei advises 2-5 s, its gateway counts per user across
//! APIs, so listings, lookups and the IAM token call pass the same gate); 401 → refresh the
//! token once and retry, then pause; 403 → pause (permission); 404 → pause (endpoint, project or
//! application wrong); 400 `KOS.00010001`/`KOS.00010002` → the batch's content was refused, split
//! it; 5xx and `KOS.00060002` (database failure) → retry.

pub mod iam;

use std::sync::Arc;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::gate::{Gate, Pass};
use super::http::{self, DETAIL_LEN, MAX_BODY, truncate};
use super::registry::Registration;
use super::{
    Action, BuildError, ChatSink, DeleteBatch, DeleteOutcome, ListedChat, Operation, Presence,
    Provider, ProviderError, probe,
};
use crate::model::ProviderKind;
use iam::TokenSource;

mod config;
pub use config::{IamConfig, KooSearchAuth, KooSearchConfig};

impl ProviderKind {
    /// Huawei Cloud KooSearch uni-search chat history.
    pub const KOOSEARCH: ProviderKind = ProviderKind::named("koosearch");
}
const KIND: ProviderKind = ProviderKind::KOOSEARCH;

/// KooSearch's line in the registry.
pub static REGISTRATION: Registration = Registration {
    kind: KIND,
    settings: config::parse,
    check_scope: |scope| {
        if is_id(scope) {
            Ok(())
        } else {
            Err(format!(
                "scope \"{scope}\" is not a KooSearch application ID (A-Z a-z 0-9 _ -)"
            ))
        }
    },
};

/// True for 1..64 characters of `[A-Za-z0-9_-]`: KooSearch's alphabet for chat, application,
/// knowledge-base and project IDs.
pub fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
/// Documented maximum of repo_ids; chat_ids has none documented, we send no more either.
pub const MAX_BATCH: usize = 100;
const PAGE_SIZE: u32 = 100;
/// The default page cap of a listing: the documented largest `page_num` (65,535 pages of 100 is
/// more than any application holds; a provider that keeps answering pages is a bug).
pub const MAX_PAGES: u32 = 65_535;

pub struct KooSearchClient {
    http: reqwest::Client,
    endpoint: Url,
    project_id: String,
    applications: Vec<String>,
    discover_by_user_name: bool,
    auth: TokenSource,
    /// Knows the fixed token, or the IAM password and every token issued: every answer is
    /// cleaned of them before it is read.
    redact: crate::redact::Redactor,
    batch_size: usize,
    /// How far one listing may walk.
    listing: ListingBounds,
    /// Every call passes it; its clock reads "now" for Retry-After dates.
    gate: Arc<Gate>,
}

impl std::fmt::Debug for KooSearchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KooSearchClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("project_id", &self.project_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error_code: Option<String>,
    error_msg: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    #[serde(alias = "totalCount")]
    total_count: Option<u64>,
    #[serde(alias = "deletedCount")]
    deleted_count: Option<u64>,
    #[serde(default)]
    error_code: Option<String>,
}

/// A listing page. `records` is required: a 200 without it (an error body, `{}`) is not a
/// listing and proves nothing about absence.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    pages: Option<u64>,
    records: Vec<Record>,
    #[serde(default)]
    error_code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Record {
    chat_id: Option<String>,
    knowledge_repo_id: Option<String>,
    create_date_time: Option<serde_json::Value>,
    is_del: Option<serde_json::Value>,
}

impl Record {
    fn deleted(&self) -> bool {
        match &self.is_del {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::Number(n)) => n.as_i64() != Some(0),
            Some(serde_json::Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
            }
            _ => false,
        }
    }
    fn created_at(&self) -> Option<i64> {
        let ms = match &self.create_date_time {
            Some(serde_json::Value::String(s)) => s.trim().parse::<i64>().ok()?,
            Some(serde_json::Value::Number(n)) => n.as_i64()?,
            _ => return None,
        };
        Some(ms.div_euclid(1000))
    }
}

impl KooSearchClient {
    /// A client whose every call (the IAM token's too) passes `gate`.
    pub fn new(config: &KooSearchConfig, gate: Arc<Gate>) -> Result<Self, BuildError> {
        let limits = gate.limits().clone();
        let http = http::client(limits.timeout).map_err(|source| BuildError::Http {
            provider: KIND,
            source,
        })?;
        let redact = crate::redact::Redactor::new();
        let auth = match &config.auth {
            KooSearchAuth::Token(t) => {
                let token = t.read()?;
                redact.learn(&token);
                TokenSource::Fixed(token)
            }
            KooSearchAuth::Iam(i) => {
                let password = i.password.read()?;
                redact.learn(&password);
                TokenSource::iam(
                    http.clone(),
                    i.clone(),
                    password,
                    gate.clone(),
                    redact.clone(),
                )
            }
        };
        Ok(Self {
            redact,
            http,
            endpoint: config.endpoint.clone(),
            project_id: config.project_id.clone(),
            applications: config.applications.clone(),
            discover_by_user_name: config.discover_by_user_name,
            auth,
            batch_size: limits.batch_size.min(MAX_BATCH),
            listing: config.listing,
            gate,
        })
    }

    fn url(&self, application: &str, tail: &str) -> Url {
        let mut u = self.endpoint.clone();
        let path = format!(
            "{}/v1/{}/applications/{}/uni-search{}",
            u.path().trim_end_matches('/'),
            self.project_id,
            application,
            tail
        );
        u.set_path(&path);
        u
    }

    /// One exchange under `pass`, with a token: the body of a 200, or the classified error (which
    /// the gate sees). On 401 it refreshes the token once and resends; a second 401 pauses.
    async fn send(
        &self,
        pass: &mut Pass,
        op: Operation,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut refreshed = false;
        loop {
            let token = self.auth.token(pass).await?;
            let mut req = build();
            if let Some(v) = http::secret_header(&token) {
                req = req.header("X-Auth-Token", v);
            }
            let answer = pass
                .call(op, async {
                    let resp = req.send().await.map_err(|e| http::transport(KIND, op, e))?;
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = http::read_body(KIND, op, resp, MAX_BODY, &self.redact).await?;
                    if status == StatusCode::OK {
                        return Ok(Some(body));
                    }
                    if status != StatusCode::UNAUTHORIZED {
                        return Err(Self::classify(
                            self.gate.clock().now_ms(),
                            op,
                            status,
                            &headers,
                            &body,
                        ));
                    }
                    let (code, msg) = error_parts(&body);
                    if !refreshed && self.auth.invalidate(&token).await {
                        tracing::info!(
                            provider = "koosearch",
                            code = code.as_deref().unwrap_or(""),
                            "token refused; refreshing once"
                        );
                        return Ok(None);
                    }
                    let why = if refreshed {
                        "KooSearch refused a freshly issued IAM token (HTTP 401); check the IAM user's permissions for KooSearch"
                    } else {
                        "KooSearch refused the configured token (HTTP 401); replace providers.koosearch.token or configure [providers.koosearch.iam]"
                    };
                    Err(ProviderError::new(
                        KIND,
                        op,
                        Action::Pause(why.to_string()),
                        format!("HTTP 401 {}: {msg}", code.as_deref().unwrap_or("")),
                    )
                    .with_status(401)
                    .with_code(code))
                })
                .await?;
            match answer {
                Some(body) => return Ok(body),
                None => refreshed = true,
            }
        }
    }

    fn classify(
        now_ms: i64,
        op: Operation,
        status: StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> ProviderError {
        let (code, msg) = error_parts(body);
        let upper = code
            .as_deref()
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        let n = status.as_u16();
        let action = if n == 429 || upper == "APIG.0308" {
            http::retry_after(headers, now_ms)
                .map(Action::RetryAfter)
                .unwrap_or(Action::Throttled)
        } else if upper == "KOS.00060002" || (500..=599).contains(&n) || n == 408 {
            http::retry_after(headers, now_ms)
                .map(Action::RetryAfter)
                .unwrap_or(Action::Retry)
        } else if op == Operation::Read && (n == 400 || n == 404) {
            // A one-chat read of a gone chat may well answer this: no chat, not a pause.
            Action::Rejected
        } else if n == 403 {
            Action::Pause(format!(
                "KooSearch denied permission (HTTP 403 {upper}); grant the IAM user access to KooSearch"
            ))
        } else if n == 404 {
            Action::Pause(format!(
                "KooSearch answered 404 ({upper}): check providers.koosearch.endpoint and project_id, and the application ID"
            ))
        } else if n == 400 || upper.starts_with("KOS.0001") {
            Action::Rejected
        } else {
            Action::Pause(format!(
                "KooSearch answered HTTP {n} ({upper}); check the configuration"
            ))
        };
        ProviderError::new(KIND, op, action, format!("HTTP {n} {upper}: {msg}"))
            .with_status(n)
            .with_code(code)
    }

    /// Walks every page of a listing query, calling `sink` per live record.
    async fn list_pages(
        &self,
        scope: &str,
        query: &[(&str, &str)],
        sink: ChatSink<'_>,
    ) -> Result<(), ProviderError> {
        // One concurrency slot for the whole walk; every page takes its own start time.
        let pass = self.gate.enter(Operation::List).await?;
        self.list_pages_under(pass, scope, query, sink).await
    }
}

impl KooSearchClient {
    /// [`Self::list_pages`] under a pass already taken (a background one when reading back).
    /// The walk ends when what was listed says so ([`Walk`]); a listing that repeats a page,
    /// reaches `listing_max_pages` or runs past `listing_timeout` fails as [`Action::Rejected`]
    /// (trying again would do the same), naming which.
    async fn list_pages_under(
        &self,
        mut pass: Pass,
        scope: &str,
        query: &[(&str, &str)],
        sink: ChatSink<'_>,
    ) -> Result<(), ProviderError> {
        let clock = self.gate.clock().clone();
        let started = clock.instant();
        let mut walk = Walk::new(PAGE_SIZE, self.listing.max_pages);
        loop {
            let page = walk.next_page();
            let elapsed = clock.instant().since(started);
            if page > 1 && elapsed > self.listing.timeout {
                return Err(unending(format!(
                    "the listing did not end within listing_timeout ({}) after {} pages and {} records; raise `listing_timeout` if the application really holds that many chats",
                    humantime::format_duration(self.listing.timeout),
                    page - 1,
                    walk.listed
                )));
            }
            let parsed = self
                .fetch_page(&mut pass, scope, query, page, PAGE_SIZE)
                .await?;
            let step = walk.after(&parsed);
            if !matches!(step, Step::Repeats) {
                for chat in parsed.chats {
                    sink(chat);
                }
            }
            match step {
                Step::Next => {}
                Step::End => {
                    if let Some(note) = walk.inconsistency() {
                        tracing::warn!(provider = %KIND, scope, "{note}; the listing was walked to its last record");
                    }
                    return Ok(());
                }
                Step::Repeats => {
                    return Err(unending(format!(
                        "page {page} of the listing repeats page {} (the provider ignores page_num); the listing cannot be walked to its end",
                        page - 1
                    )));
                }
                Step::Capped => {
                    return Err(unending(format!(
                        "the listing did not end within listing_max_pages ({}) pages of {PAGE_SIZE}",
                        self.listing.max_pages
                    )));
                }
            }
        }
    }
}

/// A listing that cannot be walked to its end: not worth trying again at once.
fn unending(why: String) -> ProviderError {
    ProviderError::new(KIND, Operation::List, Action::Rejected, why)
}

/// Bounds of one listing walk (`[providers.koosearch] listing_max_pages`, `listing_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingBounds {
    pub max_pages: u32,
    pub timeout: std::time::Duration,
}

impl Default for ListingBounds {
    fn default() -> Self {
        Self {
            max_pages: MAX_PAGES,
            timeout: std::time::Duration::from_secs(600),
        }
    }
}

/// What a listing walk does after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Fetch the next page.
    Next,
    /// The listing is complete.
    End,
    /// This page is the previous one again: walking on would never end.
    Repeats,
    /// Another page is needed but the page cap is reached.
    Capped,
}

/// The end of a listing, decided by what was listed: an empty page ends it (fetched twice when
/// `total` or `pages` said records remain, so one flaky answer does not cut the listing short),
/// and so does a short page when `total` or `pages` says nothing remains. A full page never ends
/// it, whatever `total` says: a `total` that is too low would otherwise leave chats unlisted; a
/// short page with no `total` at all is followed by one more page (a provider may page by less
/// than asked). A page equal to any earlier one means the provider ignores `page_num`.
/// Disagreements with `total` are kept, to be logged as the provider's.
#[derive(Debug)]
pub struct Walk {
    page: u32,
    size: u32,
    max_pages: u32,
    /// Records listed so far (deleted ones included).
    pub listed: u64,
    seen: std::collections::HashSet<u64>,
    /// The most records `total` (or `pages`) promised.
    promised: Option<u64>,
    short_seen: bool,
    /// The page just fetched came back empty once already.
    refetched: bool,
}

impl Walk {
    pub fn new(size: u32, max_pages: u32) -> Self {
        Self {
            page: 0,
            size,
            max_pages: max_pages.max(1),
            listed: 0,
            seen: std::collections::HashSet::new(),
            promised: None,
            short_seen: false,
            refetched: false,
        }
    }

    /// The page to fetch next (1-based).
    pub fn next_page(&mut self) -> u32 {
        self.page += 1;
        self.page
    }

    /// Takes the page just fetched; says what comes next.
    pub fn after(&mut self, p: &ListedPage) -> Step {
        if p.records == 0 {
            let more_promised = self.promised.is_some_and(|n| n > self.listed);
            if more_promised && !self.refetched {
                // Once more: a provider that promised more and answered nothing may have
                // stumbled; the same page again settles it.
                self.refetched = true;
                self.page -= 1;
                return Step::Next;
            }
            return Step::End;
        }
        self.refetched = false;
        if !self.seen.insert(p.fingerprint) {
            return Step::Repeats;
        }
        self.listed += p.records as u64;
        let by_pages = p.pages.map(|n| n.saturating_mul(self.size as u64));
        let promise = match (p.total, by_pages) {
            (Some(t), Some(b)) => Some(t.min(b)),
            (t, b) => t.or(b),
        };
        if let Some(n) = promise {
            self.promised = Some(self.promised.map_or(n, |m| m.max(n)));
        }
        let short = p.records < self.size as usize;
        if short {
            match self.promised {
                // The provider's count is met: this short page is the last.
                Some(n) if n <= self.listed => return Step::End,
                // Records promised, or no count at all: walk on; an empty page settles it.
                _ => self.short_seen = true,
            }
        }
        if self.page >= self.max_pages {
            return Step::Capped;
        }
        Step::Next
    }

    /// How the provider's own count disagreed with what was listed, if it did.
    pub fn inconsistency(&self) -> Option<String> {
        match self.promised {
            Some(n) if n < self.listed => Some(format!(
                "KooSearch's total said {n} records but the listing held {}",
                self.listed
            )),
            Some(n) if n > self.listed => Some(format!(
                "KooSearch's total said {n} records but the listing ended after {}",
                self.listed
            )),
            Some(_) if self.short_seen => {
                Some("KooSearch answered a short page mid-listing".into())
            }
            _ => None,
        }
    }
}

impl KooSearchClient {
    /// One page of a listing query, under `pass`.
    async fn fetch_page(
        &self,
        pass: &mut Pass,
        scope: &str,
        query: &[(&str, &str)],
        page: u32,
        size: u32,
    ) -> Result<ListedPage, ProviderError> {
        let op = Operation::List;
        let page_s = page.to_string();
        let size_s = size.to_string();
        let url = self.url(scope, "/chat-history");
        let body = self
            .send(pass, op, || {
                let mut q: Vec<(&str, &str)> = query.to_vec();
                q.push(("page_num", &page_s));
                q.push(("page_size", &size_s));
                self.http.get(url.clone()).query(&q)
            })
            .await?;
        parse_page(scope, &body).map_err(|e| http::unparseable(KIND, op, 200, &body, e))
    }
}

impl KooSearchClient {
    /// `GET .../chat-history/{chat_id}?repo_id=`, under a background pass.
    async fn one_chat(
        &self,
        scope: &str,
        chat: &super::ReadBackChat,
        share: f64,
    ) -> Result<super::Sighting, ProviderError> {
        let op = Operation::Read;
        let mut pass = self.gate.enter_background(op, share).await?;
        let url = self.url(scope, &format!("/chat-history/{}", chat.session_id));
        let answer = self
            .send(&mut pass, op, || {
                let req = self.http.get(url.clone());
                match &chat.repo_id {
                    Some(r) => req.query(&[("repo_id", r.as_str())]),
                    None => req,
                }
            })
            .await;
        match answer {
            Ok(body) => {
                parse_one_chat(&body).map_err(|why| http::unparseable(KIND, op, 200, &body, why))
            }
            Err(e) if e.action == Action::Rejected => Ok(super::Sighting::Nothing),
            Err(e) => Err(e),
        }
    }
}

impl KooSearchClient {
    /// One chat read back: the listing by its `chat_id`, then (unless that showed it) the
    /// one-chat GET.
    async fn read_one_back(
        &self,
        scope: &str,
        c: &super::ReadBackChat,
        share: f64,
    ) -> Result<Presence, ProviderError> {
        // Listed by chat_id alone (the chat is one per application): filtered by the inventory's
        // repo_id too, a chat filed under another knowledge base would look absent.
        let mut misfiled = None;
        let listed = async {
            let pass = self.gate.enter_background(Operation::List, share).await?;
            let q = [("chat_id", c.session_id.as_str())];
            let mut finder = super::Finder::new(&c.session_id);
            self.list_pages_under(pass, scope, &q, &mut |l: ListedChat| finder.see(&l))
                .await?;
            Ok::<_, ProviderError>(match finder.presence_for(c.repo_id.as_deref()) {
                Presence::Absent => super::Sighting::Omitted,
                m @ Presence::Misfiled { .. } => {
                    misfiled = Some(m);
                    super::Sighting::Seen
                }
                Presence::Present => super::Sighting::Seen,
            })
        }
        .await;
        if let Some(m) = misfiled {
            return Ok(m);
        }
        let one = match &listed {
            Ok(super::Sighting::Seen) => Ok(super::Sighting::Seen),
            Err(e) => Err(e.repeated()),
            Ok(_) => self.one_chat(scope, c, share).await,
        };
        super::read_verdict(KIND, [listed, one])
    }
}

/// Whether `code` has the shape of Huawei's error codes (`KOS.00010002`, `APIG.0308`,
/// `IAM.0001`): a service name, a dot, a short number. Only such a code is kept and shown: the
/// field is the provider's text, and an answer to a listing by `user_name` may quote the person.
fn is_error_code(code: &str) -> bool {
    let Some((service, number)) = code.split_once('.') else {
        return false;
    };
    (2..=16).contains(&service.len())
        && service.bytes().all(|b| b.is_ascii_alphabetic())
        && (1..=16).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn error_parts(body: &[u8]) -> (Option<String>, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => (
            e.error_code.filter(|c| is_error_code(c)),
            truncate(e.error_msg.as_deref().unwrap_or(""), DETAIL_LEN),
        ),
        Err(_) => (None, truncate(&String::from_utf8_lossy(body), DETAIL_LEN)),
    }
}

/// One page of a listing: its live chats, how many records it held (deleted ones too), how many
/// pages and records the provider says there are, and a fingerprint of its records' IDs in order
/// (a page that repeats the previous one has the same).
#[derive(Debug, Default)]
pub struct ListedPage {
    pub chats: Vec<ListedChat>,
    pub records: usize,
    pub pages: Option<u64>,
    pub total: Option<u64>,
    pub fingerprint: u64,
}

/// Reads one page of `GET .../chat-history`; records marked `is_del` or without a chat_id are
/// left out. A body without a `records` array, or with an `error_code`, is not a page.
pub fn parse_page(scope: &str, body: &[u8]) -> Result<ListedPage, String> {
    let page: Page = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(code) = &page.error_code {
        return Err(format!("error_code {code} in a 200 answer"));
    }
    let records = page.records.len();
    let fingerprint = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in &page.records {
            r.chat_id.hash(&mut h);
        }
        h.finish()
    };
    let chats = page
        .records
        .into_iter()
        .filter(|r| !r.deleted())
        .filter_map(|r| {
            Some(ListedChat {
                scope: scope.to_string(),
                created_at: r.created_at(),
                repo_id: r.knowledge_repo_id.clone().filter(|s| !s.is_empty()),
                session_id: r.chat_id?,
            })
        })
        .collect();
    Ok(ListedPage {
        chats,
        records,
        pages: page.pages,
        total: page.total,
        fingerprint,
    })
}

/// Reads a one-chat GET's 200 answer: an object with content (a question, an answer, its ID)
/// and no `is_del` mark means the chat is there; `{}`, `null` or a record marked deleted show
/// nothing; an `error_code` or a non-object is unclear.
pub fn parse_one_chat(body: &[u8]) -> Result<super::Sighting, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let map = match value {
        serde_json::Value::Null => return Ok(super::Sighting::Nothing),
        serde_json::Value::Object(m) => m,
        _ => return Err("a one-chat answer that is not an object".into()),
    };
    if let Some(code) = map.get("error_code").filter(|c| !c.is_null()) {
        return Err(format!("error_code {code} in a 200 answer"));
    }
    let record = Record {
        chat_id: None,
        knowledge_repo_id: None,
        create_date_time: None,
        is_del: map.get("is_del").cloned(),
    };
    if record.deleted() {
        return Ok(super::Sighting::Nothing);
    }
    let content = map.iter().any(|(k, v)| {
        k != "is_del"
            && match v {
                serde_json::Value::Null => false,
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty(),
                serde_json::Value::Object(o) => !o.is_empty(),
                _ => true,
            }
    });
    Ok(if content {
        super::Sighting::Seen
    } else {
        super::Sighting::Nothing
    })
}

/// Reads a batch delete's 200 answer; both casings are accepted.
/// Anything but the two counts (an `error_code`, `{}`, a non-object) is unclear, never a
/// confirmation.
pub fn parse_batch_answer(body: &[u8], sent: usize) -> Result<DeleteOutcome, String> {
    let a: BatchAnswer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(code) = &a.error_code {
        return Err(format!("error_code {code} in a 200 answer"));
    }
    let (Some(total), Some(deleted)) = (a.total_count, a.deleted_count) else {
        return Err("no total_count/deleted_count".into());
    };
    let total = total.max(sent as u64);
    if deleted >= total {
        Ok(DeleteOutcome::AllDeleted)
    } else {
        Ok(DeleteOutcome::Partial { total, deleted })
    }
}

#[async_trait]
impl Provider for KooSearchClient {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn max_batch(&self) -> usize {
        self.batch_size
    }

    fn check_id(&self, session_id: &str) -> Result<(), String> {
        if is_id(session_id) {
            Ok(())
        } else {
            Err("a KooSearch chat_id is 1 to 64 characters of A-Z a-z 0-9 _ -".into())
        }
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
        let mut body = serde_json::json!({"chat_ids": batch.ids});
        if let Some(repo) = &batch.repo_id {
            body["repo_ids"] = serde_json::json!(vec![repo; batch.ids.len().min(MAX_BATCH)]);
        }
        let url = self.url(&batch.scope, "/chat-history/batch");
        let answer = self
            .send(pass, op, || {
                self.http.request(Method::DELETE, url.clone()).json(&body)
            })
            .await?;
        parse_batch_answer(&answer, batch.ids.len())
            .map_err(|e| http::unparseable(KIND, op, 200, &answer, e))
    }

    async fn list_scope(&self, scope: &str, sink: ChatSink<'_>) -> Result<(), ProviderError> {
        self.list_pages(scope, &[], sink).await
    }

    async fn list_subject(
        &self,
        scope: &str,
        subject: &str,
        sink: ChatSink<'_>,
    ) -> Result<bool, ProviderError> {
        if !self.discover_by_user_name {
            return Ok(false);
        }
        // The answer to a call that names the person may quote the person back: only forgetd's
        // own words about it leave this function (a subject is personal data, never logged).
        self.list_pages(scope, &[("user_name", subject)], sink)
            .await
            .map_err(|e| match (&e.action, e.status) {
                // No answer read (a transport failure, whose URL is removed; a cap; a repeated
                // page; a paused gate): forgetd's own sentence, which names no one.
                (_, None) => e,
                (Action::Rejected, Some(_)) => e.without_provider_text(
                    "KooSearch refused the listing's parameters: most likely the user_name, which it cannot look up",
                ),
                _ => e.without_provider_text("the provider's message is not kept: it may quote the subject"),
            })?;
        Ok(true)
    }

    fn subject_scopes(&self) -> Vec<String> {
        if self.discover_by_user_name {
            self.applications.clone()
        } else {
            Vec::new()
        }
    }

    fn token_refreshes(&self) -> u64 {
        self.auth.refreshes()
    }

    fn listing_bound(&self) -> std::time::Duration {
        self.listing.timeout
    }

    async fn lookup(
        &self,
        scope: &str,
        repo_id: Option<&str>,
        session_id: &str,
    ) -> Result<Presence, ProviderError> {
        // By chat_id alone, as a read-back lists (see `read_one_back`).
        let q = [("chat_id", session_id)];
        let mut finder = super::Finder::new(session_id);
        self.list_pages(scope, &q, &mut |c: ListedChat| finder.see(&c))
            .await?;
        Ok(finder.presence_for(repo_id))
    }

    async fn read_back(
        &self,
        scope: &str,
        chats: &[super::ReadBackChat],
        share: f64,
    ) -> Vec<Result<Presence, ProviderError>> {
        // Chats are read as many at once as the gate allows (each call takes its pass).
        use futures_util::StreamExt;
        let reads: Vec<_> = chats
            .iter()
            .map(|c| self.read_one_back(scope, c, share))
            .collect();
        futures_util::stream::iter(reads)
            .buffered(self.gate.max_concurrency().max(1))
            .collect()
            .await
    }

    /// The IAM token (when IAM is configured), then one record of each configured application.
    /// Each application is its own question (a 404 for one says nothing of the next). A throttle,
    /// or an IAM token that could not be had, ends the checkup, since every later call would meet
    /// the same; a token the API refuses is asked about per application (permissions may differ).
    async fn doctor(&self, _known: &[String]) -> probe::Checkup {
        let address = self.endpoint.to_string();
        let mut checks = Vec::new();
        let mut notes = Vec::new();
        let mut stop: Option<String> = None;
        match self.auth.describe() {
            Some((tried, iam_address)) => {
                let r = match self.gate.enter(Operation::Token).await {
                    Ok(mut pass) => self.auth.token(&mut pass).await.map(drop),
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    stop = Some("not tried: the IAM token came first and failed".into());
                }
                checks.push(probe::Check::of(tried, &r, &iam_address));
            }
            None => notes.push(
                "a fixed token (providers.koosearch.token) is configured: the listings below prove it; it is never refreshed".into(),
            ),
        }
        for app in &self.applications {
            let tried = format!(
                "list one chat of application {app} (GET .../applications/{app}/uni-search/chat-history?page_size=1)"
            );
            if let Some(why) = &stop {
                checks.push(probe::Check::not_tested(tried, why.clone()));
                continue;
            }
            self.gate.lift_pause();
            let r = match self.gate.enter(Operation::List).await {
                Ok(mut pass) => self.fetch_page(&mut pass, app, &[], 1, 1).await.map(drop),
                Err(e) => Err(e),
            };
            let check = probe::Check::of(tried, &r, &address);
            if check.class == probe::AnswerClass::Throttled {
                stop = Some("not tried: KooSearch was throttling".into());
            }
            checks.push(check);
        }
        probe::Checkup {
            provider: KIND,
            address,
            checks,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ID outside KooSearch's rule is never sent: its alphabet is A-Z a-z 0-9 _ -, 1 to 64 long.
    #[test]
    fn a_chat_id_is_one_to_sixty_four_of_the_documented_characters() {
        let longest = "a".repeat(64);
        for ok in ["a", "Z", "7", "_", "-", "chat_01-AbZ", longest.as_str()] {
            assert!(is_id(ok), "{ok:?} is a KooSearch ID");
        }
        let too_long = "a".repeat(65);
        for bad in [
            "",
            too_long.as_str(),
            "a b",
            "a/b",
            "a.b",
            "a*",
            "../x",
            "ä",
            "a\n",
            "a,b",
        ] {
            assert!(!is_id(bad), "{bad:?} is not a KooSearch ID");
        }
    }

    /// KooSearch's answers by status, error code and call: the gateway's throttling code and
    /// KooSearch's "busy" code count whatever the status, codes are read in any case, a gone
    /// chat's read is no chat, and every pause names its fix.
    #[test]
    fn each_answer_is_classified_by_status_code_and_call_and_names_its_fix() {
        use Operation::{Delete, List, Read};
        let classify_with = |op, status: u16, code: &str, retry_after: Option<&str>| {
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(v) = retry_after {
                headers.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            }
            let body = format!(r#"{{"error_code": "{code}", "error_msg": "nope"}}"#);
            KooSearchClient::classify(
                0,
                op,
                StatusCode::from_u16(status).unwrap(),
                &headers,
                body.as_bytes(),
            )
        };
        let classify = |op, status, code| classify_with(op, status, code, None);
        let action = |op, status, code| classify(op, status, code).action;
        let pause = |op, status, code, says: &str| match action(op, status, code) {
            Action::Pause(why) => assert!(why.contains(says), "{op} {status} {code}: {why}"),
            other => panic!("{op} {status} {code}: {other:?}"),
        };
        for op in [Delete, List, Read] {
            assert_eq!(action(op, 429, ""), Action::Throttled, "{op}");
            assert_eq!(action(op, 400, "APIG.0308"), Action::Throttled, "{op}");
            assert_eq!(action(op, 403, "apig.0308"), Action::Throttled, "{op}");
            assert_eq!(action(op, 400, "KOS.00060002"), Action::Retry, "{op}");
            for status in [408, 500, 503, 599] {
                assert_eq!(action(op, status, ""), Action::Retry, "{op} {status}");
            }
            assert_eq!(
                classify_with(op, 429, "", Some("7")).action,
                Action::RetryAfter(std::time::Duration::from_secs(7))
            );
            assert_eq!(
                classify_with(op, 503, "", Some("3")).action,
                Action::RetryAfter(std::time::Duration::from_secs(3))
            );
            pause(
                op,
                403,
                "APIG.0302",
                "grant the IAM user access to KooSearch",
            );
            pause(op, 418, "X", "check the configuration");
            pause(op, 401, "APIG.0301", "check the configuration");
        }
        for op in [Delete, List] {
            pause(
                op,
                404,
                "APIG.0101",
                "check providers.koosearch.endpoint and project_id",
            );
            assert_eq!(action(op, 400, ""), Action::Rejected, "{op}");
            assert_eq!(action(op, 409, "KOS.00010003"), Action::Rejected, "{op}");
            assert_eq!(action(op, 409, "kos.00010003"), Action::Rejected, "{op}");
        }
        assert_eq!(action(Read, 400, ""), Action::Rejected);
        assert_eq!(action(Read, 404, "APIG.0101"), Action::Rejected);
        let e = classify(Delete, 404, "APIG.0101");
        assert_eq!(e.status, Some(404));
        assert_eq!(e.code.as_deref(), Some("APIG.0101"));
        assert!(e.summary.contains("nope"), "{}", e.summary);
    }

    #[test]
    fn batch_answer_reads_both_casings() {
        assert_eq!(
            parse_batch_answer(br#"{"total_count":2,"deleted_count":2}"#, 2),
            Ok(DeleteOutcome::AllDeleted)
        );
        assert_eq!(
            parse_batch_answer(br#"{"totalCount":2,"deletedCount":2}"#, 2),
            Ok(DeleteOutcome::AllDeleted)
        );
        assert_eq!(
            parse_batch_answer(br#"{"totalCount":3,"deletedCount":1}"#, 3),
            Ok(DeleteOutcome::Partial {
                total: 3,
                deleted: 1
            })
        );
        assert!(parse_batch_answer(br#"{"status":"ok"}"#, 1).is_err());
        assert!(parse_batch_answer(b"{}", 1).is_err());
        assert!(
            parse_batch_answer(
                br#"{"total_count":1,"deleted_count":1,"error_code":"KOS.00060002"}"#,
                1
            )
            .is_err()
        );
        assert!(parse_batch_answer(b"<html>", 1).is_err());
    }

    #[test]
    fn only_a_well_formed_listing_is_a_page() {
        assert!(parse_page("a", b"{}").is_err(), "no records: not a listing");
        assert!(parse_page("a", br#"{"error_code":"KOS.00010002","error_msg":"x"}"#).is_err());
        assert!(
            parse_page(
                "a",
                br#"{"error_code":"KOS.00060002","records":[],"total":0}"#
            )
            .is_err()
        );
        let p = parse_page("a", br#"{"total":0,"records":[]}"#).unwrap();
        assert!(p.chats.is_empty() && Walk::new(100, 9).after(&p) == Step::End);
    }

    fn page(records: usize, total: Option<u64>, pages: Option<u64>, first: usize) -> ListedPage {
        let body = serde_json::json!({
            "total": total, "pages": pages,
            "records": (first..first + records)
                .map(|i| serde_json::json!({"chat_id": format!("c{i}")}))
                .collect::<Vec<_>>(),
        });
        parse_page("a", body.to_string().as_bytes()).unwrap()
    }

    /// Walks pages of `size` until the walk ends, the n-th page made by `make(n)`.
    fn walk(size: u32, cap: u32, make: impl Fn(u32) -> ListedPage) -> (Step, u32, Walk) {
        let mut w = Walk::new(size, cap);
        loop {
            let n = w.next_page();
            let step = w.after(&make(n));
            if step != Step::Next {
                return (step, n, w);
            }
        }
    }

    #[test]
    fn a_listing_ends_on_an_empty_or_short_page_not_on_total() {
        // Honest: 250 records, total 250: ends on the short third page.
        let honest = |n: u32| {
            let left = 250usize.saturating_sub((n as usize - 1) * 100);
            page(left.min(100), Some(250), Some(3), (n as usize - 1) * 100)
        };
        let (step, at, w) = walk(100, 100, honest);
        assert_eq!((step, at, w.listed), (Step::End, 3, 250));
        assert!(w.inconsistency().is_none());
        // A total that is too low (100 of 250): full pages go on past it.
        let low = |n: u32| {
            let left = 250usize.saturating_sub((n as usize - 1) * 100);
            page(left.min(100), Some(100), Some(1), (n as usize - 1) * 100)
        };
        let (step, at, w) = walk(100, 100, low);
        assert_eq!((step, at, w.listed), (Step::End, 3, 250));
        assert!(w.inconsistency().unwrap().contains("said 100"));
        // Exactly full pages: an empty page ends it.
        let even = |n: u32| {
            let left = 200usize.saturating_sub((n as usize - 1) * 100);
            page(left.min(100), Some(200), None, (n as usize - 1) * 100)
        };
        assert_eq!(walk(100, 100, even).1, 3);
        // A short page while the total promises more: walk on until a page is empty.
        let stingy = |n: u32| {
            let left = 150usize.saturating_sub((n as usize - 1) * 60);
            page(left.min(60), Some(150), None, (n as usize - 1) * 60)
        };
        let (step, at, w) = walk(100, 100, stingy);
        assert_eq!((step, at, w.listed), (Step::End, 3, 150));
        // No total at all: a short page is followed by one more, which ends it when empty.
        let (step, at, w) = walk(100, 100, |n| {
            page(if n == 1 { 30 } else { 0 }, None, None, 0)
        });
        assert_eq!((step, at, w.listed), (Step::End, 2, 30));
        // A total that is too high: the short page still ends it once the next is empty.
        let high = |n: u32| {
            if n == 1 {
                page(40, Some(500), None, 0)
            } else {
                page(0, Some(500), None, 0)
            }
        };
        let (step, _, w) = walk(100, 100, high);
        assert_eq!(step, Step::End);
        assert!(w.inconsistency().unwrap().contains("said 500"));
    }

    #[test]
    fn only_a_code_shaped_error_code_is_kept() {
        for code in ["KOS.00010002", "APIG.0308", "IAM.0001", "kos.00060002"] {
            assert!(is_error_code(code), "{code}");
        }
        for code in [
            "alice@example.com",
            "alice",
            "KOS",
            "a.b c",
            "KOS.0001.2",
            "",
        ] {
            assert!(!is_error_code(code), "{code}");
        }
        let (code, _) = error_parts(br#"{"error_code":"alice@example.com","error_msg":"x"}"#);
        assert_eq!(code, None);
    }

    #[test]
    fn a_listing_that_repeats_or_never_ends_is_stopped() {
        // The same full page whatever page_num asks.
        let (step, at, _) = walk(100, 65_535, |_| page(100, Some(1_000_000), None, 0));
        assert_eq!((step, at), (Step::Repeats, 2));
        // Two pages in turn.
        let (step, at, _) = walk(100, 65_535, |n| {
            page(100, None, None, (n as usize % 2) * 100)
        });
        assert_eq!((step, at), (Step::Repeats, 3));
        // An empty page while the total promises more is asked once more before it ends.
        let mut w = Walk::new(100, 100);
        assert_eq!(w.next_page(), 1);
        assert_eq!(w.after(&page(100, Some(300), None, 0)), Step::Next);
        assert_eq!(w.next_page(), 2);
        assert_eq!(w.after(&page(0, Some(300), None, 0)), Step::Next);
        assert_eq!(w.next_page(), 2, "the same page again");
        assert_eq!(w.after(&page(100, Some(300), None, 100)), Step::Next);
        // Fresh full pages forever: the cap ends it.
        let (step, at, w) = walk(100, 50, |n| page(100, None, None, n as usize * 100));
        assert_eq!((step, at, w.listed), (Step::Capped, 50, 5_000));
        // A listing of exactly the cap's pages that then ends is not capped.
        let (step, _, _) = walk(100, 3, |n| {
            page(
                if n < 3 { 100 } else { 7 },
                Some(207),
                None,
                n as usize * 100,
            )
        });
        assert_eq!(step, Step::End);
    }

    /// A one-chat read is "seen" only when content came back; empty fields, `null`, `{}` and a
    /// record marked deleted show nothing, and an error or a non-object is no answer at all.
    #[test]
    fn a_one_chat_answer_is_seen_only_with_content() {
        use crate::providers::Sighting::{Nothing, Seen};
        for (body, sighting) in [
            (r#"{"question": "hi", "answer": "hello"}"#, Seen),
            (r#"{"chat_id": "c1"}"#, Seen),
            (r#"{"turns": [1]}"#, Seen),
            (r#"{"meta": {"a": 1}}"#, Seen),
            (r#"{"count": 3}"#, Seen),
            (r#"{"error_code": null, "question": "q"}"#, Seen),
            (r#"{"is_del": 0, "question": "q"}"#, Seen),
            ("null", Nothing),
            ("{}", Nothing),
            (r#"{"question": null, "answer": null}"#, Nothing),
            (r#"{"question": "", "turns": [], "meta": {}}"#, Nothing),
            (r#"{"is_del": 1, "question": "q"}"#, Nothing),
            (r#"{"is_del": false}"#, Nothing),
        ] {
            assert_eq!(parse_one_chat(body.as_bytes()), Ok(sighting), "{body}");
        }
        for unclear in [
            r#"[{"question": "q"}]"#,
            r#""x""#,
            r#"{"error_code": "KOS.1"}"#,
            "{",
        ] {
            assert!(parse_one_chat(unclear.as_bytes()).is_err(), "{unclear}");
        }
    }

    #[test]
    fn records_read_ms_strings_and_is_del_shapes() {
        let r: Record = serde_json::from_str(
            r#"{"chat_id":"a","create_date_time":"1731052459260","is_del":false}"#,
        )
        .unwrap();
        assert_eq!(r.created_at(), Some(1731052459));
        assert!(!r.deleted());
        let r: Record = serde_json::from_str(
            r#"{"chat_id":"a","create_date_time":1731052459260,"is_del":"true"}"#,
        )
        .unwrap();
        assert!(r.deleted());
        // Every shape is_del has been seen in: a live chat read as deleted would never be
        // erased; a deleted one read as live would be sent again and never read back absent.
        for (is_del, deleted) in [
            ("0", false),
            ("1", true),
            ("2", true),
            ("true", true),
            ("false", false),
            ("\"1\"", true),
            ("\"0\"", false),
            ("\"TRUE\"", true),
            ("\"yes\"", true),
            ("\"no\"", false),
            ("null", false),
        ] {
            let r: Record =
                serde_json::from_str(&format!(r#"{{"chat_id":"a","is_del":{is_del}}}"#)).unwrap();
            assert_eq!(r.deleted(), deleted, "is_del {is_del}");
        }
        let r: Record = serde_json::from_str(r#"{"chat_id":"a"}"#).unwrap();
        assert!(!r.deleted(), "no is_del: live");
    }
}
