//! The state store: every release (what ran, when, how it ended), the instances of each service,
//! the progress of every rollout step by step, routes, and an event log.
//!
//! One SQLite file (`<data-dir>/state.db`, WAL) behind this narrow API: only this crate knows SQL,
//! so a PostgreSQL backend can implement the same methods. The schema is versioned
//! (`PRAGMA user_version`) and migrated forward on open.

pub use recast_api::v1::{ReleaseOutcome, RolloutState, RouteProtocol, UnknownValue};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state database {path}: {source}")]
    Db {
        path: String,
        source: rusqlite::Error,
    },
    /// A row holds a value none of the code's enums name (written by a newer recast, or edited).
    #[error("state database {path}: table {table}, row {row}: {source}")]
    Invalid {
        path: String,
        table: &'static str,
        row: String,
        source: UnknownValue,
    },
    #[error("state database {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One release of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub project: String,
    pub service: String,
    pub number: i64,
    /// Hash of everything that defines it (image digest and service settings).
    pub spec_hash: String,
    /// Image manifest digest.
    pub digest: String,
    /// Image name at build time.
    pub image: String,
    /// The service's settings as JSON (the spec model).
    pub spec: String,
    pub created_ms: i64,
    pub created_by: String,
    pub outcome: ReleaseOutcome,
    pub reason: Option<String>,
    pub finished_ms: Option<i64>,
}

/// What a new release is made of.
#[derive(Debug, Clone, Copy)]
pub struct NewRelease<'a> {
    pub project: &'a str,
    pub service: &'a str,
    pub digest: &'a str,
    pub image: &'a str,
    pub spec: &'a str,
    pub spec_hash: &'a str,
    pub by: &'a str,
}

/// A rollout: one release replacing another, step by step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub strategy: String,
    pub state: RolloutState,
    pub step: i64,
    pub detail: String,
    pub started_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub project: String,
    pub service: String,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    pub project: String,
    pub name: String,
    pub listen: String,
    pub service: String,
    /// The route's upstream timeout (`route { timeout }`), in milliseconds.
    pub timeout_ms: u64,
    /// HTTP or TCP (`route { protocol }`).
    #[serde(default)]
    pub protocol: RouteProtocol,
}

/// A copy of an exclusive volume, taken before a release started on it: the row is the API's
/// type (`GET /v1/volumes/snapshots` answers rows as they are).
pub use recast_api::v1::Snapshot;

/// The spec directory a project name belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectOwner {
    pub name: String,
    /// Canonical path of the spec directory.
    pub dir: String,
    /// When this directory became the owner.
    pub since_ms: i64,
}

pub struct State {
    conn: Mutex<Connection>,
    path: String,
}

const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE releases (
        project TEXT NOT NULL, service TEXT NOT NULL, number INTEGER NOT NULL,
        spec_hash TEXT NOT NULL, digest TEXT NOT NULL, image TEXT NOT NULL, spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL, created_by TEXT NOT NULL,
        outcome TEXT NOT NULL, reason TEXT, finished_ms INTEGER,
        PRIMARY KEY (project, service, number));
     CREATE TABLE services (
        project TEXT NOT NULL, service TEXT NOT NULL, current INTEGER,
        PRIMARY KEY (project, service));
     CREATE TABLE instances (
        id TEXT PRIMARY KEY, project TEXT NOT NULL, service TEXT NOT NULL,
        release INTEGER NOT NULL, created_ms INTEGER NOT NULL);
     CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, service TEXT NOT NULL,
        from_release INTEGER, to_release INTEGER NOT NULL, strategy TEXT NOT NULL,
        state TEXT NOT NULL, step INTEGER NOT NULL, detail TEXT NOT NULL,
        started_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
     CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, project TEXT NOT NULL,
        service TEXT NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
     CREATE TABLE routes (
        project TEXT NOT NULL, name TEXT NOT NULL, listen TEXT NOT NULL, service TEXT NOT NULL,
        PRIMARY KEY (project, name));",
    // 2: a service's events by kind (analysis verdicts in `history`).
    "CREATE INDEX events_by_kind ON events (project, service, kind, id);",
    // 3: which spec directory owns each project name (projects deployed before have no owner
    // until their next apply records one).
    "CREATE TABLE projects (
        name TEXT PRIMARY KEY, dir TEXT NOT NULL, since_ms INTEGER NOT NULL);",
    // 4: a route's upstream timeout.
    "ALTER TABLE routes ADD COLUMN timeout_ms INTEGER NOT NULL DEFAULT 30000;",
    // 5: snapshots of exclusive volumes, taken whenever one changes hands (recreate, rollback,
    // restore).
    "CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, service TEXT NOT NULL,
        volume TEXT NOT NULL, before_release INTEGER NOT NULL, of_release INTEGER,
        path TEXT NOT NULL, created_ms INTEGER NOT NULL);
     CREATE INDEX snapshots_by_volume ON snapshots (project, service, volume, id);",
    // 6: a route's protocol (routes recorded before it are HTTP).
    "ALTER TABLE routes ADD COLUMN protocol TEXT NOT NULL DEFAULT 'http';",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// A row's value that names no variant of the enum it is read as: carried through rusqlite's
