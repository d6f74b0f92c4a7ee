//! The data plane process: its state, the control socket, and what each request does.

use crate::liveness;
use crate::proto::{
    self, Config, Counters, PreviewState, Reply, Request, RouteProtocol, RouteState, ServiceState,
};
use recast_api::DataDir;
use recast_proxy::{Backend, Group, Route, Table, TcpRoute};
use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A backend out of every table is kept this long for a drain to find it.
const KEEP_RETIRED: Duration = Duration::from_secs(120);

/// With nothing to serve and nothing configured for this long, the process exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

/// A control connection with no request for this long is closed.
const CONTROL_IDLE: Duration = Duration::from_secs(120);

/// How long open connections have to finish when the process stops or hands over.
const DRAIN: Duration = Duration::from_secs(30);

/// The handoff names a preview's listeners `preview:<service key>`.
const PREVIEW: &str = "preview:";

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One service's traffic as the data plane holds it.
pub(crate) struct Svc {
    pub proxy: Arc<recast_proxy::Service>,
    pub state: ServiceState,
    /// By id: what the control plane said, and the proxy's backend (pool, in-flight count).
    pub backends: HashMap<String, (proto::Backend, Arc<Backend>)>,
    /// Out of every table; kept for a drain.
    retired: Vec<(Instant, Arc<Backend>)>,
    /// Consecutive failed liveness connects per backend id; at the threshold it is *down*.
    pub failures: HashMap<String, u32>,
}

impl Svc {
    fn new(name: &str, key: &str) -> Svc {
        Svc {
            proxy: recast_proxy::Service::new(name),
            state: ServiceState {
                key: key.to_string(),
                name: name.to_string(),
                backends: Vec::new(),
                groups: Vec::new(),
                unavailable: None,
                sticky: false,
                liveness: proto::Liveness {
                    interval_ms: 1000,
                    timeout_ms: 500,
                    threshold: 3,
                },
            },
            backends: HashMap::new(),
            retired: Vec::new(),
            failures: HashMap::new(),
        }
    }

    pub fn is_down(&self, id: &str) -> bool {
        self.failures
            .get(id)
            .is_some_and(|f| *f >= self.state.liveness.threshold.max(1))
    }

    /// Swap in the table the state says, without the backends that are down.
    pub fn publish(&self) {
        let groups = self
            .state
            .groups
            .iter()
            .filter_map(|g| {
                let backends: Vec<Arc<Backend>> = g
                    .backends
                    .iter()
                    .filter(|id| !self.is_down(id))
                    .filter_map(|id| self.backends.get(id).map(|(_, b)| b.clone()))
                    .collect();
                (!backends.is_empty()).then(|| Group {
                    release: g.release,
                    weight: g.weight.unwrap_or(backends.len() as u32),
                    backends,
                })
            })
            .collect();
        self.proxy.set_table(Table { groups });
        self.proxy.set_unavailable(self.state.unavailable.clone());
        self.proxy.set_sticky(self.state.sticky);
    }

    fn find(&self, id: &str) -> Option<Arc<Backend>> {
        self.backends.get(id).map(|(_, b)| b.clone()).or_else(|| {
            self.retired
                .iter()
                .find(|(_, b)| b.id == id)
                .map(|(_, b)| b.clone())
        })
    }
}

/// A route's listeners: HTTP requests or TCP connections (`RouteState::protocol`).
enum Listening {
    Http(Route),
    Tcp(TcpRoute),
}

impl Listening {
    /// Listen as `state` says, forwarding to `service`.
    async fn bind(
        state: &RouteState,
        service: Arc<recast_proxy::Service>,
    ) -> std::io::Result<Listening> {
        if let Some(netns) = &state.netns {
            let socket = || recast_runtime::tcp_socket_in(netns);
            let fds = recast_proxy::listening_sockets(state.listen, &socket)?;
            return Listening::adopt(state, fds, service);
        }
        let limits = route_limits(state);
        Ok(match state.protocol {
            RouteProtocol::Http => {
                let timeout = Duration::from_millis(state.timeout_ms.max(1));
                Listening::Http(Route::bind_with(state.listen, service, timeout, limits).await?)
            }
            RouteProtocol::Tcp => {
                Listening::Tcp(TcpRoute::bind(state.listen, service, limits).await?)
            }
        })
    }

