//! PostgreSQL: a small pool of tokio-postgres clients whose connections run on one private
//! runtime thread, driven from the caller's thread by a parking `block_on` — so `State` stays a
//! synchronous API that async tasks may call (the sync `postgres` crate cannot be: its
//! `Runtime::block_on` panics inside a tokio runtime). No TLS: loopback or a Unix socket only.
//!
//! A statement that fails because the connection broke (PostgreSQL restarted, the socket closed)
//! is run once more on a fresh connection — never a transaction whose COMMIT went unanswered (it
//! may have committed; its caller gets the error); connecting retries with backoff until `retry_for`
//! (10 s) has passed since the operation began.

use crate::Error;
use crate::db::{Db, DbErr, Dialect, Param, Row, pg_sql, sql_head};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement, Transaction};

/// Connections open at most at once.
const POOL: usize = 4;
/// How long one statement may wait for its answer before its connection is given up.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Poll `f` on this thread until it is ready or `deadline` passes. The client's futures only
/// wait on channels to the connection task (on the runtime thread), so no runtime is needed here.
fn block_on<F: Future>(f: F, deadline: Instant) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        std::thread::park_timeout(left);
    }
}

struct Conn {
    client: Client,
    /// Prepared statements by their SQLite-spelled text.
    stmts: HashMap<String, Statement>,
}

struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

pub(crate) struct Pg {
    config: tokio_postgres::Config,
    /// The URL without its password, for messages.
    pub(crate) url: String,
    rt: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pool: Mutex<Pool>,
    free: Condvar,
    /// How long one operation may spend reconnecting.
    pub(crate) retry_for: Duration,
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The runtime thread ends (and closes the connections) whether or not it hears this.
            stop.send(()).ok();
        }
    }
}

