//! Copying a whole state to another (`recast state migrate`, `recast state backup`): every table
//! of [`TABLES`] row for row, all columns, the same ids, in one transaction on the destination,
//! verified before it commits. The source is read in one transaction too (repeatable read on
//! PostgreSQL), so the copy is one consistent snapshot even while a server writes.

use crate::db::{Db, DbErr, Dialect, Param, Row};
use crate::{Error, Result, State};
use serde::Serialize;

/// Every table a state holds, in the order they are copied. The one list: a test compares it
/// with the tables the migrations create on both backends, and a copy refuses a source that
/// holds a table not named here (written by a newer recast).
pub(crate) const TABLES: &[&str] = &[
    "projects",
    "releases",
    "services",
    "instances",
    "rollouts",
    "events",
    "routes",
    "snapshots",
    "hosts",
    "leases",
];

/// Rows copied, per table, in the order of [`TABLES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub tables: Vec<TableCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableCount {
    pub table: String,
    pub rows: u64,
}

/// One cell: every column of the schema is an integer or text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Cell {
    fn param(&self) -> &dyn Param {
        match self {
            Cell::Int(v) => v,
            Cell::Text(v) => v,
        }
    }
}

/// A table's columns (name, integer?) in their schema order.
type Columns = Vec<(String, bool)>;

/// A table's columns and rows, sorted (every table's primary key leads its columns, so this
/// is primary-key order).
pub(crate) struct Table {
    pub(crate) name: &'static str,
    columns: Columns,
    pub(crate) rows: Vec<Vec<Cell>>,
}

/// The user tables of the database `c` is connected to (not SQLite's own, not the migration
/// record), sorted.
pub(crate) fn schema_tables(c: &mut dyn Db) -> Result<Vec<String>, DbErr> {
    let sql = match c.dialect() {
        Dialect::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        }
        Dialect::Postgres => {
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()
             AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations' ORDER BY table_name"
        }
    };
    c.rows(sql, &[], |r| r.get(0))
}

fn columns(c: &mut dyn Db, table: &str) -> Result<Columns, DbErr> {
    let sql = match c.dialect() {
        Dialect::Sqlite => "SELECT name, type FROM pragma_table_info(?1) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position"
        }
    };
    let cols: Vec<(String, String)> = c.rows(sql, &[&table], |r| Ok((r.get(0)?, r.get(1)?)))?;
    cols.into_iter()
        .map(|(name, ty)| {
            let ty = ty.to_ascii_lowercase();
            if ty.contains("int") {
                Ok((name, true))
            } else if ty == "text" {
                Ok((name, false))
            } else {
                Err(refused(format!(
                    "table {table}, column {name}: type {ty} is neither integer nor text"
                )))
            }
        })
        .collect()
}

fn refused(what: String) -> DbErr {
    DbErr::Refused(what)
}

fn read_rows(c: &mut dyn Db, table: &str, columns: &Columns) -> Result<Vec<Vec<Cell>>, DbErr> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    let sql = format!("SELECT {} FROM {table}", names.join(", "));
    let mut rows = c.rows(&sql, &[], |r: &Row<'_>| {
        columns
            .iter()
            .enumerate()
            .map(|(i, (_, int))| {
                Ok(match int {
                    true => Cell::Int(r.get(i)?),
                    false => Cell::Text(r.get(i)?),
                })
            })
            .collect()
    })?;
    rows.sort();
    Ok(rows)
}

/// Every table of the source, in one transaction; a table not in [`TABLES`] is refused.
pub(crate) fn read_all(c: &mut dyn Db) -> Result<Vec<Table>, DbErr> {
    if c.dialect() == Dialect::Postgres {
        // One snapshot for every table (must come before the transaction's first query).
        c.batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
    }
    let present = schema_tables(c)?;
    if let Some(t) = present.iter().find(|t| !TABLES.contains(&t.as_str())) {
        return Err(refused(format!(
            "the source holds table {t}, which this recast does not know (written by a newer recast?)"
        )));
    }
    TABLES
        .iter()
        .map(|&name| {
            let columns = columns(c, name)?;
            let rows = read_rows(c, name, &columns)?;
            Ok(Table {
                name,
                columns,
                rows,
            })
        })
        .collect()
}

