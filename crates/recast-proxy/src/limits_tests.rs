//! The proxy's timeouts and limits over real loopback sockets: slow clients, idle keep-alive
//! connections, hanging instances, the connection cap, hop-by-hop headers, and accepting while
//! the process is out of descriptors.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend on loopback. `GET /hang` is never answered; `GET /slow` is answered after 1.5 s;
/// anything else is answered with the request's head (lowercased) as the body, and with
/// hop-by-hop headers that must not reach the client.
async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("backend addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if text.starts_with("get /hang") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    if text.starts_with("get /slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: keep-alive, x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\nproxy-connection: keep-alive\r\ntrailer: x-t\r\nupgrade: h2c\r\nx-end: kept\r\n\r\n{text}",
                        text.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn limits(header_ms: u64, idle_ms: u64, max_connections: usize) -> conn::Limits {
    conn::Limits {
        what: "route test".into(),
        header_read: Duration::from_millis(header_ms),
        idle: Duration::from_millis(idle_ms),
        max_connections,
        budgeted: true,
        allow: None,
    }
}

async fn route(limits: conn::Limits, timeout: Duration) -> (Route, Arc<Service>) {
    let svc = Service::new("web");
    let target = backend().await;
    let connector: Connector = Arc::new(move || std::net::TcpStream::connect(target));
    svc.set_table(Table {
        groups: vec![Group {
            release: 1,
            weight: 1,
            backends: vec![Backend::new("b1".into(), 1, connector, svc.metrics(1))],
        }],
    });
    let route = Route::bind_with(
        "127.0.0.1:0".parse().expect("addr"),
        svc.clone(),
        timeout,
        limits,
    )
    .await
    .expect("bind route");
    (route, svc)
}

/// Read one response (head, body) from a keep-alive connection; None when it was closed.
async fn read_response(s: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((head, String::from_utf8_lossy(&body).to_string()))
}

async fn request(s: &mut TcpStream, path: &str) -> Option<(String, String)> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    read_response(s).await
}

