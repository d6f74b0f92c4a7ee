//! Guard: prove every running instance still matches its image and release, and replace — never
//! repair — what drifted, crashed, turned unhealthy, or grew older than `max_age`.

use crate::ServerError;
use crate::engine::{Ctl, Run, Svc, lock};
use recast_guard::watch::InstanceWatch;
use recast_guard::{Finding, FindingKind, Mode};
use recast_image::fileindex::FileIndex;
use recast_spec::OnDrift;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per service: when it was last scanned, recent crashes (for backoff), last findings, and
/// what scans keep between rounds (file indexes, verdicts on executables).
#[derive(Default)]
pub struct GuardState {
    last_scan: Option<Instant>,
    crashes: Vec<Instant>,
    next_heal: Option<Instant>,
    crash_loop: bool,
    pub drift: Vec<InstanceDrift>,
    /// The file index of each image the service runs, by digest (read once, not per scan).
    indexes: HashMap<String, Arc<FileIndex>>,
    /// Per instance: what its scans keep (verdicts on its processes' executables and its
    /// `config.json`, its open `mountinfo`), so an unchanged instance is not read, judged nor
    /// hashed again.
    watches: HashMap<String, Arc<Mutex<InstanceWatch>>>,
    /// The current release as last parsed, by (number, digest, spec).
    run: Option<((i64, String, String), Arc<Run>)>,
    /// Scheduled scans of instances and the time they took (the `/metrics` counters).
    scans: u64,
    scan_time: Duration,
}

/// The findings of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDrift {
    pub service: String,
    pub instance: String,
    pub release: i64,
    pub findings: Vec<Finding>,
    /// What the scan looked at and how long it took.
    pub scan: ScanStats,
}

/// The cost of one instance's scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanStats {
    /// Wall time of the whole scan (files, mounts, processes, config), in microseconds.
    pub micros: u64,
    /// Entries of the root looked at.
    pub entries: u64,
    /// Files hashed (those metadata could not vouch for, or all with `--full`).
    pub hashed: u64,
    pub bytes_hashed: u64,
    /// Processes of the instance whose executables were checked.
    pub processes: u64,
}

impl Ctl {
    /// Scan instances `ids` of a service, in one blocking task: each one's files against the
    /// image's file index, its mounts, the executables of its processes, its runtime spec and
    /// its image digest. Gives each instance's findings, or why it could not be scanned.
    async fn scan_instances(
        &self,
        svc: &Svc,
        ids: &[String],
        mode: Mode,
    ) -> Vec<Result<InstanceDrift, String>> {
        let found: Vec<(recast_runtime::Instance, i64)> = {
            let live = lock(&svc.live);
            ids.iter()
                .filter_map(|id| live.iter().find(|l| &l.inst.id == id))
                .map(|l| (l.inst.clone(), l.release))
                .collect()
        };
        let mut out: Vec<Result<InstanceDrift, String>> = ids
            .iter()
            .filter(|id| !found.iter().any(|(i, _)| &i.id == *id))
            .map(|id| Err(format!("instance {id} vanished")))
            .collect();
        // Each release read once for all its instances.
        let mut runs: HashMap<i64, Result<Arc<Run>, String>> = HashMap::new();
        for (_, n) in &found {
            if !runs.contains_key(n) {
                let run = match self.state.release(&svc.project, &svc.name, *n) {
                    Ok(Some(row)) => Run::from_row(&row).map(Arc::new),
                    Ok(None) => Err("release vanished".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                runs.insert(*n, run);
            }
        }
        let mut jobs = Vec::new();
        let mut indexes = HashMap::new();
        {
            let mut g = lock(&svc.guard);
            for (inst, release) in found {
                match &runs[&release] {
                    Ok(run) => {
                        let watch = g.watches.entry(inst.id.clone()).or_default().clone();
                        jobs.push((inst, release, run.clone(), watch));
                    }
                    Err(e) => out.push(Err(e.clone())),
                }
            }
            for (digest, index) in &g.indexes {
                indexes.insert(digest.clone(), index.clone());
            }
        }
        let (rt, store, data) = (self.rt.clone(), self.store.clone(), self.data_dir.clone());
        let service = svc.name.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut trusted_of = HashMap::new();
            let results: Vec<Result<InstanceDrift, String>> = jobs
                .into_iter()
                .map(|(inst, release, run, watch)| {
                    let image = inst.image.as_str().to_string();
                    let index = match indexes.get(&image) {
                        Some(i) => Arc::clone(i),
                        None => {
                            let i = Arc::new(
                                recast_image::file_index(&store, &inst.image, &inst.image_name)
                                    .map_err(|e| e.to_string())?,
                            );
                            indexes.insert(image.clone(), i.clone());
                            i
                        }
                    };
                    let trusted = *trusted_of.entry(image).or_insert_with(|| {
                        let marker = data.rootfs_marker(inst.image.hex());
                        std::fs::metadata(marker).and_then(|m| m.modified()).ok()
                    });
                    let mut watch = lock(&watch);
                    scan_one(
                        &rt, &service, &inst, release, &run, &index, trusted, mode, &mut watch,
                    )
                })
                .collect();
            (results, indexes)
        })
        .await;
        match done {
            Ok((results, indexes)) => {
                out.extend(results);
                let mut g = lock(&svc.guard);
                for (digest, index) in indexes {
                    g.indexes.entry(digest).or_insert(index);
                }
            }
            Err(e) => out.push(Err(format!("scanning instances of {}: {e}", svc.name))),
        }
        out
    }

