//! The simulator's HTTP handlers and its fault pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use rand::Rng;
use serde_json::json;

use super::{
    CONVAI_KEY, CallRecord, IAM_DOMAIN, IAM_PASSWORD, IAM_PROJECT, IAM_USER, PROJECT_ID, SimState,
};
use crate::model::ProviderKind;

type St = State<Arc<SimState>>;

/// The fault chosen for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    Throttle,
    Hang,
    Reset,
    Malformed,
    Partial,
}

impl Fault {
    /// What a delete call's record says happened: a refusal by status, else the fault drawn.
    fn label_for(self, status: u16) -> &'static str {
        match status {
            403 => "disabled",
            400 => "bad_id",
            _ => self.label(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::None => "ok",
            Self::Error => "error",
            Self::Throttle => "throttled",
            Self::Hang => "hang",
            Self::Reset => "reset",
            Self::Malformed => "malformed",
            Self::Partial => "partial",
        }
    }
}

impl SimState {
    /// Whether a delete of this ID is confirmed but not kept (the `resurrect` fault): uses one.
    ///
    /// A kept chat stays kept until its scope is read: a delete sent again because the client
    /// never saw the first confirmation (a timeout, a broken connection) does not quietly finish
    /// the job, so the reappearance is there for the read-back to find however the answer fared.
    /// A delete whose answer confirms nothing (`confirms` false: a broken connection, a
    /// garbled body) leaves such a chat in place without using the fault up, so the fault is
    /// spent on the confirmation the client does see.
    fn resurrects(&self, scope: &str, id: &str, confirms: bool) -> bool {
        let key = (scope.to_string(), id.to_string());
        let mut kept = self.kept_unread.lock().unwrap();
        if kept.contains(&key) {
            return true;
        }
        let mut f = self.faults.lock().unwrap();
        match f.resurrect.get_mut(id) {
            Some(n) if *n > 0 => {
                if confirms {
                    *n -= 1;
                    kept.insert(key);
                }
                true
            }
            _ => false,
        }
    }

    /// A read of `scope` got through: its kept chats have been shown and may now be deleted.
    fn read_of(&self, scope: &str) {
        self.kept_unread.lock().unwrap().retain(|(s, _)| s != scope);
    }

    /// Whether a one-chat read fails with a 503 (the `read_error_rate` fault).
    fn read_fails(&self) -> bool {
        let rate = self.faults.lock().unwrap().read_error_rate;
        rate > 0.0 && self.rng.lock().unwrap().random_bool(rate.min(1.0))
    }

    /// Whether a listing call fails with a 503 (the `list_error_rate` fault).
    fn list_fails(&self) -> bool {
        let rate = self.faults.lock().unwrap().list_error_rate;
        rate > 0.0 && self.rng.lock().unwrap().random_bool(rate.min(1.0))
    }
}

impl super::Inner {
    fn note_deleted(&mut self, provider: ProviderKind, scope: &str, ids: Vec<String>, now: i64) {
        self.deleted.extend(
            ids.into_iter()
                .map(|id| (provider, scope.to_string(), id, now)),
        );
    }
}

/// The per-call fault probabilities, copied out of the lock.
struct Rates {
    hang_rate: f64,
    error_rate: f64,
    throttle_rate: f64,
    reset_rate: f64,
    malformed_rate: f64,
    partial_rate: f64,
}

/// What a delete handler needs of the faults besides the rates.
struct DeleteFaults {
    delete_disabled: bool,
    bad: bool,
    retry_after: std::time::Duration,
}

impl SimState {
    fn delete_faults(
        &self,
        ids: &[String],
        repos_bad: bool,
        id_ok: impl Fn(&str) -> bool,
    ) -> DeleteFaults {
        let f = self.faults.lock().unwrap();
        DeleteFaults {
            delete_disabled: f.delete_disabled,
            bad: repos_bad
                || ids.is_empty()
                || ids.iter().any(|i| !id_ok(i) || f.bad_ids.contains(i)),
            retry_after: f.retry_after,
        }
    }
}

/// Releases the concurrency slot when the call ends, however it ends.
struct Slot {
    state: Arc<SimState>,
    provider: ProviderKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = self.state.inflight.lock().unwrap().get_mut(&self.provider) {
            *n = n.saturating_sub(1);
        }
    }
}

