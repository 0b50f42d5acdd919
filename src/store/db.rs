//! The SQL layer under every store file: one way to run a statement, bind its arguments and read
//! its rows, whatever engine holds the queue.
//!
//! Rules:
//! - Store files speak only this API ([`Sql`], [`args!`](crate::args), [`Row`]), never an
//!   engine's client crate, so one statement text serves every engine that can run it. Where the
//!   engines need different text, the store function says so with `match tx.engine()`.
//! - Placeholders are `?N`, SQLite's spelling. Arguments are [`Value`]s, built from Rust values by
//!   [`ToValue`] (`args![id, scope, now]` borrows, as rusqlite's `params!` does).
//! - A column is read through [`FromCol`], which accepts what the column's meaning allows, not
//!   only one storage type: an integer read as `bool` is `!= 0`, as SQLite's affinity would have
//!   it. A value of another kind is an error naming the column, never a silent default.
//! - Every statement is prepared once per connection and cached (SQLite's statement cache).

use std::borrow::Cow;
use std::ops::ControlFlow;

use super::{Result, StoreError};

/// Which engine a connection talks to, for the few statements whose text differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// One bound argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    I64(i64),
    F64(f64),
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    /// A list of ids, for "is one of these". SQLite reads it as JSON text (`json_each(?N)`).
    I64List(Cow<'a, [i64]>),
}

/// A Rust value that can be bound as a statement argument.
pub trait ToValue {
    fn to_value(&self) -> Value<'_>;
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                // Counts and ids far below 2^63: a wrap would need a queue of exabytes.
                Value::I64(*self as i64)
            }
        }
    )*};
}
int_values!(i64, i32, u32, u64, usize);

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::I64(*self as i64)
    }
}

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::F64(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self))
    }
}

impl ToValue for [u8] {
    fn to_value(&self) -> Value<'_> {
        Value::Bytes(Cow::Borrowed(self))
    }
}

impl ToValue for [i64] {
    fn to_value(&self) -> Value<'_> {
        Value::I64List(Cow::Borrowed(self))
    }
}

impl ToValue for Vec<i64> {
    fn to_value(&self) -> Value<'_> {
        Value::I64List(Cow::Borrowed(self))
    }
}

impl ToValue for crate::clock::Millis {
    fn to_value(&self) -> Value<'_> {
        Value::I64(self.0)
    }
}

impl ToValue for crate::model::ProviderKind {
    fn to_value(&self) -> Value<'_> {
        Value::Text(Cow::Borrowed(self.as_str()))
    }
}

impl ToValue for Value<'_> {
    fn to_value(&self) -> Value<'_> {
        self.clone()
    }
}

/// Binds a statement's arguments: `args![id, scope, now]` is a `&[Value]` borrowing each.
#[macro_export]
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::store::db::ToValue::to_value(&$e)),*] as &[$crate::store::db::Value<'_>]
    };
}

/// One column of a row, as the engine returned it.
#[derive(Debug, Clone, Copy)]
pub enum Col<'a> {
    Null,
    I64(i64),
    F64(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl Col<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Col::Null => "NULL",
            Col::I64(_) => "an integer",
            Col::F64(_) => "a real",
            Col::Text(_) => "text",
            Col::Bytes(_) => "a blob",
        }
    }
}

/// A column value that does not fit the Rust type it is read as.
#[derive(Debug, thiserror::Error)]
#[error("column {index} holds {found}, not {wanted}")]
pub struct ColError {
    pub index: usize,
    pub found: &'static str,
    pub wanted: &'static str,
}

/// A column that did not fit, before its index is known.
#[derive(Debug)]
pub struct Mismatch {
    pub found: &'static str,
    pub wanted: &'static str,
}

impl Mismatch {
    pub fn of(col: Col<'_>, wanted: &'static str) -> Self {
        Self {
            found: col.kind(),
            wanted,
        }
    }
}

/// A Rust type a column can be read as.
pub trait FromCol: Sized {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch>;
}

impl FromCol for i64 {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::I64(v) => Ok(v),
            other => Err(Mismatch::of(other, "an integer")),
        }
    }
}

