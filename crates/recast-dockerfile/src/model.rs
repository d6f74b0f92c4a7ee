//! The resolved model of a Dockerfile: stages of typed, substituted instructions.

use std::collections::BTreeSet;
use std::time::Duration;

/// A parsed and resolved Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
    /// Warning-level notes (an `args` entry no `ARG` declares, ...): lowercase, no period.
    pub warnings: Vec<String>,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lowercased (BuildKit's stage names are case-insensitive).
    pub name: Option<String>,
    /// Position among the stages, from 0 (what `COPY --from=N` counts).
    pub index: usize,
    /// The base as written after substitution of the global `ARG`s.
    pub from: String,
    /// What `from` names.
    pub base: Base,
    /// Where the `FROM` instruction starts.
    pub from_span: Span,
    pub instructions: Vec<Instr>,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An earlier stage of the same Dockerfile (by its index).
    Stage(usize),
    /// An image reference, as written (`debian:12`, `golang:1.22@sha256:…`).
    Image(String),
}

/// A position in the Dockerfile: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    pub line: usize,
    pub column: usize,
}

/// One instruction, where it is, and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instr {
    /// Where the instruction's keyword is.
    pub span: Span,
    /// The instruction as written (continuations joined, comments dropped), for progress
    /// output and error messages.
    pub text: String,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Run(Run),
    /// `COPY`, and `ADD` of local sources (`add: true`: a local tar archive is extracted).
    Copy(Copy),
    /// `ENV`: pairs in order (values substituted with the environment before the instruction).
    Env(Vec<(String, String)>),
    /// `WORKDIR`, substituted, as written (a relative path is relative to the previous one).
    Workdir(String),
    User(String),
    Cmd(Command),
    Entrypoint(Command),
    /// `EXPOSE`: `PORT/PROTO` (protocol lowercased, `tcp` when none; ranges expanded).
    Expose(Vec<String>),
    Label(Vec<(String, String)>),
    /// `MAINTAINER`: Docker writes it to the image config's `author` field.
    Maintainer(String),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Volume(Vec<String>),
    Shell(Vec<String>),
}

/// A `RUN` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub cmd: RunCmd,
    /// The `SHELL` in effect (`["/bin/sh", "-c"]` unless changed): a shell-form command runs as
    /// `shell + [cmd]`.
    pub shell: Vec<String>,
    /// `--network=`.
    pub network: Option<Network>,
    /// The step's environment beyond the base image's: `ENV`s and `ARG`s in effect, in order of
    /// first definition (the base image's env first when the caller supplied it).
    pub env: Vec<(String, String)>,
}

impl Run {
    /// The process to run: exec form as is, shell form through the shell.
    pub fn argv(&self) -> Vec<String> {
        match &self.cmd {
            RunCmd::Exec(v) => v.clone(),
            RunCmd::Shell(s) => {
                let mut v = self.shell.clone();
                v.push(s.clone());
                v
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCmd {
    /// JSON (exec) form: run as is, no shell, no substitution.
    Exec(Vec<String>),
    /// Shell form: the text the shell gets (variables are the shell's business).
    Shell(String),
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `default`: the builder's default (recast: the host's network).
    Default,
    /// `none`: loopback only.
    None,
    /// `host`: the host's network.
    Host,
}

/// Where a `COPY --from` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// An earlier stage, by index.
    Stage(usize),
    /// An image reference (a `--from` naming no stage is an image, as in Docker).
    Image(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: Option<CopyFrom>,
    /// Source paths or wildcard patterns, substituted, relative to the context (or to the
    /// `--from` root).
    pub srcs: Vec<String>,
    /// Destination, substituted; ends with `/` when written so (a directory).
    pub dest: String,
    /// `--chown=USER[:GROUP]`, substituted (names or numbers).
    pub chown: Option<String>,
    /// `--chmod=` as octal permission bits.
    pub chmod: Option<u32>,
    /// `ADD` rather than `COPY`.
    pub add: bool,
}

/// `CMD` or `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The argv the image config records: exec form as written; shell form is the `SHELL`
    /// in effect plus the command text.
    pub args: Vec<String>,
    /// Written in shell form.
    pub shell_form: bool,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `None` for `HEALTHCHECK NONE` (disables the base image's); else Docker's form:
    /// `["CMD", args…]` (exec) or `["CMD-SHELL", "text"]` (shell).
    pub test: Option<Vec<String>>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

impl Dockerfile {
    /// The stages needed to build `target` (a stage name; default the last stage), in an order
    /// that builds every stage after the stages it uses (`FROM stage`, `COPY --from`).
    pub fn stage_order(&self, target: Option<&str>) -> Result<Vec<usize>, String> {
        let Some(last) = self.stages.len().checked_sub(1) else {
            return Err("the Dockerfile has no stages".into());
        };
        let target = match target {
            None => last,
            Some(t) => {
                let want = t.to_ascii_lowercase();
                match self
                    .stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(want.as_str()))
                {
                    Some(i) => i,
                    None => {
                        let names: Vec<String> = self
                            .stages
                            .iter()
                            .filter_map(|s| s.name.as_ref().map(|n| format!("`{n}`")))
                            .collect();
                        return Err(if names.is_empty() {
                            format!("target stage `{t}` not found: the Dockerfile names no stages")
                        } else {
                            format!(
                                "target stage `{t}` not found; the stages are {}",
                                names.join(", ")
                            )
                        });
                    }
                }
            }
        };
        let mut needed = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !needed.insert(i) {
                continue;
            }
            todo.extend(self.stages[i].dependencies());
        }
        // Dependencies always come earlier in the file, so index order is a build order.
        Ok(needed.into_iter().collect())
    }

    /// The image references the stages start from or copy from (not stages, not scratch),
    /// sorted and without duplicates.
    pub fn images(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for s in &self.stages {
            if let Base::Image(r) = &s.base {
                out.insert(r.clone());
            }
            for i in &s.instructions {
                if let Op::Copy(Copy {
                    from: Some(CopyFrom::Image(r)),
                    ..
                }) = &i.op
                {
                    out.insert(r.clone());
                }
            }
        }
        out.into_iter().collect()
    }
}

impl Stage {
    /// The earlier stages this one uses.
    pub fn dependencies(&self) -> Vec<usize> {
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = self.base {
            deps.insert(i);
        }
        for i in &self.instructions {
            if let Op::Copy(Copy {
                from: Some(CopyFrom::Stage(s)),
                ..
            }) = &i.op
            {
                deps.insert(*s);
            }
        }
        deps.into_iter().collect()
    }
}