impl Pg {
    pub(crate) fn new(config: tokio_postgres::Config, url: String) -> Result<Pg, Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("recast-state-pg".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => {
                        tx.send(Ok(rt.handle().clone())).ok();
                        rt.block_on(stopped).ok();
                    }
                    Err(e) => drop(tx.send(Err(e))),
                }
            });
        let io = |source| Error::Io {
            path: format!("{url} (its connection thread)"),
            source,
        };
        spawned.map_err(io)?;
        let rt = rx
            .recv()
            .map_err(|_| io(std::io::Error::other("the thread ended")))?
            .map_err(io)?;
        Ok(Pg {
            config,
            url,
            rt,
            stop: Some(stop),
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            free: Condvar::new(),
            retry_for: Duration::from_secs(10),
        })
    }

    fn error(&self, what: impl Into<String>, source: tokio_postgres::Error) -> Error {
        Error::Postgres {
            url: self.url.clone(),
            what: what.into(),
            detail: detail(&source),
            source: Some(source),
        }
    }

    fn plain_error(&self, what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Postgres {
            url: self.url.clone(),
            what: what.into(),
            detail: detail.into(),
            source: None,
        }
    }

    pub(crate) fn map_err(&self, e: DbErr) -> Error {
        match e {
            DbErr::Pg { sql, source } => self.error(sql, source),
            DbErr::Timeout { sql } => self.plain_error(
                sql,
                format!("no answer within {} s", ANSWER_WITHIN.as_secs()),
            ),
            DbErr::Bad(b) => Error::Invalid {
                path: self.url.clone(),
                table: b.table,
                row: b.row,
                source: b.source,
            },
            DbErr::Lite(e) => self.plain_error("reading a row", e.to_string()),
            DbErr::Refused(what) => Error::Copy {
                to: self.url.clone(),
                what,
            },
            DbErr::Fenced { project, detail } => Error::Fenced {
                target: self.url.clone(),
                project,
                detail,
            },
        }
    }

    fn connect_once(
        &self,
        deadline: Instant,
    ) -> Result<Result<Conn, tokio_postgres::Error>, Error> {
        let mut config = self.config.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        config.connect_timeout(left.clamp(Duration::from_millis(100), Duration::from_secs(5)));
        let (tx, rx) = std::sync::mpsc::channel();
        self.rt.spawn(async move {
            let r = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    // Ends when the socket closes; the client then reports itself closed.
                    tokio::spawn(async move { drop(connection.await) });
                    Ok(client)
                }
                Err(e) => Err(e),
            };
            tx.send(r).ok();
        });
        let client = rx
            .recv()
            .map_err(|_| self.plain_error("connecting", "the connection thread ended"))?;
        Ok(client.map(|client| Conn {
            client,
            stmts: HashMap::new(),
        }))
    }

    /// A new connection, retrying with backoff (50 ms doubling to 1 s) while PostgreSQL is
    /// unreachable or starting, until `deadline`.
    fn connect(&self, deadline: Instant) -> Result<Conn, Error> {
        let mut wait = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.connect_once(deadline)? {
                Ok(c) => return Ok(c),
                Err(e) if transient(&e) && Instant::now() + wait < deadline => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    let what = match attempts {
                        1 => "connecting".to_string(),
                        n => format!("connecting ({n} attempts)"),
                    };
                    return Err(self.error(what, e));
                }
            }
        }
    }

    /// An idle open connection, or a new one while fewer than `POOL` are open.
    fn acquire(&self, deadline: Instant) -> Result<Lease<'_>, Error> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(c) = pool.idle.pop() {
                if !c.client.is_closed() {
                    return Ok(Lease::new(self, c));
                }
                pool.open -= 1;
            }
            if pool.open < POOL {
                pool.open += 1;
                drop(pool);
                return match self.connect(deadline) {
                    Ok(c) => Ok(Lease::new(self, c)),
                    Err(e) => {
                        self.give_back(None);
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.plain_error(
                    "waiting for a connection",
                    format!("all {POOL} connections busy"),
                ));
            }
            pool = self
                .free
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn give_back(&self, conn: Option<Conn>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match conn {
            Some(c) if !c.client.is_closed() => pool.idle.push(c),
            _ => pool.open -= 1,
        }
        self.free.notify_one();
    }

    /// Run `f` on a pooled connection (in a transaction when `tx`); once more on a new connection
    /// if this one broke.
    pub(crate) fn run<T>(
        &self,
        tx: bool,
        mut f: impl FnMut(&mut dyn Db) -> Result<T, DbErr>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + self.retry_for;
        let mut retried = false;
        loop {
            let mut lease = self.acquire(deadline)?;
            let r = lease.run(tx, &mut f);
            match r {
                Err(e) if lease.broken(&e) => {
                    lease.healthy = false;
                    drop(lease);
                    // A COMMIT without an answer may have committed: running the transaction
                    // again could write it twice (a release numbered twice), so the caller
                    // hears of it instead.
                    if retried || at_commit(&e) {
                        return Err(self.map_err(e));
                    }
                    retried = true;
                }
                r => return r.map_err(|e| self.map_err(e)),
            }
        }
    }
}

fn at_commit(e: &DbErr) -> bool {
    matches!(e, DbErr::Pg { sql, .. } | DbErr::Timeout { sql } if sql == "COMMIT")
}

/// A connection taken from the pool, put back (or counted as closed) when dropped.
struct Lease<'p> {
    pg: &'p Pg,
    conn: Option<Conn>,
    healthy: bool,
}

impl<'p> Lease<'p> {
    fn new(pg: &'p Pg, conn: Conn) -> Lease<'p> {
        Lease {
            pg,
            conn: Some(conn),
            healthy: true,
        }
    }

    fn broken(&self, e: &DbErr) -> bool {
        let closed = self.conn.as_ref().is_none_or(|c| c.client.is_closed());
        match e {
            DbErr::Timeout { .. } => true,
            DbErr::Pg { source, .. } => closed || source.is_closed() || transient(source),
            _ => closed,
        }
    }

    fn run<T>(
        &mut self,
        tx: bool,
        f: &mut impl FnMut(&mut dyn Db) -> Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(DbErr::Timeout {
                sql: "taking a connection".into(),
            });
        };
        let within = || Instant::now() + ANSWER_WITHIN;
        if !tx {
            return f(&mut PgDb {
                c: On::Client(&conn.client),
                stmts: &mut conn.stmts,
            });
        }
        let t = block_on(conn.client.transaction(), within())
            .ok_or_else(|| DbErr::Timeout {
                sql: "BEGIN".into(),
            })?
            .map_err(|source| DbErr::Pg {
                sql: "BEGIN".into(),
                source,
            })?;
        let v = f(&mut PgDb {
            c: On::Tx(&t),
            stmts: &mut conn.stmts,
        })?;
        block_on(t.commit(), within())
            .ok_or_else(|| DbErr::Timeout {
                sql: "COMMIT".into(),
            })?
            .map_err(|source| DbErr::Pg {
                sql: "COMMIT".into(),
                source,
            })?;
        Ok(v)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take().filter(|_| self.healthy);
        self.pg.give_back(conn);
    }
}

