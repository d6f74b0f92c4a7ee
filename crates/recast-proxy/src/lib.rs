//! recast's HTTP proxy: the only code that touches client connections.
//!
//! A route listens on its address and forwards HTTP/1.1 (keep-alive, streaming bodies, upgrades)
//! to the instances in its service's routing table. The table is a list of groups (one per
//! release) with weights; swapping it is atomic, and a request keeps the table (and backend) it
//! started with, so removing an instance never breaks a request in flight: the engine waits for
//! the instance's in-flight count to reach zero (`Backend::drain`) before stopping it. A request
//! without a body whose connection fails before anything was sent is retried on another instance.
//! Per release it counts requests, 5xx, failed connections and a latency histogram.

pub mod conn;
pub mod fds;
#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod limits_tests;
mod metrics;
mod splice;
pub mod tcp;

pub use metrics::{BUCKETS, Metrics, Snapshot, bucket_bound_us};
pub use tcp::TcpRoute;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// What a route answers a client with: the instance's body (tracked until it ends), an
/// upgrade's empty body, or recast's own short error text. An enum rather than a boxed body: no
/// allocation or dynamic call per request.
enum ProxyBody {
    Relayed(Tracked),
    Upgrade(Incoming),
    Error(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Relayed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Upgrade(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Error(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Err(never))) => match never {},
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Relayed(b) => b.is_end_stream(),
            ProxyBody::Upgrade(b) => b.is_end_stream(),
            ProxyBody::Error(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Relayed(b) => b.size_hint(),
            ProxyBody::Upgrade(b) => b.size_hint(),
            ProxyBody::Error(b) => b.size_hint(),
        }
    }
}

/// Upstream connections send the client's request body as it came (no boxing).
type Upstream = SendRequest<UpBody>;

