//! Drift detection: does the root filesystem an instance sees still match its image?
//!
//! `scan` walks a directory (an instance's root as mounted) and compares every entry with the
//! image's file index: entries added, removed, or changed in content, mode, owner, type or
//! symlink target. Excluded paths (declared volumes, `/tmp`, the runtime's mount points) are
//! not looked at.
//!
//! Cost: every entry is `lstat`ed; a regular file's content is hashed (BLAKE3) only when its
//! metadata cannot vouch for it — its size differs, or it changed after `trusted_before` (ctime:
//! content and metadata changes both move it, and no user-space call can set it back) — unless
//! `Mode::Full` asks for every file. Hashing runs on all cores.
//!
//! `process` checks what an instance's processes execute: each executable must be a regular
//! file of the image, the very file the root has at that path, unchanged. This crate does no
//! I/O beyond reading the tree it is given and the `/proc` entries of the processes it is
//! given (bounded).

pub mod process;
pub mod watch;

pub use recast_api::v1::FindingKind;
use recast_image::fileindex::{Entry, FileIndex, Kind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Metadata first; content only where metadata cannot vouch for it.
    Metadata,
    /// Hash every regular file.
    Full,
}

/// One difference between what runs and what was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Absolute path inside the instance (or the mount point, or the config field).
    pub path: String,
    pub kind: FindingKind,
    /// What changed: "content", "mode 0644 -> 0666", …
    pub detail: String,
}

/// Findings sort by path, then kind by name, then detail.
impl Ord for Finding {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.path.as_str(), self.kind.as_str(), self.detail.as_str()).cmp(&(
            other.path.as_str(),
            other.kind.as_str(),
            other.detail.as_str(),
        ))
    }
}

impl PartialOrd for Finding {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What a scan looked at.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub entries: u64,
    pub hashed: u64,
    pub bytes_hashed: u64,
}

/// Whether `path` is a directory on the way to one of the mount points `exclude`.
fn on_the_way(path: &str, exclude: &[String]) -> bool {
    exclude
        .iter()
        .any(|x| x.strip_prefix(path).is_some_and(|r| r.starts_with('/')))
}

/// Compare the tree at `root` with `index`. `exclude` are absolute paths inside the tree whose
/// subtrees are not examined (volumes, `/tmp`, mount points); a directory missing from the image
/// on the way to one is not a finding itself.
pub fn scan(
    root: &Path,
    index: &FileIndex,
    exclude: &[String],
    mode: Mode,
    trusted_before: Option<SystemTime>,
) -> std::io::Result<(Vec<Finding>, Stats)> {
    let expected: BTreeMap<&str, &Entry> =
        index.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let excluded = |p: &str| {
        exclude.iter().any(|x| {
            p == x
                || p.strip_prefix(x.as_str())
                    .is_some_and(|r| r.starts_with('/'))
        })
    };
    let mut findings = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut to_hash: Vec<HashJob> = Vec::new();
    let mut stats = Stats::default();
    let trusted_ns = trusted_before
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i128);
    // Iterative walk: (directory on disk, its path in the image).
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, ipath)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{ipath}/{name}");
            if excluded(&path) {
                continue;
            }
            let m = match std::fs::symlink_metadata(e.path()) {
                Ok(m) => m,
                Err(_) => continue, // vanished while scanning
            };
            stats.entries += 1;
            seen.insert(path.clone());
            let ft = m.file_type();
            let Some(want) = expected.get(path.as_str()) else {
                if ft.is_dir() && on_the_way(&path, exclude) {
                    // A directory the runtime made on the way to a mount point (`/etc` of an
                    // image without one, for `/etc/hosts`): what else is in it is still checked.
                    stack.push((e.path(), path));
                    continue;
                }
                findings.push(Finding {
                    path: path.clone(),
                    kind: FindingKind::Added,
                    detail: kind_name(&m).into(),
                });
                if ft.is_dir() {
                    // Everything below an added directory is added too; report the top only.
                    mark_all(&e.path(), &path, &mut seen);
                }
                continue;
            };
            if kind_of(ft) != want.kind {
                findings.push(Finding {
                    path: path.clone(),
                    kind: FindingKind::Changed,
                    detail: format!("type {:?} -> {}", want.kind, kind_name(&m)).to_lowercase(),
                });
                continue;
            }
            let what = differences(&e.path(), &path, &m, want, mode, trusted_ns, &mut to_hash);
            if !what.is_empty() {
                findings.push(Finding {
                    path: path.clone(),
                    kind: FindingKind::Changed,
                    detail: what.join(", "),
                });
            }
            if ft.is_dir() {
                stack.push((e.path(), path));
            }
        }
    }
    findings.extend(hash_all(to_hash, &mut stats));
    findings.extend(removed(index, &expected, &seen, &excluded));
    findings.sort();
    // One finding per path and kind: "mode 0555 -> 0644, content".
    findings.dedup_by(|b, a| {
        if a.path == b.path && a.kind == b.kind {
            a.detail = format!("{}, {}", a.detail, b.detail);
            true
        } else {
            false
        }
    });
    Ok((findings, stats))
}

