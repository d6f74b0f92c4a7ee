//! The server, apply, rollouts and rollback, under continuous load (issue 5).

use crate::pg_cluster::{Shared, SharedDb};
use crate::{example, stderr, stdout};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A project directory whose spec we rewrite between applies.
pub struct Project {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Project {
    pub fn new() -> Project {
        let dir = tempfile::Builder::new()
            .prefix("proj")
            .tempdir()
            .expect("tmp");
        std::fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
        std::fs::copy(example().join("dist/hello"), dir.path().join("dist/hello"))
            .expect("copy hello");
        Project {
            dir,
            port: free_port(),
        }
    }

    /// Write the spec: service `web` with `env`, a rollout block and extra service settings.
    pub fn write(&self, env: &str, rollout: &str, extra: &str) {
        std::fs::write(
            self.dir.path().join("recast.hcl"),
            format!(
                r#"
image "web" {{
  from = "scratch"
  copy {{
    src  = "dist/hello"
    dest = "/bin/hello"
    mode = "0555"
  }}
  user = "65534:65534"
  cmd  = ["/bin/hello"]
}}

service "web" {{
  image     = image.web
  instances = 3
  port      = 8080
  env       = {{ {env} }}
  health {{
    http                = "/healthz"
    interval            = "200ms"
    timeout             = "500ms"
    unhealthy_threshold = 2
  }}
  {extra}
  rollout {{
    {rollout}
  }}
}}

route "web" {{
  listen  = "127.0.0.1:{}"
  service = service.web
}}
"#,
                self.port
            ),
        )
        .expect("spec");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Give the health check a `start_period` (a never-healthy release fails when it ends).
    pub fn start_period(&self, d: &str) {
        let spec = std::fs::read_to_string(self.path().join("recast.hcl"))
            .expect("read")
            .replace(
                "unhealthy_threshold = 2",
                &format!("unhealthy_threshold = 2\n    start_period = \"{d}\""),
            );
        std::fs::write(self.path().join("recast.hcl"), spec).expect("write");
    }
}

/// Whether this run is the suite's PostgreSQL pass: `RECAST_TEST_STATE=postgres` (set by
/// `scripts/test` for its second pass; unset or `sqlite`: the default, `state.db`).
pub fn on_postgres() -> bool {
    match std::env::var("RECAST_TEST_STATE").as_deref() {
        Ok("postgres") => true,
        Ok("" | "sqlite") | Err(_) => false,
        Ok(other) => panic!("RECAST_TEST_STATE={other:?}: expected postgres or sqlite"),
    }
}

/// The state a server of this run keeps its records in, if not the default `state.db`: on the
/// PostgreSQL pass, a new database of its own in the cluster the whole run shares.
pub fn test_state() -> Option<SharedDb> {
    on_postgres().then(|| Shared::get().create_db())
}

/// `recast server` on a data directory; destroys what it deployed and stops on drop.
pub struct Server {
    child: Option<Child>,
    pub data: PathBuf,
    /// More arguments for `recast server` (e.g. `--state URL`).
    pub args: Vec<String>,
    _data_dir: Option<tempfile::TempDir>,
    /// On the PostgreSQL pass, the database `--state` names (dropped after the server stops).
    pub db: Option<SharedDb>,
}

impl Server {
    pub fn start() -> Server {
        let d = tempfile::tempdir().expect("tmp");
        Server::start_with(d, Vec::new())
    }

    /// `recast server` with more arguments (`--state URL`). Without a `--state` of the
    /// caller's, it runs on the pass's backend (`test_state`), also after `spawn` again.
    pub fn start_with(d: tempfile::TempDir, args: Vec<String>) -> Server {
        let db = if args.iter().any(|a| a == "--state") {
            None
        } else {
            test_state()
        };
        Server::launch(d, args, db)
    }

    /// `recast server` with `args`, and `--state` naming `db` if there is one.
    fn launch(d: tempfile::TempDir, mut args: Vec<String>, db: Option<SharedDb>) -> Server {
        if let Some(db) = &db {
            args.extend(["--state".to_string(), db.url()]);
        }
        let mut s = Server {
            child: None,
            data: d.path().to_path_buf(),
            args,
            _data_dir: Some(d),
            db,
        };
        s.spawn();
        s
    }

    /// `recast server` on a data directory prepared by the caller (e.g. recorded state). On the
    /// PostgreSQL pass its `state.db` is first moved into the server's database with `recast
    /// state migrate` (as an installation moving to PostgreSQL would) and removed, so nothing
    /// can read it by mistake.
    pub fn start_in(d: tempfile::TempDir) -> Server {
        let Some(db) = test_state() else {
            return Server::start_with(d, Vec::new());
        };
        let file = d.path().join("state.db");
        if file.exists() {
            let from = format!("sqlite:{}", file.display());
            let out = Command::new(env!("CARGO_BIN_EXE_recast"))
                .args(["state", "migrate", "--from", &from, "--to", &db.url()])
                .env("RECAST_DATA_DIR", d.path())
                .output()
                .expect("run recast state migrate");
            ok(&out);
            for f in ["state.db", "state.db-wal", "state.db-shm"] {
                std::fs::remove_file(d.path().join(f)).ok();
            }
        }
        Server::launch(d, Vec::new(), Some(db))
    }

