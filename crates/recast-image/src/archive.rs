//! Images in and out of files: OCI layout directories, OCI archives and docker archives.
//!
//! Reading stages every blob (verifying its digest) before anything becomes visible in the store.
//! Writing produces deterministic tars: sorted entries, fixed mtimes, no owner names.

use crate::digest::Digest;
use crate::error::{Context, Error, Result};
use crate::oci::{self, Descriptor, Index, Manifest};
use crate::store::{Staging, Store};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// An image read from an archive or layout: its manifest descriptor and the names it carried.
#[derive(Debug, Clone)]
pub struct Found {
    pub descriptor: Descriptor,
    pub names: Vec<String>,
}

/// Stage every blob of an OCI layout directory that `index.json` reaches; return its images.
pub fn read_oci_dir(dir: &Path, staging: &mut Staging<'_>) -> Result<Vec<Found>> {
    let what = format!("OCI layout {}", dir.display());
    let index_file = File::open(dir.join("index.json")).map_err(|e| {
        Error::msg(format!("{what} has no readable index.json: {e}\n  hint: an OCI layout holds oci-layout, index.json and blobs/"))
    })?;
    let index_bytes = oci::read_capped(
        index_file,
        oci::MAX_ARCHIVE_INDEX,
        &format!("index.json of {what}"),
    )?;
    let index: Index =
        oci::parse_json(&index_bytes, &format!("index.json of {what}"), "OCI index")?;
    let mut fetch = |d: &Digest, size: Option<u64>, staging: &mut Staging<'_>| -> Result<()> {
        if staging.has(d) {
            return check_size(staging, d, size, &what);
        }
        let p = dir.join("blobs/sha256").join(d.hex());
        let mut f =
            File::open(&p).map_err(|e| Error::msg(format!("{what} is missing blob {d}: {e}")))?;
        let blob = format!("blob {d} of {what}");
        match size {
            Some(n) => staging.put_sized(&mut f, d, n, &blob)?,
            None => staging.put_reader(&mut f, Some(d), &blob)?,
        };
        Ok(())
    };
    let mut out = Vec::new();
    for desc in &index.manifests {
        stage_image_blobs(desc, staging, &mut fetch, &what, &mut Visited::default())?;
        out.push(Found {
            descriptor: desc.clone(),
            names: ref_names(desc),
        });
    }
    Ok(out)
}

/// Stage the blobs of an OCI archive (a tar of a layout); return its images.
pub fn read_oci_archive(path: &Path, staging: &mut Staging<'_>) -> Result<Vec<Found>> {
    let what = format!("OCI archive {}", path.display());
    let mut index: Option<Index> = None;
    let mut seen_layout = false;
    for_each_file(path, &what, |name, entry| {
        let name = name.trim_start_matches("./");
        if name == "index.json" {
            let of = format!("index.json in {what}");
            let buf = oci::read_capped(entry, oci::MAX_ARCHIVE_INDEX, &of)?;
            index = Some(oci::parse_json(&buf, &of, "OCI index")?);
        } else if name == "oci-layout" {
            seen_layout = true;
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let d = Digest::parse(&format!("sha256:{hex}")).ok_or_else(|| {
                Error::msg(format!("{what} has a blob with an invalid name: {name}"))
            })?;
            staging.put_reader(entry, Some(&d), &format!("blob {d} in {what}"))?;
        }
        Ok(())
    })?;
    let index = index.ok_or_else(|| {
        let hint = if seen_layout {
            ""
        } else {
            "\n  hint: is it a docker archive? use docker-archive:FILE"
        };
        Error::msg(format!("{what} has no index.json{hint}"))
    })?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        let mut present =
            |d: &Digest, size: Option<u64>, staging: &mut Staging<'_>| -> Result<()> {
                if staging.has(d) {
                    check_size(staging, d, size, &what)
                } else {
                    Err(Error::msg(format!(
                        "{what} is missing blob {d} (truncated or incomplete archive?)"
                    )))
                }
            };
        stage_image_blobs(desc, staging, &mut present, &what, &mut Visited::default())?;
        out.push(Found {
            descriptor: desc.clone(),
            names: ref_names(desc),
        });
    }
    Ok(out)
}

