//! Paths inside an untrusted root filesystem, resolved *within* that root.
//!
//! An image's files come from registries and archives recast does not trust. Joining an image
//! path onto the host path of its root (`root.join(path)`) and handing that to the kernel lets
//! a symlink the image planted (`y -> /etc`), an absolute path or a `..` reach the host. Here
//! every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of the root, exactly as a `chroot` into it would see it, and every change
//! is made with `*at` calls on a descriptor of the resolved parent, never following the last
//! component. Nothing in an image can name anything outside its root.
//!
//! [`Root::read_file`] reads an image file (regular files only, bounded); [`unpack_layer`] applies
//! one layer tar, OCI whiteouts included.

use rustix::fs::{
    AtFlags, Dir, Mode, OFlags, ResolveFlags, Timespec, Timestamps, chownat, fchmod, fchown, fstat,
    futimens, linkat, mkdirat, mknodat, openat2, statat, symlinkat, unlinkat, utimensat,
};
use rustix::fs::{Gid, Uid};

pub use rustix::fs::FileType;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

mod diff;
pub use diff::{DiffStats, write_diff};

const IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// A directory treated as `/`: every path given to its methods is resolved inside it.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Open the directory `path` (a trusted host path) as a root.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| with_context(e.into(), format!("opening {}", path.display())))?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The host path this root was opened at (for messages only).
    pub fn host_path(&self) -> &Path {
        &self.path
    }

    /// Read the regular file `path` (absolute or relative, both meaning inside the root),
    /// refusing anything but a regular file and anything larger than `max` bytes.
    pub fn read_file(&self, path: &str, max: u64) -> io::Result<Vec<u8>> {
        let rel = relative(path);
        let fd = openat2(
            &self.fd,
            rel_or_dot(&rel),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
            IN_ROOT,
        )?;
        let st = fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is not a regular file"),
            ));
        }
        let mut out = Vec::new();
        File::from(fd).take(max + 1).read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} is larger than {max} bytes"),
            ));
        }
        Ok(out)
    }

    /// The host path of `path` resolved inside the root, symlinks included (as a process
    /// chrooted there would find it). Only for roots no one else writes while it is used: the
    /// answer names real directories inside the root at the time of the call.
    pub fn resolve(&self, path: &str) -> io::Result<PathBuf> {
        let rel = relative(path);
        let fd = openat2(
            &self.fd,
            rel_or_dot(&rel),
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        )?;
        let host = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))?;
        let root = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.fd)
        ))?;
        if !host.starts_with(&root) {
            return Err(io::Error::other(format!(
                "{path} resolves outside the root"
            )));
        }
        Ok(host)
    }

    /// The kind of the entry at `path` without following its last component, or `None` if absent.
    pub fn kind(&self, path: &str) -> io::Result<Option<FileType>> {
        Ok(self
            .stat(path)?
            .map(|st| FileType::from_raw_mode(st.st_mode)))
    }

    /// The status of the entry at `path` without following its last component, or `None` if
    /// absent.
    pub fn stat(&self, path: &str) -> io::Result<Option<rustix::fs::Stat>> {
        let (parent, name) = match self.parent_of(&relative(path))? {
            Some(p) => p,
            None => return Ok(Some(fstat(&self.fd)?)),
        };
        let Some(parent) = parent else {
            return Ok(None);
        };
        match statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Make the directory `path` (and its missing parents, 0755 root-owned) with `mode`.
    pub fn create_dir(&self, path: &str, mode: u32) -> io::Result<()> {
        let rel = relative(path);
        let Some((parent, name)) = self.parent_of(&rel)? else {
            return Ok(());
        };
        let parent = match parent {
            Some(p) => p,
            None => self.mkdir_all(rel.parent().unwrap_or(Path::new("")))?,
        };
        mkdirat(&parent, &name, Mode::from_raw_mode(0o700))?;
        let dir = open_dir_nofollow(&parent, &name)?;
        fchmod(&dir, Mode::from_raw_mode(mode & 0o7777))?;
        Ok(())
    }

    /// Remove `path` (recursively for a directory), never following a symlink; absent is fine.
    pub fn remove(&self, path: &str) -> io::Result<()> {
        match self.parent_of(&relative(path))? {
            Some((Some(parent), name)) => remove_at(&parent, &name),
            Some((None, _)) => Ok(()),
            None => Err(io::Error::other("refusing to remove the root itself")),
        }
    }

    /// The resolved parent directory of `rel` and its last component; `None` for the root
    /// itself; a `None` parent when the parent does not exist (or is not a directory).
    #[allow(clippy::type_complexity)]
    fn parent_of(&self, rel: &Path) -> io::Result<Option<(Option<OwnedFd>, OsString)>> {
        let Some(name) = rel.file_name() else {
            return Ok(None);
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        match openat2(
            &self.fd,
            rel_or_dot(parent),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            IN_ROOT,
        ) {
            Ok(fd) => Ok(Some((Some(fd), name.to_owned()))),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                Ok(Some((None, name.to_owned())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Resolve the directory `rel`, creating missing components (0755, root) inside the root.
    fn mkdir_all(&self, rel: &Path) -> io::Result<OwnedFd> {
        let open = || {
            openat2(
                &self.fd,
                rel_or_dot(rel),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                IN_ROOT,
            )
        };
        match open() {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Err(io::Error::other("the root directory is missing"));
        };
        let parent = self.mkdir_all(parent)?;
        match mkdirat(&parent, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(open()?)
    }
}

/// `path` as a relative path of normal components (`/a/./b` → `a/b`); `..` stays (the kernel
/// resolves it inside the root).
fn relative(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

fn rel_or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}

fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn open_dir_nofollow(parent: &impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Remove `name` in `parent`: unlink it, or empty and remove a directory; never follows links.
fn remove_at(parent: &impl AsFd, name: &OsStr) -> io::Result<()> {
    let st = match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let dir = open_dir_nofollow(parent, name)?;
        clear_dir(&dir, &|_| false)?;
        unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    } else {
        unlinkat(parent, name, AtFlags::empty())?;
    }
    Ok(())
}

/// Remove every entry of the open directory `dir` except those `keep` names.
fn clear_dir(dir: &OwnedFd, keep: &dyn Fn(&OsStr) -> bool) -> io::Result<()> {
    let mut names = Vec::new();
    let mut it = Dir::read_from(dir)?;
    while let Some(entry) = it.read() {
        let entry = entry?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if name != "." && name != ".." && !keep(name) {
            names.push(name.to_owned());
        }
    }
    for n in names {
        remove_at(dir, &n)?;
    }
    Ok(())
}

/// The path of a layer entry as a relative path inside the image: a leading `/` or `./` is
/// dropped; `..` is refused (an entry that names its way out of the image is never valid).
pub fn entry_path(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains `..`".into()),
            Component::Prefix(_) => return Err("path has a prefix".into()),
        }
    }
    Ok(out)
}

/// What one OCI layer entry means.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// `.wh..wh..opq`: the directory hides everything lower layers put in it.
    Opaque,
    /// `.wh.NAME`: the lower layers' `NAME` in the same directory is deleted.
    Remove(OsString),
    /// Not a whiteout.
    None,
}

/// Classify the last component of an entry path; a whiteout naming no valid entry (`.wh.`,
/// `.wh..`, `.wh...`) is an error.
pub fn whiteout(name: &OsStr) -> Result<Whiteout, String> {
    let b = name.as_bytes();
    if b == b".wh..wh..opq" {
        return Ok(Whiteout::Opaque);
    }
    match b.strip_prefix(b".wh.") {
        Some(victim) if victim.is_empty() || victim == b"." || victim == b".." => Err(format!(
            "whiteout {:?} names no entry",
            name.to_string_lossy()
        )),
        Some(victim) => Ok(Whiteout::Remove(OsStr::from_bytes(victim).to_owned())),
        None => Ok(Whiteout::None),
    }
}

/// Apply one layer tar to `root`: entries created by descriptor inside the root with the tar's
/// numeric owners, modes and mtimes; OCI whiteouts delete inside the root only. Refused: entries
/// with `..`, hard links to outside entries or directories, and devices outside `/dev` (runc
/// mounts its own `/dev`, so those inside it are skipped).
pub fn unpack_layer(root: &Root, r: impl Read) -> io::Result<()> {
    unpack(root, r, false)
}

/// Unpack one layer tar on its own, in overlayfs's format, to be one `lowerdir` of an overlay
/// mount: whiteouts are recorded (a `0:0` character device, `trusted.overlay.opaque=y`)
/// instead of applied. Otherwise as [`unpack_layer`].
pub fn unpack_layer_as_overlay(root: &Root, r: impl Read) -> io::Result<()> {
    unpack(root, r, true)
}

// long: one linear, security-critical pass per tar entry (path check, whiteouts, refusals,
// replace, create by descriptor with owner, mode and times), best read and reviewed top to
// bottom in one place.
fn unpack(root: &Root, r: impl Read, overlay: bool) -> io::Result<()> {
    let mut archive = tar::Archive::new(r);
    // Paths this layer created: an opaque whiteout hides only lower layers' entries.
    let mut created: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let bad = |msg: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {:?}: {msg}", raw.to_string_lossy()),
            )
        };
        let path = entry_path(&raw).map_err(bad)?;
        let Some(name) = path.file_name().map(OsStr::to_owned) else {
            continue; // the root directory itself: its mode is recast's
        };
        let parent_rel = path.parent().unwrap_or(Path::new("")).to_owned();
        let wh = whiteout(&name).map_err(bad)?;
        if overlay && wh != Whiteout::None {
            let parent = root
                .mkdir_all(&parent_rel)
                .map_err(|e| bad(format!("parent directory: {e}")))?;
            match wh {
                Whiteout::Remove(victim) => {
                    remove_at(&parent, &victim).map_err(|e| bad(format!("whiteout: {e}")))?;
                    mknodat(
                        &parent,
                        &victim,
                        FileType::CharacterDevice,
                        Mode::empty(),
                        0,
                    )
                    .map_err(|e| bad(format!("whiteout: {e}")))?;
                }
                _ => {
                    let dir = rustix::fs::openat(
                        &parent,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rustix::fs::fsetxattr(
                        &dir,
                        "trusted.overlay.opaque",
                        b"y",
                        rustix::fs::XattrFlags::empty(),
                    )
                    .map_err(|e| bad(format!("opaque whiteout: {e}")))?;
                }
            }
            continue;
        }
        match wh {
            Whiteout::Opaque => {
                if let Some((Some(parent), dname)) = root.parent_of(&parent_rel)? {
                    if let Ok(dir) = open_dir_nofollow(&parent, &dname) {
                        clear_dir(&dir, &|n| created.contains(&parent_rel.join(n)))
                            .map_err(|e| bad(format!("opaque whiteout: {e}")))?;
                    }
                } else if parent_rel.as_os_str().is_empty() {
                    let dir = rustix::fs::openat(
                        &root.fd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    clear_dir(&dir, &|n| created.contains(Path::new(n)))
                        .map_err(|e| bad(format!("opaque whiteout: {e}")))?;
                }
                continue;
            }
            Whiteout::Remove(victim) => {
                if let Some((Some(parent), _)) = root.parent_of(&path)? {
                    remove_at(&parent, &victim).map_err(|e| bad(format!("whiteout: {e}")))?;
                }
                continue;
            }
            Whiteout::None => {}
        }
        let header = entry.header();
        let kind = header.entry_type();
        // An empty numeric field is 0, as Go's archive/tar (Docker's) reads it.
        let mode = header.mode().unwrap_or(0) & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let owner = (
            Some(Uid::from_raw(
                u32::try_from(uid).map_err(|_| bad("uid too large".into()))?,
            )),
            Some(Gid::from_raw(
                u32::try_from(gid).map_err(|_| bad("gid too large".into()))?,
            )),
        );
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
        };
        if kind == tar::EntryType::GNUSparse {
            // A sparse entry's holes cost nothing in the archive but are written out as zeros:
            // a few hundred bytes of layer could fill the disk. No image builder writes them.
            return Err(bad(
                "sparse files are not supported in image layers (a sparse entry can expand a tiny layer to any size)"
                    .into(),
            ));
        }
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            if path.starts_with("dev") {
                continue;
            }
            return Err(bad("device files are only allowed under /dev".into()));
        }
        let parent = root
            .mkdir_all(&parent_rel)
            .map_err(|e| bad(format!("parent directory: {e}")))?;
        let existing = match statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(bad(e.to_string())),
        };
        let keep_dir = kind == tar::EntryType::Directory && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            remove_at(&parent, &name).map_err(|e| bad(format!("replacing: {e}")))?;
        }
        let io = |e: rustix::io::Errno| bad(e.to_string());
        match kind {
            tar::EntryType::Directory => {
                if !keep_dir {
                    mkdirat(&parent, &name, Mode::from_raw_mode(0o700)).map_err(io)?;
                }
                let dir = open_dir_nofollow(&parent, &name).map_err(|e| bad(e.to_string()))?;
                fchown(&dir, owner.0, owner.1).map_err(io)?;
                fchmod(&dir, Mode::from_raw_mode(mode)).map_err(io)?;
                futimens(&dir, &times).map_err(io)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = rustix::fs::openat(
                    &parent,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io)?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| bad(e.to_string()))?;
                // Owner first: chown clears set-id bits, the mode sets them again.
                fchown(&file, owner.0, owner.1).map_err(io)?;
                fchmod(&file, Mode::from_raw_mode(mode)).map_err(io)?;
                futimens(&file, &times).map_err(io)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| bad("symlink without a target".into()))?;
                symlinkat(target.as_os_str(), &parent, &name).map_err(io)?;
                chownat(&parent, &name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
                utimensat(&parent, &name, &times, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| bad("hard link without a target".into()))?;
                let target = entry_path(&target).map_err(|m| bad(format!("link target {m}")))?;
                let Some((Some(tparent), tname)) = root.parent_of(&target)? else {
                    return Err(bad(format!(
                        "hard link target {} does not exist in the image",
                        target.display()
                    )));
                };
                match statat(&tparent, &tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {}
                    _ => {
                        return Err(bad(format!(
                            "hard link target {} is not a file in the image",
                            target.display()
                        )));
                    }
                }
                linkat(&tparent, &tname, &parent, &name, AtFlags::empty()).map_err(io)?;
            }
            tar::EntryType::Fifo => {
                mknodat(&parent, &name, FileType::Fifo, Mode::from_raw_mode(mode), 0)
                    .map_err(io)?;
                chownat(&parent, &name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
            }
            // PAX/GNU metadata entries are consumed by the tar reader; anything else is unknown.
            other => return Err(bad(format!("unsupported entry type {other:?}"))),
        }
        created.insert(path);
    }
    // Drain the stream so a verifying reader underneath checks the digest.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(entry_path(Path::new("/etc/x")), Ok(PathBuf::from("etc/x")));
        assert_eq!(entry_path(Path::new("./a/./b")), Ok(PathBuf::from("a/b")));
        assert!(entry_path(Path::new("a/../../b")).is_err());
        assert!(entry_path(Path::new("..")).is_err());
    }

    /// A GNU sparse entry of `size` bytes that are all hole: no data in the archive.
    fn sparse_layer(name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("path");
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        let g = h.as_gnu_mut().expect("gnu");
        g.set_real_size(size);
        g.sparse[0].set_offset(size);
        g.sparse[0].set_length(0);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// A 1.5 KiB layer must not expand to an arbitrary number of bytes on disk.
    #[test]
    fn sparse_entries_are_refused_not_expanded() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = Root::open(dir.path()).expect("root");
        let layer = sparse_layer("big", 64 << 20);
        assert!(layer.len() < 2048);
        for overlay in [false, true] {
            let e = unpack(&root, &layer[..], overlay).expect_err("a sparse entry is refused");
            assert!(
                e.to_string()
                    .contains("entry \"big\": sparse files are not supported"),
                "{e}"
            );
            assert_eq!(root.kind("big").expect("kind"), None, "nothing was written");
        }
    }

    #[test]
    fn whiteouts_are_classified() {
        assert_eq!(whiteout(OsStr::new(".wh..wh..opq")), Ok(Whiteout::Opaque));
        assert_eq!(
            whiteout(OsStr::new(".wh.x")),
            Ok(Whiteout::Remove("x".into()))
        );
        assert_eq!(whiteout(OsStr::new("x")), Ok(Whiteout::None));
        assert!(whiteout(OsStr::new(".wh.")).is_err());
        assert!(whiteout(OsStr::new(".wh..")).is_err());
        assert!(whiteout(OsStr::new(".wh...")).is_err());
    }
}