    pub fn spawn(&mut self) {
        self.spawn_from(Path::new(env!("CARGO_BIN_EXE_recast")));
    }

    /// Start the server from another `recast` executable (an upgrade).
    pub fn spawn_from(&mut self, exe: &Path) {
        let _ = std::fs::remove_file(self.data.join("server.json"));
        // What the server says goes to a file a failing test shows (`logs`).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.join("server-test.log"))
            .expect("server log");
        let child = Command::new(exe)
            .args(["server", "--listen", "127.0.0.1:0"])
            .args(&self.args)
            .env("RECAST_DATA_DIR", &self.data)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("recast server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.data.join("server.json").exists() {
            assert!(Instant::now() < deadline, "the server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // On the PostgreSQL pass the server must say its state is there: a test passing on a
        // state.db nobody noticed would prove nothing about PostgreSQL.
        if let Some(db) = &self.db {
            let info = std::fs::read(self.data.join("server.json")).expect("server.json");
            let info: serde_json::Value = serde_json::from_slice(&info).expect("server.json");
            assert_eq!(
                info["state"].as_str(),
                Some(db.url().as_str()),
                "where the server says its state is ({})",
                self.data.join("server.json").display()
            );
            assert!(
                !self.data.join("state.db").exists(),
                "a server on PostgreSQL wrote {}",
                self.data.join("state.db").display()
            );
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("wait");
        }
    }

    pub fn rc(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(args)
            .current_dir(cwd)
            .env("RECAST_DATA_DIR", &self.data)
            .stdin(Stdio::null())
            .output()
            .expect("run recast")
    }

    /// How many instances the data directory holds (one being created, `.creating-…`, is not
    /// one yet).
    pub fn instances(&self) -> usize {
        self.instance_ids().len()
    }

    /// The last lines of what the servers and the data plane said, for a failing test.
    pub fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.data.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- servers:\n{}\n--- data plane:\n{}",
            tail("server-test.log"),
            tail("dataplane.log")
        )
    }

    /// The ids of the instances, sorted (not those still being created).
    pub fn instance_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.join("instances"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The pid of the data plane serving this directory, if one answers.
    pub fn data_plane_pid(&self) -> Option<u32> {
        let mut s =
            std::os::unix::net::UnixStream::connect(self.data.join("dataplane.sock")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"{\"op\":\"hello\"}\n").ok()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        v["pid"].as_u64().map(|p| p as u32)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.rc(
                Path::new("/"),
                &["destroy", "--yes", "--all-projects", "--volumes"],
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The data plane outlives servers by design; a test's goes with its test.
        if let Some(pid) = self.data_plane_pid() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Continuous keep-alive GETs from 4 clients; records every failure and every body seen.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        let l = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(Vec::new())),
            bodies: Arc::new(Mutex::new(Default::default())),
            threads: Vec::new(),
        };
        let mut l = l;
        for _ in 0..4 {
            let (stop, ok, failures, bodies) = (
                l.stop.clone(),
                l.ok.clone(),
                l.failures.clone(),
                l.bodies.clone(),
            );
            l.threads.push(std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    let reused = conn.is_some();
                    let s = match conn.take() {
                        Some(s) => s,
                        None => match TcpStream::connect(("127.0.0.1", port)) {
                            Ok(s) => s,
                            Err(e) => {
                                failures.lock().expect("lock").push(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        },
                    };
                    match get(s) {
                        Ok((200, body, s)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            *bodies.lock().expect("lock").entry(body).or_default() += 1;
                            conn = s;
                        }
                        Ok((status, body, _)) => failures
                            .lock()
                            .expect("lock")
                            .push(format!("{status}: {body}")),
                        // A kept-alive connection the server closed before answering anything:
                        // the request is sent again on a new one, as HTTP clients do
                        // (RFC 9110 §9.2.2); a new connection that fails so is a failure.
                        Err(e) if reused && closed_unanswered(&e) => {}
                        Err(e) => failures.lock().expect("lock").push(format!("request: {e}")),
                    }
                }
            }));
        }
        l
    }