/// Stage a `docker save` archive, converting each image to an OCI manifest.
pub fn read_docker_archive(path: &Path, staging: &mut Staging<'_>) -> Result<Vec<Found>> {
    let what = format!("docker archive {}", path.display());
    let mut files: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut manifest_json: Option<Vec<u8>> = None;
    for_each_file(path, &what, |name, entry| {
        let name = name.trim_start_matches("./").to_string();
        if name == "manifest.json" {
            let of = format!("manifest.json in {what}");
            manifest_json = Some(oci::read_capped(entry, oci::MAX_ARCHIVE_INDEX, &of)?);
        } else if name.ends_with(".tar") || name.ends_with(".json") || name.starts_with("blobs/") {
            let ds = staging.put_reader(entry, None, &format!("{name} in {what}"))?;
            files.insert(name, ds);
        }
        Ok(())
    })?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Item {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let bytes = manifest_json.ok_or_else(|| {
        Error::msg(format!(
            "{what} has no manifest.json (is it a docker archive?)"
        ))
    })?;
    let items: Vec<Item> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::msg(format!("manifest.json in {what} is not valid: {e}")))?;
    let get = |p: &str| -> Result<(Digest, u64)> {
        files.get(p).cloned().ok_or_else(|| {
            Error::msg(format!(
                "{what} is missing {p} (truncated or incomplete archive?)"
            ))
        })
    };
    let mut out = Vec::new();
    for item in items {
        let (cd, cs) = get(&item.config)?;
        let mut layers = Vec::new();
        for l in &item.layers {
            let (ld, ls) = get(l)?;
            let mut head = [0u8; 2];
            let mut r = staging.open(&ld, &what)?;
            let n = r
                .read(&mut head)
                .doing(|| format!("reading {l} in {what}"))?;
            let media = if n == 2 && head == [0x1f, 0x8b] {
                oci::LAYER_TAR_GZIP
            } else {
                oci::LAYER_TAR
            };
            layers.push(Descriptor::new(media, ld, ls));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: oci::MANIFEST.to_string(),
            config: Descriptor::new(oci::CONFIG, cd, cs),
            layers,
            annotations: BTreeMap::new(),
        };
        let bytes = oci::canonical_json(&manifest);
        let d = staging.put(&bytes)?;
        out.push(Found {
            descriptor: Descriptor::new(oci::MANIFEST, d.digest, d.size),
            names: item.repo_tags.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// How deep image indexes may nest in a layout or archive.
const MAX_INDEX_DEPTH: usize = 8;

/// The manifests and indexes already staged, and the current index depth.
#[derive(Default)]
struct Visited {
    seen: std::collections::BTreeSet<Digest>,
    depth: usize,
}

/// A staged blob must have the size its descriptor states (when it states one).
fn check_size(staging: &Staging<'_>, d: &Digest, size: Option<u64>, what: &str) -> Result<()> {
    match (size, staging.size_of(d)) {
        (Some(want), Some(got)) if want != got => Err(Error::msg(format!(
            "blob {d} in {what} is {got} bytes, but its descriptor says {want}"
        ))),
        _ => Ok(()),
    }
}

/// Stage a manifest (or index) and what it references through `fetch` (given each blob's
/// digest and the size its descriptor states).
fn stage_image_blobs(
    desc: &Descriptor,
    staging: &mut Staging<'_>,
    fetch: &mut impl FnMut(&Digest, Option<u64>, &mut Staging<'_>) -> Result<()>,
    what: &str,
    visited: &mut Visited,
) -> Result<()> {
    // Each manifest is read once, however often indexes list it, and indexes nest only so deep:
    // a small crafted archive can otherwise demand exponential work or overflow the stack.
    if !visited.seen.insert(desc.digest.clone()) {
        return Ok(());
    }
    if visited.depth >= MAX_INDEX_DEPTH {
        return Err(Error::msg(format!(
            "{what} nests image indexes more than {MAX_INDEX_DEPTH} deep (at {})",
            desc.digest
        )));
    }
    if desc.size > oci::MAX_MANIFEST {
        return Err(oci::too_large(
            &format!("manifest {} in {what}", desc.digest),
            oci::MAX_MANIFEST,
        ));
    }
    fetch(&desc.digest, Some(desc.size), staging)?;
    if desc.media_type == oci::INDEX || desc.media_type == oci::DOCKER_MANIFEST_LIST {
        let bytes = staging.read(&desc.digest, "image index", what, oci::MAX_MANIFEST)?;
        let index: Index = oci::parse_json(
            &bytes,
            &format!("image index {} in {what}", desc.digest),
            "OCI index",
        )?;
        visited.depth += 1;
        for m in &index.manifests {
            stage_image_blobs(m, staging, fetch, what, visited)?;
        }
        visited.depth -= 1;
        return Ok(());
    }
    let bytes = staging.read(&desc.digest, "manifest", what, oci::MAX_MANIFEST)?;
    let m: Manifest = oci::parse_json(
        &bytes,
        &format!("manifest {} in {what}", desc.digest),
        "OCI manifest",
    )?;
    if m.config.size > oci::MAX_CONFIG {
        return Err(oci::too_large(
            &format!("config {} in {what}", m.config.digest),
            oci::MAX_CONFIG,
        ));
    }
    fetch(&m.config.digest, Some(m.config.size), staging)?;
    for l in &m.layers {
        fetch(&l.digest, Some(l.size), staging)?;
    }
    if let Some(fi) = m.file_index() {
        // The file index can always be recomputed; a layout without it is still complete.
        let _ = fetch(&fi, None, staging);
    }
    Ok(())
}

fn ref_names(desc: &Descriptor) -> Vec<String> {
    desc.annotations
        .get(oci::ANNOTATION_REF_NAME)
        .cloned()
        .into_iter()
        .collect()
}

/// Call `f` on every regular file of a tar archive (gzip-compressed or not).
fn for_each_file(
    path: &Path,
    what: &str,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::msg(format!("cannot open {what}: {e}")))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = BufReader::new(file);
    let gz = {
        let head = io::BufRead::fill_buf(&mut r).doing(|| format!("reading {what}"))?;
        head.starts_with(&[0x1f, 0x8b])
    };
    // A compressed archive is held to the same bomb limits as a compressed layer.
    let media = if gz {
        oci::LAYER_TAR_GZIP
    } else {
        oci::LAYER_TAR
    };
    let r = oci::layer_reader(r, media, len, what);
    let mut archive = tar::Archive::new(r);
    let entries = archive.entries().doing(|| format!("reading {what}"))?;
    let mut any = false;
    for e in entries {
        let mut e = e.map_err(|e| {
            Error::msg(format!(
                "{what} is not a valid tar archive (truncated?): {e}"
            ))
        })?;
        any = true;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        f(&name, &mut e)?;
    }
    if !any {
        return Err(Error::msg(format!("{what} is empty or not a tar archive")));
    }
    Ok(())
}

/// What kind of archive a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Oci,
    Docker,
}

/// Tell an OCI archive from a docker archive by the files it holds (docker's `manifest.json`
/// wins: newer `docker save` output holds both, and only it carries the image names).
pub fn sniff(path: &Path) -> Result<Kind> {
    let what = format!("archive {}", path.display());
    let (mut oci, mut docker) = (false, false);
    for_each_file(path, &what, |name, _| {
        match name.trim_start_matches("./") {
            "manifest.json" => docker = true,
            "index.json" => oci = true,
            _ => {}
        }
        Ok(())
    })?;
    match (oci, docker) {
        (_, true) => Ok(Kind::Docker),
        (true, false) => Ok(Kind::Oci),
        _ => Err(Error::msg(format!(
            "{what} is neither an OCI archive (no index.json) nor a docker archive (no manifest.json)"
        ))),
    }
}

/// Pick the image to use from what a layout or archive holds: by tag, or the only one; follow
/// an image index to this machine's platform.
pub fn select(
    found: &[Found],
    tag: Option<&str>,
    staging: &Staging<'_>,
    what: &str,
) -> Result<Descriptor> {
    let desc = match tag {
        Some(t) => found
            .iter()
            .find(|f| {
                f.names
                    .iter()
                    .any(|n| n == t || n.rsplit_once(':').is_some_and(|(_, tag)| tag == t))
            })
            .map(|f| f.descriptor.clone())
            .ok_or_else(|| {
                let names: Vec<&str> = found
                    .iter()
                    .flat_map(|f| f.names.iter().map(String::as_str))
                    .collect();
                Error::msg(format!(
                    "{what} has no image tagged \"{t}\" (it has: {})",
                    if names.is_empty() {
                        "no tags".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?,
        None => match found {
            [one] => one.descriptor.clone(),
            [] => return Err(Error::msg(format!("{what} holds no image"))),
            _ => {
                return Err(Error::msg(format!(
                    "{what} holds {} images: name one with :TAG",
                    found.len()
                )));
            }
        },
    };
    platform_manifest(desc, staging, what)
}

/// Check that every layer of the staged image `desc` is what its config says: an uncompressed
/// layer's digest is its `rootfs.diff_ids` entry; a compressed one decompresses (within the bomb
/// limits of [`oci::layer_reader`]) to content with that digest. `what` names the source.
pub fn verify_layers(staging: &Staging<'_>, desc: &Descriptor, what: &str) -> Result<()> {
    let bytes = staging.read(&desc.digest, "manifest", what, oci::MAX_MANIFEST)?;
    let m: Manifest = oci::parse_json(
        &bytes,
        &format!("manifest {} of {what}", desc.digest),
        "OCI manifest",
    )?;
    let bytes = staging.read(&m.config.digest, "config", what, oci::MAX_CONFIG)?;
    let config: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::msg(format!(
            "config {} of {what} is not valid JSON: {e}",
            m.config.digest
        ))
    })?;
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != m.layers.len() {
        return Err(Error::msg(format!(
            "{what} is inconsistent: its manifest has {} layers but its config {} diff_ids",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    // A layer listed many times is decompressed once.
    let mut checked: BTreeMap<Digest, Digest> = BTreeMap::new();
    for (i, (l, id)) in m.layers.iter().zip(&diff_ids).enumerate() {
        let diff_id = id.as_str().and_then(Digest::parse).ok_or_else(|| {
            let shown: String = id.to_string().chars().take(100).collect();
            Error::msg(format!(
                "config {} of {what} is not valid: field rootfs.diff_ids[{i}] is {shown}, not a digest (sha256: followed by 64 lowercase hex digits)",
                m.config.digest
            ))
        })?;
        let layer = format!("layer {} of {what}", l.digest);
        let actual = if let Some(a) = checked.get(&l.digest) {
            a.clone()
        } else if oci::is_gzip_layer(&l.media_type) {
            let r = oci::layer_reader(
                staging.open(&l.digest, what)?,
                &l.media_type,
                l.size,
                &layer,
            );
            let mut h = crate::digest::HashingReader::new(r);
            io::copy(&mut h, &mut io::sink()).doing(|| format!("decompressing {layer}"))?;
            h.finish().0
        } else {
            l.digest.clone()
        };
        checked.insert(l.digest.clone(), actual.clone());
        if actual != diff_id {
            return Err(Error::msg(format!(
                "{layer} ({}) does not match its config: its content is {actual}, but rootfs.diff_ids[{i}] says {diff_id}",
                l.media_type
            )));
        }
    }
    Ok(())
}

/// If `desc` is an image index, the entry for this machine's platform.
pub fn platform_manifest(
    desc: Descriptor,
    staging: &Staging<'_>,
    what: &str,
) -> Result<Descriptor> {
    if desc.media_type != oci::INDEX && desc.media_type != oci::DOCKER_MANIFEST_LIST {
        return Ok(desc);
    }
    let bytes = staging.read(&desc.digest, "image index", what, oci::MAX_MANIFEST)?;
    let index: Index = oci::parse_json(
        &bytes,
        &format!("image index {} of {what}", desc.digest),
        "OCI index",
    )?;
    let host = oci::host_platform();
    index
        .manifests
        .into_iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.architecture == host.architecture && p.os == host.os)
        })
        .ok_or_else(|| {
            Error::msg(format!(
                "{what} has no image for {}/{}",
                host.os, host.architecture
            ))
        })
}

// ---- export -------------------------------------------------------------------------------------

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

/// Write the image `desc` (known as `name`) to `out` as an archive, atomically.
pub fn export(
    store: &Store,
    desc: &Descriptor,
    name: &str,
    format: Format,
    out: &Path,
) -> Result<u64> {
    export_with(store, desc, name, format, out, &crate::progress::Unwatched)
}

/// [`export`], telling `progress` the bytes written.
pub fn export_with(
    store: &Store,
    desc: &Descriptor,
    name: &str,
    format: Format,
    out: &Path,
    progress: &dyn crate::progress::Progress,
) -> Result<u64> {
    let manifest = store.manifest(&desc.digest, name)?;
    progress.total(manifest.layers.iter().map(|l| l.size).sum::<u64>() + manifest.config.size);
    let tmp = out.with_file_name(format!(
        ".{}.tmp{}",
        out.file_name()
            .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let file = File::create(&tmp)
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", out.display())))?;
    let result = (|| {
        let w = crate::progress::Counted {
            inner: io::BufWriter::with_capacity(1 << 20, file),
            progress,
        };
        let mut b = tar::Builder::new(w);
        match format {
            Format::Oci => write_oci(store, desc, &manifest, name, &mut b)?,
            Format::Docker => write_docker(store, &manifest, name, &mut b)?,
        }
        let w = b
            .into_inner()
            .doing(|| format!("writing {}", out.display()))?;
        let f = w
            .inner
            .into_inner()
            .map_err(|e| e.into_error())
            .doing(|| format!("writing {}", out.display()))?;
        f.sync_all()
            .doing(|| format!("writing {}", out.display()))?;
        fs::rename(&tmp, out).doing(|| format!("writing {}", out.display()))?;
        fs::metadata(out)
            .map(|m| m.len())
            .doing(|| format!("reading {}", out.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn add_bytes(b: &mut tar::Builder<impl Write>, path: &str, bytes: &[u8]) -> Result<()> {
    b.append_data(&mut header(bytes.len() as u64), path, bytes)
        .doing(|| format!("writing {path} into the archive"))
}

fn add_dir(b: &mut tar::Builder<impl Write>, path: &str) -> Result<()> {
    let mut h = header(0);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    b.append_data(&mut h, path, io::empty())
        .doing(|| format!("writing {path} into the archive"))
}

fn add_blob(
    store: &Store,
    b: &mut tar::Builder<impl Write>,
    path: &str,
    d: &Digest,
    size: u64,
    of: &str,
) -> Result<()> {
    let r = store.open_blob(d, of)?;
    b.append_data(&mut header(size), path, r)
        .doing(|| format!("writing blob {d} of {of} into the archive"))
}

fn write_oci(
    store: &Store,
    desc: &Descriptor,
    m: &Manifest,
    name: &str,
    b: &mut tar::Builder<impl Write>,
) -> Result<()> {
    let mut entry = Descriptor::new(
        if desc.media_type.is_empty() {
            oci::MANIFEST
        } else {
            &desc.media_type
        },
        desc.digest.clone(),
        desc.size,
    );
    entry
        .annotations
        .insert(oci::ANNOTATION_REF_NAME.into(), name.to_string());
    let index = Index {
        manifests: vec![entry],
        ..Index::default()
    };
    add_bytes(b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add_bytes(b, "index.json", &oci::canonical_json(&index))?;
    add_dir(b, "blobs/")?;
    add_dir(b, "blobs/sha256/")?;
    let mut blobs: BTreeMap<Digest, u64> = BTreeMap::new();
    blobs.insert(desc.digest.clone(), desc.size);
    blobs.insert(m.config.digest.clone(), m.config.size);
    for l in &m.layers {
        blobs.insert(l.digest.clone(), l.size);
    }
    if let Some(fi) = m.file_index()
        && store.has_blob(&fi)
    {
        let size = fs::metadata(store.blob_path(&fi))
            .map(|x| x.len())
            .unwrap_or(0);
        blobs.insert(fi, size);
    }
    for (d, size) in blobs {
        add_blob(
            store,
            b,
            &format!("blobs/sha256/{}", d.hex()),
            &d,
            size,
            name,
        )?;
    }
    Ok(())
}

fn write_docker(
    store: &Store,
    m: &Manifest,
    name: &str,
    b: &mut tar::Builder<impl Write>,
) -> Result<()> {
    let config_path = format!("{}.json", m.config.digest.hex());
    add_blob(
        store,
        b,
        &config_path,
        &m.config.digest,
        m.config.size,
        name,
    )?;
    let mut layer_paths = Vec::new();
    for l in &m.layers {
        let dir = l.digest.hex().to_string();
        let path = format!("{dir}/layer.tar");
        add_dir(b, &format!("{dir}/"))?;
        if oci::is_gzip_layer(&l.media_type) {
            // docker load wants the uncompressed tar, whose digest is the config's diff_id. It is
            // streamed twice (once to learn its size for the tar header, once into the archive),
            // so no layer is ever held in memory.
            let layer = format!("layer {} of {name}", l.digest);
            let open = || -> Result<Box<dyn Read + '_>> {
                let blob = store.open_blob(&l.digest, name)?;
                Ok(oci::layer_reader(blob, &l.media_type, l.size, &layer))
            };
            let size = io::copy(&mut open()?, &mut io::sink())
                .doing(|| format!("decompressing {layer}"))?;
            let r = ExactReader {
                inner: open()?,
                left: size,
                what: &layer,
            };
            b.append_data(&mut header(size), &path, r)
                .doing(|| format!("writing {layer} into the archive"))?;
        } else {
            add_blob(store, b, &path, &l.digest, l.size, name)?;
        }
        layer_paths.push(path);
    }
    let tag = if name.contains('@') || !name.contains(':') {
        format!("{}:latest", name.split('@').next().unwrap_or(name))
    } else {
        name.to_string()
    };
    let manifest =
        serde_json::json!([{ "Config": config_path, "RepoTags": [tag], "Layers": layer_paths }]);
    add_bytes(b, "manifest.json", &oci::canonical_json(&manifest))
}

/// Yields exactly `left` bytes of `inner`, or fails: a tar entry's content must match the size its
/// header announced.
struct ExactReader<'a, R> {
    inner: R,
    left: u64,
    what: &'a str,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? != 0 {
                return Err(io::Error::other(format!(
                    "{} changed while it was being exported",
                    self.what
                )));
            }
            return Ok(0);
        }
        let len = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "{} changed while it was being exported",
                self.what
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
