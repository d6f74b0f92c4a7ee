//! Building a layer from a `copy` step, reproducibly, and without redoing unchanged work.
//!
//! Reproducibility: entries in sorted order, mtime fixed (`SOURCE_DATE_EPOCH` or 0), uid/gid 0
//! unless `owner` says otherwise, no user or group names, modes normalised (0755 for executables
//! and directories, 0644 otherwise) unless `mode` says otherwise, parents created as 0755 root.
//! Layers stay uncompressed, so no compressor can make output vary.
//!
//! Caching: a stat cache maps (path, size, mtime, ctime, inode) to the content's BLAKE3, so an
//! untouched file is never read again; the layer key is a hash of every entry's metadata and
//! content hash, so a file whose mtime changed but content did not is hashed again but the layer
//! is not re-tarred.

use crate::digest::Digest;
use crate::error::{Context, Error, Result};
use crate::fileindex::{Entry, FileIndex, Kind};
use crate::oci::{self, Descriptor};
use crate::store::Staging;
use recast_api::CacheDir;
use recast_spec::CopyStep;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies a source file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl StatKey {
    fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

/// Source path → (stat, BLAKE3 hex), persisted as text lines in the cache directory.
pub struct StatCache {
    path: PathBuf,
    map: HashMap<PathBuf, (StatKey, String)>,
    dirty: bool,
}

impl StatCache {
    pub fn load(cache_dir: &Path) -> StatCache {
        let path = CacheDir::new(cache_dir).stat_cache();
        let mut map = HashMap::new();
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                let Some((fields, p)) = line.split_once('\t') else {
                    continue;
                };
                let f: Vec<&str> = fields.split(' ').collect();
                if let [h, size, mt, ct, ino, dev] = f.as_slice() {
                    let key = (|| {
                        Some(StatKey {
                            size: size.parse().ok()?,
                            mtime_ns: mt.parse().ok()?,
                            ctime_ns: ct.parse().ok()?,
                            ino: ino.parse().ok()?,
                            dev: dev.parse().ok()?,
                        })
                    })();
                    if let Some(key) = key {
                        map.insert(PathBuf::from(p), (key, (*h).to_string()));
                    }
                }
            }
        }
        StatCache {
            path,
            map,
            dirty: false,
        }
    }

    /// A cache that remembers nothing (for `build --check`).
    pub fn empty() -> StatCache {
        StatCache {
            path: PathBuf::new(),
            map: HashMap::new(),
            dirty: false,
        }
    }

    fn get(&self, p: &Path, key: StatKey) -> Option<&str> {
        self.map
            .get(p)
            .filter(|(k, _)| *k == key)
            .map(|(_, h)| h.as_str())
    }

    fn put(&mut self, p: PathBuf, key: StatKey, hash: String) {
        self.map.insert(p, (key, hash));
        self.dirty = true;
    }

    pub fn save(&self) -> Result<()> {
        if !self.dirty || self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let mut out = String::new();
        for (p, (k, h)) in &self.map {
            let Some(ps) = p.to_str() else { continue };
            if ps.contains(['\n', '\t']) {
                continue;
            }
            out.push_str(&format!(
                "{h} {} {} {} {} {}\t{ps}\n",
                k.size, k.mtime_ns, k.ctime_ns, k.ino, k.dev
            ));
        }
        let tmp = self
            .path
            .with_extension(format!("tmp{}", std::process::id()));
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&tmp, out).doing(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).doing(|| format!("writing {}", self.path.display()))
    }
}

#[derive(Debug)]
enum ItemKind {
    Dir,
    File {
        src: PathBuf,
        stat: StatKey,
        hash: Option<String>,
    },
    Symlink(String),
}

