//! Dockerfile front end: models of real Dockerfiles, substitution, every unsupported instruction
//! and flag as a located error, .dockerignore and globs, stage order, and a mutation fuzzer.

mod errors;
mod fuzz;
mod ignore;
mod models;
mod stages;
mod subst;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use recast_dockerfile::{Dockerfile, Op, Options, RunCmd};

pub const GO: &str = include_str!("fixtures/go.Dockerfile");
pub const NGINX: &str = include_str!("fixtures/nginx.Dockerfile");
pub const NODE: &str = include_str!("fixtures/node.Dockerfile");

/// The host's architecture as the automatic `TARGETARCH` names it.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn opts(args: &[(&str, &str)]) -> Options {
    Options {
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        base_env: BTreeMap::new(),
    }
}

pub fn parse_ok(text: &str, opts: &Options) -> Dockerfile {
    match recast_dockerfile::parse_with(Path::new("Dockerfile"), text, opts) {
        Ok(d) => d,
        Err(e) => panic!("unexpected errors:\n{e}\nin:\n{text}"),
    }
}

/// Every error as `Dockerfile:LINE:COL: message` plus ` | hint: …`.
pub fn errors(text: &str, opts: &Options) -> Vec<String> {
    match recast_dockerfile::parse_with(Path::new("Dockerfile"), text, opts) {
        Ok(d) => panic!("expected errors, got {d:#?}"),
        Err(diags) => diags
            .iter()
            .map(|d| {
                let mut s = format!(
                    "{}:{}:{}: {}",
                    d.file.display(),
                    d.line,
                    d.column,
                    d.message
                );
                if let Some(h) = &d.hint {
                    s.push_str(" | hint: ");
                    s.push_str(h);
                }
                s
            })
            .collect(),
    }
}

fn pairs(p: &[(String, String)]) -> String {
    p.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A compact, exact rendering of the model, one line per stage and instruction.
pub fn dump(d: &Dockerfile) -> Vec<String> {
    let mut out = Vec::new();
    for s in &d.stages {
        out.push(format!(
            "stage {} {} {:?} @{}:{}",
            s.index,
            s.name.as_deref().unwrap_or("-"),
            s.base,
            s.from_span.line,
            s.from_span.column
        ));
        for i in &s.instructions {
            let mut line = format!("{}:{} ", i.span.line, i.span.column);
            match &i.op {
                Op::Run(r) => {
                    match &r.cmd {
                        RunCmd::Exec(v) => write!(line, "RUN exec {v:?}"),
                        RunCmd::Shell(t) => write!(line, "RUN sh {t:?}"),
                    }
                    .ok();
                    if r.shell != ["/bin/sh", "-c"] {
                        write!(line, " shell={:?}", r.shell).ok();
                    }
                    if let Some(n) = r.network {
                        write!(line, " net={n:?}").ok();
                    }
                    write!(line, " env[{}]", pairs(&r.env)).ok();
                }
                Op::Copy(c) => {
                    write!(
                        line,
                        "{} {:?} -> {:?}",
                        if c.add { "ADD" } else { "COPY" },
                        c.srcs,
                        c.dest
                    )
                    .ok();
                    if let Some(f) = &c.from {
                        write!(line, " from={f:?}").ok();
                    }
                    if let Some(o) = &c.chown {
                        write!(line, " chown={o}").ok();
                    }
                    if let Some(m) = c.chmod {
                        write!(line, " chmod={m:o}").ok();
                    }
                }
                Op::Env(p) => write!(line, "ENV {}", pairs(p)).unwrap_or(()),
                Op::Label(p) => write!(line, "LABEL {}", pairs(p)).unwrap_or(()),
                other => write!(line, "{other:?}").unwrap_or(()),
            }
            out.push(line);
        }
    }
    out
}