    /// Serve sockets handed over by an older data plane as `state` says.
    fn adopt(
        state: &RouteState,
        fds: Vec<OwnedFd>,
        service: Arc<recast_proxy::Service>,
    ) -> std::io::Result<Listening> {
        let limits = route_limits(state);
        Ok(match state.protocol {
            RouteProtocol::Http => {
                let timeout = Duration::from_millis(state.timeout_ms.max(1));
                Listening::Http(Route::from_listeners(fds, service, timeout, limits)?)
            }
            RouteProtocol::Tcp => Listening::Tcp(TcpRoute::from_listeners(fds, service, limits)?),
        })
    }

    fn listeners(&self) -> std::io::Result<Vec<OwnedFd>> {
        match self {
            Listening::Http(r) => r.listeners(),
            Listening::Tcp(r) => r.listeners(),
        }
    }

    /// Stop accepting; open connections finish (HTTP: their current request) up to `timeout`.
    async fn close_gracefully(self, timeout: Duration) -> usize {
        match self {
            Listening::Http(r) => r.close_gracefully(timeout).await,
            Listening::Tcp(r) => r.close_gracefully(timeout).await,
        }
    }
}

/// The limits of route `state` (key `project/name`), with who may connect.
fn route_limits(state: &RouteState) -> recast_proxy::conn::Limits {
    let name = state.key.rsplit('/').next().unwrap_or(&state.key);
    let mut limits = recast_proxy::conn::Limits::route(format!("route {name}"));
    limits.allow = state.allow.as_ref().map(|nets| {
        nets.iter()
            .map(|&(addr, prefix)| recast_proxy::conn::Network { addr, prefix })
            .collect()
    });
    limits
}

