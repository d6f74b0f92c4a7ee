//! A fake fleet on the runtime's (paused) clock: instances that become healthy, exit or turn
//! unhealthy when a case says so, traffic counters that grow with time, and the invariants
//! checked on every call a strategy makes.

use super::{Fleet, Inst, Journal, Preview, Weights};
use crate::analysis::Verdict;
use crate::engine::Run;
use recast_proxy::Snapshot;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How the `nth` (0-based) instance started of a release behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Exits this long after it started.
    Exits(Duration),
    /// Never passes its health checks.
    NeverHealthy,
    /// Healthy, then unhealthy this long after it started.
    TurnsUnhealthy(Duration),
}

/// What one case does to the new release.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Instance faults of the new release: (nth instance, fault).
    pub faults: Vec<(usize, Fault)>,
    /// The share of the new release's requests that fail (5xx).
    pub error_rate: f64,
    /// The new release gets no requests (an analysis can only be inconclusive).
    pub no_traffic: bool,
    /// The promotion gate refuses.
    pub gate_refuses: bool,
}

#[derive(Debug, Clone)]
struct FInst {
    id: String,
    release: i64,
    active: bool,
    started: Instant,
    fault: Option<Fault>,
}

/// How long a healthy instance takes to pass its checks.
pub const START: Duration = Duration::from_millis(800);

#[derive(Default)]
struct World {
    insts: Vec<FInst>,
    weights: Option<BTreeMap<i64, u32>>,
    started: BTreeMap<i64, usize>,
    traffic: BTreeMap<i64, (f64, f64)>,
    last: Option<Instant>,
    later: Vec<(Instant, Vec<String>)>,
    violations: Vec<String>,
    /// When a fault first became visible.
    pub fault_seen: Option<Instant>,
    /// When the new release last stopped getting traffic while a fault was visible.
    pub new_out_at: Option<Instant>,
    pub calls: usize,
    pub verdicts_after_fault: usize,
    pub unavailable: bool,
}

pub struct FakeFleet {
    w: Mutex<World>,
    pub new: i64,
    pub script: Script,
    /// Fewest instances that must serve (healthy, in rotation) whenever the strategy retires
    /// an instance of the old release; 0 for stop-first strategies.
    pub floor: usize,
    /// A fault-free old release keeps at least one instance serving throughout.
    pub never_empty: bool,
    /// Steps the journal recorded.
    pub steps: Mutex<Vec<String>>,
}

impl FakeFleet {
    pub fn new(new: i64, script: Script, floor: usize, never_empty: bool) -> FakeFleet {
        FakeFleet {
            w: Mutex::new(World::default()),
            new,
            script,
            floor,
            never_empty,
            steps: Mutex::new(Vec::new()),
        }
    }

    /// Instances of `release` already running (as an earlier rollout left them).
    pub fn seed(&self, release: i64, n: usize) {
        let mut w = self.lock();
        let t = Instant::now() - START;
        for k in 0..n {
            w.insts.push(FInst {
                id: format!("r{release}-{k}"),
                release,
                active: true,
                started: t,
                fault: None,
            });
        }
        *w.started.entry(release).or_default() += n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }
    pub fn calls(&self) -> usize {
        self.lock().calls
    }
    pub fn fault_seen(&self) -> Option<Instant> {
        self.lock().fault_seen
    }
    pub fn new_out_at(&self) -> Option<Instant> {
        self.lock().new_out_at
    }
    pub fn verdicts_after_fault(&self) -> usize {
        self.lock().verdicts_after_fault
    }
    pub fn unavailable(&self) -> bool {
        self.lock().unavailable
    }

    /// Run the background retirements that are due.
    pub fn run_timers(&self) {
        let now = Instant::now();
        let mut w = self.lock();
        let due: Vec<String> = w
            .later
            .iter()
            .filter(|(at, _)| *at <= now)
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        w.later.retain(|(at, _)| *at > now);
        w.insts.retain(|i| i.active || !due.contains(&i.id));
    }

    /// The serving instances (in rotation and healthy) by release.
    pub fn serving(&self) -> BTreeMap<i64, usize> {
        let now = Instant::now();
        let w = self.lock();
        let mut m = BTreeMap::new();
        for i in w.insts.iter().filter(|i| i.active && healthy(i, now)) {
            *m.entry(i.release).or_default() += 1;
        }
        m
    }

