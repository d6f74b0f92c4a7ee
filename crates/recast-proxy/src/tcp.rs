//! TCP routes: a layer-4 proxy. Each client connection goes to one backend of the service's
//! current table (the same weighted pick as HTTP requests), connected through its `Connector`
//! (another backend when that fails), and the bytes are copied both ways until both sides are
//! done. The connection counts as in flight on its backend for its whole life, so
//! `Backend::drain` waits for it (up to the drain timeout) before the instance stops; a backend
//! that left the table gets no new connection. Per release, a connection counts as a request
//! (its latency: the time to connect upstream) and a failed connect as a failed connection.
//!
//! Client connections are under the route limits of `conn` (most open per route, the process
//! budget, accept backoff); the HTTP timeouts (headers, idle) do not apply: a database client may
//! sit idle for hours. A connection over the route's limit is closed at once (no HTTP answer:
//! the client speaks another protocol).

use crate::{InUse, Service, conn, handed_listeners, route_listeners};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes buffered per direction of a connection: four times tokio's default, fewer system
/// calls on bulk transfers, and 32 KiB per connection at most.
const BUFFER: usize = 16 << 10;

/// Most backends tried for one connection.
const ATTEMPTS: usize = 3;

/// A TCP route's listeners and the threads serving them; serving stops when it is dropped (the
/// connections open are cut), or gracefully with `close_gracefully`.
pub struct TcpRoute {
    pub addr: SocketAddr,
    /// Stop accepting; open connections go on.
    closing: watch::Sender<bool>,
    /// End the route's threads now (their connections with them).
    stop: watch::Sender<bool>,
    /// Duplicates of the listening sockets, to hand to another process (`listeners`).
    sockets: Vec<OwnedFd>,
    gate: conn::Gate,
}

