//! The control plane: applies specs, runs rollouts, supervises instances, serves the API.
//!
//! `serve` owns a data directory for the life of the process (an exclusive `flock` on
//! `server.lock`, which the kernel releases when the process dies, so it can never outlive it),
//! takes over what an earlier server left, and leaves its API address in `server.json` and its
//! token in `token` (mode 0600) for the CLI to find.

pub mod analysis;
pub mod api;
pub mod engine;
pub mod error;
pub mod guard;
pub mod logs;
mod oplog;
pub mod plan;
pub mod project;
pub mod record;
pub mod records;
pub mod rollout;
pub mod sealed;

use engine::Ctl;
pub use error::ServerError;
use recast_api::DataDir;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a running server can be found.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    pub addr: SocketAddr,
    pub pid: u32,
    /// Where its state lives (`State::location`: a file, or a URL without its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Open the state of `data_dir`: at `url` (`--state`), else `$RECAST_STATE`, else where the
/// server of the directory says its state is (`server.json`), else `<data-dir>/state.db`
/// (SQLite, the embedded default). A PostgreSQL URL is `postgres://USER@HOST:PORT/DB`, with
/// `?host=/socket/dir` for a Unix socket.
pub fn open_state(data_dir: &Path, url: Option<&str>) -> Result<recast_state::State, ServerError> {
    let from_env = std::env::var("RECAST_STATE").ok().filter(|v| !v.is_empty());
    let recorded = || {
        std::fs::read(info_path(data_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerInfo>(&b).ok())
            .and_then(|i| i.state)
            .filter(|s| s.contains("://"))
    };
    match url.map(str::to_string).or(from_env).or_else(recorded) {
        Some(u) => Ok(recast_state::State::open_url(&u)?),
        None => Ok(recast_state::State::open(
            &DataDir::new(data_dir).state_db(),
        )?),
    }
}

/// `server.json` of `data_dir` ([`DataDir::server_info`]).
pub fn info_path(data_dir: &Path) -> PathBuf {
    DataDir::new(data_dir).server_info()
}

/// `token` of `data_dir` ([`DataDir::token`]).
pub fn token_path(data_dir: &Path) -> PathBuf {
    DataDir::new(data_dir).token()
}

/// Read an existing token file: it must be private to its owner (no group or other permission
/// bits) and hold at least [`MIN_TOKEN`] characters, else it is refused with the file named
/// and what to do. `Ok(None)` when there is no such file.
pub fn read_token(p: &Path) -> Result<Option<String>, ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ServerError::Internal(format!(
                "reading the API token {}: {e}",
                p.display()
            )));
        }
    };
    if !meta.is_file() {
        return Err(ServerError::Conflict(format!(
            "the API token {} is not a regular file\n  hint: delete it; the server generates a new one when it starts",
            p.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ServerError::Conflict(format!(
            "the API token {} is readable or writable by other users (mode {mode:04o})\n  hint: run `chmod 600 {}`, or delete it and the server generates a new one when it starts",
            p.display(),
            p.display()
        )));
    }
    let t = std::fs::read_to_string(p).map_err(|e| {
        ServerError::Internal(format!("reading the API token {}: {e}", p.display()))
    })?;
    let t = t.trim();
    if t.is_empty() {
        return Err(ServerError::Conflict(format!(
            "the API token {} is empty\n  hint: delete it; the server generates a new one when it starts",
            p.display()
        )));
    }
    if t.chars().count() < MIN_TOKEN {
        return Err(ServerError::Conflict(format!(
            "the API token {} has {} characters; one shorter than {MIN_TOKEN} could be guessed\n  hint: delete it; the server generates a new one when it starts (48 hex digits)",
            p.display(),
            t.chars().count()
        )));
    }
    Ok(Some(t.to_string()))
}

/// The fewest characters an API token may have. The API does not throttle wrong tokens (a
/// lockout would let anyone who can reach the listener lock the operator out); guessing is
/// hopeless instead: a generated token has 192 random bits, and one an operator writes must
/// be at least this long.
pub const MIN_TOKEN: usize = 32;

/// The API token of a data directory, created (0600) on first use; an existing token file
/// that is not private or is too short is refused ([`read_token`]).
pub fn token(data_dir: &Path) -> Result<String, ServerError> {
    let p = token_path(data_dir);
    if let Some(t) = read_token(&p)? {
        return Ok(t);
    }
    new_token(&p)
        .map_err(|e| ServerError::Internal(format!("creating the API token {}: {e}", p.display())))
}

fn new_token(p: &Path) -> std::io::Result<String> {
    let mut buf = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    let t: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(t.as_bytes())?;
    Ok(t)
}

/// A started server: its address, and the control plane for callers in the same process.
pub struct Started {
    pub addr: SocketAddr,
    pub ctl: Arc<Ctl>,
    pub notes: Vec<String>,
    _lock: std::fs::File,
}

/// Open the data directory, recover, and start serving the API on `listen`. Returns once the
/// API is listening; everything keeps running on the current tokio runtime.
pub async fn start(
    data_dir: &Path,
    listen: SocketAddr,
    state: Option<&str>,
    host: engine::HostConfig,
) -> Result<Started, ServerError> {
    let internal =
        |what: String| move |e: std::io::Error| ServerError::Internal(format!("{what}: {e}"));
    std::fs::create_dir_all(data_dir)
        .map_err(internal(format!("creating {}", data_dir.display())))?;
    let layout = DataDir::new(data_dir);
    let lock = lock_data_dir(data_dir)?;
    let token = Arc::new(token(data_dir)?);
    let store = recast_image::Store::open(&layout.store())
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let rt = recast_runtime::Runtime::new(data_dir, store.clone())
        .map_err(|e| ServerError::Runtime(e.to_string()))?;
    let state = open_state(data_dir, state)?;
    let state_location = state.location().to_string();
    // The data plane runs from this same executable (`recast dataplane`).
    let exe = std::env::current_exe().map_err(internal("finding recast's executable".into()))?;
    let ctl = Ctl::new(data_dir, state, rt, store, exe, host);
    // Listening from here (connections wait until recovery is done), so the host registers
    // with its API address.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(internal(format!("the API cannot listen on {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(internal(format!("the API's address on {listen}")))?;
    ctl.register_host(addr).await?;
    let mut notes = ctl.claim_leases().await.map_err(ServerError::Runtime)?;
    // Renewing from here: recovery may take longer than a lease.
    ctl.spawn_lease_keeper()
        .map_err(internal("starting the lease keeper".into()))?;
    let plane = ctl.plane.clone();
    // A failed upgrade leaves the running data plane serving: said, never fatal.
    let upgraded = match tokio::task::spawn_blocking(move || plane.upgrade()).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Some(format!(
            "the data plane was not upgraded (it keeps serving): {e}"
        )),
        Err(e) => Some(format!("the data plane was not upgraded: {e}")),
    };
    notes.extend(ctl.recover().await.map_err(ServerError::Runtime)?);
    notes.extend(upgraded);
    ctl.serving_all().await;
    ctl.hosting
        .recovered
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::spawn(ctl.clone().keep_data_plane());
    tokio::spawn(ctl.clone().supervise());
    tokio::spawn(ctl.clone().guard());
    let info = serde_json::to_vec(&ServerInfo {
        addr,
        pid: std::process::id(),
        state: Some(state_location),
    })
    .unwrap_or_default();
    let tmp = layout.server_info_tmp();
    std::fs::write(&tmp, info)
        .and_then(|()| std::fs::rename(&tmp, info_path(data_dir)))
        .map_err(internal(format!(
            "writing {}",
            info_path(data_dir).display()
        )))?;
    let api_ctl = ctl.clone();
    tokio::spawn(async move {
        // Header-read and idle timeouts, a cap on open connections (503 beyond), and a backoff
        // when the process is out of descriptors: the proxy's rules (`recast_proxy::conn`).
        let limits = Arc::new(recast_proxy::conn::Limits::api());
        let gate = recast_proxy::conn::Gate::default();
        let mut acceptor =
            recast_proxy::conn::Acceptor::new(listener, format!("the API on {addr}"));
        loop {
            let (stream, _) = acceptor.accept().await;
            let Some((stream, permit)) = recast_proxy::conn::admit(&gate, &limits, stream) else {
                continue;
            };
            let (ctl, token, limits) = (api_ctl.clone(), token.clone(), limits.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let handler = move |req| api::handle(ctl.clone(), token.clone(), req);
                recast_proxy::conn::serve(stream, &limits, handler).await;
            });
        }
    });
    Ok(Started {
        addr,
        ctl,
        notes,
        _lock: lock,
    })
}

/// The data directory's `server.lock`, held for the life of the server; refused (naming the
/// running server) when another holds it.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, ServerError> {
    let lock_path = DataDir::new(data_dir).server_lock();
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| ServerError::Internal(format!("creating {}: {e}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        let other = std::fs::read(info_path(data_dir))
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerInfo>(&b).ok());
        return Err(ServerError::Conflict(format!(
            "a recast server is already running for data directory {}{}",
            data_dir.display(),
            other
                .map(|o| format!(" (pid {}, API at {})", o.pid, o.addr))
                .unwrap_or_default()
        )));
    }
    Ok(lock)
}

/// Forget the server's address on a clean stop (instances keep running for the next server),
/// and free its host name for the next start. Its leases stay its own: they name this host, so
/// the next server under its name takes them at once (a standby only once they expire).
pub fn stopped(data_dir: &Path, ctl: &Ctl) {
    let _ = std::fs::remove_file(info_path(data_dir));
    if let Err(e) = ctl
        .state
        .host_stopped(&ctl.hosting.config.name, &ctl.hosting.instance)
    {
        tracing::error!(host = %ctl.hosting.config.name, "recording the stop: {e}");
    }
}