/// What goes upstream as a request's body: the client's, or nothing (a request without a body,
/// which can then be sent again when an instance closes a kept-alive connection unanswered).
enum UpBody {
    Client(Incoming),
    Empty,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Client(b) => Pin::new(b).poll_frame(cx),
            UpBody::Empty => Poll::Ready(None),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Client(b) => b.is_end_stream(),
            UpBody::Empty => true,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Client(b) => b.size_hint(),
            UpBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Most route threads (and upstream pools per backend).
const POOL_SLOTS: usize = 8;

thread_local! {
    /// Which pool this thread uses (set by route threads; 0 elsewhere).
    static POOL_SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Which route thread this is (0 elsewhere). An upstream connection is driven by the event
    /// loop of the thread that made it, which ends with its route: only that thread reuses it,
    /// not another route's thread on the same slot (a handoff within this process).
    static POOL_OWNER: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

static NEXT_POOL_OWNER: AtomicU64 = AtomicU64::new(1);

fn pool_slot() -> usize {
    POOL_SLOT.with(std::cell::Cell::get) % POOL_SLOTS
}

/// Opens a connection to an instance (blocking: it may enter a network namespace).
pub type Connector = Arc<dyn Fn() -> io::Result<std::net::TcpStream> + Send + Sync>;

/// An idle upstream connection and the route thread that made it (`POOL_OWNER`).
type Pooled = (u64, Upstream);

/// The most recently pooled connection this thread made; closed connections of other threads
/// met on the way are dropped.
fn take_own(idle: &mut Vec<Pooled>) -> Option<Upstream> {
    let owner = POOL_OWNER.with(std::cell::Cell::get);
    for i in (0..idle.len()).rev() {
        if idle[i].0 == owner {
            return Some(idle.remove(i).1);
        }
        if idle[i].1.is_closed() {
            idle.remove(i);
        }
    }
    None
}

/// One instance as the proxy sees it.
pub struct Backend {
    pub id: String,
    pub release: i64,
    connector: Connector,
    /// Idle upstream connections, one pool per route thread: a connection is only ever used by
    /// the thread (event loop) that made it.
    idle: [Mutex<Vec<Pooled>>; POOL_SLOTS],
    inflight: AtomicUsize,
    /// Set when draining starts: a request that registers after it must go elsewhere.
    retired: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

impl Backend {
    pub fn new(
        id: String,
        release: i64,
        connector: Connector,
        metrics: Arc<Metrics>,
    ) -> Arc<Backend> {
        Arc::new(Backend {
            id,
            release,
            connector,
            idle: Default::default(),
            inflight: AtomicUsize::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Wait until no request uses this backend (it must already be out of every table), up to
    /// `timeout`; then close its idle connections. Returns whether it drained.
    pub async fn drain(&self, timeout: Duration) -> bool {
        // Paired with `forward`: it registers (inflight) then checks `retired`; we set `retired`
        // then check inflight. With sequential consistency one of us sees the other, so no
        // request slips in after the count was seen at zero.
        self.retired.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.inflight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for pool in &self.idle {
            pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.inflight() == 0
    }

    /// A pooled connection of this thread that can take a request right now (no waiting, so no
    /// timer); one that is not ready yet stays pooled for `sender`.
    fn ready_now(&self) -> Option<Upstream> {
        let mut idle = self.idle[pool_slot()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let s = take_own(&mut idle)?;
        if s.is_ready() {
            return Some(s);
        }
        if !s.is_closed() {
            idle.push((POOL_OWNER.with(std::cell::Cell::get), s));
        }
        None
    }

    async fn sender(self: &Arc<Self>) -> io::Result<Upstream> {
        loop {
            let pooled = take_own(
                &mut self.idle[pool_slot()]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            let Some(mut s) = pooled else { break };
            if s.is_closed() {
                continue;
            }
            if s.ready().await.is_ok() {
                return Ok(s);
            }
        }
        let connector = self.connector.clone();
        let std_stream = tokio::task::spawn_blocking(move || connector())
            .await
            .map_err(|_| io::Error::other("the connect task failed"))??;
        std_stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(std_stream)?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn put_back(&self, s: Upstream) {
        if s.is_closed() {
            return;
        }
        let mut idle = self.idle[pool_slot()]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() >= 512 {
            idle.retain(|(_, s)| !s.is_closed());
        }
        if idle.len() < 512 {
            idle.push((POOL_OWNER.with(std::cell::Cell::get), s));
        }
    }
}

/// The backends of one release and the share of requests it gets.
#[derive(Clone)]
pub struct Group {
    pub release: i64,
    /// Relative weight (a percentage when the weights of a table add up to 100).
    pub weight: u32,
    pub backends: Vec<Arc<Backend>>,
}

/// A value alone on its cache line(s) (128 bytes: adjacent-line prefetch pairs them on x86).
#[derive(Default)]
#[repr(align(128))]
struct Slot<T>(T);

/// A service's routing table: immutable; replaced as a whole.
#[derive(Clone, Default)]
pub struct Table {
    pub groups: Vec<Group>,
}

/// What a route forwards to: a service's current table and its metrics per release.
pub struct Service {
    pub name: String,
    /// The table, one copy per route thread (`pool_slot`), each on its own cache line with its
    /// own `Arc`: reading it per request writes nothing another thread reads (no cache line
    /// moves between cores), where one shared lock and count would be written by every thread.
    table: [Slot<RwLock<Arc<Table>>>; POOL_SLOTS],
    next: AtomicU64,
    metrics: Mutex<HashMap<i64, Arc<Metrics>>>,
    /// Keep each client on one release (cookie `recast-release`).
    sticky: std::sync::atomic::AtomicBool,
    /// Why no instance serves, when that is on purpose (a recreate rollout): said in the 503.
    unavailable: RwLock<Option<String>>,
}

/// The weighted slot of the `n`th request in a cycle of `total`: `n mod total` times a stride
/// coprime with `total` is a permutation of the cycle, so every `total` consecutive requests hit
/// every slot exactly once (each group exactly its weight), interleaved rather than in runs.
fn scatter(n: u64, total: u64) -> u64 {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let stride = (37..).find(|k| gcd(*k, total) == 1).unwrap_or(1);
    (n % total) * (stride % total) % total
}

impl Service {
    pub fn new(name: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.to_string(),
            table: Default::default(),
            next: AtomicU64::new(0),
            metrics: Mutex::new(HashMap::new()),
            sticky: std::sync::atomic::AtomicBool::new(false),
            unavailable: RwLock::new(None),
        })
    }

    /// Say why the service has no instance for a while (`None`: it should have one).
    pub fn set_unavailable(&self, why: Option<String>) {
        *self.unavailable.write().unwrap_or_else(|p| p.into_inner()) = why;
    }

    pub fn table(&self) -> Arc<Table> {
        self.table[pool_slot()]
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Switch to a new table atomically; requests in flight keep the old one.
    pub fn set_table(&self, t: Table) {
        for slot in &self.table {
            *slot.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t.clone());
        }
    }

    /// Keep each client on the release it first got (a `recast-release` cookie).
    pub fn set_sticky(&self, on: bool) {
        self.sticky.store(on, Ordering::Relaxed);
    }

    /// The releases that have metrics.
    pub fn releases(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// The metrics of a release (created on first use).
    pub fn metrics(&self, release: i64) -> Arc<Metrics> {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(release)
            .or_default()
            .clone()
    }

    /// Pick a backend: the group by weight (exact proportions over every 100 requests, spread
    /// evenly), then round-robin inside it; `avoid` is skipped when there is another choice.
    fn pick(
        &self,
        table: &Table,
        avoid: Option<&str>,
        prefer: Option<i64>,
    ) -> Option<Arc<Backend>> {
        let usable = |g: &&Group| !g.backends.is_empty() && g.weight > 0;
        if let Some(g) =
            prefer.and_then(|r| table.groups.iter().filter(usable).find(|g| g.release == r))
        {
            let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
            return Some(g.backends[n % g.backends.len()].clone());
        }
        let total: u64 = table
            .groups
            .iter()
            .filter(usable)
            .map(|g| u64::from(g.weight))
            .sum();
        if total == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = scatter(n, total);
        let mut acc = 0;
        let group = table.groups.iter().filter(usable).find(|g| {
            acc += u64::from(g.weight);
            slot < acc
        })?;
        let len = group.backends.len();
        let start = (n / total.max(1)) as usize + n as usize;
        (0..len)
            .map(|i| &group.backends[(start + i) % len])
            .find(|b| Some(b.id.as_str()) != avoid || len == 1)
            .cloned()
    }
}

/// A route's listeners and the threads serving them; serving stops when it is dropped (the
/// connections open are cut), or gracefully with `close_gracefully`.
pub struct Route {
    pub addr: SocketAddr,
    /// Stop accepting; every connection finishes its current request and closes.
    closing: tokio::sync::watch::Sender<bool>,
    /// End the route's threads now (their connections with them).
    stop: tokio::sync::watch::Sender<bool>,
    /// Duplicates of the listening sockets, to hand to another process (`listeners`).
    sockets: Vec<OwnedFd>,
    gate: conn::Gate,
    /// The upstream timeout in milliseconds (changeable while serving).
    timeout_ms: Arc<AtomicU64>,
}

/// How long an instance may take to answer (to its response headers) unless the route says.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// How many threads serve each route: one per core (`RECAST_PROXY_THREADS` overrides).
fn route_threads() -> usize {
    std::env::var("RECAST_PROXY_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, POOL_SLOTS)
}

/// A route's listening sockets on `addr`: one (`SO_REUSEPORT`) per thread, after an exclusive
/// bind, so another process on the address is an error ("address in use"), never a silent share
/// of its traffic. Returns them and the address bound (a port 0 resolved).
pub(crate) fn route_listeners(
    addr: SocketAddr,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let host_socket = || {
        Ok(rustix::net::socket_with(
            family,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?)
    };
    route_listeners_with(addr, &host_socket)
}

/// A route's listening sockets on `addr` made from the TCP sockets `socket` returns (made in
/// another network namespace, say), as [`route_listeners`] makes them; for `from_listeners`.
pub fn listening_sockets(
    addr: SocketAddr,
    socket: &dyn Fn() -> io::Result<OwnedFd>,
) -> io::Result<Vec<OwnedFd>> {
    let (listeners, _) = route_listeners_with(addr, socket)?;
    Ok(listeners.into_iter().map(OwnedFd::from).collect())
}

fn route_listeners_with(
    addr: SocketAddr,
    socket: &dyn Fn() -> io::Result<OwnedFd>,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let tcp = || {
        let s = std::net::TcpStream::from(socket()?);
        s.set_nonblocking(true)?;
        Ok::<_, io::Error>(tokio::net::TcpSocket::from_std_stream(s))
    };
    let first = tcp()?;
    first.set_reuseaddr(true)?;
    first.bind(addr)?;
    let addr = first.local_addr()?;
    drop(first);
    let listeners = (0..route_threads())
        .map(|_| {
            let s = tcp()?;
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            s.listen(1024)?.into_std()
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((listeners, addr))
}

/// Listening sockets handed over from another process (or another route), checked: each a
/// listening TCP socket, all on one address; an error names the descriptor that is not.
pub(crate) fn handed_listeners(
    fds: Vec<OwnedFd>,
    what: &str,
) -> io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    if fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no listening socket given for the {what}"),
        ));
    }
    let listeners = fds
        .into_iter()
        .enumerate()
        .map(|(n, fd)| listening_tcp(fd, n))
        .collect::<io::Result<Vec<_>>>()?;
    let addr = listeners[0].local_addr()?;
    for (n, l) in listeners.iter().enumerate() {
        let other = l.local_addr()?;
        if other != addr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {n} listens on {other}, descriptor 0 on {addr}"),
            ));
        }
    }
    Ok((listeners, addr))
}

/// `fd` as a listener if it is a listening TCP socket; an error naming what it is otherwise.
fn listening_tcp(fd: OwnedFd, n: usize) -> io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let what = format!("descriptor {n} (fd {})", fd.as_raw_fd());
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let kind =
        sockopt::socket_type(&fd).map_err(|e| invalid(format!("{what} is not a socket: {e}")))?;
    let family = sockopt::socket_domain(&fd)
        .map_err(|e| invalid(format!("{what}: cannot read its address family: {e}")))?;
    if kind != SocketType::STREAM || ![AddressFamily::INET, AddressFamily::INET6].contains(&family)
    {
        let kind = match kind {
            SocketType::STREAM => "stream",
            SocketType::DGRAM => "datagram (UDP)",
            SocketType::SEQPACKET => "seqpacket",
            SocketType::RAW => "raw",
            _ => "other",
        };
        let family = match family {
            AddressFamily::INET => "IPv4",
            AddressFamily::INET6 => "IPv6",
            AddressFamily::UNIX => "Unix",
            _ => "other",
        };
        return Err(invalid(format!(
            "{what} is a {family} {kind} socket, not a TCP socket"
        )));
    }
    let listening = sockopt::socket_acceptconn(&fd)
        .map_err(|e| invalid(format!("{what}: cannot read SO_ACCEPTCONN: {e}")))?;
    if !listening {
        return Err(invalid(format!(
            "{what} is a TCP socket that is not listening (no listen(2))"
        )));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// What the threads of one route share.
struct Serving {
    service: Arc<Service>,
    limits: Arc<conn::Limits>,
    gate: conn::Gate,
    timeout_ms: Arc<AtomicU64>,
    closing: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// One route thread: accept on `listener` until the route closes or stops, then keep serving
/// the connections open until it stops.
async fn serve_listener(listener: std::net::TcpListener, addr: SocketAddr, s: Serving) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let (mut closing, mut stop) = (s.closing.clone(), s.stop.clone());
    let mut acceptor = conn::Acceptor::new(listener, format!("{} on {addr}", s.limits.what))
        .allowing(s.limits.allow.clone());
    loop {
        let (stream, peer) = tokio::select! {
            a = acceptor.accept() => a,
            _ = closing.wait_for(|c| *c) => break,
            _ = stop.changed() => return,
        };
        let Some((stream, permit)) = conn::admit(&s.gate, &s.limits, stream) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (svc, limits) = (s.service.clone(), s.limits.clone());
        let (timeout_ms, closing) = (s.timeout_ms.clone(), s.closing.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // The client's address as `X-Forwarded-For` says it, made once per connection.
            let peer = HeaderValue::from_str(&peer.ip().to_string()).ok();
            let handler = move |req| {
                let t = timeout_ms.load(Ordering::Relaxed);
                forward(svc.clone(), req, peer.clone(), Duration::from_millis(t))
            };
            conn::serve_until(stream, &limits, closing, handler).await;
        });
    }
    // Closing: this process stops accepting at once (the socket itself lives on while another
    // process holds it); the connections finish on this thread's event loop until told to stop.
    drop(acceptor);
    let _ = stop.wait_for(|s| *s).await;
}

impl Route {
    /// Listen on `addr` and forward to `service` with the default limits and upstream timeout.
    pub async fn bind(addr: SocketAddr, service: Arc<Service>) -> io::Result<Route> {
        let limits = conn::Limits::route(format!("route to service {}", service.name));
        Route::bind_with(addr, service, UPSTREAM_TIMEOUT, limits).await
    }

    /// Listen on `addr` and forward to `service`: one listener (`SO_REUSEPORT`) per thread, each
    /// thread with its own event loop and its own upstream connections, as nginx runs workers,
    /// so that no request wakes another thread. An instance that has not answered (response
    /// headers) within `timeout` gets the client a `504`. Must be called inside a tokio runtime.
    pub async fn bind_with(
        addr: SocketAddr,
        service: Arc<Service>,
        timeout: Duration,
        limits: conn::Limits,
    ) -> io::Result<Route> {
        let (listeners, addr) = route_listeners(addr)?;
        Route::serve(listeners, addr, service, timeout, limits)
    }

    /// Serve on listening sockets received from another process (or another `Route`'s
    /// `listeners`): one thread per socket, as `bind_with`. Each must be a listening TCP socket
    /// of the same address; an error names the one that is not.
    pub fn from_listeners(
        fds: Vec<OwnedFd>,
        service: Arc<Service>,
        timeout: Duration,
        limits: conn::Limits,
    ) -> io::Result<Route> {
        let (listeners, addr) = handed_listeners(fds, "route")?;
        Route::serve(listeners, addr, service, timeout, limits)
    }

    /// Start a thread (and event loop) per listener.
    fn serve(
        listeners: Vec<std::net::TcpListener>,
        addr: SocketAddr,
        service: Arc<Service>,
        timeout: Duration,
        limits: conn::Limits,
    ) -> io::Result<Route> {
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut route = Route {
            addr,
            closing,
            stop,
            sockets: Vec::with_capacity(listeners.len()),
            gate: conn::Gate::default(),
            timeout_ms: Arc::new(AtomicU64::new(timeout.as_millis().max(1) as u64)),
        };
        let limits = Arc::new(limits);
        // On an error, dropping `route` stops the threads already started.
        for (slot, listener) in listeners.into_iter().enumerate() {
            route.sockets.push(OwnedFd::from(listener.try_clone()?));
            let serving = Serving {
                service: service.clone(),
                limits: limits.clone(),
                gate: route.gate.clone(),
                timeout_ms: route.timeout_ms.clone(),
                closing: closing_rx.clone(),
                stop: stop_rx.clone(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("route-{addr}-{slot}"))
                .spawn(move || {
                    POOL_SLOT.with(|s| s.set(slot));
                    let owner = NEXT_POOL_OWNER.fetch_add(1, Ordering::Relaxed);
                    POOL_OWNER.with(|o| o.set(owner));
                    rt.block_on(serve_listener(listener, addr, serving));
                })?;
        }
        Ok(route)
    }

    /// Duplicates of the route's listening sockets (one per thread), to hand to another process
    /// (`fds::send_fds`) that serves them with `from_listeners`. The sockets, and the connections
    /// waiting in their accept queues, outlive this route while another process holds them.
    pub fn listeners(&self) -> io::Result<Vec<OwnedFd>> {
        self.sockets.iter().map(OwnedFd::try_clone).collect()
    }

    /// Stop accepting at once (this process closes its listeners; if another process holds the
    /// same sockets, new connections go there), let every open connection finish its current
    /// request and close (see `conn::serve_until`), and resolve when all are closed or at
    /// `timeout`, with how many were still open then (they are cut).
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

    /// Change the upstream timeout of requests that start from now on.
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Client connections open on this route now.
    pub fn connections(&self) -> usize {
        self.gate.open()
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        // Every route thread stops accepting, closes its listener and ends with its connections.
        let _ = self.closing.send(true);
        let _ = self.stop.send(true);
    }
}

/// Keeps a backend counted as in use until the response body is done, then pools the connection.
struct InUse {
    backend: Arc<Backend>,
    sender: Option<Upstream>,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            self.backend.put_back(s);
        }
        self.backend.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An instance's response body; the connection goes back to the pool when it ends.
struct Tracked {
    inner: Incoming,
    in_use: Option<InUse>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            // Finished: the connection can serve the next request.
            self.in_use = None;
        } else if let Poll::Ready(Some(Err(_))) = r
            && let Some(u) = self.in_use.as_mut()
        {
            u.sender = None;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn error_response(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Error(Full::new(Bytes::from(format!(
        "recast: {msg}\n"
    )))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn timed_out(
    backend: &Backend,
    m: &Metrics,
    started: Instant,
    timeout: Duration,
) -> Response<ProxyBody> {
    m.record(StatusCode::GATEWAY_TIMEOUT.as_u16(), started.elapsed());
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "instance {} did not answer within the route's timeout of {timeout:?}",
            backend.id
        ),
    )
}

/// Forward one request to an instance of `svc`, retrying another (up to 3 attempts) when no
/// answer came and the request has no body; errors become 502, 503 or 504.
async fn forward(
    svc: Arc<Service>,
    mut req: Request<Incoming>,
    peer: Option<HeaderValue>,
    timeout: Duration,
) -> Response<ProxyBody> {
    // One clock read for the deadline and the first attempt's latency.
    let mut started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + timeout);
    let mut table = svc.table();
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let retryable = !has_body(&req) && !upgrade;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let sticky = svc.sticky.load(Ordering::Relaxed);
    let pinned = sticky.then(|| pinned_release(&parts.headers)).flatten();
    forward_headers(&mut parts.headers, upgrade, peer);
    parts.version = hyper::Version::HTTP_11;
    let (first, again) = outgoing(parts, body, retryable);
    let mut out = Some(first);
    let mut tried: Option<String> = None;
    for attempt in 0..3 {
        if attempt > 0 {
            started = Instant::now();
        }
        let Some(backend) = svc.pick(&table, tried.as_deref(), pinned) else {
            return no_healthy_instance(&svc);
        };
        backend.inflight.fetch_add(1, Ordering::SeqCst);
        let in_use = InUse {
            backend,
            sender: None,
        };
        let backend = &in_use.backend;
        if backend.retired.load(Ordering::SeqCst) {
            // It left the table while we picked it: pick again from the table as it is now.
            drop(in_use);
            table = svc.table();
            continue;
        }
        let m = &backend.metrics;
        let ready = backend.ready_now();
        let mut sender = match ready {
            Some(s) => s,
            None => match tokio::time::timeout_at(deadline, backend.sender()).await {
                Err(_) => return timed_out(backend, m, started, timeout),
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    m.connect_failed();
                    tried = Some(backend.id.clone());
                    if retryable {
                        table = svc.table();
                        continue;
                    }
                    return error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("cannot reach instance {}: {e}", backend.id),
                    );
                }
            },
        };
        let Some(request) = out.take() else { break };
        let sent = match tokio::time::timeout_at(deadline, sender.try_send_request(request)).await {
            Ok(sent) => sent,
            // The connection is dropped, never pooled: it may still deliver the late answer.
            Err(_) => return timed_out(backend, m, started, timeout),
        };
        match sent {
            Ok(resp) => {
                m.record(resp.status().as_u16(), started.elapsed());
                return relay(resp, in_use, sender, client_upgrade, sticky, pinned);
            }
            Err(mut e) => {
                // Nothing was answered; a request without a body can go elsewhere. A kept-alive
                // connection the instance closed unanswered is not the instance failing.
                out = e.take_message();
                if out.is_none() && e.error().is_incomplete_message() {
                    out = again
                        .as_ref()
                        .map(|p| Request::from_parts(p.clone(), UpBody::Empty));
                } else {
                    m.connect_failed();
                    tried = Some(backend.id.clone());
                }
                if retryable && out.is_some() {
                    table = svc.table();
                    continue;
                }
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("instance {} failed: {}", backend.id, e.into_error()),
                );
            }
        }
    }
    error_response(
        StatusCode::BAD_GATEWAY,
        &format!("no instance of service {} answered", svc.name),
    )
}

/// The request as it goes upstream (a failed send hands it back for the retry), and for a safe
/// request without a body a copy of its head, to send it again if an instance closes a kept-alive
/// connection without answering (RFC 9110 §9.2.2; nginx's `proxy_next_upstream error`).
fn outgoing(
    parts: hyper::http::request::Parts,
    body: Incoming,
    retryable: bool,
) -> (Request<UpBody>, Option<hyper::http::request::Parts>) {
    if !retryable {
        return (Request::from_parts(parts, UpBody::Client(body)), None);
    }
    let again = parts.method.is_safe().then(|| parts.clone());
    (Request::from_parts(parts, UpBody::Empty), again)
}

/// The release a sticky client is pinned to: its `recast-release` cookie.
fn pinned_release(headers: &hyper::HeaderMap) -> Option<i64> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("recast-release=")?.parse().ok())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The request's headers as they go to the instance: no hop-by-hop headers (but `Upgrade` when
/// `upgrade`), no proxy credentials, and the client `peer` (its IP address) appended to
/// `X-Forwarded-For`.
fn forward_headers(headers: &mut hyper::HeaderMap, upgrade: bool, peer: Option<HeaderValue>) {
    // One pass over the names finds what needs work; most requests need none.
    let (mut hop, mut credentials, mut forwarded) = (false, false, false);
    for name in headers.keys() {
        hop |= is_hop_by_hop(name);
        credentials |= name == header::PROXY_AUTHORIZATION;
        forwarded |= name == X_FORWARDED_FOR;
    }
    if hop {
        strip_hop_by_hop(headers, upgrade);
    }
    if credentials {
        // Credentials for a proxy are for recast, never for the instance.
        headers.remove(header::PROXY_AUTHORIZATION);
    }
    let Some(peer) = peer else { return };
    if !forwarded {
        headers.insert(X_FORWARDED_FOR, peer);
        return;
    }
    let prev = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
    let ip = peer.to_str().unwrap_or_default();
    let fwd = match prev {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// Whether a header concerns one connection only (see `strip_hop_by_hop`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// 503 for a service with no instance to pick, saying why when the server said (then with
/// `Retry-After`).
fn no_healthy_instance(svc: &Service) -> Response<ProxyBody> {
    let why = svc
        .unavailable
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &match &why {
            Some(w) => format!("service {} has no healthy instance: {w}", svc.name),
            None => format!("service {} has no healthy instance", svc.name),
        },
    );
    if why.is_some() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

/// The instance's answer as it goes back to the client. A protocol switch is spliced to the
/// client's upgraded connection, the backend held in use while it lasts; otherwise the body is
/// tracked, and the connection goes back to the pool once it is read. A sticky route pins the
/// client to the backend's release with a cookie.
fn relay(
    mut resp: Response<Incoming>,
    mut in_use: InUse,
    sender: Upstream,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    sticky: bool,
    pinned: Option<i64>,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if resp.headers().keys().any(is_hop_by_hop) {
        strip_hop_by_hop(resp.headers_mut(), switching && client_upgrade.is_some());
    }
    if switching {
        if let Some(client) = client_upgrade {
            let server = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _guard = in_use;
                if let (Ok(c), Ok(s)) = (client.await, server.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(s))
                            .await;
                }
            });
        }
        let (p, b) = resp.into_parts();
        return Response::from_parts(p, ProxyBody::Upgrade(b));
    }
    in_use.sender = Some(sender);
    let release = in_use.backend.release;
    if sticky
        && pinned != Some(release)
        && let Ok(v) = HeaderValue::from_str(&format!("recast-release={release}; Path=/; HttpOnly"))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    let (p, b) = resp.into_parts();
    Response::from_parts(
        p,
        ProxyBody::Relayed(Tracked {
            inner: b,
            in_use: Some(in_use),
        }),
    )
}

/// Remove the headers that concern one connection only (RFC 9110 §7.6.1), from a request or a
/// response: `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`, `TE`,
/// `Trailer`, and `Upgrade` unless this is the upgrade being passed through
/// (`Transfer-Encoding` is hyper's to set from the body it sends).
fn strip_hop_by_hop(h: &mut hyper::HeaderMap, keep_upgrade: bool) {
    if let Some(list) = h
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    {
        for name in list.split(',') {
            let name = name.trim();
            if !(keep_upgrade && name.eq_ignore_ascii_case("upgrade")) {
                h.remove(name);
            }
        }
    }
    for name in ["keep-alive", "proxy-connection", "te", "trailer"] {
        h.remove(name);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn weighted_picks_honour_the_weights_for_any_total() {
        // Every total, including multiples of the old stride (37, 74, 111): each slot once per
        // cycle, and runs of one group no longer than they must be.
        for total in 1..=300u64 {
            let mut seen = vec![0u32; total as usize];
            for n in 0..total {
                seen[scatter(n + total * 7, total) as usize] += 1;
            }
            assert!(seen.iter().all(|&c| c == 1), "total {total}: {seen:?}");
        }
        // A 10/90 split over 100 requests interleaves: the 10 never all come in a row.
        let firsts: Vec<u64> = (0..100).filter(|&n| scatter(n, 100) < 10).collect();
        assert_eq!(firsts.len(), 10);
        assert!(firsts.windows(2).all(|w| w[1] - w[0] > 1), "{firsts:?}");
    }

    #[test]
    fn a_pick_gives_each_group_its_weight_over_a_cycle() {
        // Property: for every total weight up to 1000, split at random among 1-6 groups (with
        // unusable groups mixed in: weight 0, or no backend), any `total` consecutive picks
        // from any point send each usable group exactly its weight and the others nothing.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |below: u64| {
            // xorshift64*: deterministic, no dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
        };
        let connector: Connector = Arc::new(|| Err(io::Error::other("not connected in this test")));
        let svc = Service::new("prop");
        for total in 1..=1000u64 {
            // Random cut points split `total` into the usable groups' weights.
            let usable = 1 + rand(total.min(6));
            let mut cuts: Vec<u64> = (1..usable).map(|_| 1 + rand(total - 1)).collect();
            cuts.extend([0, total]);
            cuts.sort_unstable();
            let mut weights: Vec<(u32, usize)> = cuts
                .windows(2)
                .map(|w| {
                    (
                        u32::try_from(w[1] - w[0]).expect("weight"),
                        1 + rand(4) as usize,
                    )
                })
                .collect();
            for _ in 0..rand(3) {
                let at = rand(weights.len() as u64 + 1) as usize;
                let unusable = if rand(2) == 0 {
                    (0, 2)
                } else {
                    (1 + rand(50) as u32, 0)
                };
                weights.insert(at, unusable);
            }
            let groups = weights
                .iter()
                .enumerate()
                .map(|(i, &(weight, backends))| Group {
                    release: i as i64,
                    weight,
                    backends: (0..backends)
                        .map(|b| {
                            Backend::new(
                                format!("g{i}b{b}"),
                                i as i64,
                                connector.clone(),
                                svc.metrics(i as i64),
                            )
                        })
                        .collect(),
                })
                .collect();
            let table = Table { groups };
            svc.next.store(rand(1 << 40), Ordering::Relaxed);
            let mut got = vec![0u64; weights.len()];
            for _ in 0..total {
                let b = svc.pick(&table, None, None).expect("a usable group");
                got[b.release as usize] += 1;
            }
            let want: Vec<u64> = weights
                .iter()
                .map(|&(w, backends)| if backends == 0 { 0 } else { u64::from(w) })
                .collect();
            assert_eq!(
                got, want,
                "total {total}, groups (weight, backends) {weights:?}"
            );
        }
    }

    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend on loopback: answers `GET` with its name; `Upgrade: echo` switches protocols
    /// and echoes bytes.
    async fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
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
                        if text.contains("upgrade: echo") {
                            let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n").await;
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            return;
                        }
                        let body = format!("{name}\n");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
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

    fn route_to(svc: &Arc<Service>, targets: &[(SocketAddr, i64)]) {
        let groups = targets
            .iter()
            .map(|&(addr, release)| {
                let connector: Connector = Arc::new(move || std::net::TcpStream::connect(addr));
                Group {
                    release,
                    weight: 1,
                    backends: vec![Backend::new(
                        format!("b{release}"),
                        release,
                        connector,
                        svc.metrics(release),
                    )],
                }
            })
            .collect();
        svc.set_table(Table { groups });
    }

    async fn get(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn upgrades_pass_through() {
        let svc = Service::new("ws");
        route_to(&svc, &[(backend("a").await, 1)]);
        let route = Route::bind("127.0.0.1:0".parse().expect("addr"), svc)
            .await
            .expect("bind");
        let mut s = tokio::net::TcpStream::connect(route.addr)
            .await
            .expect("connect");
        s.write_all(
            b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .expect("send");
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut b).await.expect("read"),
                1,
                "closed before the 101"
            );
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(b"ping over the upgraded connection")
            .await
            .expect("write");
        let mut echo = [0u8; 33];
        s.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"ping over the upgraded connection");
    }

    #[tokio::test]
    async fn a_request_whose_instance_is_gone_is_retried_on_another() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let svc = Service::new("web");
        route_to(&svc, &[(dead, 1), (backend("alive").await, 2)]);
        let route = Route::bind("127.0.0.1:0".parse().expect("addr"), svc.clone())
            .await
            .expect("bind");
        for _ in 0..20 {
            let resp = get(route.addr).await;
            assert!(
                resp.starts_with("HTTP/1.1 200") && resp.ends_with("alive\n"),
                "{resp}"
            );
        }
        assert!(
            svc.metrics(1).snapshot().connect_failures > 0,
            "the dead instance was never tried"
        );
    }

    #[tokio::test]
    async fn a_route_address_in_use_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = Route::bind(addr, Service::new("x"))
            .await
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        // And a route frees its address when dropped.
        drop(taken);
        let r = Route::bind(addr, Service::new("x")).await.expect("bind");
        drop(r);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(addr).is_err() {
            assert!(Instant::now() < deadline, "the route kept its address");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
