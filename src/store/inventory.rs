//! The session inventory (`sessions`): which chats exist and whose they are. Adding one chat, and
//! importing many from CSV or JSON lines.
//!
//! Import rules: the whole file is one transaction, so a bad line anywhere rejects the file and
//! nothing is half-imported. The import reads on past a bad line, so the error names every bad
//! line (the first [`REPORTED_LINES`] of them, and how many more), and a feeder fixes the file in
//! one round. A chat already known is skipped and counted, never updated (the feeder's first word
//! on ownership stands). Rows go through the same SQL constraints a feeder's INSERT meets, so the
//! messages are the same too. Only a refusal is a bad line: a busy or full database stops the
//! import as what it is.

use std::io::{BufRead, Read};

use super::Tx;
use super::db::Sql;
use crate::args;
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

/// How many bad lines an import's error lists; the rest are counted.
pub const REPORTED_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the import: {0}")]
    Io(#[from] std::io::Error),
    /// The file cannot be read as a whole (its CSV header).
    #[error("line 1: {message}; nothing was imported")]
    Header {
        message: String,
        #[source]
        source: Option<csv::Error>,
    },
    /// Lines that cannot be imported: the first [`REPORTED_LINES`], and how many more. Nothing
    /// was imported. (No `source`: each line's problem is its own and is printed with it.)
    #[error("{}", bad_lines_text(.lines, *.more))]
    BadLines { lines: Vec<BadLine>, more: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One line an import could not take.
#[derive(Debug)]
pub struct BadLine {
    pub line: u64,
    pub problem: LineProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum LineProblem {
    /// Not a row at all (not UTF-8, not JSON, malformed CSV, a bad time).
    #[error("{message}")]
    Unreadable {
        message: String,
        /// The parser's own error, when one said what is wrong.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A row the table's constraints refused.
    #[error("{0}")]
    Refused(#[source] StoreError),
}

fn bad_lines_text(lines: &[BadLine], more: u64) -> String {
    match (lines, more) {
        ([one], 0) => format!("line {}: {}; nothing was imported", one.line, one.problem),
        _ => {
            let total = lines.len() as u64 + more;
            let mut text = format!("{total} bad lines; nothing was imported:");
            for l in lines {
                text.push_str(&format!("\n  line {}: {}", l.line, l.problem));
            }
            if more > 0 {
                text.push_str(&format!(
                    "\n  ... and {more} more (the first {REPORTED_LINES} are listed)"
                ));
            }
            text
        }
    }
}

fn unreadable(
    line: u64,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> BadLine {
    BadLine {
        line,
        problem: LineProblem::Unreadable { message, source },
    }
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

fn insert(tx: &Tx<'_>, s: &NewSession, discovered_at: Option<i64>) -> Result<bool> {
    let n = tx.exec(
        "INSERT INTO sessions (provider, scope, session_id, subject, repo_id, created_at, discovered_at)
         VALUES (?1, ?2, ?3, ?4, ?5, coalesce(?6, unixepoch()), ?7)
         ON CONFLICT (provider, scope, session_id) DO NOTHING",
        args![
            s.provider,
            s.scope,
            s.session_id,
            s.subject,
            s.repo_id,
            s.created_at,
            discovered_at
        ],
    )?;
    Ok(n == 1)
}

impl Store {
    /// Adds one chat; `false` when it was already known.
    pub fn add_session(&mut self, s: &NewSession) -> Result<bool> {
        self.write(|tx| insert(tx, s, None))
    }

    /// Scopes worth asking a provider about (`forgetd doctor`): the scope of the provider's chat
    /// added last, then the scopes the rules name (not `*`). It walks back from the end of the
    /// table to the provider's newest chat: one row when that provider's chats are recent, the
    /// whole table only when the provider has none.
    pub fn scopes_to_check(&self, provider: &str) -> Result<Vec<String>> {
        let mut scopes: Vec<String> = self.rows(
            "SELECT scope FROM sessions WHERE provider = ?1 ORDER BY id DESC LIMIT 1",
            args![provider],
            |r| r.get(0),
        )?;
        let rules: Vec<String> = self.rows(
            "SELECT DISTINCT scope FROM rules WHERE provider = ?1 AND scope <> '*' ORDER BY scope",
            args![provider],
            |r| r.get(0),
        )?;
        for s in rules {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        Ok(scopes)
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
        let tx = self.begin().map_err(ImportError::from)?;
        let mut sink = Sink {
            tx: &tx,
            report: ImportReport::default(),
            bad: Vec::new(),
            more: 0,
        };
        if json {
            import_jsonl(reader, &mut sink, &mut progress)?;
        } else {
            import_csv(reader, &mut sink, &mut progress)?;
        }
        if !sink.bad.is_empty() {
            // Dropping the transaction rolls back the good lines too.
            return Err(ImportError::BadLines {
                lines: sink.bad,
                more: sink.more,
            });
        }
        let report = sink.report;
        tx.commit()?;
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

/// Where imported rows go: one transaction, the running counts, and the bad lines so far.
struct Sink<'t> {
    tx: &'t Tx<'t>,
    report: ImportReport,
    bad: Vec<BadLine>,
    /// Bad lines past the first [`REPORTED_LINES`].
    more: u64,
}

impl Sink<'_> {
    fn record(&mut self, line: u64, row: NewSession) -> Result<(), ImportError> {
        match insert(self.tx, &row, None) {
            Ok(true) => self.report.inserted += 1,
            Ok(false) => self.report.skipped += 1,
            Err(e @ StoreError::Refused { .. }) => self.reject(BadLine {
                line,
                problem: LineProblem::Refused(e),
            }),
            // Busy, full, damaged: not the line's fault, and no later line will fare better.
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn reject(&mut self, bad: BadLine) {
        if self.bad.len() < REPORTED_LINES {
            self.bad.push(bad);
        } else {
            self.more += 1;
        }
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
        if line.is_multiple_of(10_000) {
            progress(bytes, sink.report);
        }
        let text = match std::str::from_utf8(&raw) {
            Ok(text) => text,
            Err(e) => {
                let message = format!("not valid UTF-8 ({e})");
                sink.reject(unreadable(line, message, Some(Box::new(e))));
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<NewSession>(text) {
            Ok(row) => sink.record(line, row)?,
            Err(e) => {
                let message = format!("not a sessions object ({e})");
                sink.reject(unreadable(line, message, Some(Box::new(e))));
            }
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
    let header = csv.byte_headers().map_err(|e| ImportError::Header {
        message: "unreadable CSV header".into(),
        source: Some(e),
    })?;
    let columns = csv_columns(header)?;
    let mut rec = csv::ByteRecord::new();
    loop {
        match csv.read_byte_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                // A read error is not the file's fault: the import stops as what it is.
                if e.is_io_error() {
                    return Err(ImportError::Io(std::io::Error::other(e)));
                }
                // A record with the wrong number of fields was read whole: go on to the next.
                // Anything else leaves no next record to trust.
                let go_on = matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. });
                let message = format!("malformed CSV ({e})");
                sink.reject(unreadable(line, message, Some(Box::new(e))));
                if go_on {
                    continue;
                }
                return Ok(());
            }
        }
        let (line, byte) = rec
            .position()
            .map(|p| (p.line(), p.byte()))
            .unwrap_or((0, 0));
        match csv_row(&columns, &rec, line) {
            Ok(row) => sink.record(line, row)?,
            Err(bad) => sink.reject(bad),
        }
        if line.is_multiple_of(10_000) {
            progress(byte, sink.report);
        }
    }
}

/// The header's columns: each known, none twice, the three required ones present.
fn csv_columns(header: &csv::ByteRecord) -> Result<Vec<String>, ImportError> {
    let refuse = |message: String| ImportError::Header {
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
fn csv_row(columns: &[String], rec: &csv::ByteRecord, line: u64) -> Result<NewSession, BadLine> {
    let mut row = NewSession::default();
    for (name, field) in columns.iter().zip(rec.iter()) {
        let text = std::str::from_utf8(field).map_err(|e| {
            let message = format!("column {name} is not valid UTF-8 ({e})");
            unreadable(line, message, Some(Box::new(e)))
        })?;
        let value = (!text.is_empty()).then(|| text.to_string());
        match name.as_str() {
            "provider" => row.provider = value.unwrap_or_default(),
            "scope" => row.scope = value.unwrap_or_default(),
            "session_id" => row.session_id = value.unwrap_or_default(),
            "subject" => row.subject = value,
            "repo_id" => row.repo_id = value,
            _ => {
                row.created_at = match value {
                    None => None,
                    Some(v) => Some(
                        crate::fields::unix_seconds(&v)
                            .map_err(|e| unreadable(line, format!("created_at: {e}"), None))?,
                    ),
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
        s.sqlite()
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
            .sqlite()
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
    fn every_bad_line_is_named_up_to_the_limit_and_the_rest_counted() {
        let (_d, mut s) = temp_store();
        let mut csv = String::from("provider,scope,session_id,created_at\nconvai,c,good,\n");
        // Lines 3..=27: 25 bad lines of three kinds; line 28 good.
        for i in 0..25 {
            csv.push_str(match i % 3 {
                0 => "convai,c,,\n",      // refused: empty session_id
                1 => "convai,c,x,soon\n", // not a time
                _ => "convai,c\n",        // wrong number of fields
            });
        }
        csv.push_str("convai,c,good2,\n");
        let err = s.import_sessions(csv.as_bytes(), |_, _| {}).unwrap_err();
        let ImportError::BadLines { lines, more } = &err else {
            panic!("{err}")
        };
        assert_eq!(lines.len(), REPORTED_LINES);
        assert_eq!(*more, 5);
        let named: Vec<u64> = lines.iter().map(|l| l.line).collect();
        assert_eq!(named, (3..23).collect::<Vec<u64>>());
        let text = err.to_string();
        assert!(
            text.starts_with("25 bad lines; nothing was imported:"),
            "{text}"
        );
        assert!(
            text.contains("line 3: refused: CHECK constraint failed: sessions_session_id"),
            "{text}"
        );
        assert!(text.contains("line 4: created_at:"), "{text}");
        assert!(text.contains("line 5: malformed CSV"), "{text}");
        assert!(text.contains("and 5 more"), "{text}");
        assert_eq!(count(&s), 0, "the good lines went back with the bad");
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
