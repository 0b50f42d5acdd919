//! Secret references: where a secret is read from (`env:NAME`, `file:/path`,
//! `credential:NAME` = `$CREDENTIALS_DIRECTORY/NAME`, systemd `LoadCredential=`), and reading them.
//!
//! Rules:
//! - A [`SecretRef`] holds the reference, never the secret, so it may be printed; a value that is
//!   not a reference is refused without being echoed (it may be the secret itself).
//! - Text secrets (API keys, passwords, tokens) are read as UTF-8 with trailing newlines dropped;
//!   binary secrets (keys) as the bytes they hold. Either way they come back in `secrecy` types,
//!   whose `Debug` is redacted.
//! - A leaf: it imports nothing of forgetd's.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// Where a secret is read from. Holds the reference, never the secret, so it may be printed.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Credential(String),
}

/// Why a secret could not be read. Names the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secret {reference}: environment variable {name} is not set (export it, or use file: or credential:)"
    )]
    EnvMissing { reference: String, name: String },
    #[error("secret {reference}: cannot read {path}: {source}")]
    Io {
        reference: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "secret {reference}: CREDENTIALS_DIRECTORY is not set (credential: works under systemd's LoadCredential=; elsewhere use env: or file:)"
    )]
    NoCredentialsDirectory { reference: String },
    #[error("secret {reference} is empty")]
    Empty { reference: String },
    #[error("secret {reference} is not UTF-8 text; this setting takes a text secret")]
    NotText { reference: String },
    #[error(
        "secret {reference} is {len} bytes; a subject key needs at least 32 (`head -c 32 /dev/urandom`)"
    )]
    TooShort { reference: String, len: usize },
}

/// The shortest `[audit] subject_key` accepted: HMAC-SHA256 wants at least its output size.
pub const MIN_SUBJECT_KEY_LEN: usize = 32;

impl SecretRef {
    /// Parses `env:NAME`, `file:/path` or `credential:NAME`. The error never repeats the value: a
    /// value that is not a reference may be the secret itself.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = || {
            "a literal secret is not accepted (the value is not shown); write env:NAME, file:/path or credential:NAME".to_string()
        };
        let (kind, rest) = value.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(format!("`{kind}:` needs a name after the colon"));
        }
        match kind {
            "env" => Ok(Self::Env(rest.to_string())),
            "file" => {
                let path = PathBuf::from(rest);
                if !path.is_absolute() {
                    return Err(format!("file:{rest} must be an absolute path"));
                }
                Ok(Self::File(path))
            }
            "credential" => {
                if rest.contains('/') || rest == "." || rest == ".." {
                    return Err(format!(
                        "credential:{rest} must be a plain name, not a path"
                    ));
                }
                Ok(Self::Credential(rest.to_string()))
            }
            _ => Err(bad()),
        }
    }

    /// Reads a text secret (API keys, passwords, tokens). Trailing newlines of files are dropped
    /// (editors and `echo` add them).
    pub fn read(&self) -> Result<SecretString, SecretError> {
        let reference = self.to_string();
        let bytes = self.read_raw()?;
        let value = String::from_utf8(bytes.expose_secret().to_vec()).map_err(|_| {
            SecretError::NotText {
                reference: reference.clone(),
            }
        })?;
        let trimmed = value.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty { reference });
        }
        Ok(SecretString::from(trimmed.to_string()))
    }

    /// Reads a binary secret (keys) as the bytes it holds: nothing is trimmed, any byte is
    /// allowed (`head -c 32 /dev/urandom > key` is a good key).
    pub fn read_bytes(&self) -> Result<secrecy::SecretSlice<u8>, SecretError> {
        let bytes = self.read_raw()?;
        if bytes.expose_secret().is_empty() {
            return Err(SecretError::Empty {
                reference: self.to_string(),
            });
        }
        Ok(bytes)
    }

    fn read_raw(&self) -> Result<secrecy::SecretSlice<u8>, SecretError> {
        let reference = self.to_string();
        let value = match self {
            Self::Env(name) => std::env::var_os(name)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| SecretError::EnvMissing {
                    reference: reference.clone(),
                    name: name.clone(),
                })?,
            Self::File(path) => read_secret_file(&reference, path)?,
            Self::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    SecretError::NoCredentialsDirectory {
                        reference: reference.clone(),
                    }
                })?;
                read_secret_file(&reference, &Path::new(&dir).join(name))?
            }
        };
        Ok(secrecy::SecretSlice::from(value))
    }
}

fn read_secret_file(reference: &str, path: &Path) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::Io {
        reference: reference.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Credential(n) => write!(f, "credential:{n}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}
