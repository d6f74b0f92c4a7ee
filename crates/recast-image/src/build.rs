//! `recast build`: turn the spec's `image` blocks into OCI images in the store.

use crate::archive;
use crate::digest::Digest;
use crate::error::{Context, Error, Result};
use crate::fileindex::FileIndex;
use crate::layer::{self, StatCache};
use crate::oci::{self, Descriptor, Manifest};
use crate::registry::{self, Remote};
use crate::step::{self, RunRequest, StepRunner};
use crate::store::{Staging, Store};
use recast_spec::{Base, BuildStep, Image, Project};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Timestamp for every file and the config's `created` (`SOURCE_DATE_EPOCH`, default 0).
    pub epoch: u64,
    /// Test hook: stamp the wall-clock time into `created`, so builds differ (`--check` must notice).
    pub vary_created: bool,
    /// Use plain HTTP for every registry, not only loopback ones.
    pub insecure: bool,
}

impl Options {
    /// Options from the environment: `SOURCE_DATE_EPOCH`, and the test hook `RECAST_TEST_VARY_BUILD`.
    pub fn from_env() -> Result<Options> {
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => v.parse().map_err(|_| {
                Error::msg(format!(
                    "SOURCE_DATE_EPOCH=\"{v}\" is not a number of seconds"
                ))
            })?,
            _ => 0,
        };
        Ok(Options {
            epoch,
            vary_created: std::env::var_os("RECAST_TEST_VARY_BUILD").is_some(),
            insecure: false,
        })
    }
}

/// One image built (or found already built).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Built {
    pub image: String,
    /// Digest of the manifest: what a registry reports after a push.
    pub digest: Digest,
    /// Manifest, config and layers, in bytes.
    pub size: u64,
    /// True when the store already held this exact image and nothing was written.
    pub cached: bool,
}

/// Build `names` (every image when empty) of `project` into `store`. `cache_dir` holds the stat
/// and layer caches; `None` builds from nothing. `progress` hears about each step.
pub fn build(
    store: &Store,
    cache_dir: Option<&Path>,
    project: &Project,
    names: &[String],
    opts: &Options,
    runner: Option<&dyn StepRunner>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Built>> {
    let images = select(project, names)?;
    let mut stats = cache_dir.map_or_else(StatCache::empty, StatCache::load);
    let mut out = Vec::new();
    for image in images {
        progress(&format!("building image {}", image.name));
        let built = build_one(store, cache_dir, &mut stats, image, opts, runner, progress)?;
        out.push(built);
    }
    stats.save()?;
    Ok(out)
}

/// The images to build: those named, or all.
pub fn select<'p>(project: &'p Project, names: &[String]) -> Result<Vec<&'p Image>> {
    if names.is_empty() {
        return Ok(project.images.values().collect());
    }
    names
        .iter()
        .map(|n| {
            project.images.get(n).ok_or_else(|| {
                let known: Vec<&str> = project.images.keys().map(String::as_str).collect();
                Error::msg(format!(
                    "no image \"{n}\" in the spec (it has: {})",
                    known.join(", ")
                ))
            })
        })
        .collect()
}

