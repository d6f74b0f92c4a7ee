//! `recast build`: turn the spec's `image` blocks into OCI images in the store.

use crate::archive;
use crate::digest::Digest;
use crate::dockerfile;
use crate::error::{Context, Error, Result};
use crate::fileindex::{Entry, FileIndex};
use crate::layer::{self, StatCache};
use crate::oci::{self, Descriptor, Manifest};
use crate::registry;
use crate::step::{self, RunRequest, StepRunner};
use crate::store::{Staging, Store};
use recast_api::CacheDir;
use recast_spec::{Base, BuildStep, CopyStep, DockerfileSource, Image, Project, RunStep};
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
    /// The digest of each base tag (normalised reference → manifest digest): the project's
    /// `recast.lock` ([`crate::lock`]). A base tag not listed is an error, never pulled as is.
    pub pins: BTreeMap<String, Digest>,
    /// Makes the progress shown for each registry base pulled, given what is pulled
    /// (`pulling REF`); none shown when unset.
    pub pulls: Option<crate::progress::Shown>,
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
            pins: BTreeMap::new(),
            pulls: None,
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
    let images = build_order(project, &select(project, names)?)?;
    let mut b = Builder {
        store,
        cache_dir,
        project,
        opts,
        runner,
        stats: cache_dir.map_or_else(StatCache::empty, StatCache::load),
        built: BTreeMap::new(),
    };
    let mut out = Vec::new();
    for image in images {
        progress(&format!("building image {}", image.name));
        out.push(b.build_one(image, progress)?);
    }
    b.stats.save()?;
    Ok(out)
}

