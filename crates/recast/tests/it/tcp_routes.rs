//! Issue 18, point 2: TCP routes. Stock PostgreSQL 15 (as `postgres.rs` deploys it) behind
//! `route { protocol = "tcp" }`, used by the host's `psql` through the route while the database
//! service is replaced (an env change: a `recreate` on its exclusive volume). A client reconnects
//! and inserts all along: its connections work again after the replacement and no row it was
//! told was written is lost; the old instance stops only once its open connections closed, or
//! when `drain_timeout` has passed.

use crate::debian::{AptRepo, base_image_archive};
use crate::deploy::{Server, free_port, ok, wait_for};
use crate::postgres::{events, instance, postgres_context, postgres_spec};
use crate::{recast, stderr, stdout};
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long retiring the database waits for open connections (short, so the test can wait
/// it out once).
const DRAIN_MS: i64 = 4_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// The host's `psql` against the route (trust auth as the entrypoint's initdb sets it, unless a
/// caller gives `PGPASSWORD`).
fn psql_cmd(port: u16) -> Command {
    let mut c = Command::new("psql");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt"])
        .env("PGCONNECT_TIMEOUT", "3")
        .env_remove("PGPASSWORD");
    c
}

/// `psql -c SQL` through the route: its output, or what it said when it failed.
fn psql_route(port: u16, sql: &str) -> Result<String, String> {
    let o = psql_cmd(port)
        .args(["-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if o.status.success() {
        Ok(stdout(&o).trim().to_string())
    } else {
        Err(format!("{}{}", stdout(&o), stderr(&o)))
    }
}

/// An interactive `psql` session through the route, held open until dropped or closed.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Session {
    /// Connect and check the session answers.
    fn open(port: u16) -> Session {
        let mut child = psql_cmd(port)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn psql");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut s = Session { child, stdin, out };
        assert_eq!(s.ask("select 'held'"), "held", "the held session answers");
        s
    }

    fn ask(&mut self, sql: &str) -> String {
        let w = self.stdin.as_mut().expect("open");
        writeln!(w, "{sql};").expect("send to psql");
        w.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("psql answers");
        line.trim().to_string()
    }

    /// End the session (psql quits at the end of its input) and wait for it.
    fn close(mut self) -> Output {
        drop(self.stdin.take());
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        let status = self.child.wait().expect("psql exits");
        let mut err = Vec::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_end(&mut e, &mut err);
        }
        Output {
            status,
            stdout: rest.into_bytes(),
            stderr: err,
        }
    }
}

/// What each failed attempt said, and when (ms since the epoch).
type Failures = Vec<(String, i64)>;

