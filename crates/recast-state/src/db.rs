//! The one narrow interface every query goes through: execute a statement, read rows of simple
//! values, run a batch (migrations). SQLite and PostgreSQL implement it; the SQL is written once
//! in SQLite's spelling with numbered placeholders (`?1`), and [`pg_sql`] / [`pg_schema`] are the
//! only places that translate it.

use recast_api::v1::UnknownValue;
use std::borrow::Cow;

/// A query parameter both drivers can bind (`i64`, `&str`, `String`, `Option` of them).
pub(crate) trait Param {
    fn lite(&self) -> &dyn rusqlite::ToSql;
    fn pg(&self) -> &(dyn tokio_postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + tokio_postgres::types::ToSql + Sync> Param for T {
    fn lite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        self
    }
}

/// A column type both drivers can read (`i64`, `String`, `Option` of them).
pub(crate) trait Col:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}

impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> Col for T {}

/// One result row of either driver.
pub(crate) enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    pub(crate) fn get<T: Col>(&self, idx: usize) -> Result<T, DbErr> {
        match self {
            Row::Lite(r) => r.get(idx).map_err(DbErr::Lite),
            Row::Pg(r) => r.try_get(idx).map_err(|source| DbErr::Pg {
                sql: "reading a row".into(),
                source,
            }),
        }
    }

    /// Column `idx` read as an enum `T`; an unknown value is an error naming `table` and `row`.
    pub(crate) fn enum_col<T>(
        &self,
        idx: usize,
        table: &'static str,
        row: impl FnOnce() -> String,
    ) -> Result<T, DbErr>
    where
        T: std::str::FromStr<Err = UnknownValue>,
    {
        let text: String = self.get(idx)?;
        text.parse().map_err(|source| {
            DbErr::Bad(BadValue {
                table,
                row: row(),
                source,
            })
        })
    }
}

/// A row's value that names no variant of the enum it is read as.
#[derive(Debug)]
pub(crate) struct BadValue {
    pub(crate) table: &'static str,
    pub(crate) row: String,
    pub(crate) source: UnknownValue,
}

/// What a query can fail with, before `State` names the database it failed in.
#[derive(Debug)]
pub(crate) enum DbErr {
    Lite(rusqlite::Error),
    /// `sql`: the statement's first words (what was being done).
    Pg {
        sql: String,
        source: tokio_postgres::Error,
    },
    /// No answer in time: the connection is given up.
    Timeout {
        sql: String,
    },
    Bad(BadValue),
    /// A copy refused or found different (`what` names the table).
    Refused(String),
    /// A write of a project whose lease this state does not hold.
    Fenced {
        project: String,
        detail: String,
    },
}

impl From<rusqlite::Error> for DbErr {
    fn from(e: rusqlite::Error) -> DbErr {
        DbErr::Lite(e)
    }
}

/// The first words of a statement, to name it in an error.
pub(crate) fn sql_head(sql: &str) -> String {
    let words: Vec<&str> = sql.split_whitespace().take(4).collect();
    words.join(" ")
}

/// The connection (or transaction) every query runs on.
pub(crate) trait Db {
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbErr>;
    fn query_each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbErr>,
    ) -> Result<(), DbErr>;
    /// Several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbErr>;
    fn dialect(&self) -> Dialect;
}

impl dyn Db + '_ {
    pub(crate) fn rows<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl Fn(&Row<'_>) -> Result<T, DbErr>,
    ) -> Result<Vec<T>, DbErr> {
        let mut out = Vec::new();
        self.query_each(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    pub(crate) fn opt<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl Fn(&Row<'_>) -> Result<T, DbErr>,
    ) -> Result<Option<T>, DbErr> {
        let mut out = None;
        self.query_each(sql, params, &mut |r| {
            if out.is_none() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query that always answers one (an aggregate, `RETURNING`).
    pub(crate) fn one<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl Fn(&Row<'_>) -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        match self.opt(sql, params, f)? {
            Some(v) => Ok(v),
            None => Err(DbErr::Lite(rusqlite::Error::QueryReturnedNoRows)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement in PostgreSQL's spelling: `?N` placeholders become `$N`.
pub(crate) fn pg_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A migration in PostgreSQL's spelling: ids are identity columns, integers are 64-bit (the code
/// reads and binds every integer as `i64`).
pub(crate) fn pg_schema(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace("INTEGER", "BIGINT")
}

/// SQLite: one connection (behind `State`'s mutex); statements are cached by their text.
pub(crate) struct Lite<'c>(pub(crate) &'c rusqlite::Connection);

impl Db for Lite<'_> {
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbErr> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params.iter().map(|p| p.lite())))?;
        Ok(n as u64)
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbErr>,
    ) -> Result<(), DbErr> {
        let mut st = self.0.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params.iter().map(|p| p.lite())))?;
        while let Some(r) = rows.next()? {
            each(&Row::Lite(r))?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbErr> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_schema_translate_to_postgres() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
        assert_eq!(
            pg_schema("id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL"),
            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL"
        );
    }
}
