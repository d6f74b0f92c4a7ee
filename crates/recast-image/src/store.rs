//! The content store: an OCI image layout under the data directory.
//!
//! `store/oci-layout`, `store/index.json` (the named images) and `store/blobs/sha256/<hex>`. Blobs are
//! written to a staging directory and renamed into place only once complete and verified, so a
//! failed build, import or pull leaves nothing behind. Every read verifies the blob's digest.

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Context, Corrupt, Error, Result};
use crate::oci::{self, Descriptor, Index, Manifest};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Annotation on an index entry: the image name, kept when its tag moves on.
pub const ANNOTATION_NAME: &str = "dev.recast.image.name";

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A reference to a stored image, as users write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `name[:tag]` (tag defaults to `latest`).
    Tag { name: String, tag: String },
    /// `name@sha256:…` or `sha256:…` (name optional).
    Digest {
        name: Option<String>,
        digest: Digest,
    },
    /// A unique prefix of a digest's hex (at least 6 digits).
    Prefix(String),
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let bad = || {
            Error::msg(format!(
                "invalid image reference \"{s}\": expected NAME[:TAG], NAME@sha256:DIGEST or a digest"
            ))
        };
        if s.is_empty() || s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        if let Some(d) = Digest::parse(s) {
            return Ok(ImageRef::Digest {
                name: None,
                digest: d,
            });
        }
        if let Some((name, d)) = s.split_once('@') {
            let digest = Digest::parse(d).ok_or_else(bad)?;
            return Ok(ImageRef::Digest {
                name: Some(name.to_string()),
                digest,
            });
        }
        if s.len() >= 6 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ImageRef::Prefix(s.to_ascii_lowercase()));
        }
        // The tag is after the last ':' that follows the last '/', so "host:5000/app" has none.
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() || tag.is_empty() {
            return Err(bad());
        }
        Ok(ImageRef::Tag {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
            ImageRef::Digest {
                name: Some(n),
                digest,
            } => write!(f, "{n}@{digest}"),
            ImageRef::Digest { name: None, digest } => write!(f, "{digest}"),
            ImageRef::Prefix(p) => write!(f, "{p}"),
        }
    }
}

/// Whether `name` is a valid image name: `/`-separated components of ASCII letters, digits, '.',
/// '_' and '-' (the first may carry a `:PORT`), none empty, `.` or `..`; at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').enumerate().all(|(i, c)| {
            let c = if i == 0 {
                match c.split_once(':') {
                    Some((h, port))
                        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        h
                    }
                    Some(_) => return false,
                    None => c,
                }
            } else {
                c
            };
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Whether `tag` is a valid tag (as the OCI distribution spec defines it).
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// One image in the store, as `image ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredImage {
    /// `name:tag`, or `name@sha256:…` when no tag points at it any more.
    pub name: String,
    pub digest: Digest,
    /// Manifest, config and layers.
    pub size: u64,
}

impl Store {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        let store = Store {
            root: root.to_path_buf(),
        };
        fs::create_dir_all(store.root.join("blobs/sha256"))
            .doing(|| format!("creating the image store at {}", root.display()))?;
        fs::create_dir_all(store.root.join("tmp"))
            .doing(|| format!("creating the image store at {}", root.display()))?;
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.write_file_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.root.join("index.json");
        if !index.exists() {
            store.write_file_atomic(&index, &oci::canonical_json(&Index::default()))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A new staging area for blobs; nothing in it is visible until `commit`.
    pub fn stage(&self) -> Result<Staging<'_>> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("tmp").join(format!(
            "stage-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).doing(|| format!("creating {}", dir.display()))?;
        Ok(Staging {
            store: self,
            dir,
            blobs: Vec::new(),
        })
    }

