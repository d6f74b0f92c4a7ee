//! `recast build`: build the spec's images into the store; `--check` proves reproducibility.

use crate::output;
use anyhow::bail;
use recast_image::build::{self, Options};
use recast_image::step::StepRunner;
use std::path::Path;
use std::process::ExitCode;

/// The flags of `recast build`.
pub struct How {
    pub check: bool,
    pub no_cache: bool,
    pub locked: bool,
    pub json: bool,
}

pub fn run(spec: &Path, data_dir: &Path, images: &[String], how: How) -> anyhow::Result<ExitCode> {
    let How {
        check,
        no_cache,
        locked,
        json,
    } = how;
    let project = match recast_spec::load(spec) {
        Ok(p) => p,
        Err(diags) => bail!("the spec is invalid:\n{diags}"),
    };
    let store = output::store(data_dir)?;
    let mut opts = Options::from_env()?;
    opts.pins = crate::lock::pins(&project, locked)?;
    let mut progress = output::progress();
    let runner = crate::run::step_runner(data_dir, &project)?;
    let cache = data_dir.join("cache");
    let built = build::build(
        &store,
        (!no_cache).then_some(cache.as_path()),
        &project,
        images,
        &opts,
        runner.as_ref().map(|r| r as &dyn StepRunner),
        &mut progress,
    )?;
    if json {
        output::json(&built)?;
    } else {
        for b in &built {
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
            &store,
            &project,
            &built,
            &opts,
            runner.as_ref().map(|r| r as &dyn StepRunner),
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
