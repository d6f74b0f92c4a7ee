//! Build containers: one `run` step of an image build, in a throwaway container.
//!
//! Every layer is unpacked once, on its own and in overlayfs's format, under
//! `<data-dir>/layers/<digest hex>/`; a step's root is an overlay of its parents' layer
//! directories (top first) with a fresh upper directory, mounted read-write, so starting a
//! step costs a mount, not an unpack. The command runs through runc (its own state root,
//! `runc-build/`, so the server's recovery never mistakes a build for an orphaned instance)
//! with the same seccomp allowlist and limits as instances, Docker's default capabilities
//! (package managers chown and drop privileges), and the host's network unless the step says
//! `network = "none"`. The upper directory is then written as the step's layer
//! ([`recast_root::write_diff`]) and kept as that layer's directory for the next step.

use crate::{Error, InstanceSpec, Network, Result, Runtime, new_id, spec, sys};
use recast_image::oci::Descriptor;
use recast_image::step::{RunRequest, StepLayer, StepRunner};
use recast_root::{FileType, Root};
use recast_spec::StepNetwork;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::fs;
use std::io::{BufWriter, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

/// Docker's default capabilities (what `apt-get`, `useradd` and friends need as root) without
/// `CAP_NET_RAW`: a step on the host's network must not sniff or spoof it (the API token
/// crosses loopback).
const BUILD_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Memory a build step may use: compilers and package managers need more than a service.
const BUILD_MEMORY: u64 = 8 << 30;

/// Mount points runc needs; made in the upper directory when the image lacks them, and left
/// out of the layer.
const SCAFFOLD: &[&str] = &["proc", "sys", "dev"];

/// Lines of output quoted when a step fails, and the bytes of output kept to find them.
const TAIL_LINES: usize = 20;
const TAIL_BYTES: usize = 64 << 10;

impl StepRunner for Runtime {
    fn run<'a>(
        &self,
        req: &RunRequest<'_>,
        open: &dyn Fn(&Descriptor) -> recast_image::Result<Box<dyn Read + 'a>>,
    ) -> std::result::Result<StepLayer, String> {
        self.run_step(req, open).map_err(|e| e.to_string())
    }
}

/// A build container's directory; unmounted and removed (with its runc state) on drop.
struct BuildDir<'r> {
    rt: &'r Runtime,
    id: String,
    dir: PathBuf,
}

impl Drop for BuildDir<'_> {
    fn drop(&mut self) {
        self.rt.remove_build(&self.id, &self.dir);
    }
}

