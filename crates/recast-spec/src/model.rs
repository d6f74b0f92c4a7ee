//! The typed project model: what a valid set of `recast.hcl` files means.
//!
//! Everything here is already checked: references resolve, durations are durations, ports are
//! ports. Later stages (build, runtime, deploy) consume this and never see HCL.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// One project: every `*.hcl` file of a directory (or the one file named).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The name given by `project = "NAME"`, if any (otherwise the directory names the project).
    #[serde(default)]
    pub name: Option<String>,
    /// The directory relative paths in the spec are resolved against.
    pub dir: PathBuf,
    /// The spec files the project was read from, in load order.
    pub files: Vec<PathBuf>,
    pub images: BTreeMap<String, Image>,
    pub services: BTreeMap<String, Service>,
    pub routes: BTreeMap<String, Route>,
    /// Project-wide guard settings (defaults when there is no `guard` block).
    pub guard: Guard,
    pub webhooks: BTreeMap<String, Webhook>,
    /// `base "REF" { source = "…" }` blocks: the normalised reference (`docker.io/library/debian:12`)
    /// and the source that replaces it wherever a `from` or a Dockerfile `FROM` names it.
    #[serde(default)]
    pub bases: BTreeMap<String, Base>,
    /// `registry { url = "HOST[:PORT][/PREFIX]" }`: where apply pushes every image it deploys,
    /// and where a server lacking one pulls it from.
    #[serde(default)]
    pub registry: Option<Registry>,
    /// `secret "NAME"` blocks: where the CLI reads each value (never the value itself).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
    /// `environment "NAME"` blocks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, Environment>,
    /// The environment the spec was loaded for (`--env NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Every variable's value, as the spec was loaded (variables are never secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, crate::eval::Value>,
}

impl Image {
    /// An image with no steps and no settings of its own (built for its base alone, or filled
    /// in step by step, as a Dockerfile stage is).
    pub fn bare(name: String, from: Base) -> Image {
        Image {
            name,
            from,
            steps: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            cmd: None,
            entrypoint: None,
            labels: BTreeMap::new(),
            test: None,
            dockerfile: None,
        }
    }
}

impl Project {
    /// The `tmpfs` paths of every service that runs `image`: its test instance gets them too,
    /// since that is how the image runs.
    pub fn tmpfs_of_image(&self, image: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in self.services.values().filter(|s| s.image == image) {
            for t in &s.tmpfs {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub from: Base,
    /// `copy` and `run` steps, in the order the spec gives them; one layer each.
    pub steps: Vec<BuildStep>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub test: Option<ImageTest>,
    /// Built from a Dockerfile instead of `from` and steps (then `from` is scratch and `steps`
    /// empty; the image block's other settings apply on top of the Dockerfile's).
    #[serde(default)]
    pub dockerfile: Option<DockerfileSource>,
}

/// `image { dockerfile, context, target, args }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerfileSource {
    pub path: PathBuf,
    /// The build context (default: the Dockerfile's directory).
    pub context: PathBuf,
    /// The stage to build (default: the last).
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
}

/// Where an image starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Base {
    Scratch,
    /// An OCI image layout directory, optionally with the tag to use.
    Oci {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        path: PathBuf,
    },
    /// A registry reference, normalised (`docker.io/library/debian:12`,
    /// `HOST/REPO@sha256:…`; see [`crate::reference`]). A tag is pinned to a digest by the
    /// project's `recast.lock` when the image is built.
    Registry {
        reference: String,
    },
    /// Another image of the project (`from = image.NAME`), built first.
    Image {
        name: String,
    },
}

/// One build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildStep {
    Copy(CopyStep),
    Run(RunStep),
}

/// A `run` step: a command in a throwaway build container over the layers so far; what it
/// changes becomes one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStep {
    /// Where the step is written, `FILE:LINE:COLUMN`, for errors of the build.
    pub at: String,
    /// `env` is the step's whole environment (a Dockerfile `RUN` sees only what was set
    /// before it), not an addition to the image's.
    #[serde(default)]
    pub env_is_complete: bool,
    pub command: RunCommand,
    /// On top of the image's environment.
    pub env: BTreeMap<String, String>,
    /// Instead of the image's `workdir` / `user`.
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub network: StepNetwork,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunCommand {
    /// `shell = "…"`: run by `/bin/sh -c`.
    Shell(String),
    /// `command = [...]`: exec form.
    Exec(Vec<String>),
}

/// The network of a build step: the host's (package managers work) or none (hermetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepNetwork {
    Host,
    None,
}