fn build_one(
    store: &Store,
    cache_dir: Option<&Path>,
    stats: &mut StatCache,
    image: &Image,
    opts: &Options,
    runner: Option<&dyn StepRunner>,
    progress: &mut dyn FnMut(&str),
) -> Result<Built> {
    let of = format!("image {}", image.name);
    let mut staging = store.stage()?;
    let base = base(&image.from, &mut staging, cache_dir, opts, &of)?;
    let (mut layers, mut diff_ids, mut indexes, base_config) = match base {
        Some(b) => (b.manifest.layers, b.diff_ids, b.indexes, Some(b.config)),
        None => (Vec::new(), Vec::new(), Vec::new(), None),
    };
    let mut history = Vec::new();
    // What run steps see: the image's env and workdir (the base's, then the image block's),
    // but the base's user: the image block's `user` is whom the image runs as, not whom it is
    // built by (as a Dockerfile's final USER, and Packer's provisioners, which run as root).
    // A step may set its own workdir and user.
    let seen = make_config(base_config.clone(), image, Vec::new(), Vec::new(), opts);
    let seen = &seen["config"];
    let base_user = base_config
        .as_ref()
        .and_then(|c| c["config"]["User"].as_str())
        .unwrap_or("")
        .to_string();
    let total = image.steps.len();
    for (i, step) in image.steps.iter().enumerate() {
        let l = match step {
            BuildStep::Copy(copy) => {
                progress(&format!(
                    "{}: step {}/{total}: copy to {}",
                    image.name,
                    i + 1,
                    copy.dest
                ));
                let l = layer::build(copy, opts.epoch, stats, cache_dir, &mut staging).map_err(
                    |e| Error::msg(format!("building {of}, copy to {}: {e}", copy.dest)),
                )?;
                history.push(json!({ "created": oci::rfc3339(opts.epoch), "created_by": format!("recast: copy to {}", copy.dest) }));
                l
            }
            BuildStep::Run(run) => {
                let what = format!("{of}, step {}/{total} (run at {})", i + 1, run.at);
                let mut env = str_list(&seen["Env"]);
                merge_env(&mut env, &run.env);
                let req = RunRequest {
                    what: what.clone(),
                    parents: &layers,
                    argv: step::argv(run),
                    env,
                    workdir: run
                        .workdir
                        .clone()
                        .or_else(|| seen["WorkingDir"].as_str().map(str::to_string))
                        .unwrap_or_default(),
                    user: run.user.clone().unwrap_or_else(|| base_user.clone()),
                    network: run.network,
                    epoch: opts.epoch,
                };
                progress(&format!(
                    "{}: step {}/{total}: run {}",
                    image.name,
                    i + 1,
                    req.argv.join(" ")
                ));
                let l = run_step(&req, runner, cache_dir, &mut staging)?;
                history.push(json!({ "created": oci::rfc3339(opts.epoch), "created_by": format!("recast: run {}", req.argv.join(" ")) }));
                l
            }
        };
        diff_ids.push(Value::String(l.descriptor.digest.to_string()));
        layers.push(l.descriptor);
        indexes.push(l.index);
    }
    let config = make_config(base_config, image, diff_ids, history, opts);
    let config_bytes = oci::canonical_json(&config);
    let c = staging.put(&config_bytes)?;
    let index = FileIndex::merge(&indexes);
    let fi = staging.put(&index.to_json())?;
    let mut annotations = BTreeMap::new();
    annotations.insert(
        oci::ANNOTATION_FILE_INDEX.to_string(),
        fi.digest.to_string(),
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::MANIFEST.to_string(),
        config: Descriptor::new(oci::CONFIG, c.digest, c.size),
        layers,
        annotations,
    };
    let bytes = oci::canonical_json(&manifest);
    let digest = Digest::of(&bytes);
    let cached = store.has_blob(&digest);
    staging.put(&bytes)?;
    staging.commit()?;
    let desc = Descriptor::new(oci::MANIFEST, digest.clone(), bytes.len() as u64);
    let already = store
        .resolve(&crate::store::ImageRef::Tag {
            name: image.name.clone(),
            tag: "latest".into(),
        })
        .is_ok_and(|(d, _)| d.digest == digest);
    if !already {
        store.tag(&image.name, "latest", &desc)?;
    }
    let size = bytes.len() as u64
        + manifest.config.size
        + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    Ok(Built {
        image: image.name.clone(),
        digest,
        size,
        cached: cached && already,
    })
}

/// A base image staged for building on.
struct BaseImage {
    manifest: Manifest,
    config: Value,
    diff_ids: Vec<Value>,
    indexes: Vec<FileIndex>,
}

