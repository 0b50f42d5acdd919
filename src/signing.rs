//! Signed certificates: an Ed25519 signature over a certificate's canonical JSON, checkable
//! offline by anyone holding the public key (`forgetd certificate verify FILE --public-key KEY`),
//! with no database and no forgetd configuration.
//!
//! Rules:
//! - The key is `[audit] signing_key` (a secret reference to a 32-byte seed) or, when not
//!   configured, a key file beside the database (`<db>.signing-key`, created at first use, 0600,
//!   never followed through a link) — the same handling as the subject key. The public key is
//!   what an organisation publishes (`forgetd audit public-key`).
//! - Canonical JSON: object keys sorted at every depth, no insignificant whitespace, serde_json's
//!   number and string encoding. Any change of a value changes the bytes; key order and spacing
//!   in the file do not matter.
//! - A signed document is `{"certificate": {...}, "signature": {"algorithm": "Ed25519",
//!   "public_key": HEX, "value": HEX}}`. Verification trusts only the key it is given: the
//!   embedded `public_key` must equal it, so a forger cannot ship their own.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, Verifier};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::audit::KeyError;
use crate::secret::SecretRef;

pub const ALGORITHM: &str = "Ed25519";

/// Signs certificates.
pub struct CertSigner(ed25519_dalek::SigningKey);

impl std::fmt::Debug for CertSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertSigner(public {})", self.public_key_hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the signing key {what} must be exactly 32 bytes (an Ed25519 seed), not {len}")]
    Length { what: String, len: usize },
}

impl CertSigner {
    /// `[audit] signing_key` when configured, or the key file beside the database `db`.
    pub fn load(configured: Option<&SecretRef>, db: Option<&Path>) -> Result<Self, SigningError> {
        let (what, bytes) = match configured {
            Some(r) => {
                let b = r.read_bytes().map_err(KeyError::from)?;
                (r.to_string(), b.expose_secret().to_vec())
            }
            None => {
                let db = db.ok_or(KeyError::NotConfigured {
                    setting: "signing_key",
                })?;
                let path = Self::key_path(db);
                let b = crate::audit::read_or_create_key(&path)?;
                (path.display().to_string(), b)
            }
        };
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SigningError::Length {
                what,
                len: bytes.len(),
            })?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn key_path(db: &Path) -> PathBuf {
        let mut p = db.as_os_str().to_owned();
        p.push(".signing-key");
        PathBuf::from(p)
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    /// The signed document for `certificate` (any serializable value).
    pub fn sign<T: Serialize>(&self, certificate: &T) -> serde_json::Result<Signed> {
        let value = serde_json::to_value(certificate)?;
        let signature = self.0.sign(canonical(&value).as_bytes());
        Ok(Signed {
            certificate: value,
            signature: SignatureBlock {
                algorithm: ALGORITHM.into(),
                public_key: self.public_key_hex(),
                value: hex::encode(signature.to_bytes()),
            },
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub certificate: serde_json::Value,
    pub signature: SignatureBlock,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    pub algorithm: String,
    pub public_key: String,
    pub value: String,
}

/// Why a signed certificate does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a signed forgetd certificate (expected {{\"certificate\", \"signature\"}}): {0}")]
    Shape(#[source] serde_json::Error),
    #[error("the signature's algorithm is {0:?}, not Ed25519")]
    Algorithm(String),
    #[error(
        "the public key given is not 64 hex characters (an Ed25519 key, as `forgetd audit public-key` prints it)"
    )]
    BadKey,
    #[error(
        "signed with another key ({embedded}) than the one given ({given}): not this organisation's certificate"
    )]
    OtherKey { embedded: String, given: String },
    #[error("the signature is not 128 hex characters")]
    BadSignature,
    #[error(
        "the signature does not match the certificate: it was edited after signing, or signed by another key"
    )]
    Mismatch(#[source] ed25519_dalek::SignatureError),
}

