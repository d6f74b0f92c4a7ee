//! This server as a host: the projects it acts for (their leases, renewed while it runs and can
//! reach the state), the ones it stands by for, and deliberate moves. The rules are the state's
//! (`recast_state::lease`); this is when the engine starts and stops acting.

use super::*;
use recast_state::{Host, Lease, Take};
use std::collections::BTreeSet;

/// How this server takes part among hosts.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub name: String,
    /// Projects it takes when their holder stops renewing (`*` for all).
    pub standby_for: Vec<String>,
    /// How long a lease lasts without renewal.
    pub lease_time: Duration,
}

/// The default lease time: a holder that stops renewing is replaced after this long.
pub const LEASE_TIME: Duration = Duration::from_secs(10);

impl HostConfig {
    /// `name` (default: the machine's hostname) and the projects to stand by for (`all` for
    /// every one). Errors name the bad value.
    pub fn new(
        name: Option<&str>,
        standby_for: &[String],
        lease_time: Duration,
    ) -> Result<HostConfig, String> {
        let name = match name {
            Some(n) => n.to_string(),
            None => {
                let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map_err(|e| format!("reading the machine's hostname: {e}"))?;
                h.trim().to_string()
            }
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok(&name) {
            return Err(format!(
                "host name {name:?} is not 1 to 63 letters, digits, '-', '_' or '.'"
            ));
        }
        let mut standby = Vec::new();
        for p in standby_for.iter().flat_map(|s| s.split(',')) {
            let p = p.trim();
            match p {
                "all" | "*" => standby.push("*".to_string()),
                p if ok(p) => standby.push(p.to_string()),
                p => {
                    return Err(format!(
                        "--standby-for {p:?} is not a project name or \"all\""
                    ));
                }
            }
        }
        if lease_time < Duration::from_secs(1) {
            return Err(format!(
                "the lease time {lease_time:?} is shorter than a second"
            ));
        }
        Ok(HostConfig {
            name,
            standby_for: standby,
            lease_time,
        })
    }

    pub fn stands_by_for(&self, project: &str) -> bool {
        self.standby_for.iter().any(|s| s == "*" || s == project)
    }

    fn ttl_ms(&self) -> i64 {
        self.lease_time.as_millis() as i64
    }

    /// A host stops acting this long after its last renewal began, well before any other host
    /// may take its leases (the lease time).
    fn cut_off_after(&self) -> Duration {
        self.lease_time.mul_f64(0.6)
    }
}

/// This server's part among hosts, as it goes.
pub struct Hosting {
    pub config: HostConfig,
    /// This run of the server (random), to notice a second server under the same name.
    pub instance: String,
    /// When the last successful renewal began.
    renewed: Mutex<Instant>,
    renewing: AtomicBool,
    /// One start, stop or move of a project at a time (`Hosting::turn`).
    changing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Cut off from the state: acting for nothing until it answers again.
    cut_off: AtomicBool,
    /// The running hosts as last read.
    peers: Mutex<Vec<Host>>,
    /// When the first lease this host stands by for expires, as last read: it looks again then.
    next_look: Mutex<Option<Instant>>,
    /// Recovery at start is done: until then the keeper renews, watches the deadline and reads
    /// the hosts, but starts, stops and moves nothing.
    pub(crate) recovered: AtomicBool,
    /// Projects being handed over, to which host.
    pub(crate) moving: Mutex<HashMap<String, String>>,
}

impl Hosting {
    /// This server among hosts, running on `dir`.
    pub fn new(config: HostConfig, dir: &DataDir) -> Hosting {
        Hosting {
            config,
            instance: format!("{}:{}", dir_id(dir), new_id("run")),
            renewed: Mutex::new(Instant::now()),
            renewing: AtomicBool::new(false),
            changing: Mutex::new(HashMap::new()),
            cut_off: AtomicBool::new(false),
            peers: Mutex::new(Vec::new()),
            next_look: Mutex::new(None),
            recovered: AtomicBool::new(false),
            moving: Mutex::new(HashMap::new()),
        }
    }
}

/// The id of a data directory (`host-id`, made once): the part of a host registration's
/// `instance` before the `:`. A registration from the same directory replaces the one before it
/// at once — that server is gone, since this one holds the directory's lock. Unreadable, it is a
/// new random id (the name then waits out the earlier registration like any other).
fn dir_id(dir: &DataDir) -> String {
    let path = dir.host_id();
    // At most 65 bytes read: a longer file is not one recast wrote.
    let mut buf = Vec::new();
    let read = std::fs::File::open(&path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 65), &mut buf));
    if read.is_ok()
        && let Ok(id) = std::str::from_utf8(&buf)
        && !id.trim().is_empty()
        && buf.len() <= 64
    {
        return id.trim().to_string();
    }
    let id = new_id("dir");
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!("writing {}: {e}", path.display());
    }
    id
}

