//! Hosts and per-project leases: which server acts for which project, fenced.
//!
//! Every server registers as a host (`hosts`, one row per host name, renewed while it runs).
//! A project is acted for — rollouts, the guard, its instances — only by the host holding its
//! lease (`leases`, one row per project). Each time a lease changes hands, or its holder starts
//! again, its **fencing token** grows; a `State` that acts as a host ([`State::act_as`]) checks
//! the token it holds on every write of a project, in the write's own transaction (the lease
//! row read `FOR SHARE` on PostgreSQL, so a take-over waits for that write and every later
//! write of the old holder is refused). Times are the database's clock, never a host's.

use crate::db::{Db, DbErr, Dialect, Row};
use crate::{Result, State};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A server taking part: its name, the running process (`instance`: `PLACE:RUN`, the id of its
/// data directory and one random per start), where its API is and which projects it stands by
/// for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub instance: String,
    pub api: String,
    /// Projects it takes when their holder stops renewing (`*` for all).
    pub standby_for: Vec<String>,
    pub started_ms: i64,
    /// Last renewal, by the database's clock; 0 once it stopped cleanly.
    pub seen_ms: i64,
    /// Its lease time (`--lease-time`): it renews well within it while it runs.
    pub lease_ms: i64,
}

impl Host {
    pub fn stands_by_for(&self, project: &str) -> bool {
        self.standby_for.iter().any(|p| p == "*" || p == project)
    }

    /// Renewed within its lease time before `now` (the database's clock).
    pub fn running(&self, now: i64) -> bool {
        self.seen_ms > now - self.lease_ms
    }

    /// Where it runs ([`place_of`] its `instance`).
    pub fn place(&self) -> &str {
        place_of(&self.instance)
    }
}

/// Where a registration's server runs: the data directory's id, the part of its `instance`
/// (`PLACE:RUN`) before the `:`.
pub fn place_of(instance: &str) -> &str {
    instance.split(':').next().unwrap_or_default()
}

/// Who acts for a project, until when, and the fencing token of that holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub project: String,
    /// The holder; empty once released (the project destroyed).
    pub host: String,
    pub token: i64,
    pub expires_ms: i64,
    /// A deliberate move asked for (`recast project move`): the holder hands over to it.
    pub move_to: Option<String>,
    /// When the holder had the project serving (cleared when the lease changes hands).
    pub serving_ms: Option<i64>,
}

impl Lease {
    /// No lease: nobody holds the project.
    fn nobody(project: &str) -> Lease {
        Lease {
            project: project.to_string(),
            host: String::new(),
            token: 0,
            expires_ms: 0,
            move_to: None,
            serving_ms: None,
        }
    }
}

/// How a lease may be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only if nobody holds it: new, released, expired, or already this host's (a restart, a
    /// hand-over to it).
    IfFree,
    /// Only if it names this host (a restart, a rebuild, a hand-over).
    IfMine,
    /// Only if the project has no lease yet, or it names this host (projects recorded before
    /// leases existed are claimed by the first server that starts).
    IfNew,
}

/// The leases this process holds, for checking writes.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    pub(crate) host: String,
    pub(crate) held: HashMap<String, i64>,
}

