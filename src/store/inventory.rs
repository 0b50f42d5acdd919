//! The session inventory (`sessions`): which chats exist and whose they are. Adding one chat, and
//! importing many from CSV or JSON lines.
//!
//! Import rules: the whole file is one transaction, so a bad line anywhere rejects the file and
//! nothing is half-imported; the error names the line. A chat already known is skipped and
//! counted, never updated (the feeder's first word on ownership stands). Rows go through the same
//! SQL constraints a feeder's INSERT meets, so the messages are the same too.

use std::io::{BufRead, Read};

use rusqlite::{Transaction, params};
use serde::Deserialize;

use super::{Result, Store, StoreError};

/// A row for `sessions`; `None` fields take the column default (NULL, or now for created_at).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    pub provider: String,
    pub scope: String,
    pub session_id: String,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub repo_id: Option<String>,
    /// Unix seconds, or (in JSON Lines) RFC 3339 text with `Z` or an offset.
    #[serde(default, deserialize_with = "unix_seconds_or_rfc3339")]
    pub created_at: Option<i64>,
}

fn unix_seconds_or_rfc3339<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Secs(i64),
        Text(String),
    }
    match Option::<Time>::deserialize(d)? {
        None => Ok(None),
        Some(Time::Secs(n)) => Ok(Some(n)),
        Some(Time::Text(t)) => crate::fields::unix_seconds(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    pub inserted: u64,
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the import: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}; nothing was imported")]
    Line {
        line: u64,
        message: String,
        /// The parser's own error, when one said what is wrong.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("line {line}: {source}; nothing was imported")]
    Row {
        line: u64,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The columns a CSV header may name.
pub const COLUMNS: [&str; 6] = [
    "provider",
    "scope",
    "session_id",
    "subject",
    "repo_id",
    "created_at",
];

fn insert(tx: &Transaction<'_>, s: &NewSession, discovered_at: Option<i64>) -> Result<bool> {
    let n = tx
        .prepare_cached(
            "INSERT INTO sessions (provider, scope, session_id, subject, repo_id, created_at, discovered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, coalesce(?6, unixepoch()), ?7)
             ON CONFLICT (provider, scope, session_id) DO NOTHING",
        )?
        .execute(params![
            s.provider,
            s.scope,
            s.session_id,
            s.subject,
            s.repo_id,
            s.created_at,
            discovered_at
        ])?;
    Ok(n == 1)
}

impl Store {
    /// Adds one chat; `false` when it was already known.
    pub fn add_session(&mut self, s: &NewSession) -> Result<bool> {
        self.write(|tx| insert(tx, s, None))
    }

    /// Records chats found by provider discovery (marked discovered); known chats are left as
    /// they are. Returns how many were new.
    pub fn add_discovered(&mut self, rows: &[NewSession], now: i64) -> Result<u64> {
        self.write(|tx| {
            let mut n = 0;
            for r in rows {
                if insert(tx, r, Some(now))? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Imports CSV (with a header of [`COLUMNS`] names) or JSON lines, detected from the first
    /// non-blank byte. `progress` is called with the bytes read so far.
    pub fn import_sessions(
        &mut self,
        input: impl Read,
        mut progress: impl FnMut(u64, ImportReport),
    ) -> Result<ImportReport, ImportError> {
        let mut reader = std::io::BufReader::with_capacity(1 << 16, input);
        let Some(json) = starts_with_brace(&mut reader)? else {
            return Ok(ImportReport::default());
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let mut sink = Sink {
            tx: &tx,
            report: ImportReport::default(),
        };
        if json {
            import_jsonl(reader, &mut sink, &mut progress)?;
        } else {
            import_csv(reader, &mut sink, &mut progress)?;
        }
        let report = sink.report;
        tx.commit().map_err(StoreError::from)?;
        Ok(report)
    }
}

/// The format by its first non-blank byte: `{` is JSON Lines, anything else CSV. `None`: the
/// input is empty or blank.
fn starts_with_brace(reader: &mut impl BufRead) -> Result<Option<bool>, ImportError> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => return Ok(Some(buf[i] == b'{')),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

/// Where imported rows go: one transaction, and the running counts.
struct Sink<'t> {
    tx: &'t Transaction<'t>,
    report: ImportReport,
}

impl Sink<'_> {
    fn record(&mut self, line: u64, row: NewSession) -> Result<(), ImportError> {
        match insert(self.tx, &row, None) {
            Ok(true) => self.report.inserted += 1,
            Ok(false) => self.report.skipped += 1,
            Err(source) => return Err(ImportError::Row { line, source }),
        }
        Ok(())
    }
}

fn import_jsonl(
    reader: impl BufRead,
    sink: &mut Sink<'_>,
    progress: &mut impl FnMut(u64, ImportReport),
) -> Result<(), ImportError> {
    let (mut line, mut bytes) = (0u64, 0u64);
    for raw in reader.split(b'\n') {
        let raw = raw?;
        line += 1;
        bytes += raw.len() as u64 + 1;
        let text = std::str::from_utf8(&raw).map_err(|e| ImportError::Line {
            line,
            message: format!("not valid UTF-8 ({e})"),
            source: Some(Box::new(e)),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let row: NewSession = serde_json::from_str(text).map_err(|e| ImportError::Line {
            line,
            message: format!("not a sessions object ({e})"),
            source: Some(Box::new(e)),
        })?;
        sink.record(line, row)?;
        if line.is_multiple_of(10_000) {
            progress(bytes, sink.report);
        }
    }
    Ok(())
}

fn import_csv(
    reader: impl Read,
    sink: &mut Sink<'_>,
    progress: &mut impl FnMut(u64, ImportReport),
) -> Result<(), ImportError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let header = csv.byte_headers().map_err(|e| ImportError::Line {
        line: 1,
        message: format!("unreadable CSV header ({e})"),
        source: Some(Box::new(e)),
    })?;
    let columns = csv_columns(header)?;
    let mut rec = csv::ByteRecord::new();
    loop {
        let more = csv
            .read_byte_record(&mut rec)
            .map_err(|e| ImportError::Line {
                line: e.position().map(|p| p.line()).unwrap_or(0),
                message: format!("malformed CSV ({e})"),
                source: Some(Box::new(e)),
            })?;
        if !more {
            return Ok(());
        }
        let (line, byte) = rec
            .position()
            .map(|p| (p.line(), p.byte()))
            .unwrap_or((0, 0));
        sink.record(line, csv_row(&columns, &rec, line)?)?;
        if line.is_multiple_of(10_000) {
            progress(byte, sink.report);
        }
    }
}

/// The header's columns: each known, none twice, the three required ones present.
fn csv_columns(header: &csv::ByteRecord) -> Result<Vec<String>, ImportError> {
    let refuse = |message: String| ImportError::Line {
        line: 1,
        message,
        source: None,
    };
    let mut columns = Vec::new();
    for name in header.iter() {
        let name = String::from_utf8_lossy(name).trim().to_string();
        if !COLUMNS.contains(&name.as_str()) {
            return Err(refuse(format!(
                "unknown column \"{name}\" in the header (columns: {})",
                COLUMNS.join(", ")
            )));
        }
        if columns.contains(&name) {
            return Err(refuse(format!(
                "column \"{name}\" appears twice in the header"
            )));
        }
        columns.push(name);
    }
    for required in ["provider", "scope", "session_id"] {
        if !columns.iter().any(|c| c == required) {
            return Err(refuse(format!("the header has no \"{required}\" column")));
        }
    }
    Ok(columns)
}

/// One CSV record as a session row; an empty field is an absent value.
fn csv_row(
    columns: &[String],
    rec: &csv::ByteRecord,
    line: u64,
) -> Result<NewSession, ImportError> {
    let mut row = NewSession::default();
    for (name, field) in columns.iter().zip(rec.iter()) {
        let text = std::str::from_utf8(field).map_err(|e| ImportError::Line {
            line,
            message: format!("column {name} is not valid UTF-8 ({e})"),
            source: Some(Box::new(e)),
        })?;
        let value = (!text.is_empty()).then(|| text.to_string());
        match name.as_str() {
            "provider" => row.provider = value.unwrap_or_default(),
            "scope" => row.scope = value.unwrap_or_default(),
            "session_id" => row.session_id = value.unwrap_or_default(),
            "subject" => row.subject = value,
            "repo_id" => row.repo_id = value,
            _ => {
                row.created_at =
                    match value {
                        None => None,
                        Some(v) => Some(crate::fields::unix_seconds(&v).map_err(|e| {
                            ImportError::Line {
                                line,
                                message: format!("created_at: {e}"),
                                source: None,
                            }
                        })?),
                    }
            }
        }
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    fn count(s: &Store) -> i64 {
        s.conn
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn csv_import_counts_known_chats_and_maps_empty_to_null() {
        let (_d, mut s) = temp_store();
        let csv = "provider,scope,session_id,subject,created_at\nconvai,c1,s1,alice,100\nconvai,c1,s2,,\nconvai,c1,s1,alice,100\n";
        let r = s.import_sessions(csv.as_bytes(), |_, _| {}).unwrap();
        assert_eq!(
            r,
            ImportReport {
                inserted: 2,
                skipped: 1
            }
        );
        let subject: Option<String> = s
            .conn
            .query_row(
                "SELECT subject FROM sessions WHERE session_id='s2'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(subject, None);
    }

    #[test]
    fn a_bad_line_rejects_the_whole_file_naming_the_line() {
        let (_d, mut s) = temp_store();
        let jsonl = "{\"provider\":\"convai\",\"scope\":\"c\",\"session_id\":\"ok\"}\n\n{\"provider\":\"koosearch\",\"scope\":\"app\",\"session_id\":\"bad id!\"}\n";
        let err = s.import_sessions(jsonl.as_bytes(), |_, _| {}).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("line 3:"), "{msg}");
        assert!(msg.contains("sessions_koosearch_ids_must_be"), "{msg}");
        assert_eq!(count(&s), 0);
    }

    #[test]
    fn invalid_utf8_is_reported_by_line() {
        let (_d, mut s) = temp_store();
        let mut data = b"provider,scope,session_id\nconvai,c,ok\nconvai,c,".to_vec();
        data.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let err = s.import_sessions(&data[..], |_, _| {}).unwrap_err();
        assert!(err.to_string().starts_with("line 3:"), "{err}");
        assert_eq!(count(&s), 0);
    }

    #[test]
    fn unknown_csv_column_is_refused() {
        let (_d, mut s) = temp_store();
        let err = s
            .import_sessions("provider,scope,session_id,owner\n".as_bytes(), |_, _| {})
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown column \"owner\""),
            "{err}"
        );
    }
}
