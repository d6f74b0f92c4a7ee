//! Timeouts and limits on the API and the routes, against the real binary (issue 10, finding 4):
//! slow clients are cut off, idle crowds and a lowered open-file limit neither stop the server
//! from serving nor make it replace healthy instances, a hanging instance gets the client a 504
//! after the route's timeout, and the API refuses an oversized body while reading it.

use crate::deploy::{body_now, free_port, get, ok, read_message, wait_for};
use crate::{example, stderr, stdout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A project: `web` (examples/hello) with `env`, `instances`, behind a route with `timeout`.
struct Proj {
    dir: tempfile::TempDir,
    port: u16,
}

impl Proj {
    fn new(env: &str, instances: u32, timeout: &str) -> Proj {
        let dir = tempfile::Builder::new()
            .prefix("limits")
            .tempdir()
            .expect("tmp");
        std::fs::create_dir_all(dir.path().join("dist")).expect("mkdir");
        std::fs::copy(example().join("dist/hello"), dir.path().join("dist/hello"))
            .expect("copy hello (build it with ./scripts/build-hello)");
        let port = free_port();
        std::fs::write(
            dir.path().join("recast.hcl"),
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
  instances = {instances}
  port      = 8080
  env       = {{ {env} }}
  health {{
    http                = "/healthz"
    interval            = "200ms"
    timeout             = "500ms"
    unhealthy_threshold = 2
  }}
}}

route "web" {{
  listen  = "127.0.0.1:{port}"
  service = service.web
  timeout = "{timeout}"
}}
"#
            ),
        )
        .expect("spec");
        Proj { dir, port }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `recast server`, optionally under `prlimit --nofile=N:N`; its stderr goes to a file.
struct Srv {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Srv {
    fn start(nofile: Option<u64>) -> Srv {
        let (d, l) = (
            tempfile::tempdir().expect("tmp"),
            tempfile::tempdir().expect("tmp"),
        );
        let data = d.path().to_path_buf();
        let log = l.path().join("server.log");
        let bin = env!("CARGO_BIN_EXE_recast");
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(["server", "--listen", "127.0.0.1:0"])
            .env("RECAST_DATA_DIR", &data)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start recast server");
        let s = Srv {
            child: Some(child),
            data,
            log,
            _dirs: (d, l),
        };
        wait_for("the server to start", 30, || {
            s.data.join("server.json").exists()
        });
        s
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn rc(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(args)
            .current_dir(cwd)
            .env("RECAST_DATA_DIR", &self.data)
            .stdin(Stdio::null())
            .output()
            .expect("run recast")
    }

    fn api(&self) -> SocketAddr {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data.join("server.json")).expect("info"))
                .expect("server.json");
        info["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("address")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .expect("token")
            .trim()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (id, healthy) of every instance of `web`.
    fn instances(&self, p: &Proj) -> Vec<(String, bool)> {
        let out = self.rc(p.path(), &["status", "web", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut ids: Vec<(String, bool)> = v["services"][0]["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or("").to_string(),
                    i["healthy"] == true,
                )
            })
            .collect();
        ids.sort();
        ids
    }

    /// CPU time (user + system) the server process has used.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat format")
            .1
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14, stime 15 (1-based, whole line).
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10)
    }
}

impl Drop for Srv {
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
    }
}

/// Whether the peer closed `s` (a read gives EOF or an error) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Slowloris: starts a request and sends one header line every 500 ms, never ending the head;
/// returns how long the server kept the connection open.
fn slowloris(addr: SocketAddr) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).expect("connect slow client");
        let started = Instant::now();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n");
        let mut reader = s.try_clone().expect("clone");
        let closed = std::thread::spawn(move || {
            let mut b = [0u8; 256];
            while matches!(reader.read(&mut b), Ok(n) if n > 0) {}
        });
        while !closed.is_finished() && started.elapsed() < Duration::from_secs(30) {
            if s.write_all(b"x-slow: 1\r\n").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let took = started.elapsed();
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = closed.join();
        took
    })
}

/// One raw HTTP exchange on a fresh connection: (status, head, body). The request is sent on
/// another thread, so that a server answering before it read everything is seen.
fn exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        let _ = w.write_all(&request);
    });
    let (head, body) = read_message(&mut s).expect("an answer");
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, body)
}

#[test]
fn slow_clients_are_cut_off_and_2000_idle_connections_neither_stop_the_route_nor_replace_instances()
{
    let server = Srv::start(None);
    let p = Proj::new(r#"MESSAGE = "v1""#, 2, "30s");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let route: SocketAddr = ([127, 0, 0, 1], p.port).into();
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let before = server.instances(&p);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.iter().all(|(_, h)| *h), "{before:?}");

    let slow_route = slowloris(route);
    let slow_api = slowloris(server.api());
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..2000)
        .map(|i| TcpStream::connect(route).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    // While they are all open, a normal client is served and the API answers.
    for i in 0..20 {
        let s = TcpStream::connect(route).expect("connect");
        let (status, body, _) = get(s).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(
            (status, body.as_str()),
            (200, "v1 from hello 0.1.0\n"),
            "request {i}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = server.instances(&p);
    assert_eq!(
        during, before,
        "instances changed under 2,000 idle connections"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the test was too slow to check the idle connections before the header timeout: {:?}",
        started.elapsed()
    );

    // The slow clients are cut off at the header read timeout (10 s), on the route and the API.
    for (what, slow) in [("route", slow_route), ("API", slow_api)] {
        let took = slow.join().expect("slow client");
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(14),
            "the slow client of the {what} was cut off after {took:?}, expected ~10s"
        );
    }
    // Connections that never sent a request are closed at the same deadline.
    for (i, s) in idle.iter_mut().take(20).enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "idle connection {i} was never closed"
        );
    }
    drop(idle);
    assert_eq!(body_now(p.port), "v1 from hello 0.1.0\n");
    let after = server.instances(&p);
    assert_eq!(after, before, "a healthy instance was replaced");
}