impl SimState {
    fn record(
        &self,
        provider: ProviderKind,
        op: &'static str,
        scope: &str,
        ids: Vec<String>,
        status: u16,
        fault: &'static str,
    ) {
        let at_ms = self.clock.now_ms();
        let ids = if self.record_ids.load(std::sync::atomic::Ordering::Relaxed) {
            ids
        } else {
            Vec::new()
        };
        self.inner.lock().unwrap().calls.push(CallRecord {
            at_ms,
            provider,
            op,
            scope: scope.to_string(),
            ids,
            status,
            fault,
        });
    }

    /// Server-side concurrency and rate limits: `Err` is a 429 to send.
    fn admit(self: &Arc<Self>, provider: ProviderKind) -> Result<Slot, &'static str> {
        let (concurrency_limit, rate_limit) = {
            let f = self.faults.lock().unwrap();
            (f.concurrency_limit, f.rate_limit)
        };
        {
            let mut inflight = self.inflight.lock().unwrap();
            let n = inflight.entry(provider).or_insert(0);
            if concurrency_limit.is_some_and(|lim| *n >= lim) {
                return Err("concurrency_limited");
            }
            *n += 1;
        }
        let slot = Slot {
            state: self.clone(),
            provider,
        };
        if let Some(limit) = rate_limit {
            let now = self.clock.now_ms();
            let mut inner = self.inner.lock().unwrap();
            let q = inner.recent.entry(provider).or_default();
            while q.front().is_some_and(|t| *t <= now - 1000) {
                q.pop_front();
            }
            if q.len() >= limit as usize {
                return Err("rate_limited");
            }
            q.push_back(now);
        }
        Ok(slot)
    }

    fn pick(&self, allow_partial: bool) -> Fault {
        let f = {
            let f = self.faults.lock().unwrap();
            Rates {
                hang_rate: f.hang_rate,
                error_rate: f.error_rate,
                throttle_rate: f.throttle_rate,
                reset_rate: f.reset_rate,
                malformed_rate: f.malformed_rate,
                partial_rate: f.partial_rate,
            }
        };
        if f.hang_rate == 0.0
            && f.error_rate == 0.0
            && f.throttle_rate == 0.0
            && f.reset_rate == 0.0
            && f.malformed_rate == 0.0
            && (f.partial_rate == 0.0 || !allow_partial)
        {
            return Fault::None;
        }
        let mut rng = self.rng.lock().unwrap();
        let mut roll = |p: f64| p > 0.0 && rng.random_bool(p.min(1.0));
        if roll(f.hang_rate) {
            Fault::Hang
        } else if roll(f.error_rate) {
            Fault::Error
        } else if roll(f.throttle_rate) {
            Fault::Throttle
        } else if roll(f.reset_rate) {
            Fault::Reset
        } else if roll(f.malformed_rate) {
            Fault::Malformed
        } else if allow_partial && roll(f.partial_rate) {
            Fault::Partial
        } else {
            Fault::None
        }
    }

    fn coin(&self) -> bool {
        self.rng.lock().unwrap().random_bool(0.5)
    }

    async fn latency(&self) {
        let d = self.faults.lock().unwrap().latency;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    async fn hang(&self) {
        let d = self.faults.lock().unwrap().hang_for;
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn wait_if_held(&self) {
        let mut rx = self.hold_deletes.subscribe();
        while *rx.borrow_and_update() {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// The answer of the server-side limits: a 429 with `Retry-After` when the faults name one
/// (`limit_retry_after`), without it otherwise (an unpublished limit that says nothing).
fn limited(st: &SimState, body: serde_json::Value) -> Response {
    match st.faults.lock().unwrap().limit_retry_after {
        Some(d) => throttled(d.as_secs(), body),
        None => (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response(),
    }
}

fn throttled(retry_after_secs: u64, body: serde_json::Value) -> Response {
    let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    r.headers_mut()
        .insert("Retry-After", HeaderValue::from(retry_after_secs));
    r
}

/// A 200 whose body breaks off: the client sees the connection fail mid-answer.
fn broken() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"sta")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated reset",
        )),
    ];
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap()
}