/// Everything one data plane holds.
pub(crate) struct Plane {
    pub services: Mutex<HashMap<String, Svc>>,
    routes: tokio::sync::Mutex<BTreeMap<String, Vec<(RouteState, Listening)>>>,
    previews: tokio::sync::Mutex<HashMap<String, (PreviewState, Route)>>,
    /// Per project network (routes listening in a namespace), its resolver.
    resolvers: Mutex<HashMap<String, crate::dns::Resolver>>,
    since_ms: u64,
    /// A newer data plane took the listeners over: this one drains and exits.
    handed_off: std::sync::atomic::AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn connector(b: &proto::Backend) -> recast_proxy::Connector {
    let netns = match &b.target {
        proto::Target::Netns { path } => Some(path.clone()),
        proto::Target::Host => None,
    };
    let port = b.port;
    Arc::new(move || recast_runtime::connect_to(netns.as_deref(), port, Duration::from_secs(2)))
}

impl Plane {
    pub fn new() -> Plane {
        Plane {
            services: Mutex::new(HashMap::new()),
            routes: tokio::sync::Mutex::new(BTreeMap::new()),
            previews: tokio::sync::Mutex::new(HashMap::new()),
            resolvers: Mutex::new(HashMap::new()),
            since_ms: now_ms(),
            handed_off: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Replace a service's routing: backends are kept by id (their pools and in-flight counts),
    /// new ones made, gone ones retired (kept for a drain).
    pub fn set_service(&self, state: ServiceState) {
        let mut svcs = lock(&self.services);
        let svc = svcs
            .entry(state.key.clone())
            .or_insert_with(|| Svc::new(&state.name, &state.key));
        let mut next = HashMap::new();
        for b in &state.backends {
            let kept = svc.backends.remove(&b.id).filter(|(spec, _)| spec == b);
            let entry = kept.unwrap_or_else(|| {
                let metrics = svc.proxy.metrics(b.release);
                let backend = Backend::new(b.id.clone(), b.release, connector(b), metrics);
                (b.clone(), backend)
            });
            next.insert(b.id.clone(), entry);
        }
        let now = Instant::now();
        svc.retired
            .extend(svc.backends.drain().map(|(_, (_, b))| (now, b)));
        svc.retired
            .retain(|(at, b)| now.duration_since(*at) < KEEP_RETIRED || b.inflight() > 0);
        svc.failures.retain(|id, _| next.contains_key(id));
        svc.backends = next;
        svc.state = state;
        svc.publish();
    }

    /// The proxy service for `key`, made (empty) when a route names it before its instances.
    fn proxy_of(&self, key: &str) -> Arc<recast_proxy::Service> {
        let name = key.rsplit('/').next().unwrap_or(key);
        lock(&self.services)
            .entry(key.to_string())
            .or_insert_with(|| Svc::new(name, key))
            .proxy
            .clone()
    }

    /// Replace a project's routes; returns those that could not listen.
    pub async fn set_routes(&self, project: &str, wanted: Vec<RouteState>) -> Vec<String> {
        let mut all = self.routes.lock().await;
        let mut kept = Vec::new();
        for (old, route) in all.remove(project).unwrap_or_default() {
            match wanted.iter().find(|w| {
                w.key == old.key
                    && w.listen == old.listen
                    && w.service == old.service
                    && w.protocol == old.protocol
                    && w.netns == old.netns
                    && w.allow == old.allow
                    && w.resolves_outside == old.resolves_outside
            }) {
                Some(w) => {
                    if let Listening::Http(r) = &route {
                        r.set_timeout(Duration::from_millis(w.timeout_ms.max(1)));
                    }
                    kept.push((w.clone(), route));
                }
                // Closed before anything new binds, so a route may move to its old address.
                None => drop(route),
            }
        }
        let mut failed = Vec::new();
        for w in wanted {
            if kept.iter().any(|(k, _)| k.key == w.key) {
                continue;
            }
            let name = w.key.rsplit('/').next().unwrap_or(&w.key).to_string();
            match Listening::bind(&w, self.proxy_of(&w.service)).await {
                Ok(route) => kept.push((w, route)),
                Err(e) => failed.push(format!("route {name}: cannot listen on {}: {e}", w.listen)),
            }
        }
        if let Err(e) = self.resolve_names(project, &kept) {
            failed.push(e);
        }
        if !kept.is_empty() {
            all.insert(project.to_string(), kept);
        }
        failed
    }

    /// Answer the names of the services whose routes listen in a project network (`routes` of
    /// `project`), or stop answering when there are none.
    fn resolve_names(
        &self,
        project: &str,
        routes: &[(RouteState, Listening)],
    ) -> Result<(), String> {
        let mut resolvers = lock(&self.resolvers);
        let Some(netns) = routes.iter().find_map(|(r, _)| r.netns.clone()) else {
            resolvers.remove(project);
            return Ok(());
        };
        let mut names = crate::dns::Known::default();
        for (r, _) in routes {
            let name = r
                .key
                .rsplit('/')
                .next()
                .and_then(|n| n.strip_suffix("@network"));
            if let (Some(name), std::net::IpAddr::V4(a)) = (name, r.listen.ip()) {
                names.names.insert(name.to_string(), a);
                if r.resolves_outside {
                    names.outside.push(a);
                }
            }
        }
        if let Some(r) = resolvers.get(project) {
            *r.names.write().unwrap_or_else(|p| p.into_inner()) = names;
            return Ok(());
        }
        let r = crate::dns::Resolver::start(&netns, names).map_err(|e| {
            format!(
                "the resolver of {project}: cannot listen on {}: {e}",
                crate::dns::LISTEN
            )
        })?;
        resolvers.insert(project.to_string(), r);
        Ok(())
    }

    /// Open, replace or close a service's preview listener.
    pub async fn set_preview(
        &self,
        key: &str,
        preview: Option<PreviewState>,
    ) -> Result<(), String> {
        let mut previews = self.previews.lock().await;
        previews.remove(key);
        let Some(p) = preview else {
            return Ok(());
        };
        let (name, backends) = {
            let svcs = lock(&self.services);
            let svc = svcs
                .get(key)
                .ok_or_else(|| format!("preview of {key}: no such service"))?;
            let backends = p.backends.iter().filter_map(|id| svc.find(id)).collect();
            (svc.state.name.clone(), backends)
        };
        let pv = recast_proxy::Service::new(&format!("{name}-preview"));
        pv.set_table(Table {
            groups: vec![Group {
                release: p.release,
                weight: 1,
                backends,
            }],
        });
        let route = Route::bind(p.listen, pv)
            .await
            .map_err(|e| format!("preview on {}: {e}", p.listen))?;
        previews.insert(key.to_string(), (p, route));
        Ok(())
    }

    pub async fn drain(&self, service: &str, backend: &str, timeout: Duration) -> bool {
        let found = lock(&self.services)
            .get(service)
            .and_then(|s| s.find(backend));
        match found {
            Some(b) => b.drain(timeout).await,
            None => true,
        }
    }

    fn metrics(&self, service: &str) -> Vec<(i64, Counters)> {
        let svcs = lock(&self.services);
        let Some(svc) = svcs.get(service) else {
            return Vec::new();
        };
        let mut releases: Vec<i64> = svc.proxy.releases();
        releases.extend(svc.state.backends.iter().map(|b| b.release));
        releases.sort_unstable();
        releases.dedup();
        releases
            .into_iter()
            .map(|r| (r, svc.proxy.metrics(r).snapshot().into()))
            .collect()
    }

    pub async fn config(&self) -> Config {
        let services = lock(&self.services)
            .values()
            .map(|s| s.state.clone())
            .collect();
        let routes = self
            .routes
            .lock()
            .await
            .iter()
            .map(|(p, rs)| (p.clone(), rs.iter().map(|(r, _)| r.clone()).collect()))
            .collect();
        let previews = self
            .previews
            .lock()
            .await
            .iter()
            .map(|(k, (p, _))| (k.clone(), p.clone()))
            .collect();
        Config {
            services,
            routes,
            previews,
        }
    }

    /// Nothing listens and no instance is configured.
    async fn idle(&self) -> bool {
        self.config().await.is_idle()
    }

    /// The configuration and duplicates of every listening socket (routes, then previews as
    /// `preview:<service>`), for a newer data plane.
    async fn handoff_parts(&self) -> std::io::Result<(Config, Vec<OwnedFd>, Vec<(String, usize)>)> {
        let config = self.config().await;
        let (mut fds, mut parts) = (Vec::new(), Vec::new());
        for rs in self.routes.lock().await.values() {
            for (r, route) in rs {
                let l = route.listeners()?;
                parts.push((r.key.clone(), l.len()));
                fds.extend(l);
            }
        }
        for (k, (_, route)) in self.previews.lock().await.iter() {
            let l = route.listeners()?;
            parts.push((format!("{PREVIEW}{k}"), l.len()));
            fds.extend(l);
        }
        Ok((config, fds, parts))
    }

    /// Serve a route (or preview) on listening sockets handed over by an older data plane.
    fn adopt_listeners(&self, config: &Config, key: &str, fds: Vec<OwnedFd>) -> Result<(), String> {
        if let Some(svc) = key.strip_prefix(PREVIEW) {
            let p = config
                .previews
                .get(svc)
                .ok_or_else(|| format!("handoff: listeners of an unknown preview {svc}"))?;
            let backends = lock(&self.services)
                .get(svc)
                .map(|s| p.backends.iter().filter_map(|id| s.find(id)).collect())
                .unwrap_or_default();
            let pv = recast_proxy::Service::new(&format!("{svc}-preview"));
            pv.set_table(Table {
                groups: vec![Group {
                    release: p.release,
                    weight: 1,
                    backends,
                }],
            });
            let limits = recast_proxy::conn::Limits::route(format!("preview of {svc}"));
            let route = Route::from_listeners(fds, pv, recast_proxy::UPSTREAM_TIMEOUT, limits)
                .map_err(|e| format!("handoff of the preview of {svc}: {e}"))?;
            let mut previews = self.previews.blocking_lock();
            previews.insert(svc.to_string(), (p.clone(), route));
            return Ok(());
        }
        let (project, state) = config
            .routes
            .iter()
            .find_map(|(p, rs)| rs.iter().find(|r| r.key == key).map(|r| (p, r)))
            .ok_or_else(|| format!("handoff: listeners of an unknown route {key}"))?;
        let name = key.rsplit('/').next().unwrap_or(key);
        let route = Listening::adopt(state, fds, self.proxy_of(&state.service))
            .map_err(|e| format!("handoff of route {name}: {e}"))?;
        self.routes
            .blocking_lock()
            .entry(project.clone())
            .or_default()
            .push((state.clone(), route));
        Ok(())
    }

    /// Stop accepting everywhere and let open connections finish (at most `timeout`).
    async fn close_all(&self, timeout: Duration) {
        let routes: Vec<Listening> = std::mem::take(&mut *self.routes.lock().await)
            .into_values()
            .flatten()
            .map(|(_, r)| r)
            .chain(
                std::mem::take(&mut *self.previews.lock().await)
                    .into_values()
                    .map(|(_, r)| Listening::Http(r)),
            )
            .collect();
        let closing: Vec<_> = routes
            .into_iter()
            .map(|r| tokio::spawn(r.close_gracefully(timeout)))
            .collect();
        for c in closing {
            let _ = c.await;
        }
    }

    pub async fn handle(&self, req: Request) -> Reply {
        match req {
            Request::Hello => Reply::Hello {
                protocol: proto::PROTOCOL,
                pid: std::process::id(),
                exe: proto::exe_identity(),
                since_ms: self.since_ms,
            },
            Request::SetService { service } => {
                self.set_service(service);
                Reply::Ok
            }
            Request::SetRoutes { project, routes } => Reply::Routes {
                failed: self.set_routes(&project, routes).await,
            },
            Request::SetPreview { service, preview } => {
                match self.set_preview(&service, preview).await {
                    Ok(()) => Reply::Ok,
                    Err(message) => Reply::Error { message },
                }
            }
            Request::Drain {
                service,
                backend,
                timeout_ms,
            } => Reply::Drained {
                drained: self
                    .drain(&service, &backend, Duration::from_millis(timeout_ms))
                    .await,
            },
            Request::Metrics { service } => Reply::Metrics {
                releases: self.metrics(&service),
            },
            Request::Config => Reply::Config {
                config: self.config().await,
            },
            Request::Handoff => Reply::Error {
                message: "handoff is answered on its own connection".into(),
            },
        }
    }
}

/// Serve one control connection until the peer closes it.
fn serve_conn(plane: Arc<Plane>, rt: tokio::runtime::Handle, stream: UnixStream) {
    // A control connection quiet this long is closed (the control plane's heartbeat keeps
    // its own busy, and it connects again when one was closed); a reply is written in 10 s.
    if stream.set_read_timeout(Some(CONTROL_IDLE)).is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .is_err()
    {
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = write_half;
    loop {
        let req: Request = match proto::read_msg(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = proto::write_msg(
                    &mut writer,
                    &Reply::Error {
                        message: e.to_string(),
                    },
                );
                return;
            }
        };
        if req == Request::Handoff {
            match hand_off(&plane, &rt, &writer, &mut reader) {
                Ok(()) => plane.handed_off.store(true, Ordering::SeqCst),
                Err(e) => eprintln!("recast dataplane: handoff failed, still serving: {e}"),
            }
            return;
        }
        let reply = rt.block_on(plane.handle(req));
        if proto::write_msg(&mut writer, &reply).is_err() {
            return;
        }
    }
}

/// Give a newer data plane the configuration and the listening sockets (`SCM_RIGHTS`), and
/// wait until it says it serves them (its hello). Until then nothing changes here.
fn hand_off(
    plane: &Plane,
    rt: &tokio::runtime::Handle,
    sock: &UnixStream,
    reader: &mut BufReader<UnixStream>,
) -> Result<(), String> {
    let (config, fds, listeners) = rt
        .block_on(plane.handoff_parts())
        .map_err(|e| e.to_string())?;
    let reply =
        serde_json::to_vec(&Reply::Handoff { config, listeners }).map_err(|e| e.to_string())?;
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    recast_proxy::fds::send_fds(sock, &reply, &borrowed).map_err(|e| e.to_string())?;
    match proto::read_msg::<Request>(reader) {
        Ok(Some(Request::Hello)) => {
            let mut w = sock;
            let _ = proto::write_msg(&mut w, &rt.block_on(plane.handle(Request::Hello)));
            Ok(())
        }
        other => Err(format!("the new data plane did not take over ({other:?})")),
    }
}

/// Take the listeners and configuration of the data plane serving `dir`; returns the connection
/// to acknowledge on once this one listens on the control socket.
fn take_over(dir: &DataDir, plane: &Plane) -> Result<UnixStream, String> {
    let sock = UnixStream::connect(dir.dataplane_socket())
        .map_err(|e| format!("no data plane to take over: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = &sock;
    proto::write_msg(&mut w, &Request::Handoff).map_err(|e| e.to_string())?;
    let (payload, fds) = recast_proxy::fds::recv_fds(&sock, recast_proxy::fds::MAX_FDS)
        .map_err(|e| e.to_string())?;
    let Reply::Handoff { config, listeners } =
        serde_json::from_slice(&payload).map_err(|e| format!("a malformed handoff: {e}"))?
    else {
        return Err("the data plane refused the handoff".into());
    };
    for s in &config.services {
        plane.set_service(s.clone());
    }
    let mut fds = fds.into_iter();
    for (key, n) in listeners {
        let taken: Vec<OwnedFd> = fds.by_ref().take(n).collect();
        plane.adopt_listeners(&config, &key, taken)?;
    }
    // Each project network's resolver answers beside the old one's (`SO_REUSEPORT`) until it
    // goes.
    for (project, routes) in plane.routes.blocking_lock().iter() {
        plane.resolve_names(project, routes)?;
    }
    Ok(sock)
}

/// Is a data plane answering on this directory's socket? Its hello if so.
pub(crate) fn running(dir: &DataDir) -> Option<Reply> {
    let stream = UnixStream::connect(dir.dataplane_socket()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let mut w = stream.try_clone().ok()?;
    proto::write_msg(&mut w, &Request::Hello).ok()?;
    proto::read_msg(&mut BufReader::new(stream)).ok()?
}

/// Listen on the directory's control socket: bound under a private name, then renamed over
/// `dataplane.sock` (so a client never finds the name without a listener behind it).
fn listen(dir: &DataDir) -> Result<UnixListener, String> {
    let tmp = dir.dataplane_socket_tmp(std::process::id());
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("cannot listen on {}: {e}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.dataplane_socket())
        .map_err(|e| format!("{}: {e}", dir.dataplane_socket().display()))?;
    Ok(listener)
}

/// Run the data plane of `data_dir` until it is told to stop (SIGTERM/SIGINT: open
/// connections finish first), a newer one took over, or it has had nothing to do for a while.
/// With `takeover`, the one serving the directory hands this one its listening sockets and
/// configuration, then drains and exits; without, another one answering is an error.
pub fn run(data_dir: &std::path::Path, takeover: bool) -> Result<(), String> {
    let dir = DataDir::new(data_dir);
    let signals = recast_runtime::signals::forward();
    let old = running(&dir);
    if let (Some(Reply::Hello { pid, .. }), false) = (&old, takeover) {
        return Err(format!(
            "a data plane already serves {} (pid {pid})\n  hint: `recast dataplane --takeover` replaces it without dropping a connection",
            data_dir.display()
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plane = Arc::new(Plane::new());
    let _rt_guard = rt.enter();
    let handed = match old {
        Some(_) if takeover => Some(take_over(&dir, &plane)?),
        _ => None,
    };
    let listener = listen(&dir)?;
    if let Some(sock) = handed {
        // We serve: the old one may go.
        let mut w = &sock;
        let _ = proto::write_msg(&mut w, &Request::Hello);
        let _ = proto::read_msg::<Reply>(&mut BufReader::new(&sock));
    }
    {
        let (plane, handle) = (plane.clone(), rt.handle().clone());
        std::thread::Builder::new()
            .name("dataplane-control".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (plane, handle) = (plane.clone(), handle.clone());
                    std::thread::spawn(move || serve_conn(plane, handle, stream));
                }
            })
            .map_err(|e| e.to_string())?;
    }
    rt.spawn(liveness::run(plane.clone()));
    eprintln!(
        "recast dataplane: serving {} (pid {})",
        data_dir.display(),
        std::process::id()
    );
    let mut idle_since = None;
    loop {
        if signals.recv_timeout(Duration::from_millis(200)).is_ok() {
            eprintln!("recast dataplane: stopping; open connections finish first");
            rt.block_on(plane.close_all(DRAIN));
            return Ok(());
        }
        if plane.handed_off.load(Ordering::SeqCst) {
            eprintln!("recast dataplane: a newer data plane took over; draining");
            rt.block_on(plane.close_all(DRAIN));
            return Ok(());
        }
        let idle = rt.block_on(plane.idle());
        let since = *idle_since.get_or_insert_with(Instant::now);
        if !idle {
            idle_since = None;
        } else if since.elapsed() >= IDLE_EXIT {
            // Only a socket that is still ours goes (a newer data plane may own the name).
            if matches!(running(&dir), Some(Reply::Hello { pid, .. }) if pid == std::process::id())
            {
                let _ = std::fs::remove_file(dir.dataplane_socket());
            }
            eprintln!("recast dataplane: idle, exiting");
            return Ok(());
        }
    }
}
