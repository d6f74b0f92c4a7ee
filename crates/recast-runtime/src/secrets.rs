//! Secrets of an instance: environment variables and files whose plain text never reaches a disk.
//!
//! An instance with secrets is created from a bundle on a private tmpfs mounted at
//! `instances/<id>/secrets` (root's only, or its group the user namespace's root): the real
//! runtime spec (`config.json`, secret values in `process.env`) and one file per secret file,
//! owned by the instance's user. Each secret file is bound read-only into the instance. Once
//! runc has made the container (its mounts exist in the container's mount namespace), the
//! tmpfs's `config.json` is removed and the tmpfs is detached from the host: only the instance's
//! bind mounts keep it alive, and it goes away with the instance. The instance directory's
//! `config.json` is the same spec with each secret value replaced by [`PLACEHOLDER`]: it is what
//! the guard hashes (`config_drift`), and what `runc exec` starts from, given the secret values
//! through a process file in memory (`exec_process`). runc keeps no process environment in its
//! state (`runc/<id>/state.json` holds the container's configuration, not its process).

use crate::{Error, Instance, InstanceSpec, Result};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of a secret file whose spec sets none: readable by its owner only.
pub const DEFAULT_MODE: u32 = 0o400;
/// What the instance directory's `config.json` holds instead of a secret value.
pub const PLACEHOLDER: &str = "(secret)";
/// The tmpfs's directory in the instance directory (a fixed name).
const DIR: &str = "secrets";
/// The real runtime spec's name in the tmpfs (runc reads `config.json` from its bundle).
const CONFIG: &str = "config.json";
/// The most bytes of secrets (files and environment) one instance may have.
const MAX_TOTAL: usize = 16 << 20;

/// A file with secret content, mounted read-only at `path` inside the instance from a tmpfs,
/// owned by the instance's user.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// Absolute and normalised, inside the instance.
    pub path: String,
    pub data: Vec<u8>,
    /// Permission bits (no setuid, setgid or sticky bit); [`DEFAULT_MODE`] by default.
    pub mode: u32,
}

impl SecretFile {
    /// `data` at `path`, mode [`DEFAULT_MODE`].
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> SecretFile {
        SecretFile {
            path: path.into(),
            data: data.into(),
            mode: DEFAULT_MODE,
        }
    }
}

/// Never the content.
impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretFile")
            .field("path", &self.path)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Every field but the secret values (the names of secret variables are shown).
impl fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("id", &self.id)
            .field("image", &self.image)
            .field("image_name", &self.image_name)
            .field("env", &self.env)
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .field("secret_files", &self.secret_files)
            .field("port", &self.port)
            .field("network", &self.network)
            .field("volumes", &self.volumes)
            .field("volume_scope", &self.volume_scope)
            .field("memory", &self.memory)
            .field("cpus", &self.cpus)
            .field("user_namespace", &self.user_namespace)
            .field("tmpfs", &self.tmpfs)
            .field("owner", &self.owner)
            .field("stop_signal", &self.stop_signal)
            .field("stop_timeout", &self.stop_timeout)
            .field("attach", &self.attach)
            .finish()
    }
}

/// Whether `spec` has secrets (then its instance's bundle is a tmpfs).
fn has_secrets(spec: &InstanceSpec) -> bool {
    !spec.secret_env.is_empty() || !spec.secret_files.is_empty()
}

/// Check the secrets of `spec` before anything is made: names of variables, paths and modes of
/// files, sizes. A problem names the secret, never its value.
pub(crate) fn check(spec: &InstanceSpec) -> Result<(), String> {
    let mut total = 0usize;
    for (name, value) in &spec.secret_env {
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(format!(
                "secret environment variable {name:?} is not a valid name"
            ));
        }
        if name == "PORT" {
            return Err(
                "secret environment variable PORT would hide the port recast gives the instance"
                    .into(),
            );
        }
        if value.contains('\0') {
            return Err(format!(
                "secret environment variable {name} holds a NUL byte"
            ));
        }
        total += name.len() + value.len();
    }
    let mut paths = BTreeSet::new();
    for file in &spec.secret_files {
        check_path(&file.path).map_err(|e| format!("secret file {:?}: {e}", file.path))?;
        if !paths.insert(file.path.as_str()) {
            return Err(format!("secret file {} is given twice", file.path));
        }
        if file.mode & !0o777 != 0 {
            return Err(format!(
                "secret file {}: mode {:o} has bits beyond rwxrwxrwx",
                file.path, file.mode
            ));
        }
        total += file.data.len();
    }
    if total > MAX_TOTAL {
        return Err(format!(
            "the secrets of instance {} hold {total} bytes, more than {MAX_TOTAL}",
            spec.id
        ));
    }
    Ok(())
}