fn malformed() -> Response {
    (
        StatusCode::OK,
        [("content-type", "text/html")],
        "<html><body>502 Bad Gateway</body></html>",
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Convai

pub(crate) fn convai_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/character/chatHistory/delete", post(convai_delete))
        .route("/character/chatHistory/list", post(convai_list))
        .route("/character/chatHistory/details", post(convai_details))
        .with_state(state)
}

/// Convai's 401; with `echo_secrets`, repeating the key it was sent.
fn convai_unauthorized(st: &SimState, headers: &HeaderMap) -> Response {
    let sent = headers
        .get("CONVAI-API-KEY")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if st.faults.lock().unwrap().echo_secrets {
        return convai_error(
            StatusCode::UNAUTHORIZED,
            &format!("Invalid API key provided: {sent}"),
        );
    }
    convai_error(StatusCode::UNAUTHORIZED, "Invalid API key provided.")
}

fn convai_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({"ERROR": msg}))).into_response()
}

impl SimState {
    /// 403 or 404 when the faults say this provider refuses every chat-history call.
    fn refusal(&self, p: ProviderKind) -> Option<u16> {
        let f = self.faults.lock().unwrap();
        if f.api_disabled.contains(&p) {
            Some(404)
        } else if f.forbidden.contains(&p) {
            Some(403)
        } else {
            None
        }
    }
}

fn convai_refused(status: u16) -> Response {
    match status {
        404 => convai_error(StatusCode::NOT_FOUND, "Not Found"),
        _ => convai_error(StatusCode::FORBIDDEN, "Permission denied"),
    }
}

fn koo_refused(status: u16) -> Response {
    match status {
        404 => koo_error(
            StatusCode::NOT_FOUND,
            "APIG.0101",
            "The API does not exist or has not been published in the environment",
        ),
        _ => koo_error(
            StatusCode::FORBIDDEN,
            "SIM.403",
            "simulated: the user has no permission for KooSearch",
        ),
    }
}

fn convai_key_ok(st: &SimState, headers: &HeaderMap) -> bool {
    let refused = st
        .faults
        .lock()
        .unwrap()
        .auth_fail
        .contains(&ProviderKind::CONVAI);
    !refused && headers.get("CONVAI-API-KEY").and_then(|v| v.to_str().ok()) == Some(CONVAI_KEY)
}

async fn convai_delete(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let p = ProviderKind::CONVAI;
    let parsed: Option<(String, Vec<String>)> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let char_id = v.get("charID")?.as_str()?.to_string();
            let ids = v
                .get("sessionIDs")?
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?;
            Some((char_id, ids))
        });
    let (scope, ids) = parsed.clone().unwrap_or_default();
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "delete", &scope, ids, 429, why);
            return limited(
                &st,
                json!({"ERROR": "API rate limit exceeded. Please try again later."}),
            );
        }
    };
    st.latency().await;
    if !convai_key_ok(&st, &headers) {
        st.record(p, "delete", &scope, ids, 401, "auth");
        return convai_unauthorized(&st, &headers);
    }
    if st.faults.lock().unwrap().plan_quota_used {
        st.record(p, "delete", &scope, ids, 429, "quota");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"ERROR": "API usage limit exceeded for current plan."})),
        )
            .into_response();
    }
    if let Some(status) = st.refusal(p) {
        st.record(p, "delete", &scope, ids, status, "refused");
        return convai_refused(status);
    }
    let Some((scope, ids)) = parsed else {
        st.record(p, "delete", "", vec![], 400, "bad_request");
        return convai_error(StatusCode::BAD_REQUEST, "Invalid request body");
    };
    let fault = st.pick(false);
    let faults = st.delete_faults(&ids, false, |_| true);
    let status = match fault {
        Fault::Hang => 0,
        Fault::Error => 503,
        Fault::Throttle => 429,
        _ if faults.delete_disabled => 403,
        _ if faults.bad => 400,
        _ => 200,
    };
    st.record(
        p,
        "delete",
        &scope,
        ids.clone(),
        status,
        fault.label_for(status),
    );
    if status != 0 {
        // Every answer is held back while deletes are held, a refusal as much as a confirmation.
        st.wait_if_held().await;
    }
    match status {
        0 => {
            st.hang().await;
            return convai_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
        }
        503 => return convai_error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
        429 => {
            return throttled(
                faults.retry_after.as_secs(),
                json!({"ERROR": "API rate limit exceeded. Please try again later."}),
            );
        }
        403 => return convai_error(StatusCode::FORBIDDEN, "Permission denied"),
        400 => return convai_error(StatusCode::BAD_REQUEST, "Invalid sessionID"),
        _ => {}
    }
    let apply = fault != Fault::Reset || st.coin();
    // The resurrect fault is a confirmation the provider does not keep: it is used up only by
    // an answer that confirms (a broken connection or a garbled body confirms nothing).
    let confirms = !matches!(fault, Fault::Reset | Fault::Malformed);
    if apply {
        let now = st.clock.now_ms();
        let mut inner = st.inner.lock().unwrap();
        let mut removed = Vec::new();
        if let Some(chats) = inner.convai.get_mut(&scope) {
            for id in &ids {
                if chats.contains_key(id) && st.resurrects(&scope, id, confirms) {
                    continue; // confirmed below, but not kept
                }
                if chats.remove(id).is_some() {
                    removed.push(id.clone());
                }
            }
        }
        inner.note_deleted(p, &scope, removed, now);
    }
    match fault {
        Fault::Reset => broken(),
        Fault::Malformed => malformed(),
        _ => axum::Json(json!({"status": "SUCCESSFULLY DELETED"})).into_response(),
    }
}

