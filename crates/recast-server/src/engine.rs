//! The deploy engine: releases, rollouts (rolling, blue/green), rollback, health supervision and
//! recovery after a restart. Every change is a new instance; nothing running is modified.
//!
//! Traffic rule: an instance is in its service's routing table only when it is *active* (chosen
//! by the engine) and *healthy* (per its health checks). Removing an instance from the table
//! always comes before draining it, and draining before stopping it.

use crate::ServerError;
use crate::analysis::Verdict;
use crate::plan::{self, Action};
use crate::record::ReleaseRecord;
use crate::rollout::{self, Controls, End, Rollout, Weights};
use recast_api::DataDir;
use recast_dataplane::proto as dp;
use recast_image::build::{self, Options};
use recast_image::{Digest, Store};
use recast_runtime::health::{self, Status, Tracker};
use recast_runtime::{Instance, InstanceSpec, Runtime, State as IState, new_id};
use recast_spec::{Project, Service};
use recast_state::{NewRelease, ReleaseOutcome, RolloutState, RouteRow, State};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod apply;
mod commands;
mod fleet;
mod images;
mod instances;
mod lease;
mod network;
mod secrets;
mod stateful;
pub use lease::{HostConfig, Hosting, LEASE_TIME, request_move};
pub use secrets::ApplyInput;
pub use stateful::{KEEP_SNAPSHOTS, RestorePlan, VolumeInfo};

/// How long a removed instance may take to finish its requests before it is stopped anyway,
/// when its release's `drain_timeout` cannot be read.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Lock, recovering from a poisoned mutex (the data stays usable: every update is whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A release ready to run.
#[derive(Clone)]
pub struct Run {
    pub number: i64,
    pub digest: Digest,
    pub image_name: String,
    pub service: Service,
    /// Where the image can be pulled from when the store lacks it (`engine/images.rs`).
    pub source: Option<crate::record::ImageSource>,
    /// The secrets its service uses, sealed (`engine/secrets.rs`).
    pub secrets: BTreeMap<String, crate::record::SealedSecret>,
}

impl Run {
    pub(crate) fn from_row(r: &recast_state::Release) -> Result<Run, String> {
        let record = ReleaseRecord::read(r).map_err(|e| e.to_string())?;
        let service = record.service().map_err(|e| e.to_string())?;
        let digest = Digest::parse(&r.digest).ok_or_else(|| {
            format!(
                "release {} of {} has an invalid digest",
                r.number, r.service
            )
        })?;
        Ok(Run {
            number: r.number,
            digest,
            image_name: format!("{}:latest", record.image),
            service,
            source: record.registry,
            secrets: record.secrets,
        })
    }
}

/// One running instance of a service.
pub struct Live {
    pub inst: Instance,
    pub release: i64,
    /// Chosen by the engine to take traffic.
    pub active: bool,
    /// Per its health checks.
    pub healthy: bool,
    pub exited: Option<Option<i32>>,
    tracker: Tracker,
    health: recast_spec::Health,
    next_probe: Instant,
    /// When a replacement (crash, health, drift, age) was last started for it.
    pub(crate) replacing: bool,
}

impl Live {
    /// The last health event, for messages.
    pub fn detail(&self) -> String {
        self.tracker
            .events
            .last()
            .map(|e| e.detail.clone())
            .unwrap_or_default()
    }

    /// Judged unhealthy by its checks (after its thresholds).
    pub fn unhealthy(&self) -> bool {
        self.tracker.status == Status::Unhealthy
    }

    /// How the data plane reaches it.
    fn backend(&self) -> dp::Backend {
        dp::Backend {
            id: self.inst.id.clone(),
            release: self.release,
            target: match self.inst.network {
                recast_spec::Network::Private => dp::Target::Netns {
                    path: self.inst.netns(),
                },
                recast_spec::Network::Host => dp::Target::Host,
            },
            port: self.inst.port,
        }
    }
}

