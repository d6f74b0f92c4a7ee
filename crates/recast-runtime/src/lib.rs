//! Instances: images run as isolated, read-only containers through the `runc` OCI runtime.
//!
//! An instance is created from an image digest: the image is unpacked once (verified) into a
//! shared lower directory; the instance gets an overlay on it (mounted read-only inside the
//! container), its own network namespace with loopback only (or the host's, with a free port),
//! a private `/tmp`, its declared volumes, a cgroup under `recast-<data dir hash>/` with memory
//! and pids limits, an allowlist seccomp profile, a minimal capability set and, if asked, a user
//! namespace. Nothing about a running instance is ever changed: it is created,
//! started, checked, stopped and deleted.
//!
//! Everything an instance owns lives under `<data-dir>/instances/<id>/`, and `instance.json`
//! there is written before anything else is created, so a new process can always find, take
//! over or clean up what an earlier one left (`Runtime::recover`).

mod buildstep;
pub mod health;
pub mod imagetest;
pub mod logs;
mod network;
mod rootfs;
mod secrets;
pub mod signals;
mod spec;
mod sys;

use recast_api::DataDir;
use recast_image::{Digest, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use network::{Attach, GATEWAY, ProjectNetwork};
pub use recast_spec::Network;
pub use secrets::SecretFile;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{doing}: {source}")]
    Io { doing: String, source: io::Error },
    #[error(transparent)]
    Image(#[from] recast_image::Error),
    #[error("{0}")]
    Msg(String),
}

impl Error {
    fn io(doing: String, source: io::Error) -> Error {
        Error::Io { doing, source }
    }
    fn msg(s: impl Into<String>) -> Error {
        Error::Msg(s.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Memory limit of an instance whose spec sets none (the cgroup's `memory` and `memory+swap`).
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// Most processes and threads an instance may have (the cgroup's `pids.max`).
pub const DEFAULT_PIDS: i64 = 1024;
/// With `user_namespace`, container ids `0..USERNS_SIZE` are host ids `USERNS_HOST_ID..`: root in
/// the instance is host uid 2000000000, an unprivileged user that owns nothing on the host — far
/// above the ranges `useradd` hands out in `/etc/subuid` (`SUB_UID_MIN` 100000 to `SUB_UID_MAX`
/// 600100000), so no other user's containers share these ids.
pub const USERNS_HOST_ID: u32 = 2_000_000_000;
pub const USERNS_SIZE: u32 = 65_536;

/// What to run. Its `Debug` never shows a secret value.
#[derive(Clone)]
pub struct InstanceSpec {
    /// Unique, `[a-z0-9-]`; see [`new_id`].
    pub id: String,
    /// The image, by manifest digest, and the name it was known by (for messages).
    pub image: Digest,
    pub image_name: String,
    /// Environment on top of the image's (`PORT` is added last).
    pub env: BTreeMap<String, String>,
    /// Environment whose values are secrets: given to the process, never written to disk in
    /// plain text (see `secrets.rs`). A secret variable replaces a plain one of the same name.
    pub secret_env: BTreeMap<String, String>,
    /// Files with secret content, mounted read-only at their `path` inside the instance from a
    /// tmpfs, owned by the instance's user.
    pub secret_files: Vec<SecretFile>,
    /// The port the app listens on inside a private namespace. With host networking, 0 means
    /// "pick a free port".
    pub port: u16,
    pub network: Network,
    /// Volume name → mount path; stored under `<data-dir>/volumes/<volume_scope>/<name>`.
    pub volumes: Vec<(String, String)>,
    /// `PROJECT/SERVICE`: whose volumes these are (needed only when there are volumes).
    pub volume_scope: String,
    /// Memory limit in bytes; [`DEFAULT_MEMORY`] when unset.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    /// Run in a user namespace: container root is host uid [`USERNS_HOST_ID`].
    pub user_namespace: bool,
    /// Empty private tmpfs directories mounted in the read-only root.
    pub tmpfs: Vec<String>,
    /// Who started it: "service:NAME", "run" or "test" — recovery decides by it.
    pub owner: String,
    /// The signal that asks it to stop (a name or number, `recast_spec::values::signal`);
    /// `None`: the image's `StopSignal`, else SIGTERM.
    pub stop_signal: Option<String>,
    /// How long [`Runtime::stop_gracefully`] waits after the stop signal before SIGKILL.
    pub stop_timeout: Duration,
    /// The project network it joins (private network only); `None`: loopback only.
    pub attach: Option<Attach>,
}

/// What recast remembers of an instance (`instance.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub image: Digest,
    pub image_name: String,
    pub owner: String,
    /// PID of the process that created it.
    pub owner_pid: u32,
    pub network: Network,
    /// The port the app listens on (in its namespace, or on the host).
    pub port: u16,
    /// Container init's PID (on the host), once started.
    pub pid: Option<i32>,
    /// "creating" until the container is started, then "running".
    pub phase: String,
    pub created_ms: u64,
    /// BLAKE3 (hex) of the `config.json` recast wrote for runc; the guard compares the file
    /// with it (absent for instances created before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_blake3: Option<String>,
    /// The signal number that asks it to stop (resolved when it was created).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: i32,
    /// Milliseconds between the stop signal and SIGKILL.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Its address on its project's network, and that project (`Attach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_network: Option<String>,
    /// The names of its secret environment variables (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_names: Vec<String>,
    /// Where secret files are bound inside it: mount points, not part of its image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_mounts: Vec<String>,
    #[serde(skip)]
    dir: PathBuf,
}

fn default_stop_signal() -> i32 {
    15
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

impl Instance {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }
    /// The last lines the instance wrote (stderr, then stdout), each quoted `  | `, with a
    /// hint when they say the read-only root refused a write; `None` when it wrote nothing.
    /// Read before the instance is deleted, so a failure can say why the program failed.
    pub fn last_output(&self) -> Option<String> {
        const LINES: usize = 10;
        let mut lines = Vec::new();
        for p in [self.stderr_log(), self.stdout_log()] {
            let text = read_tail(&p, 4 << 10);
            let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let start = all.len().saturating_sub(LINES);
            lines.extend(all[start..].iter().map(|l| format!("  | {l}")));
        }
        if lines.is_empty() {
            return None;
        }
        if lines.iter().any(|l| l.contains("Read-only file system")) {
            lines.push(
                "  hint: the root is read-only; give the directories the program writes a \
                 `tmpfs = [...]` (or a volume) in the service that runs the image"
                    .into(),
            );
        }
        Some(lines.join("\n"))
    }
    /// The files the runtime bound into it (`network::NAME_FILES` on a project network): mount
    /// points, not part of its image.
    pub fn bound_files(&self) -> &'static [&'static str] {
        if self.address.is_some() {
            &network::NAME_FILES
        } else {
            &[]
        }
    }

    /// Where its network namespace is pinned (a private-network instance's).
    pub fn netns(&self) -> PathBuf {
        self.dir.join("netns")
    }
    fn merged(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// The root filesystem as the instance sees it (its overlay), from the host.
    pub fn rootfs(&self) -> PathBuf {
        self.merged()
    }
    /// How long it has to stop after its stop signal.
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }
    /// Age since creation.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_ms))
    }
    /// Who it belongs to.
    pub fn owner(&self) -> Owner<'_> {
        Owner::parse(&self.owner)
    }
    /// A `recast run` or `recast test` instance whose process is gone: anyone may clean it up.
    pub fn abandoned(&self) -> bool {
        matches!(self.owner(), Owner::Run | Owner::Test) && !process_alive(self.owner_pid)
    }
}

/// Who started an instance (its `owner`): only its owner recovers it, and a throwaway instance
/// (`run`, `test`) also whoever finds its process gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// `service:PROJECT/SERVICE/RELEASE`: the server's.
    Service(&'a str),
    Run,
    Test,
    /// Anything else (an unreadable record): only the server cleans these up.
    Unknown,
}

impl<'a> Owner<'a> {
    pub fn parse(s: &'a str) -> Owner<'a> {
        match s {
            "run" => Owner::Run,
            "test" => Owner::Test,
            _ => match s.strip_prefix("service:") {
                Some(rest) if !rest.is_empty() => Owner::Service(rest),
                _ => Owner::Unknown,
            },
        }
    }
}

/// Whether a process with this PID exists (PID 0, never ours, counts as gone).
fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// The directory name prefix of an instance being created: `instances/.creating-<id>` holds
/// its record until it is renamed into place, so every `instances/<id>` has a record.
const CREATING: &str = DataDir::CREATING_PREFIX;

/// The state of an instance as the kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Running,
    /// Exited on its own or stopped; `status` is unknown when another process started it.
    Exited {
        status: Option<i32>,
    },
}

/// The runtime of one data directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    data_dir: DataDir,
    store: Store,
    runc: PathBuf,
    /// The cgroup parent of this data directory's instances: `recast-<12 hex>`.
    cgroup_parent: String,
    /// Most bytes a log file grows to before it is rotated (one older copy is kept).
    pub log_limit: u64,
}