/// `images` and the project images they build on, each after what it builds on; a cycle is
/// an error naming it.
fn build_order<'p>(project: &'p Project, images: &[&'p Image]) -> Result<Vec<&'p Image>> {
    fn deps(image: &Image) -> Vec<&str> {
        let mut d = Vec::new();
        if let Base::Image { name } = &image.from {
            d.push(name.as_str());
        }
        for s in &image.steps {
            if let BuildStep::Copy(CopyStep { from: Some(f), .. }) = s {
                d.push(f.as_str());
            }
        }
        d
    }
    fn visit<'p>(
        project: &'p Project,
        image: &'p Image,
        path: &mut Vec<String>,
        out: &mut Vec<&'p Image>,
    ) -> Result<()> {
        if out.iter().any(|i| i.name == image.name) {
            return Ok(());
        }
        if path.contains(&image.name) {
            path.push(image.name.clone());
            return Err(Error::msg(format!(
                "images build on each other in a cycle: {}",
                path.join(" → ")
            )));
        }
        path.push(image.name.clone());
        for d in deps(image) {
            let dep = project.images.get(d).ok_or_else(|| {
                Error::msg(format!(
                    "image {} builds on image {d}, which the spec lacks",
                    image.name
                ))
            })?;
            visit(project, dep, path, out)?;
        }
        path.pop();
        out.push(image);
        Ok(())
    }
    let mut out = Vec::new();
    for image in images {
        visit(project, image, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// One build: what stays the same from image to image, and what was built so far (by name,
/// or by [`dockerfile::stage_key`] for stages).
struct Builder<'a> {
    store: &'a Store,
    cache_dir: Option<&'a Path>,
    project: &'a Project,
    opts: &'a Options,
    runner: Option<&'a dyn StepRunner>,
    stats: StatCache,
    built: BTreeMap<String, Digest>,
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

impl Builder<'_> {
    /// Build `image` (its Dockerfile's stages first, if it has one) and name it `NAME:latest`.
    fn build_one(&mut self, image: &Image, progress: &mut dyn FnMut(&str)) -> Result<Built> {
        let (digest, size, cached) = match &image.dockerfile {
            Some(src) => self.dockerfile(image, src, progress)?,
            None => self.assemble(image, &Map::new(), progress)?,
        };
        let store = self.store;
        let desc_size = fs::metadata(store.blob_path(&digest))
            .map(|m| m.len())
            .doing(|| format!("reading the manifest of image {}", image.name))?;
        let desc = Descriptor::new(oci::MANIFEST, digest.clone(), desc_size);
        let already = store
            .resolve(&crate::store::ImageRef::Tag {
                name: image.name.clone(),
                tag: "latest".into(),
            })
            .is_ok_and(|(d, _)| d.digest == digest);
        if !already {
            store.tag(&image.name, "latest", &desc)?;
        }
        self.built.insert(image.name.clone(), digest.clone());
        Ok(Built {
            image: image.name.clone(),
            digest,
            size,
            cached: cached && already,
        })
    }

    /// Build the stages of a Dockerfile image the target needs, in order; the target's digest.
    fn dockerfile(
        &mut self,
        image: &Image,
        src: &DockerfileSource,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Digest, u64, bool)> {
        let of = format!("image {}", image.name);
        // Parse once to learn the bases, then again with their environments (`ENV PATH=/x:$PATH`).
        let first = dockerfile::parse(src, &BTreeMap::new())?;
        let order = first
            .stage_order(src.target.as_deref())
            .map_err(|e| Error::msg(format!("{of}: {e}")))?;
        let mut base_env = BTreeMap::new();
        for &i in &order {
            if let recast_dockerfile::Base::Image(r) = &first.stages[i].base {
                let base = self.resolve_reference(r)?;
                let mut staging = self.store.stage()?;
                if let Some(b) = base_of(
                    &base,
                    &mut staging,
                    self.cache_dir,
                    self.opts,
                    &of,
                    &self.built,
                )? {
                    let env = str_list(&b.config["config"]["Env"])
                        .into_iter()
                        .filter_map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                        })
                        .collect();
                    base_env.insert(r.clone(), env);
                }
                staging.commit()?;
            }
        }
        let df = dockerfile::parse(src, &base_env)?;
        for w in &df.warnings {
            progress(&format!("{of}: warning: {w}"));
        }
        let ignore = recast_dockerfile::Ignore::load_for(&src.context, &src.path)
            .map_err(|d| Error::msg(d.to_string()))?;
        let mut last = None;
        for &i in &order {
            let stage = &df.stages[i];
            // Images a `COPY --from` names by reference are built as stages of their own.
            for ins in &stage.instructions {
                if let recast_dockerfile::Op::Copy(recast_dockerfile::Copy {
                    from: Some(recast_dockerfile::CopyFrom::Image(r)),
                    ..
                }) = &ins.op
                {
                    let key = dockerfile::ref_key(r);
                    if !self.built.contains_key(&key) {
                        let from = self.resolve_reference(r)?;
                        let img = Image::bare(key.clone(), from);
                        let (d, _, _) = self.assemble(&img, &Map::new(), progress)?;
                        self.built.insert(key, d);
                    }
                }
            }
            let plan =
                dockerfile::plan_stage(image, src, &ignore, stage, &|r| self.resolve_reference(r))?;
            let mut target = plan.image;
            let is_target = Some(&i) == order.last();
            if is_target {
                // The image block's own settings apply on top of the Dockerfile's.
                target.env.extend(image.env.clone());
                target.labels.extend(image.labels.clone());
                for (mine, theirs) in [
                    (&mut target.workdir, &image.workdir),
                    (&mut target.user, &image.user),
                ] {
                    if theirs.is_some() {
                        mine.clone_from(theirs);
                    }
                }
                if image.cmd.is_some() {
                    target.cmd.clone_from(&image.cmd);
                }
                if image.entrypoint.is_some() {
                    target.entrypoint.clone_from(&image.entrypoint);
                }
            }
            progress(&format!(
                "{of}: stage {}",
                stage.name.clone().unwrap_or_else(|| i.to_string())
            ));
            let built = self.assemble(&target, &plan.extra, progress)?;
            self.built.insert(plan.key, built.0.clone());
            last = Some(built);
        }
        last.ok_or_else(|| Error::msg(format!("{of}: the Dockerfile has no stage to build")))
    }

    /// A `FROM` or `COPY --from` reference of a Dockerfile as a base, the way `from` is read.
    fn resolve_reference(&self, reference: &str) -> Result<Base> {
        self.project.resolve_base(reference).map_err(Error::msg)
    }

    /// Build the layers, config and manifest of `image` into the store (not naming it); its
    /// manifest digest, total size and whether the store held it already.
    fn assemble(
        &mut self,
        image: &Image,
        extra: &Map<String, Value>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(Digest, u64, bool)> {
        let (store, cache_dir, opts, runner) = (self.store, self.cache_dir, self.opts, self.runner);
        let of = format!("image {}", image.name);
        let mut staging = store.stage()?;
        let base = base_of(&image.from, &mut staging, cache_dir, opts, &of, &self.built)?;
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
                    let resolved;
                    let copy = if copy.from.is_some() || copy.chown.is_some() || copy.extract {
                        resolved = self.resolve_copy(copy, &staging, &layers, &of)?;
                        &resolved
                    } else {
                        copy
                    };
                    let l =
                        layer::build(copy, opts.epoch, &mut self.stats, cache_dir, &mut staging)
                            .map_err(|e| {
                                Error::msg(format!("building {of}, copy to {}: {e}", copy.dest))
                            })?;
                    history.push(json!({ "created": oci::rfc3339(opts.epoch), "created_by": format!("recast: copy to {}", copy.dest) }));
                    l
                }
                BuildStep::Run(run) => {
                    let what = format!("{of}, step {}/{total} (run at {})", i + 1, run.at);
                    let req = run_request(
                        run,
                        what,
                        &layers,
                        seen,
                        base_config.as_ref(),
                        &base_user,
                        opts.epoch,
                    );
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
        let mut config = make_config(base_config, image, diff_ids, history, opts);
        for (k, v) in extra {
            match k.strip_prefix('#') {
                Some(root) => config[root] = v.clone(),
                None => config["config"][k] = v.clone(),
            }
        }
        let (bytes, size) = manifest_of(&mut staging, &config, &indexes, layers)?;
        let digest = Digest::of(&bytes);
        let cached = store.has_blob(&digest);
        staging.put(&bytes)?;
        staging.commit()?;
        Ok((digest, size, cached))
    }

    /// `copy` made plain: its source found (inside another image, or a tar extracted) and its
    /// owner's names resolved against the image built so far (`layers`).
    fn resolve_copy(
        &self,
        copy: &CopyStep,
        staging: &Staging<'_>,
        layers: &[Descriptor],
        of: &str,
    ) -> Result<CopyStep> {
        let mut c = match &copy.from {
            Some(other) => self.copy_source(other, copy, of)?,
            None => copy.clone(),
        };
        if let Some(names) = c.chown.take() {
            c.owner = Some(owner_by_name(staging, layers, &names, of)?);
        }
        if c.extract {
            c.src = extracted(self.store, self.cache_dir, &c.src)?;
            c.extract = false;
        }
        Ok(c)
    }

    /// `copy` with its source inside the built image `other`: that image's root, unpacked once
    /// per digest, with `src` resolved inside it (symlinks included, never out of it).
    fn copy_source(&self, other: &str, copy: &CopyStep, of: &str) -> Result<CopyStep> {
        let digest = self.built.get(other).ok_or_else(|| {
            Error::msg(format!(
                "{of} copies from image {other}, which was not built first"
            ))
        })?;
        let root = image_root(self.store, self.cache_dir, digest, other)?;
        let src = copy.src.to_string_lossy();
        let host = recast_root::Root::open(&root)
            .and_then(|r| r.resolve(&src))
            .map_err(|e| Error::msg(format!("{of}: copy from image {other}: {src}: {e}")))?;
        Ok(CopyStep {
            src: host,
            from: None,
            ..copy.clone()
        })
    }
}

/// `USER[:GROUP]` names (or numbers) as ids, from the `/etc/passwd` and `/etc/group` of the
/// image built so far; without a group, the user's primary group.
fn owner_by_name(
    staging: &Staging<'_>,
    layers: &[Descriptor],
    names: &str,
    of: &str,
) -> Result<recast_spec::Owner> {
    let (u, g) = names
        .split_once(':')
        .map_or((names, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str| -> Result<Option<(u32, u32)>> {
        let text = image_file(staging, layers, file, of)?.unwrap_or_default();
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                Some((
                    f.get(2)?.parse().ok()?,
                    f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0),
                ))
            })?
        }))
    };
    let missing = |what: &str, n: &str, file: &str| {
        Error::msg(format!(
            "{of}: --chown {what} \"{n}\" is not in the image's {file}"
        ))
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => lookup("etc/passwd", u)?.ok_or_else(|| missing("user", u, "/etc/passwd"))?,
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup("etc/group", g)?
                    .ok_or_else(|| missing("group", g, "/etc/group"))?
                    .0
            }
        },
    };
    Ok(recast_spec::Owner { uid, gid })
}

