//! The provider simulator: Convai, KooSearch and Huawei IAM as in-process HTTP servers on
//! loopback, stateful and faithful to the shapes in ../shared/providers.md, with fault injection.
//! Tests, `forgetd demo` and the benchmarks share it; a user can point a config at it to see
//! forgetd work before going live (see README, "Trying forgetd against the simulator").
//!
//! What it models:
//! - Convai: `POST /character/chatHistory/{delete,list}` with the `CONVAI-API-KEY` header; `{"ERROR"}`
//!   envelopes; deleting an unknown or already-deleted session is a 200 (idempotent).
//! - KooSearch: `DELETE .../uni-search/chat-history/batch` and `GET .../uni-search/chat-history`
//!   (paged, by user_name, chat_id, repo_id) with `X-Auth-Token`; `deleted_count` counts only chats
//!   that existed, so a repeated delete reports fewer than sent (the cautious reading of an
//!   undocumented case); answers in snake_case or camelCase at random, as the docs disagree.
//! - IAM: `POST /v3/auth/tokens`, 201 with `X-Subject-Token` and `token.expires_at`; tokens expire
//!   after `token_ttl` on the simulator's clock.
//!
//! Faults ([`Faults`]): latency, 500/503, 429 with Retry-After, hung answers, connections broken
//! mid-answer (with or without the delete applied), malformed bodies, partial batch deletes, IDs
//! the provider rejects, expired tokens, refused credentials, the delete API disabled, a
//! server-side rate limit and a concurrency limit. Random choices come from a seeded RNG.
//!
//! Every call is recorded ([`CallRecord`]) with the simulator clock's time, so tests check what
//! was sent (never an untargeted chat), when (Retry-After honoured) and how often (no storms).

mod handlers;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::model::{ChatKey, ProviderKind};

/// Where a config for the simulator takes its secrets from (see [`Simulator::config_toml`]).
#[derive(Debug, Clone, Copy)]
pub enum Secrets<'a> {
    /// Written as files into this directory, named by `file:` references.
    Files(&'a Path),
    /// Named as systemd credentials (`credential:`).
    Credentials,
}

fn write_secret(path: &Path, value: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, value.as_bytes())?;
    Ok(path.to_path_buf())
}

/// Credentials the simulator accepts.
pub const CONVAI_KEY: &str = "sim-convai-key";
pub const IAM_DOMAIN: &str = "sim-domain";
pub const IAM_USER: &str = "forgetd";
pub const IAM_PASSWORD: &str = "sim-iam-password";
pub const IAM_PROJECT: &str = "sim-region-1";
pub const PROJECT_ID: &str = "0123456789abcdef0123456789abcdef";

/// Fault injection settings. Rates are probabilities per call.
#[derive(Debug, Clone)]
pub struct Faults {
    pub latency: Duration,
    /// 500 or 503 answers.
    pub error_rate: f64,
    /// 429 answers with `Retry-After: retry_after`.
    pub throttle_rate: f64,
    pub retry_after: Duration,
    /// Answers that never come (the client's timeout must end them).
    pub hang_rate: f64,
    pub hang_for: Duration,
    /// Connections broken mid-answer; half of them after the delete was applied.
    pub reset_rate: f64,
    /// 200 answers whose body is not JSON.
    pub malformed_rate: f64,
    /// KooSearch batches that delete only some chats (and say so in deleted_count).
    pub partial_rate: f64,
    /// IDs the provider refuses: a batch containing one is answered 400.
    pub bad_ids: HashSet<String>,
    pub token_ttl: Duration,
    /// Providers that refuse every credential (Convai 401; KooSearch 401 even on fresh tokens).
    pub auth_fail: HashSet<ProviderKind>,
    /// Convai answers 403 on the delete path ("not enabled for this key").
    pub delete_disabled: bool,
    /// Providers that answer 403 to every chat-history call, after accepting the credentials
    /// (the key or IAM user lacks the permission).
    pub forbidden: HashSet<ProviderKind>,
    /// Providers whose chat-history API is not there for this account: 404 to every call
    /// (KooSearch with its gateway's APIG.0101, as for a wrong project).
    pub api_disabled: HashSet<ProviderKind>,
    /// Server-side limit: requests per second per provider before 429 (a sliding one-second
    /// window counting admitted calls, so a client that keeps asking still gets the limit).
    pub rate_limit: Option<u32>,
    /// The Retry-After the limits' 429s carry; `None`: none (an unpublished limit).
    pub limit_retry_after: Option<Duration>,
    /// Server-side limit: concurrent requests per provider before 429.
    pub concurrency_limit: Option<usize>,
    /// Chats whose deletion the provider confirms but does not keep: each delete of one of these
    /// IDs answers success and leaves the chat in place, this many times (then it is deleted).
    pub resurrect: std::collections::HashMap<String, u32>,
    /// 503 answers to one-chat reads (Convai's details call, KooSearch's one-chat GET).
    pub read_error_rate: f64,
    /// 503 answers to listing calls (discovery, rules, read-back listings).
    pub list_error_rate: f64,
    /// Refusals of a credential repeat it in the answer, as some APIs do ("Invalid API key
    /// provided: <key>"; KooSearch's 401 naming the token it got): forgetd must redact them.
    pub echo_secrets: bool,
    /// How KooSearch's listing pages misbehave.
    pub listing: ListingFault,
    /// A KooSearch delete whose `repo_ids` name another knowledge base than a chat's leaves the
    /// chat but counts it deleted (a confirmation that does not hold), as a provider that
    /// matched the wrong knowledge base might.
    pub repo_must_match: bool,
    /// Convai's plan quota is used up: every delete answers 429 "API usage limit exceeded for
    /// current plan." (no Retry-After), until this is turned off.
    pub plan_quota_used: bool,
    /// KooSearch refuses a `user_name` outside `[A-Za-z0-9_-]{1,64}` with 400 KOS.00010002,
    /// quoting it back ("Invalid parameter user_name: '<value>'").
    pub strict_user_name: bool,
}

