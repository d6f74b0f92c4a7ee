//! Version 1 of recast's API: what the server answers and the CLI reads.

use serde::{Deserialize, Serialize};

/// A value that names none of an enum's variants (read from a store or a peer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl std::fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown {} \"{}\"", self.what, self.value)
    }
}

impl std::error::Error for UnknownValue {}

/// An enum written as one of a fixed set of strings (in JSON and in the state store).
macro_rules! named {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(UnknownValue { what: $what, value: s.to_string() }),
                }
            }
        }
    };
}

named! {
    /// Where a release stands.
    ReleaseOutcome ("release outcome") {
        /// Recorded, not rolled out yet.
        Pending = "pending",
        RollingOut = "rolling_out",
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        /// The rollout stopped where it failed (`auto_rollback = false`).
        Failed = "failed",
        Superseded = "superseded",
    }
}

impl ReleaseOutcome {
    /// The rollout of the release is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ReleaseOutcome::Succeeded | ReleaseOutcome::RolledBack | ReleaseOutcome::Failed
        )
    }
}

named! {
    /// Where a rollout stands.
    RolloutState ("rollout state") {
        Running = "running",
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        Failed = "failed",
    }
}

named! {
    /// What an apply did to one service.
    ServiceChange ("service outcome") {
        Succeeded = "succeeded",
        RolledBack = "rolled_back",
        Unchanged = "unchanged",
        Removed = "removed",
        Failed = "failed",
    }
}

impl ServiceChange {
    /// The service is where the spec wants it.
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            ServiceChange::Succeeded | ServiceChange::Unchanged | ServiceChange::Removed
        )
    }
}

named! {
    /// Where an apply stands.
    ApplyState ("apply state") {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

named! {
    /// An instance's life.
    InstancePhase ("instance phase") {
        /// Started, not healthy yet.
        Starting = "starting",
        Running = "running",
        Exited = "exited",
    }
}

named! {
    /// One analysis window's judgement.
    VerdictResult ("verdict") {
        Pass = "pass",
        Fail = "fail",
        Inconclusive = "inconclusive",
    }
}

named! {
    /// What the guard found different from what was built.
    FindingKind ("finding kind") {
        Added = "added",
        Removed = "removed",
        Changed = "changed",
        UnexpectedMount = "unexpected_mount",
        Process = "process",
        Config = "config",
    }
}

named! {
    /// A request to a running rollout (`POST /v1/promote | abort | pause | resume`).
    ControlAction ("rollout action") {
        Promote = "promote",
        Abort = "abort",
        Pause = "pause",
        Resume = "resume",
    }
}

named! {
    /// What a route carries (`route { protocol }`).
    RouteProtocol ("route protocol") {
        /// HTTP/1.1 requests, each routed on its own (retries, 504s, per-request metrics).
        Http = "http",
        /// Layer 4: each connection goes to one instance and is copied both ways until it
        /// closes.
        Tcp = "tcp",
    }
}

impl Default for RouteProtocol {
    /// Routes written before `protocol` existed are HTTP.
    fn default() -> RouteProtocol {
        RouteProtocol::Http
    }
}

// ---- Every answer that is not a success ------------------------------------------------------

/// The body of every non-2xx answer: one message, its hints on `  hint: ` lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

// ---- GET /v1/health --------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    /// The server's process id.
    pub pid: u32,
}

// ---- POST /v1/apply, GET /v1/applies/{id} ----------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The spec file or directory to apply (absolute, on the server's machine).
    pub path: String,
    /// The environment and variable values to load it with.
    #[serde(default)]
    pub inputs: Inputs,
    /// The values of the secrets the spec's services use, read by the CLI.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, SecretValue>,
    /// `recast promote-release`: deploy only this service, at the image live in another
    /// environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<Promotion>,
    /// The fingerprint of a saved plan (`recast apply FILE`): refused unless the server's plan
    /// is exactly that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_plan: Option<String>,
}

/// What a spec is loaded with besides its files: the environment and variable values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// `--env NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Values in precedence order, lowest first: `RECAST_VAR_*`, then `--var-file`s, then `-var`s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vars: Vec<VarValue>,
}