/// One entry of the layer to write.
#[derive(Debug)]
struct Item {
    /// Path inside the image without the leading '/'.
    path: String,
    kind: ItemKind,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A layer built (or found in the cache) for a copy step.
pub struct Layer {
    pub descriptor: Descriptor,
    pub index: FileIndex,
}

/// Build the layer for `copy` into `staging`, reusing cached work. `cache_dir` holds the layer
/// cache (`None` caches nothing).
pub fn build(
    copy: &CopyStep,
    epoch: u64,
    stats: &mut StatCache,
    cache_dir: Option<&Path>,
    staging: &mut Staging<'_>,
) -> Result<Layer> {
    let mut items = plan(copy)?;
    hash_files(&mut items, stats)?;
    let key = layer_key(&items, epoch);
    let index = FileIndex::new(items.iter().map(index_entry).collect());
    let cache = cache_dir.map(CacheDir::new);
    if let Some(cache) = &cache {
        let entry = cache.layer(key.hex());
        if let Ok(text) = fs::read_to_string(&entry)
            && let Some((d, size)) = text.trim().split_once(' ')
            && let (Some(d), Ok(size)) = (Digest::parse(d), size.parse())
            && staging.has(&d)
        {
            return Ok(Layer {
                descriptor: Descriptor::new(oci::LAYER_TAR, d, size),
                index,
            });
        }
    }
    let mut w = staging.writer()?;
    write_tar(&items, epoch, &mut w)?;
    let (digest, size) = w.finish()?;
    if let Some(cache) = &cache {
        let layers = cache.layers();
        fs::create_dir_all(&layers).doing(|| format!("creating {}", layers.display()))?;
        let tmp = layers.join(format!("{}.tmp{}", key.hex(), std::process::id()));
        fs::write(&tmp, format!("{digest} {size}\n"))
            .doing(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, cache.layer(key.hex()))
            .doing(|| format!("writing the layer cache in {}", layers.display()))?;
    }
    Ok(Layer {
        descriptor: Descriptor::new(oci::LAYER_TAR, digest, size),
        index,
    })
}

/// Every entry the copy step creates, sorted by path, parents first.
fn plan(copy: &CopyStep) -> Result<Vec<Item>> {
    let (uid, gid) = copy.owner.map_or((0, 0), |o| (o.uid, o.gid));
    let dest = copy.dest.trim_matches('/').to_string();
    let mut items = Vec::new();
    // Parents of the destination: plain root-owned directories.
    let comps: Vec<&str> = dest.split('/').filter(|c| !c.is_empty()).collect();
    for i in 1..comps.len() {
        items.push(Item {
            path: comps[..i].join("/"),
            kind: ItemKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    let meta =
        fs::metadata(&copy.src).doing(|| format!("reading copy source {}", copy.src.display()))?;
    if dest.is_empty() && !meta.is_dir() {
        return Err(Error::msg(format!(
            "cannot copy file {} to /: name a destination file",
            copy.src.display()
        )));
    }
    let w = Walk {
        mode: copy.mode,
        uid,
        gid,
        exclude: &copy.exclude,
    };
    w.walk(&copy.src, &meta, dest, "", &mut items)?;
    items.sort_by(|a, b| a.path.cmp(&b.path));
    items.dedup_by(|a, b| a.path == b.path);
    Ok(items)
}

/// How a copy step's entries are made: its mode and owner, and what it leaves out.
struct Walk<'a> {
    mode: Option<u32>,
    uid: u32,
    gid: u32,
    /// Paths relative to the copy source that are not copied (a `.dockerignore`).
    exclude: &'a [String],
}

impl Walk<'_> {
    fn walk(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        path: String,
        rel: &str,
        out: &mut Vec<Item>,
    ) -> Result<()> {
        let (mode, uid, gid) = (self.mode, self.uid, self.gid);
        let ft = meta.file_type();
        let normal = |exec: bool| if exec { 0o755 } else { 0o644 };
        if ft.is_dir() {
            if !path.is_empty() {
                out.push(Item {
                    path: path.clone(),
                    kind: ItemKind::Dir,
                    mode: mode.unwrap_or(0o755),
                    uid,
                    gid,
                });
            }
            let mut children: Vec<(String, PathBuf)> = Vec::new();
            for e in fs::read_dir(src).doing(|| format!("listing copy source {}", src.display()))? {
                let e = e.doing(|| format!("listing copy source {}", src.display()))?;
                let name = e.file_name().into_string().map_err(|n| {
                    Error::msg(format!(
                        "file name {:?} in {} is not valid UTF-8",
                        n,
                        src.display()
                    ))
                })?;
                children.push((name, e.path()));
            }
            children.sort();
            for (name, p) in children {
                let m = fs::symlink_metadata(&p).doing(|| format!("reading {}", p.display()))?;
                let child_rel = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                if self.exclude.contains(&child_rel) {
                    continue;
                }
                let child = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                self.walk(&p, &m, child, &child_rel, out)?;
            }
        } else if ft.is_file() {
            out.push(Item {
                path,
                kind: ItemKind::File {
                    src: src.to_path_buf(),
                    stat: StatKey::of(meta),
                    hash: None,
                },
                mode: mode.unwrap_or_else(|| normal(meta.mode() & 0o111 != 0)),
                uid,
                gid,
            });
        } else if ft.is_symlink() {
            let target =
                fs::read_link(src).doing(|| format!("reading symlink {}", src.display()))?;
            let target = target.to_str().ok_or_else(|| {
                Error::msg(format!("symlink {} has a non-UTF-8 target", src.display()))
            })?;
            out.push(Item {
                path,
                kind: ItemKind::Symlink(target.to_string()),
                mode: 0o777,
                uid,
                gid,
            });
        } else {
            return Err(Error::msg(format!(
                "cannot copy {}: only files, directories and symlinks can go into an image",
                src.display()
            )));
        }
        Ok(())
    }
}

/// Fill in every file's BLAKE3, from the stat cache or by reading it (on two threads).
fn hash_files(items: &mut [Item], stats: &mut StatCache) -> Result<()> {
    let mut todo: Vec<(usize, &Path)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if let ItemKind::File { src, stat, .. } = &item.kind
            && stats.get(src, *stat).is_none()
        {
            todo.push((i, src));
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    let chunk = todo.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<(usize, String)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(i, p)| hash_file(p).map(|h| (*i, h)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::msg("a hashing thread panicked")))
            })
            .collect()
    });
    for r in results {
        for (i, h) in r? {
            if let ItemKind::File { src, stat, hash } = &mut items[i].kind {
                stats.put(src.clone(), *stat, h.clone());
                *hash = Some(h);
            }
        }
    }
    for item in items.iter_mut() {
        if let ItemKind::File { src, stat, hash } = &mut item.kind
            && hash.is_none()
        {
            *hash = stats.get(src, *stat).map(str::to_string);
        }
    }
    Ok(())
}