macro_rules! narrow_ints {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
                match col {
                    Col::I64(v) => <$t>::try_from(v).map_err(|_| Mismatch {
                        found: "an integer out of range",
                        wanted: stringify!($t),
                    }),
                    other => Err(Mismatch::of(other, stringify!($t))),
                }
            }
        }
    )*};
}
narrow_ints!(i32, u32, u64, usize);

impl FromCol for bool {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::I64(v) => Ok(v != 0),
            other => Err(Mismatch::of(other, "a boolean (0 or 1)")),
        }
    }
}

impl FromCol for f64 {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::F64(v) => Ok(v),
            Col::I64(v) => Ok(v as f64),
            other => Err(Mismatch::of(other, "a number")),
        }
    }
}

impl FromCol for String {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::Text(s) => Ok(s.to_string()),
            other => Err(Mismatch::of(other, "text")),
        }
    }
}

impl FromCol for Vec<u8> {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::Bytes(b) => Ok(b.to_vec()),
            Col::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(Mismatch::of(other, "bytes")),
        }
    }
}

impl FromCol for crate::clock::Millis {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        i64::from_col(col).map(crate::clock::Millis)
    }
}

impl FromCol for crate::model::ProviderKind {
    /// A key this binary does not serve is an error, never another provider.
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::Text(key) => key.parse().map_err(|_| Mismatch {
                found: "text that names no provider this forgetd serves",
                wanted: "a provider key",
            }),
            other => Err(Mismatch::of(other, "a provider key")),
        }
    }
}

impl<T: FromCol> FromCol for Option<T> {
    fn from_col(col: Col<'_>) -> std::result::Result<Self, Mismatch> {
        match col {
            Col::Null => Ok(None),
            other => T::from_col(other).map(Some),
        }
    }
}

/// One row of a result, read column by column.
pub struct Row<'r> {
    inner: RowRef<'r>,
}

enum RowRef<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Pg(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `index` (from 0) as the engine returned it.
    pub fn col(&self, index: usize) -> Result<Col<'_>> {
        match &self.inner {
            RowRef::Sqlite(r) => sqlite_col(r.get_ref(index)?),
            RowRef::Pg(r) => super::pg::col(r, index),
        }
    }

    /// Column `index` (from 0) as `T`.
    pub fn get<T: FromCol>(&self, index: usize) -> Result<T> {
        let col = self.col(index)?;
        T::from_col(col).map_err(|m| {
            StoreError::Column(ColError {
                index,
                found: m.found,
                wanted: m.wanted,
            })
        })
    }
}

fn sqlite_col(v: rusqlite::types::ValueRef<'_>) -> Result<Col<'_>> {
    use rusqlite::types::ValueRef;
    Ok(match v {
        ValueRef::Null => Col::Null,
        ValueRef::Integer(i) => Col::I64(i),
        ValueRef::Real(f) => Col::F64(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Col::Text(s),
            // Text that is not UTF-8 is read as the bytes it is: a String read refuses it.
            Err(_) => Col::Bytes(t),
        },
        ValueRef::Blob(b) => Col::Bytes(b),
    })
}

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value as Owned, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::I64(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::F64(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Value::I64List(ids) => ToSqlOutput::Owned(Owned::Text(
                serde_json::to_string(ids.as_ref()).expect("a list of integers is JSON"),
            )),
        })
    }
}

/// A connection or a transaction on one, as [`Sql`] sees it.
pub enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Pg(&'c std::cell::RefCell<super::pg::PgConn>),
}

/// Running statements: implemented by [`super::Store`] (each statement on its own) and
/// [`super::Tx`] (inside the transaction).
pub trait Sql {
    /// The connection statements run on.
    fn conn(&self) -> Conn<'_>;

    fn engine(&self) -> Engine {
        match self.conn() {
            Conn::Sqlite(_) => Engine::Sqlite,
            Conn::Pg(_) => Engine::Postgres,
        }
    }