    /// Read a whole blob, verifying its digest. `of` names what it belongs to, for errors.
    pub fn read_blob(&self, d: &Digest, of: &str) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.open_blob(d, of)?
            .read_to_end(&mut buf)
            .doing(|| format!("reading blob {d} of {of}"))?;
        Ok(buf)
    }

    /// Check a blob against its digest by streaming it (never held in memory).
    pub fn verify_blob(&self, d: &Digest, of: &str) -> Result<()> {
        io::copy(&mut self.open_blob(d, of)?, &mut io::sink())
            .map(|_| ())
            .doing(|| format!("reading blob {d} of {of}"))
    }

    /// Stream a blob; the reader fails with a clear error at the end if the content does not
    /// match the digest.
    pub fn open_blob(&self, d: &Digest, of: &str) -> Result<VerifyingReader<File>> {
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::msg(format!(
                    "blob {d} of {of} is missing from the store ({})\n  hint: pull or build the image again",
                    path.display()
                ))
            } else {
                Error::Io { doing: format!("opening blob {d} of {of}"), source: e }
            }
        })?;
        Ok(VerifyingReader {
            inner: HashingReader::new(file),
            expected: d.clone(),
            of: of.to_string(),
            done: false,
        })
    }

    /// Read a whole blob of at most `limit` bytes, verifying its digest; `kind` names what it is
    /// ("manifest", "config"), for errors.
    pub fn read_blob_capped(
        &self,
        d: &Digest,
        kind: &str,
        of: &str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let r = self.open_blob(d, of)?;
        oci::read_capped(r, limit, &format!("{kind} {d} of {of}"))
    }

    /// The manifest with digest `d`, verified (at most [`oci::MAX_MANIFEST`] bytes).
    pub fn manifest(&self, d: &Digest, of: &str) -> Result<Manifest> {
        let bytes = self.read_blob_capped(d, "manifest", of, oci::MAX_MANIFEST)?;
        oci::parse_json(&bytes, &format!("manifest {d} of {of}"), "OCI manifest")
    }

    /// The config of a manifest, verified, as JSON (at most [`oci::MAX_CONFIG`] bytes).
    pub fn config(&self, m: &Manifest, of: &str) -> Result<serde_json::Value> {
        let bytes = self.read_blob_capped(&m.config.digest, "config", of, oci::MAX_CONFIG)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::msg(format!(
                "config {} of {of} is not valid JSON: {e}",
                m.config.digest
            ))
        })
    }

    pub fn index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let what = path.display().to_string();
        let file = File::open(&path).doing(|| format!("reading {what}"))?;
        let bytes = oci::read_capped(file, oci::MAX_STORE_INDEX, &what)?;
        oci::parse_json(&bytes, &what, "OCI index")
    }

    /// Change `index.json` under an exclusive lock, atomically.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let lock_path = self.root.join("index.lock");
        let lock =
            File::create(&lock_path).doing(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .doing(|| format!("locking {}", lock_path.display()))?;
        let mut index = self.index()?;
        let out = f(&mut index)?;
        let path = self.root.join("index.json");
        self.write_file_atomic(&path, &oci::canonical_json(&index))?;
        Ok(out)
    }

    /// Point `name:tag` at the manifest `desc`. The previous target stays listed under the name.
    pub fn tag(&self, name: &str, tag: &str, desc: &Descriptor) -> Result<()> {
        self.name(name, Some(tag), desc)
    }

    /// List the manifest `desc` under `name`, and point `name:tag` at it when a tag is given.
    pub fn name(&self, name: &str, tag: Option<&str>, desc: &Descriptor) -> Result<()> {
        let full = tag.map(|t| format!("{name}:{t}"));
        self.update_index(|index| {
            if let Some(full) = &full {
                for m in &mut index.manifests {
                    if m.annotations.get(oci::ANNOTATION_REF_NAME) == Some(full) {
                        m.annotations.remove(oci::ANNOTATION_REF_NAME);
                    }
                }
            }
            let mut entry = desc.clone();
            entry.annotations.clear();
            entry.platform = None;
            if entry.media_type.is_empty() {
                entry.media_type = oci::MANIFEST.to_string();
            }
            if let Some(full) = &full {
                entry
                    .annotations
                    .insert(oci::ANNOTATION_REF_NAME.into(), full.clone());
            }
            entry
                .annotations
                .insert(ANNOTATION_NAME.into(), name.to_string());
            // One entry per (digest, ref): drop an untagged entry of the same digest and name.
            index.manifests.retain(|m| {
                !(m.digest == desc.digest
                    && m.annotations.get(ANNOTATION_NAME).map(String::as_str) == Some(name)
                    && !m.annotations.contains_key(oci::ANNOTATION_REF_NAME))
            });
            index.manifests.push(entry);
            // Entries whose tag moved on and that carry no name are unreachable: drop them.
            index.manifests.retain(|m| {
                m.annotations.contains_key(oci::ANNOTATION_REF_NAME)
                    || m.annotations.contains_key(ANNOTATION_NAME)
            });
            dedupe_untagged(index);
            index.manifests.sort_by_key(entry_name);
            Ok(())
        })
    }

    /// Every image in the store.
    pub fn list(&self) -> Result<Vec<StoredImage>> {
        let index = self.index()?;
        let mut out = Vec::new();
        for m in &index.manifests {
            let name = entry_name(m);
            let size = self
                .manifest(&m.digest, &name)
                .map(|man| {
                    m.size + man.config.size + man.layers.iter().map(|l| l.size).sum::<u64>()
                })
                .unwrap_or(m.size);
            out.push(StoredImage {
                name,
                digest: m.digest.clone(),
                size,
            });
        }
        Ok(out)
    }

    /// Find the image `r` names: its index entry (manifest descriptor) and display name.
    pub fn resolve(&self, r: &ImageRef) -> Result<(Descriptor, String)> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|m| match r {
                ImageRef::Tag { name, tag } => {
                    m.annotations.get(oci::ANNOTATION_REF_NAME) == Some(&format!("{name}:{tag}"))
                }
                ImageRef::Digest { name, digest } => {
                    m.digest == *digest
                        && name
                            .as_ref()
                            .is_none_or(|n| m.annotations.get(ANNOTATION_NAME) == Some(n))
                }
                ImageRef::Prefix(p) => m.digest.hex().starts_with(p.as_str()),
            })
            .collect();
        let distinct: BTreeSet<&Digest> = found.iter().map(|m| &m.digest).collect();
        match (found.first(), distinct.len()) {
            (Some(m), 1) => Ok(((*m).clone(), entry_name(m))),
            (None, _) => Err(Error::msg(format!(
                "no image {r} in the store ({})\n  hint: `recast image ls` lists the images; `recast build` or `recast image pull` adds them",
                self.root.display()
            ))),
            _ => Err(Error::msg(format!(
                "image reference {r} is ambiguous: it matches {} images",
                distinct.len()
            ))),
        }
    }

    /// Remove the index entries `r` names. Blobs stay until `gc`.
    pub fn remove(&self, r: &ImageRef) -> Result<Vec<StoredImage>> {
        let (desc, _) = self.resolve(r)?;
        self.update_index(|index| {
            let mut removed = Vec::new();
            index.manifests.retain(|m| {
                let hit = match r {
                    ImageRef::Tag { .. } => {
                        m.annotations.get(oci::ANNOTATION_REF_NAME)
                            == desc.annotations.get(oci::ANNOTATION_REF_NAME)
                    }
                    _ => m.digest == desc.digest,
                };
                if hit {
                    removed.push(StoredImage {
                        name: entry_name(m),
                        digest: m.digest.clone(),
                        size: m.size,
                    });
                }
                !hit
            });
            Ok(removed)
        })
    }

    /// Delete every blob no listed image references, and stale staging areas.
    /// Returns (blobs removed, bytes freed).
    pub fn gc(&self) -> Result<(usize, u64)> {
        let lock_path = self.root.join("index.lock");
        let lock =
            File::create(&lock_path).doing(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .doing(|| format!("locking {}", lock_path.display()))?;
        let mut live: BTreeSet<String> = BTreeSet::new();
        for m in self.index()?.manifests {
            let name = entry_name(&m);
            live.insert(m.digest.hex().to_string());
            if let Ok(man) = self.manifest(&m.digest, &name) {
                live.insert(man.config.digest.hex().to_string());
                live.extend(man.layers.iter().map(|l| l.digest.hex().to_string()));
                if let Some(fi) = man.file_index() {
                    live.insert(fi.hex().to_string());
                }
            }
        }
        let dir = self.root.join("blobs/sha256");
        let (mut n, mut bytes) = (0, 0);
        for e in fs::read_dir(&dir).doing(|| format!("listing {}", dir.display()))? {
            let e = e.doing(|| format!("listing {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(e.path()).doing(|| format!("removing {}", e.path().display()))?;
                n += 1;
            }
        }
        // Staging areas of processes that are gone.
        if let Ok(entries) = fs::read_dir(self.root.join("tmp")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        Ok((n, bytes))
    }

    fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, bytes).doing(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).doing(|| format!("renaming {} into place", tmp.display()))
    }
}

