//! The control plane's side: find the data plane of a data directory (starting one when none
//! answers), tell it what to do, and remember what it was told — a data plane that comes back
//! empty (it crashed, or was stopped) is given everything again before anything new.

use crate::plane::running;
use crate::proto::{
    self, Config, Counters, PreviewState, Reply, Request, RouteState, ServiceState,
};
use recast_api::DataDir;
use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a request may take (a drain says its own).
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a data plane that was just started has to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    pid: u32,
}

pub struct Client {
    dir: DataDir,
    /// The `recast` executable a data plane is started from.
    exe: PathBuf,
    conn: Mutex<Option<Conn>>,
    /// What the data plane was told, to tell a new one again.
    told: Mutex<Config>,
    /// The data plane process that holds `told`.
    synced: Mutex<Option<u32>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn connect(
    dir: &DataDir,
    timeout: Duration,
) -> std::io::Result<(BufReader<UnixStream>, UnixStream)> {
    let s = UnixStream::connect(dir.dataplane_socket())?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let w = s.try_clone()?;
    Ok((BufReader::new(s), w))
}

fn exchange(
    r: &mut BufReader<UnixStream>,
    w: &mut UnixStream,
    req: &Request,
) -> Result<Reply, String> {
    proto::write_msg(w, req).map_err(|e| format!("talking to the data plane: {e}"))?;
    match proto::read_msg(r) {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err("the data plane closed the connection".into()),
        Err(e) => Err(format!("talking to the data plane: {e}")),
    }
}

impl Client {
    pub fn new(dir: DataDir, exe: PathBuf) -> Client {
        Client {
            dir,
            exe,
            conn: Mutex::new(None),
            told: Mutex::new(Config::default()),
            synced: Mutex::new(None),
        }
    }

    /// Make sure a data plane holds what it was told, starting one when none answers — unless
    /// it was told nothing that needs one (then one that exited stays so).
    pub fn keep(&self) -> Result<(), String> {
        if lock(&self.told).is_idle() {
            return Ok(());
        }
        self.hello().map(drop)
    }

    /// The running data plane's hello, starting one when none answers.
    pub fn hello(&self) -> Result<Reply, String> {
        self.call(&Request::Hello)
    }