#[test]
fn a_hanging_instance_gets_a_504_after_the_route_timeout_counted_as_an_error() {
    let server = Srv::start(None);
    // Every GET / takes 3 s; health checks are not delayed, so the instance stays healthy.
    let p = Proj::new(r#"LATENCY_MS = "3000""#, 1, "1s");
    ok(&server.rc(p.path(), &["apply", "--yes"]));
    let route: SocketAddr = ([127, 0, 0, 1], p.port).into();
    let before = server.instances(&p);
    let started = Instant::now();
    let (status, _, body) = exchange(route, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec());
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("did not answer within the route's timeout of 1s"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?}, expected ~1s"
    );
    let out = server.rc(p.path(), &["status", "web", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let traffic = &v["services"][0]["traffic"][0];
    assert_eq!(
        (traffic["requests"].as_u64(), traffic["errors_5xx"].as_u64()),
        (Some(1), Some(1)),
        "the timeout counts as a failed request: {v}"
    );
    assert_eq!(server.instances(&p), before, "the instance was replaced");
}

#[test]
fn under_a_lowered_open_file_limit_the_server_refuses_clearly_backs_off_and_keeps_its_instances() {
    let server = Srv::start(Some(256));
    let limit = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).expect("limits");
    assert!(
        limit
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 256 ")),
        "{limit}"
    );
    let p = Proj::new(r#"MESSAGE = "v1""#, 2, "30s");
    let out = server.rc(p.path(), &["apply", "--yes"]);
    assert!(
        out.status.success(),
        "apply under 256 descriptors failed:\n{}{}\nserver:\n{}",
        stdout(&out),
        stderr(&out),
        server.log()
    );
    let route: SocketAddr = ([127, 0, 0, 1], p.port).into();
    let before = server.instances(&p);
    assert!(before.iter().all(|(_, h)| *h), "{before:?}");

    // Far more connections than the process has descriptors.
    let mut held = Vec::new();
    for _ in 0..600 {
        match TcpStream::connect(route) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Beyond what recast can hold, a client gets a clear 503 rather than a hang (once the
    // refusals of the crowd itself, bounded in number and time, are done).
    let mut last = String::new();
    wait_for("a clear 503 beyond the limit", 15, || {
        let Ok(mut s) = TcpStream::connect(route) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        match read_message(&mut s) {
            Ok((head, body)) => {
                last = format!("{head}\n{body}");
                head.starts_with("HTTP/1.1 503") && body.contains("limit of")
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    assert!(last.contains("open client connections"), "{last}");
    // The API is not part of the routes' budget: a crowd there takes the process's last
    // descriptors, so that accepting fails (EMFILE) and so would health probes.
    let api = server.api();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(api) {
            held.push(s);
        }
    }
    // Saturated for 3 s: the server does not spin.
    let cpu = server.cpu();
    std::thread::sleep(Duration::from_secs(3));
    let used = server.cpu() - cpu;
    assert!(
        used < Duration::from_millis(1500),
        "the server used {used:?} of CPU in 3 s while saturated: it spins\n{}",
        server.log()
    );
    assert!(
        server.log().contains("cannot accept connections"),
        "the API never ran out of descriptors; the test proves nothing:\n{}",
        server.log()
    );
    assert!(
        server.log().contains("health probes are not running"),
        "no probe ran while descriptors were short:\n{}",
        server.log()
    );
    // Once the crowd leaves, clients are served again.
    drop(held);
    wait_for("the route to serve again", 15, || {
        TcpStream::connect(route)
            .ok()
            .and_then(|s| get(s).ok())
            .is_some_and(|(status, body, _)| status == 200 && body == "v1 from hello 0.1.0\n")
    });
    assert_eq!(
        server.instances(&p),
        before,
        "a healthy instance was replaced\n{}",
        server.log()
    );
}

#[test]
fn the_api_refuses_a_body_over_its_limit_while_reading_it() {
    let server = Srv::start(None);
    let (api, token) = (server.api(), server.token());
    // Declared too large: refused before reading.
    let mut req = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        3 << 20
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b' ', 3 << 20));
    let (status, _, body) = exchange(api, req);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("over the API's limit of 1048576 bytes"),
        "{body}"
    );
    // No length (chunked): counted while read, cut at the limit.
    let mut req = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..48 {
        req.extend(b"10000\r\n");
        req.extend(std::iter::repeat_n(b' ', 0x10000));
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    let (status, _, body) = exchange(api, req);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the API's limit"), "{body}");
    // Without the token, nothing is read at all.
    let (status, _, _) = exchange(
        api,
        b"POST /v1/apply HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
    );
    assert_eq!(status, 401);
    // The API still works.
    let out = server.rc(Path::new("/"), &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_non_loopback_api_address_needs_insecure_listen() {
    let data = tempfile::tempdir().expect("tmp");
    let spec = Proj::new(r#"MESSAGE = "v1""#, 1, "30s");
    for args in [
        vec!["server", "--listen", "0.0.0.0:0"],
        vec!["up", "--listen", "0.0.0.0:0"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_recast"))
            .args(&args)
            .current_dir(spec.path())
            .env("RECAST_DATA_DIR", data.path())
            .stdin(Stdio::null())
            .output()
            .expect("run recast");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("0.0.0.0:0") && err.contains("--insecure-listen"),
            "{args:?}: {err}"
        );
        assert!(
            !data.path().join("server.json").exists(),
            "{args:?} started a server"
        );
    }
}