/// Into the destination (in its transaction): refuse rows already there or other columns,
/// insert, move identity sequences past the copied ids, read back and compare.
fn write_all(c: &mut dyn Db, tables: &[Table]) -> Result<CopyReport, DbErr> {
    for t in tables {
        let n: i64 = c.one(&format!("SELECT COUNT(*) FROM {}", t.name), &[], |r| {
            r.get(0)
        })?;
        if n > 0 {
            return Err(refused(format!(
                "table {} already holds {n} rows: copy only into an empty state",
                t.name
            )));
        }
        let cols = columns(c, t.name)?;
        if cols != t.columns {
            return Err(refused(format!(
                "table {}: the columns differ (source {:?}, destination {:?}): both must be at the same schema version",
                t.name, t.columns, cols
            )));
        }
    }
    for t in tables {
        insert_rows(c, t)?;
    }
    if c.dialect() == Dialect::Postgres {
        reset_sequences(c, tables)?;
    }
    let mut report = CopyReport { tables: Vec::new() };
    for t in tables {
        verify(c, t)?;
        report.tables.push(TableCount {
            table: t.name.to_string(),
            rows: t.rows.len() as u64,
        });
    }
    Ok(report)
}

fn insert_rows(c: &mut dyn Db, t: &Table) -> Result<(), DbErr> {
    let names: Vec<&str> = t.columns.iter().map(|(n, _)| n.as_str()).collect();
    let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        t.name,
        names.join(", "),
        marks.join(", ")
    );
    for row in &t.rows {
        let params: Vec<&dyn Param> = row.iter().map(Cell::param).collect();
        c.execute(&sql, &params)?;
    }
    Ok(())
}

/// New rows of a table with an identity `id` continue after the highest copied id.
fn reset_sequences(c: &mut dyn Db, tables: &[Table]) -> Result<(), DbErr> {
    let integer_id = |t: &&Table| t.columns.iter().any(|(n, int)| n == "id" && *int);
    for t in tables.iter().filter(integer_id) {
        let sql = format!(
            "SELECT setval(s, m + 1, false) FROM (SELECT pg_get_serial_sequence(?1, 'id') AS s,
             COALESCE(MAX(id), 0)::bigint AS m FROM {}) x WHERE s IS NOT NULL",
            t.name
        );
        c.rows(&sql, &[&t.name], |_| Ok(()))?;
    }
    Ok(())
}

/// The destination's rows of `t` are the source's, row for row.
fn verify(c: &mut dyn Db, t: &Table) -> Result<(), DbErr> {
    let got = read_rows(c, t.name, &t.columns)?;
    if got.len() != t.rows.len() {
        return Err(refused(format!(
            "verifying table {}: {} rows copied, {} read back",
            t.name,
            t.rows.len(),
            got.len()
        )));
    }
    if let Some((want, got)) = t.rows.iter().zip(&got).find(|(a, b)| a != b) {
        return Err(refused(format!(
            "verifying table {}: row {want:?} read back as {got:?}",
            t.name
        )));
    }
    Ok(())
}

impl State {
    /// Copy every row of this state into `dest`, which must hold none (its tables are named
    /// when it does): one transaction on `dest`, checked row for row before it commits.
    /// PostgreSQL identity sequences continue after the copied ids.
    pub fn copy_to(&self, dest: &State) -> Result<CopyReport> {
        let tables = self.tx(read_all)?;
        dest.tx(|c| write_all(c, &tables))
    }

    /// A consistent copy of this state into a new SQLite file at `path` (an existing file is
    /// refused): `VACUUM INTO` from SQLite, a copy from one repeatable-read snapshot from
    /// PostgreSQL. The file is removed again if the copy fails.
    pub fn backup(&self, path: &std::path::Path) -> Result<CopyReport> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => Error::Copy {
                    to: p.clone(),
                    what: "the file exists already: a backup goes to a new file".into(),
                },
                _ => Error::Io {
                    path: p.clone(),
                    source,
                },
            })?;
        let r = self.backup_into(path);
        if r.is_err() {
            std::fs::remove_file(path).ok();
        }
        r
    }

    fn backup_into(&self, path: &std::path::Path) -> Result<CopyReport> {
        match &self.backend {
            crate::Backend::Sqlite(_) => {
                let Some(file) = path.to_str() else {
                    return Err(Error::Url {
                        url: path.display().to_string(),
                        reason: "a backup file's path must be UTF-8".into(),
                    });
                };
                let sql = format!("VACUUM INTO '{}'", file.replace('\'', "''"));
                self.with(|c| c.batch(&sql))?;
                let copy = State::open(path)?;
                copy.tx(|c| {
                    let mut report = CopyReport { tables: Vec::new() };
                    for t in TABLES {
                        let n: i64 =
                            c.one(&format!("SELECT COUNT(*) FROM {t}"), &[], |r| r.get(0))?;
                        report.tables.push(TableCount {
                            table: t.to_string(),
                            rows: n as u64,
                        });
                    }
                    Ok(report)
                })
            }
            crate::Backend::Postgres(_) => self.copy_to(&State::open(path)?),
        }
    }
}