/// One value given for a variable, and where it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarValue {
    pub name: String,
    /// As written: raw text from `-var`/`RECAST_VAR_*` (converted by the variable's type), or an
    /// HCL expression from a var file or an environment block.
    pub value: String,
    /// `-var NAME`, `RECAST_VAR_NAME`, or `FILE:LINE:COLUMN` of a var file.
    pub from: String,
    /// `value` is an HCL expression, not raw text.
    #[serde(default)]
    pub hcl: bool,
}

/// A secret's value on the wire (hex of its bytes); never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(bytes: &[u8]) -> SecretValue {
        SecretValue(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The bytes, or `None` when the hex is malformed.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let s = self.0.as_bytes();
        if !s.len().is_multiple_of(2) {
            return None;
        }
        s.chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
            .collect()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(..)")
    }
}

/// `recast promote-release SERVICE --from ENV`: the service's image as live in `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub service: String,
    /// The environment it comes from.
    pub from: String,
}

/// `202 Accepted`: the apply runs; follow it at `/v1/applies/{apply}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStarted {
    pub apply: u64,
}

/// Progress of one apply, for `recast apply` to follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStatus {
    pub id: u64,
    pub project: String,
    pub state: ApplyState,
    pub started_ms: u64,
    pub log: Vec<LogLine>,
    pub services: Vec<ServiceOutcome>,
    pub error: Option<String>,
}

impl ApplyStatus {
    /// The apply is over (succeeded or failed).
    pub fn finished(&self) -> bool {
        self.state != ApplyState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub message: String,
}

/// What an apply did to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    pub service: String,
    pub release: Option<i64>,
    pub outcome: ServiceChange,
    pub reason: Option<String>,
}

// ---- GET /v1/status[?service=NAME] -----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub routes: Vec<RouteStatus>,
    /// When the server took this status, in milliseconds since the Unix epoch.
    pub at: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub project: String,
    pub service: String,
    pub current_release: Option<i64>,
    pub image: Option<String>,
    pub digest: Option<String>,
    /// What a running rollout is doing, in words.
    pub rollout: Option<String>,
    pub paused: bool,
    /// The analysis verdicts of the running (or last) rollout.
    pub verdicts: Vec<Verdict>,
    /// The instances whose last scan found drift.
    pub drift: Vec<InstanceDrift>,
    pub instances: Vec<InstanceStatus>,
    pub traffic: Vec<Traffic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub release: i64,
    /// Chosen by the engine to take traffic.
    pub active: bool,
    /// Per its health checks.
    pub healthy: bool,
    /// `running` or `exited` (with its `exit_status`, when it had one).
    pub state: InstancePhase,
    pub exit_status: Option<i32>,
    pub port: u16,
    pub age_ms: u64,
    /// When the instance was created, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// One release's share of a service's traffic, and what the proxy measured of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub release: i64,
    pub percent: f64,
    pub instances: usize,
    pub requests: u64,
    pub errors_5xx: u64,
    pub connect_failures: u64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub project: String,
    pub route: String,
    pub listen: String,
    pub service: String,
}

// ---- GET /v1/history?service=NAME[&project=P] ------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub project: String,
    pub service: String,
    /// Oldest first.
    pub releases: Vec<Release>,
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
}

/// One release of a service, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub project: String,
    pub service: String,
    pub number: i64,
    /// Hash of everything that defines it (image digest and service settings).
    pub spec_hash: String,
    /// Image manifest digest.
    pub digest: String,
    /// Image name at build time.
    pub image: String,
    /// The service's settings as JSON.
    pub spec: String,
    pub created_ms: i64,
    pub created_by: String,
    pub outcome: ReleaseOutcome,
    pub reason: Option<String>,
    pub finished_ms: Option<i64>,
}

/// One release replacing another, step by step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub from_release: Option<i64>,
    pub to_release: i64,
    pub strategy: String,
    pub state: RolloutState,
    pub step: i64,
    pub detail: String,
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// One analysis window's judgement of a new release against the stable one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub at_ms: u64,
    pub release: i64,
    pub result: VerdictResult,
    pub reason: String,
    pub canary: Numbers,
    pub stable: Numbers,
}