impl Hosting {
    /// The lock a project's start, stop and move take, so they happen one after the other.
    fn turn(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.changing)
            .entry(project.to_string())
            .or_default()
            .clone()
    }
}

fn off<T>(r: Result<Result<T, recast_state::Error>, tokio::task::JoinError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

impl Ctl {
    fn me(&self) -> &str {
        &self.hosting.config.name
    }

    /// Register this server as its host, waiting while another server under the same name
    /// still renews it (one killed a moment ago) for up to a lease time; then refused.
    pub(crate) async fn register_host(&self, api: std::net::SocketAddr) -> Result<(), ServerError> {
        let h = Host {
            name: self.me().to_string(),
            instance: self.hosting.instance.clone(),
            api: api.to_string(),
            standby_for: self.hosting.config.standby_for.clone(),
            started_ms: 0,
            seen_ms: 0,
            lease_ms: self.hosting.config.ttl_ms(),
        };
        let deadline = Instant::now() + self.hosting.config.lease_time + Duration::from_secs(1);
        loop {
            let (state, h2) = (self.state.clone(), h.clone());
            match off(tokio::task::spawn_blocking(move || state.register_host(&h2)).await) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(other)) if Instant::now() >= deadline => {
                    return Err(ServerError::Conflict(format!(
                        "host name {} is in use by another running server (API {}), which renewed it within the last {} s\n  hint: stop that server, or give this one another --host-name",
                        h.name,
                        other.api,
                        self.hosting.config.lease_time.as_secs()
                    )));
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(250)).await,
                Err(e) => {
                    return Err(ServerError::Runtime(format!(
                        "registering host {}: {e}",
                        h.name
                    )));
                }
            }
        }
    }

    /// At start: the leases naming this host (a restart, a rebuild on a new machine, a move to
    /// it), and the projects recorded before leases existed.
    pub(crate) async fn claim_leases(&self) -> Result<Vec<String>, String> {
        let (state, me) = (self.state.clone(), self.me().to_string());
        let place = recast_state::place_of(&self.hosting.instance).to_string();
        let (renamed, leases, services, routes, rollouts) =
            off(tokio::task::spawn_blocking(move || {
                Ok::<_, recast_state::Error>((
                    state.rename_host(&place, &me)?,
                    state.leases()?,
                    state.all_services()?,
                    state.routes()?,
                    state.unfinished_rollouts()?,
                ))
            })
            .await)?;
        let mut wanted: BTreeMap<String, Take> = BTreeMap::new();
        for p in services
            .into_iter()
            .map(|(p, _)| p)
            .chain(routes.into_iter().map(|r| r.project))
            .chain(rollouts.into_iter().map(|r| r.project))
        {
            wanted.insert(p, Take::IfNew);
        }
        for l in leases.iter().filter(|l| l.host == self.me()) {
            wanted.insert(l.project.clone(), Take::IfMine);
        }
        let mut notes: Vec<String> = renamed
            .into_iter()
            .map(|old| {
                format!(
                    "host {old} is now named {} (same data directory): its projects follow",
                    self.me()
                )
            })
            .collect();
        // Every lease taken here lasts from after this moment: the keeper's clock starts here,
        // not when the process started (registering may have waited a lease time).
        let claimed = Instant::now();
        for (p, how) in wanted {
            if let Some(l) = self.take(&p, how).await? {
                notes.push(format!("acting for project {p} (lease token {})", l.token));
            }
        }
        *lock(&self.hosting.renewed) = claimed;
        Ok(notes)
    }

    /// Take `project`'s lease as `how` allows and hold it; `None` when another host holds it.
    async fn take(&self, project: &str, how: Take) -> Result<Option<Lease>, String> {
        let (state, p, me, ttl) = (
            self.state.clone(),
            project.to_string(),
            self.me().to_string(),
            self.hosting.config.ttl_ms(),
        );
        let taken =
            off(tokio::task::spawn_blocking(move || state.take_lease(&p, &me, ttl, how)).await)?;
        Ok(taken.ok().inspect(|l| self.state.hold(l)))
    }

    /// An apply of `project` on this host: refused while another host holds its lease, naming
    /// it; a project new to this host is taken and started from its records first.
    pub(crate) async fn act_for(self: &Arc<Self>, project: &str) -> Result<(), String> {
        if self.state.holds(project) {
            return Ok(());
        }
        let turn = self.hosting.turn(project);
        let _turn = turn.try_lock().map_err(|_| {
            format!("project {project} is being started or stopped on this host; try again")
        })?;
        match self.take(project, Take::IfFree).await? {
            Some(_) => {
                let restored = self.restore_quietly(project).await;
                if let Err(e) = &restored {
                    self.state.unhold(project);
                    return Err(format!(
                        "starting project {project} on host {}: {e}",
                        self.me()
                    ));
                }
                self.serving(project).await;
                Ok(())
            }
            None => Err(self
                .held_elsewhere(project)
                .unwrap_or_else(|| format!("host {} cannot take project {project}", self.me()))),
        }
    }

    /// Why this host cannot act for `project` when another host holds it: the holder, its API
    /// and what to do.
    pub(crate) fn held_elsewhere(&self, project: &str) -> Option<String> {
        let l = self.state.lease(project).ok().flatten()?;
        if l.host.is_empty() || l.host == self.me() {
            return None;
        }
        let api = self
            .state
            .hosts()
            .ok()
            .and_then(|hs| hs.into_iter().find(|x| x.name == l.host))
            .map(|x| format!(" (API {})", x.api))
            .unwrap_or_default();
        Some(format!(
            "project {project} is held by host {}{api}\n  hint: run the command there, or move the project here with `recast project move {project} --to {}`",
            l.host,
            self.me()
        ))
    }

    /// Every project held is serving (after recovery at start).
    pub(crate) async fn serving_all(&self) {
        for (p, _) in self.state.held() {
            self.serving(&p).await;
        }
    }

    async fn serving(&self, project: &str) {
        let (state, p) = (self.state.clone(), project.to_string());
        if let Err(e) = off(tokio::task::spawn_blocking(move || state.set_serving(&p)).await) {
            tracing::error!(project, "recording that it serves: {e}");
        }
    }

    /// Renew the leases every fifth of a lease time and watch the deadline: when no renewal has
    /// succeeded for [`HostConfig::cut_off_after`], stop acting. Runs forever, on a thread of
    /// its own ([`Ctl::spawn_lease_keeper`]): the engine's tasks call the state directly, so
    /// when PostgreSQL hangs they may hold every engine thread — the deadline must not wait on
    /// them. Projects are started and moved on the engine's runtime (`engine`).
    pub fn spawn_lease_keeper(self: &Arc<Self>) -> std::io::Result<()> {
        let (ctl, engine) = (self.clone(), tokio::runtime::Handle::current());
        std::thread::Builder::new()
            .name("recast-leases".into())
            .spawn(move || {
                // Two threads, so that a data plane call (`blocking`) never stalls the clock.
                match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("recast-leases")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(ctl.keep_leases(engine)),
                    Err(e) => tracing::error!("the lease keeper cannot start: {e}"),
                }
            })
            .map(drop)
    }

    async fn keep_leases(self: Arc<Self>, engine: tokio::runtime::Handle) {
        let period = self.hosting.config.lease_time / 5;
        let mut tick = tokio::time::interval(period / 8);
        loop {
            tick.tick().await;
            let since = lock(&self.hosting.renewed).elapsed();
            if since >= self.hosting.config.cut_off_after()
                && !self.hosting.cut_off.swap(true, Ordering::SeqCst)
            {
                let why = format!(
                    "no lease renewal for {:.1} s: the state cannot be reached",
                    since.as_secs_f64()
                );
                self.cut_off(&why).await;
            }
            let look = lock(&self.hosting.next_look).is_some_and(|t| Instant::now() >= t);
            if (since >= period || look) && !self.hosting.renewing.swap(true, Ordering::SeqCst) {
                *lock(&self.hosting.next_look) = None;
                let (ctl, engine) = (self.clone(), engine.clone());
                tokio::spawn(async move {
                    ctl.renew(&engine).await;
                    ctl.hosting.renewing.store(false, Ordering::SeqCst);
                });
            }
        }
    }

    /// Stop acting for every project held: writes stop at once (its leases are let go here) and
    /// its rollouts are aborted; instances stop where a running host stands by for the project,
    /// and keep serving, undriven, otherwise — when the state answers again this host takes its
    /// leases back, or stops a project another host took meanwhile (`take_ours`).
    async fn cut_off(self: &Arc<Self>, why: &str) {
        let host = self.me();
        tracing::error!(host, "{why}: acting for no project until the state answers");
        let peers = lock(&self.hosting.peers).clone();
        for (p, _) in self.state.held() {
            self.state.unhold(&p);
            // Stop its rollouts here either way: nothing is written from now on.
            for svc in self.all_svcs().iter().filter(|s| s.project == p) {
                if lock(&svc.rollout).is_some() {
                    svc.controls.abort();
                }
            }
            let standby = peers
                .iter()
                .any(|h| h.name != self.me() && h.stands_by_for(&p));
            if standby {
                // Not awaited: a start of the project stuck on the state holds its turn, and
                // the keeper's clock must go on.
                let (ctl, why) = (self.clone(), why.to_string());
                tokio::spawn(async move { ctl.stop_project(&p, &why, false).await });
            }
        }
    }

    async fn renew(self: &Arc<Self>, engine: &tokio::runtime::Handle) {
        let sent = Instant::now();
        let held = self.state.held();
        let (state, me, inst, ttl) = (
            self.state.clone(),
            self.me().to_string(),
            self.hosting.instance.clone(),
            self.hosting.config.ttl_ms(),
        );
        let h2 = held.clone();
        let rows =
            off(tokio::task::spawn_blocking(move || state.renew(&me, &inst, &h2, ttl)).await);
        let rows = match rows {
            Ok(Some(rows)) => rows,
            Ok(None) => {
                self.hosting.cut_off.store(true, Ordering::SeqCst);
                let why = format!("another server registered as host {}", self.me());
                self.cut_off(&why).await;
                return;
            }
            Err(e) => {
                tracing::warn!(host = self.me(), "renewing leases: {e}");
                return;
            }
        };
        if sent.elapsed() > self.hosting.config.lease_time / 5 {
            tracing::warn!(
                host = self.me(),
                "renewing its leases took {:.1} s (it stops acting {:.1} s after the last renewal)",
                sent.elapsed().as_secs_f64(),
                self.hosting.config.cut_off_after().as_secs_f64()
            );
        }
        // Answered too late to count: the next tick renews again at once.
        if sent.elapsed() >= self.hosting.config.cut_off_after() {
            return;
        }
        *lock(&self.hosting.renewed) = sent;
        if self.hosting.cut_off.swap(false, Ordering::SeqCst) {
            tracing::info!(host = self.me(), "the state answers again");
        }
        let current = self.state.held();
        for l in rows {
            let token = held.iter().find(|(p, _)| *p == l.project).map(|(_, t)| *t);
            // Taken again or let go while this renewal ran: its row says nothing about that.
            if current
                .iter()
                .find(|(p, _)| *p == l.project)
                .map(|(_, t)| *t)
                != token
            {
                continue;
            }
            if l.host != self.me() || Some(l.token) != token {
                let why = format!(
                    "its lease passed to {} (token {})",
                    if l.host.is_empty() { "nobody" } else { &l.host },
                    l.token
                );
                self.state.unhold(&l.project);
                // During recovery only let go: once recovered, `take_ours` stops what runs of it.
                if self.hosting.recovered.load(Ordering::SeqCst) {
                    let ctl = self.clone();
                    tokio::spawn(async move { ctl.stop_project(&l.project, &why, false).await });
                }
            } else if let Some(to) = l
                .move_to
                .clone()
                .filter(|t| t != self.me() && self.hosting.recovered.load(Ordering::SeqCst))
            {
                let ctl = self.clone();
                engine.spawn(async move { ctl.move_out(&l.project, &to).await });
            }
        }
        if let Err(e) = self.take_ours(engine).await {
            tracing::warn!(host = self.me(), "looking for leases to take: {e}");
        }
    }

    /// Take the leases that name this host and it does not hold (handed over to it, or held
    /// before a cut-off), and the expired ones of projects it stands by for; start each.
    async fn take_ours(self: &Arc<Self>, engine: &tokio::runtime::Handle) -> Result<(), String> {
        let state = self.state.clone();
        let (leases, hosts, now) = off(tokio::task::spawn_blocking(move || {
            Ok::<_, recast_state::Error>((state.leases()?, state.hosts()?, state.db_now_ms()?))
        })
        .await)?;
        *lock(&self.hosting.peers) = hosts.into_iter().filter(|h| h.running(now)).collect();
        if !self.hosting.recovered.load(Ordering::SeqCst) {
            return Ok(());
        }
        let standby = |p: &str| self.hosting.config.stands_by_for(p);
        let held = self.state.held();
        // Still running here although another host holds it (taken while this one was cut off
        // and kept serving): it stops now.
        let local: BTreeSet<String> = self.all_svcs().iter().map(|s| s.project.clone()).collect();
        for l in leases.iter().filter(|l| {
            l.host != self.me()
                && local.contains(&l.project)
                && !held.iter().any(|(p, _)| *p == l.project)
        }) {
            let (ctl, p) = (self.clone(), l.project.clone());
            let why = format!(
                "host {} holds it now",
                if l.host.is_empty() { "nobody" } else { &l.host }
            );
            tokio::spawn(async move { ctl.stop_project(&p, &why, false).await });
        }
        // A standby looks again the moment the first lease it may take expires.
        let first_expiry = leases
            .iter()
            .filter(|l| !l.host.is_empty() && l.host != self.me() && standby(&l.project))
            .map(|l| l.expires_ms)
            .filter(|&e| e >= now)
            .min();
        *lock(&self.hosting.next_look) =
            first_expiry.map(|e| Instant::now() + Duration::from_millis((e - now) as u64 + 20));
        for l in leases {
            if held.iter().any(|(p, _)| *p == l.project)
                || self.hosting.turn(&l.project).try_lock().is_err()
            {
                continue;
            }
            let expired = !l.host.is_empty() && l.expires_ms < now;
            let how = if l.host == self.me() {
                Take::IfMine
            } else if expired && (standby(&l.project) || l.move_to.as_deref() == Some(self.me())) {
                // A standby's, or a move to this host whose holder died before handing over.
                Take::IfFree
            } else {
                continue;
            };
            let ctl = self.clone();
            let from = l.host.clone();
            engine.spawn(async move { ctl.start_project(&l.project, how, &from).await });
        }
        Ok(())
    }

    /// Take `project` and start it from its records: interrupted rollouts ended, live releases
    /// at full strength, routes listening.
    async fn start_project(self: &Arc<Self>, project: &str, how: Take, from: &str) {
        let turn = self.hosting.turn(project);
        let _turn = turn.lock().await;
        if self.state.held().iter().any(|(p, _)| p == project) {
            return;
        }
        let lease = match self.take(project, how).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(project, "taking the lease: {e}");
                return;
            }
        };
        let started = Instant::now();
        match self.restore_quietly(project).await {
            Ok(()) => {
                self.serving(project).await;
                let from = if from.is_empty() || from == self.me() {
                    "this host's records"
                } else {
                    from
                };
                tracing::info!(
                    host = self.me(),
                    project,
                    from,
                    token = lease.token,
                    "lease taken: acting for project {project}, serving after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                // Let go here (nothing stops): the next renewal takes it again and retries.
                self.state.unhold(project);
                let why = "tried again at the next renewal";
                tracing::error!(project, "starting it: {e} ({why})");
            }
        }
    }

    /// `restore` of one project with no rollout of it running (any still running here from
    /// before a cut-off is aborted and waited for, and none starts meanwhile). An error when a
    /// service could not be brought back.
    async fn restore_quietly(self: &Arc<Self>, project: &str) -> Result<(), String> {
        let svcs: Vec<Arc<Svc>> = self
            .all_svcs()
            .into_iter()
            .filter(|s| s.project == project)
            .collect();
        for s in svcs.iter().filter(|s| lock(&s.rollout).is_some()) {
            s.controls.abort();
        }
        let mut quiet = Vec::new();
        for s in &svcs {
            quiet.push(s.busy.lock().await);
        }
        let mut notes = Vec::new();
        let failed = self.restore(Some(project), &mut notes).await;
        for n in &notes {
            tracing::info!(project, "{n}");
        }
        match failed? {
            f if f.is_empty() => Ok(()),
            f => Err(format!("could not restore {}", f.join("; "))),
        }
    }

    /// Stop acting for `project`: out of the map, every instance out of rotation and stopped
    /// (drained first when `drain`), its routes and network gone. Writes nothing to the state
    /// unless this host still holds the project.
    pub(crate) async fn stop_project(self: &Arc<Self>, project: &str, why: &str, drain: bool) {
        let turn = self.hosting.turn(project);
        let _turn = turn.lock().await;
        // Taken back while this stop waited (the state answered again): nothing to stop.
        if self.state.held().iter().any(|(p, _)| p == project) {
            return;
        }
        self.stop_locked(project, why, drain).await;
    }

    async fn stop_locked(self: &Arc<Self>, project: &str, why: &str, drain: bool) {
        let svcs: Vec<Arc<Svc>> = {
            let mut map = lock(&self.svcs);
            let keys: Vec<String> = map
                .iter()
                .filter(|(_, s)| s.project == project)
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        let host = self.me();
        tracing::warn!(host, project, "stopping project {project}: {why}");
        for svc in &svcs {
            if lock(&svc.rollout).is_some() {
                svc.controls.abort();
            }
            let ids = svc.ids(|_| true);
            if drain {
                self.retire(svc, ids).await;
                continue;
            }
            svc.switch(&[], &ids, Weights::ByCount);
            let gone: Vec<Instance> = std::mem::take(&mut *lock(&svc.live))
                .into_iter()
                .map(|l| l.inst)
                .collect();
            for e in self.delete_instances(gone).await {
                tracing::warn!(project, service = %svc.name, "{e}");
            }
        }
        if let Err(e) = self.serve_routes(project, &[]).await {
            tracing::warn!(project, "closing its routes: {e}");
        }
        self.routes.lock().await.retain(|_, r| r.project != project);
        if let Err(e) = self.sync_network(project, &[]).await {
            tracing::warn!(project, "removing its network: {e}");
        }
        lock(&self.guards).remove(project);
        lock(&self.hooks).remove(project);
    }

    /// A move asked for: once no rollout of the project runs, drain and stop it here, then
    /// give its lease to `to`, which starts it.
    async fn move_out(self: &Arc<Self>, project: &str, to: &str) {
        let turn = self.hosting.turn(project);
        let Ok(_turn) = turn.try_lock() else {
            return;
        };
        let svcs: Vec<Arc<Svc>> = self
            .all_svcs()
            .into_iter()
            .filter(|s| s.project == project)
            .collect();
        let mut guards = Vec::new();
        for s in &svcs {
            match s.busy.try_lock() {
                Ok(g) => guards.push(g),
                // A rollout runs: the next renewal asks again.
                Err(_) => return,
            }
        }
        {
            // Under the apply lock: no apply starts from here on (`start_apply` refuses it).
            let applying = lock(&self.applying);
            if applying.contains_key(project) {
                return;
            }
            lock(&self.hosting.moving).insert(project.to_string(), to.to_string());
        }
        // The rollouts' locks are kept until the lease is handed over: no guard round, rollback
        // or replacement of the project starts meanwhile.
        self.stop_locked(project, &format!("moving to host {to}"), true)
            .await;
        let (state, p, t, ttl) = (
            self.state.clone(),
            project.to_string(),
            to.to_string(),
            self.hosting.config.ttl_ms(),
        );
        match off(tokio::task::spawn_blocking(move || state.hand_over(&p, &t, ttl)).await) {
            Ok(()) => tracing::info!(host = self.me(), project, to, "lease moved to host {to}"),
            Err(e) => {
                // Still held here but stopped: let go, so that the next renewal takes it back
                // and starts it (and the move is tried again).
                self.state.unhold(project);
                tracing::error!(project, to, "handing it over to {to}: {e}");
            }
        }
        drop(guards);
        lock(&self.hosting.moving).remove(project);
    }
}

/// `recast project move`: ask the holder of `project` to hand it to `to`, a running host.
/// Answers the lease as it was.
pub fn request_move(state: &State, project: &str, to: &str) -> Result<Lease, ServerError> {
    let lease = state
        .lease(project)?
        .filter(|l| !l.host.is_empty())
        .ok_or_else(|| {
            ServerError::NotFound(format!("project {project} is not held by any host"))
        })?;
    let now = state.db_now_ms()?;
    let hosts = state.hosts()?;
    let known: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    match hosts.iter().find(|h| h.name == to) {
        None => {
            return Err(ServerError::NotFound(format!(
                "no host is named {to:?} (hosts: {})",
                known.join(", ")
            )));
        }
        Some(h) if !h.running(now) => {
            return Err(ServerError::Conflict(format!(
                "host {to} has not renewed its registration for {} s: it is not running\n  hint: start `recast server --host-name {to}` there first",
                (now - h.seen_ms) / 1000
            )));
        }
        Some(_) => {}
    }
    if lease.host != to {
        state.request_move(project, to)?;
    }
    Ok(lease)
}
