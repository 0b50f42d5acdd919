//! HTTP plumbing the provider clients share: one reqwest client per provider (rustls, timeouts,
//! `forgetd/<version>` user agent), sensitive secret headers, Retry-After parsing, and bounded
//! reading of answers so a huge error body cannot fill memory or a log line.

use std::time::{Duration, UNIX_EPOCH};

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

/// Retry-After as seconds or an HTTP date (all three formats of RFC 9110: IMF-fixdate,
/// RFC 850, asctime, read by `httpdate`), measured from `now_ms`, the injected clock's time, so a
/// date is waited out on the same clock as everything else. A date in the past is zero.
pub fn retry_after(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    let text = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let now = UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
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

/// Reads a response body up to `limit` bytes, cleaned of every secret `redact` knows before
/// anyone reads it ([`crate::redact`]). A transport failure mid-body is retryable.
pub async fn read_body(
    provider: ProviderKind,
    operation: Operation,
    mut resp: reqwest::Response,
    limit: usize,
    redact: &crate::redact::Redactor,
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
            Ok(None) => return Ok(redact.clean(body)),
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
    fn retry_after_reads_seconds_and_all_three_http_date_forms_on_the_given_clock() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, 0), Some(Duration::from_secs(7)));
        // 1994-11-06T08:49:37Z, 60 s before each date below.
        let now_ms = 784_111_777_000;
        for date in [
            "Sun, 06 Nov 1994 08:50:37 GMT",
            "Sunday, 06-Nov-94 08:50:37 GMT",
            "Sun Nov  6 08:50:37 1994",
        ] {
            h.insert("retry-after", HeaderValue::from_static(date));
            assert_eq!(
                retry_after(&h, now_ms),
                Some(Duration::from_secs(60)),
                "{date}"
            );
        }
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            retry_after(&h, now_ms + 5_000),
            Some(Duration::ZERO),
            "past"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now_ms), None);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