/// A secret file's path: absolute, normalised (no empty, `.` or `..` component, no trailing
/// `/`), not `/` and not under `/proc`, `/sys` or `/dev` (the kernel's, not the image's).
fn check_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path is not absolute".into());
    };
    if rest.is_empty() {
        return Err("the path is the root directory".into());
    }
    if path.contains('\0') {
        return Err("the path holds a NUL byte".into());
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("the path is not normalised (empty, \".\" or \"..\" component)".into());
    }
    let first = rest.split('/').next().unwrap_or_default();
    if ["proc", "sys", "dev"].contains(&first) {
        return Err(format!("the path is under /{first}"));
    }
    Ok(())
}

/// The tmpfs's mount point in the instance directory `dir`.
pub(crate) fn dir_of(inst_dir: &Path) -> PathBuf {
    inst_dir.join(DIR)
}

/// The tmpfs of an instance being created: detached from the host when dropped (on every error
/// path too), or by [`Staged::finish`] once runc has made the container.
pub(crate) struct Staged {
    dir: PathBuf,
    mounted: bool,
    /// The runtime spec with placeholders, for the instance directory.
    disk_config: Vec<u8>,
}

impl Staged {
    /// The bundle runc is given: the tmpfs, holding the real `config.json`.
    pub(crate) fn bundle(&self) -> &Path {
        &self.dir
    }

    /// The runtime spec to write in the instance directory (secret values replaced).
    pub(crate) fn disk_config(&self) -> &[u8] {
        &self.disk_config
    }