/// A `copy` step: a file or directory from the build context into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStep {
    /// Resolved against the directory of the spec file that names it.
    pub src: PathBuf,
    /// Absolute path inside the image.
    pub dest: String,
    /// Permission bits for every copied entry, when set.
    pub mode: Option<u32>,
    /// Numeric owner for every copied entry (default root).
    pub owner: Option<Owner>,
    /// Copy out of another image of the project (`from = image.NAME`): `src` is then an
    /// absolute path inside that image.
    #[serde(default)]
    pub from: Option<String>,
    /// Paths below `src` (relative, `/`-separated) left out: what a `.dockerignore` excludes.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Owner by name (`USER[:GROUP]`, a Dockerfile's `--chown`), resolved against the image's
    /// `/etc/passwd` and `/etc/group` when the step is built.
    #[serde(default)]
    pub chown: Option<String>,
    /// `src` is a tar archive whose contents go to `dest` (a Dockerfile's `ADD` of a tar).
    #[serde(default)]
    pub extract: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Checks run against a throwaway instance before an image may deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageTest {
    pub http: Vec<HttpTest>,
    pub command: Option<Vec<String>>,
    /// Port the test instance listens on (`$PORT`); default: the port of the first service
    /// that runs the image, else 8080.
    pub port: u16,
    /// Deadline for the whole test, start included.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpTest {
    pub path: String,
    pub expect_status: u16,
    /// A substring the response body must contain.
    pub expect_body: Option<String>,
}

/// `stop_timeout` when the spec sets none (Docker's and Kubernetes' grace period is similar).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}

/// `drain_timeout` when the spec sets none.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

/// The longest service name: an instance id is `NAME-rRELEASE-XXXXXXXX` (release numbers up to
/// ten digits, eight random hex digits) and is also the instance's hostname, which must fit in a
/// 63-character DNS label (the kernel allows 64): 63 - 2 - 10 - 1 - 8.
pub const MAX_SERVICE_NAME: usize = 42;

/// Recorded in every release (`recast_server::record`): a field added here, or to a type nested
/// in it, must decode when absent (`#[serde(default)]` or an `Option`), so releases recorded
/// before it stay readable and unchanged; a recast-server test walks every field to check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// Name of the image (the reference `image.NAME` resolved).
    pub image: String,
    pub instances: u32,
    pub port: u16,
    pub env: BTreeMap<String, String>,
    pub health: Health,
    pub volumes: Vec<Volume>,
    pub max_age: Option<Duration>,
    pub network: Network,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    /// Run each instance in a user namespace (root inside is an unprivileged host uid).
    #[serde(default)]
    pub user_namespace: bool,
    /// Empty, private tmpfs directories in the read-only root (never persisted, not drift).
    #[serde(default)]
    pub tmpfs: Vec<String>,
    /// The signal that asks an instance to stop, by canonical name ("SIGQUIT"); unset: the
    /// image's `StopSignal`, else SIGTERM.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// How long a stopping instance has after its stop signal before it is killed (SIGKILL).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Duration,
    /// How long retiring an instance waits for its requests and connections in flight (after
    /// it left rotation) before it is stopped anyway.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// What the other services of the project speak to it on `NAME:PORT`: HTTP requests or TCP
    /// connections passed through. Unset: HTTP when its health check is HTTP, else TCP
    /// ([`Service::internal_protocol`]).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The services of the project that may connect to it by name; unset: all of them.
    #[serde(default)]
    pub allow_from: Option<Vec<String>>,
    /// Where its instances may connect outside the project.
    #[serde(default)]
    pub egress: Egress,
    pub rollout: Rollout,
    /// Service-level override of the project guard.
    pub guard: Option<Guard>,
    /// Environment variables whose values are secrets: variable name → secret name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// `secret_file` blocks: secrets mounted as files on a tmpfs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_files: Vec<SecretFile>,
}

/// `secret_file { secret = secret.NAME, path = "/run/secrets/x", mode = "0400" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    pub secret: String,
    /// Absolute path inside the instance.
    pub path: String,
    pub mode: u32,
}

/// A `secret "NAME"` block: where its value comes from, read by the CLI at plan and apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretSource {
    /// `from_file`: the file's bytes (a path relative to the spec's directory is made absolute).
    File(PathBuf),
    /// `from_env`: an environment variable of the process that runs recast.
    Env(String),
    /// `from_command`: what the command prints on stdout, without one trailing newline; a list
    /// is run as is, a string by `/bin/sh -c`.
    Command(Vec<String>),
}

/// An `environment "NAME"` block (its variable values are applied when the spec is loaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub name: String,
    /// `require { promoted_from = "staging", soak = "10m" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<Require>,
}

/// What an apply to an environment requires of every image it deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Require {
    /// The environment where the image's digest must have been live first.
    pub promoted_from: String,
    /// For at least this long.
    pub soak: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Failures during this time after start do not count.
    pub start_period: Duration,
}

impl Service {
    /// The names of the secrets the service uses (in `env` and `secret_file`), each once.
    pub fn secrets(&self) -> std::collections::BTreeSet<&str> {
        self.secret_env
            .values()
            .map(String::as_str)
            .chain(self.secret_files.iter().map(|f| f.secret.as_str()))
            .collect()
    }