/// What `recover` found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Running instances, now ours to check and stop.
    pub running: Vec<Instance>,
    /// Half-created or dead instances that were cleaned up: (id, why).
    pub cleaned: Vec<(String, String)>,
}

impl Runtime {
    /// The runtime for `data_dir`. Makes this process the reaper of its instances.
    pub fn new(data_dir: &Path, store: Store) -> Result<Runtime> {
        let runc = find_runc()?;
        let layout = DataDir::new(data_dir);
        for p in layout.private_dirs() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        for p in layout.private_dirs() {
            private_dir(&p)
                .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))?;
        }
        let canonical = fs::canonicalize(data_dir)
            .map_err(|e| Error::io(format!("resolving {}", data_dir.display()), e))?;
        let cgroup_parent = cgroup_parent_of(&canonical);
        sys::become_subreaper()
            .map_err(|e| Error::io("becoming the reaper of instances".into(), e))?;
        Ok(Runtime {
            data_dir: layout,
            store,
            runc,
            cgroup_parent,
            log_limit: 10 << 20,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data directory this runtime keeps its instances in.
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// The cgroup (in every hierarchy) under which this data directory's instances live, as
    /// `recast-<first 12 hex digits of the SHA-256 of the canonical data directory path>`, so
    /// that two installations on one machine never share one.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root").arg(self.data_dir.runc_root());
        c.stdin(Stdio::null());
        sys::child_umask(&mut c, spec::UMASK);
        c
    }

    /// Create and start an instance. On any failure everything created so far is removed.
    pub fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        if Owner::parse(&spec.owner) == Owner::Unknown {
            return Err(Error::msg(format!(
                "instance {} has no valid owner ({:?}): it must be \"run\", \"test\" or \"service:NAME\"",
                spec.id, spec.owner
            )));
        }
        let bad_id = |e| Error::msg(format!("cannot start instance {:?}: {e}", spec.id));
        secrets::check(spec)
            .map_err(|e| Error::msg(format!("cannot start instance {:?}: {e}", spec.id)))?;
        let dir = self.data_dir.instance(&spec.id).map_err(bad_id)?;
        let creating = self
            .data_dir
            .creating_instance(&spec.id, std::process::id())
            .map_err(bad_id)?;
        if dir.exists() {
            return Err(Error::msg(format!("instance {} already exists", spec.id)));
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&creating)
            .and_then(|()| fs::set_permissions(&creating, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::io(format!("creating instance {}", spec.id), e))?;
        let port = match (spec.network, spec.port) {
            (Network::Host, 0) => {
                free_port().map_err(|e| Error::io("finding a free port".into(), e))?
            }
            (_, p) => p,
        };
        let mut inst = Instance {
            id: spec.id.clone(),
            image: spec.image.clone(),
            image_name: spec.image_name.clone(),
            owner: spec.owner.clone(),
            owner_pid: std::process::id(),
            network: spec.network,
            port,
            pid: None,
            phase: "creating".into(),
            created_ms: now_ms(),
            config_blake3: None,
            stop_signal: default_stop_signal(),
            stop_timeout_ms: spec.stop_timeout.as_millis().min(u64::MAX as u128) as u64,
            address: None,
            project_network: None,
            secret_names: Vec::new(),
            secret_mounts: Vec::new(),
            dir: creating.clone(),
        };
        // The record first, then the directory under its name: a recovery never sees an
        // instance directory without knowing whose it is.
        if let Err(e) = save(&inst) {
            let _ = fs::remove_dir_all(&creating);
            return Err(e);
        }
        if let Err(e) = fs::rename(&creating, &dir) {
            let _ = fs::remove_dir_all(&creating);
            return Err(Error::io(format!("creating instance {}", spec.id), e));
        }
        inst.dir = dir;
        match self.create(spec, &mut inst) {
            Ok(()) => Ok(inst),
            Err(e) => {
                let _ = self.delete(&inst);
                Err(e)
            }
        }
    }

    /// Where volume `name` of `spec` lives: `volumes/<project>/<service>/<name>`, its scope
    /// being `PROJECT/SERVICE`; names that would leave the directory are refused.
    fn volume(&self, spec: &InstanceSpec, name: &str) -> Result<PathBuf> {
        let (project, service) = spec.volume_scope.split_once('/').ok_or_else(|| {
            Error::msg(format!(
                "instance {} has volume {name:?} but no PROJECT/SERVICE to keep it under (volume_scope {:?})",
                spec.id, spec.volume_scope
            ))
        })?;
        self.data_dir
            .volume(project, service, name)
            .map_err(|e| Error::msg(format!("volume {name:?} of instance {}: {e}", spec.id)))
    }

    /// Prepare and start instance `inst` of `spec`: its overlay root over the image, its
    /// network namespace, volumes and runtime spec, then `runc run`.
    fn create(&self, spec: &InstanceSpec, inst: &mut Instance) -> Result<()> {
        let dir = inst.dir.clone();
        if spec.user_namespace {
            self.let_userns_through(spec, &dir)?;
        }
        let lower = rootfs::ensure(&self.store, &self.data_dir, &spec.image, &spec.image_name)?;
        let of = format!("image {}", spec.image_name);
        let manifest = self.store.manifest(&spec.image, &of)?;
        let config = self.store.config(&manifest, &of)?;
        inst.stop_signal = stop_signal_of(&config, spec.stop_signal.as_deref())
            .map_err(|e| Error::msg(format!("cannot run {of}: {e}")))?;
        let process = spec::process_of(&config, spec, inst.port, &lower)
            .map_err(|e| Error::msg(format!("cannot run {of}: {e}")))?;
        let (host_uid, host_gid) = host_ids(process.uid, process.gid, spec.user_namespace)
            .map_err(|e| Error::msg(format!("cannot run {of}: {e}")))?;
        // The upper directory is `/` inside the instance (overlayfs takes the root's owner and
        // mode from it): 0755 whatever the umask, owned by the instance's root. `work` is only
        // used by the kernel; `rootfs` is covered by the overlay.
        let root_owner = if spec.user_namespace {
            USERNS_HOST_ID
        } else {
            0
        };
        for (d, mode) in [("upper", 0o755), ("work", 0o700), ("rootfs", 0o755)] {
            let p = dir.join(d);
            fs::DirBuilder::new()
                .mode(mode)
                .create(&p)
                .and_then(|()| fs::set_permissions(&p, fs::Permissions::from_mode(mode)))
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        if spec.user_namespace {
            let p = dir.join("upper");
            std::os::unix::fs::chown(&p, Some(root_owner), Some(root_owner)).map_err(|e| {
                Error::io(format!("giving {} to the instance's root", p.display()), e)
            })?;
        }
        sys::mount_overlay(
            std::slice::from_ref(&lower),
            &dir.join("upper"),
            &dir.join("work"),
            &inst.merged(),
            false,
        )
        .map_err(|e| {
            Error::io(
                format!("mounting the root filesystem of instance {}", inst.id),
                e,
            )
        })?;
        let netns = self.instance_netns(spec, inst)?;
        let joined = network::joins(spec);
        let names = match joined {
            Some(at) => self.join(inst, at)?,
            None => Vec::new(),
        };
        let volumes = self.instance_volumes(spec, inst, host_uid, host_gid)?;
        let tmpfs = tmpfs_mounts(&lower, &spec.tmpfs, spec.memory.unwrap_or(DEFAULT_MEMORY))?;
        let mut config = spec::runtime_spec(
            spec,
            &process,
            &inst.merged(),
            netns.as_deref(),
            &volumes,
            &self.cgroup_parent,
        );
        if let Some(mounts) = config["mounts"].as_array_mut() {
            mounts.extend(tmpfs);
            mounts.extend(names.iter().map(|(host, at)| {
                serde_json::json!({"destination": at, "type": "bind", "source": host, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
            }));
        }
        // With secrets, runc reads the real spec from a tmpfs (detached once the container
        // exists) and the instance directory keeps it with placeholders (`secrets.rs`).
        let mut staged = secrets::stage(spec, inst, &mut config, (host_uid, host_gid))?;
        // The spec holds the service's environment: private (0600). Its hash is kept in
        // instance.json, so the guard can tell when it is changed (`config_drift`).
        let config_bytes = match &staged {
            Some(s) => s.disk_config().to_vec(),
            None => serde_json::to_vec_pretty(&config).unwrap_or_default(),
        };
        inst.config_blake3 = Some(blake3::hash(&config_bytes).to_hex().to_string());
        write_private(&dir.join("config.json"), &config_bytes).map_err(|e| {
            Error::io(
                format!("writing the runtime spec of instance {}", inst.id),
                e,
            )
        })?;
        self.start_instance(spec, inst, &of, joined, staged.as_mut())?;
        inst.phase = "running".into();
        save(inst)
    }

    /// Start the container. A namespace runc makes (in a user namespace) is pinned once it
    /// exists, and plugged into the project network between `runc create` and `runc start`; one
    /// recast made is plugged in before `runc run`. Secrets (`staged`) are runc's bundle, and
    /// detached from the host as soon as runc has made the container.
    fn start_instance(
        &self,
        spec: &InstanceSpec,
        inst: &mut Instance,
        of: &str,
        joined: Option<&Attach>,
        staged: Option<&mut secrets::Staged>,
    ) -> Result<()> {
        let runc_makes_netns = spec.network == Network::Private && spec.user_namespace;
        let late = runc_makes_netns && joined.is_some();
        if let (Some(at), false) = (joined, late) {
            self.plug(inst, at)?;
        }
        let bundle = staged
            .as_ref()
            .map_or_else(|| inst.dir.clone(), |s| s.bundle().to_path_buf());
        let pid = self.start_runc(inst, &bundle, of, !late)?;
        inst.pid = Some(pid);
        if let Some(s) = staged {
            s.finish(&inst.id)?;
        }
        if runc_makes_netns {
            sys::pin_netns(pid, &inst.netns()).map_err(|e| {
                Error::io(
                    format!("pinning the network namespace of instance {}", inst.id),
                    e,
                )
            })?;
        }
        if let (Some(at), true) = (joined, late) {
            self.plug(inst, at)?;
            self.runc_start(inst, of)?;
        }
        Ok(())
    }

    /// Let the user namespace of `spec`'s instance reach its directory `dir`: runc sets up the
    /// root filesystem as the instance's root (host uid and gid USERNS_HOST_ID), so the
    /// directories on the way let that group (and only it) through.
    fn let_userns_through(&self, spec: &InstanceSpec, dir: &Path) -> Result<()> {
        let (root, instances) = (self.data_dir.root(), self.data_dir.instances());
        for d in [root, &instances, dir] {
            userns_traversable(d).map_err(|e| {
                Error::io(
                    format!(
                        "letting the user namespace of instance {} through {}",
                        spec.id,
                        d.display()
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// The network namespace runc is told to join: a private one made now, or `None` for
    /// the host's network or a private one runc makes inside the user namespace (its bind
    /// point is made now and pinned once the instance started).
    fn instance_netns(&self, spec: &InstanceSpec, inst: &Instance) -> Result<Option<PathBuf>> {
        if spec.network == Network::Private && spec.user_namespace {
            // runc makes this one inside the user namespace; it is pinned once started.
            create_private(&inst.netns())?;
            Ok(None)
        } else if spec.network == Network::Private {
            create_private(&inst.netns())?;
            sys::create_netns(&inst.netns()).map_err(|e| {
                Error::io(
                    format!("creating the network namespace of instance {}", inst.id),
                    e,
                )
            })?;
            Ok(Some(inst.netns()))
        } else {
            Ok(None)
        }
    }

    /// The instance's volumes as (host directory, mount point), each created when missing.
    fn instance_volumes(
        &self,
        spec: &InstanceSpec,
        inst: &Instance,
        host_uid: u32,
        host_gid: u32,
    ) -> Result<Vec<(PathBuf, String)>> {
        let mut volumes = Vec::new();
        // A volume belongs to the instance's user (as the host sees it) and is 0755, whatever
        // the umask; its parents stay private to root (runc opens bind sources on the host).
        let (vol_uid, vol_gid) = (host_uid, host_gid);
        for (name, mount) in &spec.volumes {
            let host = self.volume(spec, name)?;
            if !host.exists() {
                if let Some(parent) = host.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| Error::io(format!("creating volume {name}"), e))?;
                }
                // Made whole under a private name, then put in place without replacing one that
                // another instance of the service made at the same moment (that one is in use).
                let tmp = host.with_file_name(format!(".{name}.new-{}", inst.id));
                let _ = fs::remove_dir(&tmp);
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&tmp)
                    .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)))
                    .and_then(|()| std::os::unix::fs::chown(&tmp, Some(vol_uid), Some(vol_gid)))
                    .map_err(|e| Error::io(format!("creating volume {name}"), e))?;
                let placed = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::CWD,
                    &host,
                    rustix::fs::RenameFlags::NOREPLACE,
                );
                match placed {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {
                        let _ = fs::remove_dir(&tmp);
                    }
                    Err(e) => {
                        let _ = fs::remove_dir(&tmp);
                        return Err(Error::io(format!("creating volume {name}"), e.into()));
                    }
                }
            }
            if spec.user_namespace {
                // runc creates missing mount points as the instance's root, who may not write
                // the image's directories: create them now, never through a symlink.
                mount_point(&inst.merged(), mount).map_err(|e| {
                    Error::msg(format!(
                        "cannot mount volume {name} at {mount} in instance {}: {e}",
                        inst.id
                    ))
                })?;
            }
            volumes.push((host, mount.clone()));
        }
        Ok(volumes)
    }

    /// Start the instance prepared in its directory (its runtime spec in `bundle`) with `runc run
    /// --detach`, its output appended to its logs; returns its pid. A failure quotes the end of
    /// its stderr log. `runc run --detach` (`run`), or `runc create` to be followed by
    /// [`Runtime::runc_start`].
    fn start_runc(&self, inst: &Instance, bundle: &Path, of: &str, run: bool) -> Result<i32> {
        let dir = &inst.dir;
        let open_log = |p: PathBuf| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| Error::io(format!("opening {}", p.display()), e))
        };
        let out = self
            .runc()
            .args(if run {
                &["run", "--detach", "--bundle"][..]
            } else {
                &["create", "--bundle"][..]
            })
            .arg(bundle)
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .arg(&inst.id)
            .stdout(open_log(inst.stdout_log())?)
            .stderr(open_log(inst.stderr_log())?)
            .status()
            .map_err(|e| Error::io(format!("running runc for instance {}", inst.id), e))?;
        if !out.success() {
            let log = read_tail(&inst.stderr_log(), 16 << 10);
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            return Err(Error::msg(format!(
                "runc could not start instance {} of {of}: {}",
                inst.id,
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )));
        }
        let pid = fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| Error::msg(format!("runc left no pid for instance {}", inst.id)))?;
        // runc wrote it with the umask it runs under (the instances', 0022): private again.
        fs::set_permissions(dir.join("pid"), fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("making {} private", dir.join("pid").display()), e))?;
        Ok(pid)
    }

    /// Start an instance `runc create` made.
    fn runc_start(&self, inst: &Instance, of: &str) -> Result<()> {
        let out = self
            .runc()
            .args(["start", &inst.id])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| Error::io(format!("running runc for instance {}", inst.id), e))?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "runc could not start instance {} of {of}: {}",
                inst.id,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Whether the instance still runs; an exit is recorded with its status.
    pub fn state(&self, inst: &Instance) -> State {
        let status_file = inst.dir.join("exit-status");
        if let Ok(s) = fs::read_to_string(&status_file) {
            return State::Exited {
                status: s.trim().parse().ok(),
            };
        }
        let Some(pid) = inst.pid else {
            return State::Exited { status: None };
        };
        let status = match sys::try_wait(pid) {
            sys::Child::Running => return State::Running,
            sys::Child::Exited(code) => Some(code),
            sys::Child::NotOurs if sys::alive(pid) => return State::Running,
            sys::Child::NotOurs => None,
        };
        let _ = write_private(
            &status_file,
            status
                .map_or_else(|| "unknown".to_string(), |s| s.to_string())
                .as_bytes(),
        );
        State::Exited { status }
    }

    /// Its stop signal, then SIGKILL after its `stop_timeout`. Returns its state.
    pub fn stop_gracefully(&self, inst: &Instance) -> State {
        self.stop(inst, inst.stop_timeout())
    }

    /// Its stop signal (the spec's `stop_signal`, else the image's `StopSignal`, else
    /// SIGTERM), wait up to `grace` for the instance to exit, then SIGKILL. Returns its state.
    pub fn stop(&self, inst: &Instance, grace: Duration) -> State {
        if let (Some(pid), State::Running) = (inst.pid, self.state(inst)) {
            signal(pid, inst.stop_signal);
            let deadline = Instant::now() + grace;
            while self.state(inst) == State::Running && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.state(inst) == State::Running {
                signal(pid, 9);
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.state(inst) == State::Running && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        self.state(inst)
    }

    /// Remove everything of the instance but its volumes: container, cgroup, mounts, namespace,
    /// files. Kills it first if it still runs.
    pub fn delete(&self, inst: &Instance) -> Result<()> {
        // First, so that no later failure leaves secrets mounted on the host (it is detached
        // once the container exists; this covers a creator that died before).
        let secrets = secrets::dir_of(&inst.dir);
        sys::unmount(&secrets)
            .map_err(|e| Error::io(format!("unmounting {}", secrets.display()), e))?;
        if let Some(pid) = inst.pid
            && self.state(inst) == State::Running
        {
            signal(pid, 9);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.state(inst) == State::Running && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let out = self
            .runc()
            .args(["delete", "--force", &inst.id])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        if let Ok(o) = &out
            && !o.status.success()
        {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("does not exist") && !err.contains("not exist") {
                return Err(Error::msg(format!(
                    "runc could not delete instance {}: {}",
                    inst.id,
                    err.trim()
                )));
            }
        }
        self.remove_cgroups(&inst.id);
        self.release_address(inst);
        for m in [inst.merged(), inst.netns()] {
            sys::unmount(&m).map_err(|e| Error::io(format!("unmounting {}", m.display()), e))?;
        }
        fs::remove_dir_all(&inst.dir)
            .map_err(|e| Error::io(format!("removing {}", inst.dir.display()), e))
    }

    /// Open a TCP connection to the instance's port (inside its network namespace if private).
    pub fn connect(&self, inst: &Instance, timeout: Duration) -> io::Result<TcpStream> {
        let netns = (inst.network == Network::Private).then(|| inst.netns());
        connect_to(netns.as_deref(), inst.port, timeout)
    }

    /// Run `cmd` inside the instance; returns (exit status, combined output), or an error when
    /// it does not finish within `timeout`.
    pub fn exec(
        &self,
        inst: &Instance,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, String)> {
        // An instance with secrets has no bundle left: its process comes from a file in memory.
        let process = secrets::exec_process(inst, cmd)?;
        let mut runc = self.runc();
        match &process {
            Some(f) => runc.args(["exec", "--process", &secrets::fd_path(f), &inst.id]),
            None => runc.args(["exec", &inst.id]).args(cmd),
        };
        let mut child = runc
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running runc exec in instance {}", inst.id), e))?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::msg(format!(
                        "{:?} did not finish within {:?}",
                        cmd, timeout
                    )));
                }
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("reading exec output".into(), e))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Every instance this data directory knows of.
    pub fn list(&self) -> Vec<Instance> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(self.data_dir.instances()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(CREATING) {
                    continue;
                }
                if let Some(inst) = load(&e.path()) {
                    out.push(inst);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Find what an earlier process left, among the instances `ours` claims (by its owner and
    /// owner process, see [`Owner`]): running ones are returned for the caller to take over;
    /// half-created and dead ones are deleted. Instances not claimed are never touched, whatever
    /// their phase, so a `recast test` never deletes one a server is creating. Containers runc
    /// knows of that have no instance directory any more are deleted too (an instance's
    /// directory always exists before its container and outlives it).
    pub fn recover(&self, ours: impl Fn(&Instance) -> bool) -> Result<Recovered> {
        let mut r = Recovered::default();
        let known: Vec<String> = fs::read_dir(self.data_dir.instances())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for id in known {
            // A name read from the directory is one plain component.
            let dir = self.data_dir.instances().join(&id);
            if let Some(rest) = id.strip_prefix(CREATING) {
                // Being created: its record is written, then the directory is renamed. Only
                // the creator's death makes it garbage — known from the record, or (when the
                // creator died before writing it) from the creator's pid in the name.
                let creator = rest.rsplit_once('.').and_then(|(_, pid)| pid.parse().ok());
                let dead = match load(&dir) {
                    Some(i) => ours(&i) && !process_alive(i.owner_pid),
                    None => creator.is_some_and(|pid| !process_alive(pid)),
                };
                if dead {
                    let _ = fs::remove_dir_all(&dir);
                    r.cleaned.push((id, "half-created".into()));
                }
                continue;
            }
            let Some(inst) = load(&dir) else {
                // No readable record (records are written before the directory gets its
                // name, so this is damage): nothing running can be identified.
                let ghost = Instance {
                    id: id.clone(),
                    image: Digest::of(b""),
                    image_name: String::new(),
                    owner: String::new(),
                    owner_pid: 0,
                    network: Network::Private,
                    port: 0,
                    pid: None,
                    phase: "creating".into(),
                    created_ms: 0,
                    config_blake3: None,
                    stop_signal: default_stop_signal(),
                    stop_timeout_ms: 0,
                    address: None,
                    project_network: None,
                    secret_names: Vec::new(),
                    secret_mounts: Vec::new(),
                    dir,
                };
                // Whose it was is unknown: only a caller that claims unknown owners (the
                // server) cleans it up.
                if ours(&ghost) {
                    self.delete(&ghost)?;
                    r.cleaned.push((id, "no instance record".into()));
                }
                continue;
            };
            if !ours(&inst) {
                continue;
            }
            let why = match (inst.phase.as_str(), self.state(&inst)) {
                ("running", State::Running) => {
                    r.running.push(inst);
                    continue;
                }
                ("running", State::Exited { status }) => format!(
                    "exited (status {})",
                    status.map_or_else(|| "unknown".into(), |s| s.to_string())
                ),
                _ => "half-created".to_string(),
            };
            self.delete(&inst)?;
            r.cleaned.push((id, why));
        }
        // Containers without an instance directory.
        if let Ok(entries) = fs::read_dir(self.data_dir.runc_root()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                if !self.data_dir.instances().join(&id).exists() {
                    let _ = self
                        .runc()
                        .args(["delete", "--force", &id])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    self.remove_cgroups(&id);
                    r.cleaned
                        .push((id, "container without an instance record".into()));
                }
            }
        }
        // Addresses leased by instances that are gone (a crash between delete's steps).
        self.release_stale_addresses();
        Ok(r)
    }

    /// Note the time of new output (see [`logs`]) and keep each log file under `log_limit`:
    /// past it, its last `log_limit` bytes are copied to `*.1` and it is truncated (the
    /// instance appends, so it keeps writing at the new end).
    pub fn rotate_logs(&self, inst: &Instance) {
        for p in [inst.stdout_log(), inst.stderr_log()] {
            logs::mark_and_rotate(&p, self.log_limit);
        }
    }
}

fn save(inst: &Instance) -> Result<()> {
    let p = inst.dir.join("instance.json");
    let tmp = inst.dir.join("instance.json.tmp");
    write_private(&tmp, &serde_json::to_vec(inst).unwrap_or_default())
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, &p).map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

fn load(dir: &Path) -> Option<Instance> {
    let bytes = fs::read(dir.join("instance.json")).ok()?;
    let mut inst: Instance = serde_json::from_slice(&bytes).ok()?;
    inst.dir = dir.to_path_buf();
    Some(inst)
}

/// The most recast reads of an instance's `config.json`.
const MAX_PROC_FILE: u64 = 8 << 20;

/// The last `max` bytes of the file `p` as text (empty if unreadable).
fn read_tail(p: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(p) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f
            .seek(SeekFrom::Start(len.saturating_sub(max)))
            .and_then(|_| f.take(max).read_to_end(&mut bytes));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn signal(pid: i32, sig: i32) {
    let _ = sys::kill(pid, sig);
}

impl Runtime {
    /// Remove the instance's cgroup in every hierarchy (runc normally does; this covers crashes).
    fn remove_cgroups(&self, id: &str) {
        let mut dirs = vec![Path::new("/sys/fs/cgroup").join(&self.cgroup_parent)];
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            dirs.extend(
                hierarchies
                    .flatten()
                    .map(|h| h.path().join(&self.cgroup_parent)),
            );
        }
        for d in dirs {
            let p = d.join(id);
            if p.exists() {
                let _ = fs::remove_dir(&p);
            }
        }
    }
}

/// The `tmpfs` mounts of an instance: each keeps the owner and mode of the image's directory
/// there (so a daemon's own runtime directory stays its own), or is 1777 where the image has
/// none; each is bounded like `/tmp`.
fn tmpfs_mounts(lower: &Path, paths: &[String], memory: u64) -> Result<Vec<serde_json::Value>> {
    let size = format!("size={}", (memory / 4).max(4 << 20));
    let root = recast_root::Root::open(lower)
        .map_err(|e| Error::io(format!("opening {}", lower.display()), e))?;
    let mut out = Vec::new();
    for p in paths {
        let st = root
            .stat(p)
            .map_err(|e| Error::io(format!("looking at tmpfs path {p} in the image"), e))?;
        let owner = match st {
            Some(st)
                if recast_root::FileType::from_raw_mode(st.st_mode)
                    == recast_root::FileType::Directory =>
            {
                format!(
                    "mode={:o},uid={},gid={}",
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid
                )
            }
            Some(_) => {
                return Err(Error::msg(format!(
                    "tmpfs path {p} is not a directory in the image"
                )));
            }
            None => "mode=1777".to_string(),
        };
        out.push(
            serde_json::json!({"destination": p, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", owner, size]}),
        );
    }
    Ok(out)
}

/// The host uid and gid of an instance's user (the image's `User`): in a user namespace, only
/// ids inside the mapped range, as an id beyond it would give its volumes to an unrelated host
/// user (and runc would refuse it anyway, after the volumes were made).
fn host_ids(uid: u32, gid: u32, user_namespace: bool) -> Result<(u32, u32), String> {
    if !user_namespace {
        return Ok((uid, gid));
    }
    if uid >= USERNS_SIZE || gid >= USERNS_SIZE {
        return Err(format!(
            "its user {uid}:{gid} is outside the instance's user namespace (ids 0 to {})",
            USERNS_SIZE - 1
        ));
    }
    Ok((USERNS_HOST_ID + uid, USERNS_HOST_ID + gid))
}

/// The stop signal's number: `wanted` (the spec's), else the image config's `StopSignal`,
/// else SIGTERM. An image whose `StopSignal` is not a signal is refused, as Docker does.
fn stop_signal_of(config: &serde_json::Value, wanted: Option<&str>) -> Result<i32, String> {
    if let Some(w) = wanted {
        return recast_spec::values::signal(w)
            .map(|(_, n)| n)
            .map_err(|e| format!("its stop_signal: {e}"));
    }
    match config["config"]["StopSignal"].as_str() {
        Some(s) if !s.is_empty() => recast_spec::values::signal(s)
            .map(|(_, n)| n)
            .map_err(|e| format!("its config's StopSignal: {e}")),
        _ => Ok(default_stop_signal()),
    }
}

/// `recast-` and the first 12 hex digits of the SHA-256 of the (canonical) data directory path.
fn cgroup_parent_of(canonical: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hex = Digest::of(canonical.as_os_str().as_bytes())
        .hex()
        .to_string();
    format!("recast-{}", &hex[..12])
}

/// Let group USERNS_HOST_ID (a user-namespaced instance's root) through the directory `dir`
/// when others may not: chgrp and g+x, nothing else (no listing, no reading).
fn userns_traversable(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir)?;
    let mode = m.mode() & 0o7777;
    if mode & 0o001 != 0 || (m.gid() == USERNS_HOST_ID && mode & 0o010 != 0) {
        return Ok(());
    }
    std::os::unix::fs::chown(dir, None, Some(USERNS_HOST_ID))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o010))
}