fn base(
    from: &Base,
    staging: &mut Staging<'_>,
    cache_dir: Option<&Path>,
    opts: &Options,
    of: &str,
) -> Result<Option<BaseImage>> {
    let desc = match from {
        Base::Scratch => return Ok(None),
        Base::Oci { path, tag } => {
            let found = archive::read_oci_dir(path, staging)?;
            archive::select(
                &found,
                tag.as_deref(),
                staging,
                &format!("OCI layout {}", path.display()),
            )?
        }
        Base::OciArchive { path, tag } => {
            let found = archive::read_oci_archive(path, staging)?;
            archive::select(
                &found,
                tag.as_deref(),
                staging,
                &format!("OCI archive {}", path.display()),
            )?
        }
        Base::DockerArchive { path } => {
            let found = archive::read_docker_archive(path, staging)?;
            archive::select(
                &found,
                None,
                staging,
                &format!("docker archive {}", path.display()),
            )?
        }
        Base::Registry { reference } => {
            let remote = Remote::parse(reference)?;
            let pinned = Digest::parse(&remote.reference);
            match pinned.filter(|d| staging.has(d)) {
                Some(d) => Descriptor::new(oci::MANIFEST, d, 0),
                None => registry::pull(staging, &remote, opts.insecure)?,
            }
        }
    };
    let what = format!("the base of {of}");
    let bytes = staging.read(&desc.digest, "manifest", &what, oci::MAX_MANIFEST)?;
    let manifest: Manifest = oci::parse_json(
        &bytes,
        &format!("manifest {} of {what}", desc.digest),
        "OCI manifest",
    )?;
    let bytes = staging.read(&manifest.config.digest, "config", &what, oci::MAX_CONFIG)?;
    let config: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::msg(format!("{what} has an invalid config: {e}")))?;
    let diff_ids: Vec<Value> = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::msg(format!(
            "{what} is inconsistent: {} layers but {} diff_ids in its config",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let mut indexes = Vec::new();
    for l in &manifest.layers {
        indexes.push(layer_index(staging, cache_dir, l, &what)?);
    }
    Ok(Some(BaseImage {
        manifest,
        config,
        diff_ids,
        indexes,
    }))
}

/// The file index of a base layer, from the cache or by reading it.
fn layer_index(
    staging: &Staging<'_>,
    cache_dir: Option<&Path>,
    l: &Descriptor,
    what: &str,
) -> Result<FileIndex> {
    let cached: Option<PathBuf> = cache_dir.map(|d| d.join("layer-index").join(l.digest.hex()));
    if let Some(p) = &cached
        && let Ok(bytes) = fs::read(p)
        && let Ok(fi) = serde_json::from_slice(&bytes)
    {
        return Ok(fi);
    }
    let layer = format!("layer {} of {what}", l.digest);
    let r = oci::layer_reader(
        staging.open(&l.digest, what)?,
        &l.media_type,
        l.size,
        &layer,
    );
    let fi = FileIndex::of_tar(r, &layer)?;
    if let Some(p) = cached {
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, fi.to_json()).doing(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &p).doing(|| format!("writing {}", p.display()))?;
    }
    Ok(fi)
}

