//! `recast validate`: check a spec and report every problem with its location.

use std::io::Write;
use std::process::ExitCode;

/// The `--json` report: `{"valid": bool, "errors": [...]}`.
#[derive(serde::Serialize)]
struct Report<'a> {
    valid: bool,
    errors: &'a [recast_spec::Diagnostic],
}

pub fn run(arg: &crate::build::SpecArg, json: bool) -> anyhow::Result<ExitCode> {
    let spec = &arg.path;
    let result = recast_spec::load_with(spec, &arg.inputs);
    let mut out = std::io::stdout().lock();
    match &result {
        Ok(project) => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&Report {
                        valid: true,
                        errors: &[]
                    })?
                )?;
            } else {
                let count =
                    |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                writeln!(
                    out,
                    "{} is valid: {}, {}, {}",
                    spec.display(),
                    count(project.images.len(), "image"),
                    count(project.services.len(), "service"),
                    count(project.routes.len(), "route"),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(diags) => {
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&Report {
                        valid: false,
                        errors: &diags.0
                    })?
                )?;
            }
            eprintln!("{diags}");
            Ok(ExitCode::FAILURE)
        }
    }
}
