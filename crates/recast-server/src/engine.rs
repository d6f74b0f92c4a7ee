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
use recast_image::build::{self, Options};
use recast_image::{Digest, Store};
use recast_proxy::{Backend, Group, Route, Table};
use recast_runtime::health::{self, Status, Tracker};
use recast_runtime::{Instance, InstanceSpec, Runtime, State as IState, new_id};
use recast_spec::{Project, Service};
use recast_state::{NewRelease, ReleaseOutcome, RolloutState, RouteRow, State};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod fleet;
mod stateful;
pub use stateful::{KEEP_SNAPSHOTS, RestorePlan, VolumeInfo};

/// How long a removed instance may take to finish its requests before it is stopped anyway.
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
        })
    }
}

/// One running instance of a service.
pub struct Live {
    pub inst: Instance,
    pub release: i64,
    pub backend: Arc<Backend>,
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
}

/// A service under the engine's control.
pub struct Svc {
    pub project: String,
    pub name: String,
    pub proxy: Arc<recast_proxy::Service>,
    pub live: Mutex<Vec<Live>>,
    /// One rollout or rollback at a time.
    pub(crate) busy: tokio::sync::Mutex<()>,
    /// Requests to the running rollout (`recast promote | abort | pause | resume`).
    pub controls: Controls,
    /// What a running rollout is doing, for `status`.
    pub rollout: Mutex<Option<String>>,
    /// Per-release weights while a rollout splits traffic explicitly.
    weights: Mutex<Option<BTreeMap<i64, u32>>>,
    /// The analysis verdicts of the running (or last) rollout.
    pub verdicts: Mutex<Vec<Verdict>>,
    /// Guard bookkeeping: scans, crashes, last findings.
    pub guard: Mutex<crate::guard::GuardState>,
}

impl Svc {
    /// Rebuild the routing table from the active, healthy instances; switch atomically.
    pub fn publish(&self) {
        let live = lock(&self.live);
        let weights = lock(&self.weights).clone();
        let mut groups: BTreeMap<i64, Vec<Arc<Backend>>> = BTreeMap::new();
        for l in live
            .iter()
            .filter(|l| l.active && l.healthy && l.exited.is_none())
        {
            groups.entry(l.release).or_default().push(l.backend.clone());
        }
        let groups = groups
            .into_iter()
            .map(|(release, backends)| {
                let weight = match &weights {
                    Some(w) => w.get(&release).copied().unwrap_or(0),
                    None => backends.len() as u32,
                };
                Group {
                    release,
                    weight,
                    backends,
                }
            })
            .collect();
        self.proxy.set_table(Table { groups });
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
    routes: tokio::sync::Mutex<HashMap<String, (RouteRow, Route)>>,
    previews: tokio::sync::Mutex<HashMap<String, Route>>,
    applying: Mutex<HashMap<String, u64>>,
    applies: Mutex<HashMap<u64, ApplyStatus>>,
    next_apply: AtomicU64,
    /// Each project's webhooks, from its last apply.
    hooks: Mutex<HashMap<String, Vec<recast_spec::Webhook>>>,
    /// Each project's guard settings, from its last apply.
    pub(crate) guards: Mutex<HashMap<String, recast_spec::Guard>>,
}

fn key(project: &str, service: &str) -> String {
    format!("{project}/{service}")
}

impl Ctl {
    pub fn new(data_dir: &Path, state: State, rt: Runtime, store: Store) -> Arc<Ctl> {
        Arc::new(Ctl {
            data_dir: DataDir::new(data_dir),
            state: Arc::new(state),
            rt: Arc::new(rt),
            store,
            svcs: Mutex::new(HashMap::new()),
            routes: tokio::sync::Mutex::new(HashMap::new()),
            previews: tokio::sync::Mutex::new(HashMap::new()),
            applying: Mutex::new(HashMap::new()),
            applies: Mutex::new(HashMap::new()),
            next_apply: AtomicU64::new(1),
            hooks: Mutex::new(HashMap::new()),
            guards: Mutex::new(HashMap::new()),
        })
    }

    pub fn svc(&self, project: &str, service: &str) -> Arc<Svc> {
        lock(&self.svcs)
            .entry(key(project, service))
            .or_insert_with(|| {
                Arc::new(Svc {
                    project: project.into(),
                    name: service.into(),
                    proxy: recast_proxy::Service::new(service),
                    live: Mutex::new(Vec::new()),
                    busy: tokio::sync::Mutex::new(()),
                    controls: Controls::default(),
                    rollout: Mutex::new(None),
                    weights: Mutex::new(None),
                    verdicts: Mutex::new(Vec::new()),
                    guard: Mutex::new(Default::default()),
                })
            })
            .clone()
    }

