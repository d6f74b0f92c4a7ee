//! Client connections under limits: how long a client may take to send a request's headers,
//! how long a keep-alive connection may sit idle, how many connections may be open at once, and
//! what accepting does when the process runs out of descriptors. Shared by the routes and the API.
//!
//! hyper's own `header_read_timeout` (1.12) runs from "ready for the next request" to "headers
//! complete", so it is also the idle keep-alive timeout; a short header timeout would close idle
//! keep-alive connections just as soon. So each connection has a small watchdog instead, fed by
//! its socket reads and its requests in flight:
//! - the first request's headers must be complete `header_read` after accepting;
//! - between requests, a connection with nothing in flight may stay idle (no byte) for `idle`;
//! - once a byte of the next request arrived, its headers must be complete within `header_read`.
//!
//! A request in flight (including a streaming response) is never cut by these timers.
//!
//! Closing gracefully (`serve_until`'s `closing` turns true): a connection with a request in flight
//! answers it with `Connection: close` and closes; so does one whose next request arrives soon;
//! an idle one closes once it has been idle for `CLOSING_IDLE_GRACE`. Closing an idle keep-alive
//! connection at once would race with a client sending its next request (the request would be
//! lost, answered by a reset); a client that sends often gets its `Connection: close` answer
//! first, and one that has been quiet for a while is unlikely to send at that very moment.

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// A client must send a request's headers within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection to a route is closed after this (nginx's default).
pub const ROUTE_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// An idle keep-alive connection to the API is closed after this.
pub const API_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most client connections open at once on one route.
pub const ROUTE_MAX_CONNECTIONS: usize = 10_000;
/// Most client connections open at once on the API.
pub const API_MAX_CONNECTIONS: usize = 512;

/// Longest pause between accept attempts while the process is out of descriptors or memory.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Most connections being refused (a 503 being written) at once; beyond, they are just closed.
const MAX_REFUSING: usize = 256;
/// While closing gracefully, an idle keep-alive connection is closed once it has been idle this
/// long (a busy one is closed by answering its next request with `Connection: close`).
pub const CLOSING_IDLE_GRACE: Duration = Duration::from_millis(500);

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Names the listener in messages ("route web", "the API").
    pub what: String,
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
    /// Whether these connections count toward the process's budget (`process_budget`): routes
    /// do; the API does not, so that a flood of route clients never locks the operator out.
    pub budgeted: bool,
    /// The networks clients may connect from; `None`: any.
    pub allow: Option<Arc<[Network]>>,
}

/// An IP network: an address and how many leading bits of it count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Whether `ip` is in this network (an IPv4 address never is in an IPv6 network, and back).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(n.into(), 128, self.prefix) == masked(a.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl Limits {
    pub fn route(what: impl Into<String>) -> Limits {
        Limits {
            what: what.into(),
            header_read: HEADER_READ_TIMEOUT,
            idle: ROUTE_IDLE_TIMEOUT,
            max_connections: ROUTE_MAX_CONNECTIONS,
            budgeted: true,
            allow: None,
        }
    }

    pub fn api() -> Limits {
        Limits {
            what: "the API".into(),
            header_read: HEADER_READ_TIMEOUT,
            idle: API_IDLE_TIMEOUT,
            max_connections: API_MAX_CONNECTIONS,
            budgeted: false,
            allow: None,
        }
    }
}

/// Client connections open on the routes of this process.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static REFUSING: AtomicUsize = AtomicUsize::new(0);

/// Whether a connection may also take the four descriptors of two pipes (`splice.rs`): while
/// the route connections open use at most a third of the budget, so that with their pipes they
/// stay within the descriptors the budget counts on.
pub(crate) fn room_for_pipes() -> bool {
    OPEN.load(Ordering::Relaxed) < process_budget() / 3
}

/// How many route client connections the whole process may hold: each may need a second
/// descriptor upstream, and recast keeps a reserve for itself (health probes, the state store,
/// runc, the API).
pub fn process_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        let reserve = (soft / 8).max(64);
        (soft.saturating_sub(reserve) / 2).max(16)
    })
}

/// One listener's count of open connections.
#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<AtomicUsize>,
    /// Woken when the count falls to zero.
    none_open: Arc<Notify>,
}