/// `name:tag` of an index entry, or `name@digest` once its tag has moved on.
fn entry_name(m: &Descriptor) -> String {
    if let Some(r) = m.annotations.get(oci::ANNOTATION_REF_NAME) {
        return r.clone();
    }
    match m.annotations.get(ANNOTATION_NAME) {
        Some(n) => format!("{n}@{}", m.digest),
        None => m.digest.to_string(),
    }
}

fn dedupe_untagged(index: &mut Index) {
    let mut seen = BTreeSet::new();
    index.manifests.retain(|m| {
        m.annotations.contains_key(oci::ANNOTATION_REF_NAME) || seen.insert(entry_name(m))
    });
}

/// Blobs written but not yet visible in the store.
pub struct Staging<'s> {
    store: &'s Store,
    dir: PathBuf,
    blobs: Vec<Digest>,
}

impl<'s> Staging<'s> {
    /// Stage a blob from memory.
    pub fn put(&mut self, bytes: &[u8]) -> Result<Descriptor> {
        let mut w = self.writer()?;
        w.write_all(bytes).doing(|| "writing a blob".to_string())?;
        let (d, size) = w.finish()?;
        Ok(Descriptor::new("", d, size))
    }

    /// Stage the blob a descriptor names from a reader: reading stops after `size` bytes, and
    /// the content must be exactly `size` bytes that hash to `d`.
    pub fn put_sized(
        &mut self,
        r: &mut (impl Read + ?Sized),
        d: &Digest,
        size: u64,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let mut limited = r.take(size.saturating_add(1));
        let got = self.put_reader(&mut limited, None, what);
        let (actual, n) = got?;
        if n > size {
            return Err(Error::msg(format!(
                "{what} is larger than its descriptor says ({size} bytes)"
            )));
        }
        if n < size {
            return Err(Error::msg(format!(
                "{what} is {n} bytes, but its descriptor says {size}"
            )));
        }
        if actual != *d {
            return Err(Error::msg(format!(
                "{what} does not match its digest: expected {d}, content is {actual}"
            )));
        }
        Ok((actual, n))
    }