    pub fn releases_present(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self.lock().insts.iter().map(|i| i.release).collect();
        v.dedup();
        v
    }

    /// Observe: advance the traffic counters, note faults, check the invariants.
    fn observe(&self, w: &mut World, what: &str) {
        let now = Instant::now();
        w.calls += 1;
        let dt = w.last.map_or(0.0, |l| (now - l).as_secs_f64());
        w.last = Some(now);
        let serving: Vec<&FInst> = w
            .insts
            .iter()
            .filter(|i| i.active && healthy(i, now))
            .collect();
        let mut counts: BTreeMap<i64, f64> = BTreeMap::new();
        for i in &serving {
            *counts.entry(i.release).or_default() += 1.0;
        }
        let shares: BTreeMap<i64, f64> = match &w.weights {
            Some(ws) => {
                let total: f64 = counts.keys().map(|r| *ws.get(r).unwrap_or(&0) as f64).sum();
                counts
                    .keys()
                    .map(|r| (*r, *ws.get(r).unwrap_or(&0) as f64 / total.max(1.0)))
                    .collect()
            }
            None => {
                let total: f64 = counts.values().sum();
                counts
                    .iter()
                    .map(|(r, c)| (*r, c / total.max(1.0)))
                    .collect()
            }
        };
        for (r, share) in &shares {
            if *r == self.new && self.script.no_traffic {
                continue;
            }
            let n = 200.0 * dt * share;
            let rate = if *r == self.new {
                self.script.error_rate
            } else {
                0.0
            };
            let t = w.traffic.entry(*r).or_default();
            t.0 += n;
            t.1 += n * rate;
        }
        let fault_visible = w
            .insts
            .iter()
            .any(|i| i.release == self.new && faulty(i, now));
        if fault_visible && w.fault_seen.is_none() {
            w.fault_seen = Some(now);
        }
        let new_serving = serving.iter().any(|i| i.release == self.new);
        if w.fault_seen.is_some() && !new_serving && w.new_out_at.is_none() {
            w.new_out_at = Some(now);
        }
        if self.never_empty && serving.is_empty() && !w.unavailable {
            w.violations
                .push(format!("{what}: nothing serves at {:?}", now.elapsed()));
        }
        for i in &w.insts {
            if i.active && i.release != self.new && faulty(i, now) {
                w.violations
                    .push(format!("{what}: old instance {} broke", i.id));
            }
        }
    }
}

fn healthy(i: &FInst, now: Instant) -> bool {
    let age = now.saturating_duration_since(i.started);
    match i.fault {
        None => age >= START,
        Some(Fault::NeverHealthy) => false,
        Some(Fault::Exits(t)) => age >= START && age < t,
        Some(Fault::TurnsUnhealthy(t)) => age >= START && age < t,
    }
}

fn exited(i: &FInst, now: Instant) -> bool {
    matches!(i.fault, Some(Fault::Exits(t)) if now.saturating_duration_since(i.started) >= t)
}

fn faulty(i: &FInst, now: Instant) -> bool {
    let age = now.saturating_duration_since(i.started);
    match i.fault {
        None => false,
        // Only its deadline tells a slow start from one that never ends.
        Some(Fault::NeverHealthy) => false,
        Some(Fault::Exits(t)) | Some(Fault::TurnsUnhealthy(t)) => age >= t,
    }
}

impl Fleet for FakeFleet {
    fn instances(&self) -> Vec<Inst> {
        let now = Instant::now();
        let mut w = self.lock();
        self.observe(&mut w, "instances");
        w.insts
            .iter()
            .map(|i| Inst {
                id: i.id.clone(),
                release: i.release,
                active: i.active,
                healthy: healthy(i, now),
                failing: matches!(i.fault, Some(Fault::TurnsUnhealthy(t)) if now.saturating_duration_since(i.started) >= t),
                exited: exited(i, now).then_some(Some(1)),
                detail: if faulty(i, now) { "probe failed".into() } else { String::new() },
            })
            .collect()
    }