/// Holds a connection's place under the limits; released on drop.
pub struct Permit {
    gate: Gate,
    budgeted: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.leave();
        if self.budgeted {
            OPEN.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Gate {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn leave(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.none_open.notify_waiters();
        }
    }

    /// Resolves when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let none_open = self.none_open.notified();
            tokio::pin!(none_open);
            none_open.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            none_open.await;
        }
    }

    /// A place for one more connection, or why there is none.
    pub(crate) fn enter(&self, limits: &Limits) -> Result<Permit, String> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            self.open.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "{} is at its limit of {} open connections; try again later",
                limits.what, limits.max_connections
            ));
        }
        let budget = process_budget();
        if limits.budgeted && OPEN.fetch_add(1, Ordering::SeqCst) >= budget {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            self.leave();
            return Err(format!(
                "recast is at its limit of {budget} open client connections (from its open-file limit); try again later"
            ));
        }
        Ok(Permit {
            gate: self.clone(),
            budgeted: limits.budgeted,
        })
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::NOBUFS]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
}

/// Accepts connections; when the process is out of descriptors (or memory) it waits, 10 ms
/// doubling up to a second, instead of retrying at once: the pending connection stays in the
/// kernel's queue, and retrying would only spin. Other errors (a client that gave up) are
/// skipped.
pub struct Acceptor {
    listener: TcpListener,
    what: String,
    backoff: Duration,
    allow: Option<Arc<[Network]>>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, what: impl Into<String>) -> Acceptor {
        Acceptor {
            listener,
            what: what.into(),
            backoff: Duration::ZERO,
            allow: None,
        }
    }

    /// Accept only clients from these networks (`Limits::allow`); others are reset at once.
    pub fn allowing(mut self, allow: Option<Arc<[Network]>>) -> Acceptor {
        self.allow = allow;
        self
    }

    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer))
                    if self
                        .allow
                        .as_ref()
                        .is_some_and(|a| !a.iter().any(|n| n.contains(peer.ip()))) =>
                {
                    // Reset (SO_LINGER 0): the client learns at once that it may not connect.
                    let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
                }
                Ok(a) => {
                    if !self.backoff.is_zero() {
                        eprintln!("recast: {}: accepting connections again", self.what);
                        self.backoff = Duration::ZERO;
                    }
                    return a;
                }
                Err(e) if is_resource_error(&e) => {
                    if self.backoff.is_zero() {
                        eprintln!(
                            "recast: {}: cannot accept connections: {e}; retrying with backoff",
                            self.what
                        );
                        self.backoff = Duration::from_millis(10);
                    } else {
                        self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    }
                    tokio::time::sleep(self.backoff).await;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }
}

/// Milliseconds since the connection was accepted, shared by its socket and its requests.
struct Watch {
    start: Instant,
    /// When the last byte arrived.
    last_read: AtomicU64,
    /// When the last response finished.
    last_done: AtomicU64,
    /// 1 + when the current request's head began (0: not reading a head).
    head_since: AtomicU64,
    /// A byte of the next request's head has arrived (and its request has not started).
    head_bytes: AtomicBool,
    in_flight: AtomicUsize,
    /// The connection is closing gracefully: responses from now on carry `Connection: close`.
    closing: AtomicBool,
}

impl Watch {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_since.load(Ordering::SeqCst);
        if head > 0 {
            (now.saturating_sub(head - 1) >= limits.header_read.as_millis() as u64)
                .then_some("header read timeout")
        } else {
            let last = self
                .last_read
                .load(Ordering::SeqCst)
                .max(self.last_done.load(Ordering::SeqCst));
            (now.saturating_sub(last) >= limits.idle.as_millis() as u64).then_some("idle timeout")
        }
    }

    /// Whether a connection that is closing gracefully may be closed now: nothing in flight,
    /// no byte of a next request, and idle for `CLOSING_IDLE_GRACE`.
    fn may_close(&self) -> bool {
        if self.in_flight.load(Ordering::SeqCst) > 0 || self.head_bytes.load(Ordering::SeqCst) {
            return false;
        }
        let last = self
            .last_read
            .load(Ordering::SeqCst)
            .max(self.last_done.load(Ordering::SeqCst));
        self.now().saturating_sub(last) >= CLOSING_IDLE_GRACE.as_millis() as u64
    }
}