    /// Wait (with a deadline) until `n` more requests have succeeded: traffic is flowing.
    pub fn flowing(&self, n: u64) {
        let start = self.ok.load(Ordering::Relaxed);
        wait_for("traffic through the route", 20, || {
            self.ok.load(Ordering::Relaxed) >= start + n
        });
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> usize {
        self.failures.lock().expect("lock").len()
    }

    /// Stop and return (successful requests, failures, bodies).
    pub fn finish(mut self) -> (u64, Vec<String>, std::collections::BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().expect("lock").clone(),
            self.bodies.lock().expect("lock").clone(),
        )
    }
}

/// One keep-alive GET /: (status, body, the connection for reuse unless the server said
/// `Connection: close`).
pub fn get(mut s: TcpStream) -> std::io::Result<(u16, String, Option<TcpStream>)> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let (head, body) = read_message(&mut s)?;
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let close = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("connection: close"));
    Ok((status, body, (!close).then_some(s)))
}

/// The connection was closed (or reset) before a byte of the answer came.
pub fn closed_unanswered(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | BrokenPipe)
}

/// Read one HTTP/1.1 message (request or response, sized by content-length): (head, body).
pub fn read_message(s: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 && buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "closed before answering",
            ));
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed mid-message",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok((head.to_string(), body[..len].to_string()));
            }
        }
    }
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "recast failed:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn body_now(port: u16) -> String {
    TcpStream::connect(("127.0.0.1", port))
        .ok()
        .and_then(|s| get(s).ok())
        .map(|(_, b, _)| b)
        .unwrap_or_default()
}

