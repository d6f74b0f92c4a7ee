//! Handing a route's listening sockets to another route (as the data plane does across processes)
//! and closing the old one gracefully, over real loopback sockets.

use super::*;
use std::sync::atomic::AtomicBool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend on loopback: `GET /slow` is answered after 800 ms, `GET /hang` never; anything else
/// at once with `ok`.
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("end") + 4;
                    let head: Vec<u8> = buf.drain(..end).collect();
                    if head.starts_with(b"GET /hang") {
                        std::future::pending::<()>().await;
                    }
                    if head.starts_with(b"GET /slow") {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                    }
                    let resp = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn service(target: SocketAddr) -> (Arc<Service>, Arc<Backend>) {
    let svc = Service::new("web");
    let connector: Connector = Arc::new(move || std::net::TcpStream::connect(target));
    let backend = Backend::new("b1".into(), 1, connector, svc.metrics(1));
    svc.set_table(Table {
        groups: vec![Group {
            release: 1,
            weight: 1,
            backends: vec![backend.clone()],
        }],
    });
    (svc, backend)
}

fn limits() -> conn::Limits {
    conn::Limits::route("route test")
}

/// One response's head (lowercased) and body; None when the connection closed first.
async fn read_response(s: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Default)]
struct Tally {
    sent: AtomicUsize,
    answered: AtomicUsize,
    /// Requests sent and never answered, and connections refused.
    failed: AtomicUsize,
    /// Answers that carried `Connection: close`.
    closes: AtomicUsize,
}