    async fn launch(
        &self,
        release: &Run,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<String>, String> {
        let ids: Vec<String> = {
            let mut w = self.lock();
            self.observe(&mut w, "launch");
            (0..n)
                .map(|_| {
                    let k = {
                        let c = w.started.entry(release.number).or_default();
                        *c += 1;
                        *c - 1
                    };
                    let fault = (release.number == self.new)
                        .then(|| self.script.faults.iter().find(|(nth, _)| *nth == k))
                        .flatten()
                        .map(|(_, f)| *f);
                    let id = format!("r{}-{k}", release.number);
                    w.insts.push(FInst {
                        id: id.clone(),
                        release: release.number,
                        active: false,
                        started: Instant::now(),
                        fault,
                    });
                    id
                })
                .collect()
        };
        loop {
            tokio::time::sleep(super::TICK).await;
            let now = Instant::now();
            let (all_healthy, broken) = {
                let w = self.lock();
                let mine: Vec<&FInst> = w.insts.iter().filter(|i| ids.contains(&i.id)).collect();
                (
                    mine.iter().all(|i| healthy(i, now)),
                    mine.iter().find(|i| exited(i, now)).map(|i| i.id.clone()),
                )
            };
            let failed = match broken {
                Some(id) => Some(format!("instance {id} exited")),
                None if all_healthy => return Ok(ids),
                None if now >= deadline => Some("not healthy by the deadline".into()),
                None => None,
            };
            if let Some(e) = failed {
                self.retire(ids).await;
                return Err(e);
            }
        }
    }

    fn switch(&self, on: &[String], off: &[String], weights: Weights) {
        let mut w = self.lock();
        for i in w.insts.iter_mut() {
            if on.contains(&i.id) {
                i.active = true;
            } else if off.contains(&i.id) {
                i.active = false;
            }
        }
        match weights {
            Weights::Keep => {}
            Weights::ByCount => w.weights = None,
            Weights::Split(s) => w.weights = Some(s),
        }
        self.observe(&mut w, "switch");
    }

    async fn retire(&self, ids: Vec<String>) {
        let now = Instant::now();
        let mut w = self.lock();
        let serving_after = w
            .insts
            .iter()
            .filter(|i| i.active && healthy(i, now) && !ids.contains(&i.id))
            .count();
        let takes_old = w
            .insts
            .iter()
            .any(|i| ids.contains(&i.id) && i.release != self.new && healthy(i, now));
        if takes_old && w.fault_seen.is_none() && serving_after < self.floor {
            w.violations.push(format!(
                "retiring {ids:?} leaves {serving_after} serving, fewer than {}",
                self.floor
            ));
        }
        w.insts.retain(|i| !ids.contains(&i.id));
        self.observe(&mut w, "retire");
    }

    fn retire_later(&self, ids: Vec<String>, after: Duration) {
        self.lock().later.push((Instant::now() + after, ids));
    }

    fn unavailable(&self, why: Option<String>) {
        self.lock().unavailable = why.is_some();
    }

    fn sticky(&self, _on: bool) {}

    fn metrics(&self, release: i64) -> Snapshot {
        let mut w = self.lock();
        self.observe(&mut w, "metrics");
        let (n, e) = w.traffic.get(&release).copied().unwrap_or_default();
        let mut latency = Snapshot::default().latency;
        latency[0] = n as u64;
        Snapshot {
            requests: n as u64,
            errors_5xx: e as u64,
            latency,
            ..Default::default()
        }
    }

    async fn preview(&self, _p: Option<Preview>) -> Result<(), String> {
        Ok(())
    }

    async fn checkpoint(&self, _new: &Run, _old: &Run) -> Result<Vec<String>, String> {
        Ok(vec!["volume data copied".into()])
    }
}

impl Journal for FakeFleet {
    fn step(&self, n: i64, detail: String) -> Result<(), String> {
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{n}: {detail}"));
        Ok(())
    }

    fn event(&self, _kind: &str, _message: &str) -> Result<(), String> {
        Ok(())
    }

    fn notify(&self, _event: &str, _message: &str) {}

    fn verdict(&self, _v: &Verdict) -> Result<(), String> {
        let mut w = self.lock();
        if w.fault_seen
            .is_some_and(|t| t + Duration::from_millis(50) < Instant::now())
        {
            w.verdicts_after_fault += 1;
        }
        Ok(())
    }

    async fn gate(&self) -> Result<(), String> {
        if self.script.gate_refuses {
            return Err("pre_promote webhook gate blocked the promotion".into());
        }
        Ok(())
    }
}