/// A service under the engine's control.
pub struct Svc {
    pub project: String,
    pub name: String,
    /// The data plane that routes its traffic.
    pub(crate) plane: Arc<recast_dataplane::Client>,
    pub live: Mutex<Vec<Live>>,
    /// One rollout or rollback at a time.
    pub(crate) busy: tokio::sync::Mutex<()>,
    /// Requests to the running rollout (`recast promote | abort | pause | resume`).
    pub controls: Controls,
    /// What a running rollout is doing, for `status`.
    pub rollout: Mutex<Option<String>>,
    /// Per-release weights while a rollout splits traffic explicitly.
    pub(crate) weights: Mutex<Option<BTreeMap<i64, u32>>>,
    /// Why nothing serves, while that is on purpose (a stop-first change).
    unavailable: Mutex<Option<String>>,
    /// Held while a routing is computed and sent.
    publishing: Mutex<()>,
    /// Keep each client on one release while traffic is split.
    sticky: AtomicBool,
    /// The analysis verdicts of the running (or last) rollout.
    pub verdicts: Mutex<Vec<Verdict>>,
    /// Guard bookkeeping: scans, crashes, last findings.
    pub guard: Mutex<crate::guard::GuardState>,
    /// Counts changes of its current release (`Ctl::set_current`), made while `busy` is held:
    /// the guard reads a project's current releases once per round and trusts that read for a
    /// service only if this did not move since.
    pub(crate) current_changes: AtomicU64,
}

impl Svc {
    /// `project/service`: its name in the data plane.
    pub fn key(&self) -> String {
        key(&self.project, &self.name)
    }

    /// What the data plane should route for this service: a group per release of the active,
    /// healthy instances (weighted by count unless a rollout split the traffic).
    pub(crate) fn routing(&self) -> dp::ServiceState {
        let live = lock(&self.live);
        let weights = lock(&self.weights).clone();
        let mut groups: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for l in live
            .iter()
            .filter(|l| l.active && l.healthy && l.exited.is_none())
        {
            groups.entry(l.release).or_default().push(l.inst.id.clone());
        }
        let liveness = live.first().map_or(
            dp::Liveness {
                interval_ms: 1000,
                timeout_ms: 500,
                threshold: 3,
            },
            |l| dp::Liveness {
                interval_ms: l.health.interval.as_millis() as u64,
                timeout_ms: l.health.timeout.as_millis() as u64,
                threshold: l.health.unhealthy_threshold,
            },
        );
        dp::ServiceState {
            key: self.key(),
            name: self.name.clone(),
            backends: live
                .iter()
                .filter(|l| l.exited.is_none())
                .map(Live::backend)
                .collect(),
            groups: groups
                .into_iter()
                .map(|(release, backends)| dp::Group {
                    release,
                    weight: weights
                        .as_ref()
                        .map(|w| w.get(&release).copied().unwrap_or(0)),
                    backends,
                })
                .collect(),
            unavailable: lock(&self.unavailable).clone(),
            sticky: self.sticky.load(Ordering::SeqCst),
            liveness,
        }
    }

    /// Send the routing to the data plane; it switches atomically. Publishes of one service are
    /// one at a time, each with the routing as it is when its turn comes, so an older routing
    /// never arrives after a newer one. A data plane that cannot be reached is said on stderr
    /// (the next publish, or the heartbeat, sends everything again).
    pub fn publish(&self) {
        let _one_at_a_time = lock(&self.publishing);
        let routing = self.routing();
        if let Err(e) = blocking(|| self.plane.set_service(routing)) {
            tracing::warn!(
                project = %self.project,
                service = %self.name,
                "routing not published: {e}"
            );
        }
    }

    /// While nothing can serve, requests get this answer; `None` ends it.
    pub(crate) fn set_unavailable(&self, why: Option<String>) {
        *lock(&self.unavailable) = why;
        self.publish();
    }