/// The content of the regular file `path` (relative) in the image made of `layers`: the top
/// layer that has it (or deletes it) decides. Bounded to 4 MiB.
fn image_file(
    staging: &Staging<'_>,
    layers: &[Descriptor],
    path: &str,
    of: &str,
) -> Result<Option<String>> {
    use std::io::Read;
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let whiteout = if dir.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{dir}/.wh.{name}")
    };
    for l in layers.iter().rev() {
        let what = format!("layer {} of {of}", l.digest);
        let r = oci::layer_reader(staging.open(&l.digest, of)?, &l.media_type, l.size, &what);
        let mut archive = tar::Archive::new(r);
        for e in archive.entries().doing(|| format!("reading {what}"))? {
            let mut e = e.doing(|| format!("reading {what}"))?;
            let p = e.path().doing(|| format!("reading {what}"))?;
            let p = p.to_string_lossy();
            let p = p.trim_start_matches("./").trim_start_matches('/');
            if p == whiteout {
                return Ok(None);
            }
            if p == path && e.header().entry_type().is_file() {
                let mut out = String::new();
                (&mut e)
                    .take(4 << 20)
                    .read_to_string(&mut out)
                    .doing(|| format!("reading /{path} in {what}"))?;
                return Ok(Some(out));
            }
        }
    }
    Ok(None)
}