    /// Scan instances now (of `service`, or all); with `fix`, replace the drifted ones.
    pub async fn drift(
        self: &Arc<Self>,
        service: Option<&str>,
        mode: Mode,
        fix: bool,
    ) -> Result<(Vec<InstanceDrift>, Vec<String>), ServerError> {
        let mut report = Vec::new();
        let mut replaced = Vec::new();
        for svc in self
            .all_svcs()
            .into_iter()
            .filter(|s| service.is_none_or(|n| s.name == n))
        {
            let ids: Vec<String> = lock(&svc.live)
                .iter()
                .filter(|l| l.exited.is_none())
                .map(|l| l.inst.id.clone())
                .collect();
            let found = self
                .scan_instances(&svc, &ids, mode)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, String>>()
                .map_err(ServerError::Runtime)?;
            for d in found.iter().filter(|d| !d.findings.is_empty()) {
                self.event(
                    &svc,
                    "drift.detected",
                    &format!("instance {}: {}", d.instance, summary(&d.findings)),
                );
                if fix {
                    let _busy = svc.busy.lock().await;
                    replaced.push(self.replace(&svc, &d.instance, "drift").await?);
                }
            }
            lock(&svc.guard).drift = found.clone();
            report.extend(found);
        }
        Ok((report, replaced))
    }

    /// Replace an instance by a new one of the same release: the new one is healthy and in
    /// rotation before the old one is drained. The caller holds the service's `busy` lock.
    /// A failure is also recorded as event `guard.replace_failed` (the guard's own rounds have
    /// nobody else to tell).
    pub(crate) async fn replace(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        id: &str,
        why: &str,
    ) -> Result<String, ServerError> {
        let result = self.replace_inner(svc, id, why).await;
        if let Err(e) = &result {
            self.failed(svc, "guard.replace_failed", &replace_failed(id, why, e));
        }
        result
    }