/// Make `dir` root's only (0700), or 0710 if its group is USERNS_HOST_ID (`userns_traversable`).
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = if fs::metadata(dir)?.gid() == USERNS_HOST_ID {
        0o710
    } else {
        0o700
    };
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Write `bytes` to a new (or truncated) file readable by root only, whatever the umask.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

/// Create an empty file readable by root only (a namespace pin's mount point).
fn create_private(path: &Path) -> Result<()> {
    write_private(path, b"").map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Make sure `mount` (an absolute path inside the instance) exists as a directory in the root
/// filesystem `root`, creating missing components; a component that is a symlink or not a
/// directory is refused, so nothing is ever created outside `root`. Nothing else writes to the
/// tree meanwhile (the image is read-only, the instance has not started).
fn mount_point(root: &Path, mount: &str) -> Result<(), String> {
    let mut p = root.to_path_buf();
    let mut inside = String::new();
    for c in mount.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            return Err("the path has a \"..\" component".into());
        }
        p.push(c);
        inside.push('/');
        inside.push_str(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("{inside} is a symlink in the image"));
            }
            Ok(_) => return Err(format!("{inside} is not a directory in the image")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
                .mode(0o755)
                .create(&p)
                .map_err(|e| format!("creating {inside}: {e}"))?,
            Err(e) => return Err(format!("{inside}: {e}")),
        }
    }
    Ok(())
}