/// conversion error to `State::with`, which turns it into `Error::Invalid`.
#[derive(Debug)]
struct BadValue {
    table: &'static str,
    row: String,
    source: UnknownValue,
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {}, row {}: {}", self.table, self.row, self.source)
    }
}

impl std::error::Error for BadValue {}

/// Column `idx` of `r` read as an enum `T`; an unknown value is an error naming `table` and `row`.
fn enum_col<T>(
    r: &rusqlite::Row<'_>,
    idx: usize,
    table: &'static str,
    row: impl FnOnce() -> String,
) -> rusqlite::Result<T>
where
    T: std::str::FromStr<Err = UnknownValue>,
{
    let text: String = r.get(idx)?;
    text.parse().map_err(|source| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            Box::new(BadValue {
                table,
                row: row(),
                source,
            }),
        )
    })
}

fn release_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Release> {
    let (project, service, number): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let outcome = enum_col(r, 9, "releases", || {
        format!("{project}/{service} release {number}")
    })?;
    Ok(Release {
        project,
        service,
        number,
        spec_hash: r.get(3)?,
        digest: r.get(4)?,
        image: r.get(5)?,
        spec: r.get(6)?,
        created_ms: r.get(7)?,
        created_by: r.get(8)?,
        outcome,
        reason: r.get(10)?,
        finished_ms: r.get(11)?,
    })
}

const RELEASE_COLS: &str = "project, service, number, spec_hash, digest, image, spec, created_ms, created_by, outcome, reason, finished_ms";

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    let id: i64 = r.get(0)?;
    Ok(Rollout {
        id,
        project: r.get(1)?,
        service: r.get(2)?,
        from_release: r.get(3)?,
        to_release: r.get(4)?,
        strategy: r.get(5)?,
        state: enum_col(r, 6, "rollouts", || format!("id {id}"))?,
        step: r.get(7)?,
        detail: r.get(8)?,
        started_ms: r.get(9)?,
        updated_ms: r.get(10)?,
    })
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        project: r.get(2)?,
        service: r.get(3)?,
        kind: r.get(4)?,
        message: r.get(5)?,
    })
}

const ROLLOUT_COLS: &str = "id, project, service, from_release, to_release, strategy, state, step, detail, started_ms, updated_ms";