/// Checks a signed certificate's text against `public_key_hex`. A key written twice in one
/// object is refused: JSON readers disagree on which one counts, so the signed text and what a
/// reader shows could differ.
pub fn verify(text: &str, public_key_hex: &str) -> Result<Signed, VerifyError> {
    let strict: Strict = serde_json::from_str(text).map_err(VerifyError::Shape)?;
    let signed: Signed = serde_json::from_value(strict.0).map_err(VerifyError::Shape)?;
    if signed.signature.algorithm != ALGORITHM {
        return Err(VerifyError::Algorithm(signed.signature.algorithm));
    }
    let given = public_key_hex.trim().to_ascii_lowercase();
    let key_bytes: [u8; 32] = hex::decode(&given)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::BadKey)?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).map_err(|_| VerifyError::BadKey)?;
    if signed.signature.public_key.to_ascii_lowercase() != given {
        return Err(VerifyError::OtherKey {
            embedded: signed.signature.public_key.clone(),
            given,
        });
    }
    let sig_bytes: [u8; 64] = hex::decode(&signed.signature.value)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(VerifyError::BadSignature)?;
    let signature = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    key.verify(canonical(&signed.certificate).as_bytes(), &signature)
        .map_err(VerifyError::Mismatch)?;
    Ok(signed)
}

/// A JSON value read with duplicate object keys refused.
struct Strict(serde_json::Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Strict;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Strict, E> {
                Ok(Strict(v.into()))
            }
            fn visit_unit<E>(self) -> Result<Strict, E> {
                Ok(Strict(serde_json::Value::Null))
            }
            fn visit_none<E>(self) -> Result<Strict, E> {
                Ok(Strict(serde_json::Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Strict, A::Error> {
                let mut out = Vec::new();
                while let Some(Strict(v)) = a.next_element()? {
                    out.push(v);
                }
                Ok(Strict(serde_json::Value::Array(out)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Strict, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(k) = a.next_key::<String>()? {
                    let Strict(v) = a.next_value()?;
                    if out.insert(k.clone(), v).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "the key {k:?} appears twice in one object"
                        )));
                    }
                }
                Ok(Strict(serde_json::Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The canonical JSON text of `v`: keys sorted at every depth, compact.
pub fn canonical(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json's Map keeps insertion order only with its `preserve_order` feature; the walk
    // above sorts either way, and `to_string` writes in the map's order.
    serde_json::to_string(&sorted(v)).expect("a Value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_certificate_verifies_and_any_edit_breaks_it() {
        let signer = CertSigner::from_seed([7; 32]);
        let cert = serde_json::json!({"request_id": 4, "deleted": {"convai": [{"session_id": "a", "confirmed_at": 100}]}, "state": "complete"});
        let text = serde_json::to_string_pretty(&signer.sign(&cert).unwrap()).unwrap();
        let key = signer.public_key_hex();
        assert!(verify(&text, &key).is_ok());
        // Reformatting and reordering keys keeps it valid: the signature is over canonical bytes.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(verify(&serde_json::to_string(&v).unwrap(), &key).is_ok());
        for (from, to) in [
            ("\"complete\"", "\"failed\""),
            ("100", "101"),
            ("\"a\"", "\"b\""),
            ("\"request_id\": 4", "\"request_id\": 5"),
        ] {
            assert!(text.contains(from), "{from}");
            let edited = text.replacen(from, to, 1);
            assert!(
                matches!(verify(&edited, &key), Err(VerifyError::Mismatch(_))),
                "{from} -> {to}"
            );
        }
        // Another key, shipped inside the file, is not trusted.
        let other = CertSigner::from_seed([8; 32]);
        let forged = serde_json::to_string(&other.sign(&cert).unwrap()).unwrap();
        assert!(matches!(
            verify(&forged, &key),
            Err(VerifyError::OtherKey { .. })
        ));
        assert!(matches!(verify(&forged, "zz"), Err(VerifyError::BadKey)));
        assert!(matches!(verify("{}", &key), Err(VerifyError::Shape(_))));
        // A key written twice: refused, whichever copy the signature covers.
        let twice = text.replacen(
            "\"state\": \"complete\"",
            "\"state\": \"failed\", \"state\": \"complete\"",
            1,
        );
        assert_ne!(twice, text);
        assert!(
            matches!(verify(&twice, &key), Err(VerifyError::Shape(_))),
            "duplicate key accepted"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"d": [{"z": 1, "y": 2}], "c": "x"}});
        assert_eq!(
            canonical(&v),
            r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#
        );
    }
}