impl Runtime {
    /// Run one `run` step: mount its root over its parents' layers, run the command in a
    /// build container, and write what it changed as the step's layer.
    fn run_step<'a>(
        &self,
        req: &RunRequest<'_>,
        open: &dyn Fn(&Descriptor) -> recast_image::Result<Box<dyn Read + 'a>>,
    ) -> Result<StepLayer> {
        self.remove_stale_builds();
        let mut lowers = self.step_lowers(req, open)?;
        let id = new_id("build");
        let dir = self
            .data_dir
            .build(&id)
            .map_err(|e| Error::msg(format!("{}: {e}", req.what)))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let build = BuildDir {
            rt: self,
            id: id.clone(),
            dir: dir.clone(),
        };
        fs::write(dir.join("owner"), std::process::id().to_string())
            .map_err(|e| Error::io(format!("writing {}", dir.display()), e))?;
        for (d, mode) in [
            ("upper", 0o755),
            ("work", 0o700),
            ("rootfs", 0o755),
            ("empty", 0o755),
        ] {
            open_dir(&dir.join(d), mode)?;
        }
        if lowers.is_empty() {
            lowers.push(dir.join("empty"));
        }
        let rootfs = dir.join("rootfs");
        sys::mount_overlay(
            &lowers,
            &dir.join("upper"),
            &dir.join("work"),
            &rootfs,
            true,
        )
        .map_err(|e| {
            Error::io(
                format!(
                    "mounting the root of {} ({} layers)",
                    req.what,
                    lowers.len()
                ),
                e,
            )
        })?;
        let root = Root::open(&rootfs)
            .map_err(|e| Error::io(format!("opening the root of {}", req.what), e))?;
        let scaffold = add_scaffold(&root, req)?;
        let process = step_process(&root, &rootfs, req)?;
        let netns = step_netns(&dir, req)?;
        let ispec = step_instance_spec(&id, req, netns.is_some());
        let mut config = spec::runtime_spec(
            &ispec,
            &process,
            &rootfs,
            netns.as_deref(),
            &[],
            &self.cgroup_parent,
        );
        let host_files = if netns.is_none() {
            self.name_service_files(&root, &dir)?
        } else {
            Vec::new()
        };
        build_spec(&mut config, &host_files);
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap_or_default(),
        )
        .map_err(|e| Error::io(format!("writing the runtime spec of {}", req.what), e))?;
        self.run_container(&dir, &id, req)?;
        sys::unmount(&rootfs)
            .map_err(|e| Error::io(format!("unmounting {}", rootfs.display()), e))?;
        let upper = dir.join("upper");
        for m in scaffold {
            let _ = fs::remove_dir(upper.join(m));
        }
        let layer = self.write_step_layer(&id, &upper, req)?;
        // The upper directory is not kept as the layer's directory: it may hold what the layer
        // does not say (extended attributes, times, sockets), and layer directories are shared
        // by digest. The next step unpacks the layer itself.
        drop(build);
        Ok(layer)
    }

    /// The lower directories of a step's overlay: its parents' layer directories, top first,
    /// each unpacked if needed.
    fn step_lowers<'a>(
        &self,
        req: &RunRequest<'_>,
        open: &dyn Fn(&Descriptor) -> recast_image::Result<Box<dyn Read + 'a>>,
    ) -> Result<Vec<PathBuf>> {
        let mut lowers = Vec::new();
        for d in req.parents.iter().rev() {
            let l = self.layer_dir(d, open)?;
            // The same layer twice (two steps that changed nothing, `RUN true`): overlayfs
            // refuses a directory used twice (ELOOP), and the lower copy is shadowed entry for
            // entry by the upper one, so only the topmost is kept.
            if !lowers.contains(&l) {
                lowers.push(l);
            }
        }
        Ok(lowers)
    }

    /// Run the build container prepared in `dir` to its end; an error quotes the tail of its
    /// output when the command fails. The output is kept only as a bounded tail in memory: a
    /// step cannot fill the disk with it, and the tail is all a failure shows.
    fn run_container(&self, dir: &Path, id: &str, req: &RunRequest<'_>) -> Result<()> {
        let mut child = self
            .build_runc()
            .args(["run", "--bundle"])
            .arg(dir)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running runc for {}", req.what), e))?;
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                    out.extend(&buf[..n]);
                    let excess = out.len().saturating_sub(TAIL_BYTES);
                    out.drain(..excess);
                }
            })
        })
        .collect();
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for {}", req.what), e))?;
        for r in readers {
            let _ = r.join();
        }
        if !status.success() {
            let how = status.code().map_or_else(
                || "was killed".to_string(),
                |c| format!("exited with status {c}"),
            );
            let out = output.lock().unwrap_or_else(|p| p.into_inner());
            let bytes: Vec<u8> = out.iter().copied().collect();
            return Err(Error::msg(format!(
                "{} failed: `{}` {how}; its last output:\n{}",
                req.what,
                shown(&req.argv),
                tail(&bytes)
            )));
        }
        Ok(())
    }

    /// Write the step's upper directory as its layer tar (a file under the builds directory
    /// named for this process, so a crash leaves it to [`Self::remove_stale_builds`]).
    fn write_step_layer(&self, id: &str, upper: &Path, req: &RunRequest<'_>) -> Result<StepLayer> {
        let tar_path = self
            .data_dir
            .build_layer(id, std::process::id())
            .map_err(|e| Error::msg(format!("{}: {e}", req.what)))?;
        let layer = StepLayer { tar: tar_path };
        let file = fs::File::create(&layer.tar)
            .map_err(|e| Error::io(format!("creating {}", layer.tar.display()), e))?;
        let mut w = BufWriter::new(file);
        recast_root::write_diff(upper, req.epoch, &[], &mut w)
            .map_err(|e| Error::msg(format!("{}: writing its layer: {e}", req.what)))?;
        w.into_inner()
            .map_err(|e| e.into_error())
            .map_err(|e| Error::io(format!("writing {}", layer.tar.display()), e))?;
        Ok(layer)
    }

    /// The layer `d` unpacked on its own in overlay format, unpacking it if needed.
    fn layer_dir<'a>(
        &self,
        d: &Descriptor,
        open: &dyn Fn(&Descriptor) -> recast_image::Result<Box<dyn Read + 'a>>,
    ) -> Result<PathBuf> {
        let dir = self.data_dir.layer(d.digest.hex());
        if dir.exists() {
            return Ok(dir);
        }
        open_dir(&self.data_dir.layers(), 0o700)?;
        let tmp = self.data_dir.layer_tmp(d.digest.hex(), std::process::id());
        let _ = fs::remove_dir_all(&tmp);
        let what = format!("layer {}", d.digest);
        let result = (|| {
            open_dir(&tmp, 0o755)?;
            let root =
                Root::open(&tmp).map_err(|e| Error::io(format!("opening {}", tmp.display()), e))?;
            let r = recast_image::layer_reader(open(d)?, &d.media_type, d.size, &what);
            recast_root::unpack_layer_as_overlay(&root, r)
                .map_err(|e| Error::msg(format!("unpacking {what}: {e}")))
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if fs::rename(&tmp, &dir).is_err() && dir.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        Ok(dir)
    }

    /// Private copies of the host's resolver files, bound read-only over the image's own
    /// (only where the image has them, so nothing appears in the layer).
    fn name_service_files(&self, root: &Root, dir: &Path) -> Result<Vec<(PathBuf, String)>> {
        let mut out = Vec::new();
        for f in ["etc/resolv.conf", "etc/hosts"] {
            let host = Path::new("/").join(f);
            if root.kind(f).ok().flatten() != Some(FileType::RegularFile) || !host.is_file() {
                continue;
            }
            let copy = dir.join(f.replace('/', "-"));
            let bytes = fs::read(&host).unwrap_or_default();
            fs::write(&copy, bytes)
                .and_then(|()| fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)))
                .map_err(|e| Error::io(format!("writing {}", copy.display()), e))?;
            out.push((copy, format!("/{f}")));
        }
        Ok(out)
    }

    fn build_runc(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.runc);
        c.arg("--root").arg(self.data_dir.build_runc_root());
        c.stdin(Stdio::null());
        sys::child_umask(&mut c, spec::UMASK);
        c
    }

    /// Remove a build container's state, mounts, cgroup and directory.
    fn remove_build(&self, id: &str, dir: &Path) {
        // `runc run` deletes its container when the step's process exits: only a run cut short
        // leaves runc state (`runc-build/<id>`) behind. Asking runc anyway costs a Go process
        // start (about 10 ms) on every step.
        let gone = self.data_dir.build_runc_state(id).is_ok_and(|state| {
            matches!(fs::symlink_metadata(&state),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        });
        if !gone {
            let _ = self
                .build_runc()
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.remove_cgroups(id);
        let _ = sys::unmount(&dir.join("rootfs"));
        let _ = sys::unmount(&dir.join("netns"));
        let _ = fs::remove_dir_all(dir);
    }

    /// Builds whose process died (killed mid-step) leave a directory or a layer file: clean
    /// them.
    fn remove_stale_builds(&self) {
        let Ok(entries) = fs::read_dir(self.data_dir.builds()) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_suffix(".tar") {
                let pid = rest.rsplit_once('.').and_then(|(_, pid)| pid.parse().ok());
                if pid.is_some_and(|pid| !sys::alive(pid)) {
                    let _ = fs::remove_file(&p);
                }
                continue;
            }
            let owner: Option<i32> = fs::read_to_string(p.join("owner"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if owner.is_none_or(|pid| !sys::alive(pid)) {
                self.remove_build(&name, &p);
            }
        }
    }
}

/// Make the mount points runc needs ([`SCAFFOLD`]) where the image lacks them; returns those
/// made, to be left out of the layer.
fn add_scaffold(root: &Root, req: &RunRequest<'_>) -> Result<Vec<&'static str>> {
    let mut scaffold = Vec::new();
    for m in SCAFFOLD {
        match root.kind(m) {
            Ok(None) => {
                root.create_dir(m, 0o755)
                    .map_err(|e| Error::io(format!("creating /{m} for {}", req.what), e))?;
                scaffold.push(*m);
            }
            Ok(Some(FileType::Directory)) => {}
            Ok(Some(_)) => {
                return Err(Error::msg(format!(
                    "{}: /{m} in the image is not a directory; runc mounts there",
                    req.what
                )));
            }
            Err(e) => return Err(Error::io(format!("looking at /{m} for {}", req.what), e)),
        }
    }
    Ok(scaffold)
}

/// The step's process: its user resolved in the image, its working directory (created when
/// missing, as Docker's WORKDIR, and kept), and its environment with `PATH` and `HOME`
/// defaulted.
fn step_process(root: &Root, rootfs: &Path, req: &RunRequest<'_>) -> Result<spec::Process> {
    let (uid, gid, home) = spec::resolve_user(&req.user, rootfs)
        .map_err(|e| Error::msg(format!("{}: {e}", req.what)))?;
    let workdir = if req.workdir.is_empty() {
        "/"
    } else {
        &req.workdir
    };
    if root
        .kind(workdir)
        .map_err(|e| Error::io(format!("looking at workdir {workdir}"), e))?
        .is_none()
    {
        root.create_dir(workdir, 0o755)
            .map_err(|e| Error::io(format!("creating workdir {workdir}"), e))?;
    }
    let mut env = req.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.starts_with(&format!("{k}=")));
    if !has(&env, "PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    Ok(spec::Process {
        args: req.argv.clone(),
        env,
        cwd: workdir.to_string(),
        uid,
        gid,
    })
}

/// A fresh network namespace bound at `<dir>/netns` for a step with `network = "none"`;
/// `None` for a step on the host's network.
fn step_netns(dir: &Path, req: &RunRequest<'_>) -> Result<Option<PathBuf>> {
    match req.network {
        StepNetwork::None => {
            let p = dir.join("netns");
            fs::File::create(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            sys::create_netns(&p)
                .map_err(|e| Error::io(format!("creating the network of {}", req.what), e))?;
            Ok(Some(p))
        }
        StepNetwork::Host => Ok(None),
    }
}

/// The instance description a build container's runtime spec starts from: no port, volumes
/// or tmpfs, [`BUILD_MEMORY`], owned by "build".
fn step_instance_spec(id: &str, req: &RunRequest<'_>, private: bool) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        image: recast_image::Digest::of(b""),
        image_name: req.what.clone(),
        env: Default::default(),
        secret_env: Default::default(),
        secret_files: Vec::new(),
        port: 0,
        network: if private {
            Network::Private
        } else {
            Network::Host
        },
        volumes: Vec::new(),
        volume_scope: String::new(),
        memory: Some(BUILD_MEMORY),
        cpus: None,
        user_namespace: false,
        tmpfs: Vec::new(),
        owner: "build".into(),
        stop_signal: None,
        stop_timeout: std::time::Duration::ZERO,
        attach: None,
    }
}

/// Turn an instance's runtime spec into a build container's: a writable root, `/tmp` part of
/// the image (no tmpfs), Docker's default capabilities, the resolver files bound read-only.
fn build_spec(config: &mut Value, host_files: &[(PathBuf, String)]) {
    config["root"]["readonly"] = json!(false);
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|m| m["destination"] != "/tmp");
        for (src, dest) in host_files {
            mounts.push(json!({"destination": dest, "type": "bind", "source": src,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
        }
    }
    let caps = json!(BUILD_CAPS);
    config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    config["hostname"] = json!("recast-build");
}

fn open_dir(p: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .and_then(|()| fs::set_permissions(p, fs::Permissions::from_mode(mode)))
        .map_err(|e| Error::io(format!("creating {}", p.display()), e))
}

fn shown(argv: &[String]) -> String {
    let s = argv.join(" ");
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

/// The last lines of a step's output.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
