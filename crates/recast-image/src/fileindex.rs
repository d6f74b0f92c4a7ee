//! The file index: every entry of an image's final root filesystem, with its BLAKE3 digest.
//!
//! Stored as a blob (media type `application/vnd.recast.file-index.v1+json`) named by the
//! manifest annotation `dev.recast.file-index`. Drift detection verifies running instances
//! against it. Computed per layer (cached by layer digest), then merged in layer order with OCI
//! whiteout semantics.

use crate::error::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// Devices, FIFOs: recorded so that their appearance or removal is noticed.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Absolute path in the image, e.g. `/bin/hello`.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// BLAKE3 of the content, for regular files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Entries of one layer, including whiteouts (`/dir/.wh.name`, `/dir/.wh..wh..opq`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIndex {
    pub version: u32,
    pub entries: Vec<Entry>,
}

impl FileIndex {
    pub fn new(mut entries: Vec<Entry>) -> FileIndex {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        FileIndex {
            version: 1,
            entries,
        }
    }

    /// Index a layer tar stream (already decompressed).
    pub fn of_tar(r: impl Read, what: &str) -> Result<FileIndex> {
        let mut archive = tar::Archive::new(r);
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for e in archive.entries().doing(|| format!("reading {what}"))? {
            let mut e = e.doing(|| format!("reading {what}"))?;
            let h = e.header();
            let raw = e.path_bytes();
            // The same rules as the unpacker: no `..`, no whiteout naming nothing.
            let checked =
                recast_root::entry_path(std::path::Path::new(&*String::from_utf8_lossy(&raw)))
                    .and_then(|p| match p.file_name() {
                        Some(n) => recast_root::whiteout(n).map(|_| ()),
                        None => Ok(()),
                    });
            if let Err(m) = checked {
                return Err(crate::Error::msg(format!(
                    "{what}: entry {:?}: {m}",
                    String::from_utf8_lossy(&raw)
                )));
            }
            let path = normalize(&String::from_utf8_lossy(&raw));
            if path == "/" {
                continue;
            }
            let mode = h.mode().unwrap_or(0) & 0o7777;
            let uid = h.uid().unwrap_or(0) as u32;
            let gid = h.gid().unwrap_or(0) as u32;
            let et = h.entry_type();
            let mut entry = Entry {
                path: path.clone(),
                kind: Kind::Other,
                mode,
                uid,
                gid,
                size: 0,
                blake3: None,
                target: None,
            };
            if et.is_file() {
                let mut hasher = blake3::Hasher::new();
                let size = std::io::copy(&mut e, &mut hasher)
                    .doing(|| format!("reading {path} in {what}"))?;
                entry.kind = Kind::File;
                entry.size = size;
                entry.blake3 = Some(hasher.finalize().to_hex().to_string());
            } else if et.is_dir() {
                entry.kind = Kind::Dir;
            } else if et.is_symlink() {
                entry.kind = Kind::Symlink;
                entry.target = e
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned());
            } else if et.is_hard_link() {
                let target = e
                    .link_name_bytes()
                    .map(|t| normalize(&String::from_utf8_lossy(&t)));
                if let Some(t) = target.and_then(|t| entries.get(&t)) {
                    entry.kind = t.kind.clone();
                    entry.size = t.size;
                    entry.blake3 = t.blake3.clone();
                }
            }
            entries.insert(path, entry);
        }
        Ok(FileIndex::new(entries.into_values().collect()))
    }

    /// Apply layers in order: later entries replace earlier ones, whiteouts delete.
    pub fn merge(layers: &[FileIndex]) -> FileIndex {
        let mut fs: BTreeMap<String, Entry> = BTreeMap::new();
        for layer in layers {
            // Opaque whiteouts first: they hide the lower layers' content of their directory,
            // not this layer's own entries.
            // Paths resolve through the symlinks of the image so far, as unpacking does (an
            // entry `bin/x` over `bin -> usr/bin` is `/usr/bin/x`), so the index names what is
            // really there.
            for e in &layer.entries {
                if let Some(dir) = e.path.strip_suffix("/.wh..wh..opq") {
                    let dir = resolve_dir(&fs, dir);
                    remove_children(&mut fs, &dir);
                }
            }
            for e in &layer.entries {
                let (dir, base) = e.path.rsplit_once('/').unwrap_or(("", &e.path));
                if base == ".wh..wh..opq" {
                    continue;
                }
                let dir = resolve_dir(&fs, dir);
                if let Some(name) = base.strip_prefix(".wh.") {
                    let victim = format!("{dir}/{name}");
                    fs.remove(&victim);
                    remove_children(&mut fs, &victim);
                    continue;
                }
                let path = format!("{dir}/{base}");
                if e.kind != Kind::Dir {
                    remove_children(&mut fs, &path);
                }
                let mut e = e.clone();
                e.path.clone_from(&path);
                fs.insert(path, e);
            }
        }
        FileIndex::new(fs.into_values().collect())
    }

    pub fn to_json(&self) -> Vec<u8> {
        crate::oci::canonical_json(self)
    }
}

