//! An overlay upper directory — what one build step changed — written as one OCI layer.
//!
//! The upper directory was written by an untrusted build step, so it is walked by descriptor
//! (`O_NOFOLLOW` at every level) exactly like an image root: a symlink it holds is recorded,
//! never followed. Overlay's own markers become OCI whiteouts: a `0:0` character device is
//! `.wh.NAME`, a directory with `trusted.overlay.opaque=y` gets `.wh..wh..opq`. The layer is
//! normalised like every recast layer: entries in a fixed order (depth first, names sorted by
//! bytes), numeric owners only, mtimes clamped to `epoch`, no atime/ctime, no user names.

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, fgetxattr, fstat, readlinkat, statat};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a diff contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    pub entries: u64,
    pub whiteouts: u64,
    pub bytes: u64,
}

/// Write the changes recorded in the overlay upper directory `upper` as a layer tar to `w`.
/// `skip` names top-level entries that are the build's scaffolding, not the step's work.
pub fn write_diff(upper: &Path, epoch: u64, skip: &[&str], w: impl Write) -> io::Result<DiffStats> {
    let dir = rustix::fs::open(
        upper,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = Differ {
        b: tar::Builder::new(w),
        epoch,
        links: HashMap::new(),
        stats: DiffStats::default(),
        skip,
    };
    d.b.mode(tar::HeaderMode::Deterministic);
    d.dir(&dir, "")?;
    d.b.into_inner()?.flush()?;
    Ok(d.stats)
}

struct Differ<'a, W: Write> {
    b: tar::Builder<W>,
    epoch: u64,
    /// (device, inode) → the first path of a file with several links in this layer.
    links: HashMap<(u64, u64), String>,
    stats: DiffStats,
    skip: &'a [&'a str],
}

impl<W: Write> Differ<'_, W> {
    fn header(&self, st: &rustix::fs::Stat, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(u64::from(st.st_uid));
        h.set_gid(u64::from(st.st_gid));
        h.set_mtime((st.st_mtime.max(0) as u64).min(self.epoch));
        h.set_size(0);
        h
    }

    fn dir(&mut self, dir: &OwnedFd, prefix: &str) -> io::Result<()> {
        let mut names: Vec<OsString> = Vec::new();
        let mut it = Dir::read_from(dir)?;
        while let Some(e) = it.read() {
            let e = e?;
            let n = OsStr::from_bytes(e.file_name().to_bytes());
            if n != "." && n != ".." {
                names.push(n.to_owned());
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let shown = name.to_string_lossy();
            if prefix.is_empty() && self.skip.iter().any(|s| *s == shown) {
                continue;
            }
            let path = format!("{prefix}{shown}");
            if name.as_bytes().starts_with(b".wh.") {
                return Err(io::Error::other(format!(
                    "{path}: a file name starting with .wh. cannot be stored in an OCI layer"
                )));
            }
            self.entry(dir, &name, &path)?;
        }
        Ok(())
    }

    fn entry(&mut self, parent: &OwnedFd, name: &OsStr, path: &str) -> io::Result<()> {
        let st = statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        self.stats.entries += 1;
        match kind {
            FileType::Directory => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let mut h = self.header(&st, tar::EntryType::Directory);
                self.b
                    .append_data(&mut h, format!("{path}/"), io::empty())?;
                if opaque(&fd) {
                    self.whiteout(&format!("{path}/.wh..wh..opq"))?;
                }
                self.dir(&fd, &format!("{path}/"))?;
            }
            FileType::CharacterDevice if st.st_rdev == 0 => {
                let (dir, base) = path.rsplit_once('/').map_or(("", path), |(d, b)| (d, b));
                let sep = if dir.is_empty() { "" } else { "/" };
                self.whiteout(&format!("{dir}{sep}.wh.{base}"))?;
            }
            FileType::RegularFile => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key) {
                        let mut h = self.header(&st, tar::EntryType::Link);
                        let first = first.clone();
                        self.b.append_link(&mut h, path, first)?;
                        return Ok(());
                    }
                    self.links.insert(key, path.to_string());
                }
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                    Mode::empty(),
                )?;
                let size = fstat(&fd)?.st_size as u64;
                let mut h = self.header(&st, tar::EntryType::Regular);
                h.set_size(size);
                self.stats.bytes += size;
                self.b
                    .append_data(&mut h, path, File::from(fd).take(size))?;
            }
            FileType::Symlink => {
                let target = readlinkat(parent, name, Vec::new())?;
                let mut h = self.header(&st, tar::EntryType::Symlink);
                let target = OsStr::from_bytes(target.as_bytes()).to_owned();
                self.b.append_link(&mut h, path, target)?;
            }
            FileType::Fifo => {
                let mut h = self.header(&st, tar::EntryType::Fifo);
                self.b.append_data(&mut h, path, io::empty())?;
            }
            FileType::Socket => {} // a left-over socket is runtime state, not content
            _ => {
                return Err(io::Error::other(format!(
                    "{path}: device files cannot be stored in an image"
                )));
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, path: &str) -> io::Result<()> {
        self.stats.whiteouts += 1;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_mtime(0);
        self.b.append_data(&mut h, path, io::empty())
    }
}

/// Whether overlayfs marked the directory opaque (it hides everything below it).
fn opaque(dir: &impl AsFd) -> bool {
    let mut buf = [0u8; 4];
    matches!(fgetxattr(dir, "trusted.overlay.opaque", &mut buf[..]), Ok(n) if buf[..n] == *b"y")
}
