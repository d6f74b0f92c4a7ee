//! Process checks: every process of an instance runs an executable from its image, unchanged.
//!
//! Programs legally rewrite their own arguments (nginx's "master process" title) and a shell's
//! `exec` changes both arguments and environment, so neither says anything about tampering.
//! What does: the file the kernel executes. For each process of the instance (its cgroup),
//! `/proc/PID/exe` is read through a descriptor of `/proc/PID` (so a PID reused meanwhile is
//! never mistaken for it): its target is the path as the instance's mount namespace sees it,
//! and `fstat` of the opened link is the executed file itself. It must be a regular file of
//! the image's file index, and the very file the instance's root has at that path (same device
//! and inode), untouched since the image was unpacked (ctime) or hashing to the index's
//! BLAKE3. Anything else — a copy in `/tmp`, a `tmpfs` path, a volume, a deleted file, a
//! memfd — is a `process` finding naming the PID and the path. Verdicts are cached per
//! (PID, path, file identity), so scanning an unchanged instance reads a few `/proc` entries
//! and hashes nothing.

use crate::Finding;
use recast_image::fileindex::{FileIndex, Kind};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Most bytes read from a `/proc` or cgroup file of an instance (the instance controls them).
const MAX_PROC_FILE: u64 = 1 << 20;
/// Most cgroup directories and processes looked at per instance (its `pids.max` is lower).
const MAX_CGROUPS: usize = 256;
const MAX_PROCESSES: usize = 4096;

/// The identity of a file: device, inode and change time (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub ctime_ns: i128,
}

/// What one process of an instance executes, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exe {
    /// The PID on the host.
    pub pid: i32,
    /// The target of `/proc/PID/exe` (the path inside the instance, with the kernel's
    /// ` (deleted)` suffix if it was removed), or why it could not be read.
    pub path: Result<String, String>,
    /// The executed file, `fstat`ed through the opened link.
    pub id: Option<FileId>,
}

/// Verdicts of earlier scans of one instance: (PID, path, identity) → finding detail (`None`:
/// the executable is the image's).
#[derive(Debug, Default)]
pub struct ExeCache {
    verdicts: HashMap<(i32, String, FileId), Option<String>>,
    /// The OCI runtime's binary: (device, inode, size, BLAKE3), once looked at.
    runtime: Option<(u64, u64, u64, String)>,
    /// Executables hashed over the cache's life (for measurements).
    pub hashed: u64,
}

/// The processes of the cgroups `dirs` (and their sub-cgroups), each checked to belong to a
/// cgroup whose path ends with `cgroup` (e.g. `/recast-0123456789ab/web-r1-deadbeef`).
/// Processes that exit while being read are left out.
pub fn processes(dirs: &[PathBuf], cgroup: &str) -> Vec<Exe> {
    let mut pids = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            break;
        }
        if let Ok(bytes) = read_bounded(&d.join("cgroup.procs")) {
            pids.extend(
                String::from_utf8_lossy(&bytes)
                    .split_ascii_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|p| *p > 0),
            );
        }
        // A directory's link count is 2 and its sub-directories (cgroupfs, like most file
        // systems; 1 where unknown): with no sub-cgroup, its ~50 control files are not listed.
        let subdirs = std::fs::metadata(&d).map_or(true, |m| {
            use std::os::unix::fs::MetadataExt;
            m.nlink() != 2
        });
        if !subdirs {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.truncate(MAX_PROCESSES);
    pids.into_iter()
        .filter_map(|pid| exe_of(pid, cgroup))
        .collect()
}

/// The processes `pids` (when the cgroup cannot be listed), as [`processes`] reads them.
pub fn of_pids(pids: &[i32], cgroup: &str) -> Vec<Exe> {
    pids.iter().filter_map(|p| exe_of(*p, cgroup)).collect()
}

