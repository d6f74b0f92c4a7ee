//! The example service's behaviour, including its fault switches (issue 2).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Hello {
    child: Child,
    port: u16,
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Start hello with `env` and wait (with a deadline) until it accepts connections.
fn start(env: &[(&str, &str)]) -> Hello {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hello");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "hello did not listen on {port}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Hello { child, port }
}

/// One `GET path` on a fresh connection: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn answers_with_message_and_version() {
    let h = start(&[("MESSAGE", "v2-canary")]);
    let (status, body) = get(h.port, "/");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        format!("v2-canary from hello {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(get(h.port, "/healthz").0, 200);
    assert_eq!(get(h.port, "/nope").0, 404);
}

#[test]
fn keeps_connections_alive() {
    let h = start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", h.port)).expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}

#[test]
fn healthy_false_fails_the_health_check() {
    let h = start(&[("HEALTHY", "false")]);
    assert_eq!(get(h.port, "/healthz").0, 503);
    assert_eq!(get(h.port, "/").0, 200);
}

#[test]
fn fail_rate_fails_that_fraction_of_requests() {
    let h = start(&[("FAIL_RATE", "0.3")]);
    let failures = (0..100).filter(|_| get(h.port, "/").0 == 500).count();
    assert_eq!(failures, 30);
}

#[test]
fn latency_delays_answers() {
    let h = start(&[("LATENCY_MS", "150")]);
    let t = Instant::now();
    assert_eq!(get(h.port, "/").0, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(get(h.port, "/healthz").0, 200);
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "health checks are not delayed"
    );
}

#[test]
fn exit_after_exits_with_status_1() {
    let mut h = start(&[("EXIT_AFTER_MS", "100")]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = h.child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "hello did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait (with a deadline) until the listener on `port`, in the network namespace of `pid`, has no
/// connection waiting to be accepted: a connection made before the call has been accepted.
/// (For a LISTEN socket, /proc/net/tcp's rx_queue is the accept queue.)
fn wait_accepted(pid: i32, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let local = format!(":{port:04X}");
    loop {
        let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let waiting = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1)?.ends_with(&local) && f.get(3) == Some(&"0A"))
                .then(|| f.get(4)?.split(':').nth(1).map(|q| q != "00000000"))?
        });
        if waiting == Some(false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was never accepted"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigterm_finishes_in_flight_requests() {
    let mut h = start(&[("LATENCY_MS", "400")]);
    let port = h.port;
    // The request is sent, and hello has accepted the connection: it is in flight.
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let inflight = std::thread::spawn(move || {
        let mut resp = String::new();
        conn.read_to_string(&mut resp).expect("read");
        let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0u16);
        (
            status,
            resp.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    });
    wait_accepted(h.child.id() as i32, port);
    let pid = h.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let (status, body) = inflight.join().expect("request thread");
    assert_eq!((status, body.starts_with("hello from hello")), (200, true));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = h.child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hello did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
}

#[test]
fn self_check_and_bad_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_hello"))
        .arg("--self-check")
        .output()
        .expect("run");
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("FAIL_RATE", "lots")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "hello: FAIL_RATE=\"lots\" is not a number\n"
    );
}