    pub(crate) fn set_sticky(&self, on: bool) {
        if self.sticky.swap(on, Ordering::SeqCst) != on {
            self.publish();
        }
    }

    /// A release's traffic counters so far (zero when the data plane cannot say).
    pub fn metrics(&self, release: i64) -> recast_proxy::Snapshot {
        self.all_metrics()
            .get(&release)
            .map(recast_proxy::Snapshot::from)
            .unwrap_or_default()
    }

    /// Every release's traffic counters.
    pub fn all_metrics(&self) -> BTreeMap<i64, dp::Counters> {
        blocking(|| self.plane.metrics(&self.key())).unwrap_or_else(|e| {
            tracing::warn!(
                project = %self.project,
                service = %self.name,
                "no traffic counters: {e}"
            );
            BTreeMap::new()
        })
    }

    fn count(&self, release: i64, f: impl Fn(&Live) -> bool) -> usize {
        lock(&self.live)
            .iter()
            .filter(|l| l.release == release && f(l))
            .count()
    }

    fn ids(&self, f: impl Fn(&Live) -> bool) -> Vec<String> {
        lock(&self.live)
            .iter()
            .filter(|l| f(l))
            .map(|l| l.inst.id.clone())
            .collect()
    }

    /// Put `on` into rotation and `off` out of it with these weights, in one table swap.
    pub(crate) fn switch(&self, on: &[String], off: &[String], weights: Weights) {
        for l in lock(&self.live).iter_mut() {
            if on.contains(&l.inst.id) {
                l.active = true;
            } else if off.contains(&l.inst.id) {
                l.active = false;
            }
        }
        match weights {
            Weights::Keep => {}
            Weights::ByCount => *lock(&self.weights) = None,
            Weights::Split(w) => *lock(&self.weights) = Some(w),
        }
        self.publish();
    }

    pub(crate) fn set_active(&self, ids: &[String], active: bool) {
        for l in lock(&self.live).iter_mut() {
            if ids.contains(&l.inst.id) {
                l.active = active;
            }
        }
        self.publish();
    }
}

/// How a rollout ended when it did not succeed: `rolled_back` (to the previous release) or
/// `failed` (stopped where it was, `auto_rollback = false`), and why.
struct Failed {
    outcome: ServiceChange,
    reason: String,
}

// What an apply reports and a rollback answers: the API's types (`/v1/applies/{id}`, `/v1/rollback`).
pub use recast_api::v1::{
    ApplyState, ApplyStatus, LogLine, RollbackResult, ServiceChange, ServiceOutcome,
};

/// The control plane of one data directory.
pub struct Ctl {
    pub data_dir: DataDir,
    pub state: Arc<State>,
    pub rt: Arc<Runtime>,
    pub store: Store,
    svcs: Mutex<HashMap<String, Arc<Svc>>>,
    /// The data plane of this directory: routes, routing tables, traffic counters.
    pub plane: Arc<recast_dataplane::Client>,
    /// The routes the data plane serves, by `project/route`.
    routes: tokio::sync::Mutex<HashMap<String, RouteRow>>,
    applying: Mutex<HashMap<String, u64>>,
    applies: Mutex<HashMap<u64, ApplyStatus>>,
    next_apply: AtomicU64,
    /// Each project's webhooks, from its last apply.
    hooks: Mutex<HashMap<String, Vec<recast_spec::Webhook>>>,
    /// Each project's guard settings, from its last apply.
    pub(crate) guards: Mutex<HashMap<String, recast_spec::Guard>>,
    /// Each project's service names and their addresses on its network (`network.rs`).
    networks: Mutex<HashMap<String, Vec<(String, std::net::Ipv4Addr)>>>,
    /// Each project's registry and the pulls in flight (`engine/images.rs`).
    images: images::Images,
    /// This server among hosts: the projects it acts for (`lease.rs`).
    pub hosting: Hosting,
    /// The key for secrets (`crate::sealed`), opened on first use.
    keyring: std::sync::OnceLock<Result<crate::sealed::Keyring, String>>,
}