/// The directory `dir` (`/a/b`, or "" for the root) with the symlinks among its components
/// resolved as a `chroot` into the image would (`..` stops at the root; at most 40 links).
fn resolve_dir(fs: &BTreeMap<String, Entry>, dir: &str) -> String {
    let mut todo: std::collections::VecDeque<String> = dir.split('/').map(str::to_string).collect();
    let mut out: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                out.pop();
                continue;
            }
            _ => {}
        }
        let candidate = format!(
            "/{}",
            [out.join("/"), c.clone()].join("/").trim_start_matches('/')
        );
        match fs.get(&candidate) {
            Some(Entry {
                kind: Kind::Symlink,
                target: Some(t),
                ..
            }) if hops < 40 => {
                hops += 1;
                if t.starts_with('/') {
                    out.clear();
                }
                for (i, part) in t.split('/').enumerate() {
                    todo.insert(i, part.to_string());
                }
            }
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!("/{}", out.join("/"))
    }
}

fn remove_children(fs: &mut BTreeMap<String, Entry>, dir: &str) {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let doomed: Vec<String> = fs
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        fs.remove(&k);
    }
}

/// `./a/b/` → `/a/b`.
pub fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, hash: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            blake3: Some(hash.into()),
            target: None,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            blake3: None,
            target: None,
        }
    }

    #[test]
    fn merge_resolves_paths_through_symlinks_as_unpacking_does() {
        let mut link = file("/bin", "");
        link.kind = Kind::Symlink;
        link.blake3 = None;
        link.target = Some("usr/bin".into());
        let mut up = file("/up", "");
        up.kind = Kind::Symlink;
        up.blake3 = None;
        up.target = Some("../../usr".into());
        let base = FileIndex::new(vec![dir("/usr"), dir("/usr/bin"), link, up]);
        let top = FileIndex::new(vec![
            file("/bin/tool", "t"),
            file("/up/bin/.wh.tool", ""),
            file("/up/bin/other", "o"),
        ]);
        let merged = FileIndex::merge(&[base, top]);
        let paths: Vec<&str> = merged.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/bin", "/up", "/usr", "/usr/bin", "/usr/bin/other"]);
    }

    #[test]
    fn merge_applies_whiteouts() {
        let lower = FileIndex::new(vec![
            dir("/a"),
            file("/a/x", "1"),
            file("/a/y", "2"),
            dir("/b"),
            file("/b/z", "3"),
        ]);
        let upper = FileIndex::new(vec![
            file("/a/.wh.x", ""),
            file("/b/.wh..wh..opq", ""),
            file("/b/new", "4"),
            file("/a/y", "5"),
        ]);
        let merged = FileIndex::merge(&[lower, upper]);
        let paths: Vec<(&str, Option<&str>)> = merged
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.blake3.as_deref()))
            .collect();
        assert_eq!(
            paths,
            [
                ("/a", None),
                ("/a/y", Some("5")),
                ("/b", None),
                ("/b/new", Some("4"))
            ]
        );
    }
}