impl State {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<State> {
        let p = path.display().to_string();
        let err = |source| Error::Db {
            path: p.clone(),
            source,
        };
        // Private from the first byte (SQLite gives the -wal and -shm files the same mode).
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let created = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
            created.map_err(|e| Error::Io {
                path: p.clone(),
                source: e,
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(&format!(
                "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(err)?;
        }
        Ok(State {
            conn: Mutex::new(conn),
            path: p,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| {
            let source = match source {
                rusqlite::Error::FromSqlConversionFailure(i, t, e) => {
                    match e.downcast::<BadValue>() {
                        Ok(bad) => {
                            let BadValue { table, row, source } = *bad;
                            return Error::Invalid {
                                path: self.path.clone(),
                                table,
                                row,
                                source,
                            };
                        }
                        Err(e) => rusqlite::Error::FromSqlConversionFailure(i, t, e),
                    }
                }
                other => other,
            };
            Error::Db {
                path: self.path.clone(),
                source,
            }
        })
    }

    // ---- project ownership ----------------------------------------------------------------------

    /// The directory that owns project `name`, if one was recorded.
    pub fn project_owner(&self, name: &str) -> Result<Option<ProjectOwner>> {
        self.with(|c| {
            c.query_row(
                "SELECT name, dir, since_ms FROM projects WHERE name = ?1",
                params![name],
                |r| {
                    Ok(ProjectOwner {
                        name: r.get(0)?,
                        dir: r.get(1)?,
                        since_ms: r.get(2)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Record `dir` as the owner of project `name` (replacing any earlier owner).
    pub fn set_project_owner(&self, name: &str, dir: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO projects (name, dir, since_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET dir = excluded.dir, since_ms = excluded.since_ms
                 WHERE projects.dir <> excluded.dir",
                params![name, dir, now_ms()],
            )
            .map(drop)
        })
    }

    // ---- releases -------------------------------------------------------------------------------

    /// Record a new release (numbered after the last one) with outcome `Pending`.
    pub fn new_release(&self, r: &NewRelease<'_>) -> Result<Release> {
        let NewRelease {
            project,
            service,
            digest,
            image,
            spec,
            spec_hash,
            by,
        } = *r;
        self.with(|c| {
            let n: i64 = c.query_row(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE project = ?1 AND service = ?2",
                params![project, service],
                |r| r.get(0),
            )?;
            c.execute(
                &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL)"),
                params![project, service, n, spec_hash, digest, image, spec, now_ms(), by, ReleaseOutcome::Pending.as_str()],
            )?;
            c.query_row(&format!("SELECT {RELEASE_COLS} FROM releases WHERE project = ?1 AND service = ?2 AND number = ?3"), params![project, service, n], release_row)
        })
    }

    pub fn set_outcome(
        &self,
        project: &str,
        service: &str,
        number: i64,
        outcome: ReleaseOutcome,
        reason: Option<&str>,
    ) -> Result<()> {
        let finished = outcome.is_final().then(now_ms);
        self.with(|c| {
            c.execute(
                "UPDATE releases SET outcome = ?4, reason = ?5, finished_ms = COALESCE(?6, finished_ms) WHERE project = ?1 AND service = ?2 AND number = ?3",
                params![project, service, number, outcome.as_str(), reason, finished],
            )
            .map(drop)
        })
    }

    pub fn release(&self, project: &str, service: &str, number: i64) -> Result<Option<Release>> {
        self.with(|c| {
            // Cached statements: the guard reads releases several times a second.
            c.prepare_cached(&format!("SELECT {RELEASE_COLS} FROM releases WHERE project = ?1 AND service = ?2 AND number = ?3"))?
                .query_row(params![project, service, number], release_row)
                .optional()
        })
    }

    /// Every release of a service, oldest first.
    pub fn releases(&self, project: &str, service: &str) -> Result<Vec<Release>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {RELEASE_COLS} FROM releases WHERE project = ?1 AND service = ?2 ORDER BY number"))?;
            st.query_map(params![project, service], release_row)?.collect()
        })
    }

    /// The release serving traffic, if any.
    pub fn current(&self, project: &str, service: &str) -> Result<Option<Release>> {
        let n: Option<i64> = self.with(|c| {
            c.prepare_cached("SELECT current FROM services WHERE project = ?1 AND service = ?2")?
                .query_row(params![project, service], |r| r.get(0))
                .optional()
                .map(Option::flatten)
        })?;
        match n {
            Some(n) => self.release(project, service, n),
            None => Ok(None),
        }
    }

    pub fn set_current(&self, project: &str, service: &str, number: Option<i64>) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO services (project, service, current) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project, service) DO UPDATE SET current = excluded.current",
                params![project, service, number],
            )
            .map(drop)
        })
    }