async fn convai_list(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let p = ProviderKind::CONVAI;
    let scope = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("charID").and_then(|c| c.as_str()).map(str::to_string));
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "list", scope.as_deref().unwrap_or(""), vec![], 429, why);
            return limited(
                &st,
                json!({"ERROR": "API rate limit exceeded. Please try again later."}),
            );
        }
    };
    st.latency().await;
    st.read_of(scope.as_deref().unwrap_or(""));
    if !convai_key_ok(&st, &headers) {
        st.record(
            p,
            "list",
            scope.as_deref().unwrap_or(""),
            vec![],
            401,
            "auth",
        );
        return convai_unauthorized(&st, &headers);
    }
    if st.faults.lock().unwrap().plan_quota_used {
        st.record(
            p,
            "list",
            scope.as_deref().unwrap_or(""),
            vec![],
            429,
            "quota",
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"ERROR": "API usage limit exceeded for current plan."})),
        )
            .into_response();
    }
    if let Some(status) = st.refusal(p) {
        st.record(
            p,
            "list",
            scope.as_deref().unwrap_or(""),
            vec![],
            status,
            "refused",
        );
        return convai_refused(status);
    }
    let Some(scope) = scope else {
        return convai_error(StatusCode::BAD_REQUEST, "charID is required");
    };
    if st.list_fails() {
        st.record(p, "list", &scope, vec![], 503, "error");
        return convai_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service temporarily unavailable.",
        );
    }
    st.record(p, "list", &scope, vec![], 200, "ok");
    let inner = st.inner.lock().unwrap();
    let mut sessions: Vec<(String, i64)> = inner
        .convai
        .get(&scope)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    drop(inner);
    sessions.sort_by_key(|s| std::cmp::Reverse(s.1)); // newest first, as the doc's example
    let list: Vec<serde_json::Value> = sessions
        .into_iter()
        .map(|(id, t)| {
            let dt = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
            json!({"sessionID": id, "date": dt.format("%d-%m-%Y").to_string(), "time": dt.format("%H:%M:%S").to_string(), "is_added_to_memory": false})
        })
        .collect();
    axum::Json(list).into_response()
}