/// A file whose content must be hashed: its path on disk, its path in the image, the BLAKE3
/// the index wants, its size.
type HashJob = (PathBuf, String, String, u64);

/// The index's kind of an entry of type `ft`.
fn kind_of(ft: std::fs::FileType) -> Kind {
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_file() {
        Kind::File
    } else {
        Kind::Other
    }
}

/// What differs between the entry at `path` (on disk at `disk`, with metadata `m`) and `want`,
/// of the same kind: symlink target or mode, owner, size. A regular file of the right size
/// whose metadata cannot vouch for it is queued in `to_hash`.
fn differences(
    disk: &Path,
    path: &str,
    m: &std::fs::Metadata,
    want: &Entry,
    mode: Mode,
    trusted_ns: Option<i128>,
    to_hash: &mut Vec<HashJob>,
) -> Vec<String> {
    let ft = m.file_type();
    let mut what = Vec::new();
    if ft.is_symlink() {
        let target = std::fs::read_link(disk)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default();
        if Some(&target) != want.target.as_ref() {
            what.push(format!(
                "target {} -> {target}",
                want.target.as_deref().unwrap_or("")
            ));
        }
    } else if m.mode() & 0o7777 != want.mode {
        what.push(format!(
            "mode {:04o} -> {:04o}",
            want.mode,
            m.mode() & 0o7777
        ));
    }
    if (m.uid(), m.gid()) != (want.uid, want.gid) && !ft.is_symlink() {
        what.push(format!(
            "owner {}:{} -> {}:{}",
            want.uid,
            want.gid,
            m.uid(),
            m.gid()
        ));
    }
    if ft.is_file() {
        if m.len() != want.size {
            what.push("content".into());
        } else {
            let ctime = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
            let vouched = mode == Mode::Metadata && trusted_ns.is_some_and(|t| ctime < t);
            if !vouched {
                to_hash.push((
                    disk.to_path_buf(),
                    path.to_string(),
                    want.blake3.clone().unwrap_or_default(),
                    m.len(),
                ));
            }
        }
    }
    what
}

/// Hash the files of `to_hash` on every core, counting them in `stats`; the findings of those
/// whose content differs.
fn hash_all(mut to_hash: Vec<HashJob>, stats: &mut Stats) -> Vec<Finding> {
    stats.hashed = to_hash.len() as u64;
    stats.bytes_hashed = to_hash.iter().map(|t| t.3).sum();
    // Threads only for more than one file: a scan that hashes nothing (the usual metadata
    // scan) or one file starts none (and does not ask how many cores there are).
    let threads = match to_hash.len() {
        0 | 1 => 1,
        n => std::thread::available_parallelism().map_or(1, |c| c.get().min(n)),
    };
    // Largest first, handed out one at a time, so threads finish together.
    to_hash.sort_by_key(|t| std::cmp::Reverse(t.3));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        if threads == 1 {
            return hash_some(&to_hash, &next);
        }
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(|| hash_some(&to_hash, &next)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// The entries of `index` not seen by the walk (nor excluded): only the top of a removed
/// subtree is reported.
fn removed(
    index: &FileIndex,
    expected: &BTreeMap<&str, &Entry>,
    seen: &BTreeSet<String>,
    excluded: &dyn Fn(&str) -> bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in &index.entries {
        if !seen.contains(&e.path) && !excluded(&e.path) && e.path != "/" {
            let parent_removed = e.path.rsplit_once('/').is_some_and(|(p, _)| {
                !p.is_empty() && !seen.contains(p) && expected.contains_key(p)
            });
            if !parent_removed {
                out.push(Finding {
                    path: e.path.clone(),
                    kind: FindingKind::Removed,
                    detail: format!("{:?}", e.kind).to_lowercase(),
                });
            }
        }
    }
    out
}

/// Hash the files of `to_hash` (disk path, index path, wanted BLAKE3, size) handed out by
/// `next` until none is left; the findings of those whose content differs.
fn hash_some(to_hash: &[HashJob], next: &std::sync::atomic::AtomicUsize) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((disk, path, want, _)) = to_hash.get(i) else {
            break;
        };
        if buf.is_empty() {
            buf = vec![0u8; 256 << 10];
        }
        match hash(disk, &mut buf) {
            Ok(h) if &h == want => {}
            Ok(_) => out.push(Finding {
                path: path.clone(),
                kind: FindingKind::Changed,
                detail: "content".into(),
            }),
            Err(_) => out.push(Finding {
                path: path.clone(),
                kind: FindingKind::Changed,
                detail: "content (unreadable)".into(),
            }),
        }
    }
    out
}

fn mark_all(dir: &Path, ipath: &str, seen: &mut BTreeSet<String>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = format!("{ipath}/{}", e.file_name().to_string_lossy());
            seen.insert(p.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                mark_all(&e.path(), &p, seen);
            }
        }
    }
}

fn kind_name(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    }
}

