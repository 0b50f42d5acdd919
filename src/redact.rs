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
//! - Each secret is matched in the forms an answer may carry it: as is, JSON-escaped (with and
//!   without `\/` and the HTML-safe `\u0026`-style escapes), percent-encoded (every
//!   non-alphanumeric, or RFC 3986's unreserved left alone; upper- or lower-case hex), and base64
//!   (standard and URL-safe, padded or not). A match becomes `[redacted]`.
//! - Rotating secrets (IAM tokens) are kept for the last [`ROTATING_KEPT`] only.
//! - Secrets shorter than [`MIN_LEN`] bytes are not matched (they would redact ordinary words);
//!   the config's checks refuse such secrets for the providers anyway.

use std::sync::{Arc, RwLock};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

/// Shorter secrets are not matched.
pub const MIN_LEN: usize = 6;

/// What a secret becomes.
pub const MARK: &str = "[redacted]";

/// How many rotating secrets (IAM tokens) are kept: the current one and the one before it, which
/// an answer to a call made just before the rotation may still echo.
pub const ROTATING_KEPT: usize = 2;

/// The secrets one provider sends, in every form an answer may echo them.
#[derive(Clone, Default)]
pub struct Redactor {
    known: Arc<RwLock<Known>>,
}

#[derive(Default)]
struct Known {
    /// Forms of the secrets that do not change (keys, passwords, a fixed token).
    fixed: Vec<SecretString>,
    /// Forms of each rotating secret, newest last, at most [`ROTATING_KEPT`].
    rotating: std::collections::VecDeque<Vec<SecretString>>,
    /// Every form above, longest first (a form that contains another is replaced whole).
    all: Vec<SecretString>,
}

impl Known {
    fn rebuild(&mut self) {
        let mut all: Vec<SecretString> = Vec::new();
        for f in self.fixed.iter().chain(self.rotating.iter().flatten()) {
            if !all.iter().any(|k| k.expose_secret() == f.expose_secret()) {
                all.push(f.clone());
            }
        }
        all.sort_by_key(|k| std::cmp::Reverse(k.expose_secret().len()));
        self.all = all;
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.known.read().map(|k| k.all.len()).unwrap_or(0);
        write!(f, "Redactor({n} form(s), [redacted])")
    }
}

/// Every form an answer may carry `raw` in.
fn forms_of(raw: &str) -> Vec<SecretString> {
    let json = serde_json::to_string(raw).expect("a string serializes");
    let json = json[1..json.len() - 1].to_string();
    // URL encoders differ in what they leave alone (`-._~` by RFC 3986) and in the case of
    // their hex digits; JSON encoders in whether they escape `/` and the HTML-unsafe `<>&'`.
    const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let mut forms = vec![raw.to_string(), json.replace('/', "\\/")];
    let html_safe = json
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027");
    forms.push(html_safe);
    forms.push(json);
    for set in [percent_encoding::NON_ALPHANUMERIC, COMPONENT] {
        let upper = percent_encoding::utf8_percent_encode(raw, set).to_string();
        let lower = lower_hex_escapes(&upper);
        forms.push(upper);
        forms.push(lower);
    }
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        forms.push(engine.encode(raw));
    }
    forms
        .into_iter()
        .filter(|f| f.len() >= MIN_LEN)
        .map(SecretString::from)
        .collect()
}

/// `%2F` as `%2f`: the hex digits of percent escapes in lower case.
fn lower_hex_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut left = 0;
    for c in encoded.chars() {
        if c == '%' {
            left = 2;
            out.push(c);
        } else if left > 0 {
            left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
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

    /// Teaches it a secret that does not change (an API key, a password, a fixed token).
    pub fn learn(&self, secret: &SecretString) {
        let raw = secret.expose_secret();
        if raw.len() < MIN_LEN {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        known.fixed.extend(forms_of(raw));
        known.rebuild();
    }

    /// Teaches it a secret that replaces an earlier one (an IAM token just issued): the last
    /// [`ROTATING_KEPT`] are matched, so a daemon that runs for years does not search every answer
    /// for every token it was ever given.
    pub fn learn_rotating(&self, secret: &SecretString) {
        let raw = secret.expose_secret();
        if raw.len() < MIN_LEN {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        let forms = forms_of(raw);
        if known
            .rotating
            .back()
            .is_some_and(|last| last[0].expose_secret() == raw)
        {
            return;
        }
        known.rotating.push_back(forms);
        while known.rotating.len() > ROTATING_KEPT {
            known.rotating.pop_front();
        }
        known.rebuild();
    }

    /// `bytes` with every known form of every secret replaced by [`MARK`].
    pub fn clean(&self, bytes: Vec<u8>) -> Vec<u8> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        let mut out = bytes;
        for form in known.all.iter() {
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

    #[test]
    fn url_and_html_safe_json_forms_are_redacted_too() {
        let pw = "p&ss/w<rd>~x.y";
        let r = Redactor::knowing([&secret(pw)]);
        for form in [
            "p%26ss%2Fw%3Crd%3E~x.y",
            "p%26ss%2fw%3crd%3e~x.y",
            "p%26ss%2Fw%3Crd%3E%7Ex%2Ey",
            "p\\u0026ss/w\\u003crd\\u003e~x.y",
        ] {
            assert_eq!(
                r.clean_str(&format!("got {form}!")),
                "got [redacted]!",
                "{form}"
            );
        }
    }

    #[test]
    fn only_the_last_rotating_secrets_are_kept_and_fixed_ones_stay() {
        let r = Redactor::knowing([&secret("the-api-key")]);
        for n in 0..100 {
            r.learn_rotating(&secret(&format!("token-{n:04}")));
        }
        let answer = "token-0098 token-0099 token-0097 the-api-key";
        assert_eq!(
            r.clean_str(answer),
            "[redacted] [redacted] token-0097 [redacted]"
        );
        // Three secrets' forms, not a hundred and one.
        let forms = r.known.read().unwrap().all.len();
        assert!(forms <= 3 * 12, "{forms}");
    }
}