#[test]
fn rolling_update_under_load_has_no_failed_request() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");

    let load = Load::start(p.port);
    load.flowing(50);
    p.write(r#"MESSAGE = "v2""#, r#"strategy = "rolling""#, "");
    let out = server.rc(p.path(), &["apply", "--yes", "--json"]);
    ok(&out);
    load.flowing(50);
    let (n, failures, bodies) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 100, "too little load to mean anything: {n}");
    let seen: Vec<&String> = bodies.keys().collect();
    assert_eq!(
        seen,
        ["v1 from hello 0.1.0\n", "v2 from hello 0.1.0\n"],
        "every response comes from v1 or v2"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    assert_eq!(server.instances(), 3, "old instances are gone");

    // History and plan agree.
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    let outcomes: Vec<&str> = hv["releases"]
        .as_array()
        .expect("releases")
        .iter()
        .map(|r| r["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["succeeded", "succeeded"]);
    let plan = server.rc(p.path(), &["plan"]);
    assert!(
        stdout(&plan).contains("= service web: unchanged (release 2)"),
        "{}",
        stdout(&plan)
    );
}

#[test]
fn blue_green_then_rollback_under_load() {
    let server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "blue_green"
    auto_promote_after = "500ms"
    scale_down_delay = "1m""#;
    p.write(r#"MESSAGE = "v1""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(r#"MESSAGE = "v2""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    assert_eq!(body_now(p.port), "v2 from hello 0.1.0\n");
    assert_eq!(server.instances(), 6, "blue stays warm");

    let out = server.rc(p.path(), &["rollback", "web", "--json"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["from"].as_i64(), v["to"].as_i64(), v["warm"].as_bool()),
        (Some(2), Some(1), Some(true))
    );
    assert!(
        v["switched_ms"].as_f64().expect("ms") < 50.0,
        "a warm rollback is a routing switch: {v}"
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    load.flowing(50);
    let (n, failures, bodies) = load.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n > 100);
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    wait_for("the rolled-back release's instances to go", 30, || {
        server.instances() == 3
    });
}

#[test]
fn a_release_that_fails_its_health_check_never_gets_traffic() {
    let server = Server::start();
    let p = Project::new();
    p.write(r#"MESSAGE = "v1""#, r#"strategy = "rolling""#, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let load = Load::start(p.port);
    p.write(
        r#"MESSAGE = "v2", HEALTHY = "false""#,
        r#"strategy = "rolling""#,
        "",
    );
    p.start_period("1s");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("web: release 2 rolled_back: instance web-r2-"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("GET /healthz answered 503"),
        "{}",
        stdout(&out)
    );
    let (_, failures, bodies) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        bodies.keys().collect::<Vec<_>>(),
        ["v1 from hello 0.1.0\n"],
        "v2 got traffic"
    );
    assert_eq!(server.instances(), 3);
}

#[test]
fn a_release_that_crashes_after_start_is_rolled_back() {
    let server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "rolling"
    min_healthy_time = "3s""#;
    p.write(r#"MESSAGE = "v1""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2", EXIT_AFTER_MS = "800""#, rollout, "");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("exited with status 1"),
        "{}",
        stdout(&out)
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    wait_for("v2 instances to go", 20, || server.instances() == 3);
}

#[test]
fn a_stalled_rollout_is_rolled_back_at_its_deadline() {
    let server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "rolling"
    progress_deadline = "2s""#;
    p.write(r#"MESSAGE = "v1""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    // Never healthy, never judged unhealthy (failures inside start_period do not count).
    p.write(r#"MESSAGE = "v2", HEALTHY = "false""#, rollout, "");
    let spec = std::fs::read_to_string(p.path().join("recast.hcl"))
        .expect("read")
        .replace(
            "unhealthy_threshold = 2",
            "unhealthy_threshold = 2\n    start_period = \"10m\"",
        );
    std::fs::write(p.path().join("recast.hcl"), spec).expect("write");
    let t = Instant::now();
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the rollout hung: {:?}",
        t.elapsed()
    );
    assert!(
        stdout(&out).contains("progress_deadline") || stdout(&out).contains("not healthy in time"),
        "{}",
        stdout(&out)
    );
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
}

#[test]
fn a_concurrent_apply_is_refused_and_a_killed_server_converges() {
    let mut server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "blue_green""#;
    p.write(r#"MESSAGE = "v1""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    // A blue/green rollout that waits for `recast promote`.
    p.write(r#"MESSAGE = "v2""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    let second = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("an apply of project \"proj"),
        "{}",
        stderr(&second)
    );
    assert!(
        stderr(&second).contains("is already running"),
        "{}",
        stderr(&second)
    );
    wait_for("the green instances", 20, || server.instances() == 6);
    let blue: Vec<String> = server
        .instance_ids()
        .into_iter()
        .filter(|id| id.starts_with("web-r1-"))
        .collect();
    assert_eq!(blue.len(), 3, "{blue:?}");

    // SIGKILL mid-rollout: the route keeps serving the live release with no control plane.
    server.kill9();
    assert_eq!(
        body_now(p.port),
        "v1 from hello 0.1.0\n",
        "the route died with the server"
    );
    // A new server takes over: the live release's instances are kept as they are (same ids),
    // the interrupted rollout's go.
    server.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(server.instances() == 3 && body_now(p.port) == "v1 from hello 0.1.0\n") {
        assert!(
            Instant::now() < deadline,
            "no convergence: instances {:?}, body {:?}\n{}",
            server.instance_ids(),
            body_now(p.port),
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.instance_ids(), blue, "the live release was replaced");
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    let r2 = &hv["releases"][1];
    assert_eq!(r2["outcome"], "rolled_back");
    assert_eq!(
        r2["reason"],
        "interrupted: the server stopped during the rollout"
    );
    let st = server.rc(p.path(), &["status", "web", "--json"]);
    let sv: serde_json::Value = serde_json::from_slice(&st.stdout).expect("json");
    assert_eq!(sv["services"][0]["current_release"], 1);
    // And the same release can be applied again.
    ok(&server.rc(p.path(), &["apply", "--yes", "--detach"]));
    wait_for("the rollout to wait for promotion", 30, || {
        stdout(&server.rc(p.path(), &["status", "web"])).contains("waiting for `recast promote`")
    });
    ok(&server.rc(p.path(), &["promote", "web"]));
    wait_for("release 3 to go live", 30, || {
        body_now(p.port) == "v2 from hello 0.1.0\n"
    });
}

#[test]
fn no_server_is_a_clear_error() {
    let d = tempfile::tempdir().expect("tmp");
    // (`status` and `history` read the recorded state without a server: `cli.rs`.)
    let out = Command::new(env!("CARGO_BIN_EXE_recast"))
        .args(["rollback", "web"])
        .env("RECAST_DATA_DIR", d.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no recast server is running for data directory"),
        "{err}"
    );
    assert!(
        err.contains("hint: start one with `recast server`"),
        "{err}"
    );
}

#[test]
fn with_auto_rollback_off_a_failed_rollout_stops_where_it_failed() {
    let server = Server::start();
    let p = Project::new();
    let rollout = r#"strategy = "rolling"
    auto_rollback = false"#;
    p.write(r#"MESSAGE = "v1""#, rollout, "");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    p.write(r#"MESSAGE = "v2", HEALTHY = "false""#, rollout, "");
    p.start_period("1s");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("web: release 2 failed:"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("auto_rollback is off"),
        "{}",
        stdout(&out)
    );
    let h = server.rc(p.path(), &["history", "web", "--json"]);
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).expect("json");
    assert_eq!(hv["releases"][1]["outcome"], "failed");
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    // Logs of the live instances are there for a person to read.
    let logs = server.rc(p.path(), &["logs", "web"]);
    ok(&logs);
    assert_eq!(
        stdout(&logs).matches("listening on :8080").count(),
        3,
        "{}",
        stdout(&logs)
    );
    let status = server.rc(p.path(), &["status", "web"]);
    assert!(
        stdout(&status).starts_with("service web (project proj"),
        "{}",
        stdout(&status)
    );
    assert_eq!(
        stdout(&status).matches("healthy in rotation").count(),
        3,
        "{}",
        stdout(&status)
    );
}