/// `/proc/PID/exe` of one process, through a descriptor of `/proc/PID`; `None` when the process
/// is gone, a zombie, or not in `cgroup`.
fn exe_of(pid: i32, cgroup: &str) -> Option<Exe> {
    let dir = rustix::fs::open(
        format!("/proc/{pid}"),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    // Still the process the cgroup listed: its own cgroup file says so.
    let cg = read_at(&dir, "cgroup").ok()?;
    let inside = String::from_utf8_lossy(&cg).lines().any(|l| {
        l.split_once(':')
            .and_then(|(_, r)| r.split_once(':'))
            .is_some_and(|(_, path)| {
                path == cgroup
                    || path
                        .strip_prefix(cgroup)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    });
    if !inside {
        return None;
    }
    let path = rustix::fs::readlinkat(&dir, "exe", Vec::new())
        .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned())
        .map_err(std::io::Error::from);
    let id = rustix::fs::openat(&dir, "exe", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .and_then(rustix::fs::fstat)
        .ok()
        .map(|st| FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        });
    let gone = |e: &std::io::Error| {
        e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
    };
    if path.as_ref().is_err_and(gone) || (path.is_ok() && id.is_none()) {
        // No executable: the process exited meanwhile, is a zombie, or is between releasing
        // its memory and becoming one. A live process always has one (changing it needs
        // CAP_SYS_RESOURCE, which instances lack).
        return None;
    }
    if path.is_err() {
        // Any other error: only a finding if the process is still there and not exiting.
        let stat = read_at(&dir, "stat").ok()?;
        let stat = String::from_utf8_lossy(&stat);
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_ascii_whitespace().next());
        if matches!(state, Some("Z" | "X" | "x")) {
            return None;
        }
    }
    Some(Exe {
        pid,
        path: path.map_err(|e| e.to_string()),
        id,
    })
}

fn read_at(dir: &OwnedFd, name: &str) -> std::io::Result<Vec<u8>> {
    let fd = rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_PROC_FILE)
        .read_to_end(&mut out)?;
    Ok(out)
}