/// A connection error worth another try: no answer, a closed socket, a server shutting down or
/// starting up.
fn transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(c) => {
            *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || c.code().starts_with("08")
        }
    }
}

/// The error's text with its cause (tokio-postgres says only "db error" at the top).
fn detail(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

enum On<'a> {
    Client(&'a Client),
    Tx(&'a Transaction<'a>),
}

struct PgDb<'a> {
    c: On<'a>,
    stmts: &'a mut HashMap<String, Statement>,
}

impl PgDb<'_> {
    fn wait<T>(
        &self,
        sql: &str,
        f: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbErr> {
        block_on(f, Instant::now() + ANSWER_WITHIN)
            .ok_or_else(|| DbErr::Timeout { sql: sql_head(sql) })?
            .map_err(|source| DbErr::Pg {
                sql: sql_head(sql),
                source,
            })
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, DbErr> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let text = pg_sql(sql);
        let st = match self.c {
            On::Client(c) => self.wait(sql, c.prepare(&text))?,
            On::Tx(t) => self.wait(sql, t.prepare(&text))?,
        };
        self.stmts.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

impl Db for PgDb<'_> {
    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbErr> {
        let st = self.statement(sql)?;
        let params: Vec<_> = params.iter().map(|p| p.pg()).collect();
        match self.c {
            On::Client(c) => self.wait(sql, c.execute(&st, &params)),
            On::Tx(t) => self.wait(sql, t.execute(&st, &params)),
        }
    }

    fn query_each(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        each: &mut dyn FnMut(&Row<'_>) -> Result<(), DbErr>,
    ) -> Result<(), DbErr> {
        let st = self.statement(sql)?;
        let params: Vec<_> = params.iter().map(|p| p.pg()).collect();
        let rows = match self.c {
            On::Client(c) => self.wait(sql, c.query(&st, &params))?,
            On::Tx(t) => self.wait(sql, t.query(&st, &params))?,
        };
        for r in &rows {
            each(&Row::Pg(r))?;
        }
        Ok(())
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbErr> {
        match self.c {
            On::Client(c) => self.wait(sql, c.batch_execute(sql)),
            On::Tx(t) => self.wait(sql, t.batch_execute(sql)),
        }
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

/// `url` with its password (in the user part or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let auth = match auth.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => auth.to_string(),
                },
                None => auth.to_string(),
            };
            format!("{scheme}://{auth}{path}")
        }
        None => head.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Parse a `postgres://` URL. A `host=` parameter (a socket directory) replaces the host of
/// the authority part, as in libpq (its port stays).
pub(crate) fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let config: tokio_postgres::Config = socket_url(url).parse().map_err(|e| detail(&e))?;
    if config.get_hosts().is_empty() {
        return Err(
            "no host: name one (postgres://USER@HOST:PORT/DB) or a socket directory (?host=/DIR)"
                .into(),
        );
    }
    Ok(config)
}

/// `url` without the host of its authority part when a `host=` parameter names one.
fn socket_url(url: &str) -> String {
    let Some((head, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let named = query.split('&').any(|kv| kv.starts_with("host="));
    let Some((scheme, rest)) = head.split_once("://") else {
        return url.to_string();
    };
    if !named {
        return url.to_string();
    }
    let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (user, host) = match auth.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), auth),
    };
    let port = match host.rsplit_once(':') {
        Some((_, p)) if !query.split('&').any(|kv| kv.starts_with("port=")) => format!("&port={p}"),
        _ => String::new(),
    };
    format!("{scheme}://{user}{path}?{query}{port}")
}