/// What the proxy measured of one release over an analysis window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Numbers {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

// ---- POST /v1/rollback -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub service: String,
    #[serde(default)]
    pub project: Option<String>,
    /// The release to go back to; the previous good one when absent.
    #[serde(default)]
    pub to: Option<i64>,
    /// Answer what would be restored ([`RestorePlan`]) without acting.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub restore_volumes: bool,
}

/// What a rollback did (or, in a dry run, would do) to the volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    pub from: i64,
    pub to: i64,
    /// The snapshots that hold the target release's data, one per exclusive volume.
    pub snapshots: Vec<Snapshot>,
    /// Why no snapshot can be restored, when none can.
    pub missing: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackResult {
    pub service: String,
    pub from: i64,
    pub to: i64,
    /// True when the release was still running and the rollback was a routing switch.
    pub warm: bool,
    /// From the command to all traffic on the release.
    pub switched_ms: f64,
    /// The volume snapshots restored (`--restore-volumes`).
    pub restored: Vec<Snapshot>,
}

// ---- GET /v1/volumes, /v1/volumes/snapshots; POST /v1/volumes/restore ------------------------

/// A copy of an exclusive volume, taken before a release started on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: i64,
    pub project: String,
    pub service: String,
    pub volume: String,
    /// The release about to start when the copy was taken.
    pub before_release: i64,
    /// The release whose instances last wrote the volume (stopped when the copy was taken).
    pub of_release: Option<i64>,
    /// The copy's directory.
    pub path: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volumes {
    pub volumes: Vec<VolumeInfo>,
}

/// One volume of a deployed service, for `recast volume ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub project: String,
    pub service: String,
    pub volume: String,
    pub mount: String,
    pub exclusive: bool,
    pub path: String,
    pub snapshots: usize,
    pub last_snapshot_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshots {
    pub project: String,
    pub service: String,
    /// How many snapshots are kept per volume.
    pub keep: usize,
    pub snapshots: Vec<Snapshot>,
}

/// A snapshot named by its id or by its directory's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SnapshotRef {
    Id(i64),
    Name(String),
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotRef::Id(n) => write!(f, "{n}"),
            SnapshotRef::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub service: String,
    #[serde(default)]
    pub project: Option<String>,
    pub volume: String,
    pub snapshot: SnapshotRef,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRestored {
    pub service: String,
    pub volume: String,
    pub snapshot: Snapshot,
    /// How many instances were stopped.
    pub stopped: usize,
    /// The instances started again on the restored volume.
    pub started: Vec<String>,
}

// ---- POST /v1/promote | abort | pause | resume -----------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub service: String,
    #[serde(default)]
    pub project: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReply {
    pub service: String,
    pub action: ControlAction,
}

// ---- POST /v1/drift --------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRequest {
    /// One service, or all when absent.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// Replace the drifted instances.
    #[serde(default)]
    pub fix: bool,
    /// Hash every file instead of trusting unchanged metadata.
    #[serde(default)]
    pub full: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReply {
    /// Every instance checked, with its findings (none when it matches its image).
    pub instances: Vec<InstanceDrift>,
    /// How many instances have findings.
    pub drifted: usize,
    /// The instances started to replace drifted ones (`fix`).
    pub replaced: Vec<String>,
}

/// The findings of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDrift {
    pub service: String,
    pub instance: String,
    pub release: i64,
    pub findings: Vec<Finding>,
    /// What the scan looked at and how long it took.
    pub scan: ScanStats,
}

/// One difference between an instance and its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Absolute path inside the instance (or the mount point, or the config field).
    pub path: String,
    pub kind: FindingKind,
    /// What changed: "content", "mode 0644 -> 0666", …
    pub detail: String,
}

/// The cost of one instance's scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    /// Wall time of the whole scan, in microseconds.
    pub micros: u64,
    /// Entries of the root looked at.
    pub entries: u64,
    /// Files hashed.
    pub hashed: u64,
    pub bytes_hashed: u64,
    /// Processes of the instance whose executables were checked.
    pub processes: u64,
}