/// One session's turns: an array of turns while it exists, `[]` once it is gone (what the real
/// service answers for a deleted session is not documented; the client reads both `[]` and 404
/// as "nothing").
async fn convai_details(State(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let p = ProviderKind::CONVAI;
    let v = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
    let scope = v["charID"].as_str().unwrap_or("").to_string();
    let sid = v["sessionID"].as_str().unwrap_or("").to_string();
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "read", &scope, vec![sid], 429, why);
            return limited(
                &st,
                json!({"ERROR": "API rate limit exceeded. Please try again later."}),
            );
        }
    };
    st.latency().await;
    st.read_of(&scope);
    if !convai_key_ok(&st, &headers) {
        st.record(p, "read", &scope, vec![sid], 401, "auth");
        return convai_unauthorized(&st, &headers);
    }
    if st.faults.lock().unwrap().plan_quota_used {
        st.record(p, "read", &scope, vec![sid.clone()], 429, "quota");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(json!({"ERROR": "API usage limit exceeded for current plan."})),
        )
            .into_response();
    }
    if let Some(status) = st.refusal(p) {
        st.record(p, "read", &scope, vec![sid], status, "refused");
        return convai_refused(status);
    }
    if scope.is_empty() || sid.is_empty() {
        st.record(p, "read", &scope, vec![sid], 400, "bad_request");
        return convai_error(StatusCode::BAD_REQUEST, "charID and sessionID are required");
    }
    if st.read_fails() {
        st.record(p, "read", &scope, vec![sid], 503, "error");
        return convai_error(StatusCode::SERVICE_UNAVAILABLE, "Service unavailable");
    }
    let there = st
        .inner
        .lock()
        .unwrap()
        .convai
        .get(&scope)
        .is_some_and(|m| m.contains_key(&sid));
    st.record(p, "read", &scope, vec![sid], 200, "ok");
    if there {
        axum::Json(json!([{"timestamp": "2024-09-25 19:54:59.124733",
            "interaction": [{"speaker": "User", "message": "hello"}, {"speaker": "Character", "message": "hi"}]}]))
        .into_response()
    } else {
        axum::Json(json!([])).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// KooSearch

pub(crate) fn koosearch_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route(
            "/v1/{project}/applications/{app}/uni-search/chat-history/batch",
            delete(koo_batch),
        )
        .route(
            "/v1/{project}/applications/{app}/uni-search/chat-history",
            get(koo_list),
        )
        .route(
            "/v1/{project}/applications/{app}/uni-search/chat-history/{chat_id}",
            get(koo_one),
        )
        .with_state(state)
}

fn koo_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"error_code": code, "error_msg": msg})),
    )
        .into_response()
}

/// KooSearch's 401; with `echo_secrets`, naming the token it was sent.
fn koo_unauthorized(st: &SimState, headers: &HeaderMap) -> Response {
    let sent = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let msg = if st.faults.lock().unwrap().echo_secrets {
        format!("Incorrect IAM authentication information: token {sent} expires")
    } else {
        "Incorrect IAM authentication information: token expires".to_string()
    };
    koo_error(StatusCode::UNAUTHORIZED, "APIG.0301", &msg)
}

fn koo_token_ok(st: &SimState, headers: &HeaderMap) -> bool {
    if st
        .faults
        .lock()
        .unwrap()
        .auth_fail
        .contains(&ProviderKind::KOOSEARCH)
    {
        return false;
    }
    let Some(token) = headers.get("X-Auth-Token").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let now = st.clock.now_ms();
    st.inner
        .lock()
        .unwrap()
        .tokens
        .get(token)
        .is_some_and(|exp| *exp > now)
}

fn koo_id_ok(id: &str) -> bool {
    crate::providers::koosearch::is_id(id)
}