    /// runc has made the container: remove the real spec and detach the tmpfs from the host
    /// (the container's bind mounts keep the secret files alive).
    pub(crate) fn finish(&mut self, id: &str) -> Result<()> {
        let config = self.dir.join(CONFIG);
        fs::remove_file(&config).map_err(|e| {
            Error::io(
                format!("removing the runtime spec of instance {id} from its secrets tmpfs"),
                e,
            )
        })?;
        crate::sys::unmount(&self.dir).map_err(|e| {
            Error::io(
                format!("unmounting the secrets tmpfs of instance {id} from the host"),
                e,
            )
        })?;
        self.mounted = false;
        let _ = fs::remove_dir(&self.dir);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.mounted {
            let _ = fs::remove_file(self.dir.join(CONFIG));
            let _ = crate::sys::unmount(&self.dir);
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

/// Put the secrets of `spec` in place for runc: a tmpfs at `instances/<id>/secrets` with the
/// secret files (owned by `host_uid:host_gid`) and the real spec, bind mounts of the files in
/// `config`, the names in `inst`. `None` when `spec` has no secrets (nothing is mounted).
pub(crate) fn stage(
    spec: &InstanceSpec,
    inst: &mut Instance,
    config: &mut Value,
    (host_uid, host_gid): (u32, u32),
) -> Result<Option<Staged>> {
    if !has_secrets(spec) {
        return Ok(None);
    }
    // runc is run from the tmpfs: every path of the spec must not depend on the bundle.
    if !Path::new(config["root"]["path"].as_str().unwrap_or_default()).is_absolute() {
        return Err(Error::msg(format!(
            "instance {} has secrets but its data directory {} is not an absolute path",
            inst.id,
            inst.dir.display()
        )));
    }
    let dir = dir_of(&inst.dir);
    let mut staged = mount_tmpfs(spec, &dir, &inst.id)?;
    let mut binds = Vec::new();
    for (i, file) in spec.secret_files.iter().enumerate() {
        let host = dir.join(format!("file-{i}"));
        write_file(&host, file, host_uid, host_gid).map_err(|e| {
            Error::io(
                format!("writing secret file {} of instance {}", file.path, inst.id),
                e,
            )
        })?;
        if spec.user_namespace {
            // runc makes missing mount points as the instance's root, who may not write the
            // image's directories: made now, never through a symlink.
            target(&inst.merged(), &file.path).map_err(|e| {
                Error::msg(format!(
                    "cannot mount secret file {} in instance {}: {e}",
                    file.path, inst.id
                ))
            })?;
        }
        binds.push(
            json!({"destination": file.path, "type": "bind", "source": host,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
    }
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.extend(binds);
    }
    inst.secret_names = spec.secret_env.keys().cloned().collect();
    inst.secret_mounts = spec.secret_files.iter().map(|f| f.path.clone()).collect();
    let real = with_env(config, spec.secret_env.iter().map(|(k, v)| (k, v.as_str())));
    let real_path = dir.join(CONFIG);
    crate::write_private(&real_path, &real).map_err(|e| {
        Error::io(
            format!(
                "writing the runtime spec of instance {} to its tmpfs",
                inst.id
            ),
            e,
        )
    })?;
    staged.disk_config = with_env(config, spec.secret_env.keys().map(|k| (k, PLACEHOLDER)));
    Ok(Some(staged))
}

/// Mount the private tmpfs of `spec`'s secrets at `dir` (made now): sized for its files and
/// spec, nosuid/nodev/noexec, root's only — or passable by the user namespace's root, who
/// resolves the bind sources inside it.
fn mount_tmpfs(spec: &InstanceSpec, dir: &Path, id: &str) -> Result<Staged> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let page = |n: usize| n.div_ceil(4096) * 4096;
    let env: usize = spec
        .secret_env
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    // The real spec (bounded by the seccomp list, some 16 KiB, and the environment), the files.
    let size = (256 << 10)
        + page(env)
        + spec
            .secret_files
            .iter()
            .map(|f| page(f.data.len()))
            .sum::<usize>();
    let (mode, gid) = if spec.user_namespace {
        (0o710, crate::USERNS_HOST_ID)
    } else {
        (0o700, 0)
    };
    let data = format!(
        "size={size},nr_inodes={},mode={mode:o},uid=0,gid={gid}",
        spec.secret_files.len() + 8
    );
    let data = std::ffi::CString::new(data).map_err(|e| Error::msg(e.to_string()))?;
    use rustix::mount::{MountFlags, mount};
    mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        data.as_c_str(),
    )
    .map_err(|e| {
        let _ = fs::remove_dir(dir);
        Error::io(
            format!("mounting the secrets tmpfs of instance {id}"),
            e.into(),
        )
    })?;
    Ok(Staged {
        dir: dir.to_path_buf(),
        mounted: true,
        disk_config: Vec::new(),
    })
}

/// Write a secret file in the tmpfs: new, its owner the instance's user, its mode whatever the
/// umask.
fn write_file(host: &Path, file: &SecretFile, uid: u32, gid: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)?;
    f.write_all(&file.data)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    f.set_permissions(fs::Permissions::from_mode(file.mode))
}

/// Make the mount point of a secret file at `path` (checked by [`check_path`]) in the root
/// filesystem `root`: its directories as [`crate::mount_point`] does, then an empty file; a
/// symlink or a directory there is refused.
fn target(root: &Path, path: &str) -> Result<(), String> {
    let (parent, _) = path.rsplit_once('/').unwrap_or(("", path));
    crate::mount_point(root, parent)?;
    let p = root.join(path.trim_start_matches('/'));
    let made = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p);
    match made {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(m) if m.file_type().is_symlink() => Err(format!("{path} is a symlink in the image")),
            Ok(_) => Err(format!("{path} is not a regular file in the image")),
            Err(e) => Err(format!("{path}: {e}")),
        },
        Err(e) => Err(format!("creating {path}: {e}")),
    }
}

/// `config` serialised with `env` set in its process's environment (replacing a variable of the
/// same name).
fn with_env<'a>(config: &Value, env: impl Iterator<Item = (&'a String, &'a str)>) -> Vec<u8> {
    let mut config = config.clone();
    if let Some(list) = config["process"]["env"].as_array_mut() {
        for (k, v) in env {
            let kv = Value::String(format!("{k}={v}"));
            let same = |e: &Value| {
                e.as_str()
                    .and_then(|e| e.split_once('='))
                    .is_some_and(|(ek, _)| ek == k)
            };
            match list.iter_mut().find(|e| same(e)) {
                Some(e) => *e = kv,
                None => list.push(kv),
            }
        }
    }
    serde_json::to_vec_pretty(&config).unwrap_or_default()
}