    /// The current release of every service of a project, in one query.
    pub fn current_releases(
        &self,
        project: &str,
    ) -> Result<std::collections::BTreeMap<String, Release>> {
        let cols: Vec<String> = RELEASE_COLS.split(", ").map(|c| format!("r.{c}")).collect();
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM services s JOIN releases r ON r.project = s.project AND r.service = s.service AND r.number = s.current WHERE s.project = ?1",
                cols.join(", ")
            ))?;
            st.query_map(params![project], release_row)?.map(|r| r.map(|r| (r.service.clone(), r))).collect()
        })
    }

    /// The highest release number of every service of a project, in one query.
    pub fn last_release_numbers(
        &self,
        project: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT service, MAX(number) FROM releases WHERE project = ?1 GROUP BY service",
            )?;
            st.query_map(params![project], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
    }

    /// Every (project, service) with a current release.
    pub fn all_services(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT project, service FROM services WHERE current IS NOT NULL ORDER BY project, service")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
    }

    // ---- instances ------------------------------------------------------------------------------

    pub fn add_instance(&self, id: &str, project: &str, service: &str, release: i64) -> Result<()> {
        self.with(|c| {
            c.execute("INSERT OR REPLACE INTO instances (id, project, service, release, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)", params![id, project, service, release, now_ms()])
                .map(drop)
        })
    }

    pub fn remove_instance(&self, id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM instances WHERE id = ?1", params![id])
                .map(drop)
        })
    }

    // ---- rollouts -------------------------------------------------------------------------------

    pub fn start_rollout(
        &self,
        project: &str,
        service: &str,
        from: Option<i64>,
        to: i64,
        strategy: &str,
    ) -> Result<i64> {
        self.with(|c| {
            let now = now_ms();
            c.execute(
                "INSERT INTO rollouts (project, service, from_release, to_release, strategy, state, step, detail, started_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?7, 0, 'started', ?6, ?6)",
                params![project, service, from, to, strategy, now, RolloutState::Running.as_str()],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn rollout_step(&self, id: i64, step: i64, detail: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rollouts SET step = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, step, detail, now_ms()],
            )
            .map(drop)
        })
    }

    pub fn finish_rollout(&self, id: i64, state: RolloutState, detail: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE rollouts SET state = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, state.as_str(), detail, now_ms()],
            )
            .map(drop)
        })
    }

    /// Rollouts that were running when their server stopped.
    pub fn unfinished_rollouts(&self) -> Result<Vec<Rollout>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts WHERE state = ?1 ORDER BY id"
            ))?;
            st.query_map(params![RolloutState::Running.as_str()], rollout_row)?
                .collect()
        })
    }

    pub fn rollouts(&self, project: &str, service: &str) -> Result<Vec<Rollout>> {
        self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE project = ?1 AND service = ?2 ORDER BY id"))?;
            st.query_map(params![project, service], rollout_row)?.collect()
        })
    }

    // ---- volume snapshots -----------------------------------------------------------------------

    pub fn add_snapshot(
        &self,
        project: &str,
        service: &str,
        volume: &str,
        before_release: i64,
        of_release: Option<i64>,
        path: &str,
    ) -> Result<Snapshot> {
        self.with(|c| {
            let at = now_ms();
            c.execute(
                "INSERT INTO snapshots (project, service, volume, before_release, of_release, path, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![project, service, volume, before_release, of_release, path, at],
            )?;
            Ok(Snapshot {
                id: c.last_insert_rowid(),
                project: project.into(),
                service: service.into(),
                volume: volume.into(),
                before_release,
                of_release,
                path: path.into(),
                created_ms: at,
            })
        })
    }

    /// A service's snapshots (of every volume), oldest first.
    pub fn snapshots(&self, project: &str, service: &str) -> Result<Vec<Snapshot>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, project, service, volume, before_release, of_release, path, created_ms
                 FROM snapshots WHERE project = ?1 AND service = ?2 ORDER BY id",
            )?;
            st.query_map(params![project, service], |r| {
                Ok(Snapshot {
                    id: r.get(0)?,
                    project: r.get(1)?,
                    service: r.get(2)?,
                    volume: r.get(3)?,
                    before_release: r.get(4)?,
                    of_release: r.get(5)?,
                    path: r.get(6)?,
                    created_ms: r.get(7)?,
                })
            })?
            .collect()
        })
    }

    pub fn remove_snapshot(&self, id: i64) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", params![id])
                .map(drop)
        })
    }

    // ---- routes and events ----------------------------------------------------------------------

    /// Replace a project's routes.
    pub fn set_routes(&self, project: &str, routes: &[RouteRow]) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM routes WHERE project = ?1", params![project])?;
            for r in routes {
                c.execute(
                    "INSERT INTO routes (project, name, listen, service, timeout_ms, protocol) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![project, r.name, r.listen, r.service, r.timeout_ms as i64, r.protocol.as_str()],
                )?;
            }
            Ok(())
        })
    }

    pub fn routes(&self) -> Result<Vec<RouteRow>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT project, name, listen, service, timeout_ms, protocol FROM routes ORDER BY project, name",
            )?;
            st.query_map([], |r| {
                let (project, name): (String, String) = (r.get(0)?, r.get(1)?);
                let protocol = enum_col(r, 5, "routes", || format!("{project}/{name}"))?;
                Ok(RouteRow {
                    project,
                    name,
                    listen: r.get(2)?,
                    service: r.get(3)?,
                    timeout_ms: r.get::<_, i64>(4)?.max(1) as u64,
                    protocol,
                })
            })?
            .collect()
        })
    }

    pub fn event(&self, project: &str, service: &str, kind: &str, message: &str) -> Result<Event> {
        self.with(|c| {
            let at = now_ms();
            c.execute("INSERT INTO events (at_ms, project, service, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)", params![at, project, service, kind, message])?;
            Ok(Event { id: c.last_insert_rowid(), at_ms: at, project: project.into(), service: service.into(), kind: kind.into(), message: message.into() })
        })
    }

    /// Every event of one kind for a service, oldest first.
    pub fn events_of(&self, project: &str, service: &str, kind: &str) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, at_ms, project, service, kind, message FROM events
                 WHERE project = ?1 AND service = ?2 AND kind = ?3 ORDER BY id",
            )?;
            st.query_map(params![project, service, kind], event_row)?
                .collect()
        })
    }

    /// Events after `since` (an event id), oldest first.
    pub fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id, at_ms, project, service, kind, message FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            st.query_map(params![since, limit], event_row)?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_number_up_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.db");
        {
            let s = State::open(&path).expect("open");
            let r1 = s
                .new_release(&NewRelease {
                    project: "p",
                    service: "web",
                    digest: "sha256:a",
                    image: "web",
                    spec: "{}",
                    spec_hash: "h1",
                    by: "test",
                })
                .expect("r1");
            let r2 = s
                .new_release(&NewRelease {
                    project: "p",
                    service: "web",
                    digest: "sha256:b",
                    image: "web",
                    spec: "{}",
                    spec_hash: "h2",
                    by: "test",
                })
                .expect("r2");
            assert_eq!((r1.number, r2.number), (1, 2));
            s.set_outcome("p", "web", 1, ReleaseOutcome::Succeeded, None)
                .expect("outcome");
            s.set_current("p", "web", Some(1)).expect("current");
            let id = s
                .start_rollout("p", "web", Some(1), 2, "rolling")
                .expect("rollout");
            s.rollout_step(id, 1, "one new instance healthy")
                .expect("step");
        }
        let s = State::open(&path).expect("reopen");
        assert_eq!(
            s.current("p", "web").expect("current").map(|r| r.number),
            Some(1)
        );
        assert_eq!(s.releases("p", "web").expect("history").len(), 2);
        assert_eq!(s.project_owner("p").expect("owner"), None);
        s.set_project_owner("p", "/srv/a/svc").expect("own");
        let first = s.project_owner("p").expect("owner").expect("recorded");
        s.set_project_owner("p", "/srv/a/svc").expect("own again");
        assert_eq!(s.project_owner("p").expect("owner"), Some(first));
        s.set_project_owner("p", "/srv/b/svc").expect("move");
        assert_eq!(
            s.project_owner("p").expect("owner").map(|o| o.dir),
            Some("/srv/b/svc".into())
        );
        let open = s.unfinished_rollouts().expect("rollouts");
        assert_eq!(
            (open.len(), open[0].step, open[0].detail.as_str()),
            (1, 1, "one new instance healthy")
        );
    }

    #[test]
    fn routes_keep_their_protocol_and_older_routes_are_http() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.db");
        // A store as recast wrote it before migration 6, with a route in it.
        {
            let c = Connection::open(&path).expect("open");
            for (i, m) in MIGRATIONS.iter().enumerate().take(5) {
                c.execute_batch(&format!(
                    "BEGIN; {m}; PRAGMA user_version = {}; COMMIT;",
                    i + 1
                ))
                .expect("migrate");
            }
            c.execute(
                "INSERT INTO routes (project, name, listen, service, timeout_ms) VALUES ('p', 'www', '127.0.0.1:8080', 'web', 5000)",
                [],
            )
            .expect("route");
        }
        let s = State::open(&path).expect("open migrates");
        let old = s.routes().expect("routes");
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].protocol, RouteProtocol::Http);
        let db = RouteRow {
            project: "p".into(),
            name: "db".into(),
            listen: "127.0.0.1:15432".into(),
            service: "db".into(),
            timeout_ms: 30_000,
            protocol: RouteProtocol::Tcp,
        };
        s.set_routes("p", &[old[0].clone(), db.clone()])
            .expect("set routes");
        drop(s);
        let s = State::open(&path).expect("reopen");
        assert_eq!(s.routes().expect("routes"), vec![db, old[0].clone()]);
        s.with(|c| c.execute("UPDATE routes SET protocol = 'udp' WHERE name = 'db'", []))
            .expect("tamper");
        let text = s.routes().expect_err("an unknown protocol").to_string();
        assert!(
            text.contains("table routes, row p/db")
                && text.contains("unknown route protocol \"udp\""),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_outcome_or_state_is_an_error_naming_table_row_and_value() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = State::open(&dir.path().join("state.db")).expect("open");
        let r = s
            .new_release(&NewRelease {
                project: "p",
                service: "web",
                digest: "sha256:a",
                image: "web",
                spec: "{}",
                spec_hash: "h1",
                by: "test",
            })
            .expect("release");
        assert_eq!(r.outcome, ReleaseOutcome::Pending);
        assert_eq!(r.finished_ms, None);
        s.set_outcome("p", "web", 1, ReleaseOutcome::RolledBack, Some("unhealthy"))
            .expect("outcome");
        let r = s.release("p", "web", 1).expect("read").expect("there");
        assert_eq!(r.outcome, ReleaseOutcome::RolledBack);
        assert!(
            r.finished_ms.is_some(),
            "a final outcome records when: {r:?}"
        );
        let id = s
            .start_rollout("p", "web", None, 1, "rolling")
            .expect("rollout");
        assert_eq!(
            s.unfinished_rollouts().expect("open")[0].state,
            RolloutState::Running
        );
        s.finish_rollout(id, RolloutState::Failed, "stopped")
            .expect("finish");
        assert_eq!(
            s.rollouts("p", "web").expect("rollouts")[0].state,
            RolloutState::Failed
        );

        s.with(|c| {
            c.execute("UPDATE releases SET outcome = 'sideways'", [])?;
            c.execute("UPDATE rollouts SET state = 'upside_down'", [])
        })
        .expect("tamper");
        let e = s.release("p", "web", 1).expect_err("an unknown outcome");
        assert!(
            matches!(
                e,
                Error::Invalid {
                    table: "releases",
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("table releases, row p/web release 1")
                && text.contains("unknown release outcome \"sideways\""),
            "{text}"
        );
        let text = s
            .rollouts("p", "web")
            .expect_err("an unknown state")
            .to_string();
        assert!(
            text.contains(&format!("table rollouts, row id {id}"))
                && text.contains("unknown rollout state \"upside_down\""),
            "{text}"
        );
    }

    #[test]
    fn snapshots_are_recorded_per_service_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.db");
        {
            let s = State::open(&path).expect("open");
            s.add_snapshot("p", "db", "data", 2, Some(1), "/d/snapshots/p/db/data/2-x")
                .expect("add");
            s.add_snapshot("p", "other", "data", 5, None, "/y")
                .expect("add");
            let b = s
                .add_snapshot("p", "db", "data", 3, Some(2), "/d/snapshots/p/db/data/3-x")
                .expect("add");
            s.remove_snapshot(b.id).expect("remove");
        }
        let s = State::open(&path).expect("reopen");
        let all = s.snapshots("p", "db").expect("list");
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(
            (
                all[0].volume.as_str(),
                all[0].before_release,
                all[0].of_release
            ),
            ("data", 2, Some(1))
        );
        assert_eq!(all[0].path, "/d/snapshots/p/db/data/2-x");
    }
}