    /// When the data plane serving the directory runs another executable than ours (recast
    /// was upgraded) or speaks another protocol, replace it by one of ours that takes its
    /// listening sockets over (no connection dropped). Returns what it did.
    pub fn upgrade(&self) -> Result<Option<String>, String> {
        let Some(Reply::Hello {
            protocol, pid, exe, ..
        }) = running(&self.dir)
        else {
            return Ok(None);
        };
        if protocol == proto::PROTOCOL && exe == proto::exe_identity() {
            return Ok(None);
        }
        *lock(&self.conn) = None;
        let mut child = self.spawn(&["--takeover"])?;
        std::thread::spawn(move || child.wait());
        let t0 = Instant::now();
        loop {
            match running(&self.dir) {
                Some(Reply::Hello { pid: new, .. }) if new != pid => {
                    return Ok(Some(format!(
                        "data plane upgraded without dropping a connection (pid {pid} handed its listeners to pid {new})"
                    )));
                }
                _ if t0.elapsed() > START_TIMEOUT => {
                    return Err(format!(
                        "the new data plane did not take over within {START_TIMEOUT:?}; see {}",
                        self.dir.dataplane_log().display()
                    ));
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Start a data plane from our executable and wait until it answers.
    fn start(&self) -> Result<(), String> {
        let mut child = self.spawn(&[])?;
        let log_path = self.dir.dataplane_log();
        let t0 = Instant::now();
        loop {
            if let Some(Reply::Hello { .. }) = running(&self.dir) {
                // Reaped whenever it exits; it outlives us otherwise.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the data plane exited at start ({status}); see {}",
                    log_path.display()
                ));
            }
            if t0.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the data plane did not answer within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `recast dataplane [args]` from our executable, in its own process group, its output
    /// appended to `dataplane.log`.
    fn spawn(&self, args: &[&str]) -> Result<std::process::Child, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let log_path = self.dir.dataplane_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        Command::new(&self.exe)
            .arg("dataplane")
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.root())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a terminal's Ctrl-C to the server is not for it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the data plane ({}): {e}", self.exe.display()))
    }

    /// A live connection in `conn`, to a data plane that holds everything we told (started and
    /// told again when needed).
    fn connected(&self, conn: &mut Option<Conn>) -> Result<(), String> {
        if conn.is_none() {
            let (mut reader, mut writer) = match connect(&self.dir, TIMEOUT) {
                Ok(c) => c,
                Err(_) => {
                    self.start()?;
                    connect(&self.dir, TIMEOUT).map_err(|e| format!("the data plane: {e}"))?
                }
            };
            let pid = match exchange(&mut reader, &mut writer, &Request::Hello)? {
                Reply::Hello { pid, .. } => pid,
                other => return Err(format!("the data plane answered {other:?} to hello")),
            };
            *conn = Some(Conn {
                reader,
                writer,
                pid,
            });
        }
        let c = conn.as_mut().ok_or("no data plane")?;
        let mut synced = lock(&self.synced);
        if *synced != Some(c.pid) {
            let told = lock(&self.told).clone();
            for req in replay(&told) {
                exchange(&mut c.reader, &mut c.writer, &req)?;
            }
            *synced = Some(c.pid);
        }
        Ok(())
    }

    /// Send a request on the shared connection; a data plane that went away is found (or
    /// started) again, told everything again, and asked once more.
    fn call(&self, req: &Request) -> Result<Reply, String> {
        let mut conn = lock(&self.conn);
        let mut last = String::new();
        for _ in 0..2 {
            self.connected(&mut conn)?;
            let c = conn.as_mut().ok_or("no data plane")?;
            match exchange(&mut c.reader, &mut c.writer, req) {
                Ok(Reply::Error { message }) => return Err(format!("the data plane: {message}")),
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    *conn = None;
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Replace a service's routing.
    pub fn set_service(&self, service: ServiceState) -> Result<(), String> {
        {
            let mut told = lock(&self.told);
            told.services.retain(|s| s.key != service.key);
            told.services.push(service.clone());
        }
        self.call(&Request::SetService { service }).map(drop)
    }

    /// Replace a project's routes; the error names the routes that could not listen.
    pub fn set_routes(&self, project: &str, routes: Vec<RouteState>) -> Result<(), String> {
        {
            let mut told = lock(&self.told);
            if routes.is_empty() {
                told.routes.remove(project);
            } else {
                told.routes.insert(project.to_string(), routes.clone());
            }
        }
        let req = Request::SetRoutes {
            project: project.to_string(),
            routes,
        };
        match self.call(&req)? {
            Reply::Routes { failed } if failed.is_empty() => Ok(()),
            Reply::Routes { failed } => {
                // What could not listen is not kept as told.
                if let Some(rs) = lock(&self.told).routes.get_mut(project) {
                    rs.retain(|r| !failed.iter().any(|f| f.contains(&r.listen.to_string())));
                }
                Err(failed.join("; "))
            }
            other => Err(format!("the data plane answered {other:?}")),
        }
    }

    /// Open (or with `None` close) a service's preview.
    pub fn set_preview(&self, service: &str, preview: Option<PreviewState>) -> Result<(), String> {
        {
            let mut told = lock(&self.told);
            match &preview {
                Some(p) => told.previews.insert(service.to_string(), p.clone()),
                None => told.previews.remove(service),
            };
        }
        let req = Request::SetPreview {
            service: service.to_string(),
            preview,
        };
        self.call(&req).map(drop).inspect_err(|_| {
            lock(&self.told).previews.remove(service);
        })
    }

    /// Close every preview the data plane has (after a restart no rollout runs, so none is
    /// wanted; an interrupted blue/green rollout may have left one).
    pub fn close_previews(&self) -> Result<Vec<String>, String> {
        if running(&self.dir).is_none() {
            return Ok(Vec::new());
        }
        let Reply::Config { config } = self.call(&Request::Config)? else {
            return Err("the data plane answered something else than its configuration".into());
        };
        let mut closed = Vec::new();
        for (service, p) in config.previews {
            self.set_preview(&service, None)?;
            closed.push(format!("closed the preview of {service} on {}", p.listen));
        }
        Ok(closed)
    }

    /// The instances the running data plane routes traffic to now (in a group of a service's
    /// table), by id; none when no data plane runs. A restarted control plane keeps them in
    /// rotation until it has settled, so what served at a crash goes on serving.
    pub fn routed(&self) -> Result<std::collections::BTreeSet<String>, String> {
        if running(&self.dir).is_none() {
            return Ok(Default::default());
        }
        let Reply::Config { config } = self.call(&Request::Config)? else {
            return Err("the data plane answered something else than its configuration".into());
        };
        Ok(config
            .services
            .iter()
            .flat_map(|s| s.groups.iter().flat_map(|g| g.backends.iter().cloned()))
            .collect())
    }

    /// Wait until a backend out of rotation has no request in flight (false at `timeout`).
    /// On its own connection, so other requests do not wait behind it.
    pub fn drain(&self, service: &str, backend: &str, timeout: Duration) -> Result<bool, String> {
        let (mut r, mut w) =
            connect(&self.dir, timeout + TIMEOUT).map_err(|e| format!("the data plane: {e}"))?;
        let req = Request::Drain {
            service: service.to_string(),
            backend: backend.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match exchange(&mut r, &mut w, &req)? {
            Reply::Drained { drained } => Ok(drained),
            other => Err(format!("the data plane answered {other:?} to a drain")),
        }
    }

    /// Every release's traffic counters of a service.
    pub fn metrics(&self, service: &str) -> Result<BTreeMap<i64, Counters>, String> {
        match self.call(&Request::Metrics {
            service: service.to_string(),
        })? {
            Reply::Metrics { releases } => Ok(releases.into_iter().collect()),
            other => Err(format!("the data plane answered {other:?} to metrics")),
        }
    }
}

/// What tells a new data plane everything in `told`: services first (routes and previews
/// name them).
fn replay(told: &Config) -> Vec<Request> {
    let services = told
        .services
        .iter()
        .map(|s| Request::SetService { service: s.clone() });
    let routes = told.routes.iter().map(|(p, rs)| Request::SetRoutes {
        project: p.clone(),
        routes: rs.clone(),
    });
    let previews = told.previews.iter().map(|(k, p)| Request::SetPreview {
        service: k.clone(),
        preview: Some(p.clone()),
    });
    services.chain(routes).chain(previews).collect()
}