impl TcpRoute {
    /// Listen on `addr` and pass connections to `service`: one listener (`SO_REUSEPORT`) and
    /// thread per core, as `Route::bind_with`. Must be called inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        service: Arc<Service>,
        limits: conn::Limits,
    ) -> io::Result<TcpRoute> {
        let (listeners, addr) = route_listeners(addr)?;
        TcpRoute::serve(listeners, addr, service, limits)
    }

    /// Serve on listening sockets received from another process (or another route's
    /// `listeners`), as `Route::from_listeners`.
    pub fn from_listeners(
        fds: Vec<OwnedFd>,
        service: Arc<Service>,
        limits: conn::Limits,
    ) -> io::Result<TcpRoute> {
        let (listeners, addr) = handed_listeners(fds, "tcp route")?;
        TcpRoute::serve(listeners, addr, service, limits)
    }

    fn serve(
        listeners: Vec<std::net::TcpListener>,
        addr: SocketAddr,
        service: Arc<Service>,
        limits: conn::Limits,
    ) -> io::Result<TcpRoute> {
        let (closing, closing_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let mut route = TcpRoute {
            addr,
            closing,
            stop,
            sockets: Vec::with_capacity(listeners.len()),
            gate: conn::Gate::default(),
        };
        let limits = Arc::new(limits);
        // On an error, dropping `route` stops the threads already started.
        for (slot, listener) in listeners.into_iter().enumerate() {
            route.sockets.push(OwnedFd::from(listener.try_clone()?));
            let serving = Serving {
                service: service.clone(),
                limits: limits.clone(),
                gate: route.gate.clone(),
                closing: closing_rx.clone(),
                stop: stop_rx.clone(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("tcp-{addr}-{slot}"))
                .spawn(move || rt.block_on(accept_loop(listener, addr, serving)))?;
        }
        Ok(route)
    }

    /// Duplicates of the listening sockets, for another process (`from_listeners`).
    pub fn listeners(&self) -> io::Result<Vec<OwnedFd>> {
        self.sockets.iter().map(OwnedFd::try_clone).collect()
    }

    /// Stop accepting at once (another process holding the same sockets gets the new
    /// connections) and resolve when every open connection has ended or at `timeout`, with how
    /// many were still open then (they are cut).
    pub fn close_gracefully(mut self, timeout: Duration) -> impl Future<Output = usize> + use<> {
        let _ = self.closing.send(true);
        self.sockets.clear();
        async move {
            let _ = tokio::time::timeout(timeout, self.gate.all_closed()).await;
            let open = self.gate.open();
            drop(self);
            open
        }
    }

    /// Client connections open on this route now.
    pub fn connections(&self) -> usize {
        self.gate.open()
    }
}

impl Drop for TcpRoute {
    fn drop(&mut self) {
        let _ = self.closing.send(true);
        let _ = self.stop.send(true);
    }
}

/// What the threads of one route share.
struct Serving {
    service: Arc<Service>,
    limits: Arc<conn::Limits>,
    gate: conn::Gate,
    closing: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

/// One route thread: accept until the route closes or stops, then keep the open connections
/// until it stops.
async fn accept_loop(listener: std::net::TcpListener, addr: SocketAddr, s: Serving) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let (mut closing, mut stop) = (s.closing.clone(), s.stop.clone());
    let mut acceptor = conn::Acceptor::new(listener, format!("{} on {addr}", s.limits.what))
        .allowing(s.limits.allow.clone());
    loop {
        let (stream, _) = tokio::select! {
            a = acceptor.accept() => a,
            _ = closing.wait_for(|c| *c) => break,
            _ = stop.changed() => return,
        };
        // Over the route's limit or the process budget the client is closed at once (the
        // HTTP routes' 503 would be noise in another protocol).
        let Ok(permit) = s.gate.enter(&s.limits) else {
            drop(stream);
            continue;
        };
        let svc = s.service.clone();
        tokio::spawn(async move {
            let _permit = permit;
            pass(&svc, stream).await;
        });
    }
    drop(acceptor);
    let _ = stop.wait_for(|s| *s).await;
}

/// Keep a socket's connection checked by the kernel while it is quiet (a peer that vanished is
/// found after the system's keepalive time).
fn keepalive(s: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_keepalive(s, true);
    let _ = s.set_nodelay(true);
}

/// Connect to a backend through its connector (blocking: it may enter a network namespace).
async fn connect(backend: &crate::Backend) -> io::Result<TcpStream> {
    let connector = backend.connector.clone();
    let std_stream = tokio::task::spawn_blocking(move || connector())
        .await
        .map_err(|_| io::Error::other("the connect task failed"))??;
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

/// Pass one client connection to a backend of `svc` (another one, up to `ATTEMPTS`, when a
/// connect fails) and copy both ways until both sides are done. With no backend to reach, the
/// client is closed.
pub(crate) async fn pass(svc: &Service, mut client: TcpStream) {
    keepalive(&client);
    let mut table = svc.table();
    let mut tried: Option<String> = None;
    for _ in 0..ATTEMPTS {
        let started = Instant::now();
        let Some(backend) = svc.pick(&table, tried.as_deref(), None) else {
            return;
        };
        // In flight from before the connect until the connection ends (see `Backend::drain`).
        backend.inflight.fetch_add(1, Ordering::SeqCst);
        let in_use = InUse {
            backend: backend.clone(),
            sender: None,
        };
        if backend.retired.load(Ordering::SeqCst) {
            // It left the table while we picked it: pick again from the table as it is now.
            drop(in_use);
            table = svc.table();
            continue;
        }
        match connect(&backend).await {
            Ok(mut upstream) => {
                keepalive(&upstream);
                backend.metrics.record(200, started.elapsed());
                let pipes = conn::room_for_pipes()
                    .then(crate::splice::Pipes::new)
                    .and_then(Result::ok);
                match pipes {
                    Some(pipes) => {
                        let _ = pipes.both_ways(&client, &upstream).await;
                    }
                    // Without descriptors for the pipes, the bytes are copied through buffers.
                    None => {
                        let _ = tokio::io::copy_bidirectional_with_sizes(
                            &mut client,
                            &mut upstream,
                            BUFFER,
                            BUFFER,
                        )
                        .await;
                    }
                }
                drop(in_use);
                return;
            }
            Err(_) => {
                backend.metrics.connect_failed();
                tried = Some(backend.id.clone());
                table = svc.table();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Connector, Group, Table};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on loopback that first says its name (a line).
    async fn echo(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn backend(svc: &Service, id: &str, release: i64, addr: SocketAddr) -> Arc<Backend> {
        let connector: Connector = Arc::new(move || std::net::TcpStream::connect(addr));
        Backend::new(id.into(), release, connector, svc.metrics(release))
    }

    fn group(release: i64, weight: u32, backends: Vec<Arc<Backend>>) -> Group {
        Group {
            release,
            weight,
            backends,
        }
    }

    async fn bind(svc: &Arc<Service>) -> TcpRoute {
        let limits = conn::Limits::route("tcp route test");
        TcpRoute::bind("127.0.0.1:0".parse().expect("addr"), svc.clone(), limits)
            .await
            .expect("bind")
    }

    /// Connect through the route, read the backend's name, check an echo; the open stream.
    async fn open(addr: SocketAddr) -> (String, TcpStream) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut name = Vec::new();
        let mut b = [0u8; 1];
        while !name.ends_with(b"\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .expect("the backend's name in 5 s")
                .expect("read");
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&name));
            name.push(b[0]);
        }
        s.write_all(b"ping").await.expect("write");
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping");
        (String::from_utf8_lossy(&name).trim().to_string(), s)
    }

    #[tokio::test]
    async fn connections_split_by_weight_and_count_as_requests() {
        let svc = Service::new("db");
        let (a, b) = (echo("a").await, echo("b").await);
        svc.set_table(Table {
            groups: vec![
                group(1, 1, vec![backend(&svc, "a", 1, a)]),
                group(2, 3, vec![backend(&svc, "b", 2, b)]),
            ],
        });
        let route = bind(&svc).await;
        let mut got = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..200 {
            let (name, _) = open(route.addr).await;
            *got.entry(name).or_default() += 1;
        }
        assert_eq!(got.get("a"), Some(&50), "{got:?}");
        assert_eq!(got.get("b"), Some(&150), "{got:?}");
        assert_eq!(svc.metrics(1).snapshot().requests, 50);
        assert_eq!(svc.metrics(2).snapshot().requests, 150);
    }

    #[tokio::test]
    async fn a_drain_waits_for_an_open_connection_and_new_ones_go_elsewhere() {
        let svc = Service::new("db");
        let old = backend(&svc, "old", 1, echo("old").await);
        svc.set_table(Table {
            groups: vec![group(1, 1, vec![old.clone()])],
        });
        let route = bind(&svc).await;
        let (name, mut held) = open(route.addr).await;
        assert_eq!(name, "old");
        assert_eq!(old.inflight(), 1, "an open connection is in flight");
        // The old backend leaves the table; a new release takes the new connections.
        svc.set_table(Table {
            groups: vec![group(
                2,
                1,
                vec![backend(&svc, "new", 2, echo("new").await)],
            )],
        });
        let drain = {
            let old = old.clone();
            tokio::spawn(async move { old.drain(Duration::from_secs(20)).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !drain.is_finished(),
            "the drain returned with a connection open"
        );
        let (name, _) = open(route.addr).await;
        assert_eq!(name, "new", "a new connection went to the retired backend");
        // The held connection still works while draining, then the client closes it.
        held.write_all(b"more").await.expect("write");
        let mut echo = [0u8; 4];
        held.read_exact(&mut echo)
            .await
            .expect("echo while draining");
        drop(held);
        let drained = tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("the drain ends within 5 s of the connection closing")
            .expect("join");
        assert!(drained, "the drain says it drained");
        // And a drain gives up at its timeout while a connection stays open.
        let new = svc.table().groups[0].backends[0].clone();
        let (name, _held) = open(route.addr).await;
        assert_eq!(name, "new");
        svc.set_table(Table::default());
        let started = Instant::now();
        assert!(!new.drain(Duration::from_millis(300)).await, "drained");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(new.inflight(), 1);
    }

    #[tokio::test]
    async fn a_failed_connect_goes_to_another_backend() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let svc = Service::new("db");
        svc.set_table(Table {
            groups: vec![
                group(1, 1, vec![backend(&svc, "dead", 1, dead)]),
                group(2, 1, vec![backend(&svc, "alive", 2, echo("alive").await)]),
            ],
        });
        let route = bind(&svc).await;
        for _ in 0..20 {
            let (name, _) = open(route.addr).await;
            assert_eq!(name, "alive");
        }
        assert!(
            svc.metrics(1).snapshot().connect_failures > 0,
            "the dead backend was never tried"
        );
        assert_eq!(svc.metrics(1).snapshot().requests, 0);
        assert_eq!(svc.metrics(2).snapshot().requests, 20);
    }

    #[tokio::test]
    async fn closing_gracefully_waits_for_open_connections_and_refuses_new_ones() {
        let svc = Service::new("db");
        svc.set_table(Table {
            groups: vec![group(1, 1, vec![backend(&svc, "a", 1, echo("a").await)])],
        });
        let route = bind(&svc).await;
        let addr = route.addr;
        let (_, mut held) = open(addr).await;
        assert_eq!(route.connections(), 1);
        let closing = tokio::spawn(route.close_gracefully(Duration::from_secs(20)));
        // New connections are refused once the listeners are closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting while closing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.write_all(b"late").await.expect("write");
        let mut echo = [0u8; 4];
        held.read_exact(&mut echo)
            .await
            .expect("echo while closing");
        assert!(!closing.is_finished(), "closed with a connection open");
        drop(held);
        let open = tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("closed within 5 s of the last connection")
            .expect("join");
        assert_eq!(open, 0);
    }

    /// A newer route takes the listening sockets over: connections keep being accepted (by the
    /// new one), an open connection on the old one lives until it closes, none is refused.
    #[tokio::test]
    async fn a_handed_over_route_keeps_accepting_and_the_old_one_finishes_its_connections() {
        let svc = Service::new("db");
        svc.set_table(Table {
            groups: vec![group(1, 1, vec![backend(&svc, "a", 1, echo("a").await)])],
        });
        let old = bind(&svc).await;
        let addr = old.addr;
        let (_, mut held) = open(addr).await;
        let limits = conn::Limits::route("tcp route test (new)");
        let new =
            TcpRoute::from_listeners(old.listeners().expect("listeners"), svc.clone(), limits)
                .expect("served from the handed-over sockets");
        assert_eq!(new.addr, addr);
        let closing = tokio::spawn(old.close_gracefully(Duration::from_secs(20)));
        // Every new connection is served: by the new route once the old stopped accepting.
        for _ in 0..20 {
            let (name, _) = open(addr).await;
            assert_eq!(name, "a");
        }
        held.write_all(b"more").await.expect("write");
        let mut echo = [0u8; 4];
        held.read_exact(&mut echo)
            .await
            .expect("the old connection still works");
        assert_eq!(&echo, b"more");
        drop(held);
        let open_left = tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("the old route closed once its connection ended")
            .expect("join");
        assert_eq!(open_left, 0);
        let (name, _) = open(addr).await;
        assert_eq!(name, "a", "the new route serves after the old one is gone");
    }
}