    /// The size of a staged (or stored) blob.
    pub fn size_of(&self, d: &Digest) -> Option<u64> {
        let staged = self.dir.join(d.hex());
        fs::metadata(&staged)
            .or_else(|_| fs::metadata(self.store.blob_path(d)))
            .ok()
            .map(|m| m.len())
    }

    /// Stage a blob from a reader; when `expected` is given, the content must hash to it.
    pub fn put_reader(
        &mut self,
        r: &mut (impl Read + ?Sized),
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<(Digest, u64)> {
        let mut w = self.writer()?;
        io::copy(r, &mut w).doing(|| format!("writing {what}"))?;
        let (d, size) = w.finish()?;
        if let Some(e) = expected
            && *e != d
        {
            return Err(Error::msg(format!(
                "{what} does not match its digest: expected {e}, content is {d}"
            )));
        }
        Ok((d, size))
    }

    /// A writer for one blob; `finish` hashes it into the staging area.
    pub fn writer(&mut self) -> Result<BlobWriter<'_, 's>> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self
            .dir
            .join(format!("w{}", N.fetch_add(1, Ordering::Relaxed)));
        let file = File::create(&path).doing(|| format!("creating {}", path.display()))?;
        Ok(BlobWriter {
            staging: self,
            path,
            w: HashingWriter::new(BufWriter::with_capacity(256 << 10, file)),
        })
    }