async fn koo_batch(
    State(st): St,
    Path((project, app)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = ProviderKind::KOOSEARCH;
    let parsed = koo_batch_body(&body);
    let ids = parsed.as_ref().map(|p| p.0.clone()).unwrap_or_default();
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "delete", &app, ids, 429, why);
            return limited(
                &st,
                json!({"error_code": "APIG.0308", "error_msg": "The throttling threshold has been reached: policy user over ratelimit,limit:10,time:1 second"}),
            );
        }
    };
    st.latency().await;
    if !koo_token_ok(&st, &headers) {
        st.record(p, "delete", &app, ids, 401, "auth");
        return koo_unauthorized(&st, &headers);
    }
    if let Some(status) = st.refusal(p) {
        st.record(p, "delete", &app, ids, status, "refused");
        return koo_refused(status);
    }
    if project != PROJECT_ID {
        st.record(p, "delete", &app, ids, 404, "not_found");
        return koo_error(
            StatusCode::NOT_FOUND,
            "APIG.0101",
            "The API does not exist or has not been published in the environment",
        );
    }
    let Some((ids, repos)) = parsed else {
        st.record(p, "delete", &app, vec![], 400, "bad_request");
        return koo_error(StatusCode::BAD_REQUEST, "KOS.00010001", "Invalid JSON");
    };
    let fault = st.pick(true);
    let faults = st.faults.lock().unwrap().clone();
    let bad = ids.is_empty()
        || ids
            .iter()
            .any(|i| !koo_id_ok(i) || faults.bad_ids.contains(i))
        || repos
            .as_ref()
            .is_some_and(|r| r.len() > 100 || r.iter().any(|x| !koo_id_ok(x)));
    let status = match fault {
        Fault::Hang => 0,
        Fault::Error => 500,
        Fault::Throttle => 429,
        _ if bad => 400,
        _ => 200,
    };
    st.record(
        p,
        "delete",
        &app,
        ids.clone(),
        status,
        fault.label_for(status),
    );
    if status != 0 {
        // Every answer is held back while deletes are held, a refusal as much as a confirmation.
        st.wait_if_held().await;
    }
    if let Some(refusal) = koo_batch_refusal(&st, status, &faults).await {
        return refusal;
    }
    let deleted = if fault != Fault::Reset || st.coin() {
        let confirms = !matches!(fault, Fault::Reset | Fault::Malformed);
        let misfiled = if faults.repo_must_match {
            repos.as_deref()
        } else {
            None
        };
        koo_apply_delete(&st, &app, &ids, misfiled, fault == Fault::Partial, confirms)
    } else {
        0
    };
    match fault {
        Fault::Reset => broken(),
        Fault::Malformed => malformed(),
        _ => {
            let total = ids.len() as u64;
            if st.coin() {
                axum::Json(json!({"totalCount": total, "deletedCount": deleted})).into_response()
            } else {
                axum::Json(json!({"total_count": total, "deleted_count": deleted})).into_response()
            }
        }
    }
}

/// `{"chat_ids": [...], "repo_ids": [...]?}`, strings only; `None` when it is not that.
fn koo_batch_body(body: &[u8]) -> Option<(Vec<String>, Option<Vec<String>>)> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let strings = |a: &serde_json::Value| -> Option<Vec<String>> {
        a.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let ids = strings(v.get("chat_ids")?)?;
    let repos = match v.get("repo_ids") {
        None => None,
        Some(r) => Some(strings(r)?),
    };
    Some((ids, repos))
}

/// The answer for a batch that is not carried out (a hang, 5xx, 429, 400); `None` for 200.
async fn koo_batch_refusal(st: &SimState, status: u16, faults: &super::Faults) -> Option<Response> {
    Some(match status {
        0 => {
            st.hang().await;
            koo_error(StatusCode::GATEWAY_TIMEOUT, "APIG.0201", "Backend timeout")
        }
        500 => koo_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "KOS.00060002",
            "Database operation failed",
        ),
        429 => throttled(
            faults.retry_after.as_secs(),
            json!({"error_code": "APIG.0308", "error_msg": "The throttling threshold has been reached"}),
        ),
        400 => koo_error(
            StatusCode::BAD_REQUEST,
            "KOS.00010002",
            "Invalid parameter: chat_ids",
        ),
        _ => return None,
    })
}

/// Marks the batch's chats deleted (a partial batch keeps every other one); returns how many.
/// With `confirms` (the answer will reach the client), a `resurrect` fault keeps its chat.
fn koo_apply_delete(
    st: &SimState,
    app: &str,
    ids: &[String],
    repo_must_match: Option<&[String]>,
    partial: bool,
    confirms: bool,
) -> u64 {
    let now = st.clock.now_ms();
    let mut inner = st.inner.lock().unwrap();
    let mut removed = Vec::new();
    let mut unkept = 0;
    if let Some(chats) = inner.koo.get_mut(app) {
        for (n, id) in ids.iter().enumerate() {
            if partial && n % 2 == 1 {
                continue; // a partial batch: every other chat survives this call
            }
            if let Some(c) = chats.get_mut(id)
                && !c.is_del
            {
                let named_repo = repo_must_match.and_then(|r| r.get(n));
                if named_repo.is_some_and(|r| c.repo_id.as_deref() != Some(r.as_str())) {
                    unkept += 1; // another knowledge base's chat: counted, not deleted
                    continue;
                }
                if st.resurrects(app, id, confirms) {
                    unkept += 1; // counted as deleted, but not kept
                    continue;
                }
                c.is_del = true;
                removed.push(id.clone());
            }
        }
    }
    let deleted = removed.len() as u64 + unkept;
    inner.note_deleted(ProviderKind::KOOSEARCH, app, removed, now);
    deleted
}