fn hash_file(p: &Path) -> Result<String> {
    let mut f = fs::File::open(p).doing(|| format!("reading copy source {}", p.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f
            .read(&mut buf)
            .doing(|| format!("reading copy source {}", p.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// A hash of everything that determines the layer's bytes.
fn layer_key(items: &[Item], epoch: u64) -> Digest {
    let mut h = Sha256::new();
    h.update(format!("recast-layer-v1 {epoch}\n"));
    for item in items {
        let what = match &item.kind {
            ItemKind::Dir => "dir".to_string(),
            ItemKind::File { stat, hash, .. } => {
                format!("file {} {}", stat.size, hash.as_deref().unwrap_or(""))
            }
            ItemKind::Symlink(t) => format!("symlink {t}"),
        };
        h.update(format!(
            "{}\0{:o} {} {} {what}\n",
            item.path, item.mode, item.uid, item.gid
        ));
    }
    Digest::from_sha(h.finalize().as_slice())
}

fn index_entry(item: &Item) -> Entry {
    let (kind, size, blake3, target) = match &item.kind {
        ItemKind::Dir => (Kind::Dir, 0, None, None),
        ItemKind::File { stat, hash, .. } => (Kind::File, stat.size, hash.clone(), None),
        ItemKind::Symlink(t) => (Kind::Symlink, 0, None, Some(t.clone())),
    };
    Entry {
        path: format!("/{}", item.path),
        kind,
        mode: item.mode,
        uid: item.uid,
        gid: item.gid,
        size,
        blake3,
        target,
    }
}

fn write_tar(items: &[Item], epoch: u64, w: &mut impl Write) -> Result<()> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Deterministic);
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mode(item.mode);
        h.set_uid(u64::from(item.uid));
        h.set_gid(u64::from(item.gid));
        h.set_mtime(epoch);
        let doing = || format!("writing {} into the layer", item.path);
        match &item.kind {
            ItemKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", item.path), io::empty())
                    .doing(doing)?;
            }
            ItemKind::File { src, stat, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(stat.size);
                let f = fs::File::open(src)
                    .doing(|| format!("reading copy source {}", src.display()))?;
                let got = f.metadata().map(|m| m.len()).unwrap_or(0);
                if got != stat.size {
                    return Err(Error::msg(format!(
                        "copy source {} changed while the image was being built",
                        src.display()
                    )));
                }
                b.append_data(&mut h, &item.path, f.take(stat.size))
                    .doing(doing)?;
            }
            ItemKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &item.path, target).doing(doing)?;
            }
        }
    }
    b.into_inner().doing(|| "finishing the layer".to_string())?;
    Ok(())
}
