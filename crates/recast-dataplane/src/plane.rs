//! The data plane process: its state, the control socket, and what each request does.

use crate::liveness;
use crate::proto::{
    self, Config, Counters, PreviewState, Reply, Request, RouteState, ServiceState,
};
use recast_api::DataDir;
use recast_proxy::{Backend, Group, Route, Table};
use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A backend out of every table is kept this long for a drain to find it.
const KEEP_RETIRED: Duration = Duration::from_secs(120);

/// With nothing to serve and nothing configured for this long, the process exits.
const IDLE_EXIT: Duration = Duration::from_secs(10);

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

/// Everything one data plane holds.
pub(crate) struct Plane {
    pub services: Mutex<HashMap<String, Svc>>,
    routes: tokio::sync::Mutex<BTreeMap<String, Vec<(RouteState, Route)>>>,
    previews: tokio::sync::Mutex<HashMap<String, (PreviewState, Route)>>,
    since_ms: u64,
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
            since_ms: now_ms(),
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
            match wanted
                .iter()
                .find(|w| w.key == old.key && w.listen == old.listen && w.service == old.service)
            {
                Some(w) => {
                    route.set_timeout(Duration::from_millis(w.timeout_ms.max(1)));
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
            let limits = recast_proxy::conn::Limits::route(format!("route {name}"));
            let timeout = Duration::from_millis(w.timeout_ms.max(1));
            match Route::bind_with(w.listen, self.proxy_of(&w.service), timeout, limits).await {
                Ok(route) => kept.push((w, route)),
                Err(e) => failed.push(format!("route {name}: cannot listen on {}: {e}", w.listen)),
            }
        }
        if !kept.is_empty() {
            all.insert(project.to_string(), kept);
        }
        failed
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

    fn metrics(&self, service: &str) -> BTreeMap<i64, Counters> {
        let svcs = lock(&self.services);
        let Some(svc) = svcs.get(service) else {
            return BTreeMap::new();
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
        let reply = rt.block_on(plane.handle(req));
        if proto::write_msg(&mut writer, &reply).is_err() {
            return;
        }
    }
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

/// Run the data plane of `data_dir` until it is told to stop (SIGTERM/SIGINT) or has had
/// nothing to do for a while. Refuses when another one already answers on the directory.
pub fn run(data_dir: &std::path::Path) -> Result<(), String> {
    let dir = DataDir::new(data_dir);
    let signals = recast_runtime::signals::forward();
    if let Some(Reply::Hello { pid, .. }) = running(&dir) {
        return Err(format!(
            "a data plane already serves {} (pid {pid})",
            data_dir.display()
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plane = Arc::new(Plane::new());
    let listener = listen(&dir)?;
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
            eprintln!("recast dataplane: stopping");
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
