//! Guard: prove every running instance still matches its image and release, and replace — never
//! repair — what drifted, crashed, turned unhealthy, or grew older than `max_age`.

use crate::engine::{Ctl, Run, Svc, lock};
use recast_guard::{Finding, Mode};
use recast_spec::OnDrift;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per service: when it was last scanned, recent crashes (for backoff), last findings.
#[derive(Default)]
pub struct GuardState {
    last_scan: Option<Instant>,
    crashes: Vec<Instant>,
    next_heal: Option<Instant>,
    crash_loop: bool,
    pub drift: Vec<InstanceDrift>,
}

/// The findings of one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDrift {
    pub service: String,
    pub instance: String,
    pub release: i64,
    pub findings: Vec<Finding>,
}

impl Ctl {
    /// Scan one instance: its files against the image's file index, its mounts, its process.
    async fn scan_instance(
        &self,
        svc: &Svc,
        id: &str,
        mode: Mode,
    ) -> Result<InstanceDrift, String> {
        let (inst, release) = {
            let live = lock(&svc.live);
            let l = live
                .iter()
                .find(|l| l.inst.id == id)
                .ok_or("instance vanished")?;
            (l.inst.clone(), l.release)
        };
        let run = self
            .state
            .release(&svc.project, &svc.name, release)
            .map_err(|e| e.to_string())?
            .ok_or("release vanished")?;
        let run = Run::from_row(&run)?;
        let (rt, store, data) = (self.rt.clone(), self.store.clone(), self.data_dir.clone());
        let service = svc.name.clone();
        tokio::task::spawn_blocking(move || {
            let mut findings = Vec::new();
            if inst.image != run.digest {
                findings.push(Finding {
                    path: "image".into(),
                    kind: "config".into(),
                    detail: format!(
                        "runs {} but release {} is {}",
                        inst.image, release, run.digest
                    ),
                });
            }
            let index = recast_image::file_index(&store, &inst.image, &inst.image_name)
                .map_err(|e| e.to_string())?;
            let mut exclude: Vec<String> =
                ["/proc", "/dev", "/sys", "/tmp"].map(String::from).to_vec();
            exclude.extend(run.service.volumes.iter().map(|v| v.mount.clone()));
            exclude.extend(run.service.tmpfs.iter().cloned());
            let marker = data
                .join("rootfs")
                .join(inst.image.hex())
                .join(".recast-unpacked");
            let trusted = std::fs::metadata(marker).and_then(|m| m.modified()).ok();
            let (files, _) = recast_guard::scan(&inst.rootfs(), &index, &exclude, mode, trusted)
                .map_err(|e| format!("scanning instance {}: {e}", inst.id))?;
            findings.extend(files);
            if let Ok(facts) = rt.facts(&inst) {
                let allowed = |p: &str| {
                    p == "/tmp"
                        || p.starts_with("/proc")
                        || p.starts_with("/dev")
                        || exclude.iter().any(|v| v == p)
                };
                for m in facts.writable.iter().filter(|m| !allowed(m)) {
                    findings.push(Finding {
                        path: m.clone(),
                        kind: "unexpected_mount".into(),
                        detail: "mounted read-write".into(),
                    });
                }
                if let Ok((args, env)) = rt.expected_process(&inst) {
                    if facts.cmdline != args {
                        findings.push(Finding {
                            path: "command".into(),
                            kind: "config".into(),
                            detail: format!("{:?} -> {:?}", args, facts.cmdline),
                        });
                    }
                    let (mut want, mut have) = (env, facts.env);
                    want.sort();
                    have.sort();
                    if want != have {
                        let changed: Vec<String> = have
                            .iter()
                            .filter(|e| !want.contains(e))
                            .map(|e| e.split('=').next().unwrap_or("").to_string())
                            .collect();
                        findings.push(Finding {
                            path: "environment".into(),
                            kind: "config".into(),
                            detail: format!("differs: {}", changed.join(", ")),
                        });
                    }
                }
            }
            findings.sort();
            Ok(InstanceDrift {
                service,
                instance: inst.id.clone(),
                release,
                findings,
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Scan instances now (of `service`, or all); with `fix`, replace the drifted ones.
    pub async fn drift(
        self: &Arc<Self>,
        service: Option<&str>,
        mode: Mode,
        fix: bool,
    ) -> Result<(Vec<InstanceDrift>, Vec<String>), String> {
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
            let mut found = Vec::new();
            for id in ids {
                found.push(self.scan_instance(&svc, &id, mode).await?);
            }
            for d in found.iter().filter(|d| !d.findings.is_empty()) {
                self.event(
                    &svc,
                    "drift.detected",
                    &format!("instance {}: {}", d.instance, summary(&d.findings)),
                );
                if fix {
                    let _busy = svc.busy.lock().await;
                    match self.replace(&svc, &d.instance, "drift").await {
                        Ok(new) => replaced.push(new),
                        Err(e) => {
                            return Err(format!("replacing drifted instance {}: {e}", d.instance));
                        }
                    }
                }
            }
            lock(&svc.guard).drift = found.clone();
            report.extend(found);
        }
        Ok((report, replaced))
    }

    /// Replace an instance by a new one of the same release: the new one is healthy and in
    /// rotation before the old one is drained. The caller holds the service's `busy` lock.
    pub(crate) async fn replace(
        self: &Arc<Self>,
        svc: &Arc<Svc>,
        id: &str,
        why: &str,
    ) -> Result<String, String> {
        let (release, active) = {
            let mut live = lock(&svc.live);
            let l = live
                .iter_mut()
                .find(|l| l.inst.id == id)
                .ok_or("instance vanished")?;
            l.replacing = true;
            (l.release, l.active || l.exited.is_some() || !l.healthy)
        };
        let row = self
            .state
            .release(&svc.project, &svc.name, release)
            .map_err(|e| e.to_string())?
            .ok_or("release vanished")?;
        let run = Run::from_row(&row)?;
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
                if let Some(l) = lock(&svc.live).iter_mut().find(|l| l.inst.id == id) {
                    l.replacing = false;
                }
                Err(e)
            }
        }
    }

    /// Runs forever: self-healing, `max_age` recycling and scheduled drift scans.
    pub async fn guard(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.rotate_logs().await;
            for svc in self.all_svcs() {
                // Never alongside a rollout, rollback or another replacement of this service.
                let Ok(_busy) = svc.busy.try_lock() else {
                    continue;
                };
                let Ok(Some(cur)) = self.state.current(&svc.project, &svc.name) else {
                    continue;
                };
                let Ok(run) = Run::from_row(&cur) else {
                    continue;
                };
                self.heal(&svc, &run).await;
                self.recycle(&svc, &run).await;
                self.scheduled_scan(&svc, &run).await;
            }
        }
    }

    /// Keep every instance's log files bounded (during rollouts too): an instance that writes
    /// without end must not fill the data directory's disk.
    async fn rotate_logs(&self) {
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
        let _ = tokio::task::spawn_blocking(move || {
            for inst in &insts {
                rt.rotate_logs(inst);
            }
        })
        .await;
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
        let _ = self.replace(svc, &id, &why).await;
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
            let _ = self.replace(svc, &id, "max_age").await;
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
        let mut found = Vec::new();
        for id in ids {
            if let Ok(d) = self.scan_instance(svc, &id, Mode::Metadata).await {
                found.push(d);
            }
        }
        for d in found.iter().filter(|d| !d.findings.is_empty()) {
            self.event(
                svc,
                "drift.detected",
                &format!("instance {}: {}", d.instance, summary(&d.findings)),
            );
            if g.on_drift == OnDrift::Replace {
                let _ = self.replace(svc, &d.instance, "drift").await;
            }
        }
        lock(&svc.guard).drift = found;
    }
}

/// A stable number in [0, 1) per instance id.
fn spread(id: &str) -> f64 {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 1000) as f64 / 1000.0
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