/// Inserts row after row through the route, each on a new connection, until stopped: the ids the
/// database acknowledged and when each was acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, i64)>>>,
    /// What a failed attempt said, and when.
    failures: Arc<Mutex<Failures>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16, first: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
        let failures: Arc<Mutex<Failures>> = Arc::default();
        let (st, a, f) = (stop.clone(), acked.clone(), failures.clone());
        let thread = std::thread::spawn(move || {
            let mut id = first;
            while !st.load(Ordering::SeqCst) {
                let sql = format!("insert into notes values ({id}) returning id");
                match psql_route(port, &sql) {
                    Ok(out) if out == id.to_string() => {
                        a.lock().expect("acked").push((id, now_ms()));
                        id += 1;
                    }
                    Ok(out) => panic!("insert {id} answered {out:?}"),
                    // Not acknowledged: the same id is tried again (a primary key, so a write
                    // that did land but was not acknowledged fails the retry, loudly).
                    Err(e) => {
                        f.lock().expect("failures").push((e, now_ms()));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        });
        Writer {
            stop,
            acked,
            failures,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<(i64, i64)> {
        self.acked.lock().expect("acked").clone()
    }

    /// When the first attempt after `since` failed.
    fn failed_after(&self, since: i64) -> Option<i64> {
        let f = self.failures.lock().expect("failures");
        f.iter().map(|(_, at)| *at).find(|at| *at > since)
    }

    /// The acknowledged rows and the failed attempts, each with when.
    fn finish(mut self) -> (Vec<(i64, i64)>, Failures) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer panicked");
        }
        (
            self.acked(),
            self.failures.lock().expect("failures").clone(),
        )
    }
}

/// `events` of kind `instance.stopped` naming an instance of `release`: when.
fn stopped_at(server: &Server, release: &str) -> Option<i64> {
    events(server)
        .into_iter()
        .find(|(_, k, m)| k == "instance.stopped" && m.contains(&format!("postgres-r{release}-")))
        .map(|(at, _, _)| at)
}

fn spec(dir: &Path, archive: &Path, repo: &str, port: u16, release: &str) {
    let service = postgres_spec(archive, repo, release).replace(
        "  port  = 5432\n",
        &format!("  port  = 5432\n  drain_timeout = \"{DRAIN_MS}ms\"\n"),
    );
    assert!(service.contains("drain_timeout"), "{service}");
    write_spec(dir, &service, port);
}

/// `recast.hcl`: `text` (the postgres service and what it needs) and a TCP route to it on `port`.
fn write_spec(dir: &Path, text: &str, port: u16) {
    fs::write(
        dir.join("recast.hcl"),
        format!(
            "{text}\nroute \"db\" {{\n  listen   = \"127.0.0.1:{port}\"\n  service  = service.postgres\n  protocol = \"tcp\"\n}}\n"
        ),
    )
    .expect("spec");
}

/// Apply on another thread: when it started and how it ended.
pub(crate) fn apply_in_background(
    server: &Server,
    dir: &Path,
) -> (i64, std::thread::JoinHandle<Output>) {
    let exe = env!("CARGO_BIN_EXE_recast");
    let (data, dir) = (server.data.clone(), dir.to_path_buf());
    let started = now_ms();
    let t = std::thread::spawn(move || {
        Command::new(exe)
            .args(["apply", "--yes"])
            .current_dir(dir)
            .env("RECAST_DATA_DIR", data)
            .output()
            .expect("recast apply")
    });
    (started, t)
}

#[test]
fn psql_through_a_tcp_route_survives_a_recreate_and_the_drain_waits_for_open_connections() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("tcproute")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    postgres_context(dir);

    spec(dir, &archive, &repo.url, port, "1");
    let t = Instant::now();
    ok(&server.rc(dir, &["apply", "--yes"]));
    eprintln!("release 1 in {:.1}s", t.elapsed().as_secs_f64());
    wait_for("psql through the tcp route", 30, || {
        psql_route(port, "select 1").is_ok_and(|o| o == "1")
    });
    psql_route(port, "create table notes (id bigint primary key)").expect("create table");
    psql_route(port, "insert into notes values (0)").expect("first row");
    let r1 = instance(&server, dir, "postgres");

    // Release 2 (an env change: a recreate) while a session stays open and a client inserts.
    let writer = Writer::start(port, 1);
    wait_for("the writer's first rows", 20, || writer.acked().len() >= 5);
    let mut held = Session::open(port);
    let (applied_at, apply) = {
        spec(dir, &archive, &repo.url, port, "2");
        apply_in_background(&server, dir)
    };
    // Release 1 leaves rotation (new connections find nothing to reach: the writer fails)…
    let mut out_at = 0;
    wait_for("release 1 out of rotation", 60, || {
        writer.failed_after(applied_at).is_some_and(|at| {
            out_at = at;
            true
        })
    });
    // …and its instance waits for the held session (well within its drain timeout).
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        stopped_at(&server, "1"),
        None,
        "release 1 stopped while a connection to it was open"
    );
    assert_eq!(held.ask("select 'still here'"), "still here");
    let closed_at = now_ms();
    let o = held.close();
    assert!(o.status.success(), "the held session: {}", stderr(&o));
    let o = apply.join().expect("apply thread");
    ok(&o);
    let stopped = stopped_at(&server, "1").expect("release 1 stopped");
    eprintln!(
        "release 2: the held session closed {} ms into the apply, release 1 stopped {} ms after that",
        closed_at - applied_at,
        stopped - closed_at
    );
    assert!(
        stopped >= closed_at,
        "release 1 stopped at {stopped}, before its last connection closed at {closed_at}"
    );
    assert!(
        stopped < out_at + DRAIN_MS,
        "release 1 waited out its whole drain timeout though its connections had closed"
    );
    let r2 = instance(&server, dir, "postgres");
    assert_ne!(r1, r2);
    assert!(r2.starts_with("postgres-r2-"), "{r2}");
    // New connections go to release 2: the writer's inserts work again.
    let done = now_ms();
    wait_for(
        "inserts through the route after the replacement",
        30,
        || writer.acked().iter().any(|(_, at)| *at > done),
    );

    // Release 3 while a session stays open for good: the drain gives up at `drain_timeout`.
    let mut held = Session::open(port);
    assert_eq!(held.ask("select 'on release 2'"), "on release 2");
    spec(dir, &archive, &repo.url, port, "3");
    let (applied_at, apply) = apply_in_background(&server, dir);
    let o = apply.join().expect("apply thread");
    ok(&o);
    let stopped = stopped_at(&server, "2").expect("release 2 stopped");
    eprintln!(
        "release 3: release 2 stopped {} ms into the apply (drain timeout {DRAIN_MS} ms)",
        stopped - applied_at
    );
    assert!(
        stopped >= applied_at + DRAIN_MS,
        "release 2 stopped {} ms into the apply, before its drain timeout with a connection open",
        stopped - applied_at
    );
    let o = held.close();
    let said = stdout(&o) + &stderr(&o);
    eprintln!("the session held across release 3: {said}");
    let done = now_ms();
    wait_for("inserts through the route on release 3", 30, || {
        writer.acked().iter().any(|(_, at)| *at > done)
    });

    // Every acknowledged row is there, and the row written before any replacement.
    let (acked, failures) = writer.finish();
    eprintln!(
        "{} rows acknowledged, {} attempts failed while the database was replaced (first: {:?})",
        acked.len(),
        failures.len(),
        failures.first()
    );
    let stored: BTreeSet<i64> = psql_route(port, "select id from notes order by id")
        .expect("read back")
        .lines()
        .map(|l| l.parse().expect("an id"))
        .collect();
    assert!(stored.contains(&0), "the first row is gone");
    let lost: Vec<i64> = acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    assert!(instance(&server, dir, "postgres").starts_with("postgres-r3-"));
}