fn hash(p: &Path, buf: &mut [u8]) -> std::io::Result<String> {
    // Never follow a link swapped in after the walk's lstat, nor block on a FIFO.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    let mut h = blake3::Hasher::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Index a directory as it is now (for tests and benchmarks): every entry with its BLAKE3.
pub fn index_of(root: &Path) -> std::io::Result<FileIndex> {
    let mut entries = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut buf = vec![0u8; 256 << 10];
    while let Some((dir, ipath)) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            let path = format!("{ipath}/{}", e.file_name().to_string_lossy());
            let m = std::fs::symlink_metadata(e.path())?;
            let t = m.file_type();
            let (kind, size, blake3, target) = if t.is_dir() {
                stack.push((e.path(), path.clone()));
                (Kind::Dir, 0, None, None)
            } else if t.is_symlink() {
                (
                    Kind::Symlink,
                    0,
                    None,
                    Some(std::fs::read_link(e.path())?.to_string_lossy().into_owned()),
                )
            } else if t.is_file() {
                (Kind::File, m.len(), Some(hash(&e.path(), &mut buf)?), None)
            } else {
                (Kind::Other, 0, None, None)
            };
            entries.push(Entry {
                path,
                kind,
                mode: if t.is_symlink() {
                    0o777
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                size,
                blake3,
                target,
            });
        }
    }
    Ok(FileIndex::new(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("etc/app")).expect("mkdir");
        std::fs::create_dir_all(d.path().join("data")).expect("mkdir");
        std::fs::write(d.path().join("etc/app/conf"), "a=1").expect("write");
        std::fs::write(d.path().join("etc/motd"), "hi").expect("write");
        std::os::unix::fs::symlink("motd", d.path().join("etc/link")).expect("symlink");
        d
    }

    fn kinds(f: &[Finding]) -> Vec<(String, FindingKind, String)> {
        f.iter()
            .map(|f| (f.path.clone(), f.kind, f.detail.clone()))
            .collect()
    }

    #[test]
    fn a_clean_tree_has_no_findings_in_either_mode() {
        let d = tree();
        let idx = index_of(d.path()).expect("index");
        for mode in [Mode::Metadata, Mode::Full] {
            let (f, s) = scan(d.path(), &idx, &[], mode, Some(SystemTime::now())).expect("scan");
            assert!(f.is_empty(), "{f:?}");
            assert_eq!(s.entries, 6);
        }
        let (_, s) = scan(
            d.path(),
            &idx,
            &[],
            Mode::Metadata,
            Some(SystemTime::now() + std::time::Duration::from_secs(1)),
        )
        .expect("scan");
        assert_eq!(s.hashed, 0, "metadata vouches for untouched files");
    }

    /// A directory the runtime made on the way to a mount point is no drift; anything else
    /// that appears in it is.
    #[test]
    fn a_directory_made_for_a_mount_point_is_not_drift_but_its_other_content_is() {
        let d = tree();
        let idx = index_of(d.path()).expect("index");
        std::fs::create_dir_all(d.path().join("run/net")).expect("mkdir");
        std::fs::write(d.path().join("run/net/hosts"), "").expect("mount point");
        let exclude = ["/run/net/hosts".to_string()];
        let (f, _) = scan(d.path(), &idx, &exclude, Mode::Metadata, None).expect("scan");
        assert!(f.is_empty(), "{f:?}");
        std::fs::write(d.path().join("run/net/evil"), "x").expect("add");
        let (f, _) = scan(d.path(), &idx, &exclude, Mode::Metadata, None).expect("scan");
        assert_eq!(
            kinds(&f),
            vec![("/run/net/evil".into(), FindingKind::Added, "file".into())]
        );
    }

    #[test]
    fn every_kind_of_drift_is_named() {
        let d = tree();
        let idx = index_of(d.path()).expect("index");
        let trusted = SystemTime::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("etc/app/conf"), "a=2").expect("same size, new content");
        std::fs::set_permissions(
            d.path().join("etc/motd"),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        std::fs::write(d.path().join("etc/evil"), "x").expect("add");
        std::fs::remove_file(d.path().join("etc/link")).expect("rm");
        std::fs::write(d.path().join("data/ok"), "volume write").expect("volume");
        let (f, _) = scan(
            d.path(),
            &idx,
            &["/data".into()],
            Mode::Metadata,
            Some(trusted),
        )
        .expect("scan");
        let m = std::fs::metadata(d.path().join("etc/motd")).expect("stat");
        let want_mode = format!(
            "mode {:04o} -> 0666",
            idx.entries
                .iter()
                .find(|e| e.path == "/etc/motd")
                .expect("motd")
                .mode
        );
        let _ = m;
        assert_eq!(
            kinds(&f),
            [
                (
                    "/etc/app/conf".to_string(),
                    FindingKind::Changed,
                    "content".to_string()
                ),
                ("/etc/evil".into(), FindingKind::Added, "file".into()),
                ("/etc/link".into(), FindingKind::Removed, "symlink".into()),
                ("/etc/motd".into(), FindingKind::Changed, want_mode),
            ]
        );
    }
}