async fn koo_list(
    State(st): St,
    Path((project, app)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let p = ProviderKind::KOOSEARCH;
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "list", &app, vec![], 429, why);
            return limited(
                &st,
                json!({"error_code": "APIG.0308", "error_msg": "The throttling threshold has been reached"}),
            );
        }
    };
    st.latency().await;
    st.read_of(&app);
    if !koo_token_ok(&st, &headers) {
        st.record(p, "list", &app, vec![], 401, "auth");
        return koo_unauthorized(&st, &headers);
    }
    if let Some(status) = st.refusal(p) {
        st.record(p, "list", &app, vec![], status, "refused");
        return koo_refused(status);
    }
    if project != PROJECT_ID {
        return koo_error(StatusCode::NOT_FOUND, "APIG.0101", "The API does not exist");
    }
    let num = |k: &str, d: u64| {
        q.get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| (1..=65535).contains(n))
            .unwrap_or(d)
    };
    let page_num = num("page_num", 1);
    let page_size = num("page_size", 10);
    if st.list_fails() {
        st.record(p, "list", &app, vec![], 503, "error");
        return koo_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "KOS.00060002",
            "The service is busy",
        );
    }
    let (listing, strict) = {
        let f = st.faults.lock().unwrap();
        (f.listing, f.strict_user_name)
    };
    if strict
        && let Some(u) = q.get("user_name")
        && !crate::providers::koosearch::is_id(u)
    {
        st.record(p, "list", &app, vec![], 400, "refused");
        return koo_error(
            StatusCode::BAD_REQUEST,
            "KOS.00010002",
            &format!("Invalid parameter user_name: '{u}'"),
        );
    }
    st.record(p, "list", &app, vec![], 200, "ok");
    match listing {
        super::ListingFault::SamePage | super::ListingFault::Endless => {
            let first = if listing == super::ListingFault::Endless {
                (page_num - 1) * page_size
            } else {
                0
            };
            let records: Vec<serde_json::Value> = (first..first + page_size)
                .map(|i| {
                    json!({"chat_id": format!("endless-{i}"), "knowledge_repo_id": null, "chat_title": "a chat",
                           "create_date_time": "0", "project_id": PROJECT_ID, "is_del": 0})
                })
                .collect();
            return axum::Json(json!({"total": 1_000_000_000u64, "size": records.len(),
                "pages": 1_000_000_000u64 / page_size, "current": page_num, "records": records}))
            .into_response();
        }
        _ => {}
    }
    let inner = st.inner.lock().unwrap();
    let matching: Vec<(&String, &super::KooChat)> = inner
        .koo
        .get(&app)
        .map(|m| {
            m.iter()
                .filter(|(id, c)| {
                    q.get("user_name")
                        .is_none_or(|u| c.user_name.as_deref() == Some(u.as_str()))
                        && q.get("chat_id").is_none_or(|want| *id == want)
                        && q.get("repo_id")
                            .is_none_or(|r| c.repo_id.as_deref() == Some(r.as_str()))
                })
                .collect()
        })
        .unwrap_or_default();
    let total = match listing {
        super::ListingFault::Total(n) => n,
        _ => matching.len() as u64,
    };
    let pages = total.div_ceil(page_size);
    let records: Vec<serde_json::Value> = matching
        .into_iter()
        .skip(((page_num - 1) * page_size) as usize)
        .take(page_size as usize)
        .map(|(id, c)| {
            json!({"chat_id": id, "knowledge_repo_id": c.repo_id, "chat_title": "a chat",
                   "create_date_time": c.created_ms.to_string(), "project_id": PROJECT_ID, "is_del": c.is_del})
        })
        .collect();
    axum::Json(json!({"total": total, "size": records.len(), "pages": pages, "current": page_num, "records": records})).into_response()
}