    /// The volumes no two instances may share (`exclusive = true`).
    pub fn exclusive_volumes(&self) -> impl Iterator<Item = &Volume> {
        self.volumes.iter().filter(|v| v.exclusive)
    }

    /// The protocol of its `NAME:PORT` address inside the project (see [`Service::protocol`]).
    pub fn internal_protocol(&self) -> Protocol {
        match (self.protocol, &self.health.check) {
            (Some(p), _) => p,
            (None, HealthCheck::Http { .. }) => Protocol::Http,
            (None, _) => Protocol::Tcp,
        }
    }

    /// Old instances stop before new ones start, in rollouts and replacements alike.
    pub fn stops_first(&self) -> bool {
        matches!(self.rollout.strategy, Strategy::Recreate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HealthCheck {
    /// GET this path; any 2xx is healthy.
    Http { path: String },
    /// A TCP connect to the service port.
    Tcp,
    /// Run inside the instance; exit status 0 is healthy.
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub mount: String,
    /// At most one instance on the volume at any moment (`exclusive = true`): the service has
    /// one instance, rolls out by `recreate`, and each rollout snapshots the volume first.
    #[serde(default)]
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// Own network namespace with loopback only (the default).
    Private,
    /// The host's network; each instance gets a unique `$PORT`.
    Host,
}

/// Where an instance may connect outside its project: nowhere, anywhere the host can, or only
/// to the destinations listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Egress {
    None,
    #[default]
    All,
    Only(Vec<Destination>),
}

/// One allowed destination of `egress`: an address or network, or a host name (resolved when
/// an instance starts), with a port or any port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// An IP address, a CIDR network (`10.0.0.0/8`) or a host name.
    pub host: String,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub strategy: Strategy,
    pub analysis: Option<Analysis>,
    pub auto_rollback: bool,
    pub progress_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    Rolling {
        max_surge: Count,
        max_unavailable: Count,
        min_healthy_time: Duration,
    },
    BlueGreen {
        preview_listen: Option<SocketAddr>,
        auto_promote_after: Option<Duration>,
        scale_down_delay: Duration,
    },
    Canary {
        steps: Vec<Step>,
        sticky: bool,
    },
    /// Stop (drain, then stop) every old instance before the new release starts: downtime,
    /// but never two releases at once (single-writer software, exclusive volumes).
    Recreate,
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Rolling { .. } => "rolling",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
            Strategy::Recreate => "recreate",
        }
    }
}

/// An instance count, absolute or as a percentage of `instances` (Kubernetes style).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Count {
    Absolute(u32),
    Percent(u32),
}

impl Count {
    /// Resolve against a fleet size. Percentages round up for surge (`round_up`) and down for
    /// unavailability, as Kubernetes does.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            Count::Absolute(n) => n,
            Count::Percent(p) => {
                let x = u64::from(total) * u64::from(p);
                let n = if round_up { x.div_ceil(100) } else { x / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Percentage of requests (1–100) sent to the new release.
    pub weight: u8,
    /// How long to hold this step; `None` waits for `recast promote`.
    pub pause: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub interval: Duration,
    pub min_requests: u64,
    pub max_error_rate: Option<f64>,
    pub max_p99_latency: Option<Duration>,
    /// Failed verdicts tolerated before rolling back (the next one rolls back).
    pub failure_limit: u32,
    /// Inconclusive verdicts tolerated before rolling back.
    pub inconclusive_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub name: String,
    pub listen: SocketAddr,
    /// Name of the service (the reference `service.NAME` resolved).
    pub service: String,
    /// How long an instance may take to answer a request (to its response headers) before the
    /// client gets a 504 (HTTP routes only).
    pub timeout: Duration,
    /// What the route carries: HTTP requests, or TCP connections passed through as they are.
    #[serde(default)]
    pub protocol: Protocol,
}

/// What a route carries: `"http"` (the default) or `"tcp"`.
pub use recast_api::v1::RouteProtocol as Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub scan_interval: Duration,
    pub on_drift: OnDrift,
}

impl Default for Guard {
    fn default() -> Guard {
        Guard {
            scan_interval: Duration::from_secs(30),
            on_drift: OnDrift::Replace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    Replace,
    Report,
}

/// A project's `registry` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// `HOST[:PORT]` and an optional path prefix (`127.0.0.1:5000/team`), as written but for a
    /// trailing `/`: no scheme, tag or digest.
    pub url: String,
    /// Plain HTTP (loopback hosts always are).
    pub insecure: bool,
}

impl Registry {
    /// The repository an image of the project is pushed to: `URL/IMAGE`.
    pub fn repository(&self, image: &str) -> String {
        format!("{}/{image}", self.url)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub timeout: Duration,
}

/// Events a webhook can subscribe to.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "rollout.started",
    "rollout.step",
    "rollout.pre_promote",
    "rollout.promoted",
    "rollout.rolled_back",
    "rollout.finished",
    "instance.replaced",
    "drift.detected",
];
