//! What scans of one instance keep between rounds, so that scanning an unchanged instance costs
//! a few `stat`s rather than reading and parsing its `/proc` and runtime files every time.
//!
//! - **Mounts**: the init's `mountinfo` is opened once and kept; the kernel flags such a file
//!   (`poll` reports `POLLPRI`) whenever a mount is added, removed or changed (remount, bind
//!   remount, `mount_setattr`) in its mount namespace. It is read and parsed again only then,
//!   or when the init's PID, mount namespace or root directory is no longer the one the file
//!   was opened for.
//! - **A file's verdict** (the runtime's `config.json`): kept per (device, inode, size, ctime,
//!   mtime); any write, rename over it, `chmod` or `touch` moves ctime, which no user-space call
//!   can set back. A verdict is kept only for a file whose ctime is older than the read by more
//!   than a clock tick, so a change within the tick of the read is never hidden.
//! - **Verdicts on executables** ([`ExeCache`]).

use crate::process::ExeCache;
use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use std::io::{Read, Seek};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Most bytes read from an instance's `mountinfo` (the instance controls its mounts).
const MAX_MOUNTINFO: u64 = 8 << 20;
/// Timestamps of files are taken from a coarse clock: a verdict on a file is kept only if the
/// file changed longer ago than this before it was read.
const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// What scans of one instance keep between rounds.
#[derive(Debug, Default)]
pub struct InstanceWatch {
    /// Verdicts on its processes' executables.
    pub exes: ExeCache,
    mounts: Option<Mounts>,
    file: Option<(FileKey, Option<String>)>,
}

#[derive(Debug)]
struct Mounts {
    /// `/proc/PID/mountinfo`, open since the last (re)read.
    file: std::fs::File,
    /// What the file was opened for: PID, mount namespace, root directory.
    of: (i32, (u64, u64), (u64, u64)),
    writable: Vec<String>,
}

/// A file's identity and state: device, inode, size, ctime and mtime (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey(u64, u64, u64, i128, i128);

impl InstanceWatch {
    /// A full scan trusts nothing kept.
    pub fn forget(&mut self) {
        *self = InstanceWatch::default();
    }

    /// The mount points (inside the instance) mounted read-write in the mount namespace of
    /// process `pid` (the instance's init), as its `mountinfo` shows them from its root.
    pub fn writable_mounts(&mut self, pid: i32) -> std::io::Result<Vec<String>> {
        let proc = rustix::fs::open(
            format!("/proc/{pid}"),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let of = (pid, ident(&proc, "ns/mnt")?, ident(&proc, "root")?);
        if let Some(m) = &mut self.mounts
            && m.of == of
        {
            let mut fds = [PollFd::new(&m.file, PollFlags::PRI)];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            rustix::event::poll(&mut fds, Some(&zero))?;
            if fds[0].revents().is_empty() {
                return Ok(m.writable.clone());
            }
            // Flagged (and so the flag is cleared): read it again; any later change flags it
            // again.
            m.file.rewind()?;
            m.writable = parse_writable(&read(&m.file)?);
            return Ok(m.writable.clone());
        }
        self.mounts = None;
        let file = std::fs::File::from(rustix::fs::openat(
            &proc,
            "mountinfo",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let writable = parse_writable(&read(&file)?);
        // Kept only if the process still has the namespace and root it had before the open.
        if (pid, ident(&proc, "ns/mnt")?, ident(&proc, "root")?) == of {
            self.mounts = Some(Mounts {
                file,
                of,
                writable: writable.clone(),
            });
        }
        Ok(writable)
    }

    /// `check(path)`'s verdict on the file at `path`, or the verdict kept from an earlier call
    /// if the file is the same and unchanged since.
    pub fn file_verdict(
        &mut self,
        path: &Path,
        check: impl FnOnce(&Path) -> Option<String>,
    ) -> Option<String> {
        let before = SystemTime::now();
        let key = key_of(path);
        if let (Some(k), Some((kept, verdict))) = (key, &self.file)
            && k == *kept
        {
            return verdict.clone();
        }
        let verdict = check(path);
        let settled = before
            .checked_sub(CLOCK_SLACK)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128);
        // Kept only if the file is as it was before the check, and changed long enough ago.
        self.file = match (key, key_of(path), settled) {
            (Some(k), Some(after), Some(t)) if k == after && k.3 < t && k.4 < t => {
                Some((k, verdict.clone()))
            }
            _ => None,
        };
        verdict
    }
}

/// Device and inode of `/proc/PID/<name>` (followed: the namespace, the root directory).
fn ident(proc: &OwnedFd, name: &str) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statat(proc, name, rustix::fs::AtFlags::empty())?;
    Ok((st.st_dev, st.st_ino))
}

fn key_of(path: &Path) -> Option<FileKey> {
    let st = rustix::fs::stat(path).ok()?;
    Some(FileKey(
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
    ))
}

fn read(mut f: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    f.by_ref().take(MAX_MOUNTINFO).read_to_end(&mut out)?;
    Ok(out)
}

/// The read-write mount points of a `mountinfo` (its per-mount options say `rw`).
pub fn parse_writable(mountinfo: &[u8]) -> Vec<String> {
    mountinfo
        .split(|b| *b == b'\n')
        .filter_map(|l| {
            let mut f = l.split(|b| *b == b' ');
            let point = f.nth(4)?;
            let opts = f.next()?;
            opts.split(|b| *b == b',')
                .any(|o| o == b"rw")
                .then(|| unescape(point))
        })
        .collect()
}

/// A mount point of `mountinfo`, whose spaces, tabs, newlines and backslashes are octal escapes.
fn unescape(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_mount_points_are_unescaped() {
        let info = b"22 1 0:21 / / rw,relatime - overlay overlay rw\n\
            23 22 0:22 / /proc rw,nosuid - proc proc rw\n\
            24 22 0:23 / /etc/hosts ro,relatime - ext4 /dev/x rw\n\
            25 22 0:24 / /srv/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_writable(info), ["/", "/proc", "/srv/a b"]);
    }

    #[test]
    fn this_process_mounts_are_read_then_kept() {
        let mut w = InstanceWatch::default();
        let pid = std::process::id() as i32;
        let first = w.writable_mounts(pid).expect("mountinfo");
        assert!(w.mounts.is_some(), "kept");
        assert_eq!(w.writable_mounts(pid).expect("again"), first);
        assert!(w.writable_mounts(i32::MAX).is_err(), "no such process");
    }

    #[test]
    fn a_file_verdict_is_kept_until_the_file_changes() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("config.json");
        std::fs::write(&p, "a").expect("write");
        let mut w = InstanceWatch::default();
        let mut checks = 0;
        // Just written: not kept (it changed within the clock's slack).
        for _ in 0..2 {
            w.file_verdict(&p, |_| {
                checks += 1;
                None
            });
        }
        assert_eq!(checks, 2);
        std::thread::sleep(CLOCK_SLACK * 2);
        for _ in 0..3 {
            w.file_verdict(&p, |_| {
                checks += 1;
                None
            });
        }
        assert_eq!(checks, 3, "kept once settled");
        std::fs::write(&p, "b").expect("rewrite");
        let v = w.file_verdict(&p, |_| Some("changed".into()));
        assert_eq!(v.as_deref(), Some("changed"));
    }
}