    async fn replace_inner(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        id: &str,
        why: &str,
    ) -> Result<String, ServerError> {
        let (release, active) = {
            let mut live = lock(&svc.live);
            let l = live.iter_mut().find(|l| l.inst.id == id).ok_or_else(|| {
                ServerError::NotFound(format!("instance {id} of {} vanished", svc.name))
            })?;
            l.replacing = true;
            (l.release, l.active || l.exited.is_some() || !l.healthy)
        };
        let unmark = || {
            if let Some(l) = lock(&svc.live).iter_mut().find(|l| l.inst.id == id) {
                l.replacing = false;
            }
        };
        let run = match self.state.release(&svc.project, &svc.name, release) {
            Ok(Some(row)) => Run::from_row(&row).map_err(|e| {
                ServerError::Internal(format!("release {release} of {}: {e}", svc.name))
            }),
            Ok(None) => Err(ServerError::NotFound(format!(
                "release {release} of {} vanished",
                svc.name
            ))),
            Err(e) => Err(e.into()),
        };
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                unmark();
                return Err(e);
            }
        };
        if run.service.stops_first() {
            // recreate / exclusive volume: never two instances at once, even of one release.
            return self
                .replace_stopping_first(svc, id, why, &run, active)
                .await
                .map_err(ServerError::Runtime);
        }
        let result = async {
            let new = self.start_instance(svc, &run).await?;
            if let Err(e) = self
                .wait_healthy(
                    svc,
                    &new,
                    Instant::now() + run.service.rollout.progress_deadline,
                )
                .await
            {
                self.retire(svc, vec![new]).await;
                return Err(e);
            }
            if active {
                svc.set_active(std::slice::from_ref(&new), true);
            }
            Ok(new)
        }
        .await;
        match result {
            Ok(new) => {
                self.retire(svc, vec![id.to_string()]).await;
                self.event(
                    svc,
                    "instance.replaced",
                    &format!("instance {id} replaced by {new} ({why})"),
                );
                Ok(new)
            }
            Err(e) => {
                unmark();
                Err(ServerError::Runtime(e))
            }
        }
    }

    /// Runs forever: self-healing, `max_age` recycling and scheduled drift scans.
    pub async fn guard(self: Arc<Self>) {
        // Each instance's log files as the last round left them.
        let mut logs: HashMap<String, KeptLogs> = HashMap::new();
        for round in 0u64.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.rotate_logs(&mut logs, round).await;
            let mut by_project: BTreeMap<String, Vec<Arc<Svc>>> = BTreeMap::new();
            for svc in self.all_svcs() {
                by_project.entry(svc.project.clone()).or_default().push(svc);
            }
            for (project, svcs) in by_project {
                // Not for a project this host stopped acting for (cut off from the state).
                if !self.state.holds(&project) {
                    continue;
                }
                // One read per project per round (not one per service): trusted for a service
                // whose current release did not change since.
                let changes: Vec<u64> = svcs
                    .iter()
                    .map(|s| s.current_changes.load(Ordering::SeqCst))
                    .collect();
                let Ok(current) = self.state.current_releases(&project) else {
                    continue;
                };
                for (svc, seen) in svcs.iter().zip(changes) {
                    self.guard_round(svc, &current, seen).await;
                }
            }
        }
    }

    /// One guard round of one service, given its project's current releases as read when its
    /// change count was `seen`.
    async fn guard_round(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        current: &BTreeMap<String, recast_state::Release>,
        seen: u64,
    ) {
        // Never alongside a rollout, rollback or another replacement of this service.
        let Ok(_busy) = svc.busy.try_lock() else {
            return;
        };
        let cur = if svc.current_changes.load(Ordering::SeqCst) == seen {
            current.get(&svc.name).cloned()
        } else {
            self.state.current(&svc.project, &svc.name).ok().flatten()
        };
        let Some(cur) = cur else {
            return;
        };
        // Parsed again only when the current release is another one.
        let key = (cur.number, cur.digest, cur.spec);
        let cached = {
            let g = lock(&svc.guard);
            g.run
                .as_ref()
                .filter(|(k, _)| *k == key)
                .map(|(_, r)| r.clone())
        };
        let run = match cached {
            Some(run) => run,
            None => {
                let row = recast_state::Release {
                    number: key.0,
                    digest: key.1.clone(),
                    spec: key.2.clone(),
                    ..cur
                };
                let Ok(run) = Run::from_row(&row) else {
                    return;
                };
                let run = Arc::new(run);
                lock(&svc.guard).run = Some((key, run.clone()));
                run
            }
        };
        self.heal(svc, &run).await;
        self.recycle(svc, &run).await;
        self.scheduled_scan(svc, &run).await;
    }

    /// Keep every instance's log files bounded (during rollouts too): an instance that writes
    /// without end must not fill the data directory's disk.
    async fn rotate_logs(&self, logs: &mut HashMap<String, KeptLogs>, round: u64) {
        let insts: Vec<recast_runtime::Instance> = self
            .all_svcs()
            .iter()
            .flat_map(|svc| {
                lock(&svc.live)
                    .iter()
                    .map(|l| l.inst.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let rt = self.rt.clone();
        let mut seen = std::mem::take(logs);
        let seen = tokio::task::spawn_blocking(move || {
            let mut now = HashMap::new();
            for inst in &insts {
                // A log whose size and mtime are as the last round left them has nothing to
                // mark nor rotate: only `fstat`ed, through descriptors kept between rounds
                // (rotation truncates in place; every 25th round they are opened again).
                let kept = seen.remove(&inst.id);
                let before = kept.as_ref().and_then(|(files, _)| key_of_files(files));
                if before.is_none() || kept.as_ref().map(|(_, k)| k) != before.as_ref() {
                    rt.rotate_logs(inst);
                }
                let files = match kept {
                    Some((files, _)) if !round.is_multiple_of(25) => Some(files),
                    _ => open_logs(inst),
                };
                if let Some(files) = files
                    && let Some(k) = key_of_files(&files)
                {
                    now.insert(inst.id.clone(), (files, k));
                }
            }
            now
        })
        .await
        .unwrap_or_default();
        *logs = seen;
    }

    /// Replace crashed and unhealthy instances of the live release, with backoff.
    async fn heal(self: &Arc<Self>, svc: &Arc<Svc>, run: &Run) {
        let broken: Vec<(String, String)> = lock(&svc.live)
            .iter()
            .filter(|l| l.release == run.number && !l.replacing && l.active)
            .filter_map(|l| match l.exited {
                Some(status) => Some((
                    l.inst.id.clone(),
                    format!(
                        "exited with status {}",
                        status.map_or_else(|| "unknown".into(), |s| s.to_string())
                    ),
                )),
                None if l.unhealthy() => Some((l.inst.id.clone(), "unhealthy".into())),
                None => None,
            })
            .collect();
        let Some((id, why)) = broken.into_iter().next() else {
            return;
        };
        let now = Instant::now();
        {
            let mut g = lock(&svc.guard);
            if g.next_heal.is_some_and(|t| now < t) {
                return;
            }
            g.crashes
                .retain(|t| now.duration_since(*t) < Duration::from_secs(60));
            g.crashes.push(now);
            let n = g.crashes.len() as u32;
            // Backoff: 0s, 1s, 2s, 4s … up to 30s between replacements.
            g.next_heal = Some(
                now + Duration::from_secs(if n <= 1 {
                    0
                } else {
                    (1u64 << (n - 2).min(5)).min(30)
                }),
            );
            if n >= 3 && !g.crash_loop {
                g.crash_loop = true;
                drop(g);
                self.event(
                    svc,
                    "instance.crash_loop",
                    &format!(
                        "{n} instances of release {} failed within a minute",
                        run.number
                    ),
                );
            } else if n < 3 {
                g.crash_loop = false;
            }
        }
        // A failure is an event (`replace`); the next round tries again, with backoff.
        self.replace(svc, &id, &why).await.ok();
    }

    /// Replace instances older than `max_age`, one at a time; each instance's deadline is
    /// shifted by a stable fraction of `max_age` so a fleet created together is spread out.
    async fn recycle(self: &Arc<Self>, svc: &Arc<Svc>, run: &Run) {
        let Some(max_age) = run.service.max_age else {
            return;
        };
        let old: Option<String> = {
            let live = lock(&svc.live);
            if live.iter().any(|l| l.replacing) {
                return;
            }
            live.iter()
                .filter(|l| l.release == run.number && l.exited.is_none())
                .filter(|l| l.inst.age() >= max_age.mul_f64(1.0 - 0.25 * spread(&l.inst.id)))
                .max_by_key(|l| l.inst.age())
                .map(|l| l.inst.id.clone())
        };
        if let Some(id) = old {
            // A failure is an event (`replace`); the next round tries again.
            self.replace(svc, &id, "max_age").await.ok();
        }
    }

    async fn scheduled_scan(self: &Arc<Self>, svc: &Arc<Svc>, run: &Run) {
        let g = run
            .service
            .guard
            .clone()
            .or_else(|| lock(&self.guards).get(&svc.project).cloned())
            .unwrap_or_default();
        {
            let mut st = lock(&svc.guard);
            if st.last_scan.is_some_and(|t| t.elapsed() < g.scan_interval) {
                return;
            }
            st.last_scan = Some(Instant::now());
        }
        let ids: Vec<String> = lock(&svc.live)
            .iter()
            .filter(|l| l.exited.is_none() && !l.replacing)
            .map(|l| l.inst.id.clone())
            .collect();
        let found: Vec<InstanceDrift> = self
            .scan_instances(svc, &ids, Mode::Metadata)
            .await
            .into_iter()
            .flatten()
            .collect();
        let (live_ids, live_images): (Vec<String>, Vec<String>) = lock(&svc.live)
            .iter()
            .map(|l| (l.inst.id.clone(), l.inst.image.as_str().to_string()))
            .unzip();
        {
            let mut st = lock(&svc.guard);
            st.scans += found.len() as u64;
            st.scan_time += found
                .iter()
                .map(|d| Duration::from_micros(d.scan.micros))
                .sum::<Duration>();
            // Forget what belongs to instances and images no longer running.
            st.watches.retain(|id, _| live_ids.contains(id));
            st.indexes.retain(|d, _| live_images.contains(d));
        }
        for d in found.iter().filter(|d| !d.findings.is_empty()) {
            self.event(
                svc,
                "drift.detected",
                &format!("instance {}: {}", d.instance, summary(&d.findings)),
            );
            if g.on_drift == OnDrift::Replace {
                // A failure is an event (`replace`); the next scan finds the drift again.
                self.replace(svc, &d.instance, "drift").await.ok();
            }
        }
        lock(&svc.guard).drift = found;
    }
}

/// Scan one instance (see `scan_instances`); `watch` is what earlier scans of it kept.
#[allow(clippy::too_many_arguments)]
fn scan_one(
    rt: &recast_runtime::Runtime,
    service: &str,
    inst: &recast_runtime::Instance,
    release: i64,
    run: &Run,
    index: &FileIndex,
    trusted: Option<std::time::SystemTime>,
    mode: Mode,
    watch: &mut InstanceWatch,
) -> Result<InstanceDrift, String> {
    let t = Instant::now();
    if mode == Mode::Full {
        // A full scan trusts nothing an earlier scan kept.
        watch.forget();
    }
    let mut findings = Vec::new();
    if inst.image != run.digest {
        findings.push(Finding {
            path: "image".into(),
            kind: FindingKind::Config,
            detail: format!(
                "runs {} but release {} is {}",
                inst.image, release, run.digest
            ),
        });
    }
    let mut exclude: Vec<String> = ["/proc", "/dev", "/sys", "/tmp"].map(String::from).to_vec();
    exclude.extend(run.service.volumes.iter().map(|v| v.mount.clone()));
    exclude.extend(run.service.tmpfs.iter().cloned());
    exclude.extend(inst.bound_files().iter().map(|f| f.to_string()));
    // The mount points of secret files (on a tmpfs, not in the image).
    exclude.extend(inst.secret_mounts.iter().cloned());
    let (files, stats) = recast_guard::scan(&inst.rootfs(), index, &exclude, mode, trusted)
        .map_err(|e| format!("scanning instance {}: {e}", inst.id))?;
    findings.extend(files);
    let mut processes = 0;
    if let Ok(facts) = rt.facts(inst, watch) {
        let allowed = |p: &str| {
            p == "/tmp"
                || p.starts_with("/proc")
                || p.starts_with("/dev")
                || exclude.iter().any(|v| v == p)
        };
        for m in facts.writable.iter().filter(|m| !allowed(m)) {
            findings.push(Finding {
                path: m.clone(),
                kind: FindingKind::UnexpectedMount,
                detail: "mounted read-write".into(),
            });
        }
        processes = facts.processes.len() as u64;
        findings.extend(recast_guard::process::check_processes(
            &inst.rootfs(),
            index,
            &exclude,
            &facts.processes,
            trusted,
            Some(&facts.runtime),
            &mut watch.exes,
        ));
    }
    // Hashed again only when the file changed (or was replaced) since the last scan.
    if let Some(detail) =
        watch.file_verdict(&inst.dir().join("config.json"), |_| rt.config_drift(inst))
    {
        findings.push(Finding {
            path: "config.json".into(),
            kind: FindingKind::Config,
            detail: format!("runtime spec {detail}"),
        });
    }
    findings.sort();
    Ok(InstanceDrift {
        service: service.to_string(),
        instance: inst.id.clone(),
        release,
        findings,
        scan: ScanStats {
            micros: t.elapsed().as_micros() as u64,
            entries: stats.entries,
            hashed: stats.hashed,
            bytes_hashed: stats.bytes_hashed,
            processes,
        },
    })
}

/// The size and mtime of an instance's two log files.
type LogKey = [(u64, i64, i64); 2];
/// An instance's two log files, open, and their state after the last round.
type KeptLogs = ([std::fs::File; 2], LogKey);

fn open_logs(inst: &recast_runtime::Instance) -> Option<[std::fs::File; 2]> {
    Some([
        std::fs::File::open(inst.stdout_log()).ok()?,
        std::fs::File::open(inst.stderr_log()).ok()?,
    ])
}

fn key_of_files(files: &[std::fs::File; 2]) -> Option<LogKey> {
    use std::os::unix::fs::MetadataExt;
    let k = |f: &std::fs::File| {
        f.metadata()
            .ok()
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec()))
    };
    Some([k(&files[0])?, k(&files[1])?])
}

