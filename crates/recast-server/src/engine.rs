//! The deploy engine: releases, rollouts (rolling, blue/green), rollback, health supervision and
//! recovery after a restart. Every change is a new instance; nothing running is modified.
//!
//! Traffic rule: an instance is in its service's routing table only when it is *active* (chosen
//! by the engine) and *healthy* (per its health checks). Removing an instance from the table
//! always comes before draining it, and draining before stopping it.

use crate::analysis::{Analyzer, Verdict};
use crate::plan::{self, Action, ReleaseSpec};
use recast_image::build::{self, Options};
use recast_image::{Digest, Store};
use recast_proxy::{Backend, Group, Route, Table};
use recast_runtime::health::{self, Status, Tracker};
use recast_runtime::{Instance, InstanceSpec, Runtime, State as IState, new_id};
use recast_spec::{Project, Service, Strategy};
use recast_state::{NewRelease, RouteRow, State};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod stateful;
pub use stateful::{KEEP_SNAPSHOTS, RestorePlan, VolumeInfo};

/// How long a removed instance may take to finish its requests before it is stopped anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Lock, recovering from a poisoned mutex (the data stays usable: every update is whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
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
        let spec: ReleaseSpec = serde_json::from_str(&r.spec)
            .map_err(|e| format!("release {} of {} is unreadable: {e}", r.number, r.service))?;
        let service: Service = serde_json::from_value(spec.service)
            .map_err(|e| format!("release {} of {} is unreadable: {e}", r.number, r.service))?;
        let digest = Digest::parse(&r.digest).ok_or_else(|| {
            format!(
                "release {} of {} has an invalid digest",
                r.number, r.service
            )
        })?;
        Ok(Run {
            number: r.number,
            digest,
            image_name: format!("{}:latest", spec.image),
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
    promote: AtomicBool,
    abort: AtomicBool,
    pub paused: AtomicBool,
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
    outcome: &'static str,
    reason: String,
}

/// Progress of one apply, for `recast apply` to follow.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyStatus {
    pub id: u64,
    pub project: String,
    /// running | succeeded | failed
    pub state: String,
    pub started_ms: u64,
    pub log: Vec<LogLine>,
    pub services: Vec<ServiceOutcome>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceOutcome {
    pub service: String,
    pub release: Option<i64>,
    /// succeeded | rolled_back | unchanged | removed | failed
    pub outcome: String,
    pub reason: Option<String>,
}

/// The control plane of one data directory.
pub struct Ctl {
    pub data_dir: PathBuf,
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
            data_dir: data_dir.to_path_buf(),
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
                    promote: AtomicBool::new(false),
                    abort: AtomicBool::new(false),
                    paused: AtomicBool::new(false),
                    rollout: Mutex::new(None),
                    weights: Mutex::new(None),
                    verdicts: Mutex::new(Vec::new()),
                    guard: Mutex::new(Default::default()),
                })
            })
            .clone()
    }

    pub fn find_svc(&self, project: Option<&str>, service: &str) -> Result<Arc<Svc>, String> {
        let svcs = lock(&self.svcs);
        let found: Vec<&Arc<Svc>> = svcs
            .values()
            .filter(|s| s.name == service && project.is_none_or(|p| s.project == p))
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(format!("no service \"{service}\" is deployed")),
            _ => Err(format!(
                "service \"{service}\" exists in several projects; name the project"
            )),
        }
    }

    pub fn all_svcs(&self) -> Vec<Arc<Svc>> {
        let mut v: Vec<Arc<Svc>> = lock(&self.svcs).values().cloned().collect();
        v.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
        v
    }

    /// A `recast rollback` from release `from` to `to` is done: `to` is current, `from` is
    /// marked rolled back, and the event says so (`note` adds to it).
    pub(crate) fn record_rollback(&self, svc: &Svc, from: i64, to: i64, note: &str) {
        let _ = self.state.set_current(&svc.project, &svc.name, Some(to));
        let _ = self.state.set_outcome(
            &svc.project,
            &svc.name,
            from,
            "rolled_back",
            Some("recast rollback"),
        );
        self.event(
            svc,
            "rollout.rolled_back",
            &format!("rollback from release {from} to {to}{note}"),
        );
    }

    pub(crate) fn event(&self, svc: &Svc, kind: &str, msg: &str) {
        let _ = self.state.event(&svc.project, &svc.name, kind, msg);
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
    pub fn start_apply(self: &Arc<Self>, path: &Path) -> Result<u64, (u16, String)> {
        // Location, message and hint only: the API never echoes a spec file's content.
        let project = recast_spec::load(path)
            .map_err(|d| (400, format!("the spec is invalid:\n{}", d.without_source())))?;
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
                return Err((
                    409,
                    format!(
                        "an apply of project \"{name}\" is already running (apply {other}, started {}s ago)\n  hint: wait for it, or follow it with `recast status`",
                        now_ms().saturating_sub(started) / 1000
                    ),
                ));
            }
            // Under the lock, so two directories cannot claim one name at once.
            let ownership = crate::project::claim(&self.state, &identity).map_err(|e| (409, e))?;
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
                state: "running".into(),
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
                        a.state = if a.services.iter().all(|s| {
                            matches!(s.outcome.as_str(), "succeeded" | "unchanged" | "removed")
                        }) {
                            "succeeded".into()
                        } else {
                            "failed".into()
                        }
                    }
                    Err(e) => {
                        a.state = "failed".into();
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
            self.data_dir.join("cache"),
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
        let plan = plan::plan(&project, name, &digests, &self.state).map_err(|e| e.to_string())?;
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
                        outcome: "unchanged".into(),
                        reason: None,
                    },
                    (Action::Remove, _) => {
                        ctl.log(apply, format!("removing service {}", sp.service));
                        ctl.destroy_service(&svc, false).await;
                        ServiceOutcome {
                            service: sp.service.clone(),
                            release: None,
                            outcome: "removed".into(),
                            reason: None,
                        }
                    }
                    (_, Some(model)) => ctl.deploy(apply, &svc, &model, &digest).await,
                    (_, None) => ServiceOutcome {
                        service: sp.service.clone(),
                        release: None,
                        outcome: "failed".into(),
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
            outcome: "failed".into(),
            reason: Some(reason),
        };
        let spec = ReleaseSpec::new(model, digest);
        let json = serde_json::to_string(&spec).unwrap_or_default();
        let rel = match self.state.new_release(&NewRelease {
            project: &svc.project,
            service: &svc.name,
            digest,
            image: &model.image,
            spec: &json,
            spec_hash: &spec.hash(),
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
                    outcome: "succeeded".into(),
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
                    outcome: outcome.into(),
                    reason: Some(reason),
                }
            }
        }
    }

    /// Run a rollout to completion or roll it back; records everything.
    async fn rollout(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: Option<&Run>,
        apply: Option<u64>,
    ) -> Result<(), Failed> {
        let strategy = new.service.rollout.strategy.name();
        let rid = self
            .state
            .start_rollout(
                &svc.project,
                &svc.name,
                old.map(|o| o.number),
                new.number,
                strategy,
            )
            .map_err(|e| Failed {
                outcome: "failed",
                reason: e.to_string(),
            })?;
        svc.promote.store(false, Ordering::SeqCst);
        svc.abort.store(false, Ordering::SeqCst);
        svc.paused.store(false, Ordering::SeqCst);
        lock(&svc.verdicts).clear();
        self.hook(
            svc,
            "rollout.started",
            new,
            &format!("release {} ({strategy})", new.number),
        );
        let _ = self
            .state
            .set_outcome(&svc.project, &svc.name, new.number, "rolling_out", None);
        self.event(
            svc,
            "rollout.started",
            &format!("release {} ({strategy})", new.number),
        );
        let step = |n: i64, detail: String| {
            let _ = self.state.rollout_step(rid, n, &detail);
            *lock(&svc.rollout) = Some(detail.clone());
            if let Some(a) = apply {
                self.log(a, format!("{}: {detail}", svc.name));
            }
        };
        let result = match (old, &new.service.rollout.strategy) {
            (None, _) => self.first(svc, new, &step).await,
            (
                Some(o),
                Strategy::BlueGreen {
                    preview_listen,
                    auto_promote_after,
                    scale_down_delay,
                },
            ) => {
                self.blue_green(
                    svc,
                    new,
                    o,
                    *preview_listen,
                    *auto_promote_after,
                    *scale_down_delay,
                    &step,
                )
                .await
            }
            (Some(o), Strategy::Canary { steps, sticky }) => {
                self.canary(svc, new, o, steps, *sticky, &step).await
            }
            (Some(o), Strategy::Rolling { .. }) => self.rolling(svc, new, o, &step).await,
            (Some(o), Strategy::Recreate) => self.recreate(svc, new, o, &step).await,
        };
        svc.proxy.set_sticky(false);
        match result {
            Ok(()) => {
                *lock(&svc.rollout) = None;
                *lock(&svc.weights) = None;
                let _ = self
                    .state
                    .set_current(&svc.project, &svc.name, Some(new.number));
                let _ =
                    self.state
                        .set_outcome(&svc.project, &svc.name, new.number, "succeeded", None);
                let _ = self.state.finish_rollout(rid, "succeeded", "done");
                self.event(
                    svc,
                    "rollout.finished",
                    &format!("release {} is live", new.number),
                );
                self.hook(
                    svc,
                    "rollout.finished",
                    new,
                    &format!("release {} is live", new.number),
                );
                Ok(())
            }
            Err(reason) if !new.service.rollout.auto_rollback && old.is_some() => {
                // auto_rollback = false: stop where it failed; healthy new instances keep serving
                // beside the old ones until someone runs `recast rollback` or applies again.
                let broken =
                    svc.ids(|l| l.release == new.number && (l.exited.is_some() || !l.healthy));
                self.retire(svc, broken).await;
                step(-1, format!("stopped (auto_rollback is off): {reason}"));
                let _ = self.state.set_outcome(
                    &svc.project,
                    &svc.name,
                    new.number,
                    "failed",
                    Some(&reason),
                );
                let _ = self.state.finish_rollout(rid, "failed", &reason);
                self.event(
                    svc,
                    "rollout.failed",
                    &format!("release {}: {reason} (auto_rollback is off)", new.number),
                );
                *lock(&svc.rollout) = None;
                Err(Failed {
                    outcome: "failed",
                    reason: format!(
                        "{reason} (auto_rollback is off: left as it is; `recast rollback {}` goes back)",
                        svc.name
                    ),
                })
            }
            Err(reason) => {
                step(-1, format!("rolling back: {reason}"));
                let stop_first =
                    new.service.stops_first() || old.is_some_and(|o| o.service.stops_first());
                let took = self.restore(svc, old, new.number, stop_first).await;
                *lock(&svc.weights) = None;
                svc.publish();
                if let Some(o) = old {
                    step(
                        -1,
                        format!(
                            "all traffic back on release {} {:.2} ms after the failure",
                            o.number,
                            took.as_secs_f64() * 1000.0
                        ),
                    );
                }
                let _ = self.state.set_outcome(
                    &svc.project,
                    &svc.name,
                    new.number,
                    "rolled_back",
                    Some(&reason),
                );
                let _ = self.state.finish_rollout(rid, "rolled_back", &reason);
                self.event(
                    svc,
                    "rollout.rolled_back",
                    &format!("release {}: {reason}", new.number),
                );
                self.hook(svc, "rollout.rolled_back", new, &reason);
                *lock(&svc.rollout) = None;
                Err(Failed {
                    outcome: "rolled_back",
                    reason,
                })
            }
        }
    }

    /// The first release of a service: start every instance, then route to them.
    async fn first(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        step: &(dyn Fn(i64, String) + Sync),
    ) -> Result<(), String> {
        let n = new.service.instances as usize;
        step(
            1,
            format!("starting {n} instance(s) of release {}", new.number),
        );
        let deadline = Instant::now() + new.service.rollout.progress_deadline;
        let ids = self.start_healthy(svc, new, n, deadline).await?;
        svc.set_active(&ids, true);
        step(
            2,
            format!(
                "{n} instance(s) of release {} healthy and in rotation",
                new.number
            ),
        );
        Ok(())
    }

    fn check_new(&self, svc: &Svc, release: i64) -> Result<(), String> {
        let live = lock(&svc.live);
        for l in live.iter().filter(|l| l.release == release) {
            if let Some(status) = l.exited {
                return Err(format!(
                    "instance {} exited with status {}",
                    l.inst.id,
                    status.map_or_else(|| "unknown".into(), |s| s.to_string())
                ));
            }
            if l.active && !l.healthy {
                return Err(format!(
                    "instance {} became unhealthy: {}",
                    l.inst.id,
                    l.tracker
                        .events
                        .last()
                        .map(|e| e.detail.clone())
                        .unwrap_or_default()
                ));
            }
        }
        Ok(())
    }

    /// Stay `d` watching the new release's instances; fail if one exits or turns unhealthy.
    async fn watch(&self, svc: &Svc, release: i64, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        loop {
            self.check_new(svc, release)?;
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20).min(until - Instant::now())).await;
        }
    }

    async fn rolling(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: &Run,
        step: &(dyn Fn(i64, String) + Sync),
    ) -> Result<(), String> {
        let Strategy::Rolling {
            max_surge,
            max_unavailable,
            min_healthy_time,
        } = new.service.rollout.strategy.clone()
        else {
            return Err("not a rolling rollout".into());
        };
        let n = new.service.instances;
        self.rolling_with(
            svc,
            new,
            old,
            step,
            max_surge.resolve(n, true) as usize,
            max_unavailable.resolve(n, false) as usize,
            min_healthy_time,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn rolling_with(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: &Run,
        step: &(dyn Fn(i64, String) + Sync),
        surge: usize,
        unavail: usize,
        min_healthy: Duration,
    ) -> Result<(), String> {
        let n = new.service.instances as usize;
        let progress = new.service.rollout.progress_deadline;
        let mut deadline = Instant::now() + progress;
        let mut k = 0;
        loop {
            self.check_new(svc, new.number)?;
            let old_ids = svc.ids(|l| l.release != new.number);
            let new_ready = svc.count(new.number, |l| l.active);
            if new_ready >= n && old_ids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no progress within progress_deadline ({})",
                    recast_spec::values::format_duration(progress)
                ));
            }
            let removable = (old_ids.len() + new_ready)
                .saturating_sub(n.saturating_sub(unavail))
                .min(old_ids.len());
            if removable > 0 {
                k += 1;
                step(
                    k,
                    format!("retiring {removable} instance(s) of release {}", old.number),
                );
                self.retire(svc, old_ids[..removable].to_vec()).await;
                continue;
            }
            let all_new = svc.count(new.number, |_| true);
            let add = (n + surge)
                .saturating_sub(old_ids.len() + all_new)
                .min(n - all_new)
                .max(usize::from(all_new < n && surge == 0 && unavail == 0));
            if add == 0 {
                return Err("the rollout cannot make progress with these max_surge/max_unavailable settings".into());
            }
            k += 1;
            step(
                k,
                format!(
                    "starting {add} instance(s) of release {} ({new_ready}/{n} ready)",
                    new.number
                ),
            );
            let ids = tokio::select! {
                r = self.start_healthy(svc, new, add, deadline) => r?,
                _ = tokio::time::sleep_until(deadline.into()) => return Err(format!("no progress within progress_deadline ({})", recast_spec::values::format_duration(progress))),
            };
            if !min_healthy.is_zero() {
                // The new instances must stay healthy this long before they count.
                self.watch(svc, new.number, min_healthy).await?;
            }
            svc.set_active(&ids, true);
            // With an analysis block, each batch is judged before the next one starts.
            let mut analyzer = self.analyzer(svc, new, Some(old));
            if let Some(settle) = analyzer.as_ref().map(Analyzer::settle_time) {
                step(
                    k,
                    format!(
                        "judging the batch for {}",
                        recast_spec::values::format_duration(settle)
                    ),
                );
                self.hold(svc, new, Some(old), Some(settle), &mut analyzer, step)
                    .await?;
            }
            deadline = Instant::now() + progress;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn blue_green(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: &Run,
        preview: Option<SocketAddr>,
        auto_promote: Option<Duration>,
        scale_down: Duration,
        step: &(dyn Fn(i64, String) + Sync),
    ) -> Result<(), String> {
        let n = new.service.instances as usize;
        step(
            1,
            format!("starting {n} green instance(s) of release {}", new.number),
        );
        let deadline = Instant::now() + new.service.rollout.progress_deadline;
        let green = self.start_healthy(svc, new, n, deadline).await?;
        if let Some(addr) = preview {
            let pv = recast_proxy::Service::new(&format!("{}-preview", svc.name));
            let backends = lock(&svc.live)
                .iter()
                .filter(|l| green.contains(&l.inst.id))
                .map(|l| l.backend.clone())
                .collect();
            pv.set_table(Table {
                groups: vec![Group {
                    release: new.number,
                    weight: 1,
                    backends,
                }],
            });
            let route = Route::bind(addr, pv)
                .await
                .map_err(|e| format!("preview on {addr}: {e}"))?;
            self.previews
                .lock()
                .await
                .insert(key(&svc.project, &svc.name), route);
        }
        step(
            2,
            match auto_promote {
                Some(d) => format!(
                    "green healthy; promoting in {}",
                    recast_spec::values::format_duration(d)
                ),
                None => "green healthy; waiting for `recast promote`".into(),
            },
        );
        // Judged on preview traffic while it waits, if there is an analysis block.
        let mut analyzer = self.analyzer(svc, new, Some(old));
        self.hold(svc, new, Some(old), auto_promote, &mut analyzer, step)
            .await?;
        self.pre_promote(svc, new).await?;
        self.previews
            .lock()
            .await
            .remove(&key(&svc.project, &svc.name));
        // The switch: green in, blue out, in one table swap.
        let blue = svc.ids(|l| l.release == old.number);
        {
            let mut live = lock(&svc.live);
            for l in live.iter_mut() {
                l.active = green.contains(&l.inst.id);
            }
        }
        svc.publish();
        step(
            3,
            format!(
                "traffic switched to release {}; release {} stays warm for {}",
                new.number,
                old.number,
                recast_spec::values::format_duration(scale_down)
            ),
        );
        // With an analysis block, the first minutes after the switch are judged too; blue is
        // still warm, so a failure switches straight back.
        let mut after = self.analyzer(svc, new, None);
        if let Some(settle) = after.as_ref().map(Analyzer::settle_time) {
            self.hold(svc, new, None, Some(settle), &mut after, step)
                .await?;
        }
        // Blue stays warm for an instant rollback, then goes.
        let ctl = self.clone();
        let svc2 = svc.clone();
        let old_number = old.number;
        tokio::spawn(async move {
            tokio::time::sleep(scale_down).await;
            let _busy = svc2.busy.lock().await;
            let still_blue: Vec<String> =
                svc2.ids(|l| l.release == old_number && !l.active && blue.contains(&l.inst.id));
            ctl.retire(&svc2, still_blue).await;
        });
        Ok(())
    }

    /// Hold the rollout where it is until `pause` has passed (not counting time paused by
    /// `recast pause`) or, without a pause, until `recast promote`. Meanwhile: any new instance
    /// that exits or turns unhealthy fails it, `recast abort` fails it at once, and the analysis
    /// (if any) judges every interval.
    async fn hold(
        &self,
        svc: &Svc,
        new: &Run,
        old: Option<&Run>,
        pause: Option<Duration>,
        analyzer: &mut Option<Analyzer>,
        step: &(dyn Fn(i64, String) + Sync),
    ) -> Result<(), String> {
        let mut remaining = pause;
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if svc.abort.swap(false, Ordering::SeqCst) {
                return Err("aborted by `recast abort`".into());
            }
            self.check_new(svc, new.number)?;
            let paused = svc.paused.load(Ordering::SeqCst);
            let now = Instant::now();
            if !paused {
                if svc.promote.swap(false, Ordering::SeqCst) {
                    self.event(
                        svc,
                        "rollout.promoted",
                        &format!("release {} promoted by `recast promote`", new.number),
                    );
                    return Ok(());
                }
                if let Some(r) = remaining.as_mut() {
                    *r = r.saturating_sub(now - last);
                    if r.is_zero() {
                        return Ok(());
                    }
                }
            }
            last = now;
            if let Some(a) = analyzer.as_mut()
                && !paused
                && a.due()
            {
                let canary = svc.proxy.metrics(new.number).snapshot();
                let stable = old
                    .map(|o| svc.proxy.metrics(o.number).snapshot())
                    .unwrap_or_default();
                let (v, outcome) = a.verdict(new.number, canary, stable, now_ms());
                step(-2, format!("analysis {}: {}", v.result, v.reason));
                let _ = self.state.event(
                    &svc.project,
                    &svc.name,
                    "analysis.verdict",
                    &serde_json::to_string(&v).unwrap_or_default(),
                );
                lock(&svc.verdicts).push(v);
                outcome?;
            }
        }
    }

    fn analyzer(&self, svc: &Svc, new: &Run, old: Option<&Run>) -> Option<Analyzer> {
        let a = new.service.rollout.analysis.clone()?;
        let canary = svc.proxy.metrics(new.number).snapshot();
        let stable = old
            .map(|o| svc.proxy.metrics(o.number).snapshot())
            .unwrap_or_default();
        Some(Analyzer::new(a, canary, stable))
    }

    /// Canary: each step moves that share of requests to the new release (with enough instances
    /// to carry it), holds it for `pause` (or until `recast promote`) under analysis, then the
    /// new release takes everything and the old one is retired.
    async fn canary(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        new: &Run,
        old: &Run,
        steps: &[recast_spec::Step],
        sticky: bool,
        step: &(dyn Fn(i64, String) + Sync),
    ) -> Result<(), String> {
        let n = new.service.instances as usize;
        svc.proxy.set_sticky(sticky);
        let mut analyzer = self.analyzer(svc, new, Some(old));
        for (i, s) in steps.iter().enumerate() {
            let want = (n * usize::from(s.weight)).div_ceil(100).max(1);
            self.grow(svc, new, want).await?;
            *lock(&svc.weights) = Some(BTreeMap::from([
                (old.number, 100 - u32::from(s.weight)),
                (new.number, u32::from(s.weight)),
            ]));
            svc.publish();
            if let Some(a) = analyzer.as_mut() {
                a.reset(
                    svc.proxy.metrics(new.number).snapshot(),
                    svc.proxy.metrics(old.number).snapshot(),
                );
            }
            let hold = match s.pause {
                Some(p) => format!("for {}", recast_spec::values::format_duration(p)),
                None => "until `recast promote`".into(),
            };
            step(
                i as i64 + 1,
                format!(
                    "step {}/{}: {}% of requests to release {} on {want} instance(s), {hold}",
                    i + 1,
                    steps.len(),
                    s.weight,
                    new.number
                ),
            );
            self.hook(
                svc,
                "rollout.step",
                new,
                &format!("step {} at {}%", i + 1, s.weight),
            );
            self.hold(svc, new, Some(old), s.pause, &mut analyzer, step)
                .await?;
        }
        self.pre_promote(svc, new).await?;
        // Full strength, then everything to the new release.
        self.grow(svc, new, n).await?;
        *lock(&svc.weights) = Some(BTreeMap::from([(old.number, 0), (new.number, 100)]));
        svc.publish();
        step(
            steps.len() as i64 + 1,
            format!(
                "100% of requests to release {}; retiring release {}",
                new.number, old.number
            ),
        );
        self.event(
            svc,
            "rollout.promoted",
            &format!("release {} takes all traffic", new.number),
        );
        self.hook(svc, "rollout.promoted", new, "takes all traffic");
        let old_ids = svc.ids(|l| l.release == old.number);
        *lock(&svc.weights) = None;
        self.retire(svc, old_ids).await;
        Ok(())
    }

    /// Bring the release to `want` active instances, starting healthy ones as needed. The table
    /// is not published here: the caller sets the weights first.
    async fn grow(self: &Arc<Self>, svc: &Arc<Svc>, run: &Run, want: usize) -> Result<(), String> {
        let have = svc.count(run.number, |l| l.active);
        if want > have {
            let deadline = Instant::now() + run.service.rollout.progress_deadline;
            let ids = self.start_healthy(svc, run, want - have, deadline).await?;
            for l in lock(&svc.live)
                .iter_mut()
                .filter(|l| ids.contains(&l.inst.id))
            {
                l.active = true;
            }
        }
        Ok(())
    }

    /// Call the project's `rollout.pre_promote` webhooks; any failure blocks the promotion.
    async fn pre_promote(&self, svc: &Svc, new: &Run) -> Result<(), String> {
        let hooks: Vec<recast_spec::Webhook> = lock(&self.hooks)
            .get(&svc.project)
            .cloned()
            .unwrap_or_default();
        for h in hooks
            .into_iter()
            .filter(|h| h.events.iter().any(|e| e == "rollout.pre_promote"))
        {
            let body = hook_body(
                "rollout.pre_promote",
                svc,
                new.number,
                "promotion requested",
            );
            let name = h.name.clone();
            let r = tokio::task::spawn_blocking(move || call_hook(&h, &body))
                .await
                .map_err(|e| e.to_string())?;
            r.map_err(|e| format!("pre_promote webhook {name} blocked the promotion: {e}"))?;
        }
        Ok(())
    }

    /// Fire-and-forget webhooks for `event` (never waited on, so they cannot block a rollback).
    fn hook(&self, svc: &Svc, event: &str, new: &Run, message: &str) {
        let hooks: Vec<recast_spec::Webhook> = lock(&self.hooks)
            .get(&svc.project)
            .cloned()
            .unwrap_or_default();
        for h in hooks
            .into_iter()
            .filter(|h| h.events.iter().any(|e| e == event))
        {
            let body = hook_body(event, svc, new.number, message);
            tokio::task::spawn_blocking(move || {
                let _ = call_hook(&h, &body);
            });
        }
    }

    /// After a failed rollout: the old release back at full strength, the new one gone.
    /// Returns how long it took until no request went to the new release any more.
    async fn restore(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        old: Option<&Run>,
        new_number: i64,
        stop_first: bool,
    ) -> Duration {
        let t0 = Instant::now();
        let doomed = svc.ids(|l| l.release == new_number);
        if stop_first {
            // recreate: the new release stops before the old one starts again.
            if let Some(o) = old {
                svc.proxy.set_unavailable(Some(format!(
                    "release {new_number} failed; release {} is starting again; retry shortly",
                    o.number
                )));
            }
            self.stop_all(svc, doomed.clone()).await;
        }
        // Take the new release out and the warm old instances in, in one table swap.
        let switch = |with: &[String]| {
            for l in lock(&svc.live).iter_mut() {
                if with.contains(&l.inst.id) {
                    l.active = true;
                }
                if doomed.contains(&l.inst.id) {
                    l.active = false;
                }
            }
            svc.publish();
            t0.elapsed()
        };
        let mut switched = None;
        if let Some(old) = old {
            let warm = svc.ids(|l| l.release == old.number && l.exited.is_none());
            if !warm.is_empty() {
                switched = Some(switch(&warm));
            }
            let want = old.service.instances as usize;
            if warm.len() < want {
                let deadline = Instant::now() + old.service.rollout.progress_deadline;
                if let Ok(ids) = self
                    .start_healthy(svc, old, want - warm.len(), deadline)
                    .await
                {
                    let at = switch(&ids);
                    switched.get_or_insert(at);
                }
            }
        }
        let switched = switched.unwrap_or_else(|| switch(&[]));
        self.previews
            .lock()
            .await
            .remove(&key(&svc.project, &svc.name));
        self.retire(svc, doomed).await;
        svc.proxy.set_unavailable(None);
        switched
    }

    // ---- commands -------------------------------------------------------------------------------

    /// Ask the running rollout of `svc` to move on; an error when there is none.
    pub fn promote(&self, svc: &Svc) -> Result<(), String> {
        Self::rolling_out(svc)?;
        svc.promote.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Roll the running rollout back at once.
    pub fn abort(&self, svc: &Svc) -> Result<(), String> {
        Self::rolling_out(svc)?;
        svc.abort.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Freeze (or continue) the running rollout where it is.
    pub fn pause(&self, svc: &Svc, paused: bool) -> Result<(), String> {
        Self::rolling_out(svc)?;
        svc.paused.store(paused, Ordering::SeqCst);
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

    fn rolling_out(svc: &Svc) -> Result<(), String> {
        if lock(&svc.rollout).is_none() {
            return Err(format!("service {} has no rollout in progress", svc.name));
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
        let n = run.service.instances as usize;
        let warm = svc.ids(|l| l.release == run.number && l.healthy && l.exited.is_none());
        let was_warm = warm.len() >= n;
        if was_warm {
            let mut live = lock(&svc.live);
            for l in live.iter_mut() {
                l.active = l.release == run.number && warm.contains(&l.inst.id);
            }
        } else {
            let deadline = Instant::now() + run.service.rollout.progress_deadline;
            let ids = self
                .start_healthy(svc, &run, n - warm.len(), deadline)
                .await?;
            let mut live = lock(&svc.live);
            for l in live.iter_mut() {
                l.active = l.release == run.number
                    && (warm.contains(&l.inst.id) || ids.contains(&l.inst.id));
            }
        }
        svc.publish();
        let switched_ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.record_rollback(svc, cur.number, run.number, "");
        let doomed = svc.ids(|l| l.release == cur.number);
        let ctl = self.clone();
        let svc2 = svc.clone();
        tokio::spawn(async move { ctl.retire(&svc2, doomed).await });
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
    pub async fn destroy_service(&self, svc: &Arc<Svc>, volumes: bool) {
        let _busy = svc.busy.lock().await;
        let all = svc.ids(|_| true);
        self.retire(svc, all).await;
        let _ = self.state.set_current(&svc.project, &svc.name, None);
        self.event(svc, "service.destroyed", "every instance retired");
        if volumes {
            self.drop_snapshots(svc).await;
            let _ = std::fs::remove_dir_all(
                self.data_dir
                    .join("volumes")
                    .join(&svc.project)
                    .join(&svc.name),
            );
        }
    }

    /// Destroy services (all of a project when `services` is empty) and their routes.
    pub async fn destroy(
        &self,
        project: Option<&str>,
        services: &[String],
        volumes: bool,
    ) -> Vec<String> {
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
            self.destroy_service(s, volumes).await;
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
            let _ = self.state.set_routes(&p, &rows);
        }
        removed
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
                "rolled_back",
                "interrupted: the server stopped during the rollout",
            );
            let _ = self.state.set_outcome(
                &r.project,
                &r.service,
                r.to_release,
                "rolled_back",
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

#[derive(Debug, Clone, Serialize)]
pub struct RollbackResult {
    pub service: String,
    pub from: i64,
    pub to: i64,
    /// True when the release was still running and the rollback was a routing switch.
    pub warm: bool,
    /// From the command to all traffic on the release.
    pub switched_ms: f64,
    /// The volume snapshots restored (`--restore-volumes`).
    pub restored: Vec<recast_state::Snapshot>,
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