    /// Whether the blob is already in the store or staged here.
    pub fn has(&self, d: &Digest) -> bool {
        self.blobs.contains(d) || self.store.has_blob(d)
    }

    /// Move every staged blob into the store.
    pub fn commit(mut self) -> Result<()> {
        for d in std::mem::take(&mut self.blobs) {
            let from = self.dir.join(d.hex());
            let to = self.store.blob_path(&d);
            if to.exists() {
                continue;
            }
            fs::rename(&from, &to).doing(|| format!("moving blob {d} into the store"))?;
        }
        Ok(())
    }

    /// Read back a staged (or stored) blob of at most `limit` bytes, verified; `kind` names what
    /// it is ("manifest", "config"), for errors.
    pub fn read(&self, d: &Digest, kind: &str, of: &str, limit: u64) -> Result<Vec<u8>> {
        oci::read_capped(self.open(d, of)?, limit, &format!("{kind} {d} of {of}"))
    }

    /// Open a staged (or stored) blob for streaming, verified at the end.
    pub fn open(&self, d: &Digest, of: &str) -> Result<VerifyingReader<File>> {
        let staged = self.dir.join(d.hex());
        if staged.exists() {
            let file = File::open(&staged).doing(|| format!("opening staged blob {d}"))?;
            return Ok(VerifyingReader {
                inner: HashingReader::new(file),
                expected: d.clone(),
                of: of.to_string(),
                done: false,
            });
        }
        self.store.open_blob(d, of)
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct BlobWriter<'a, 's> {
    staging: &'a mut Staging<'s>,
    path: PathBuf,
    w: HashingWriter<BufWriter<File>>,
}

impl BlobWriter<'_, '_> {
    pub fn finish(self) -> Result<(Digest, u64)> {
        let (d, size, buf) = self.w.finish();
        buf.into_inner()
            .map_err(|e| e.into_error())
            .doing(|| format!("writing {}", self.path.display()))?;
        let to = self.staging.dir.join(d.hex());
        fs::rename(&self.path, &to).doing(|| format!("staging blob {d}"))?;
        if !self.staging.blobs.contains(&d) {
            self.staging.blobs.push(d.clone());
        }
        Ok((d, size))
    }
}

impl Write for BlobWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Reads a blob and fails at its end if the content does not hash to the expected digest.
pub struct VerifyingReader<R> {
    inner: HashingReader<R>,
    expected: Digest,
    of: String,
    done: bool,
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let (actual, _) = self.inner.take_digest();
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    Corrupt(format!(
                        "blob {} of {} is corrupted: its content hashes to {actual}\n  hint: remove the image and pull or build it again",
                        self.expected, self.of
                    )),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_used_as_names_are_checked() {
        for ok in [
            "hello",
            "team/app",
            "127.0.0.1:5000/team/app",
            "r.io/a_b-c.d",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a b",
            "a\u{1b}[31m",
            "h:x/a",
            "a/b:1",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_tag("v1.2_3-x") && valid_tag("_x") && valid_tag(&"a".repeat(128)));
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129)] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
    }
}