fn key(project: &str, service: &str) -> String {
    format!("{project}/{service}")
}

impl Ctl {
    /// The control plane of `data_dir`; its data plane is started from `exe` (the `recast`
    /// executable) when none answers.
    pub fn new(
        data_dir: &Path,
        state: State,
        rt: Runtime,
        store: Store,
        exe: PathBuf,
        host: HostConfig,
    ) -> Arc<Ctl> {
        state.act_as(&host.name);
        Arc::new(Ctl {
            plane: Arc::new(recast_dataplane::Client::new(DataDir::new(data_dir), exe)),
            data_dir: DataDir::new(data_dir),
            state: Arc::new(state),
            rt: Arc::new(rt),
            store,
            svcs: Mutex::new(HashMap::new()),
            routes: tokio::sync::Mutex::new(HashMap::new()),
            applying: Mutex::new(HashMap::new()),
            applies: Mutex::new(HashMap::new()),
            next_apply: AtomicU64::new(1),
            hooks: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
            networks: Mutex::new(HashMap::new()),
            images: images::Images::default(),
            hosting: Hosting::new(host, &DataDir::new(data_dir)),
            keyring: std::sync::OnceLock::new(),
        })
    }

    pub fn svc(&self, project: &str, service: &str) -> Arc<Svc> {
        lock(&self.svcs)
            .entry(key(project, service))
            .or_insert_with(|| {
                Arc::new(Svc {
                    project: project.into(),
                    name: service.into(),
                    plane: self.plane.clone(),
                    live: Mutex::new(Vec::new()),
                    busy: tokio::sync::Mutex::new(()),
                    controls: Controls::default(),
                    rollout: Mutex::new(None),
                    weights: Mutex::new(None),
                    unavailable: Mutex::new(None),
                    publishing: Mutex::new(()),
                    sticky: AtomicBool::new(false),
                    verdicts: Mutex::new(Vec::new()),
                    guard: Mutex::new(Default::default()),
                    current_changes: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// The service `service` of `project`; `project` may be `@ENV`: its project in that
    /// environment (`recast … --env ENV`).
    pub fn find_svc(&self, project: Option<&str>, service: &str) -> Result<Arc<Svc>, ServerError> {
        let svcs = lock(&self.svcs);
        let found: Vec<&Arc<Svc>> = svcs
            .values()
            .filter(|s| s.name == service && plan::names_project(project, &s.project))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(match project.and_then(|p| self.held_elsewhere(p)) {
                Some(elsewhere) => ServerError::Conflict(elsewhere),
                None => ServerError::NotFound(format!("no service \"{service}\" is deployed")),
            }),
            many => {
                let envs = many.iter().any(|s| s.project.contains('@'));
                Err(ServerError::Invalid(format!(
                    "service \"{service}\" exists in several projects ({}); {}",
                    many.iter()
                        .map(|s| s.project.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if envs {
                        "choose one with --env ENV"
                    } else {
                        "name the project"
                    }
                )))
            }
        }
    }

    pub fn all_svcs(&self) -> Vec<Arc<Svc>> {
        let mut v: Vec<Arc<Svc>> = lock(&self.svcs).values().cloned().collect();
        v.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
        v
    }

    /// A `recast rollback` from release `from` to `to` is done: `to` is current, `from` is
    /// marked rolled back, and the event says so (`note` adds to it).
    /// Traffic has moved already, so a failed write cannot undo the step: it is said and
    /// recorded (`state.write_failed`), never dropped.
    pub(crate) fn record_rollback(&self, svc: &Svc, from: i64, to: i64, note: &str) {
        let written = self.set_current(svc, Some(to)).and_then(|()| {
            self.state.set_outcome(
                &svc.project,
                &svc.name,
                from,
                ReleaseOutcome::RolledBack,
                Some("recast rollback"),
            )
        });
        if let Err(e) = written {
            self.failed(
                svc,
                "state.write_failed",
                &format!("recording the rollback from release {from} to {to}: {e}"),
            );
        }
        self.event(
            svc,
            "rollout.rolled_back",
            &format!("rollback from release {from} to {to}{note}"),
        );
    }

    /// Make `number` the service's current release (with its `busy` lock held).
    pub(crate) fn set_current(&self, svc: &Svc, number: Option<i64>) -> recast_state::Result<()> {
        let r = self.state.set_current(&svc.project, &svc.name, number);
        svc.current_changes.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// Record an event; when the store cannot, it is said on stderr (never dropped silently).
    pub(crate) fn event(&self, svc: &Svc, kind: &str, msg: &str) {
        crate::oplog::event(&svc.project, &svc.name, kind, msg);
        if let Err(e) = self.state.event(&svc.project, &svc.name, kind, msg) {
            let (project, service) = (&svc.project, &svc.name);
            tracing::error!(project, service, event = kind, "recording the event: {e}");
        }
    }

    /// Have the data plane serve exactly these routes of `project` (unchanged ones keep
    /// listening, a new timeout applies in place); an error names the routes that cannot listen.
    pub(crate) async fn serve_routes(
        &self,
        project: &str,
        rows: &[RouteRow],
    ) -> Result<(), String> {
        let mut routes = self.routes.lock().await;
        let states = rows
            .iter()
            .map(route_state)
            .collect::<Result<Vec<_>, _>>()?;
        let (plane, p) = (self.plane.clone(), project.to_string());
        let served = tokio::task::spawn_blocking(move || plane.set_routes(&p, states))
            .await
            .map_err(|e| e.to_string())?;
        routes.retain(|_, r| r.project != project);
        for r in rows {
            routes.insert(key(project, &r.name), r.clone());
        }
        served
    }

    /// A failure that cannot fail the step it happened in (a background loop, housekeeping):
    /// logged as a warning and recorded as event `kind`, never dropped.
    pub(crate) fn failed(&self, svc: &Svc, kind: &str, msg: &str) {
        self.event(svc, kind, msg);
    }
}

/// Run a call to the data plane (a local socket; seconds when it must be started again) without
/// holding up the async tasks that share this worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A recorded route as the data plane serves it.
fn route_state(row: &RouteRow) -> Result<dp::RouteState, String> {
    Ok(dp::RouteState {
        key: key(&row.project, &row.name),
        listen: row
            .listen
            .parse()
            .map_err(|_| format!("route {}: bad address {}", row.name, row.listen))?,
        service: key(&row.project, &row.service),
        timeout_ms: row.timeout_ms.max(1),
        protocol: row.protocol,
        netns: None,
        allow: None,
        resolves_outside: false,
    })
}

fn hook_body(event: &str, svc: &Svc, release: i64, message: &str) -> String {
    serde_json::json!({
        "event": event, "project": svc.project, "service": svc.name, "release": release,
        "message": message, "at_ms": now_ms(),
    })
    .to_string()
}

/// POST the event to a webhook; non-2xx or no answer within its timeout is an error.
fn call_hook(h: &recast_spec::Webhook, body: &str) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(h.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    // Errors name the hook by its redacted URL and never carry its credentials: they end up in
    // release reasons, events, logs and other webhooks' payloads.
    let resp = agent
        .post(&h.url)
        .header("Content-Type", "application/json")
        .send(body.as_bytes())
        .map_err(|e| {
            recast_spec::redact_in(&format!("{}: {e}", recast_spec::redact_url(&h.url)), &h.url)
        })?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!(
            "{} answered {}",
            recast_spec::redact_url(&h.url),
            resp.status()
        ))
    }
}
