//! TLS to the PostgreSQL server, by libpq's conventions: `sslmode` and `sslrootcert` in the
//! database URL, verified with rustls (the TLS the rest of forgetd uses; no OpenSSL).
//!
//! Rules:
//! - `disable`: no TLS. `require`: TLS, the server's certificate not checked (libpq's meaning:
//!   encryption without authentication; said in the log). `verify-ca`: the chain must lead to
//!   `sslrootcert`. `verify-full`: that, and the certificate must name the host.
//! - Without `sslmode`: `disable` for a unix socket or a loopback host (nothing on the wire),
//!   `verify-full` for anything else, as forgetd takes `http://` only for loopback.
//! - `prefer` and `allow` are refused: a mode that falls back to plain text lets whoever sits on
//!   the path choose it.
//! - Without `sslrootcert`, the verifying modes trust the Mozilla roots (webpki-roots); with it,
//!   only the certificates in that PEM file.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};

use crate::store::{Result, StoreError};

/// How a connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A URL's TLS settings, taken out of it (the client library knows neither `verify-*` nor
/// `sslrootcert`), and the URL without them.
#[derive(Debug, Clone)]
pub struct Tls {
    pub mode: Mode,
    pub root_cert: Option<std::path::PathBuf>,
    pub url: String,
}

fn refuse(detail: String) -> StoreError {
    StoreError::Invalid(format!("[database] url: {detail}"))
}

/// Whether `host` (as the URL has it) is a unix socket directory or a loopback address.
fn local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.is_empty()
        || host.starts_with('/')
        || host.starts_with("%2F")
        || host.starts_with("%2f")
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads `sslmode` and `sslrootcert` out of a `postgres://` URL (see the module's rules).
pub fn parse(url: &str) -> Result<Tls> {
    let mut u = url::Url::parse(url).map_err(|e| refuse(format!("not a URL ({e})")))?;
    let mut mode = None;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                mode = Some(match v.as_ref() {
                    "disable" => Mode::Disable,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    "prefer" | "allow" => {
                        return Err(refuse(format!(
                            "sslmode={v} falls back to plain text, which whoever is on the path can force; use require, verify-ca or verify-full (or disable, knowingly)"
                        )));
                    }
                    other => return Err(refuse(format!("unknown sslmode {other}"))),
                })
            }
            "sslrootcert" => root_cert = Some(std::path::PathBuf::from(v.as_ref())),
            "host" => {
                kept.push((k.to_string(), v.to_string()));
            }
            _ => kept.push((k.to_string(), v.to_string())),
        }
    }
    let host_local = u
        .host_str()
        .map_or_else(|| kept.iter().all(|(k, v)| k != "host" || local(v)), local);
    let mode = mode.unwrap_or(if host_local {
        Mode::Disable
    } else {
        Mode::VerifyFull
    });
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(Tls {
        mode,
        root_cert,
        url: u.to_string(),
    })
}

impl Tls {
    /// The client library's connector for this mode (`None`: plain).
    pub fn connector(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>> {
        if self.mode == Mode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| refuse(format!("sslrootcert {}: {e}", path.display())))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(refuse(format!(
                        "sslrootcert {} holds no certificate",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| refuse(format!("TLS set-up: {e}")))?;
        let config = match self.mode {
            Mode::VerifyFull => builder.with_root_certificates(roots).with_no_client_auth(),
            Mode::VerifyCa | Mode::Require => {
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| refuse(format!("TLS set-up: {e}")))?;
                if self.mode == Mode::Require {
                    tracing::warn!(
                        "sslmode=require: the connection to PostgreSQL is encrypted but the server's certificate is not checked; use verify-full"
                    );
                }
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient {
                        inner,
                        provider,
                        check_chain: self.mode == Mode::VerifyCa,
                    }))
                    .with_no_client_auth()
            }
            Mode::Disable => unreachable!("returned above"),
        };
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }
}

/// `verify-ca` (the chain, not the name) and `require` (neither; the handshake's signatures
/// still are).
#[derive(Debug)]
struct Lenient {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, TlsError> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_server_defaults_to_plain_and_any_other_to_verify_full() {
        let mode = |u: &str| parse(u).unwrap().mode;
        assert_eq!(mode("postgresql://u@%2Ftmp%2Fpg/db"), Mode::Disable);
        assert_eq!(mode("postgresql://u@localhost/db"), Mode::Disable);
        assert_eq!(mode("postgresql://u@127.0.0.1:5433/db"), Mode::Disable);
        assert_eq!(mode("postgresql://u@[::1]/db"), Mode::Disable);
        assert_eq!(mode("postgresql://u@db.internal/db"), Mode::VerifyFull);
        assert_eq!(mode("postgresql://u@10.0.0.5/db"), Mode::VerifyFull);
        assert_eq!(
            mode("postgresql://u@db.internal/db?sslmode=require"),
            Mode::Require
        );
        assert_eq!(
            mode("postgresql://u@localhost/db?sslmode=verify-ca"),
            Mode::VerifyCa
        );
    }

    #[test]
    fn tls_settings_leave_the_url_and_fallback_modes_are_refused() {
        let t = parse(
            "postgresql://u@db.internal/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(t.url, "postgresql://u@db.internal/db?application_name=x");
        assert_eq!(
            t.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        for m in ["prefer", "allow", "bogus"] {
            let e = parse(&format!("postgresql://u@h/db?sslmode={m}")).unwrap_err();
            assert!(e.to_string().contains("sslmode"), "{e}");
        }
    }
}
