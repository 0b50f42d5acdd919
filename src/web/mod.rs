//! The `[http]` listener: Prometheus `/metrics`, `/healthz`, and the read-only status page at `/`
//! ([`page`]), with `/status/fragment` (the page's body, which its script swaps in every few
//! seconds), `/status.json` (the same read model), `/status.js` and `/status.css`.
//!
//! Rules:
//! - Read-only: no route changes anything, every route is a GET.
//! - No personal data: the page and its JSON show refs, hashes, counts and provider answers,
//!   never a subject ([`crate::store::status::Overview`] holds none).
//! - Hardened against clients that hold connections: at most [`MAX_CONNECTIONS`] at once (the
//!   next one waits in the kernel's backlog for a permit, holding no descriptor of ours), a
//!   request head must arrive within [`HEADER_TIMEOUT`], a connection lives at most
//!   [`CONNECTION_TIMEOUT`], and there is no keep-alive. Idle sockets can then never take the
//!   descriptors provider calls need (they did: ~370 idle connections exhausted the daemon's).
//! - And they cannot starve `/healthz` (or a scrape): while every slot is taken, a connection
//!   that has sent no request for [`IDLE_GRACE`] is closed to let the next one in, oldest first,
//!   so a crowd of silent clients (a slowloris) costs the others a moment, not the header timeout
//!   of everyone ahead of them. Connections with a request in hand are never closed for room.
//! - Pages carry a strict Content-Security-Policy: scripts and styles only from this listener, no
//!   inline script, no third-party origin; the page works offline.

pub mod page;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::providers::SharedProvider;
use crate::store::AsyncStore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// While every slot is taken, how long a connection may stay silent before it makes room.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);

/// Connections that have not sent a request yet, oldest first: the ones closed for room. (One
/// that spoke stays in the queue until it reaches the front, where it is dropped unclosed.)
#[derive(Default)]
struct Silent(std::sync::Mutex<std::collections::VecDeque<SilentConn>>);

struct SilentConn {
    since: tokio::time::Instant,
    /// Set once its request head arrived (it is then never closed for room).
    spoke: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled to close it; also cancelled when it ends on its own.
    close: CancellationToken,
}

impl Silent {
    /// Closes every connection that has stayed silent past [`IDLE_GRACE`] (the queue is
    /// oldest first); returns how many.
    fn evict(&self) -> usize {
        let mut q = self.0.lock().expect("never poisoned: no panics under it");
        let now = tokio::time::Instant::now();
        let mut closed = 0;
        while let Some(c) = q.front() {
            let done = c.spoke.load(Ordering::Relaxed) || c.close.is_cancelled();
            if !done && now.duration_since(c.since) < IDLE_GRACE {
                break;
            }
            let c = q.pop_front().expect("just looked");
            if !done {
                c.close.cancel();
                closed += 1;
            }
        }
        closed
    }

    /// Adds a connection, dropping the ones at the front that spoke or ended (each connection
    /// lives at most [`CONNECTION_TIMEOUT`], so the queue holds no more than that span's).
    fn push(&self, c: SilentConn) {
        let mut q = self.0.lock().expect("never poisoned: no panics under it");
        while q
            .front()
            .is_some_and(|f| f.spoke.load(Ordering::Relaxed) || f.close.is_cancelled())
        {
            q.pop_front();
        }
        q.push_back(c);
    }
}

/// How often the page refreshes itself (its script reads it from the page).
pub const REFRESH: Duration = Duration::from_secs(5);

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    store: AsyncStore,
    providers: Vec<SharedProvider>,
    clock: SharedClock,
    deadline_secs: Arc<AtomicI64>,
    /// The last snapshot and when it was read ([`SNAPSHOT_FOR`]).
    snapshot: Arc<tokio::sync::Mutex<Option<Cached>>>,
}

