//! hello: the example service recast deploys.
//!
//! A tiny HTTP/1.1 server on the standard library alone, so that it links fully statically and
//! runs in a `from = "scratch"` image. It listens on `$PORT` and answers:
//! - `GET /` with `$MESSAGE` and its version,
//! - `GET /healthz` with 200 (503 when `HEALTHY=false`).
//!
//! Fault switches, so tests can make a release misbehave:
//! - `FAIL_RATE`: fraction of requests to `/` answered 500, spread evenly;
//! - `LATENCY_MS`: delay before answering `/`;
//! - `HEALTHY=false`: `/healthz` answers 503;
//! - `EXIT_AFTER_MS`: the process exits with status 1 after that long.
//!
//! SIGTERM (or SIGINT) stops accepting connections, lets in-flight requests finish, then exits 0.
//! `hello --self-check` checks the configuration and exits 0 (used by image tests).

// Signal handling needs three libc calls; the standard library has no safe wrapper for them.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Config {
    port: u16,
    message: String,
    fail_rate: f64,
    latency: Duration,
    healthy: bool,
    exit_after: Option<Duration>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        fn var(name: &str) -> Option<String> {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        }
        fn num<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
            var(name)
                .map(|v| {
                    v.parse()
                        .map_err(|_| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        }
        let fail_rate = num::<f64>("FAIL_RATE")?.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&fail_rate) {
            return Err(format!("FAIL_RATE={fail_rate} is not between 0 and 1"));
        }
        let healthy = match var("HEALTHY").as_deref() {
            None | Some("true" | "1") => true,
            Some("false" | "0") => false,
            Some(v) => return Err(format!("HEALTHY={v:?} is not true or false")),
        };
        Ok(Config {
            port: num("PORT")?.unwrap_or(8080),
            message: var("MESSAGE").unwrap_or_else(|| "hello".into()),
            fail_rate,
            latency: Duration::from_millis(num("LATENCY_MS")?.unwrap_or(0)),
            healthy,
            exit_after: num("EXIT_AFTER_MS")?.map(Duration::from_millis),
        })
    }
}

struct Server {
    config: Config,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hello: {e}");
            std::process::exit(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        Some("--self-check") => {
            println!("hello {VERSION}: self-check ok");
            return;
        }
        Some("--version") => {
            println!("hello {VERSION}");
            return;
        }
        Some(other) => {
            eprintln!("hello: unknown argument {other:?} (try --self-check or --version)");
            std::process::exit(2);
        }
        None => {}
    }
    // Block the stop signals before any thread starts, so only the signal thread receives them.
    let signals = signals::block(&[signals::SIGTERM, signals::SIGINT]);

    let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, config.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {}: {e}", config.port);
            std::process::exit(1);
        }
    };
    let port = config.port;
    eprintln!(
        "hello {VERSION} listening on :{port}, message {:?}",
        config.message
    );
    if let Some(after) = config.exit_after {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            eprintln!("hello: EXIT_AFTER_MS reached, exiting with status 1");
            std::process::exit(1);
        });
    }
    let server = Arc::new(Server {
        config,
        requests: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
    });
    {
        let server = server.clone();
        std::thread::spawn(move || {
            let sig = signals.wait();
            eprintln!("hello: signal {sig}, finishing in-flight requests");
            server.stopping.store(true, Ordering::SeqCst);
            // Wake the accept loop.
            let _ = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        });
    }
    for conn in listener.incoming() {
        if server.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let server = server.clone();
        std::thread::spawn(move || serve(&server, stream));
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("hello: stopped");
}

/// Serve one connection: requests in sequence while the client keeps it alive.
fn serve(server: &Server, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Wait for the start of the next request, giving up when the server stops.
        match reader.fill_buf() {
            Ok([]) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if server.stopping.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        }
        server.in_flight.fetch_add(1, Ordering::SeqCst);
        let keep = handle(server, &mut reader, &mut writer, &mut line);
        server.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !keep {
            return;
        }
    }
}

/// Read one request and answer it. Returns whether the connection stays open.
fn handle(
    server: &Server,
    reader: &mut BufReader<TcpStream>,
    writer: &mut impl Write,
    line: &mut String,
) -> bool {
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)));
    line.clear();
    if reader.read_line(line).unwrap_or(0) == 0 {
        return false;
    }
    let mut parts = line.split_whitespace();
    let (method, target, version) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0u64;
    loop {
        line.clear();
        if reader.read_line(line).unwrap_or(0) == 0 {
            return false;
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close")
                    && (version == "HTTP/1.1" || value.eq_ignore_ascii_case("keep-alive"));
            }
        }
    }
    if std::io::copy(
        &mut reader.by_ref().take(content_length),
        &mut std::io::sink(),
    )
    .is_err()
    {
        return false;
    }
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)));

    let path = target.split('?').next().unwrap_or("");
    let c = &server.config;
    let (status, body) = match (method.as_str(), path) {
        ("GET" | "HEAD", "/healthz") if c.healthy => (200, "ok\n".to_string()),
        ("GET" | "HEAD", "/healthz") => (503, "unhealthy (HEALTHY=false)\n".to_string()),
        ("GET" | "HEAD", "/") => {
            if !c.latency.is_zero() {
                std::thread::sleep(c.latency);
            }
            let n = server.requests.fetch_add(1, Ordering::Relaxed);
            // Fail exactly FAIL_RATE of requests, spread evenly: request n fails when the
            // running total of failures owed crosses an integer.
            let owed = |k: u64| (k as f64 * c.fail_rate).floor();
            if owed(n + 1) > owed(n) {
                (500, "injected failure (FAIL_RATE)\n".to_string())
            } else {
                (200, format!("{} from hello {VERSION}\n", c.message))
            }
        }
        ("GET" | "HEAD", _) => (404, "not found\n".to_string()),
        _ => (405, "method not allowed\n".to_string()),
    };
    if server.stopping.load(Ordering::SeqCst) {
        keep_alive = false;
    }
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: {}\r\n\r\n",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    let sent = writer.write_all(head.as_bytes()).is_ok()
        && (method == "HEAD" || writer.write_all(body.as_bytes()).is_ok())
        && writer.flush().is_ok();
    sent && keep_alive
}

/// The few libc calls needed to wait for SIGTERM on a dedicated thread.
mod signals {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
    const SIG_BLOCK: i32 = 0;

    /// `sigset_t` is 1024 bits on Linux.
    #[repr(C)]
    pub struct SigSet([u64; 16]);

    unsafe extern "C" {
        fn sigemptyset(set: *mut SigSet) -> i32;
        fn sigaddset(set: *mut SigSet, sig: i32) -> i32;
        fn pthread_sigmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
        fn sigwait(set: *const SigSet, sig: *mut i32) -> i32;
    }

    /// Block `sigs` in this thread (and every thread it starts later).
    pub fn block(sigs: &[i32]) -> SigSet {
        let mut set = SigSet([0; 16]);
        // SAFETY: `set` is a valid, writable sigset_t for the duration of each call.
        unsafe {
            sigemptyset(&mut set);
            for &s in sigs {
                sigaddset(&mut set, s);
            }
            pthread_sigmask(SIG_BLOCK, &set, std::ptr::null_mut());
        }
        set
    }

    impl SigSet {
        /// Wait for one of the blocked signals; returns its number.
        pub fn wait(&self) -> i32 {
            let mut sig = 0;
            // SAFETY: `self` is an initialised sigset_t and `sig` a valid out-pointer.
            unsafe { sigwait(self, &mut sig) };
            sig
        }
    }
}