/// A KooSearch listing that lies about its pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListingFault {
    #[default]
    Honest,
    /// Every `page_num` answers the first page again, with a `total` that never ends.
    SamePage,
    /// Every page is full of chats never seen before, with a `total` that never ends.
    Endless,
    /// `total` (and `pages`) say this many records, whatever there are.
    Total(u64),
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after: Duration::from_secs(2),
            hang_rate: 0.0,
            hang_for: Duration::from_secs(3600),
            reset_rate: 0.0,
            malformed_rate: 0.0,
            partial_rate: 0.0,
            bad_ids: HashSet::new(),
            token_ttl: Duration::from_secs(24 * 3600),
            auth_fail: HashSet::new(),
            delete_disabled: false,
            forbidden: HashSet::new(),
            api_disabled: HashSet::new(),
            rate_limit: None,
            limit_retry_after: Some(Duration::from_secs(1)),
            concurrency_limit: None,
            resurrect: std::collections::HashMap::new(),
            read_error_rate: 0.0,
            list_error_rate: 0.0,
            echo_secrets: false,
            listing: ListingFault::Honest,
            strict_user_name: false,
            plan_quota_used: false,
            repo_must_match: false,
        }
    }
}

/// One call the simulator received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Simulator clock, unix ms.
    pub at_ms: i64,
    pub provider: ProviderKind,
    /// "delete", "list", "token"
    pub op: &'static str,
    pub scope: String,
    /// IDs named in a delete call.
    pub ids: Vec<String>,
    pub status: u16,
    /// What the simulator did: "ok", "throttled", "error", "hang", "reset", ...
    pub fault: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct KooChat {
    pub user_name: Option<String>,
    pub repo_id: Option<String>,
    pub created_ms: i64,
    pub is_del: bool,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub convai: HashMap<String, BTreeMap<String, i64>>,
    pub koo: HashMap<String, BTreeMap<String, KooChat>>,
    pub tokens: HashMap<String, i64>,
    pub calls: Vec<CallRecord>,
    /// Chats removed, with the time (first removal only).
    pub deleted: Vec<(ProviderKind, String, String, i64)>,
    pub recent: HashMap<ProviderKind, VecDeque<i64>>,
}

pub(crate) struct SimState {
    pub inner: Mutex<Inner>,
    pub faults: Mutex<Faults>,
    pub rng: Mutex<StdRng>,
    pub clock: SharedClock,
    pub inflight: Mutex<HashMap<ProviderKind, usize>>,
    /// While set, delete answers wait (the crash test kills forgetd with an answer held back).
    pub hold_deletes: tokio::sync::watch::Sender<bool>,
    pub shutdown: CancellationToken,
    /// Off for benchmarks: a million recorded IDs would weigh on the measuring process.
    pub record_ids: std::sync::atomic::AtomicBool,
    /// (scope, id) of chats a `resurrect` delete kept and no read has shown since.
    pub kept_unread: Mutex<std::collections::HashSet<(String, String)>>,
}

