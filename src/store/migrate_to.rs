//! Moving a SQLite queue to PostgreSQL (`forgetd migrate-to URL`): every row of every forgetd
//! table, with its id, in one PostgreSQL transaction.
//!
//! Rules:
//! - The target must hold no forgetd data: a second run, or a target another queue already
//!   uses, is refused before anything is written.
//! - Ids are kept (`OVERRIDING SYSTEM VALUE`), and every id sequence is set past the largest id,
//!   and past SQLite's AUTOINCREMENT counter for requests, so no id is ever used twice.
//! - Requests go in as `received` and are then updated to what they were: the insert trigger
//!   that stops feeders from writing progress columns stays on.
//! - The audit chain's keyed start (`audit_keying`) is carried over, so the chain verifies on
//!   the target with the same key; the copy is verified before the caller says it is done.

use super::db::{Col, Sql, Value};
use super::{Result, Store, StoreError};
use crate::args;

/// The tables copied, parents first; `erasure_requests`' progress columns are set after.
const TABLES: &[&str] = &[
    "sessions",
    "erasure_requests",
    "work_items",
    "request_items",
    "request_discovery",
    "batches",
    "rules",
    "rule_state",
    "rule_runs",
    "holds",
    "provider_state",
    "audit_log",
    "audit_seals",
];

/// Columns of `erasure_requests` that only forgetd writes: inserted NULL (or `received`), set
/// by an update.
const PROGRESS: &[&str] = &[
    "state",
    "resolved_at",
    "completed_at",
    "verified_at",
    "closing_seq",
];

/// Tables whose id is a sequence on PostgreSQL.
const IDENTITIES: &[&str] = &[
    "sessions",
    "erasure_requests",
    "work_items",
    "batches",
    "rule_runs",
    "holds",
];

/// What was copied: rows per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub rows: Vec<(&'static str, u64)>,
}

fn owned(col: Col<'_>) -> Value<'static> {
    match col {
        Col::Null => Value::Null,
        Col::I64(v) => Value::I64(v),
        Col::F64(v) => Value::F64(v),
        Col::Text(t) => Value::Text(t.to_string().into()),
        Col::Bytes(b) => Value::Bytes(b.to_vec().into()),
    }
}

/// The columns of `table` on PostgreSQL, in order.
fn pg_columns(target: &Store, table: &str) -> Result<Vec<String>> {
    target.rows(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
        args![table],
        |r| r.get(0),
    )
}

impl Store {
    /// Copies this (SQLite) queue into `target` (PostgreSQL, opened without its keyed start:
    /// [`Store::connect_for_copy`]). See the module's rules.
    pub fn copy_into(&self, target: &mut Store) -> Result<Copied> {
        if self.sqlite_path().is_none() || target.sqlite_path().is_some() {
            return Err(StoreError::Invalid(
                "migrate-to copies a SQLite queue into a PostgreSQL database".into(),
            ));
        }
        for table in TABLES.iter().chain(&["audit_keying"]) {
            let n: i64 = target.row(&format!("SELECT count(*) FROM {table}"), args![], |r| {
                r.get(0)
            })?;
            if n > 0 {
                return Err(StoreError::Invalid(format!(
                    "the target already holds forgetd data ({n} row(s) in {table}); migrate into an empty database"
                )));
            }
        }
        let keyed_from: i64 = self.row(
            "SELECT keyed_from_seq FROM audit_keying WHERE id = 1",
            args![],
            |r| r.get(0),
        )?;
        let request_seq: i64 = self
            .row_opt(
                "SELECT seq FROM sqlite_sequence WHERE name = 'erasure_requests'",
                args![],
                |r| r.get(0),
            )?
            .unwrap_or(0);
        // The columns both have (PostgreSQL's own, like `batches.instance_id`, stay NULL).
        let mut columns = Vec::new();
        for table in TABLES {
            let here: Vec<String> = self.rows(
                "SELECT name FROM pragma_table_info(?1)",
                args![table],
                |r| r.get(0),
            )?;
            let both: Vec<String> = pg_columns(target, table)?
                .into_iter()
                .filter(|c| here.contains(c))
                .collect();
            columns.push((*table, both));
        }
        let mut copied = Copied::default();
        target.write(|tx| {
            for (table, cols) in &columns {
                let list = cols.join(", ");
                let inserted: Vec<&str> = cols
                    .iter()
                    .map(|c| {
                        if *table == "erasure_requests" && PROGRESS.contains(&c.as_str()) {
                            if c == "state" { "'received'" } else { "NULL" }
                        } else {
                            "?"
                        }
                    })
                    .collect();
                let mut n = 0u64;
                let mut values_sql = String::new();
                let mut k = 0;
                for v in &inserted {
                    if !values_sql.is_empty() {
                        values_sql.push_str(", ");
                    }
                    if *v == "?" {
                        k += 1;
                        values_sql.push_str(&format!("?{k}"));
                    } else {
                        values_sql.push_str(v);
                    }
                }
                let insert = format!(
                    "INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE VALUES ({values_sql})"
                );
                let bound: Vec<usize> = (0..cols.len()).filter(|i| inserted[*i] == "?").collect();
                let progress: Vec<usize> = (0..cols.len())
                    .filter(|i| *table == "erasure_requests" && PROGRESS.contains(&cols[*i].as_str()))
                    .collect();
                let update = format!(
                    "UPDATE erasure_requests SET {} WHERE id = ?1",
                    progress
                        .iter()
                        .enumerate()
                        .map(|(j, i)| format!("{} = ?{}", cols[*i], j + 2))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let id_at = cols.iter().position(|c| c == "id");
                let select = format!("SELECT {list} FROM {table}");
                let mut failed = None;
                self.scan(&select, args![], |r| {
                    let row: Vec<Value<'static>> = (0..cols.len())
                        .map(|i| r.col(i).map(owned))
                        .collect::<Result<_>>()?;
                    let args: Vec<Value<'_>> = bound.iter().map(|i| row[*i].clone()).collect();
                    if let Err(e) = tx.exec(&insert, &args) {
                        failed = Some(e);
                        return Ok(std::ops::ControlFlow::Break(()));
                    }
                    if !progress.is_empty() {
                        let mut args = vec![row[id_at.expect("requests have an id")].clone()];
                        args.extend(progress.iter().map(|i| row[*i].clone()));
                        if let Err(e) = tx.exec(&update, &args) {
                            failed = Some(e);
                            return Ok(std::ops::ControlFlow::Break(()));
                        }
                    }
                    n += 1;
                    Ok(std::ops::ControlFlow::Continue(()))
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
                copied.rows.push((table, n));
            }
            tx.exec(
                "INSERT INTO audit_keying (id, keyed_from_seq) VALUES (1, ?1)",
                args![keyed_from],
            )?;
            for table in IDENTITIES {
                let floor = if *table == "erasure_requests" {
                    request_seq
                } else {
                    0
                };
                tx.exec(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                                greatest(coalesce((SELECT max(id) FROM {table}), 0), CAST(?1 AS BIGINT), 1),
                                coalesce((SELECT max(id) FROM {table}), 0) > 0 OR CAST(?1 AS BIGINT) > 0)"
                    ),
                    args![floor],
                )?;
            }
            Ok(())
        })?;
        Ok(copied)
    }
}