/// The client's socket, telling the watch when bytes arrive.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() > before
        {
            let w = &self.watch;
            let now = w.now();
            w.last_read.store(now, Ordering::SeqCst);
            if w.in_flight.load(Ordering::SeqCst) == 0 {
                w.head_bytes.store(true, Ordering::SeqCst);
                let _ =
                    w.head_since
                        .compare_exchange(0, now + 1, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request counted as in flight until its response body is done (or dropped).
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now();
        self.0.last_done.store(now, Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight.
pub struct Counted<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve one accepted connection (HTTP/1.1, keep-alive, upgrades) with `handler`, under
/// `limits`; returns when the connection is done or was closed for a timeout.
pub async fn serve<H, F, B>(stream: TcpStream, limits: &Limits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A receiver whose sender is gone never asks to close.
    let (_, never) = watch::channel(false);
    serve_until(stream, limits, never, handler).await;
}

/// `serve`, and once `closing` turns true, close gracefully: answer the request in flight (or the
/// next one) with `Connection: close`, or close once idle for `CLOSING_IDLE_GRACE`.
pub async fn serve_until<H, F, B>(
    stream: TcpStream,
    limits: &Limits,
    mut closing: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let watch = Arc::new(Watch {
        start: Instant::now(),
        last_read: AtomicU64::new(0),
        last_done: AtomicU64::new(0),
        // The first request's headers are due `header_read` after the connection opened.
        head_since: AtomicU64::new(1),
        head_bytes: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
    });
    let io = Watched {
        inner: stream,
        watch: watch.clone(),
    };
    let w = watch.clone();
    let handler = Arc::new(handler);
    let svc = hyper::service::service_fn(move |req| {
        w.in_flight.fetch_add(1, Ordering::SeqCst);
        w.head_since.store(0, Ordering::SeqCst);
        w.head_bytes.store(false, Ordering::SeqCst);
        let in_flight = InFlight(w.clone());
        let fut = handler(req);
        async move {
            let mut resp = fut.await;
            // Checked once the answer is ready, so that a request in flight when closing began
            // is answered with `Connection: close` (hyper then closes after the response).
            if in_flight.0.closing.load(Ordering::SeqCst)
                && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp.map(|inner| Counted {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut tick = (limits.header_read.min(limits.idle) / 10)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    // Whether `closing` may still turn true.
    let mut listening = true;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            r = closing.wait_for(|c| *c), if listening => {
                listening = false;
                if r.is_ok() {
                    // Not hyper's `graceful_shutdown`: it closes an idle connection at once, and a
                    // response whose head is already out without `Connection: close` right after
                    // its body; either races with the client's next request.
                    watch.closing.store(true, Ordering::SeqCst);
                    tick = tick.min(CLOSING_IDLE_GRACE / 10);
                }
            }
            () = tokio::time::sleep(tick) => {
                let closed = watch.closing.load(Ordering::SeqCst) && watch.may_close();
                if closed || watch.expired(limits).is_some() {
                    // Dropping the connection closes the socket.
                    return;
                }
            }
        }
    }
}

/// Take a place for a new connection, or answer it `503` with the reason and close it.
pub fn admit(gate: &Gate, limits: &Limits, stream: TcpStream) -> Option<(TcpStream, Permit)> {
    match gate.enter(limits) {
        Ok(p) => Some((stream, p)),
        Err(why) => {
            refuse(stream, why);
            None
        }
    }
}

/// Answer `503` with `why` and close, without waiting for the request (bounded in time, and in
/// how many are refused at once).
fn refuse(mut stream: TcpStream, why: String) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        eprintln!("recast: refusing connections: {why}");
    }
    let most = MAX_REFUSING.min(process_budget() / 4).max(1);
    if REFUSING.fetch_add(1, Ordering::SeqCst) >= most {
        REFUSING.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        let body = format!("recast: {why}\n");
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(resp.as_bytes()).await?;
            stream.shutdown().await?;
            // Read what the client sent, so that closing does not reset the connection
            // before the client has read the answer.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        REFUSING.fetch_sub(1, Ordering::SeqCst);
    });
}