/// A keep-alive client: sends `GET /` one after another (pausing `pause` between), opening a new
/// connection when the route answers `Connection: close`; any request not answered is a failure.
async fn client(addr: SocketAddr, pause: Duration, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("connect to {addr}: {e}");
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            },
        };
        tally.sent.fetch_add(1, Ordering::SeqCst);
        let sent = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        match (sent, read_response(&mut s).await) {
            (Ok(()), Some((head, body))) if head.starts_with("http/1.1 200") && body == "ok\n" => {
                tally.answered.fetch_add(1, Ordering::SeqCst);
                if head.contains("connection: close") {
                    tally.closes.fetch_add(1, Ordering::SeqCst);
                } else {
                    conn = Some(s);
                }
            }
            (_, other) => {
                eprintln!("request through {addr} failed: {other:?}");
                tally.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn wait_until(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_handed_over_under_load_then_closed_gracefully_fails_no_request() {
    let (svc, _) = service(backend().await);
    let mut route = Route::bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        svc.clone(),
        Duration::from_secs(30),
        limits(),
    )
    .await
    .expect("bind route");
    let addr = route.addr;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pauses = [0, 0, 0, 1, 3, 10, 40, 150];
    let clients: Vec<_> = pauses
        .iter()
        .map(|&ms| {
            let pause = Duration::from_millis(ms);
            tokio::spawn(client(addr, pause, tally.clone(), stop.clone()))
        })
        .collect();
    // Two handoffs: the second from a route that was itself built from received sockets.
    for round in 0..2 {
        let before = tally.answered.load(Ordering::SeqCst);
        wait_until("load before the handoff", Duration::from_secs(10), || {
            tally.answered.load(Ordering::SeqCst) >= before + 2000
        })
        .await;
        assert!(
            route.connections() > 0,
            "round {round}: no client connected"
        );
        let fds = route.listeners().expect("duplicate the listeners");
        let next = Route::from_listeners(fds, svc.clone(), Duration::from_secs(30), limits())
            .expect("serve the received listeners");
        assert_eq!(next.addr, addr, "the new route's address");
        let still_open = route.close_gracefully(Duration::from_secs(10)).await;
        assert_eq!(still_open, 0, "round {round}: old connections left open");
        route = next;
        let after = tally.answered.load(Ordering::SeqCst);
        wait_until("load on the new route", Duration::from_secs(10), || {
            tally.answered.load(Ordering::SeqCst) >= after + 2000
        })
        .await;
        assert!(
            route.connections() > 0,
            "round {round}: the new route serves no one"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let (sent, answered) = (
        tally.sent.load(Ordering::SeqCst),
        tally.answered.load(Ordering::SeqCst),
    );
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0, "failed requests");
    assert_eq!(sent, answered, "every request answered");
    assert!(
        tally.closes.load(Ordering::SeqCst) >= 1,
        "no client was told `Connection: close`"
    );
    assert_eq!(route.close_gracefully(Duration::from_secs(5)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_while_closing_is_answered_with_connection_close() {
    let (svc, backend_handle) = service(backend().await);
    let route = Route::bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        svc,
        Duration::from_secs(30),
        limits(),
    )
    .await
    .expect("bind route");
    let addr = route.addr;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    wait_until(
        "the slow request reaches the instance",
        Duration::from_secs(5),
        || backend_handle.inflight() == 1,
    )
    .await;
    let started = Instant::now();
    let closed = tokio::spawn(route.close_gracefully(Duration::from_secs(10)));
    // Accepting stops at once: nothing else holds the socket, so new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the route still accepts while closing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (head, body) = read_response(&mut slow)
        .await
        .expect("the request in flight was answered");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "ok\n");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), slow.read(&mut rest))
        .await
        .expect("closed after the answer")
        .unwrap_or(0);
    assert_eq!(n, 0, "bytes after the last answer");
    assert_eq!(closed.await.expect("close"), 0, "connections left open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closing took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_gives_up_at_its_timeout_and_says_how_many_were_open() {
    let (svc, backend_handle) = service(backend().await);
    let route = Route::bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        svc,
        Duration::from_secs(30),
        limits(),
    )
    .await
    .expect("bind route");
    let mut hung = TcpStream::connect(route.addr).await.expect("connect");
    hung.write_all(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    // And an idle keep-alive connection, closed without waiting for the timeout.
    let mut idle = TcpStream::connect(route.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send");
    read_response(&mut idle).await.expect("answer");
    wait_until(
        "the hanging request reaches the instance",
        Duration::from_secs(5),
        || backend_handle.inflight() == 1,
    )
    .await;
    let started = Instant::now();
    assert_eq!(route.close_gracefully(Duration::from_millis(1500)).await, 1);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    for (what, s) in [("hung", &mut hung), ("idle", &mut idle)] {
        let mut b = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .unwrap_or_else(|_| panic!("the {what} connection is still open"));
        assert!(matches!(r, Ok(0) | Err(_)), "{what}: {r:?}");
    }
}

#[test]
fn from_listeners_refuses_what_is_not_a_listening_tcp_socket() {
    let svc = Service::new("web");
    let attempt = |fd: OwnedFd| {
        Route::from_listeners(vec![fd], svc.clone(), UPSTREAM_TIMEOUT, limits())
            .err()
            .expect("must be refused")
            .to_string()
    };
    // A TCP socket that never listened (connected to a listener).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stream =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let err = attempt(OwnedFd::from(stream));
    assert!(
        err.contains("descriptor 0") && err.contains("not listening"),
        "{err}"
    );
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let err = attempt(OwnedFd::from(udp));
    assert!(
        err.contains("IPv4 datagram (UDP)") && err.contains("not a TCP socket"),
        "{err}"
    );
    let file = std::fs::File::open("/dev/null").expect("open");
    let err = attempt(OwnedFd::from(file));
    assert!(err.contains("is not a socket"), "{err}");
    let dir = std::env::temp_dir().join(format!("recast-proxy-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let unix = std::os::unix::net::UnixListener::bind(&dir).expect("unix listener");
    let err = attempt(OwnedFd::from(unix));
    let _ = std::fs::remove_file(&dir);
    assert!(
        err.contains("Unix stream socket, not a TCP socket"),
        "{err}"
    );
    // One good socket and one bad: the bad one is named.
    let good = OwnedFd::from(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let bad = OwnedFd::from(std::net::UdpSocket::bind("127.0.0.1:0").expect("udp"));
    let err = Route::from_listeners(vec![good, bad], svc.clone(), UPSTREAM_TIMEOUT, limits())
        .err()
        .expect("must be refused")
        .to_string();
    assert!(err.contains("descriptor 1"), "{err}");
    let err = Route::from_listeners(Vec::new(), svc, UPSTREAM_TIMEOUT, limits())
        .err()
        .expect("must be refused")
        .to_string();
    assert!(err.contains("no listening socket"), "{err}");
}