const RUNC_PROGRAM: &str = "runc";

fn find_runc() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RECAST_RUNC") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
    ]) {
        // The program's name in a directory of PATH (not a data-directory path).
        let p = Path::new(dir).join(RUNC_PROGRAM);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::msg(
        "runc is not installed\n  hint: apt-get install runc (or set RECAST_RUNC to its path)",
    ))
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A new instance id: `prefix-` and 8 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut buf = [0u8; 4];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        // No random source (no descriptor left, no /dev): never a fixed id. The time, the
        // process and a counter make it unique within this process and unlikely to repeat.
        use std::hash::{Hash, Hasher};
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::hash::DefaultHasher::new();
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .hash(&mut h);
        std::process::id().hash(&mut h);
        COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .hash(&mut h);
        std::thread::current().id().hash(&mut h);
        buf = (h.finish() as u32).to_be_bytes();
    }
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "{clean}-{}",
        buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// What the kernel says an instance runs: its processes and its mounts.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Every process of the instance (its cgroup) and the executable it runs.
    pub processes: Vec<recast_guard::process::Exe>,
    /// Mount points (inside the instance) mounted read-write.
    pub writable: Vec<String>,
    /// The OCI runtime's binary on the host: `runc exec` puts its own `runc init` (this file,
    /// or a sealed memfd copy) in the instance before it executes the command.
    pub runtime: PathBuf,
}

