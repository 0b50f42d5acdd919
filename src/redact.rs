//! Redaction of secrets from what providers say: every answer body is cleaned of every secret
//! this process sends (an API key, an IAM password, an IAM token, a fixed token) before anything
//! parses, logs, stores, audits or shows it. A provider that echoes a secret back ("Invalid API
//! key provided: <key>") must not put it in the journal, `status`, the status page, the
//! database's last errors or the append-only audit trail.
//!
//! Rules:
//! - Each provider owns one [`Redactor`] and teaches it every secret it will send, as it gets
//!   them (tokens are learnt when issued). The HTTP layer ([`crate::providers::http::read_body`])
//!   cleans each body with it; nothing reads an unclean body.
//! - Each secret is matched in the forms an answer may carry it: as is, JSON-escaped,
//!   percent-encoded, and base64 (standard and URL-safe, padded or not). A match becomes
//!   `[redacted]`.
//! - Secrets shorter than [`MIN_LEN`] bytes are not matched (they would redact ordinary words);
//!   the config's checks refuse such secrets for the providers anyway.

use std::sync::{Arc, RwLock};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

/// Shorter secrets are not matched.
pub const MIN_LEN: usize = 6;

/// What a secret becomes.
pub const MARK: &str = "[redacted]";

/// The secrets one provider sends, in every form an answer may echo them.
#[derive(Clone, Default)]
pub struct Redactor {
    forms: Arc<RwLock<Vec<SecretString>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.forms.read().map(|f| f.len()).unwrap_or(0);
        write!(f, "Redactor({n} form(s), [redacted])")
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// A redactor that knows `secrets` already.
    pub fn knowing<'a>(secrets: impl IntoIterator<Item = &'a SecretString>) -> Self {
        let r = Self::new();
        for s in secrets {
            r.learn(s);
        }
        r
    }

    /// Teaches it one more secret (a token just issued, say).
    pub fn learn(&self, secret: &SecretString) {
        let raw = secret.expose_secret();
        if raw.len() < MIN_LEN {
            return;
        }
        let json = serde_json::to_string(raw).expect("a string serializes");
        let json = json[1..json.len() - 1].to_string();
        let mut forms = vec![
            raw.to_string(),
            json.clone(),
            json.replace('/', "\\/"),
            percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        ];
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            forms.push(engine.encode(raw));
        }
        let mut known = self.forms.write().unwrap_or_else(|e| e.into_inner());
        for f in forms {
            if f.len() >= MIN_LEN && !known.iter().any(|k| k.expose_secret() == f) {
                known.push(SecretString::from(f));
            }
        }
        // Longest first: a form that contains another is replaced whole.
        known.sort_by_key(|k| std::cmp::Reverse(k.expose_secret().len()));
    }

    /// `bytes` with every known form of every secret replaced by [`MARK`].
    pub fn clean(&self, bytes: Vec<u8>) -> Vec<u8> {
        let known = self.forms.read().unwrap_or_else(|e| e.into_inner());
        let mut out = bytes;
        for form in known.iter() {
            let needle = form.expose_secret().as_bytes();
            if memchr::memmem::find(&out, needle).is_none() {
                continue;
            }
            let mut next = Vec::with_capacity(out.len());
            let mut rest = &out[..];
            while let Some(at) = memchr::memmem::find(rest, needle) {
                next.extend_from_slice(&rest[..at]);
                next.extend_from_slice(MARK.as_bytes());
                rest = &rest[at + needle.len()..];
            }
            next.extend_from_slice(rest);
            out = next;
        }
        out
    }

    /// [`Redactor::clean`] for text.
    pub fn clean_str(&self, text: &str) -> String {
        String::from_utf8(self.clean(text.as_bytes().to_vec()))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn every_form_of_a_secret_is_redacted_and_nothing_else() {
        let key = "sk-live/AbC+123\"xyz";
        let r = Redactor::knowing([&secret(key)]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        let body = format!(
            r#"{{"error":"Invalid API key provided: {}","raw":"{key}","url":"?k={}","b64":"{b64}","u":"{url}","slash":"{}"}}"#,
            serde_json::to_string(key).unwrap().trim_matches('"'),
            percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC),
            serde_json::to_string(key)
                .unwrap()
                .trim_matches('"')
                .replace('/', "\\/"),
        );
        let clean = r.clean_str(&body);
        for form in [key, &b64, &url, "AbC+123", "sk-live"] {
            assert!(!clean.contains(form), "{form} left in {clean}");
        }
        assert_eq!(clean.matches(MARK).count(), 6, "{clean}");
        assert!(clean.starts_with(r#"{"error":"Invalid API key provided: [redacted]""#));
        // Text without the secret is untouched.
        assert_eq!(r.clean_str("all fine"), "all fine");
    }

    #[test]
    fn secrets_learnt_later_are_redacted_too_and_short_ones_are_not_matched() {
        let r = Redactor::new();
        assert_eq!(r.clean_str("token abcdefgh"), "token abcdefgh");
        r.learn(&secret("abcdefgh"));
        r.learn(&secret("abc"));
        assert_eq!(r.clean_str("token abcdefgh, abc"), "token [redacted], abc");
        assert!(!format!("{r:?}").contains("abcdefgh"));
    }
}