#[test]
fn a_timeout_on_a_tcp_route_is_a_located_error() {
    let p = tempfile::tempdir().expect("tmp");
    fs::write(
        p.path().join("recast.hcl"),
        "image \"db\" {\n  from = \"scratch\"\n  cmd  = [\"/db\"]\n}\nservice \"db\" {\n  image = image.db\n  port  = 5432\n}\nroute \"db\" {\n  listen   = \"127.0.0.1:15432\"\n  service  = service.db\n  protocol = \"tcp\"\n  timeout  = \"5s\"\n}\n",
    )
    .expect("spec");
    let o = recast(p.path(), &["validate"]);
    assert!(!o.status.success(), "validate accepted it");
    let said = stderr(&o);
    assert!(
        said.contains("recast.hcl:13:3: error: `timeout` is for HTTP routes")
            && said.contains("1 error"),
        "{said}"
    );
}

/// Issue 16 with stock PostgreSQL: the entrypoint's initdb takes the superuser's password from a
/// recast secret file (owned by the image's `postgres` user, mode 0400) and requires it
/// (scram-sha-256); `psql` through a TCP route gets in with it and is refused without it or
/// with another; the password is nowhere in the data directory (the database's own files
/// hold only its SCRAM verifier).
#[test]
fn stock_postgres_takes_its_password_from_a_secret_file() {
    let repo = AptRepo::serve();
    let archive = base_image_archive();
    let server = Server::start();
    let port = free_port();
    let p = tempfile::Builder::new()
        .prefix("pgsecret")
        .tempdir()
        .expect("tmp");
    let dir = p.path();
    postgres_context(dir);
    let entrypoint = crate::postgres::POSTGRES_ENTRYPOINT.replace(
        "--auth=trust --username=postgres",
        "--auth=scram-sha-256 --username=postgres --pwfile=/run/secrets/pgpass",
    );
    assert!(entrypoint.contains("--pwfile"), "{entrypoint}");
    fs::write(dir.join("postgres/entrypoint.sh"), entrypoint).expect("entrypoint");
    let password = "pg-5e1f0c77-secret";
    fs::write(dir.join("pgpass"), format!("{password}\n")).expect("pgpass");
    let service = postgres_spec(&archive, &repo.url, "1").replace(
        "  tmpfs = [\"/run/postgresql\"]\n",
        "  tmpfs = [\"/run/postgresql\"]\n  secret_file {\n    secret = secret.pgpass\n    path   = \"/run/secrets/pgpass\"\n  }\n",
    );
    assert!(service.contains("secret_file"), "{service}");
    write_spec(
        dir,
        &format!("secret \"pgpass\" {{\n  from_file = \"pgpass\"\n}}\n{service}"),
        port,
    );
    ok(&server.rc(dir, &["apply", "--yes"]));

    let psql = |pw: Option<&str>| {
        let mut c = psql_cmd(port);
        if let Some(pw) = pw {
            c.env("PGPASSWORD", pw);
        }
        c.args(["-w", "-c", "select 1"]).output().expect("psql")
    };
    wait_for("psql with the secret password", 60, || {
        let o = psql(Some(password));
        o.status.success() && stdout(&o).trim() == "1"
    });
    for (pw, what) in [
        (None, "no password"),
        (Some("wrong-password"), "a wrong one"),
    ] {
        let o = psql(pw);
        assert!(!o.status.success(), "psql got in with {what}");
        assert!(
            stderr(&o).contains("password"),
            "psql with {what}: {}",
            stderr(&o)
        );
    }
    crate::environments::data_dir_clean(&server, &[password], "after PostgreSQL's initdb");
}
