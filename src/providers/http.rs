//! HTTP plumbing the provider clients share: one reqwest client per provider (rustls, timeouts,
//! `forgetd/<version>` user agent), sensitive secret headers, Retry-After parsing, and bounded
//! reading of answers so a huge error body cannot fill memory or a log line.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::{Action, Operation, ProviderError};
use crate::model::ProviderKind;

pub const USER_AGENT: &str = concat!("forgetd/", env!("CARGO_PKG_VERSION"));

/// How much of an answer body is kept for errors.
pub const DETAIL_LEN: usize = 300;
/// The most a non-listing answer may be.
pub const MAX_BODY: usize = 1 << 20;

pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        // Never follow a redirect with our secret headers to somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// A header value carrying a secret: marked sensitive so reqwest/hyper never print it.
pub fn secret_header(secret: &SecretString) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(secret.expose_secret()).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Retry-After as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(text)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate(text: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT" → RFC 3339 for humantime.
    let parts: Vec<&str> = text.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = match parts[2] {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let rfc = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
    humantime::parse_rfc3339(&rfc).ok()
}

/// Truncates text for an error message, on a char boundary.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Reads a response body up to `limit` bytes. A transport failure mid-body is retryable.
pub async fn read_body(
    provider: ProviderKind,
    operation: Operation,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ProviderError> {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(ProviderError::new(
                        provider,
                        operation,
                        Action::Retry,
                        format!("answer larger than {limit} bytes"),
                    )
                    .with_status(status));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport(provider, operation, e).with_status(status)),
        }
    }
}

/// A transport-level failure (connect, reset, timeout): always retryable.
pub fn transport(provider: ProviderKind, operation: Operation, e: reqwest::Error) -> ProviderError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the answer"
    } else {
        "transport error"
    };
    // reqwest's Display can include the URL, which holds no secret here (secrets are headers).
    ProviderError::new(provider, operation, Action::Retry, what).with_source(e.without_url())
}

/// A retryable error for an answer we could not understand; keeps the body, truncated.
pub fn unparseable(
    provider: ProviderKind,
    operation: Operation,
    status: u16,
    body: &[u8],
    why: impl std::fmt::Display,
) -> ProviderError {
    ProviderError::new(
        provider,
        operation,
        Action::Retry,
        format!(
            "unparseable answer (HTTP {status}: {why}): {}",
            truncate(&String::from_utf8_lossy(body), DETAIL_LEN)
        ),
    )
    .with_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