// ---- POST /v1/destroy ------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyRequest {
    /// The project whose services go; every project when absent.
    #[serde(default)]
    pub project: Option<String>,
    /// The services to destroy; all of the project's when empty.
    #[serde(default)]
    pub services: Vec<String>,
    /// Delete their volumes and snapshots too.
    #[serde(default)]
    pub volumes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destroyed {
    pub removed: Vec<String>,
}

// ---- GET /v1/events?since=ID (server-sent events, one `Event` per `data:`) ------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub project: String,
    pub service: String,
    /// `instance.started`, `analysis.verdict`, … (also the SSE `event:` name).
    pub kind: String,
    pub message: String,
}

// ---- GET /v1/services/{name}/logs (plain text or JSON lines, streamed) -------------------------

/// What `recast logs` asks for, sent as the query string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// The last N lines of each instance.
    pub tail: Option<usize>,
    /// Only lines at most this long ago (`30s`, `5m`, …).
    pub since: Option<String>,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Keep the answer open and send new lines as they come.
    pub follow: bool,
    /// One [`InstanceLine`] of JSON per line instead of text.
    #[serde(default)]
    pub json: bool,
}

/// One line of an instance's output, as `logs` sends it with `json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLine {
    pub instance: String,
    /// When recast saw it: RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub line: String,
}