/// The contents of the tar archive `tar` (plain or gzip), unpacked once per content under the
/// cache (or the store's temporary directory); what `ADD archive.tar /dest` puts in the image.
fn extracted(store: &Store, cache_dir: Option<&Path>, tar: &Path) -> Result<PathBuf> {
    use std::io::Read;
    let mut file = fs::File::open(tar).doing(|| format!("reading {}", tar.display()))?;
    let mut h = crate::digest::HashingWriter::new(std::io::sink());
    std::io::copy(&mut file, &mut h).doing(|| format!("reading {}", tar.display()))?;
    let (digest, size, _) = h.finish();
    unpacked_once(store, cache_dir, "added", &digest, |root| {
        let mut magic = [0u8; 2];
        let mut f = fs::File::open(tar).doing(|| format!("reading {}", tar.display()))?;
        let gzip = f.read(&mut magic).unwrap_or(0) == 2 && magic == [0x1f, 0x8b];
        let f = fs::File::open(tar).doing(|| format!("reading {}", tar.display()))?;
        let media = if gzip {
            oci::LAYER_TAR_GZIP
        } else {
            oci::LAYER_TAR
        };
        let what = format!("archive {}", tar.display());
        let r = oci::layer_reader(f, media, size, &what);
        recast_root::unpack_layer(root, r)
            .map_err(|e| Error::msg(format!("extracting {what}: {e}")))
    })
}

/// The root filesystem of the stored image `digest`, unpacked (whiteouts applied, inside the
/// root only) under the cache (or the store's temporary directory) once per digest.
fn image_root(
    store: &Store,
    cache_dir: Option<&Path>,
    digest: &Digest,
    name: &str,
) -> Result<PathBuf> {
    let of = format!("image {name}");
    unpacked_once(store, cache_dir, "roots", digest, |root| {
        let manifest = store.manifest(digest, &of)?;
        let left = std::cell::Cell::new(oci::image_limit(&manifest.layers));
        for l in &manifest.layers {
            let what = format!("layer {} of {of}", l.digest);
            let r = oci::layer_reader(
                store.open_blob(&l.digest, &of)?,
                &l.media_type,
                l.size,
                &what,
            );
            let r = oci::budgeted(r, &left, &what);
            recast_root::unpack_layer(root, r)
                .map_err(|e| Error::msg(format!("unpacking {what}: {e}")))?;
        }
        Ok(())
    })
}

