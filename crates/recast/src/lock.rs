//! `recast lock [--update [REF…]]`, and the lock every building command reads (`--locked`).

use crate::output;
use recast_image::Digest;
use recast_image::lock::{self, Mode};
use recast_spec::Project;
use std::collections::BTreeMap;
use std::process::ExitCode;

pub fn run(
    spec: &crate::build::SpecArg,
    update: bool,
    refs: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !update && !refs.is_empty() {
        anyhow::bail!(
            "`recast lock {}` names tags without --update\n  hint: `recast lock` only adds missing entries; move these with `recast lock --update {}`",
            refs.join(" "),
            refs.join(" ")
        );
    }
    let project = crate::build::load_spec(spec)?;
    let mode = if update {
        Mode::Update(refs.to_vec())
    } else {
        Mode::Lock
    };
    let (l, changes) = lock::ensure(&project, &mode, false, &mut output::progress())?;
    if json {
        output::json(&serde_json::json!({
            "path": l.path,
            "bases": changes,
        }))?;
    } else {
        for c in &changes {
            let how = match &c.previous {
                Some(p) => format!("updated (was {p})"),
                None => c.change.to_string(),
            };
            output::line(&format!("{:<40} {}  {how}", c.reference, c.digest))?;
        }
        eprintln!("{}: {} tag(s) pinned", l.path.display(), l.bases.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// The base pins a build of `project` uses: the lock, completed (and written) with any tag it
/// lacks, or with `locked` required to be complete already.
pub fn pins(project: &Project, locked: bool) -> anyhow::Result<BTreeMap<String, Digest>> {
    let mode = if locked { Mode::Locked } else { Mode::Build };
    let (l, _) = lock::ensure(project, &mode, false, &mut output::progress())?;
    Ok(l.bases)
}
