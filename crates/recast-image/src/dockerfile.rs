//! Dockerfile images: each stage of a Dockerfile becomes an image of recast's own model (`from`
//! plus `copy` and `run` steps) and is built like one, so a Dockerfile image is reproducible,
//! cached and checked exactly as an HCL one. Stages are built in dependency order under keys
//! that are never tagged (`IMAGE#INDEX`); only the target stage becomes the named image.

use crate::error::{Error, Result};
use recast_dockerfile::{Base as DBase, CopyFrom, Ignore, Instr, Network, Op, Stage};
use recast_spec::{
    Base, BuildStep, CopyStep, DockerfileSource, Image, Owner, RunCommand, RunStep, StepNetwork,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The key a stage of `image` is built under (never a name in the store).
pub fn stage_key(image: &str, index: usize) -> String {
    format!("{image}#{index}")
}

/// The key of an image a `COPY --from` names by reference.
pub fn ref_key(reference: &str) -> String {
    format!("#ref:{reference}")
}

/// One stage as recast builds it.
pub struct StagePlan {
    pub key: String,
    pub image: Image,
    /// Config fields recast's image model does not have (`ExposedPorts`, `Volumes`,
    /// `StopSignal`, `Healthcheck`, `Shell`), and the config's `author`.
    pub extra: Map<String, Value>,
}

/// Read and parse the Dockerfile of `src` (`base_env`: the environment of each base reference).
pub fn parse(
    src: &DockerfileSource,
    base_env: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<recast_dockerfile::Dockerfile> {
    let text = read_text(&src.path)?;
    let opts = recast_dockerfile::Options {
        args: src.args.clone(),
        base_env: base_env.clone(),
    };
    recast_dockerfile::parse_with(&src.path, &text, &opts).map_err(|d| Error::msg(d.to_string()))
}

fn read_text(p: &Path) -> Result<String> {
    use std::io::Read;
    const MAX: u64 = 4 << 20;
    use std::os::unix::fs::OpenOptionsExt;
    let mut s = String::new();
    // A regular file only (a FIFO would block the build), opened without waiting on it.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .and_then(|f| f.take(MAX + 1).read_to_string(&mut s))
        .map_err(|e| Error::msg(format!("reading {}: {e}", p.display())))?;
    if s.len() as u64 > MAX {
        return Err(Error::msg(format!(
            "{} is larger than {MAX} bytes",
            p.display()
        )));
    }
    Ok(s)
}

/// Turn one stage into an image of recast's model. `resolve` turns a `FROM`/`--from`
/// reference into a base; stage bases and `--from` stages become [`Base::Image`] /
/// [`CopyStep::from`] under their [`stage_key`].
pub fn plan_stage(
    owner: &Image,
    src: &DockerfileSource,
    ignore: &Ignore,
    stage: &Stage,
    resolve: &dyn Fn(&str) -> Result<Base>,
) -> Result<StagePlan> {
    let file = src.path.display().to_string();
    let at = |i: &Instr| format!("{file}:{}:{}", i.span.line, i.span.column);
    let from = match &stage.base {
        DBase::Scratch => Base::Scratch,
        DBase::Stage(i) => Base::Image {
            name: stage_key(&owner.name, *i),
        },
        DBase::Image(r) => resolve(r).map_err(|e| {
            Error::msg(format!(
                "{file}:{}:{}: error: FROM {r}: {e}",
                stage.from_span.line, stage.from_span.column
            ))
        })?,
    };
    let mut image = Image::bare(stage_key(&owner.name, stage.index), from);
    let mut extra = Map::new();
    for i in &stage.instructions {
        match &i.op {
            Op::Run(run) => image.steps.push(BuildStep::Run(RunStep {
                at: at(i),
                env_is_complete: true,
                command: RunCommand::Exec(run.argv()),
                env: run.env.iter().cloned().collect(),
                // None: the base's, as the build resolves it for Dockerfile steps.
                workdir: image.workdir.clone(),
                user: image.user.clone(),
                network: match run.network {
                    Some(Network::None) => StepNetwork::None,
                    _ => StepNetwork::Host,
                },
            })),
            Op::Copy(c) => {
                let steps = copy_steps(owner, src, ignore, image.workdir.as_deref(), i, c)?;
                image.steps.extend(steps);
            }
            Op::Env(pairs) => image.env.extend(pairs.iter().cloned()),
            Op::Workdir(w) => {
                let base = image.workdir.clone().unwrap_or_else(|| "/".into());
                image.workdir = Some(absolute(&base, w));
            }
            Op::User(u) => image.user = Some(u.clone()),
            Op::Cmd(c) => image.cmd = Some(c.args.clone()),
            Op::Entrypoint(e) => {
                image.entrypoint = Some(e.args.clone());
                // An ENTRYPOINT drops a CMD inherited from the base, not one of this stage.
            }
            Op::Label(pairs) => image.labels.extend(pairs.iter().cloned()),
            Op::Expose(ports) => {
                let e = extra.entry("ExposedPorts").or_insert_with(|| json!({}));
                for p in ports {
                    e[p] = json!({});
                }
            }
            Op::Volume(vols) => {
                let e = extra.entry("Volumes").or_insert_with(|| json!({}));
                for v in vols {
                    e[v] = json!({});
                }
            }
            Op::StopSignal(s) => {
                extra.insert("StopSignal".into(), json!(s));
            }
            Op::Shell(s) => {
                extra.insert("Shell".into(), json!(s));
            }
            Op::Maintainer(m) => {
                extra.insert("#author".into(), json!(m));
            }
            Op::Healthcheck(h) => {
                extra.insert("Healthcheck".into(), healthcheck_config(h));
            }
        }
    }
    Ok(StagePlan {
        key: image.name.clone(),
        image,
        extra,
    })
}

/// The copy steps of one `COPY`/`ADD` instruction `i` (`c`) of a stage of `owner`, its
/// relative destination taken from `workdir`: one per source, a local source glob expanded in
/// the build context (directories without what `ignore` excludes, local tars extracted by ADD).
fn copy_steps(
    owner: &Image,
    src: &DockerfileSource,
    ignore: &Ignore,
    workdir: Option<&str>,
    i: &Instr,
    c: &recast_dockerfile::Copy,
) -> Result<Vec<BuildStep>> {
    let file = src.path.display().to_string();
    let bad = |i: &Instr, m: String| {
        Error::msg(format!(
            "{file}:{}:{}: error: {m}",
            i.span.line, i.span.column
        ))
    };
    let mut steps = Vec::new();
    // Numeric owners now; names when the step is built, from the image's files.
    let (owner_ids, chown) = match &c.chown {
        None => (None, None),
        Some(s) => match numeric_owner(s) {
            Some(o) => (Some(o), None),
            None => (None, Some(s.clone())),
        },
    };
    let workdir = workdir.unwrap_or("/");
    let dest = absolute(workdir, &c.dest);
    let into_dir = c.dest.ends_with('/') || c.srcs.len() > 1;
    for s in &c.srcs {
        let (src_path, from, exclude, is_dir) = match &c.from {
            Some(CopyFrom::Stage(n)) => (
                PathBuf::from(absolute("/", s)),
                Some(stage_key(&owner.name, *n)),
                Vec::new(),
                None,
            ),
            Some(CopyFrom::Image(r)) => (
                PathBuf::from(absolute("/", s)),
                Some(ref_key(r)),
                Vec::new(),
                None,
            ),
            None => {
                let found = ignore.glob(&src.context, s).map_err(|e| {
                    bad(
                        i,
                        format!("{} {s}: {e}", if c.add { "ADD" } else { "COPY" }),
                    )
                })?;
                for rel in found {
                    let host = src.context.join(&rel);
                    let is_dir = host.is_dir();
                    let extract = c.add && !is_dir && is_tar(&host);
                    let exclude = if is_dir {
                        excluded_below(ignore, &src.context, &rel)
                    } else {
                        Vec::new()
                    };
                    let mut step = copy_step(
                        host,
                        &dest,
                        into_dir && !extract,
                        Some(is_dir || extract),
                        c.chmod,
                        owner_ids,
                        None,
                        exclude,
                    );
                    step.chown.clone_from(&chown);
                    step.extract = extract;
                    steps.push(BuildStep::Copy(step));
                }
                continue;
            }
        };
        let mut step = copy_step(
            src_path, &dest, into_dir, is_dir, c.chmod, owner_ids, from, exclude,
        );
        step.chown.clone_from(&chown);
        steps.push(BuildStep::Copy(step));
    }
    Ok(steps)
}

/// A `HEALTHCHECK` as the image config's `Healthcheck` (durations in nanoseconds).
fn healthcheck_config(h: &recast_dockerfile::Healthcheck) -> Value {
    match &h.test {
        None => json!({"Test": ["NONE"]}),
        Some(t) => {
            let mut v = json!({ "Test": t });
            let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
            for (k, d) in [
                ("Interval", ns(&h.interval)),
                ("Timeout", ns(&h.timeout)),
                ("StartPeriod", ns(&h.start_period)),
                ("StartInterval", ns(&h.start_interval)),
            ] {
                if let Some(d) = d {
                    v[k] = json!(d);
                }
            }
            if let Some(r) = h.retries {
                v["Retries"] = json!(r);
            }
            v
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn copy_step(
    src: PathBuf,
    dest: &str,
    into_dir: bool,
    is_dir: Option<bool>,
    mode: Option<u32>,
    owner: Option<Owner>,
    from: Option<String>,
    exclude: Vec<String>,
) -> CopyStep {
    // Docker's rules: a directory's contents go into `dest`; a file goes to `dest`, or into it
    // when `dest` is a directory (ends with `/`, or several sources).
    let dest = match (is_dir, into_dir) {
        (Some(false), true) | (None, true) => {
            let name = src.file_name().map(|n| n.to_string_lossy().into_owned());
            match (is_dir, name) {
                (Some(false), Some(n)) => format!("{}/{n}", dest.trim_end_matches('/')),
                _ => dest.to_string(),
            }
        }
        _ => dest.to_string(),
    };
    CopyStep {
        src,
        dest,
        mode,
        owner,
        from,
        exclude,
        chown: None,
        extract: false,
    }
}

/// `path` made absolute against `base` (a Dockerfile's relative WORKDIR or COPY destination).
fn absolute(base: &str, path: &str) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let joined = format!("{}/{path}", base.trim_end_matches('/'));
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if path.ends_with('/') && out != "/" {
        out.push('/');
    }
    out
}

fn numeric_owner(s: &str) -> Option<Owner> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Some(Owner {
        uid: u.parse().ok()?,
        gid: g.parse().ok()?,
    })
}

fn is_tar(p: &Path) -> bool {
    let name = p.to_string_lossy();
    [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Paths below the context directory `rel` that the `.dockerignore` leaves out, relative to
/// it (a wholly ignored directory is listed once, not walked).
fn excluded_below(ignore: &Ignore, context: &Path, rel: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(sub) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(context.join(rel).join(&sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let child = sub.join(e.file_name());
            let in_context = rel.join(&child);
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let shown = in_context.to_string_lossy().replace('\\', "/");
            if ignore.is_ignored(&shown, is_dir) {
                out.push(child.to_string_lossy().into_owned());
            } else if is_dir {
                stack.push(child);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn relative_paths_resolve_against_the_workdir() {
        assert_eq!(absolute("/srv", "www"), "/srv/www");
        assert_eq!(absolute("/srv/", "./www/"), "/srv/www/");
        assert_eq!(absolute("/srv", "../etc"), "/etc");
        assert_eq!(absolute("/", "."), "/");
        assert_eq!(absolute("/srv", "/abs"), "/abs");
    }
}