/// `<cache>/<kind>/<key>/fs` (or under the store's temporary directory without a cache), filled
/// by `fill` once: in a temporary directory renamed into place when complete, so a directory
/// that exists is whole.
fn unpacked_once(
    store: &Store,
    cache_dir: Option<&Path>,
    kind: &str,
    key: &Digest,
    fill: impl FnOnce(&recast_root::Root) -> Result<()>,
) -> Result<PathBuf> {
    let parent = cache_dir.map_or_else(
        || store.root().join("tmp"),
        |d| CacheDir::new(d).unpacked(kind),
    );
    let dir = parent.join(key.hex());
    if dir.join(".complete").exists() {
        return Ok(dir.join("fs"));
    }
    let tmp = parent.join(format!(".{}.tmp{}", key.hex(), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let fsdir = tmp.join("fs");
    fs::create_dir_all(&fsdir).doing(|| format!("creating {}", fsdir.display()))?;
    let result = recast_root::Root::open(&fsdir)
        .doing(|| format!("opening {}", fsdir.display()))
        .and_then(|root| fill(&root))
        .and_then(|()| {
            fs::write(tmp.join(".complete"), key.as_str())
                .doing(|| format!("marking {} complete", tmp.display()))
        });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(dir.join("fs"))
}

/// What run step `run` is given: its environment and working directory (the image's as seen
/// so far, `seen`, or for a Dockerfile step its own environment in the base's working
/// directory), the base's user unless the step says one, and the layers so far.
fn run_request<'l>(
    run: &RunStep,
    what: String,
    layers: &'l [Descriptor],
    seen: &Value,
    base_config: Option<&Value>,
    base_user: &str,
    epoch: u64,
) -> RunRequest<'l> {
    // A Dockerfile step says its whole environment, and without a WORKDIR it runs
    // in the base's (not in one a later instruction sets).
    let (mut env, workdir) = if run.env_is_complete {
        (
            Vec::new(),
            &base_config.map_or(Value::Null, |c| c["config"]["WorkingDir"].clone()),
        )
    } else {
        (str_list(&seen["Env"]), &seen["WorkingDir"])
    };
    merge_env(&mut env, &run.env);
    RunRequest {
        what,
        parents: layers,
        argv: step::argv(run),
        env,
        workdir: run
            .workdir
            .clone()
            .or_else(|| workdir.as_str().map(str::to_string))
            .unwrap_or_default(),
        user: run.user.clone().unwrap_or_else(|| base_user.to_string()),
        network: run.network,
        epoch,
    }
}

/// Put the image's config and merged file index into `staging`; the manifest naming them
/// and `layers` (canonical JSON, not yet put) and the image's total size.
fn manifest_of(
    staging: &mut Staging<'_>,
    config: &Value,
    indexes: &[FileIndex],
    layers: Vec<Descriptor>,
) -> Result<(Vec<u8>, u64)> {
    let config_bytes = oci::canonical_json(config);
    let c = staging.put(&config_bytes)?;
    let index = FileIndex::merge(indexes);
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
    let size = bytes.len() as u64
        + manifest.config.size
        + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    Ok((bytes, size))
}

/// The manifest of registry base `reference` at its pinned digest: the stored one when the
/// store holds it (pulled before: no network), else pulled.
fn registry_base(
    reference: &str,
    staging: &mut Staging<'_>,
    opts: &Options,
    of: &str,
) -> Result<Descriptor> {
    let remote = crate::lock::pinned_remote(reference, &opts.pins, of)?;
    let pinned = Digest::parse(&remote.reference);
    // Already in the store (pulled before): no network. A tag pins a multi-platform
    // image by its index, whose platform manifest was stored with it.
    let stored = match pinned.filter(|d| staging.has(d)) {
        Some(d) => {
            let bytes = staging.read(&d, "manifest", of, oci::MAX_MANIFEST)?;
            let is_index =
                serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| v.get("manifests").is_some());
            let media = if is_index { oci::INDEX } else { oci::MANIFEST };
            let desc = Descriptor::new(media, d, bytes.len() as u64);
            let desc = archive::platform_manifest(desc, staging, of)?;
            staging.has(&desc.digest).then_some(desc)
        }
        None => None,
    };
    match stored {
        Some(desc) => Ok(desc),
        None => {
            let shown = opts.pulls.map(|bar| bar(&format!("pulling {reference}")));
            let progress = shown.as_deref().unwrap_or(&crate::progress::Unwatched);
            registry::pull_with(staging, &remote, opts.insecure, progress)
        }
    }
}