/// What a write is about, for the fencing check.
pub(crate) enum Scope<'a> {
    Project(&'a str),
    /// A row of `table` by id (its `project` column names the project).
    Row(&'static str, &'a str),
    RowId(&'static str, i64),
}

const LEASE_COLS: &str = "project, host, token, expires_ms, move_to, serving_ms";

fn lease_row(r: &Row<'_>) -> Result<Lease, DbErr> {
    Ok(Lease {
        project: r.get(0)?,
        host: r.get(1)?,
        token: r.get(2)?,
        expires_ms: r.get(3)?,
        move_to: r.get(4)?,
        serving_ms: r.get(5)?,
    })
}

const HOST_COLS: &str = "name, instance, api, standby_for, started_ms, seen_ms, lease_ms";

fn host_row(r: &Row<'_>) -> Result<Host, DbErr> {
    let standby: String = r.get(3)?;
    Ok(Host {
        name: r.get(0)?,
        instance: r.get(1)?,
        api: r.get(2)?,
        standby_for: standby
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        started_ms: r.get(4)?,
        seen_ms: r.get(5)?,
        lease_ms: r.get(6)?,
    })
}

/// The database's clock, in milliseconds since the epoch.
pub(crate) fn db_now(c: &mut dyn Db) -> Result<i64, DbErr> {
    let sql = match c.dialect() {
        Dialect::Sqlite => "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        Dialect::Postgres => "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    };
    c.one(sql, &[], |r| r.get(0))
}

/// A lease row, locked against a concurrent change for the rest of the transaction on
/// PostgreSQL (`share`: other readers may lock it too; else for update). SQLite's write
/// transactions are serialised already.
fn locked_lease(c: &mut dyn Db, project: &str, share: bool) -> Result<Option<Lease>, DbErr> {
    let lock = match (c.dialect(), share) {
        (Dialect::Sqlite, _) => "",
        (Dialect::Postgres, true) => " FOR SHARE",
        (Dialect::Postgres, false) => " FOR UPDATE",
    };
    c.opt(
        &format!("SELECT {LEASE_COLS} FROM leases WHERE project = ?1{lock}"),
        &[&project],
        lease_row,
    )
}

/// The fencing check of one write: the project's lease must be the one `fence` holds.
pub(crate) fn check(c: &mut dyn Db, fence: &Fence, scope: &Scope<'_>) -> Result<(), DbErr> {
    let by_id = |table: &str| format!("SELECT project FROM {table} WHERE id = ?1");
    let project: Option<String> = match scope {
        Scope::Project(p) => Some(p.to_string()),
        Scope::Row(table, id) => c.opt(&by_id(table), &[id], |r| r.get(0))?,
        Scope::RowId(table, id) => c.opt(&by_id(table), &[id], |r| r.get(0))?,
    };
    // A row that does not exist: the write changes nothing.
    let Some(project) = project else {
        return Ok(());
    };
    let Some(&token) = fence.held.get(&project) else {
        return Err(DbErr::Fenced {
            project,
            detail: format!("host {} does not hold its lease", fence.host),
        });
    };
    match locked_lease(c, &project, true)? {
        Some(l) if l.host == fence.host && l.token == token => Ok(()),
        Some(l) => Err(DbErr::Fenced {
            project,
            detail: format!(
                "its lease passed from host {} (token {token}) to {} (token {})",
                fence.host,
                if l.host.is_empty() { "nobody" } else { &l.host },
                l.token
            ),
        }),
        None => Err(DbErr::Fenced {
            project,
            detail: "it has no lease".into(),
        }),
    }
}

impl State {
    /// From now on this state acts as host `name`: every write of a project must hold its lease
    /// ([`State::hold`]) and is checked against the lease row in its own transaction.
    pub fn act_as(&self, name: &str) {
        *self.fence() = Some(Fence {
            host: name.to_string(),
            held: HashMap::new(),
        });
    }

    fn fence(&self) -> std::sync::MutexGuard<'_, Option<Fence>> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes of `project` are made under this lease.
    pub fn hold(&self, lease: &Lease) {
        if let Some(f) = self.fence().as_mut() {
            f.held.insert(lease.project.clone(), lease.token);
        }
    }

    /// Writes of `project` are refused from now on.
    pub fn unhold(&self, project: &str) {
        if let Some(f) = self.fence().as_mut() {
            f.held.remove(project);
        }
    }

    /// The projects held, with their tokens.
    pub fn held(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .fence()
            .as_ref()
            .map(|f| f.held.iter().map(|(p, t)| (p.clone(), *t)).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether writes of `project` may be made (always, unless acting as a host).
    pub fn holds(&self, project: &str) -> bool {
        self.fence()
            .as_ref()
            .is_none_or(|f| f.held.contains_key(project))
    }

    /// Run a write of `scope`: checked against the lease held when acting as a host (then
    /// always in a transaction), else as it is.
    pub(crate) fn write<T>(
        &self,
        scope: Scope<'_>,
        tx: bool,
        mut f: impl FnMut(&mut dyn Db) -> Result<T, DbErr>,
    ) -> Result<T> {
        let fence = self.fence().as_ref().map(|f| Fence {
            host: f.host.clone(),
            held: f.held.clone(),
        });
        match fence {
            Some(fence) => self.tx(|c| {
                check(c, &fence, &scope)?;
                f(c)
            }),
            None if tx => self.tx(f),
            None => self.with(f),
        }
    }

    /// Register host `h` (its `seen_ms` and `started_ms` are set now). Refused with the other
    /// registration while a server in another place still runs under the name (renewed within
    /// its lease time); one from the same place (`Host::place`) is the server this one follows.
    pub fn register_host(&self, h: &Host) -> Result<Result<Host, Host>> {
        self.tx(|c| {
            let now = db_now(c)?;
            let other = c.opt(
                &format!("SELECT {HOST_COLS} FROM hosts WHERE name = ?1"),
                &[&h.name],
                host_row,
            )?;
            if let Some(o) = other
                && o.place() != h.place()
                && o.running(now)
            {
                return Ok(Err(o));
            }
            let standby = h.standby_for.join(",");
            c.one(
                &format!(
                    "INSERT INTO hosts ({HOST_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
                     ON CONFLICT (name) DO UPDATE SET instance = excluded.instance, api = excluded.api,
                        standby_for = excluded.standby_for, started_ms = excluded.started_ms,
                        seen_ms = excluded.seen_ms, lease_ms = excluded.lease_ms
                     RETURNING {HOST_COLS}"
                ),
                &[&h.name, &h.instance, &h.api, &standby, &now, &h.lease_ms],
                host_row,
            )
            .map(Ok)
        })
    }

    /// Leases held under another name by a server of `place` (the same data directory under a
    /// new host name: the machine was renamed) pass to `name` — their server is gone, since
    /// `name`'s holds the directory's lock — and the old name is forgotten.
    pub fn rename_host(&self, place: &str, name: &str) -> Result<Vec<String>> {
        self.tx(|c| {
            let olds: Vec<Host> = c.rows(
                &format!("SELECT {HOST_COLS} FROM hosts WHERE name <> ?1"),
                &[&name],
                host_row,
            )?;
            let mut renamed = Vec::new();
            for o in olds.into_iter().filter(|o| o.place() == place) {
                c.execute(
                    "UPDATE leases SET host = ?2, token = token + 1 WHERE host = ?1",
                    &[&o.name, &name],
                )?;
                c.execute("DELETE FROM hosts WHERE name = ?1", &[&o.name])?;
                renamed.push(o.name);
            }
            Ok(renamed)
        })
    }

    /// A clean stop: the name is free at once for the next start.
    pub fn host_stopped(&self, name: &str, instance: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE hosts SET seen_ms = 0 WHERE name = ?1 AND instance = ?2",
                &[&name, &instance],
            )
            .map(drop)
        })
    }

    pub fn hosts(&self) -> Result<Vec<Host>> {
        self.with(|c| {
            c.rows(
                &format!("SELECT {HOST_COLS} FROM hosts ORDER BY name"),
                &[],
                host_row,
            )
        })
    }

    pub fn leases(&self) -> Result<Vec<Lease>> {
        self.with(|c| {
            c.rows(
                &format!("SELECT {LEASE_COLS} FROM leases ORDER BY project"),
                &[],
                lease_row,
            )
        })
    }

    pub fn lease(&self, project: &str) -> Result<Option<Lease>> {
        self.with(|c| {
            c.opt(
                &format!("SELECT {LEASE_COLS} FROM leases WHERE project = ?1"),
                &[&project],
                lease_row,
            )
        })
    }

    /// The database's clock, in milliseconds since the epoch.
    pub fn db_now_ms(&self) -> Result<i64> {
        self.with(db_now)
    }

    /// Take `project`'s lease for `host` for `ttl_ms` when `how` allows; its token grows.
    /// `Ok(Err(lease))`: someone else holds it.
    pub fn take_lease(
        &self,
        project: &str,
        host: &str,
        ttl_ms: i64,
        how: Take,
    ) -> Result<Result<Lease, Lease>> {
        self.tx(|c| {
            let now = db_now(c)?;
            let cur = locked_lease(c, project, false)?;
            let free = match &cur {
                None => how != Take::IfMine,
                Some(l) if l.host == host => true,
                Some(l) => how == Take::IfFree && (l.host.is_empty() || l.expires_ms < now),
            };
            if !free {
                return Ok(Err(cur.unwrap_or_else(|| Lease::nobody(project))));
            }
            let was = cur.as_ref().map_or(0, |l| l.token);
            // A move to this host is done once it holds the lease.
            let move_to = cur.and_then(|l| l.move_to).filter(|m| m != host);
            // Only over the row as read: a new lease another host inserted meanwhile (there was
            // no row to lock) is theirs.
            let taken = c.opt(
                &format!(
                    "INSERT INTO leases ({LEASE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                     ON CONFLICT (project) DO UPDATE SET host = excluded.host, token = excluded.token,
                        expires_ms = excluded.expires_ms, move_to = excluded.move_to, serving_ms = NULL
                     WHERE leases.token = ?6
                     RETURNING {LEASE_COLS}"
                ),
                &[&project, &host, &(was + 1), &(now + ttl_ms), &move_to, &was],
                lease_row,
            )?;
            match taken {
                Some(l) => Ok(Ok(l)),
                None => Ok(Err(locked_lease(c, project, false)?
                    .unwrap_or_else(|| Lease::nobody(project)))),
            }
        })
    }

    /// Renew the leases `host` holds and its registration, in one transaction; answers each
    /// held project's lease row as it is now (a row naming another host or token was lost),
    /// or `None` when another instance took the host name.
    pub fn renew(
        &self,
        host: &str,
        instance: &str,
        held: &[(String, i64)],
        ttl_ms: i64,
    ) -> Result<Option<Vec<Lease>>> {
        self.tx(|c| {
            let now = db_now(c)?;
            let mine = c.execute(
                "UPDATE hosts SET seen_ms = ?3 WHERE name = ?1 AND instance = ?2",
                &[&host, &instance, &now],
            )?;
            if mine == 0 {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(held.len());
            for (project, token) in held {
                c.execute(
                    "UPDATE leases SET expires_ms = ?4 WHERE project = ?1 AND host = ?2 AND token = ?3",
                    &[project, &host, token, &(now + ttl_ms)],
                )?;
                if let Some(l) = c.opt(
                    &format!("SELECT {LEASE_COLS} FROM leases WHERE project = ?1"),
                    &[project],
                    lease_row,
                )? {
                    out.push(l);
                }
            }
            Ok(Some(out))
        })
    }

    /// The holder has `project` serving.
    pub fn set_serving(&self, project: &str) -> Result<()> {
        self.write(Scope::Project(project), true, |c| {
            let now = db_now(c)?;
            c.execute(
                "UPDATE leases SET serving_ms = ?2 WHERE project = ?1",
                &[&project, &now],
            )
            .map(drop)
        })
    }

    /// Ask the holder of `project` to hand it over to `to` (a registered host).
    pub fn request_move(&self, project: &str, to: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE leases SET move_to = ?2 WHERE project = ?1",
                &[&project, &to],
            )
            .map(drop)
        })
    }

    /// The holder gives `project` to `to`: the lease names `to` with a new token (which `to`
    /// replaces again when it takes it), or nobody when `to` is empty (the project destroyed).
    /// Fenced like every write: only the holder can.
    pub fn hand_over(&self, project: &str, to: &str, ttl_ms: i64) -> Result<()> {
        self.write(Scope::Project(project), true, |c| {
            let now = db_now(c)?;
            c.execute(
                "UPDATE leases SET host = ?2, token = token + 1, expires_ms = ?3, move_to = NULL, serving_ms = NULL
                 WHERE project = ?1",
                &[&project, &to, &(now + ttl_ms)],
            )
            .map(drop)
        })?;
        self.unhold(project);
        Ok(())
    }
}
