//! `recast build`: build the spec's images into the store; `--check` proves reproducibility.
//! [`build_spec`] is the one build every building command (`build`, `test`, `plan`, `apply`)
//! does: load the spec, open the store, pin bases from `recast.lock`, build.

use crate::output;
use recast_image::Store;
use recast_image::build::{self, Built, Options};
use recast_image::step::StepRunner;
use recast_runtime::Runtime;
use recast_spec::Project;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A spec path (`-f`) and what to load it with (`--env`, variables).
#[derive(Debug, Clone)]
pub struct SpecArg {
    pub path: PathBuf,
    pub inputs: recast_spec::Inputs,
}

impl SpecArg {
    /// The same spec at another path (a canonical one).
    pub fn at(&self, path: PathBuf) -> SpecArg {
        SpecArg {
            path,
            inputs: self.inputs.clone(),
        }
    }
}

/// The spec of `spec`, or an error showing its diagnostics.
pub fn load_spec(spec: &SpecArg) -> anyhow::Result<Project> {
    recast_spec::load_with(&spec.path, &spec.inputs)
        .map_err(|d| anyhow::anyhow!("the spec is invalid:\n{d}"))
}

/// A build of a spec's images, with what it was built with.
pub struct SpecBuild {
    pub project: Project,
    pub store: Store,
    /// Build options: `SOURCE_DATE_EPOCH` and the base pins of `recast.lock`.
    pub opts: Options,
    /// The runtime of `run` steps and Dockerfiles, when some image has them.
    pub runner: Option<Runtime>,
    /// One entry per image built, in build order.
    pub built: Vec<Built>,
}

impl SpecBuild {
    pub fn runner(&self) -> Option<&dyn StepRunner> {
        self.runner.as_ref().map(|r| r as &dyn StepRunner)
    }
}

/// Build `images` (every image when empty) of the spec at `spec` into the data directory's
/// store: base tags pinned by `recast.lock` (completed and written, or required complete when
/// `locked`), the data directory's build cache unless `!cache`, a runtime for `run` steps.
pub fn build_spec(
    spec: &SpecArg,
    data_dir: &Path,
    images: &[String],
    locked: bool,
    cache: bool,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<SpecBuild> {
    let project = load_spec(spec)?;
    let store = output::store(data_dir)?;
    let mut opts = Options::from_env()?;
    opts.pins = crate::lock::pins(&project, locked)?;
    opts.pulls = Some(crate::term::Bytes::boxed);
    let runner = crate::run::step_runner(data_dir, &project, &store)?;
    let cache_dir = recast_api::DataDir::new(data_dir).cache();
    let built = build::build(
        &store,
        cache.then_some(cache_dir.root()),
        &project,
        images,
        &opts,
        runner.as_ref().map(|r| r as &dyn StepRunner),
        progress,
    )?;
    Ok(SpecBuild {
        project,
        store,
        opts,
        runner,
        built,
    })
}

/// The flags of `recast build`.
pub struct How {
    pub check: bool,
    pub no_cache: bool,
    pub locked: bool,
    pub json: bool,
}

pub fn run(
    spec: &SpecArg,
    data_dir: &Path,
    images: &[String],
    how: How,
) -> anyhow::Result<ExitCode> {
    let How {
        check,
        no_cache,
        locked,
        json,
    } = how;
    let mut progress = output::progress();
    let b = build_spec(spec, data_dir, images, locked, !no_cache, &mut progress)?;
    let built = &b.built;
    if json {
        output::json(built)?;
    } else {
        for b in built {
            let how = if b.cached { "unchanged" } else { "built" };
            output::line(&format!(
                "{:<20} {}  {:>10}  {how}",
                b.image,
                b.digest,
                output::human_size(b.size)
            ))?;
        }
    }
    if check {
        let mismatches = build::check(
            &b.store,
            &b.project,
            built,
            &b.opts,
            b.runner(),
            &mut progress,
        )?;
        if !mismatches.is_empty() {
            for m in &mismatches {
                eprintln!(
                    "error: image {} is not reproducible: built {} then {} from nothing; first difference: {}",
                    m.image, m.first, m.rebuilt, m.difference
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        eprintln!(
            "reproducible: {} image(s) rebuilt from nothing with identical digests",
            built.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