/// `GET .../chat-history/{chat_id}?repo_id=`: the chat's question and answer while it exists;
/// 404 once deleted (undocumented: the client reads 404, `is_del` and `{}` alike as "nothing").
async fn koo_one(
    State(st): St,
    Path((project, app, chat_id)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let p = ProviderKind::KOOSEARCH;
    let _slot = match st.admit(p) {
        Ok(s) => s,
        Err(why) => {
            st.record(p, "read", &app, vec![chat_id], 429, why);
            return limited(
                &st,
                json!({"error_code": "APIG.0308", "error_msg": "The throttling threshold has been reached"}),
            );
        }
    };
    st.latency().await;
    st.read_of(&app);
    if !koo_token_ok(&st, &headers) {
        st.record(p, "read", &app, vec![chat_id], 401, "auth");
        return koo_unauthorized(&st, &headers);
    }
    if let Some(status) = st.refusal(p) {
        st.record(p, "read", &app, vec![chat_id], status, "refused");
        return koo_refused(status);
    }
    if project != PROJECT_ID {
        return koo_error(StatusCode::NOT_FOUND, "APIG.0101", "The API does not exist");
    }
    if st.read_fails() {
        st.record(p, "read", &app, vec![chat_id], 503, "error");
        return koo_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "KOS.00060002",
            "database failure",
        );
    }
    let found = st
        .inner
        .lock()
        .unwrap()
        .koo
        .get(&app)
        .and_then(|m| m.get(&chat_id))
        .filter(|c| !c.is_del)
        .filter(|c| {
            q.get("repo_id")
                .is_none_or(|r| c.repo_id.as_deref() == Some(r.as_str()))
        })
        .cloned();
    st.record(
        p,
        "read",
        &app,
        vec![chat_id.clone()],
        if found.is_some() { 200 } else { 404 },
        "ok",
    );
    match found {
        Some(c) => axum::Json(json!({"chat_id": chat_id, "knowledge_repo_id": c.repo_id,
            "question": "what is forgetd?", "answer": "a tool that erases chats"}))
        .into_response(),
        None => koo_error(
            StatusCode::NOT_FOUND,
            "KOS.00010404",
            "the chat history does not exist",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// IAM

pub(crate) fn iam_router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v3/auth/tokens", post(iam_token))
        .with_state(state)
}

async fn iam_token(State(st): St, body: Bytes) -> Response {
    let p = ProviderKind::KOOSEARCH;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let user = &v["auth"]["identity"]["password"]["user"];
    let ok = v["auth"]["identity"]["methods"][0] == "password"
        && user["name"] == IAM_USER
        && user["password"] == IAM_PASSWORD
        && user["domain"]["name"] == IAM_DOMAIN
        && v["auth"]["scope"]["project"]["name"] == IAM_PROJECT;
    if !ok {
        st.record(p, "token", "", vec![], 401, "auth");
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "title": "Unauthorized", "message": "The username or password is wrong."}})),
        )
            .into_response();
    }
    let now = st.clock.now_ms();
    let ttl = st.faults.lock().unwrap().token_ttl;
    let token: String = {
        let mut rng = st.rng.lock().unwrap();
        (0..48)
            .map(|_| {
                char::from(
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                        [rng.random_range(0..62)],
                )
            })
            .collect()
    };
    let expires_ms = now + ttl.as_millis() as i64;
    st.inner
        .lock()
        .unwrap()
        .tokens
        .insert(format!("MII{token}"), expires_ms);
    st.record(p, "token", "", vec![], 201, "ok");
    let fmt = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    let mut r = (
        StatusCode::CREATED,
        axum::Json(json!({"token": {"expires_at": fmt(expires_ms), "issued_at": fmt(now), "methods": ["password"]}})),
    )
        .into_response();
    r.headers_mut().insert(
        "X-Subject-Token",
        HeaderValue::from_str(&format!("MII{token}")).unwrap(),
    );
    r
}