    pub fn find_svc(&self, project: Option<&str>, service: &str) -> Result<Arc<Svc>, ServerError> {
        let svcs = lock(&self.svcs);
        let found: Vec<&Arc<Svc>> = svcs
            .values()
            .filter(|s| s.name == service && project.is_none_or(|p| s.project == p))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ServerError::NotFound(format!(
                "no service \"{service}\" is deployed"
            ))),
            _ => Err(ServerError::Invalid(format!(
                "service \"{service}\" exists in several projects; name the project"
            ))),
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
        let written = self
            .state
            .set_current(&svc.project, &svc.name, Some(to))
            .and_then(|()| {
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

    /// Record an event; when the store cannot, it is said on stderr (never dropped silently).
    pub(crate) fn event(&self, svc: &Svc, kind: &str, msg: &str) {
        if let Err(e) = self.state.event(&svc.project, &svc.name, kind, msg) {
            eprintln!(
                "recast: recording event {kind} of {}/{} ({msg}): {e}",
                svc.project, svc.name
            );
        }
    }

    /// A failure that cannot fail the step it happened in (a background loop, housekeeping):
    /// said on stderr and recorded as event `kind`, never dropped.
    pub(crate) fn failed(&self, svc: &Svc, kind: &str, msg: &str) {
        eprintln!("recast: {}/{}: {kind}: {msg}", svc.project, svc.name);
        self.event(svc, kind, msg);
    }

    // ---- instances ------------------------------------------------------------------------------

    pub(crate) async fn start_instance(&self, svc: &Arc<Svc>, run: &Run) -> Result<String, String> {
        let s = &run.service;
        let spec = InstanceSpec {
            id: new_id(&format!("{}-r{}", svc.name, run.number)),
            image: run.digest.clone(),
            image_name: run.image_name.clone(),
            env: s.env.clone(),
            port: if s.network == recast_spec::Network::Host {
                0
            } else {
                s.port
            },
            network: s.network,
            volumes: s
                .volumes
                .iter()
                .map(|v| (v.name.clone(), v.mount.clone()))
                .collect(),
            volume_scope: format!("{}/{}", svc.project, svc.name),
            memory: s.memory,
            cpus: s.cpus,
            user_namespace: s.user_namespace,
            tmpfs: s.tmpfs.clone(),
            owner: format!("service:{}/{}/{}", svc.project, svc.name, run.number),
            stop_signal: s.stop_signal.clone(),
            stop_timeout: s.stop_timeout,
        };
        let rt = self.rt.clone();
        let inst = tokio::task::spawn_blocking(move || rt.start(&spec))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting an instance of release {}: {e}", run.number))?;
        let _ = self
            .state
            .add_instance(&inst.id, &svc.project, &svc.name, run.number);
        let id = inst.id.clone();
        self.adopt(svc, inst, run.number, s.health.clone(), false, false);
        Ok(id)
    }

    /// Put a running instance under supervision.
    fn adopt(
        &self,
        svc: &Arc<Svc>,
        inst: Instance,
        release: i64,
        health: recast_spec::Health,
        active: bool,
        healthy: bool,
    ) {
        let rt = self.rt.clone();
        let conn_inst = inst.clone();
        let connector: recast_proxy::Connector =
            Arc::new(move || rt.connect(&conn_inst, Duration::from_secs(2)));
        let backend = Backend::new(
            inst.id.clone(),
            release,
            connector,
            svc.proxy.metrics(release),
        );
        lock(&svc.live).push(Live {
            inst,
            release,
            backend,
            active,
            healthy,
            exited: None,
            // An instance taken over healthy is past its start: the thresholds apply at once.
            tracker: if healthy {
                Tracker::healthy()
            } else {
                Tracker::new()
            },
            health,
            next_probe: Instant::now(),
            replacing: false,
        });
    }

    /// Wait until the instance is healthy (probing fast while it starts).
    pub(crate) async fn wait_healthy(
        &self,
        svc: &Arc<Svc>,
        id: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        let (inst, cfg) = {
            let live = lock(&svc.live);
            let l = live
                .iter()
                .find(|l| l.inst.id == id)
                .ok_or("instance vanished")?;
            (l.inst.clone(), l.health.clone())
        };
        let rt = self.rt.clone();
        tokio::task::spawn_blocking(move || health::wait_healthy(&rt, &inst, &cfg, deadline))
            .await
            .map_err(|e| e.to_string())??;
        for l in lock(&svc.live).iter_mut() {
            if l.inst.id == id {
                l.healthy = true;
                l.tracker.status = Status::Healthy;
                l.next_probe = Instant::now() + l.health.interval;
            }
        }
        Ok(())
    }

    /// Take instances out of rotation, drain them, stop and delete them.
    pub(crate) async fn retire(&self, svc: &Arc<Svc>, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        svc.set_active(&ids, false);
        let gone: Vec<Live> = {
            let mut live = lock(&svc.live);
            let (out, keep): (Vec<Live>, Vec<Live>) = std::mem::take(&mut *live)
                .into_iter()
                .partition(|l| ids.contains(&l.inst.id));
            *live = keep;
            out
        };
        let mut tasks = Vec::new();
        for l in gone {
            let rt = self.rt.clone();
            let state = self.state.clone();
            tasks.push(tokio::spawn(async move {
                l.backend.drain(DRAIN_TIMEOUT).await;
                let inst = l.inst.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    // The service's stop signal, SIGKILL after its stop_timeout.
                    rt.stop_gracefully(&inst);
                    rt.delete(&inst)
                })
                .await;
                let _ = state.remove_instance(&l.inst.id);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Start `n` instances of `run` in parallel and wait for all to be healthy by `deadline`.
    /// On failure the ones started are retired and the reason returned.
    async fn start_healthy(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        run: &Run,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<String>, String> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (ctl, svc, run) = (self.clone(), svc.clone(), run.clone());
            tasks.push(tokio::spawn(async move {
                let id = ctl.start_instance(&svc, &run).await?;
                ctl.wait_healthy(&svc, &id, deadline).await.map(|()| id)
            }));
        }
        let mut ok = Vec::new();
        let mut err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(id)) => ok.push(id),
                Ok(Err(e)) => err = err.or(Some(e)),
                Err(e) => err = err.or(Some(e.to_string())),
            }
        }
        if let Some(e) = err {
            let started: Vec<String> = svc.ids(|l| l.release == run.number && !l.active);
            self.retire(svc, started).await;
            return Err(e);
        }
        Ok(ok)
    }

    // ---- apply ----------------------------------------------------------------------------------

    /// Start applying the spec at `path`. Fails at once if the spec is invalid or another apply
    /// of the same project is running.
    pub fn start_apply(self: &Arc<Self>, path: &Path) -> Result<u64, ServerError> {
        // Location, message and hint only: the API never echoes a spec file's content.
        let project = recast_spec::load(path).map_err(|d| {
            ServerError::Invalid(format!("the spec is invalid:\n{}", d.without_source()))
        })?;
        let identity = crate::project::Identity::of(&project);
        let name = identity.name.clone();
        let id = self.next_apply.fetch_add(1, Ordering::Relaxed);
        let moved;
        {
            let mut applying = lock(&self.applying);
            if let Some(other) = applying.get(&name) {
                let started = lock(&self.applies)
                    .get(other)
                    .map(|a| a.started_ms)
                    .unwrap_or(0);
                return Err(ServerError::Conflict(format!(
                    "an apply of project \"{name}\" is already running (apply {other}, started {}s ago)\n  hint: wait for it, or follow it with `recast status`",
                    now_ms().saturating_sub(started) / 1000
                )));
            }
            // Under the lock, so two directories cannot claim one name at once.
            let ownership = crate::project::claim(&self.state, &identity)?;
            applying.insert(name.clone(), id);
            moved = match ownership {
                crate::project::Ownership::Moved { from } => Some(format!(
                    "project {name} moved from {from} to {}",
                    identity.dir.display()
                )),
                _ => None,
            };
        }
        lock(&self.applies).insert(
            id,
            ApplyStatus {
                id,
                project: name.clone(),
                state: ApplyState::Running,
                started_ms: now_ms(),
                log: Vec::new(),
                services: Vec::new(),
                error: None,
            },
        );
        if let Some(m) = moved {
            self.log(id, m);
        }
        let ctl = self.clone();
        tokio::spawn(async move {
            let result = ctl.apply(id, project, &name).await;
            let mut applies = lock(&ctl.applies);
            if let Some(a) = applies.get_mut(&id) {
                match result {
                    Ok(()) => {
                        a.state = if a.services.iter().all(|s| s.outcome.is_ok()) {
                            ApplyState::Succeeded
                        } else {
                            ApplyState::Failed
                        }
                    }
                    Err(e) => {
                        a.state = ApplyState::Failed;
                        a.error = Some(e);
                    }
                }
            }
            lock(&ctl.applying).remove(&name);
        });
        Ok(id)
    }

    pub fn apply_status(&self, id: u64) -> Option<ApplyStatus> {
        lock(&self.applies).get(&id).cloned()
    }

    fn log(&self, apply: u64, msg: String) {
        if let Some(a) = lock(&self.applies).get_mut(&apply) {
            a.log.push(LogLine {
                at_ms: now_ms(),
                message: msg,
            });
        }
    }

    fn outcome(&self, apply: u64, o: ServiceOutcome) {
        if let Some(a) = lock(&self.applies).get_mut(&apply) {
            a.services.push(o);
        }
    }

    async fn apply(
        self: &Arc<Self>,
        apply: u64,
        project: Project,
        name: &str,
    ) -> Result<(), String> {
        lock(&self.hooks).insert(
            name.to_string(),
            project.webhooks.values().cloned().collect(),
        );
        lock(&self.guards).insert(name.to_string(), project.guard.clone());
        self.log(apply, format!("building images of project {name}"));
        let (store, cache, p2, rt) = (
            self.store.clone(),
            self.data_dir.cache().root().to_path_buf(),
            project.clone(),
            self.rt.clone(),
        );
        let built = tokio::task::spawn_blocking(move || {
            build::build(
                &store,
                Some(&cache),
                &p2,
                &[],
                // The base tags as recast.lock pins them (the CLI completes it before an
                // apply); a tag it lacks fails the build, never pulled unpinned.
                &Options {
                    pins: recast_image::lock::Lock::read(&p2)?.bases,
                    ..Options::from_env()?
                },
                Some(&*rt),
                &mut |_| {},
            )
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("building images: {e}"))?;
        let digests: BTreeMap<String, String> = built
            .iter()
            .map(|b| (b.image.clone(), b.digest.to_string()))
            .collect();
        for b in &built {
            self.log(
                apply,
                format!(
                    "image {} {} ({})",
                    b.image,
                    b.digest,
                    if b.cached { "unchanged" } else { "built" }
                ),
            );
        }
        let recorded = plan::Recorded::gather(&self.state, name).map_err(|e| e.to_string())?;
        let plan = plan::plan(&project, name, &digests, &recorded);
        // Test every image a changing service will run.
        let mut tested = Vec::new();
        for sp in plan
            .services
            .iter()
            .filter(|s| matches!(s.action, Action::Create | Action::Update))
        {
            let img = &project.services[&sp.service].image;
            if tested.contains(img) {
                continue;
            }
            tested.push(img.clone());
            let image = project.images[img].clone();
            if image.test.is_none() {
                continue;
            }
            let Some(b) = built.iter().find(|b| &b.image == img) else {
                continue;
            };
            self.log(apply, format!("testing image {img}"));
            let (rt, digest) = (self.rt.clone(), b.digest.clone());
            let tmpfs = project.tmpfs_of_image(img);
            let outcome = tokio::task::spawn_blocking(move || {
                recast_runtime::imagetest::test_image(&rt, &image, &digest, &tmpfs)
            })
            .await
            .map_err(|e| e.to_string())?;
            if !outcome.passed {
                return Err(format!(
                    "image {img} failed its test: {}",
                    outcome.reason.unwrap_or_default()
                ));
            }
            self.log(
                apply,
                format!("image {img} passed {} check(s)", outcome.checks.len()),
            );
        }
        // Routes first, so that traffic flows as soon as instances are healthy.
        self.sync_routes(name, &project).await?;
        let mut tasks = Vec::new();
        for sp in plan.services {
            let ctl = self.clone();
            let name = name.to_string();
            let svc_model = project.services.get(&sp.service).cloned();
            let digest = sp.digest.clone().unwrap_or_default();
            tasks.push(tokio::spawn(async move {
                let svc = ctl.svc(&name, &sp.service);
                let outcome = match (sp.action, svc_model) {
                    (Action::Unchanged, _) => ServiceOutcome {
                        service: sp.service.clone(),
                        release: sp.current_release,
                        outcome: ServiceChange::Unchanged,
                        reason: None,
                    },
                    (Action::Remove, _) => {
                        ctl.log(apply, format!("removing service {}", sp.service));
                        match ctl.destroy_service(&svc, false).await {
                            Ok(()) => ServiceOutcome {
                                service: sp.service.clone(),
                                release: None,
                                outcome: ServiceChange::Removed,
                                reason: None,
                            },
                            Err(e) => ServiceOutcome {
                                service: sp.service.clone(),
                                release: sp.current_release,
                                outcome: ServiceChange::Failed,
                                reason: Some(format!("removing service {}: {e}", sp.service)),
                            },
                        }
                    }
                    (_, Some(model)) => ctl.deploy(apply, &svc, &model, &digest).await,
                    (_, None) => ServiceOutcome {
                        service: sp.service.clone(),
                        release: None,
                        outcome: ServiceChange::Failed,
                        reason: Some("not in the spec".into()),
                    },
                };
                ctl.outcome(apply, outcome);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    }

    /// Make the listening routes match the project's spec.
    async fn sync_routes(&self, project: &str, spec: &Project) -> Result<(), String> {
        let mut routes = self.routes.lock().await;
        let rows: Vec<RouteRow> = spec
            .routes
            .values()
            .map(|r| RouteRow {
                project: project.into(),
                name: r.name.clone(),
                listen: r.listen.to_string(),
                service: r.service.clone(),
                timeout_ms: r.timeout.as_millis().max(1) as u64,
            })
            .collect();
        // Keep other projects' routes and this project's unchanged ones (a new timeout applies
        // in place); drop the rest.
        routes.retain(|k, (row, route)| {
            if row.project != project {
                return true;
            }
            let Some(r) = rows.iter().find(|r| &key(project, &r.name) == k) else {
                return false;
            };
            let same = RouteRow {
                timeout_ms: r.timeout_ms,
                ..row.clone()
            };
            if &same != r {
                return false;
            }
            route.set_timeout(Duration::from_millis(r.timeout_ms.max(1)));
            *row = same;
            true
        });
        for row in &rows {
            let k = key(project, &row.name);
            if routes.contains_key(&k) {
                continue;
            }
            let addr: SocketAddr = row
                .listen
                .parse()
                .map_err(|_| format!("route {}: bad address {}", row.name, row.listen))?;
            let svc = self.svc(project, &row.service);
            let route = bind_route(row, addr, &svc)
                .await
                .map_err(|e| format!("route {}: cannot listen on {addr}: {e}", row.name))?;
            routes.insert(k, (row.clone(), route));
        }
        self.state
            .set_routes(project, &rows)
            .map_err(|e| e.to_string())
    }

    /// Roll a service out to a new release of `model` with image `digest`.
    async fn deploy(
        self: &Arc<Self>,
        apply: u64,
        svc: &Arc<Svc>,
        model: &Service,
        digest: &str,
    ) -> ServiceOutcome {
        let fail = |reason: String| ServiceOutcome {
            service: svc.name.clone(),
            release: None,
            outcome: ServiceChange::Failed,
            reason: Some(reason),
        };
        let record = ReleaseRecord::from_spec(model, digest, &model.image);
        let json = record.to_json();
        let rel = match self.state.new_release(&NewRelease {
            project: &svc.project,
            service: &svc.name,
            digest,
            image: &model.image,
            spec: &json,
            spec_hash: &crate::record::canonical_hash(model, digest, &model.image),
            by: "apply",
        }) {
            Ok(r) => r,
            Err(e) => return fail(e.to_string()),
        };
        let run = match Run::from_row(&rel) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let old = self
            .state
            .current(&svc.project, &svc.name)
            .ok()
            .flatten()
            .and_then(|r| Run::from_row(&r).ok());
        self.log(
            apply,
            format!(
                "{}: rolling out release {} ({})",
                svc.name,
                run.number,
                model.rollout.strategy.name()
            ),
        );
        let _busy = svc.busy.lock().await;
        match self.rollout(svc, &run, old.as_ref(), Some(apply)).await {
            Ok(()) => {
                self.log(
                    apply,
                    format!("{}: release {} is live", svc.name, run.number),
                );
                ServiceOutcome {
                    service: svc.name.clone(),
                    release: Some(run.number),
                    outcome: ServiceChange::Succeeded,
                    reason: None,
                }
            }
            Err(Failed { outcome, reason }) => {
                self.log(
                    apply,
                    format!("{}: release {} {outcome}: {reason}", svc.name, run.number),
                );
                ServiceOutcome {
                    service: svc.name.clone(),
                    release: Some(run.number),
                    outcome,
                    reason: Some(reason),
                }
            }
        }
    }

    /// Run a rollout to its end through the rollout module, recording it as it goes.
    async fn rollout(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: Option<&Run>,
        apply: Option<u64>,
    ) -> Result<(), Failed> {
        let strategy = new.service.rollout.strategy.name();
        let failed = |reason: String| Failed {
            outcome: ServiceChange::Failed,
            reason,
        };
        let rid = self
            .state
            .start_rollout(
                &svc.project,
                &svc.name,
                old.map(|o| o.number),
                new.number,
                strategy,
            )
            .map_err(|e| failed(format!("recording the rollout: {e}")))?;
        lock(&svc.verdicts).clear();
        let what = format!("release {} ({strategy})", new.number);
        self.hook(svc, "rollout.started", new.number, &what);
        let started = self
            .state
            .set_outcome(
                &svc.project,
                &svc.name,
                new.number,
                ReleaseOutcome::RollingOut,
                None,
            )
            .map_err(|e| format!("recording the rollout: {e}"))
            .and_then(|()| self.try_event(svc, "rollout.started", &what));
        if let Err(e) = started {
            // Nothing has started yet: the rollout ends here, recorded as well as it can be.
            self.end_rollout(svc, rid, new.number, RolloutState::Failed, &e);
            return Err(failed(e));
        }
        let fleet = fleet::LocalFleet {
            ctl: self.clone(),
            svc: svc.clone(),
        };
        let record = fleet::Record {
            ctl: self,
            svc,
            rollout: rid,
            release: new.number,
            apply,
        };
        let end = Rollout {
            fleet: &fleet,
            journal: &record,
            controls: &svc.controls,
            new,
            old,
        }
        .run()
        .await;
        *lock(&svc.rollout) = None;
        match end {
            End::Succeeded => {
                let live = self
                    .state
                    .set_current(&svc.project, &svc.name, Some(new.number))
                    .map_err(|e| format!("recording release {} as live: {e}", new.number));
                if let Err(e) = live {
                    self.end_rollout(svc, rid, new.number, RolloutState::Failed, &e);
                    return Err(failed(e));
                }
                let msg = format!("release {} is live", new.number);
                self.end_rollout(svc, rid, new.number, RolloutState::Succeeded, &msg);
                self.hook(svc, "rollout.finished", new.number, &msg);
                Ok(())
            }
            End::Stopped { reason } => {
                self.end_rollout(svc, rid, new.number, RolloutState::Failed, &reason);
                Err(failed(format!(
                    "{reason} (auto_rollback is off: left as it is; `recast rollback {}` goes back)",
                    svc.name
                )))
            }
            End::RolledBack { reason } => {
                self.end_rollout(svc, rid, new.number, RolloutState::RolledBack, &reason);
                self.hook(svc, "rollout.rolled_back", new.number, &reason);
                Err(Failed {
                    outcome: ServiceChange::RolledBack,
                    reason,
                })
            }
        }
    }

    /// Record how a rollout ended: the rollout row, the release's outcome and an event. These
    /// writes come after the fleet already changed, so one that fails is reported on stderr and
    /// in the event stream rather than undoing anything.
    fn end_rollout(&self, svc: &Svc, rid: i64, release: i64, state: RolloutState, detail: &str) {
        let (outcome, kind, reason) = match state {
            RolloutState::Succeeded => (ReleaseOutcome::Succeeded, "rollout.finished", None),
            RolloutState::RolledBack => (
                ReleaseOutcome::RolledBack,
                "rollout.rolled_back",
                Some(detail),
            ),
            RolloutState::Failed | RolloutState::Running => {
                (ReleaseOutcome::Failed, "rollout.failed", Some(detail))
            }
        };
        let recorded = self
            .state
            .set_outcome(&svc.project, &svc.name, release, outcome, reason)
            .and_then(|()| self.state.finish_rollout(rid, state, detail))
            .map_err(|e| e.to_string())
            .and_then(|()| self.try_event(svc, kind, &format!("release {release}: {detail}")));
        if let Err(e) = recorded {
            eprintln!(
                "recast: recording the end of the rollout of {}/{} release {release} failed: {e}",
                svc.project, svc.name
            );
        }
    }

    /// Record an event; a failed write is an error the caller decides about.
    pub(crate) fn try_event(&self, svc: &Svc, kind: &str, msg: &str) -> Result<(), String> {
        self.state
            .event(&svc.project, &svc.name, kind, msg)
            .map(drop)
            .map_err(|e| format!("recording event {kind}: {e}"))
    }

    /// Fire-and-forget webhooks for `event` (never waited on, so they cannot block a rollback).
    fn hook(&self, svc: &Svc, event: &str, release: i64, message: &str) {
        let hooks: Vec<recast_spec::Webhook> = lock(&self.hooks)
            .get(&svc.project)
            .cloned()
            .unwrap_or_default();
        for h in hooks
            .into_iter()
            .filter(|h| h.events.iter().any(|e| e == event))
        {
            let body = hook_body(event, svc, release, message);
            tokio::task::spawn_blocking(move || {
                let _ = call_hook(&h, &body);
            });
        }
    }

    // ---- commands -------------------------------------------------------------------------------

    /// Ask the running rollout of `svc` to move on; an error when there is none.
    pub fn promote(&self, svc: &Svc) -> Result<(), ServerError> {
        Self::rolling_out(svc)?;
        svc.controls.promote();
        Ok(())
    }

    /// Roll the running rollout back at once.
    pub fn abort(&self, svc: &Svc) -> Result<(), ServerError> {
        Self::rolling_out(svc)?;
        svc.controls.abort();
        Ok(())
    }

    /// Freeze (or continue) the running rollout where it is.
    pub fn pause(&self, svc: &Svc, paused: bool) -> Result<(), ServerError> {
        Self::rolling_out(svc)?;
        svc.controls.pause(paused);
        self.event(
            svc,
            if paused {
                "rollout.paused"
            } else {
                "rollout.resumed"
            },
            "by request",
        );
        Ok(())
    }

    fn rolling_out(svc: &Svc) -> Result<(), ServerError> {
        if lock(&svc.rollout).is_none() {
            return Err(ServerError::Conflict(format!(
                "service {} has no rollout in progress",
                svc.name
            )));
        }
        Ok(())
    }

    /// Back to the previous good release (or `to`). A warm release is a routing switch;
    /// otherwise the release is started again from its recorded digest.
    pub async fn rollback(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        to: Option<i64>,
        restore_volumes: bool,
    ) -> Result<RollbackResult, String> {
        let t0 = Instant::now();
        let _busy = svc.busy.lock().await;
        let (cur, target) = self.rollback_target(svc, to)?;
        let run = Run::from_row(&target)?;
        let cur_run = Run::from_row(&cur)?;
        if restore_volumes || run.service.stops_first() || cur_run.service.stops_first() {
            // Never two releases at once: stop, (restore,) start.
            let plan = restore_volumes
                .then(|| self.restore_plan(svc, Some(target.number)))
                .transpose()?;
            return self
                .rollback_stopping_first(svc, &cur, &run, plan, t0)
                .await;
        }
        let fleet = fleet::LocalFleet {
            ctl: self.clone(),
            svc: svc.clone(),
        };
        let was_warm = rollout::rollback::switch_back(&fleet, &run, cur.number).await?;
        let switched_ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.record_rollback(svc, cur.number, run.number, "");
        Ok(RollbackResult {
            service: svc.name.clone(),
            from: cur.number,
            to: run.number,
            warm: was_warm,
            switched_ms,
            restored: Vec::new(),
        })
    }

    /// Retire every instance of a service and forget its current release.
    pub async fn destroy_service(&self, svc: &Arc<Svc>, volumes: bool) -> Result<(), ServerError> {
        let _busy = svc.busy.lock().await;
        let all = svc.ids(|_| true);
        self.retire(svc, all).await;
        self.state.set_current(&svc.project, &svc.name, None)?;
        self.event(svc, "service.destroyed", "every instance retired");
        if volumes {
            self.drop_snapshots(svc).await?;
            let dir = self
                .data_dir
                .service_volumes(&svc.project, &svc.name)
                .map_err(|e| ServerError::Invalid(e.to_string()))?;
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ServerError::Internal(format!(
                        "removing the volumes of {} ({}): {e}",
                        svc.name,
                        dir.display()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Destroy services (all of a project when `services` is empty) and their routes.
    pub async fn destroy(
        &self,
        project: Option<&str>,
        services: &[String],
        volumes: bool,
    ) -> Result<Vec<String>, ServerError> {
        let targets: Vec<Arc<Svc>> = self
            .all_svcs()
            .into_iter()
            .filter(|s| {
                project.is_none_or(|p| s.project == p)
                    && (services.is_empty() || services.contains(&s.name))
            })
            .collect();
        let mut removed = Vec::new();
        for s in &targets {
            self.destroy_service(s, volumes).await?;
            removed.push(s.name.clone());
        }
        let mut routes = self.routes.lock().await;
        let projects: Vec<String> = targets.iter().map(|s| s.project.clone()).collect();
        routes.retain(|_, (row, _)| {
            !(projects.contains(&row.project)
                && (services.is_empty() || services.contains(&row.service)))
        });
        for p in projects {
            let rows: Vec<RouteRow> = routes
                .values()
                .filter(|(r, _)| r.project == p)
                .map(|(r, _)| r.clone())
                .collect();
            self.state.set_routes(&p, &rows)?;
        }
        Ok(removed)
    }

    pub async fn route_rows(&self) -> Vec<RouteRow> {
        self.routes
            .lock()
            .await
            .values()
            .map(|(r, _)| r.clone())
            .collect()
    }

    // ---- supervision and recovery ---------------------------------------------------------------

    /// Probe instances when due; take unhealthy or exited ones out of rotation (and back in
    /// when they recover). Runs forever.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Every probe due in this tick, of every service, in one blocking task: one thread
            // hand-off per tick rather than one per probe (an idle fleet costs little).
            let mut owners = Vec::new();
            let mut due: Vec<(Instance, recast_spec::Health)> = Vec::new();
            for svc in self.all_svcs() {
                let live = lock(&svc.live);
                // Instances still starting are watched by the rollout that started them.
                for l in live.iter().filter(|l| {
                    l.exited.is_none()
                        && l.next_probe <= Instant::now()
                        && (l.healthy || l.tracker.status != Status::Starting)
                }) {
                    owners.push((svc.clone(), l.inst.id.clone()));
                    due.push((l.inst.clone(), l.health.clone()));
                }
            }
            if due.is_empty() {
                continue;
            }
            // Results are applied as they come, so a hanging probe never delays the verdicts
            // on the others.
            let rt = self.rt.clone();
            let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
            let probing = tokio::task::spawn_blocking(move || {
                for (i, (inst, cfg)) in due.into_iter().enumerate() {
                    let st = rt.state(&inst);
                    let probe = if st == IState::Running {
                        health::probe(&rt, &inst, &cfg.check, cfg.timeout)
                    } else {
                        Err("exited".into())
                    };
                    if tx.send((i, st, probe)).is_err() {
                        break;
                    }
                }
            });
            while let Some((i, st, probe)) = results.recv().await {
                let (svc, id) = &owners[i];
                let mut changed = None;
                {
                    let mut live = lock(&svc.live);
                    let Some(l) = live.iter_mut().find(|l| l.inst.id == *id) else {
                        continue;
                    };
                    l.next_probe = Instant::now() + l.health.interval;
                    if let IState::Exited { status } = st {
                        l.exited = Some(status);
                        l.healthy = false;
                        changed = Some(format!(
                            "instance {id} exited with status {}",
                            status.map_or_else(|| "unknown".into(), |s| s.to_string())
                        ));
                    } else if let Some(ev) = l.tracker.record(&probe, &l.health.clone()) {
                        l.healthy = ev.status == Status::Healthy;
                        changed = Some(
                            format!("instance {id} is {:?}: {}", ev.status, ev.detail)
                                .to_lowercase(),
                        );
                    }
                }
                if let Some(msg) = changed {
                    self.event(svc, "instance.health", &msg);
                    svc.publish();
                }
            }
            let _ = probing.await;
        }
    }

    /// Take over what an earlier server left: running instances of live releases return to
    /// rotation; interrupted rollouts are rolled back; missing instances are started again.
    pub async fn recover(self: &Arc<Self>) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        let rt = self.rt.clone();
        // The server's instances, unreadable records, and throwaway ones whose process is gone;
        // never a live `recast run`/`recast test` instance.
        let found = tokio::task::spawn_blocking(move || {
            rt.recover(|i| {
                !matches!(
                    i.owner(),
                    recast_runtime::Owner::Run | recast_runtime::Owner::Test
                ) || i.abandoned()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        for (id, why) in &found.cleaned {
            notes.push(format!("cleaned up instance {id}: {why}"));
        }
        let interrupted = self
            .state
            .unfinished_rollouts()
            .map_err(|e| e.to_string())?;
        for inst in found.running {
            let owner = inst.owner.strip_prefix("service:").map(str::to_string);
            let parsed = owner.as_deref().and_then(|o| {
                let mut it = o.rsplitn(3, '/');
                let n: i64 = it.next()?.parse().ok()?;
                let s = it.next()?.to_string();
                let p = it.next()?.to_string();
                Some((p, s, n))
            });
            let Some((p, s, n)) = parsed else {
                // Not a service instance: a throwaway one whose command is gone goes.
                if inst.abandoned() {
                    let rt = self.rt.clone();
                    let _ = tokio::task::spawn_blocking(move || rt.delete(&inst)).await;
                }
                continue;
            };
            let current = self.state.current(&p, &s).ok().flatten();
            let health = current
                .as_ref()
                .and_then(|r| Run::from_row(r).ok())
                .map(|r| r.service.health);
            match (current, health) {
                (Some(cur), Some(h)) if cur.number == n => {
                    let svc = self.svc(&p, &s);
                    self.adopt(&svc, inst, n, h, true, true);
                }
                _ => {
                    // An instance of a release that is not live (an interrupted rollout's, or a
                    // warm blue one): it goes.
                    let rt = self.rt.clone();
                    let id = inst.id.clone();
                    let _ = tokio::task::spawn_blocking(move || rt.delete(&inst)).await;
                    let _ = self.state.remove_instance(&id);
                    notes.push(format!(
                        "retired instance {id} of {p}/{s} release {n} (not live)"
                    ));
                }
            }
        }
        for r in interrupted {
            let _ = self.state.finish_rollout(
                r.id,
                RolloutState::RolledBack,
                "interrupted: the server stopped during the rollout",
            );
            let _ = self.state.set_outcome(
                &r.project,
                &r.service,
                r.to_release,
                ReleaseOutcome::RolledBack,
                Some("interrupted: the server stopped during the rollout"),
            );
            let _ = self.state.event(
                &r.project,
                &r.service,
                "rollout.rolled_back",
                &format!(
                    "release {} rolled back after a server restart",
                    r.to_release
                ),
            );
            notes.push(format!(
                "rolled back the interrupted rollout of {}/{} to release {}",
                r.project, r.service, r.to_release
            ));
        }
        // Every live release at full strength.
        for (p, s) in self.state.all_services().map_err(|e| e.to_string())? {
            let Some(cur) = self.state.current(&p, &s).map_err(|e| e.to_string())? else {
                continue;
            };
            let run = Run::from_row(&cur)?;
            let svc = self.svc(&p, &s);
            svc.publish();
            let have = svc.count(run.number, |l| l.exited.is_none());
            let want = run.service.instances as usize;
            if have < want {
                let deadline = Instant::now() + run.service.rollout.progress_deadline;
                match self.start_healthy(&svc, &run, want - have, deadline).await {
                    Ok(ids) => {
                        svc.set_active(&ids, true);
                        notes.push(format!(
                            "started {} instance(s) of {p}/{s} release {}",
                            ids.len(),
                            run.number
                        ));
                    }
                    Err(e) => notes.push(format!("could not restore {p}/{s}: {e}")),
                }
            }
        }
        // Routes as they were.
        let rows = self.state.routes().map_err(|e| e.to_string())?;
        let mut routes = self.routes.lock().await;
        for row in rows {
            let Ok(addr) = row.listen.parse::<SocketAddr>() else {
                continue;
            };
            let svc = self.svc(&row.project, &row.service);
            match bind_route(&row, addr, &svc).await {
                Ok(route) => {
                    routes.insert(key(&row.project, &row.name), (row, route));
                }
                Err(e) => notes.push(format!("route {} cannot listen on {addr}: {e}", row.name)),
            }
        }
        Ok(notes)
    }
}

/// Listen for a route with its upstream timeout and the proxy's connection limits.
async fn bind_route(row: &RouteRow, addr: SocketAddr, svc: &Svc) -> std::io::Result<Route> {
    let limits = recast_proxy::conn::Limits::route(format!("route {}", row.name));
    let timeout = Duration::from_millis(row.timeout_ms.max(1));
    Route::bind_with(addr, svc.proxy.clone(), timeout, limits).await
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
