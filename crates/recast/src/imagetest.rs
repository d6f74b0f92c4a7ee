//! `recast test`: each image's `test` block against a throwaway instance.

use crate::build::{SpecBuild, build_spec};
use crate::{output, run};
use recast_runtime::imagetest;
use std::path::Path;
use std::process::ExitCode;

pub fn run(
    spec: &crate::build::SpecArg,
    data_dir: &Path,
    images: &[String],
    locked: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut progress = output::progress();
    let SpecBuild {
        project,
        store,
        runner,
        built,
        ..
    } = build_spec(spec, data_dir, images, locked, true, &mut progress)?;
    let rt = match runner {
        Some(rt) => rt,
        None => run::runtime(data_dir, store)?,
    };
    let mut outcomes = Vec::new();
    for b in &built {
        let image = &project.images[&b.image];
        progress(&format!("testing image {}", b.image));
        outcomes.push(imagetest::test_image(
            &rt,
            image,
            &b.digest,
            &project.tmpfs_of_image(&b.image),
        ));
    }
    if json {
        output::json(&outcomes)?;
    } else {
        for o in &outcomes {
            let line = match (o.skipped, o.passed) {
                (true, _) => format!("SKIP {} (no test block)", o.image),
                (false, true) => format!(
                    "PASS {} ({} checks in {} ms)",
                    o.image,
                    o.checks.len(),
                    o.duration_ms
                ),
                (false, false) => format!(
                    "FAIL {}: {}",
                    o.image,
                    o.reason.as_deref().unwrap_or("failed")
                ),
            };
            output::line(&line)?;
        }
    }
    Ok(if outcomes.iter().all(|o| o.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
