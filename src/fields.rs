//! One configuration value, checked: durations, service URLs, secret references, required text,
//! bounded integers. Shared by the core sections (`config`) and each provider's own table
//! (`providers/*/config.rs`), so both say a problem the same way.
//!
//! Rules:
//! - A checker never stops at a problem: it pushes a sentence naming the key (its full path,
//!   `providers.convai.timeout`) onto [`Problems`] and returns a default or `None`, so that
//!   validation reports every problem of a file at once.
//! - A message says what was expected and, where there is a likely fix, the fix.
//! - A secret's value is never read here (references are parsed, not resolved) and never echoed.
//!
//! A leaf: it imports nothing from forgetd but [`crate::secret`].

use std::time::Duration;

use url::Url;

use crate::secret::SecretRef;

/// The problems found so far, one sentence each.
pub type Problems = Vec<String>;

/// A humantime duration longer than zero; absent: `default`.
pub fn duration(p: &mut Problems, key: &str, value: Option<&str>, default: Duration) -> Duration {
    match value {
        None => default,
        Some(text) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.push(format!("`{key}` = \"{text}\": must be longer than zero"));
                default
            }
            Err(e) => {
                p.push(format!(
                    "`{key}` = \"{text}\" is not a duration ({e}); write e.g. \"30s\", \"5m\", \"30d\""
                ));
                default
            }
        },
    }
}

/// A required secret reference (`env:`, `file:`, `credential:`); a literal is refused unechoed.
pub fn secret(p: &mut Problems, key: &str, value: Option<&str>) -> Option<SecretRef> {
    match value {
        None => {
            p.push(format!(
                "`{key}` is required (env:NAME, file:/path or credential:NAME)"
            ));
            None
        }
        Some(v) => match SecretRef::parse(v) {
            Ok(r) => Some(r),
            Err(e) => {
                p.push(format!("`{key}`: {e}"));
                None
            }
        },
    }
}

/// A required service URL (see [`parse_service_url`]).
pub fn url(p: &mut Problems, key: &str, value: Option<&str>) -> Option<Url> {
    match value {
        None => {
            p.push(format!("`{key}` is required"));
            None
        }
        Some(v) => match parse_service_url(v) {
            Ok(u) => Some(u),
            Err(e) => {
                p.push(format!("`{key}`: {e}"));
                None
            }
        },
    }
}

/// Required, non-blank text; absent or blank: a problem and an empty string.
pub fn required(p: &mut Problems, key: &str, value: Option<String>) -> String {
    match value {
        Some(v) if !v.trim().is_empty() => v,
        _ => {
            p.push(format!("`{key}` is required"));
            String::new()
        }
    }
}

/// An integer in `1..=max`; absent: `default`.
pub fn positive(
    p: &mut Problems,
    key: &str,
    value: Option<i64>,
    default: usize,
    max: usize,
) -> usize {
    match value {
        None => default,
        Some(n) if n >= 1 && (n as u64) <= max as u64 => n as usize,
        Some(n) => {
            p.push(format!("`{key}` = {n}: must be between 1 and {max}"));
            default
        }
    }
}

/// Parses a provider URL: https, or http on a loopback host only; no credentials in it.
pub fn parse_service_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(format!(
                "\"{text}\": http:// is accepted only for loopback hosts; use https://"
            ));
        }
        other => {
            return Err(format!(
                "\"{text}\": scheme {other}:// is not supported; use https://"
            ));
        }
    }
    if url.host().is_none() {
        return Err(format!("\"{text}\" has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "\"{text}\": credentials in the URL are not accepted"
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_refused_except_on_loopback() {
        assert!(parse_service_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_service_url("http://localhost:1").is_ok());
        assert!(parse_service_url("http://[::1]:1").is_ok());
        assert!(parse_service_url("http://api.convai.com").is_err());
        assert!(parse_service_url("https://api.convai.com").is_ok());
        assert!(parse_service_url("https://u:p@api.convai.com").is_err());
        assert!(parse_service_url("ftp://x").is_err());
    }

    #[test]
    fn every_checker_names_its_key_and_keeps_going() {
        let mut p = Problems::new();
        assert_eq!(
            duration(&mut p, "a.t", Some("soon"), Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(positive(&mut p, "a.n", Some(0), 7, 10), 7);
        assert!(secret(&mut p, "a.k", Some("sk-literal-123")).is_none());
        assert!(url(&mut p, "a.u", None).is_none());
        assert_eq!(required(&mut p, "a.r", Some("  ".into())), "");
        assert_eq!(p.len(), 5, "{p:?}");
        for (m, key) in p.iter().zip(["a.t", "a.n", "a.k", "a.u", "a.r"]) {
            assert!(m.contains(&format!("`{key}`")), "{m}");
        }
        assert!(!p[2].contains("sk-literal-123"));
    }
}

/// A moment as unix seconds, from unix seconds (`1767225600`) or RFC 3339 with `Z` or an offset
/// (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00+01:00`; a space for the `T` and no zone, read
/// as UTC, are accepted too). Times before 1970 are refused.
pub fn unix_seconds(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let secs = if let Ok(n) = t.parse::<i64>() {
        n
    } else if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        d.timestamp()
    } else if let Ok(d) = humantime::parse_rfc3339_weak(t) {
        match d.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(_) => -1,
        }
    } else {
        return Err(format!(
            "\"{text}\" is not a time: give unix seconds or RFC 3339 (2026-01-31T12:00:00Z, 2026-01-31T13:00:00+01:00)"
        ));
    };
    if secs < 0 {
        return Err(format!("\"{text}\" is before 1970"));
    }
    Ok(secs)
}

#[cfg(test)]
mod time_tests {
    use super::unix_seconds;

    #[test]
    fn unix_seconds_and_rfc3339_with_any_offset_name_the_same_moment() {
        let m = 1_767_225_600; // 2026-01-01T00:00:00Z
        for t in [
            "1767225600",
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00+01:00",
            "2025-12-31T19:00:00-05:00",
            "2026-01-01 00:00:00",
            " 2026-01-01T00:00:00Z ",
        ] {
            assert_eq!(unix_seconds(t), Ok(m), "{t}");
        }
        assert!(
            unix_seconds("yesterday")
                .unwrap_err()
                .contains("not a time")
        );
        assert!(
            unix_seconds("1969-12-31T23:59:59Z")
                .unwrap_err()
                .contains("before 1970")
        );
        assert!(unix_seconds("-5").is_err());
    }
}

/// Deserializes one table of the config (`prefix` is its path: `retry`, `rules[2]`,
/// `providers.koosearch`): every key no field takes is a problem named by its full path; a value
/// of the wrong type is a problem too, and the table reads as `None`, so the caller goes on and
/// every other table's problems are reported with it.
pub fn table<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    prefix: &str,
    p: &mut Problems,
) -> Option<T> {
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(toml::Value::Table(table), |path| {
        unknown.push(format!("unknown key `{prefix}.{}`", key_path(&path)))
    });
    p.extend(unknown);
    match parsed {
        Ok(t) => Some(t),
        Err(e) => {
            // toml says `invalid type: string "20", expected i64\nin `max_attempts``: name the key
            // by its full path, as every other problem does.
            let text = e.to_string();
            match text.trim_end().rsplit_once("\nin `") {
                Some((what, key)) => {
                    p.push(format!("`{prefix}.{}`: {what}", key.trim_end_matches('`')))
                }
                None => p.push(format!("`{prefix}`: {}", text.trim_end())),
            }
            None
        }
    }
}

/// serde_ignored's path as `iam.pasword` or `rules[0].name`.
pub fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}
