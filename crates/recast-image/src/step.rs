//! `run` steps, the builder's side: what a step runs and with what, and its cache key. Running
//! it is the runtime's job (a throwaway build container), behind the narrow [`StepRunner`]
//! trait, so this crate never depends on the runtime.

use crate::digest::Digest;
use crate::error::Result;
use crate::oci::Descriptor;
use recast_spec::{RunCommand, RunStep, StepNetwork};
use serde_json::{Value, json};
use std::io::Read;
use std::path::PathBuf;

/// One `run` step, resolved against the image so far.
#[derive(Debug, Clone)]
pub struct RunRequest<'a> {
    /// For messages: `image "app", step 2`.
    pub what: String,
    /// The layers so far, bottom first.
    pub parents: &'a [Descriptor],
    pub argv: Vec<String>,
    /// `KEY=VALUE`, the image's then the step's.
    pub env: Vec<String>,
    pub workdir: String,
    /// As the image config says it (`uid[:gid]` or names); empty is root.
    pub user: String,
    pub network: StepNetwork,
    /// mtimes in the layer are clamped to this.
    pub epoch: u64,
}

/// A finished step: its layer, written as an uncompressed tar file the builder moves into the
/// store; the file is removed when this is dropped.
#[derive(Debug)]
pub struct StepLayer {
    pub tar: PathBuf,
}

impl Drop for StepLayer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tar);
    }
}

/// Runs `run` steps (recast-runtime implements it with runc).
pub trait StepRunner {
    /// Run the step over `req.parents`, reading any parent layer it does not hold yet through
    /// `open`; write what the step changed as one layer. A failing command is an error with its
    /// exit status and the tail of its output.
    fn run<'a>(
        &self,
        req: &RunRequest<'_>,
        open: &dyn Fn(&Descriptor) -> Result<Box<dyn Read + 'a>>,
    ) -> std::result::Result<StepLayer, String>;
}

/// The argv a step runs: `shell` through `/bin/sh -c`, `command` as given.
pub fn argv(step: &RunStep) -> Vec<String> {
    match &step.command {
        RunCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        RunCommand::Exec(v) => v.clone(),
    }
}

/// The cache key of a step: its parents and everything that defines what it runs. A step
/// whose key has a layer in the cache is not run again.
pub fn key(req: &RunRequest<'_>) -> Digest {
    let parents: Vec<&str> = req.parents.iter().map(|d| d.digest.as_str()).collect();
    let v: Value = json!({
        "parents": parents,
        "argv": req.argv,
        "env": req.env,
        "workdir": req.workdir,
        "user": req.user,
        "network": matches!(req.network, StepNetwork::None),
        "epoch": req.epoch,
        // Steps run with umask 0022 since it was set in the runtime spec; a layer cached from
        // a step that inherited recast's 0077 is not this step's.
        "umask": "0022",
    });
    Digest::of(&crate::oci::canonical_json(&v))
}
