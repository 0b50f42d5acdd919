//! The X-Auth-Token KooSearch needs: a fixed token, or a Huawei IAM token from password auth.
//!
//! IAM: `POST {iam}/v3/auth/tokens` (password method, project scope) → 201, the token in the
//! `X-Subject-Token` header, `token.expires_at` in the body. Tokens live 24 h; the cached one is
//! refreshed ahead of expiry (a tenth of its life, at most 10 minutes early) and on demand after a
//! 401 (`invalidate`). Refreshes are serialized by one async mutex, so however many batches need a
//! token at once, one request goes to IAM and the rest reuse its answer. The IAM call passes the
//! provider's gate under the pass of the call that needs the token (Huawei's gateway throttles a
//! user across APIs).
//!
//! Never logged or put in an error: the token, the password, the IAM request body.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use std::sync::Arc;

use super::IamConfig;
use crate::model::ProviderKind;
use crate::providers::gate::{Gate, Pass};
use crate::providers::http::{self, MAX_BODY};
use crate::providers::{Action, Operation, ProviderError};

const KIND: ProviderKind = ProviderKind::KOOSEARCH;
const MAX_EARLY_MS: i64 = 10 * 60 * 1000;

struct Cached {
    token: SecretString,
    expires_ms: i64,
    refresh_at_ms: i64,
}

pub enum TokenSource {
    Fixed(SecretString),
    Iam(Box<IamTokens>),
}

pub struct IamTokens {
    http: reqwest::Client,
    config: IamConfig,
    password: SecretString,
    gate: Arc<Gate>,
    cache: tokio::sync::Mutex<Option<Cached>>,
    refreshes: AtomicU64,
    /// The provider's: learns each token as it is issued.
    redact: crate::redact::Redactor,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    expires_at: String,
}

impl TokenSource {
    pub fn iam(
        http: reqwest::Client,
        config: IamConfig,
        password: SecretString,
        gate: Arc<Gate>,
        redact: crate::redact::Redactor,
    ) -> Self {
        Self::Iam(Box::new(IamTokens {
            http,
            config,
            password,
            gate,
            cache: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
            redact,
        }))
    }

    /// A token valid for now (fetching or refreshing one under `pass` if needed).
    pub async fn token(&self, pass: &mut Pass) -> Result<SecretString, ProviderError> {
        match self {
            Self::Fixed(t) => Ok(t.clone()),
            Self::Iam(iam) => iam.token(pass).await,
        }
    }

    /// Forgets `stale` after the provider refused it, so the next `token()` fetches a new one.
    /// Returns false for a fixed token (nothing to refresh).
    pub async fn invalidate(&self, stale: &SecretString) -> bool {
        match self {
            Self::Fixed(_) => false,
            Self::Iam(iam) => {
                let mut cache = iam.cache.lock().await;
                if cache
                    .as_ref()
                    .is_some_and(|c| c.token.expose_secret() == stale.expose_secret())
                {
                    *cache = None;
                }
                true
            }
        }
    }

    /// For `forgetd doctor`: what fetching a token asks IAM (no secret), and IAM's address;
    /// `None` for a fixed token.
    pub fn describe(&self) -> Option<(String, String)> {
        match self {
            Self::Fixed(_) => None,
            Self::Iam(iam) => {
                let c = &iam.config;
                Some((
                    format!(
                        "fetch an IAM token for user {} of account {} in project {} (POST /v3/auth/tokens)",
                        c.user, c.domain, c.project
                    ),
                    c.endpoint.to_string(),
                ))
            }
        }
    }

    /// How many tokens were fetched from IAM.
    pub fn refreshes(&self) -> u64 {
        match self {
            Self::Fixed(_) => 0,
            Self::Iam(iam) => iam.refreshes.load(Ordering::Relaxed),
        }
    }
}

impl IamTokens {
    async fn token(&self, pass: &mut Pass) -> Result<SecretString, ProviderError> {
        let mut cache = self.cache.lock().await;
        let now = self.gate.clock().now_ms();
        if let Some(c) = cache.as_ref()
            && now < c.refresh_at_ms
            && now < c.expires_ms
        {
            return Ok(c.token.clone());
        }
        let fresh = pass.call(Operation::Token, self.fetch(now)).await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self, now_ms: i64) -> Result<Cached, ProviderError> {
        let op = Operation::Token;
        let c = &self.config;
        let body = serde_json::json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {
                        "name": c.user,
                        "password": self.password.expose_secret(),
                        "domain": {"name": c.domain}
                    }}
                },
                "scope": {"project": {"name": c.project}}
            }
        });
        let mut url = c.endpoint.clone();
        let path = format!("{}/v3/auth/tokens", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let resp = self
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::transport(KIND, op, e))?;
        drop(body);
        let status = resp.status();
        let headers = resp.headers().clone();
        // The token arrives in a header; learnt before the body is read, so an answer that also
        // repeats it in the body is cleaned of it.
        if let Some(t) = headers
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            self.redact
                .learn_rotating(&SecretString::from(t.to_string()));
        }
        let answer = http::read_body(KIND, op, resp, MAX_BODY, &self.redact).await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            // The answer body is not repeated: IAM errors may echo what was sent.
            let code = status.as_u16();
            let action = match code {
                400 | 401 | 403 => Action::Pause(format!(
                    "Huawei IAM refused the credentials of user \"{}\" in domain \"{}\" for project \"{}\" (HTTP {code}); check providers.koosearch.iam",
                    c.user, c.domain, c.project
                )),
                429 => http::retry_after(&headers, self.gate.clock().now_ms())
                    .map(Action::RetryAfter)
                    .unwrap_or(Action::Throttled),
                404 => Action::Pause(format!(
                    "Huawei IAM answered 404 at {}: check providers.koosearch.iam.endpoint",
                    c.endpoint
                )),
                _ => Action::Retry,
            };
            return Err(
                ProviderError::new(KIND, op, action, format!("HTTP {code} from IAM"))
                    .with_status(code),
            );
        }
        let token = headers
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| SecretString::from(v.to_string()))
            .ok_or_else(|| {
                ProviderError::new(
                    KIND,
                    op,
                    Action::Retry,
                    "IAM answered without an X-Subject-Token header",
                )
                .with_status(status.as_u16())
            })?;
        let info: TokenBody = serde_json::from_slice(&answer).map_err(|e| {
            ProviderError::new(KIND, op, Action::Retry, "IAM token body unreadable")
                .with_status(status.as_u16())
                .with_source(e)
        })?;
        let expires_ms = chrono::DateTime::parse_from_rfc3339(&info.token.expires_at)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                ProviderError::new(
                    KIND,
                    op,
                    Action::Retry,
                    format!("IAM expires_at \"{}\" unreadable", info.token.expires_at),
                )
                .with_status(status.as_u16())
                .with_source(e)
            })?;
        let life = (expires_ms - now_ms).max(0);
        let refresh_at_ms = expires_ms - (life / 10).min(MAX_EARLY_MS);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            provider = "koosearch",
            expires_in_s = life / 1000,
            "fetched an IAM token"
        );
        Ok(Cached {
            token,
            expires_ms,
            refresh_at_ms,
        })
    }
}