impl LogsQuery {
    /// `?timestamps=…&follow=…&json=…[&tail=N][&since=D]`.
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "?timestamps={}&follow={}&json={}",
            self.timestamps, self.follow, self.json
        );
        if let Some(n) = self.tail {
            q.push_str(&format!("&tail={n}"));
        }
        if let Some(s) = &self.since {
            q.push_str(&format!("&since={s}"));
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    /// `sample` (a reply as the server writes it today) reads as `T`, and `T` writes every
    /// field of it back unchanged (names, nesting, values); fields added since may follow.
    fn keeps<T: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq>(sample: Value) -> T {
        let typed: T = serde_json::from_value(sample.clone()).unwrap_or_else(|e| {
            panic!("{} does not read {sample}: {e}", std::any::type_name::<T>())
        });
        let back = serde_json::to_value(&typed).expect("serialize");
        within(&sample, &back, "$");
        let again: T = serde_json::from_value(back).expect("read back");
        assert_eq!(
            again,
            typed,
            "{} does not round-trip",
            std::any::type_name::<T>()
        );
        typed
    }

    fn within(sample: &Value, back: &Value, at: &str) {
        match (sample, back) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in a {
                    let w = b
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}.{k} is gone from {back}"));
                    within(v, w, &format!("{at}.{k}"));
                }
            }
            (Value::Array(a), Value::Array(b)) => {
                assert_eq!(a.len(), b.len(), "{at}");
                for (i, (v, w)) in a.iter().zip(b).enumerate() {
                    within(v, w, &format!("{at}[{i}]"));
                }
            }
            (Value::Number(a), Value::Number(b)) => {
                assert_eq!(a.as_f64(), b.as_f64(), "{at}");
            }
            _ => assert_eq!(sample, back, "{at}"),
        }
    }

    fn snapshot() -> Value {
        json!({
            "id": 3, "project": "shop", "service": "db", "volume": "data", "before_release": 2,
            "of_release": 1, "path": "/var/lib/recast/snapshots/shop/db/data/2-1700000000000",
            "created_ms": 1_700_000_000_000_i64,
        })
    }

    fn verdict() -> Value {
        json!({
            "at_ms": 1_700_000_000_500_u64, "release": 2, "result": "inconclusive",
            "reason": "3 requests, fewer than min_requests 20",
            "canary": { "requests": 3, "errors": 0, "error_rate": 0.0, "p99_ms": 1.25 },
            "stable": { "requests": 40, "errors": 1, "error_rate": 0.025, "p99_ms": 2.5 },
        })
    }

    fn drift() -> Value {
        json!({
            "service": "web", "instance": "web-4f2a", "release": 2,
            "findings": [{ "path": "/etc/passwd", "kind": "changed", "detail": "content" }],
            "scan": { "micros": 1200, "entries": 310, "hashed": 2, "bytes_hashed": 4096, "processes": 1 },
        })
    }

    #[test]
    fn todays_replies_read_and_write_back_unchanged() {
        keeps::<ErrorReply>(json!({ "error": "no apply 7" }));
        keeps::<Health>(json!({ "ok": true, "pid": 4242 }));
        keeps::<ApplyStarted>(json!({ "apply": 1 }));
        let a: ApplyStatus = keeps(json!({
            "id": 1, "project": "shop", "state": "failed", "started_ms": 1_700_000_000_000_u64,
            "log": [{ "at_ms": 1_700_000_000_001_u64, "message": "building images of project shop" }],
            "services": [
                { "service": "web", "release": 2, "outcome": "rolled_back", "reason": "unhealthy" },
                { "service": "db", "release": null, "outcome": "unchanged", "reason": null },
            ],
            "error": null,
        }));
        assert!(a.finished());
        assert_eq!(a.services[0].outcome, ServiceChange::RolledBack);
        let s: Status = keeps(json!({
            "services": [{
                "project": "shop", "service": "web", "current_release": 2, "image": "web",
                "digest": "sha256:ab", "rollout": "canary step 1/3: 10%", "paused": false,
                "verdicts": [verdict()], "drift": [drift()],
                "instances": [{
                    "id": "web-4f2a", "release": 2, "active": true, "healthy": true,
                    "state": "exited", "exit_status": 137, "port": 8080, "age_ms": 1500,
                }],
                "traffic": [{
                    "release": 2, "percent": 100.0, "instances": 1, "requests": 10,
                    "errors_5xx": 0, "connect_failures": 0, "p99_ms": 1.5,
                }],
            }],
            "routes": [{ "project": "shop", "route": "www", "listen": "127.0.0.1:8080", "service": "web" }],
            "at": 1_700_000_000_000_u64,
        }));
        assert_eq!(s.services[0].instances[0].state, InstancePhase::Exited);
        assert_eq!(
            s.services[0].verdicts[0].result,
            VerdictResult::Inconclusive
        );
        let release = json!({
            "project": "shop", "service": "web", "number": 2, "spec_hash": "b3:1", "digest": "sha256:ab",
            "image": "web", "spec": "{\"image\":\"web\"}", "created_ms": 1, "created_by": "apply",
            "outcome": "rolled_back", "reason": "unhealthy", "finished_ms": 2,
        });
        let h: History = keeps(json!({
            "project": "shop", "service": "web", "releases": [release],
            "rollouts": [{
                "id": 1, "project": "shop", "service": "web", "from_release": 1, "to_release": 2,
                "strategy": "canary", "state": "rolled_back", "step": 1, "detail": "analysis failed",
                "started_ms": 1, "updated_ms": 2,
            }],
            "verdicts": [verdict()],
        }));
        assert_eq!(h.releases[0].outcome, ReleaseOutcome::RolledBack);
        assert_eq!(h.rollouts[0].state, RolloutState::RolledBack);
        // A destroyed service's history has its releases only.
        keeps::<History>(json!({ "project": "shop", "service": "web", "releases": [] }));
        keeps::<RestorePlan>(
            json!({ "from": 2, "to": 1, "snapshots": [snapshot()], "missing": null }),
        );
        keeps::<RollbackResult>(json!({
            "service": "db", "from": 2, "to": 1, "warm": false, "switched_ms": 812.5,
            "restored": [snapshot()],
        }));
        keeps::<Volumes>(json!({ "volumes": [{
            "project": "shop", "service": "db", "volume": "data", "mount": "/var/lib/db",
            "exclusive": true, "path": "/var/lib/recast/volumes/shop/db/data", "snapshots": 1,
            "last_snapshot_ms": null,
        }] }));
        keeps::<Snapshots>(
            json!({ "project": "shop", "service": "db", "keep": 5, "snapshots": [snapshot()] }),
        );
        keeps::<VolumeRestored>(json!({
            "service": "db", "volume": "data", "snapshot": snapshot(), "stopped": 1, "started": ["db-1"],
        }));
        let c: ControlReply = keeps(json!({ "service": "web", "action": "pause" }));
        assert_eq!(c.action, ControlAction::Pause);
        let d: DriftReply =
            keeps(json!({ "instances": [drift()], "drifted": 1, "replaced": ["web-77"] }));
        assert_eq!(d.instances[0].findings[0].kind, FindingKind::Changed);
        keeps::<Destroyed>(json!({ "removed": ["web", "db"] }));
        keeps::<Event>(json!({
            "id": 9, "at_ms": 1, "project": "shop", "service": "web", "kind": "analysis.verdict",
            "message": "{}",
        }));
    }

    #[test]
    fn requests_read_what_the_cli_sends_with_defaults_for_what_it_leaves_out() {
        let r: RollbackRequest =
            serde_json::from_value(json!({ "service": "web", "to": null, "dry_run": true }))
                .expect("rollback");
        assert_eq!(
            (r.to, r.dry_run, r.restore_volumes, r.project),
            (None, true, false, None)
        );
        let r: RestoreRequest =
            serde_json::from_value(json!({ "service": "db", "volume": "data", "snapshot": "3" }))
                .expect("restore");
        assert_eq!(r.snapshot, SnapshotRef::Name("3".into()));
        let r: RestoreRequest =
            serde_json::from_value(json!({ "service": "db", "volume": "data", "snapshot": 3 }))
                .expect("restore");
        assert_eq!((r.snapshot.to_string(), r.project), ("3".to_string(), None));
        let d: DestroyRequest = serde_json::from_value(json!({})).expect("destroy");
        assert_eq!(d, DestroyRequest::default());
        let d: DriftRequest =
            serde_json::from_value(json!({ "service": null, "fix": false, "full": true }))
                .expect("drift");
        assert!(d.full && !d.fix && d.service.is_none());
        for req in [
            serde_json::to_value(ApplyRequest {
                path: "/srv/shop".into(),
                inputs: Inputs::default(),
                secrets: Default::default(),
                promote: None,
                expect_plan: None,
            }),
            serde_json::to_value(ControlRequest {
                service: "web".into(),
                project: None,
            }),
        ] {
            assert!(req.expect("json").is_object());
        }
        let a: ApplyRequest =
            serde_json::from_value(json!({ "path": "/srv/shop" })).expect("apply");
        assert_eq!(
            (a.inputs, a.secrets.len(), a.promote),
            (Inputs::default(), 0, None)
        );
        let secret = SecretValue::new(b"s3cr3t\0");
        assert_eq!(secret.bytes().as_deref(), Some(&b"s3cr3t\0"[..]));
        assert!(
            !format!("{secret:?}").contains("73"),
            "Debug shows no value"
        );
        let e = serde_json::from_value::<ApplyRequest>(json!({})).expect_err("no path");
        assert!(e.to_string().contains("missing field `path`"), "{e}");
    }

    #[test]
    fn a_logs_query_is_its_query_string() {
        let q = LogsQuery {
            tail: Some(5),
            since: Some("2m".into()),
            timestamps: true,
            follow: false,
            json: true,
        };
        assert_eq!(
            q.to_query(),
            "?timestamps=true&follow=false&json=true&tail=5&since=2m"
        );
        assert_eq!(
            LogsQuery::default().to_query(),
            "?timestamps=false&follow=false&json=false"
        );
    }

    #[test]
    fn every_variant_round_trips_through_its_name_and_json() {
        for v in ReleaseOutcome::ALL {
            assert_eq!(v.as_str().parse::<ReleaseOutcome>(), Ok(*v));
            let json = serde_json::to_string(v).expect("json");
            assert_eq!(json, format!("\"{}\"", v.as_str()));
        }
        for v in FindingKind::ALL {
            assert_eq!(v.as_str().parse::<FindingKind>(), Ok(*v));
        }
        for v in RouteProtocol::ALL {
            assert_eq!(v.as_str().parse::<RouteProtocol>(), Ok(*v));
        }
    }

    #[test]
    fn an_unknown_value_names_what_it_is_not() {
        let e = "sideways".parse::<RolloutState>().expect_err("not a state");
        assert_eq!(e.to_string(), "unknown rollout state \"sideways\"");
    }
}