/// Whether the peer closes `s` within `within` (bytes it sends meanwhile are discarded).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_slow_client_is_cut_off_while_others_are_served() {
    let (route, _svc) = route(limits(500, 10_000, 100), Duration::from_secs(5)).await;
    let addr = route.addr;
    // Slowloris: a header line every 100 ms, never the end of the head.
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect slow client");
        let started = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("send");
        let (mut r, mut w) = s.into_split();
        let closed = tokio::spawn(async move {
            let mut b = [0u8; 64];
            loop {
                match r.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
        while !closed.is_finished() && started.elapsed() < Duration::from_secs(5) {
            if w.write_all(b"x-slow: 1\r\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
        started.elapsed()
    });
    // Meanwhile, normal clients are served.
    for i in 0..10 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let (head, _) = request(&mut s, "/")
            .await
            .expect("a normal client is served");
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = slow.await.expect("slow client");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "the slow client was cut off after {took:?}, expected about 500ms"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_but_a_slow_answer_is_not_cut() {
    let (route, _svc) = route(limits(300, 600, 100), Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(route.addr).await.expect("connect");
    let (head, _) = request(&mut s, "/").await.expect("first request");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Idle for longer than the header timeout but less than the idle one: still open.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (head, _) = request(&mut s, "/")
        .await
        .expect("an idle connection within the idle timeout still serves");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(3)).await,
        "an idle keep-alive connection was never closed"
    );
    assert!(
        idle_from.elapsed() >= Duration::from_millis(500),
        "closed after {:?} idle, before the idle timeout",
        idle_from.elapsed()
    );
    // An answer that takes longer than both timeouts is delivered: a request in flight is
    // never cut.
    let mut s = TcpStream::connect(route.addr).await.expect("connect");
    let (head, _) = request(&mut s, "/slow")
        .await
        .expect("a slow answer reaches the client");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn a_hanging_instance_gets_a_504_after_the_route_timeout() {
    let (route, svc) = route(limits(5_000, 10_000, 100), Duration::from_millis(400)).await;
    let mut s = TcpStream::connect(route.addr).await.expect("connect");
    let started = Instant::now();
    let (head, body) = request(&mut s, "/hang").await.expect("an answer");
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}{body}");
    assert!(
        body.contains("did not answer within the route's timeout of 400ms"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    let m = svc.metrics(1).snapshot();
    assert_eq!(
        (m.requests, m.errors_5xx),
        (1, 1),
        "the timeout is counted as a failed request: {m:?}"
    );
    // The client connection stays usable, and the timeout can be changed while serving.
    route.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let (head, _) = request(&mut s, "/hang").await.expect("a second answer");
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(started.elapsed() < Duration::from_millis(350));
    let (head, _) = request(&mut s, "/").await.expect("a normal answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_a_503_that_says_so() {
    let (route, _svc) = route(limits(5_000, 10_000, 3), Duration::from_secs(5)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(route.addr).await.expect("connect");
        let (head, _) = request(&mut s, "/").await.expect("served");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        open.push(s);
    }
    assert_eq!(route.connections(), 3);
    let mut extra = TcpStream::connect(route.addr).await.expect("connect");
    let (head, body) = request(&mut extra, "/").await.expect("a refusal");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        body.contains("route test is at its limit of 3 open connections"),
        "{body}"
    );
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the refused connection stays open"
    );
    // A place frees up when a client leaves.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(route.addr).await.expect("connect");
        let (head, _) = request(&mut s, "/").await.expect("an answer");
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed: {head}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `allow_from`: a client from a network the route does not allow is reset at once, before it
/// can send anything; one from an allowed network is served.
#[tokio::test]
async fn only_allowed_networks_may_connect() {
    let net = |a: &str, prefix| conn::Network {
        addr: a.parse().expect("ip"),
        prefix,
    };
    assert!(net("10.89.3.0", 24).contains("10.89.3.77".parse().expect("ip")));
    assert!(!net("10.89.3.0", 24).contains("10.89.4.1".parse().expect("ip")));
    assert!(!net("10.89.3.0", 24).contains("::1".parse().expect("ip")));
    assert!(net("0.0.0.0", 0).contains("192.0.2.1".parse().expect("ip")));
    for (allow, served) in [(net("10.89.3.0", 24), false), (net("127.0.0.0", 8), true)] {
        let mut l = limits(5_000, 5_000, 100);
        l.allow = Some(vec![allow].into());
        let (route, _svc) = route(l, Duration::from_secs(5)).await;
        let mut s = TcpStream::connect(route.addr).await.expect("connect");
        let answer = request(&mut s, "/").await;
        assert_eq!(answer.is_some(), served, "allow {allow:?}: {answer:?}");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let (route, _svc) = route(limits(5_000, 10_000, 100), Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(route.addr).await.expect("connect");
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: x\r\nproxy-authorization: Basic c2VjcmV0\r\nconnection: x-client-hop\r\nx-client-hop: 1\r\nx-kept: yes\r\n\r\n",
    )
    .await
    .expect("send");
    let (head, upstream_saw) = read_response(&mut s).await.expect("answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !upstream_saw.contains("proxy-authorization"),
        "{upstream_saw}"
    );
    assert!(!upstream_saw.contains("x-client-hop"), "{upstream_saw}");
    assert!(upstream_saw.contains("x-kept: yes"), "{upstream_saw}");
    let lower = head.to_ascii_lowercase();
    for h in [
        "x-hop:",
        "keep-alive:",
        "proxy-connection:",
        "trailer:",
        "upgrade:",
    ] {
        assert!(!lower.contains(h), "{h} reached the client:\n{head}");
    }
    assert!(lower.contains("x-end: kept"), "{head}");
    // The instance's `connection: keep-alive, x-hop` is not passed on either; the client's
    // connection stays open for the next request.
    let (head, _) = request(&mut s, "/").await.expect("keep-alive");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Runs in a child process of the test binary (the open-file limit is per process).
const CHILD: &str = "RECAST_PROXY_TEST_FD_CHILD";

fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn accepting_backs_off_when_out_of_descriptors() {
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "limits_tests::accepting_backs_off_when_out_of_descriptors",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .expect("run the child test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child test failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (route, _svc) = route(limits(5_000, 10_000, 100), Duration::from_secs(5)).await;
        // Clients connect (the kernel completes the handshake) and send a request.
        let mut clients = Vec::new();
        for _ in 0..5 {
            let mut s = TcpStream::connect(route.addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("send");
            clients.push(s);
        }
        // Wait until they were served once, then send the next request on each after the
        // process has no descriptor left for anything new.
        for s in &mut clients {
            let (head, _) = read_response(s).await.expect("served");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        // The waiting clients' sockets exist before the process runs out.
        let sockets: Vec<tokio::net::TcpSocket> = (0..3)
            .map(|_| tokio::net::TcpSocket::new_v4().expect("socket"))
            .collect();
        let saved = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let mut filler = Vec::new();
        let used = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
        let tight = rustix::process::Rlimit {
            current: Some(used + 8),
            maximum: saved.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, tight).expect("setrlimit");
        while let Ok(f) = std::fs::File::open("/dev/null") {
            filler.push(f);
        }
        // New clients cannot be accepted now; they wait in the kernel's queue.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(8);
        for socket in sockets {
            let tx = done_tx.clone();
            let addr = route.addr;
            tokio::spawn(async move {
                let mut s = socket.connect(addr).await.expect("connect waiting client");
                let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let r = read_response(&mut s).await;
                let _ = tx.send(r.map(|(h, _)| h)).await;
            });
        }
        let cpu_before = cpu_time();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu = cpu_time() - cpu_before;
        assert!(
            cpu < Duration::from_millis(500),
            "the process used {cpu:?} of CPU in 2s while it could not accept: it spins"
        );
        assert!(
            done_rx.try_recv().is_err(),
            "a client was served without a descriptor"
        );
        // Descriptors free again: the waiting clients are served.
        drop(filler);
        rustix::process::setrlimit(rustix::process::Resource::Nofile, saved).expect("restore");
        for _ in 0..3 {
            let head = tokio::time::timeout(Duration::from_secs(5), done_rx.recv())
                .await
                .expect("a waiting client is served once descriptors are free")
                .flatten()
                .expect("an answer");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    });
}