/// `KEY=VALUE` entries of `extra` replace same-named ones in place, or are appended.
fn merge_env(env: &mut Vec<String>, extra: &BTreeMap<String, String>) {
    for (k, v) in extra {
        let kv = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').is_some_and(|(ek, _)| ek == k))
        {
            Some(e) => *e = kv,
            None => env.push(kv),
        }
    }
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A `run` step's layer: from the step cache when its key is known and the blob is at hand,
/// else run by `runner` and staged.
fn run_step(
    req: &RunRequest<'_>,
    runner: Option<&dyn StepRunner>,
    cache_dir: Option<&Path>,
    staging: &mut Staging<'_>,
) -> Result<layer::Layer> {
    let key = step::key(req);
    let entry = cache_dir.map(|d| d.join("steps").join(key.hex()));
    if let Some(entry) = &entry
        && let Ok(text) = fs::read_to_string(entry)
        && let Some((d, size)) = text.trim().split_once(' ')
        && let (Some(d), Ok(size)) = (Digest::parse(d), size.parse())
        && staging.has(&d)
    {
        let desc = Descriptor::new(oci::LAYER_TAR, d, size);
        let index = FileIndex::of_tar(staging.open(&desc.digest, &req.what)?, &req.what)?;
        return Ok(layer::Layer {
            descriptor: desc,
            index,
        });
    }
    let runner = runner.ok_or_else(|| {
        Error::msg(format!(
            "{}: run steps need the container runtime, which this command does not use",
            req.what
        ))
    })?;
    let out = {
        let staged: &Staging<'_> = staging;
        let open = |d: &Descriptor| -> Result<Box<dyn std::io::Read + '_>> {
            Ok(Box::new(staged.open(&d.digest, &req.what)?))
        };
        runner.run(req, &open).map_err(Error::msg)?
    };
    let mut file = fs::File::open(&out.tar).doing(|| format!("reading {}", out.tar.display()))?;
    let (digest, size) = staging.put_reader(&mut file, None, &req.what)?;
    let desc = Descriptor::new(oci::LAYER_TAR, digest, size);
    let index = FileIndex::of_tar(staging.open(&desc.digest, &req.what)?, &req.what)?;
    if let Some(entry) = entry {
        let dir = entry.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!("{}.tmp{}", key.hex(), std::process::id()));
        fs::write(&tmp, format!("{} {size}\n", desc.digest))
            .doing(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &entry)
            .doing(|| format!("writing the step cache in {}", dir.display()))?;
    }
    Ok(layer::Layer {
        descriptor: desc,
        index,
    })
}

fn make_config(
    base: Option<Value>,
    image: &Image,
    diff_ids: Vec<Value>,
    history: Vec<Value>,
    opts: &Options,
) -> Value {
    let host = oci::host_platform();
    let mut root = match base {
        Some(Value::Object(m)) => m,
        _ => {
            let mut m = Map::new();
            m.insert("architecture".into(), json!(host.architecture));
            m.insert("os".into(), json!(host.os));
            m
        }
    };
    let created = if opts.vary_created {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "{}.{:09}Z",
            oci::rfc3339(now.as_secs()).trim_end_matches('Z'),
            now.subsec_nanos()
        )
    } else {
        oci::rfc3339(opts.epoch)
    };
    root.insert("created".into(), json!(created));
    let mut cfg = match root.remove("config") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    // Environment: the base's, then the image's (same key replaces, in place).
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    merge_env(&mut env, &image.env);
    if !env.is_empty() {
        cfg.insert("Env".into(), json!(env));
    }
    if let Some(ep) = &image.entrypoint {
        cfg.insert("Entrypoint".into(), json!(ep));
        // As with Dockerfiles: a new entrypoint does not inherit the base's arguments.
        if image.cmd.is_none() {
            cfg.remove("Cmd");
        }
    }
    if let Some(cmd) = &image.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    if let Some(w) = &image.workdir {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &image.user {
        cfg.insert("User".into(), json!(u));
    }
    if !image.labels.is_empty() {
        let mut labels = match cfg.remove("Labels") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in &image.labels {
            labels.insert(k.clone(), json!(v));
        }
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    root.insert("config".into(), Value::Object(cfg));
    root.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    let mut hist = root
        .remove("history")
        .and_then(|h| h.as_array().cloned())
        .unwrap_or_default();
    hist.extend(history);
    if !hist.is_empty() {
        root.insert("history".into(), Value::Array(hist));
    }
    Value::Object(root)
}

/// One image whose rebuild from nothing gave a different digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mismatch {
    pub image: String,
    pub first: Digest,
    pub rebuilt: Digest,
    /// The first differing file or field.
    pub difference: String,
}