/// A base image staged for building on.
struct BaseImage {
    manifest: Manifest,
    config: Value,
    diff_ids: Vec<Value>,
    indexes: Vec<FileIndex>,
}

fn base_of(
    from: &Base,
    staging: &mut Staging<'_>,
    cache_dir: Option<&Path>,
    opts: &Options,
    of: &str,
    built: &BTreeMap<String, Digest>,
) -> Result<Option<BaseImage>> {
    let desc = match from {
        Base::Scratch => return Ok(None),
        Base::Image { name } => {
            let d = built.get(name).ok_or_else(|| {
                Error::msg(format!(
                    "{of} builds on image {name}, which was not built first"
                ))
            })?;
            Descriptor::new(oci::MANIFEST, d.clone(), 0)
        }
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
        Base::Registry { reference } => registry_base(reference, staging, opts, of)?,
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
    let cached: Option<PathBuf> = cache_dir.map(|d| CacheDir::new(d).layer_index(l.digest.hex()));
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
    let entry = cache_dir.map(|d| CacheDir::new(d).step(key.hex()));
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

/// The files of layer `l` of `of` in store `s`, by path.
fn layer_files(s: &Store, l: &Descriptor, of: &str) -> Result<BTreeMap<String, Entry>> {
    let what = format!("layer {} of {of}", l.digest);
    let r = oci::layer_reader(s.open_blob(&l.digest, of)?, &l.media_type, l.size, &what);
    Ok(FileIndex::of_tar(r, &what)?
        .entries
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect())
}

/// The first file (by path) that differs between the build `pa` and the rebuild `pb`: missing
/// from the rebuild or different, else found only in the rebuild.
fn file_difference(pa: &BTreeMap<String, Entry>, pb: &BTreeMap<String, Entry>) -> Option<String> {
    pa.iter()
        .find_map(|(p, e)| match pb.get(p) {
            None => Some(format!("file {p} is missing from the rebuild")),
            Some(f) if f != e => Some(format!("file {p} differs ({})", entry_difference(e, f))),
            _ => None,
        })
        .or_else(|| {
            pb.keys()
                .find(|p| !pa.contains_key(*p))
                .map(|p| format!("file {p} appears only in the rebuild"))
        })
}

/// The first difference between two builds of an image: a config field, then a file.
fn explain(sa: &Store, a: &Digest, sb: &Store, b: &Digest, name: &str) -> Result<String> {
    let of = format!("image {name}");
    let (ma, mb) = (sa.manifest(a, &of)?, sb.manifest(b, &of)?);
    let (ca, cb) = (sa.config(&ma, &of)?, sb.config(&mb, &of)?);
    // The config names the layers (`rootfs`): compare the rest first, then the layers.
    let without_layers = |c: &Value| {
        let mut c = c.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("rootfs");
        }
        c
    };
    if let Some(d) = first_json_difference(&without_layers(&ca), &without_layers(&cb), "") {
        return Ok(format!("config field {d}"));
    }
    // The first layer that differs, the first file in it that differs, and the step that
    // wrote it (the history entry of that layer).
    if let Some((i, (la, lb))) = ma
        .layers
        .iter()
        .zip(&mb.layers)
        .enumerate()
        .find(|(_, (la, lb))| la.digest != lb.digest)
    {
        // Bases without history for every layer: count from the last layer back.
        let made: Vec<&Value> = ca["history"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["empty_layer"] != true)
            .collect();
        let offset = ma.layers.len().saturating_sub(made.len());
        let step = i
            .checked_sub(offset)
            .and_then(|k| made.get(k))
            .and_then(|h| h["created_by"].as_str())
            .unwrap_or("the base image")
            .to_string();
        let (pa, pb) = (layer_files(sa, la, &of)?, layer_files(sb, lb, &of)?);
        let file = file_difference(&pa, &pb)
            .unwrap_or_else(|| "the same files, but tar metadata varies".into());
        return Ok(format!("{file}, in layer {} written by `{step}`", i + 1));
    }
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
        if let Some(d) = file_difference(&by_path(&ia), &by_path(&ib)) {
            return Ok(d);
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

fn entry_difference(a: &Entry, b: &Entry) -> String {
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
