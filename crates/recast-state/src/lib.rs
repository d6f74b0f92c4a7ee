//! The state store: every release (what ran, when, how it ended), the instances of each service,
//! the progress of every rollout step by step, routes, and an event log.
//!
//! One SQLite file (`<data-dir>/state.db`, WAL) or a PostgreSQL database behind this narrow
//! API: only this crate knows SQL. Every query is written once (`db::Db` runs it on either); the
//! schema is the same numbered migrations on both, versioned by `PRAGMA user_version` (SQLite) or
//! the `schema_migrations` table (PostgreSQL), and migrated forward on open.

mod copy;
mod db;
mod lease;
mod pg;

pub use copy::{CopyReport, TableCount};
use db::{Db, DbErr, Dialect, Lite, Row};
use lease::Scope;
pub use lease::{Host, Lease, Take, place_of};
pub use pg::redact_url;
pub use recast_api::v1::{ReleaseOutcome, RolloutState, RouteProtocol, UnknownValue};
use rusqlite::Connection;
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
    /// A PostgreSQL statement or connection failed. `url` never holds the password; `what` is
    /// the statement's first words or the step (connecting, waiting for a connection).
    #[error("state database {url}: {what}: {detail}")]
    Postgres {
        url: String,
        what: String,
        detail: String,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    /// A state URL names no backend recast has, or cannot be parsed.
    #[error("state URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// A write of a project this host does not (or no longer) hold the lease of.
    #[error("state database {target}: project {project}: not written: {detail}")]
    Fenced {
        target: String,
        project: String,
        detail: String,
    },
    /// A copy of a state (`copy_to`, `backup`) refused, or found a row different: `to` is the
    /// state it ran on, `what` names the table.
    #[error("state database {to}: {what}")]
    Copy { to: String, what: String },
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

/// The state store. `Sync`: SQLite serialises callers on one connection, PostgreSQL gives each a
/// connection of a small pool.
pub struct State {
    backend: Backend,
    /// The file or the URL (without its password), for messages.
    target: String,
    /// Set when acting as a host: the leases held, checked on every write of a project.
    fence: Mutex<Option<lease::Fence>>,
}

enum Backend {
    Sqlite(Mutex<Connection>),
    Postgres(Box<pg::Pg>),
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
    // 7: hosts, and which of them acts for each project (`lease.rs`).
    "CREATE TABLE hosts (
        name TEXT PRIMARY KEY, instance TEXT NOT NULL, api TEXT NOT NULL,
        standby_for TEXT NOT NULL, started_ms INTEGER NOT NULL, seen_ms INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL);
     CREATE TABLE leases (
        project TEXT PRIMARY KEY, host TEXT NOT NULL, token INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, move_to TEXT, serving_ms INTEGER);",
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn release_row(r: &Row<'_>) -> Result<Release, DbErr> {
    let (project, service, number): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let outcome = r.enum_col(9, "releases", || {
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

fn rollout_row(r: &Row<'_>) -> Result<Rollout, DbErr> {
    let id: i64 = r.get(0)?;
    Ok(Rollout {
        id,
        project: r.get(1)?,
        service: r.get(2)?,
        from_release: r.get(3)?,
        to_release: r.get(4)?,
        strategy: r.get(5)?,
        state: r.enum_col(6, "rollouts", || format!("id {id}"))?,
        step: r.get(7)?,
        detail: r.get(8)?,
        started_ms: r.get(9)?,
        updated_ms: r.get(10)?,
    })
}

fn event_row(r: &Row<'_>) -> Result<Event, DbErr> {
    Ok(Event {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        project: r.get(2)?,
        service: r.get(3)?,
        kind: r.get(4)?,
        message: r.get(5)?,
    })
}

fn snapshot_row(r: &Row<'_>) -> Result<Snapshot, DbErr> {
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
}

const ROLLOUT_COLS: &str = "id, project, service, from_release, to_release, strategy, state, step, detail, started_ms, updated_ms";

/// Apply the migrations after the recorded version, up to `upto`, in one transaction. The two
/// places the dialects differ: where the version is kept, and column types (`db::pg_schema`).
fn migrate(c: &mut dyn Db, upto: usize) -> Result<(), DbErr> {
    let dialect = c.dialect();
    let version: i64 = match dialect {
        Dialect::Sqlite => c.one("PRAGMA user_version", &[], |r| r.get(0))?,
        Dialect::Postgres => {
            // Two servers opening one database migrate one after the other.
            c.batch(
                "SELECT pg_advisory_xact_lock(7526411283);
                 CREATE TABLE IF NOT EXISTS schema_migrations (
                    version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL);",
            )?;
            c.one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
                |r| r.get(0),
            )?
        }
    };
    for (i, m) in MIGRATIONS
        .iter()
        .enumerate()
        .take(upto)
        .skip(version as usize)
    {
        let n = i as i64 + 1;
        match dialect {
            Dialect::Sqlite => c.batch(&format!("{m}; PRAGMA user_version = {n};"))?,
            Dialect::Postgres => {
                c.batch(&db::pg_schema(m))?;
                c.execute(
                    "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
                    &[&n, &now_ms()],
                )?;
            }
        }
    }
    Ok(())
}

impl State {
    /// Open (creating and migrating) the SQLite database at `path`.
    pub fn open(path: &Path) -> Result<State> {
        State::open_sqlite(path, MIGRATIONS.len())
    }

    /// Open the state named by `url`: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (or
    /// `postgresql://`; `?host=/DIR` connects through the Unix socket in DIR; no TLS), else
    /// `sqlite:PATH` or a plain path to a SQLite file.
    pub fn open_url(url: &str) -> Result<State> {
        State::open_url_upto(url, MIGRATIONS.len())
    }

    fn open_url_upto(url: &str, upto: usize) -> Result<State> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return State::open_postgres(url, upto);
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return State::open_sqlite(Path::new(path), upto);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::Url {
                url: redact_url(url),
                reason: format!(
                    "unknown scheme {scheme:?} (postgres://, postgresql://, sqlite: or a path)"
                ),
            });
        }
        State::open_sqlite(Path::new(url), upto)
    }

    /// Where the state is: the SQLite file, or the PostgreSQL URL without its password.
    pub fn location(&self) -> &str {
        &self.target
    }

    fn open_postgres(url: &str, upto: usize) -> Result<State> {
        let target = redact_url(url);
        let config = pg::parse_url(url).map_err(|reason| Error::Url {
            url: target.clone(),
            reason,
        })?;
        let s = State {
            backend: Backend::Postgres(Box::new(pg::Pg::new(config, target.clone())?)),
            target,
            fence: Mutex::new(None),
        };
        s.tx(|c| migrate(c, upto))?;
        Ok(s)
    }

    fn open_sqlite(path: &Path, upto: usize) -> Result<State> {
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
        // Every statement is cached by its text.
        conn.set_prepared_statement_cache_capacity(64);
        let s = State {
            backend: Backend::Sqlite(Mutex::new(conn)),
            target: p,
            fence: Mutex::new(None),
        };
        s.tx(|c| migrate(c, upto))?;
        Ok(s)
    }

    fn lite_err(&self, e: DbErr) -> Error {
        match e {
            DbErr::Bad(b) => Error::Invalid {
                path: self.target.clone(),
                table: b.table,
                row: b.row,
                source: b.source,
            },
            DbErr::Lite(source) => Error::Db {
                path: self.target.clone(),
                source,
            },
            DbErr::Pg { sql, source } => Error::Postgres {
                url: self.target.clone(),
                what: sql,
                detail: source.to_string(),
                source: Some(source),
            },
            DbErr::Timeout { sql } => Error::Postgres {
                url: self.target.clone(),
                what: sql,
                detail: "no answer".into(),
                source: None,
            },
            DbErr::Fenced { project, detail } => Error::Fenced {
                target: self.target.clone(),
                project,
                detail,
            },
            DbErr::Refused(what) => Error::Copy {
                to: self.target.clone(),
                what,
            },
        }
    }

    /// Run `f` on the database (once more on a new connection if a PostgreSQL one broke).
    fn with<T>(&self, mut f: impl FnMut(&mut dyn Db) -> Result<T, DbErr>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut Lite(&conn)).map_err(|e| self.lite_err(e))
            }
            Backend::Postgres(pg) => pg.run(false, f),
        }
    }

    /// Run `f` in one transaction: all of its writes or none.
    fn tx<T>(&self, mut f: impl FnMut(&mut dyn Db) -> Result<T, DbErr>) -> Result<T> {
        match &self.backend {
            Backend::Sqlite(conn) => {
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let mut run = |conn: &mut Connection| -> Result<T, DbErr> {
                    // Immediate: the write lock is taken (waiting up to the busy timeout) before
                    // the first read, so a transaction that reads then writes never fails with
                    // "database is locked" when another process (a second server on the same
                    // file) wrote meanwhile.
                    let t =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let v = f(&mut Lite(&t))?;
                    t.commit()?;
                    Ok(v)
                };
                run(&mut conn).map_err(|e| self.lite_err(e))
            }
            Backend::Postgres(pg) => pg.run(true, f),
        }
    }

    /// PostgreSQL only: how long one operation may spend reconnecting (10 s unless set).
    #[cfg(test)]
    fn set_retry_for(&mut self, d: std::time::Duration) {
        if let Backend::Postgres(pg) = &mut self.backend {
            pg.retry_for = d;
        }
    }

    // ---- project ownership ----------------------------------------------------------------------

    /// The directory that owns project `name`, if one was recorded.
    pub fn project_owner(&self, name: &str) -> Result<Option<ProjectOwner>> {
        self.with(|c| {
            c.opt(
                "SELECT name, dir, since_ms FROM projects WHERE name = ?1",
                &[&name],
                |r| {
                    Ok(ProjectOwner {
                        name: r.get(0)?,
                        dir: r.get(1)?,
                        since_ms: r.get(2)?,
                    })
                },
            )
        })
    }

    /// Record `dir` as the owner of project `name` (replacing any earlier owner).
    pub fn set_project_owner(&self, name: &str, dir: &str) -> Result<()> {
        let now = now_ms();
        self.write(Scope::Project(name), false, |c| {
            c.execute(
                "INSERT INTO projects (name, dir, since_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET dir = excluded.dir, since_ms = excluded.since_ms
                 WHERE projects.dir <> excluded.dir",
                &[&name, &dir, &now],
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
        let (now, pending) = (now_ms(), ReleaseOutcome::Pending.as_str());
        self.write(Scope::Project(project), true, |c| {
            let n: i64 = c.one(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE project = ?1 AND service = ?2",
                &[&project, &service],
                |r| r.get(0),
            )?;
            c.one(
                &format!("INSERT INTO releases ({RELEASE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL) RETURNING {RELEASE_COLS}"),
                &[&project, &service, &n, &spec_hash, &digest, &image, &spec, &now, &by, &pending],
                release_row,
            )
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
        self.write(Scope::Project(project), false, |c| {
            c.execute(
                "UPDATE releases SET outcome = ?4, reason = ?5, finished_ms = COALESCE(?6, finished_ms) WHERE project = ?1 AND service = ?2 AND number = ?3",
                &[&project, &service, &number, &outcome.as_str(), &reason, &finished],
            )
            .map(drop)
        })
    }

    pub fn release(&self, project: &str, service: &str, number: i64) -> Result<Option<Release>> {
        self.with(|c| {
            c.opt(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE project = ?1 AND service = ?2 AND number = ?3"),
                &[&project, &service, &number],
                release_row,
            )
        })
    }

    /// Every release of a service, oldest first.
    pub fn releases(&self, project: &str, service: &str) -> Result<Vec<Release>> {
        self.with(|c| {
            c.rows(
                &format!("SELECT {RELEASE_COLS} FROM releases WHERE project = ?1 AND service = ?2 ORDER BY number"),
                &[&project, &service],
                release_row,
            )
        })
    }

    /// The release serving traffic, if any.
    pub fn current(&self, project: &str, service: &str) -> Result<Option<Release>> {
        // One query, not two: the guard asks for every service on every tick, and on PostgreSQL
        // each query is a round trip.
        self.with(|c| {
            c.opt(
                "SELECT r.project, r.service, r.number, r.spec_hash, r.digest, r.image, r.spec, r.created_ms, r.created_by, r.outcome, r.reason, r.finished_ms
                 FROM services s JOIN releases r ON r.project = s.project AND r.service = s.service AND r.number = s.current
                 WHERE s.project = ?1 AND s.service = ?2",
                &[&project, &service],
                release_row,
            )
        })
    }

    pub fn set_current(&self, project: &str, service: &str, number: Option<i64>) -> Result<()> {
        self.write(Scope::Project(project), false, |c| {
            c.execute(
                "INSERT INTO services (project, service, current) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project, service) DO UPDATE SET current = excluded.current",
                &[&project, &service, &number],
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
        let sql = format!(
            "SELECT {} FROM services s JOIN releases r ON r.project = s.project AND r.service = s.service AND r.number = s.current WHERE s.project = ?1",
            cols.join(", ")
        );
        let rows = self.with(|c| c.rows(&sql, &[&project], release_row))?;
        Ok(rows.into_iter().map(|r| (r.service.clone(), r)).collect())
    }

    /// The highest release number of every service of a project, in one query.
    pub fn last_release_numbers(
        &self,
        project: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        let rows = self.with(|c| {
            c.rows(
                "SELECT service, MAX(number) FROM releases WHERE project = ?1 GROUP BY service",
                &[&project],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        Ok(rows.into_iter().collect())
    }

    /// Every (project, service) with a current release.
    pub fn all_services(&self) -> Result<Vec<(String, String)>> {
        self.with(|c| {
            c.rows(
                "SELECT project, service FROM services WHERE current IS NOT NULL ORDER BY project, service",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }

    // ---- instances ------------------------------------------------------------------------------

    pub fn add_instance(&self, id: &str, project: &str, service: &str, release: i64) -> Result<()> {
        let now = now_ms();
        self.write(Scope::Project(project), false, |c| {
            c.execute(
                "INSERT INTO instances (id, project, service, release, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET project = excluded.project, service = excluded.service,
                    release = excluded.release, created_ms = excluded.created_ms",
                &[&id, &project, &service, &release, &now],
            )
            .map(drop)
        })
    }

    pub fn remove_instance(&self, id: &str) -> Result<()> {
        self.write(Scope::Row("instances", id), false, |c| {
            c.execute("DELETE FROM instances WHERE id = ?1", &[&id])
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
        let (now, running) = (now_ms(), RolloutState::Running.as_str());
        self.write(Scope::Project(project), false, |c| {
            c.one(
                "INSERT INTO rollouts (project, service, from_release, to_release, strategy, state, step, detail, started_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?7, 0, 'started', ?6, ?6) RETURNING id",
                &[&project, &service, &from, &to, &strategy, &now, &running],
                |r| r.get(0),
            )
        })
    }

    pub fn rollout_step(&self, id: i64, step: i64, detail: &str) -> Result<()> {
        let now = now_ms();
        self.write(Scope::RowId("rollouts", id), false, |c| {
            c.execute(
                "UPDATE rollouts SET step = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
                &[&id, &step, &detail, &now],
            )
            .map(drop)
        })
    }

    pub fn finish_rollout(&self, id: i64, state: RolloutState, detail: &str) -> Result<()> {
        let now = now_ms();
        self.write(Scope::RowId("rollouts", id), false, |c| {
            c.execute(
                "UPDATE rollouts SET state = ?2, detail = ?3, updated_ms = ?4 WHERE id = ?1",
                &[&id, &state.as_str(), &detail, &now],
            )
            .map(drop)
        })
    }

    /// Rollouts that were running when their server stopped.
    pub fn unfinished_rollouts(&self) -> Result<Vec<Rollout>> {
        let sql = format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE state = ?1 ORDER BY id");
        self.with(|c| c.rows(&sql, &[&RolloutState::Running.as_str()], rollout_row))
    }

    pub fn rollouts(&self, project: &str, service: &str) -> Result<Vec<Rollout>> {
        let sql = format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE project = ?1 AND service = ?2 ORDER BY id"
        );
        self.with(|c| c.rows(&sql, &[&project, &service], rollout_row))
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
        let at = now_ms();
        self.write(Scope::Project(project), false, |c| {
            c.one(
                "INSERT INTO snapshots (project, service, volume, before_release, of_release, path, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 RETURNING id, project, service, volume, before_release, of_release, path, created_ms",
                &[&project, &service, &volume, &before_release, &of_release, &path, &at],
                snapshot_row,
            )
        })
    }

    /// A service's snapshots (of every volume), oldest first.
    pub fn snapshots(&self, project: &str, service: &str) -> Result<Vec<Snapshot>> {
        self.with(|c| {
            c.rows(
                "SELECT id, project, service, volume, before_release, of_release, path, created_ms
                 FROM snapshots WHERE project = ?1 AND service = ?2 ORDER BY id",
                &[&project, &service],
                snapshot_row,
            )
        })
    }

    pub fn remove_snapshot(&self, id: i64) -> Result<()> {
        self.write(Scope::RowId("snapshots", id), false, |c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", &[&id])
                .map(drop)
        })
    }

    // ---- routes and events ----------------------------------------------------------------------

    /// Replace a project's routes (in one transaction).
    pub fn set_routes(&self, project: &str, routes: &[RouteRow]) -> Result<()> {
        self.write(Scope::Project(project), true, |c| {
            c.execute("DELETE FROM routes WHERE project = ?1", &[&project])?;
            for r in routes {
                c.execute(
                    "INSERT INTO routes (project, name, listen, service, timeout_ms, protocol) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    &[&project, &r.name, &r.listen, &r.service, &(r.timeout_ms as i64), &r.protocol.as_str()],
                )?;
            }
            Ok(())
        })
    }

    pub fn routes(&self) -> Result<Vec<RouteRow>> {
        self.with(|c| {
            c.rows(
                "SELECT project, name, listen, service, timeout_ms, protocol FROM routes ORDER BY project, name",
                &[],
                |r| {
                    let (project, name): (String, String) = (r.get(0)?, r.get(1)?);
                    let protocol = r.enum_col(5, "routes", || format!("{project}/{name}"))?;
                    Ok(RouteRow {
                        project,
                        name,
                        listen: r.get(2)?,
                        service: r.get(3)?,
                        timeout_ms: r.get::<i64>(4)?.max(1) as u64,
                        protocol,
                    })
                },
            )
        })
    }

    pub fn event(&self, project: &str, service: &str, kind: &str, message: &str) -> Result<Event> {
        let at = now_ms();
        self.write(Scope::Project(project), false, |c| {
            c.one(
                "INSERT INTO events (at_ms, project, service, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)
                 RETURNING id, at_ms, project, service, kind, message",
                &[&at, &project, &service, &kind, &message],
                event_row,
            )
        })
    }

    /// Every event of one kind for a service, oldest first.
    pub fn events_of(&self, project: &str, service: &str, kind: &str) -> Result<Vec<Event>> {
        self.with(|c| {
            c.rows(
                "SELECT id, at_ms, project, service, kind, message FROM events
                 WHERE project = ?1 AND service = ?2 AND kind = ?3 ORDER BY id",
                &[&project, &service, &kind],
                event_row,
            )
        })
    }

    /// Events after `since` (an event id), oldest first.
    pub fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>> {
        self.with(|c| {
            c.rows(
                "SELECT id, at_ms, project, service, kind, message FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                &[&since, &limit],
                event_row,
            )
        })
    }
}

#[cfg(test)]
mod tests;