    /// Runs a statement that returns no rows; returns the rows it changed.
    fn exec(&self, sql: &str, args: &[Value<'_>]) -> Result<usize> {
        match self.conn() {
            Conn::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(args))?),
            Conn::Pg(c) => Ok(c.borrow_mut().exec(sql, args)? as usize),
        }
    }

    /// Runs several statements without arguments (schema, tests' set-up).
    fn exec_batch(&self, sql: &str) -> Result<()> {
        match self.conn() {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(c) => c.borrow_mut().batch(sql),
        }
    }

    /// The first row, read by `f`; no row is an error ([`StoreError::NoRow`]).
    fn row<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.row_opt(sql, args, f)?.ok_or(StoreError::NoRow)
    }

    /// The first row, read by `f`, if there is one.
    fn row_opt<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.conn() {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                match rows.next()? {
                    Some(r) => Ok(Some(f(&Row {
                        inner: RowRef::Sqlite(r),
                    })?)),
                    None => Ok(None),
                }
            }
            Conn::Pg(c) => {
                let rows = c.borrow_mut().query(sql, args)?;
                match rows.first() {
                    Some(r) => Ok(Some(f(&Row {
                        inner: RowRef::Pg(r),
                    })?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// Every row, each read by `f`.
    fn rows<T>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.scan(sql, args, |r| {
            out.push(f(r)?);
            Ok(ControlFlow::<()>::Continue(()))
        })?;
        Ok(out)
    }

    /// Streams the rows to `f`, one at a time and without collecting them, until `f` breaks
    /// with a value (returned) or the rows end (`None`).
    fn scan<B>(
        &self,
        sql: &str,
        args: &[Value<'_>],
        mut f: impl FnMut(&Row<'_>) -> Result<ControlFlow<B>>,
    ) -> Result<Option<B>> {
        match self.conn() {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
                while let Some(r) = rows.next()? {
                    if let ControlFlow::Break(b) = f(&Row {
                        inner: RowRef::Sqlite(r),
                    })? {
                        return Ok(Some(b));
                    }
                }
                Ok(None)
            }
            Conn::Pg(c) => {
                // The rows arrive whole; the walk of the audit chain is the largest reader.
                let rows = c.borrow_mut().query(sql, args)?;
                for r in &rows {
                    if let ControlFlow::Break(b) = f(&Row {
                        inner: RowRef::Pg(r),
                    })? {
                        return Ok(Some(b));
                    }
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    #[test]
    fn arguments_round_trip_through_a_statement() {
        let (_d, s) = temp_store();
        let owned = String::from("owned");
        let none: Option<&str> = None;
        let got = s
            .row(
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6",
                args![7i64, "text", owned, none, true, 2.5f64],
                |r| {
                    Ok((
                        r.get::<i64>(0)?,
                        r.get::<String>(1)?,
                        r.get::<String>(2)?,
                        r.get::<Option<String>>(3)?,
                        r.get::<bool>(4)?,
                        r.get::<f64>(5)?,
                    ))
                },
            )
            .unwrap();
        assert_eq!(got, (7, "text".into(), "owned".into(), None, true, 2.5));
    }

    #[test]
    fn a_list_of_ids_reads_as_a_set_in_sqlite() {
        let (_d, s) = temp_store();
        let ids = vec![3i64, 5, 8];
        let n: i64 = s
            .row(
                "SELECT count(*) FROM json_each(?1) WHERE value IN (5, 8, 13)",
                args![ids],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_column_of_the_wrong_kind_is_an_error_that_names_it() {
        let (_d, s) = temp_store();
        let e = s
            .row("SELECT 1, 'x'", args![], |r| r.get::<i64>(1))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("column 1 holds text, not an integer"),
            "{e}"
        );
        // A blob is not text, and NULL is not a number: no silent defaults.
        assert!(
            s.row("SELECT x'00ff'", args![], |r| r.get::<String>(0))
                .is_err()
        );
        assert!(s.row("SELECT NULL", args![], |r| r.get::<i64>(0)).is_err());
        assert_eq!(
            s.row("SELECT NULL", args![], |r| r.get::<Option<i64>>(0))
                .unwrap(),
            None
        );
        assert!(s.row("SELECT -1", args![], |r| r.get::<u64>(0)).is_err());
    }

    #[test]
    fn no_row_is_none_for_row_opt_and_an_error_for_row() {
        let (_d, s) = temp_store();
        let sql = "SELECT 1 WHERE 0";
        assert_eq!(s.row_opt(sql, args![], |r| r.get::<i64>(0)).unwrap(), None);
        assert!(matches!(
            s.row(sql, args![], |r| r.get::<i64>(0)),
            Err(StoreError::NoRow)
        ));
    }
}