fn read_bounded(p: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(p)?
        .take(MAX_PROC_FILE)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Check every process's executable against the image: `root` is the instance's root
/// filesystem as the host sees it (its overlay), `index` the image's file index, `exclude` the
/// paths that are not the image (`/tmp`, volumes, `tmpfs` paths), `trusted_before` when the
/// image was unpacked (files changed before then are as unpacked). Returns the `process`
/// findings; `cache` keeps verdicts between scans (entries of PIDs no longer seen are dropped).
///
/// `runtime` is the OCI runtime's binary on the host (runc): `runc exec` (exec health checks,
/// an operator's command) puts its own `runc init` in the instance's cgroup before it executes
/// the command, running runc itself or, since CVE-2019-5736, a sealed memfd copy of it. A
/// process whose executable is that file, or byte for byte a copy of it, is the runtime
/// joining the instance, not drift.
pub fn check_processes(
    root: &Path,
    index: &FileIndex,
    exclude: &[String],
    exes: &[Exe],
    trusted_before: Option<SystemTime>,
    runtime: Option<&Path>,
    cache: &mut ExeCache,
) -> Vec<Finding> {
    let live: std::collections::HashSet<i32> = exes.iter().map(|e| e.pid).collect();
    cache.verdicts.retain(|k, _| live.contains(&k.0));
    let trusted_ns = trusted_before
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128);
    let mut root_fd: Option<std::io::Result<OwnedFd>> = None;
    let mut findings = Vec::new();
    for e in exes {
        let (path, id) = match (&e.path, e.id) {
            (Ok(p), Some(id)) => (p, id),
            (Ok(p), None) => {
                findings.push(finding(
                    e.pid,
                    p,
                    "its executable cannot be examined".into(),
                ));
                continue;
            }
            (Err(why), _) => {
                findings.push(finding(
                    e.pid,
                    "executable",
                    format!("its executable cannot be read ({why})"),
                ));
                continue;
            }
        };
        let key = (e.pid, path.clone(), id);
        let verdict = match cache.verdicts.get(&key) {
            Some(v) => v.clone(),
            None => {
                let root_fd = root_fd.get_or_insert_with(|| {
                    rustix::fs::open(
                        root,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(std::io::Error::from)
                });
                let mut v = match root_fd {
                    Ok(fd) => judge(fd, index, exclude, path, id, trusted_ns, &mut cache.hashed),
                    Err(err) => Some(format!("the instance's root cannot be opened ({err})")),
                };
                if v.is_some() && runtime.is_some_and(|r| is_runtime(e.pid, id, r, cache)) {
                    v = None;
                }
                cache.verdicts.insert(key, v.clone());
                v
            }
        };
        if let Some(detail) = verdict {
            findings.push(finding(e.pid, path, detail));
        }
    }
    findings.sort();
    findings
}

/// Whether process `pid`'s executable (identity `id`) is the runtime's binary at `runtime`, or a
/// copy of it (same size and BLAKE3; the executable is reopened through `/proc/PID/exe` and
/// must still be `id`).
fn is_runtime(pid: i32, id: FileId, runtime: &Path, cache: &mut ExeCache) -> bool {
    if cache.runtime.is_none() {
        let Ok(f) = std::fs::File::open(runtime) else {
            return false;
        };
        let Ok(m) = f.metadata() else {
            return false;
        };
        let Ok(h) = hash_file(f) else {
            return false;
        };
        cache.hashed += 1;
        use std::os::unix::fs::MetadataExt;
        cache.runtime = Some((m.dev(), m.ino(), m.len(), h));
    }
    let Some((dev, ino, size, want)) = cache.runtime.clone() else {
        return false;
    };
    if (id.dev, id.ino) == (dev, ino) {
        return true;
    }
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let Ok(m) = f.metadata() else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    if (m.dev(), m.ino()) != (id.dev, id.ino) || m.len() != size {
        return false;
    }
    cache.hashed += 1;
    hash_file(f).is_ok_and(|h| h == want)
}

fn hash_file(mut f: std::fs::File) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

fn finding(pid: i32, path: &str, detail: String) -> Finding {
    Finding {
        path: path.to_string(),
        kind: crate::FindingKind::Process,
        detail: format!("pid {pid}: {detail}"),
    }
}

/// Why the executable at `path` with identity `id` is not the image's, or `None` if it is.
fn judge(
    root: &OwnedFd,
    index: &FileIndex,
    exclude: &[String],
    path: &str,
    id: FileId,
    trusted_ns: Option<i128>,
    hashed: &mut u64,
) -> Option<String> {
    if path.starts_with("/memfd:") {
        return Some("runs an in-memory file (memfd), not one from the image".into());
    }
    if path.ends_with(" (deleted)") {
        return Some("runs a deleted file, not one from the image".into());
    }
    if !path.starts_with('/') {
        return Some("runs a file outside the instance's filesystem".into());
    }
    if let Some(x) = exclude.iter().find(|x| {
        path == x.as_str()
            || path
                .strip_prefix(x.as_str())
                .is_some_and(|r| r.starts_with('/'))
    }) {
        return Some(format!("runs a file from {x}, not from the image"));
    }
    let want = match index
        .entries
        .binary_search_by(|e| e.path.as_str().cmp(path))
    {
        Ok(i) => &index.entries[i],
        Err(_) => return Some("runs a file that is not in the image".into()),
    };
    if want.kind != Kind::File {
        return Some("runs a file that is not a regular file of the image".into());
    }
    // The file the root has at that path, opened inside the root (never following a link).
    let rel = path.trim_start_matches('/');
    let fd = match rustix::fs::openat2(
        root,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            return Some(format!(
                "runs a file the instance's root no longer has there ({})",
                std::io::Error::from(e)
            ));
        }
    };
    let Ok(st) = rustix::fs::fstat(&fd) else {
        return Some("runs a file the instance's root cannot stat".into());
    };
    if (st.st_dev, st.st_ino) != (id.dev, id.ino) {
        return Some("runs another file than the image's file at that path".into());
    }
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
        || st.st_size as u64 != want.size
    {
        return Some("runs a file changed since the image (size)".into());
    }
    let ctime = i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec);
    if trusted_ns.is_some_and(|t| ctime < t) {
        return None;
    }
    // Changed after the unpack (or no unpack time known): only its content can vouch for it.
    *hashed += 1;
    match hash_file(std::fs::File::from(fd)) {
        Ok(h) if Some(&h) == want.blake3.as_ref() => None,
        Ok(_) => Some("runs a file whose content differs from the image's".into()),
        Err(e) => Some(format!("runs a file that cannot be read ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn id_of(p: &Path) -> FileId {
        let m = std::fs::metadata(p).expect("stat");
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    fn exe(pid: i32, path: &str, id: FileId) -> Exe {
        Exe {
            pid,
            path: Ok(path.into()),
            id: Some(id),
        }
    }

    #[test]
    fn an_image_file_passes_and_everything_else_is_named() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("bin")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("tmp")).expect("mkdir");
        std::fs::write(d.path().join("bin/app"), "binary").expect("write");
        std::fs::write(d.path().join("bin/other"), "binary").expect("write");
        let idx = crate::index_of(d.path()).expect("index");
        std::fs::write(d.path().join("tmp/x"), "binary").expect("write");
        let app = id_of(&d.path().join("bin/app"));
        let other = id_of(&d.path().join("bin/other"));
        let later = Some(SystemTime::now() + std::time::Duration::from_secs(1));
        let exclude = vec!["/tmp".to_string()];
        let mut cache = ExeCache::default();
        let exes = [
            exe(10, "/bin/app", app),
            exe(11, "/tmp/x", id_of(&d.path().join("tmp/x"))),
            exe(12, "/bin/app (deleted)", app),
            exe(13, "/memfd:x (deleted)", app),
            exe(14, "/bin/app", other),
            exe(15, "/usr/bin/nope", app),
        ];
        let f = check_processes(d.path(), &idx, &exclude, &exes, later, None, &mut cache);
        let got: Vec<(&str, &str)> = f
            .iter()
            .map(|f| (f.path.as_str(), f.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/bin/app",
                    "pid 14: runs another file than the image's file at that path"
                ),
                (
                    "/bin/app (deleted)",
                    "pid 12: runs a deleted file, not one from the image"
                ),
                (
                    "/memfd:x (deleted)",
                    "pid 13: runs an in-memory file (memfd), not one from the image"
                ),
                (
                    "/tmp/x",
                    "pid 11: runs a file from /tmp, not from the image"
                ),
                (
                    "/usr/bin/nope",
                    "pid 15: runs a file that is not in the image"
                ),
            ]
        );
        assert!(f.iter().all(|f| f.kind == crate::FindingKind::Process));
        assert_eq!(cache.hashed, 0, "metadata vouched for the image's file");

        // Without a trusted time the file is hashed once, then the verdict is cached.
        let mut cache = ExeCache::default();
        let clean = [exe(10, "/bin/app", app)];
        for _ in 0..3 {
            assert!(
                check_processes(d.path(), &idx, &exclude, &clean, None, None, &mut cache)
                    .is_empty()
            );
        }
        assert_eq!(cache.hashed, 1);

        // Same size, other content, after the unpack: found by its hash.
        std::fs::write(d.path().join("bin/app"), "BINARY").expect("rewrite");
        let app2 = id_of(&d.path().join("bin/app"));
        let f = check_processes(
            d.path(),
            &idx,
            &exclude,
            &[exe(10, "/bin/app", app2)],
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)),
            None,
            &mut cache,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].detail.contains("content differs"), "{f:?}");
    }

    #[test]
    fn this_process_reads_as_its_own_executable() {
        // The test binary is not in any cgroup named so: it is left out.
        assert!(exe_of(std::process::id() as i32, "/no-such-cgroup").is_none());
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        let path = own
            .lines()
            .next()
            .and_then(|l| l.splitn(3, ':').nth(2))
            .expect("a cgroup line")
            .to_string();
        let e = exe_of(std::process::id() as i32, &path).expect("this process");
        let me = std::env::current_exe().expect("exe");
        assert_eq!(e.path.as_deref(), Ok(me.to_string_lossy().as_ref()));
        assert_eq!(e.id.map(|i| i.ino), Some(id_of(&me).ino));

        // Seen as the runtime's binary (as `runc init` is), it is no finding whatever its path.
        let d = tempfile::tempdir().expect("tmp");
        let idx = crate::index_of(d.path()).expect("index");
        let as_runc = Exe {
            path: Ok("/memfd:runc_cloned:/proc/self/exe (deleted)".into()),
            ..e
        };
        let check = |runtime: &Path| {
            check_processes(
                d.path(),
                &idx,
                &[],
                std::slice::from_ref(&as_runc),
                None,
                Some(runtime),
                &mut ExeCache::default(),
            )
        };
        assert!(check(&me).is_empty(), "{:?}", check(&me));
        let other = d.path().join("other");
        std::fs::write(&other, "not the runtime").expect("write");
        assert_eq!(check(&other).len(), 1);
    }
}