impl Runtime {
    /// Read the instance's processes (from its cgroup) and its mounts (from its init's
    /// `mountinfo`, read again only when its mount namespace changed — see `watch`), bounded:
    /// the instance controls what they hold.
    pub fn facts(
        &self,
        inst: &Instance,
        watch: &mut recast_guard::watch::InstanceWatch,
    ) -> Result<Facts> {
        let pid = inst
            .pid
            .ok_or_else(|| Error::msg(format!("instance {} has no process", inst.id)))?;
        let writable = watch.writable_mounts(pid).map_err(|e| {
            Error::io(
                format!("reading /proc/{pid}/mountinfo of instance {}", inst.id),
                e,
            )
        })?;
        // The instance's cgroup: `/sys/fs/cgroup/<parent>/<id>` (v2), or the same under a v1
        // hierarchy; `pids` is always limited, so runc always makes it there.
        let cgroup = format!("/{}/{}", self.cgroup_parent, inst.id);
        let dirs: Vec<PathBuf> = ["", "pids", "memory", "unified"]
            .iter()
            .map(|h| {
                Path::new("/sys/fs/cgroup")
                    .join(h)
                    .join(&self.cgroup_parent)
                    .join(&inst.id)
            })
            .filter(|d| d.join("cgroup.procs").exists())
            .take(1)
            .collect();
        let processes = if dirs.is_empty() {
            // No cgroup found (it should exist while the instance runs): at least its init.
            recast_guard::process::of_pids(&[pid], &cgroup)
        } else {
            recast_guard::process::processes(&dirs, &cgroup)
        };
        Ok(Facts {
            processes,
            writable,
            runtime: self.runc.clone(),
        })
    }