/// A stable number in [0, 1) per instance id.
fn spread(id: &str) -> f64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 1000) as f64 / 1000.0
}

/// The message of a `guard.replace_failed` event: the instance, why it was being replaced, and
/// why that failed.
fn replace_failed(id: &str, why: &str, e: &ServerError) -> String {
    format!("instance {id} could not be replaced ({why}): {e}")
}

fn summary(f: &[Finding]) -> String {
    let mut parts: Vec<String> = f
        .iter()
        .take(5)
        .map(|f| format!("{} {} ({})", f.kind, f.path, f.detail))
        .collect();
    if f.len() > 5 {
        parts.push(format!("and {} more", f.len() - 5));
    }
    parts.join("; ")
}

/// The guard's `/metrics` counters per service: (project, service, scheduled instance scans,
/// their total time).
pub(crate) fn scan_totals(ctl: &Ctl) -> Vec<(String, String, u64, Duration)> {
    ctl.all_svcs()
        .iter()
        .map(|svc| {
            let g = lock(&svc.guard);
            (svc.project.clone(), svc.name.clone(), g.scans, g.scan_time)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_replacement_is_an_event_naming_the_instance_and_the_reason() {
        let d = tempfile::tempdir().expect("tmp");
        let store = recast_image::Store::open(&d.path().join("store")).expect("store");
        let rt = recast_runtime::Runtime::new(d.path(), store.clone()).expect("runtime");
        let state = recast_state::State::open(&d.path().join("state.db")).expect("state");
        let host = crate::engine::HostConfig::new(Some("test"), &[], crate::engine::LEASE_TIME)
            .expect("host");
        let ctl = Ctl::new(d.path(), state, rt, store, "/bin/false".into(), host);
        let lease = ctl
            .state
            .take_lease("p", "test", 10_000, recast_state::Take::IfFree)
            .expect("state")
            .expect("free");
        ctl.state.hold(&lease);
        let svc = ctl.svc("p", "web");
        let e = ctl
            .replace(&svc, "web-r1-gone", "max_age")
            .await
            .expect_err("no such instance");
        assert_eq!(e.status(), 404, "{e}");
        let events = ctl
            .state
            .events_of("p", "web", "guard.replace_failed")
            .expect("events");
        assert_eq!(
            events
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>(),
            [
                "instance web-r1-gone could not be replaced (max_age): instance web-r1-gone of web vanished"
            ]
        );
    }
}
