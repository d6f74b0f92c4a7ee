//! Project identity: which spec directory a project name belongs to, and which spec paths an
//! API caller may make the server read.
//!
//! A project is named by `project = "NAME"` in its spec, else by its directory's name. The state
//! store records the canonical directory that owns each name (on apply); a different directory
//! using that name is refused while the project has anything deployed, so that two unrelated
//! `svc/` directories can never plan away each other's services. An explicit `project` takes a
//! project over from a directory that no longer declares it (the project moved); a name that is
//! only the directory's never does.

use crate::ServerError;
use crate::plan;
use recast_spec::Project;
use recast_state::State;
use std::path::{Path, PathBuf};

/// The name a spec deploys under, and the directory it comes from.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    /// Canonical path of the spec directory.
    pub dir: PathBuf,
    /// Named by `project = "…"` (rather than by the directory).
    pub explicit: bool,
}

impl Identity {
    pub fn of(project: &Project) -> Identity {
        Identity {
            name: plan::project_name(project),
            dir: std::fs::canonicalize(&project.dir).unwrap_or_else(|_| project.dir.clone()),
            explicit: project.name.is_some(),
        }
    }
}

/// How a directory stands with the name it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody owned the name (or its owner has nothing deployed): this directory will.
    New,
    /// This directory owns it already.
    Owned,
    /// An explicit `project` takes the name over from a directory that no longer declares it.
    Moved { from: String },
}

/// May `id.dir` use `id.name`? Reads only; [`claim`] records the answer.
pub fn check(state: &State, id: &Identity) -> Result<Ownership, ServerError> {
    let Some(owner) = state.project_owner(&id.name)? else {
        return Ok(Ownership::New);
    };
    let here = id.dir.display().to_string();
    if owner.dir == here {
        return Ok(Ownership::Owned);
    }
    if !deployed(state, &id.name)? {
        return Ok(Ownership::New);
    }
    let still_declared = still_declares(Path::new(&owner.dir), &id.name);
    if !still_declared && id.explicit {
        return Ok(Ownership::Moved { from: owner.dir });
    }
    let hint = if still_declared {
        "a project name belongs to one spec directory: give this one its own name with project = \"…\" at the top level of its spec (the directory name is only the default)".to_string()
    } else {
        format!(
            "if the project moved here from {}, set project = \"{}\" at the top level of the spec to take it over; otherwise give this one its own name with project = \"…\"",
            owner.dir, id.name
        )
    };
    Err(ServerError::Conflict(format!(
        "project \"{}\" belongs to the spec directory {}{}, not to {here}\n  hint: {hint}",
        id.name,
        owner.dir,
        if still_declared {
            ""
        } else {
            " (which no longer declares it)"
        },
    )))
}

/// [`check`], then record `id.dir` as the owner of `id.name`.
pub fn claim(state: &State, id: &Identity) -> Result<Ownership, ServerError> {
    let o = check(state, id)?;
    if o != Ownership::Owned {
        state.set_project_owner(&id.name, &id.dir.display().to_string())?;
    }
    Ok(o)
}

/// Does the project have anything deployed (a current release or a route)?
fn deployed(state: &State, name: &str) -> Result<bool, ServerError> {
    let services = state.current_releases(name)?;
    let routes = state.routes()?;
    Ok(!services.is_empty() || routes.iter().any(|r| r.project == name))
}

/// Does the spec in `dir` still deploy under `name`? When it cannot be told (the spec there is
/// invalid), it is taken to: the owner keeps the name until it is clearly gone.
fn still_declares(dir: &Path, name: &str) -> bool {
    if !dir.is_dir() {
        return false;
    }
    let has_specs = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "hcl"))
    });
    if !has_specs {
        return false;
    }
    // Loaded without an environment: the name it gives, `@ENV` aside.
    match recast_spec::load(dir) {
        Ok(p) => plan::project_name(&p) == plan::base_name(name),
        Err(_) => true,
    }
}

/// A spec that declares environments deploys to one of them: `--env NAME` is required.
pub fn environment_chosen(project: &Project) -> Result<(), String> {
    if project.environment.is_none() && !project.environments.is_empty() {
        let names: Vec<&str> = project.environments.keys().map(String::as_str).collect();
        return Err(format!(
            "the spec declares environments ({}): choose one with --env NAME",
            names.join(", ")
        ));
    }
    Ok(())
}

/// The spec path an API caller sent, checked before anything is read: an absolute path to a
/// `*.hcl` file, or to a directory (whose `*.hcl` files are the spec). Symlinks are resolved
/// first, so a `x.hcl` link to another file is refused too. Returns the resolved path.
pub fn api_spec_path(p: &Path) -> Result<PathBuf, ServerError> {
    let refuse = |why: String| {
        Err(ServerError::Invalid(format!(
            "cannot apply {}: {why}\n  hint: send the absolute path of a spec file (*.hcl) or of a directory of them",
            p.display()
        )))
    };
    if !p.is_absolute() {
        return refuse("the path is not absolute".into());
    }
    let real = match std::fs::canonicalize(p) {
        Ok(r) => r,
        Err(e) => return refuse(e.to_string()),
    };
    let via = if real == p {
        String::new()
    } else {
        format!(" (it resolves to {})", real.display())
    };
    let meta = match std::fs::metadata(&real) {
        Ok(m) => m,
        Err(e) => return refuse(e.to_string()),
    };
    if meta.is_dir() {
        // Every `*.hcl` entry must itself be a spec file, not a link to some other file.
        let entries = match std::fs::read_dir(&real) {
            Ok(e) => e,
            Err(e) => return refuse(e.to_string()),
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "hcl") {
                continue;
            }
            let target = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if target.extension().is_none_or(|x| x != "hcl") {
                return refuse(format!(
                    "{} links to {}, which is not a spec file (*.hcl)",
                    path.display(),
                    target.display()
                ));
            }
        }
        return Ok(real);
    }
    if !meta.is_file() {
        return refuse(format!("not a regular file or a directory{via}"));
    }
    if real.extension().is_none_or(|x| x != "hcl") {
        return refuse(format!("not a spec file (*.hcl){via}"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hcl_files_and_directories_are_accepted() {
        let d = tempfile::tempdir().expect("tmp");
        let spec = d.path().join("recast.hcl");
        std::fs::write(&spec, "").expect("write");
        assert_eq!(api_spec_path(&spec).ok(), std::fs::canonicalize(&spec).ok());
        assert!(api_spec_path(d.path()).is_ok());
        let e = api_spec_path(Path::new("/etc/shadow"))
            .expect_err("refused")
            .to_string();
        assert!(
            e.starts_with("cannot apply /etc/shadow: not a spec file (*.hcl)"),
            "{e}"
        );
        let e = api_spec_path(Path::new("etc/x.hcl"))
            .expect_err("relative")
            .to_string();
        assert!(e.contains("not absolute"), "{e}");
        let link = d.path().join("evil.hcl");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        let e = api_spec_path(&link)
            .expect_err("link to a non-spec")
            .to_string();
        assert!(e.contains("resolves to /etc/passwd"), "{e}");
        let e = api_spec_path(d.path())
            .expect_err("dir with a link to a non-spec")
            .to_string();
        assert!(e.contains("links to /etc/passwd"), "{e}");
        let e = api_spec_path(Path::new("/dev/null"))
            .expect_err("device")
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