/// A running simulator. Dropping it stops the servers.
pub struct Simulator {
    pub convai_url: String,
    pub koosearch_url: String,
    pub iam_url: String,
    state: Arc<SimState>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

async fn serve(
    router: axum::Router,
    bind: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    // As production servers do: no Nagle delay on small answers.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(addr)
}

impl Simulator {
    /// Starts the three servers on loopback ports chosen by the OS.
    pub async fn start(clock: SharedClock, faults: Faults, seed: u64) -> std::io::Result<Self> {
        Self::start_on(clock, faults, seed, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the three servers on `listen`: Convai on its port, KooSearch on the next and IAM
    /// on the one after (port 0: three ports the OS chooses).
    pub async fn start_on(
        clock: SharedClock,
        faults: Faults,
        seed: u64,
        listen: SocketAddr,
    ) -> std::io::Result<Self> {
        let port = |n: u16| {
            let mut a = listen;
            if a.port() != 0 {
                a.set_port(a.port().saturating_add(n));
            }
            a
        };
        let (hold_tx, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(SimState {
            inner: Mutex::new(Inner::default()),
            faults: Mutex::new(faults),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            clock,
            inflight: Mutex::new(HashMap::new()),
            hold_deletes: hold_tx,
            shutdown: CancellationToken::new(),
            record_ids: std::sync::atomic::AtomicBool::new(true),
            kept_unread: Default::default(),
        });
        let convai = serve(
            handlers::convai_router(state.clone()),
            port(0),
            state.shutdown.clone(),
        )
        .await?;
        let koo = serve(
            handlers::koosearch_router(state.clone()),
            port(1),
            state.shutdown.clone(),
        )
        .await?;
        let iam = serve(
            handlers::iam_router(state.clone()),
            port(2),
            state.shutdown.clone(),
        )
        .await?;
        Ok(Self {
            convai_url: format!("http://{convai}"),
            koosearch_url: format!("http://{koo}"),
            iam_url: format!("http://{iam}"),
            state,
        })
    }

    /// The `[providers.*]` tables pointing forgetd at this simulator: the one config builder
    /// that tests, `demo` and `forgetd simulator` share. KooSearch authenticates by IAM
    /// password and searches `applications`; both tables set a 2 s timeout. Secrets are always
    /// references: [`Secrets::Files`] writes them (mode 0600) into a directory,
    /// [`Secrets::Credentials`] names systemd credentials (`convai-api-key`, `iam-password`).
    pub fn config_toml(
        &self,
        applications: &[&str],
        secrets: Secrets<'_>,
    ) -> std::io::Result<String> {
        let (convai_key, iam_password) = match secrets {
            Secrets::Files(dir) => (
                format!(
                    "file:{}",
                    write_secret(&dir.join("convai-api-key"), CONVAI_KEY)?.display()
                ),
                format!(
                    "file:{}",
                    write_secret(&dir.join("iam-password"), IAM_PASSWORD)?.display()
                ),
            ),
            Secrets::Credentials => (
                "credential:convai-api-key".to_string(),
                "credential:iam-password".to_string(),
            ),
        };
        let apps = applications
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(format!(
            r#"[providers.convai]
base_url = "{convai_url}"
api_key = "{convai_key}"
timeout = "2s"

[providers.koosearch]
endpoint = "{koo_url}"
project_id = "{PROJECT_ID}"
applications = [{apps}]
timeout = "2s"
[providers.koosearch.iam]
endpoint = "{iam_url}"
domain = "{IAM_DOMAIN}"
user = "{IAM_USER}"
password = "{iam_password}"
project = "{IAM_PROJECT}"
"#,
            convai_url = self.convai_url,
            koo_url = self.koosearch_url,
            iam_url = self.iam_url,
        ))
    }

    /// [`Simulator::config_toml`] with secret files in `secrets`, parsed: the defaults plus
    /// both providers. Callers adjust what their scenario needs (`provider_mut`,
    /// `remove_provider`, `database`).
    pub fn config(&self, secrets: &Path, applications: &[&str]) -> std::io::Result<Config> {
        let text = self.config_toml(applications, Secrets::Files(secrets))?;
        Ok(Config::parse(&text, "simulator config").expect("the simulator writes a valid config"))
    }

    /// A whole configuration for `forgetd run` against this simulator, for rehearsal: secrets as
    /// systemd credentials (`convai-api-key`, `iam-password`, `audit-key`), so the same file works
    /// under the unit (install the three files as credentials) and by hand
    /// (`CREDENTIALS_DIRECTORY=<dir of the files> forgetd --config F run`).
    pub fn rehearsal_config(&self, applications: &[&str]) -> String {
        self.config_toml(applications, Secrets::Credentials)
            .expect("naming credentials writes nothing")
            + "\n[audit]\nsubject_key = \"credential:audit-key\"\n"
    }

    /// Whether calls keep the IDs they named (on by default; benchmarks turn it off).
    pub fn set_record_ids(&self, on: bool) {
        self.state
            .record_ids
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_faults(&self, f: Faults) {
        *self.state.faults.lock().unwrap() = f;
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.lock().unwrap());
    }

    /// Makes every issued token expire now (as a password change would).
    pub fn expire_tokens(&self) {
        self.state.inner.lock().unwrap().tokens.clear();
    }

    /// A handle that expires every token when called (usable from another task).
    pub fn expirer(&self) -> impl Fn() + Send + Sync + 'static {
        let st = self.state.clone();
        move || st.inner.lock().unwrap().tokens.clear()
    }

    /// While on, delete calls are received (and recorded) but their answer waits.
    pub fn hold_deletes(&self, on: bool) {
        self.state.hold_deletes.send_replace(on);
    }

    pub fn add_convai_chat(&self, char_id: &str, session_id: &str, created_at: i64) {
        self.state
            .inner
            .lock()
            .unwrap()
            .convai
            .entry(char_id.into())
            .or_default()
            .insert(session_id.into(), created_at);
    }

    pub fn add_koosearch_chat(
        &self,
        app: &str,
        chat_id: &str,
        user_name: Option<&str>,
        repo_id: Option<&str>,
        created_at: i64,
    ) {
        self.state
            .inner
            .lock()
            .unwrap()
            .koo
            .entry(app.into())
            .or_default()
            .insert(
                chat_id.into(),
                KooChat {
                    user_name: user_name.map(str::to_string),
                    repo_id: repo_id.map(str::to_string),
                    created_ms: created_at * 1000,
                    is_del: false,
                },
            );
    }

    /// Every token IAM issued that is still known (tests check none of them leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state
            .inner
            .lock()
            .unwrap()
            .tokens
            .keys()
            .cloned()
            .collect()
    }

    /// Whether a chat still exists ([`Simulator::exists`] by key).
    pub fn has(&self, chat: &ChatKey) -> bool {
        self.exists(chat.provider, &chat.scope, &chat.session_id)
    }

    /// Whether a chat still exists.
    pub fn exists(&self, provider: ProviderKind, scope: &str, id: &str) -> bool {
        let inner = self.state.inner.lock().unwrap();
        match provider {
            ProviderKind::CONVAI => inner.convai.get(scope).is_some_and(|m| m.contains_key(id)),
            ProviderKind::KOOSEARCH => inner
                .koo
                .get(scope)
                .and_then(|m| m.get(id))
                .is_some_and(|c| !c.is_del),
            // The simulator plays Convai and KooSearch only.
            _ => false,
        }
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state.inner.lock().unwrap().calls.clone()
    }

    /// Every chat named in any delete call.
    pub fn named_in_deletes(&self) -> HashSet<ChatKey> {
        let inner = self.state.inner.lock().unwrap();
        inner
            .calls
            .iter()
            .filter(|c| c.op == "delete")
            .flat_map(|c| {
                c.ids
                    .iter()
                    .map(move |id| ChatKey::new(c.provider, &c.scope, id))
            })
            .collect()
    }

    /// Chats the simulator removed, with when.
    pub fn deleted(&self) -> Vec<(ProviderKind, String, String, i64)> {
        self.state.inner.lock().unwrap().deleted.clone()
    }

    /// Chats still present per provider.
    pub fn remaining(&self, provider: ProviderKind) -> usize {
        let inner = self.state.inner.lock().unwrap();
        match provider {
            ProviderKind::CONVAI => inner.convai.values().map(|m| m.len()).sum(),
            ProviderKind::KOOSEARCH => inner
                .koo
                .values()
                .flat_map(|m| m.values())
                .filter(|c| !c.is_del)
                .count(),
            _ => 0,
        }
    }
}