    /// Whether the instance's runtime spec (`config.json`) is still what recast wrote: `None`
    /// when it is (or when no hash was recorded), else what differs.
    pub fn config_drift(&self, inst: &Instance) -> Option<String> {
        use std::io::Read;
        let want = inst.config_blake3.as_ref()?;
        let p = inst.dir.join("config.json");
        let mut bytes = Vec::new();
        match fs::File::open(&p).and_then(|f| f.take(MAX_PROC_FILE).read_to_end(&mut bytes)) {
            Ok(_) if blake3::hash(&bytes).to_hex().as_str() == want => None,
            Ok(_) => Some("changed since the instance was created".into()),
            Err(e) => Some(format!("unreadable ({e})")),
        }
    }
}

/// An IPv4 TCP socket made inside the network namespace pinned at `netns`: the data plane
/// listens with it on a project network.
pub fn tcp_socket_in(netns: &Path) -> io::Result<std::os::fd::OwnedFd> {
    sys::tcp_socket_in(netns)
}

/// An IPv4 UDP socket made inside the network namespace pinned at `netns` (the resolver of a
/// project network).
pub fn udp_socket_in(netns: &Path) -> io::Result<std::os::fd::OwnedFd> {
    sys::udp_socket_in(netns)
}

/// Connect to `port` on 127.0.0.1 inside the network namespace pinned at `netns` (the host's
/// when `None`), within `timeout`. What the proxy uses to reach an instance.
pub fn connect_to(netns: Option<&Path>, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match netns {
        Some(ns) => sys::connect_in(ns, addr, timeout),
        None => TcpStream::connect_timeout(&addr, timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image's `User` beyond the user namespace's range never becomes a host id.
    #[test]
    fn user_namespace_ids_stay_in_the_mapped_range() {
        assert_eq!(host_ids(70000, 5, false), Ok((70000, 5)));
        assert_eq!(
            host_ids(1000, 100, true),
            Ok((USERNS_HOST_ID + 1000, USERNS_HOST_ID + 100))
        );
        for (u, g) in [(USERNS_SIZE, 0), (0, USERNS_SIZE), (u32::MAX, u32::MAX)] {
            let e = host_ids(u, g, true).expect_err("outside the map");
            assert!(e.contains("outside the instance's user namespace"), "{e}");
        }
    }
}