async fn metrics_handler(State(s): State<HttpState>) -> Response {
    let now = s.clock.now();
    match s
        .metrics
        .render(
            &s.store,
            &s.providers,
            now,
            s.deadline_secs.load(Ordering::Relaxed),
        )
        .await
    {
        Ok(text) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

/// Healthy when the intake loop went round within the last 30 s and the database answers.
async fn healthz_handler(State(s): State<HttpState>) -> Response {
    let age_ms = s.clock.now_ms() - s.metrics.heartbeat_ms.load(Ordering::Relaxed);
    if age_ms > 30_000 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("intake loop silent for {} s\n", age_ms / 1000),
        )
            .into_response();
    }
    if let Some(o) = s.store.outage().current() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "database refuses writes for {} s (while {}): {}\n",
                o.lasted.as_secs(),
                o.what,
                crate::errors::render_error(&*o.error)
            ),
        )
            .into_response();
    }
    match s.store.call(|st| st.data_version()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

/// A snapshot and when it was read.
type Cached = (std::time::Instant, Arc<page::Snapshot>);

/// How long one snapshot serves every viewer: however many pages are open, the store is asked
/// at most once per this span.
const SNAPSHOT_FOR: Duration = Duration::from_secs(2);

/// The page's data: the cached snapshot when fresh, else one read from the store.
async fn snapshot(s: &HttpState) -> Result<Arc<page::Snapshot>, crate::store::StoreError> {
    let mut cache = s.snapshot.lock().await;
    if let Some((at, snap)) = cache.as_ref()
        && at.elapsed() < SNAPSHOT_FOR
    {
        return Ok(snap.clone());
    }
    let snap = Arc::new(read_snapshot(s).await?);
    *cache = Some((std::time::Instant::now(), snap.clone()));
    Ok(snap)
}

async fn read_snapshot(s: &HttpState) -> Result<page::Snapshot, crate::store::StoreError> {
    let now = s.clock.now();
    let deadline = s.deadline_secs.load(Ordering::Relaxed);
    let (overview, rules) = s
        .store
        .call(move |st| {
            Ok::<_, crate::store::StoreError>((st.overview(now, deadline)?, st.list_rules()?))
        })
        .await?;
    let configured = s.providers.iter().map(|p| p.kind().to_string()).collect();
    Ok(page::Snapshot::new(overview, rules, configured, now))
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn unavailable(e: crate::store::StoreError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response()
}

async fn page_handler(State(s): State<HttpState>) -> Response {
    match snapshot(&s).await {
        Ok(snap) => html(page::full(&snap)),
        Err(e) => unavailable(e),
    }
}

async fn fragment_handler(State(s): State<HttpState>) -> Response {
    match snapshot(&s).await {
        Ok(snap) => html(page::fragment(&snap)),
        Err(e) => unavailable(e),
    }
}

async fn json_handler(State(s): State<HttpState>) -> Response {
    match snapshot(&s).await {
        Ok(snap) => (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            axum::Json(snap.as_ref()),
        )
            .into_response(),
        Err(e) => unavailable(e),
    }
}

async fn script_handler() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page::SCRIPT,
    )
        .into_response()
}

async fn style_handler() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        page::STYLE,
    )
        .into_response()
}

fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(page_handler))
        .route("/status/fragment", get(fragment_handler))
        .route("/status.json", get(json_handler))
        .route("/status.js", get(script_handler))
        .route("/status.css", get(style_handler))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .with_state(state)
}

/// Serves the routes until cancelled, under the connection limit and timeouts above.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    store: AsyncStore,
    providers: Vec<SharedProvider>,
    clock: SharedClock,
    deadline_secs: Arc<AtomicI64>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = router(HttpState {
        metrics,
        store,
        providers,
        clock,
        deadline_secs,
        snapshot: Default::default(),
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    let silent = Arc::new(Silent::default());
    loop {
        // The permit first: over the limit, connections wait in the backlog, not in our table.
        // While none is free, silent connections past their grace make room, oldest first.
        let permit = loop {
            if let Ok(p) = permits.clone().try_acquire_owned() {
                break Some(p);
            }
            tokio::select! {
                _ = cancel.cancelled() => break None,
                p = permits.clone().acquire_owned() => break Some(p.expect("the semaphore is never closed")),
                _ = tokio::time::sleep(IDLE_GRACE / 5) => {
                    silent.evict();
                }
            }
        };
        let Some(permit) = permit else { break };
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and kin: wait a moment rather than spin; the listener stays.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let spoke = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let close = CancellationToken::new();
        silent.push(SilentConn {
            since: tokio::time::Instant::now(),
            spoke: spoke.clone(),
            close: close.clone(),
        });
        let app = app.clone();
        let service = hyper_util::service::TowerToHyperService::new(tower::service_fn(
            move |req: hyper::Request<hyper::body::Incoming>| {
                spoke.store(true, Ordering::Relaxed);
                let mut app = app.clone();
                async move { tower::Service::call(&mut app, req.map(axum::body::Body::new)).await }
            },
        ));
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = close.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            }
            close.cancel();
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}