/// The most bytes read of an instance process's environment.
const MAX_ENVIRON: u64 = 4 << 20;

/// For `runc exec` in an instance with secrets (whose bundle, the tmpfs, is gone): a process
/// file in memory, the instance directory's spec's process running `cmd`, each secret variable
/// given the value the instance's process was started with (`/proc/<pid>/environ`; a variable
/// it no longer has is left out). `None` for an instance without secrets (runc reads its
/// bundle).
pub(crate) fn exec_process(inst: &Instance, cmd: &[String]) -> Result<Option<fs::File>> {
    if inst.secret_names.is_empty() && inst.secret_mounts.is_empty() {
        return Ok(None);
    }
    let p = inst.dir.join("config.json");
    let mut bytes = Vec::new();
    fs::File::open(&p)
        .and_then(|f| f.take(crate::MAX_PROC_FILE).read_to_end(&mut bytes))
        .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
    let config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::msg(format!("reading {}: {e}", p.display())))?;
    let mut process = config["process"].clone();
    if !process.is_object() {
        return Err(Error::msg(format!("{} has no process", p.display())));
    }
    let live = inst.pid.map(environ).unwrap_or_default();
    let secret = |k: &str| inst.secret_names.iter().any(|n| n == k);
    let env: Vec<String> = process["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.as_str()?;
            match e.split_once('=') {
                Some((k, v)) if v == PLACEHOLDER && secret(k) => {
                    live.get(k).map(|v| format!("{k}={v}"))
                }
                _ => Some(e.to_string()),
            }
        })
        .collect();
    process["env"] = json!(env);
    process["args"] = json!(cmd);
    let fd = rustix::fs::memfd_create("recast-exec", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::io("making a process file in memory".into(), e.into()))?;
    let mut f = fs::File::from(fd);
    f.write_all(&serde_json::to_vec(&process).unwrap_or_default())
        .map_err(|e| Error::io("writing a process file in memory".into(), e))?;
    Ok(Some(f))
}

/// The path another process (runc, our child) opens `f` by, from its start.
pub(crate) fn fd_path(f: &fs::File) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())
}

/// The environment process `pid` was started with, as variables.
fn environ(pid: i32) -> BTreeMap<String, String> {
    let mut bytes = Vec::new();
    let _ = fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|f| f.take(MAX_ENVIRON).read_to_end(&mut bytes));
    bytes
        .split(|b| *b == 0)
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_paths_are_absolute_normalised_and_outside_the_kernel_filesystems() {
        for ok in ["/run/secrets/db", "/etc/app.key", "/x"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("run/secrets/db", "not absolute"),
            ("/", "root directory"),
            ("/run//db", "not normalised"),
            ("/run/./db", "not normalised"),
            ("/run/../etc/shadow", "not normalised"),
            ("/run/secrets/", "not normalised"),
            ("/proc/self/environ", "under /proc"),
            ("/sys/x", "under /sys"),
            ("/dev/secret", "under /dev"),
            ("/proc", "under /proc"),
            ("/a\0b", "NUL"),
        ] {
            let e = check_path(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        // `/procfs` is not `/proc`.
        assert_eq!(check_path("/procfs/x"), Ok(()));
    }

    #[test]
    fn a_secret_value_is_never_shown() {
        let f = SecretFile::new("/run/secrets/db", b"marker-in-a-file".to_vec());
        let shown = format!("{f:?}");
        assert!(!shown.contains("marker"), "{shown}");
        assert!(
            shown.contains("/run/secrets/db") && shown.contains("400"),
            "{shown}"
        );
    }

    #[test]
    fn secret_env_replaces_a_plain_variable_of_the_same_name() {
        let config = json!({"process": {"env": ["A=plain", "PATH=/bin"]}});
        let (a, b) = ("A".to_string(), "B".to_string());
        let out = with_env(&config, [(&a, "secret-a"), (&b, "secret-b")].into_iter());
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v["process"]["env"],
            json!(["A=secret-a", "PATH=/bin", "B=secret-b"])
        );
    }
}