/// Rebuild `built` from nothing in a fresh temporary store and report every digest that differs.
pub fn check(
    store: &Store,
    project: &Project,
    built: &[Built],
    opts: &Options,
    runner: Option<&dyn StepRunner>,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Mismatch>> {
    let tmp = std::env::temp_dir().join(format!(
        "recast-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    ));
    let result = (|| {
        let fresh = Store::open(&tmp.join("store"))?;
        let names: Vec<String> = built.iter().map(|b| b.image.clone()).collect();
        progress("rebuilding from nothing in a fresh store");
        let again = build(&fresh, None, project, &names, opts, runner, progress)?;
        let mut out = Vec::new();
        for (a, b) in built.iter().zip(&again) {
            if a.digest != b.digest {
                let difference = explain(store, &a.digest, &fresh, &b.digest, &a.image)?;
                out.push(Mismatch {
                    image: a.image.clone(),
                    first: a.digest.clone(),
                    rebuilt: b.digest.clone(),
                    difference,
                });
            }
        }
        Ok(out)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

/// The first difference between two builds of an image: a config field, then a file.
fn explain(sa: &Store, a: &Digest, sb: &Store, b: &Digest, name: &str) -> Result<String> {
    let of = format!("image {name}");
    let (ma, mb) = (sa.manifest(a, &of)?, sb.manifest(b, &of)?);
    let (ca, cb) = (sa.config(&ma, &of)?, sb.config(&mb, &of)?);
    if let Some(d) = first_json_difference(&ca, &cb, "") {
        return Ok(format!("config field {d}"));
    }
    if let (Some(fa), Some(fb)) = (ma.file_index(), mb.file_index()) {
        let read =
            |s: &Store, d: &Digest| s.read_blob_capped(d, "file index", &of, oci::MAX_FILE_INDEX);
        let ia: FileIndex = serde_json::from_slice(&read(sa, &fa)?).unwrap_or_default();
        let ib: FileIndex = serde_json::from_slice(&read(sb, &fb)?).unwrap_or_default();
        let by_path = |i: &FileIndex| {
            i.entries
                .iter()
                .map(|e| (e.path.clone(), e.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let (pa, pb) = (by_path(&ia), by_path(&ib));
        for (p, e) in &pa {
            match pb.get(p) {
                None => return Ok(format!("file {p} is missing from the rebuild")),
                Some(f) if f != e => {
                    return Ok(format!("file {p} differs ({})", entry_difference(e, f)));
                }
                _ => {}
            }
        }
        if let Some(p) = pb.keys().find(|p| !pa.contains_key(*p)) {
            return Ok(format!("file {p} appears only in the rebuild"));
        }
    }
    for (i, (la, lb)) in ma.layers.iter().zip(&mb.layers).enumerate() {
        if la.digest != lb.digest {
            return Ok(format!(
                "layer {} bytes differ ({} vs {}) with the same files: tar metadata varies",
                i + 1,
                la.digest,
                lb.digest
            ));
        }
    }
    Ok("manifest bytes differ".into())
}

fn entry_difference(a: &crate::fileindex::Entry, b: &crate::fileindex::Entry) -> String {
    let mut d = Vec::new();
    if a.blake3 != b.blake3 || a.size != b.size {
        d.push("content");
    }
    if a.mode != b.mode {
        d.push("mode");
    }
    if a.uid != b.uid || a.gid != b.gid {
        d.push("owner");
    }
    if a.kind != b.kind {
        d.push("type");
    }
    if a.target != b.target {
        d.push("symlink target");
    }
    d.join(", ")
}

fn first_json_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(va), Some(vb)) => first_json_difference(va, vb, &format!("{at}.{k}")),
                _ => Some(format!("{at}.{k} is present in only one build")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_json_difference(va, vb, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!(
            "{} differs: {a} vs {b}",
            if at.is_empty() {
                "."
            } else {
                at.trim_start_matches('.')
            }
        )),
    }
}
