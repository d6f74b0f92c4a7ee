//! Rollout strategies: deterministic procedures that decide from what they observe of a
//! [`Fleet`] (instances, health, exits, traffic counters), from time and from the operator's
//! [`Controls`], and act only through the fleet: start instances of a release, move instances
//! into or out of rotation, split traffic, retire. What they did is told to a [`Journal`].
//!
//! Nothing here knows how instances run: the engine's fleet runs local containers behind
//! recast's proxy, the tests' fake fleet runs on a paused clock, and a Kubernetes fleet would
//! implement the same trait. A new strategy is one module with a `run` function plus its cases
//! in `tests.rs`.
//!
//! Traffic rule: an instance takes traffic only when it is *active* (chosen here) and *healthy*
//! (the fleet's health checks). Taking an instance out of rotation always comes before draining
//! it, and draining before stopping it (both inside [`Fleet::retire`]).

mod blue_green;
mod canary;
mod first;
mod recreate;
pub mod rollback;
mod rolling;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use crate::analysis::{Analyzer, Verdict};
use crate::engine::Run;
use recast_proxy::Snapshot;
use recast_spec::Strategy;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// How often a waiting strategy looks at the fleet and the controls again.
const TICK: Duration = Duration::from_millis(10);

/// One instance as the fleet last observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inst {
    pub id: String,
    pub release: i64,
    /// Chosen to take traffic.
    pub active: bool,
    /// Per its health checks.
    pub healthy: bool,
    /// Passed its checks once, then failed them (not merely still starting).
    pub failing: bool,
    /// Its exit status once it has exited (`Some(None)`: unknown).
    pub exited: Option<Option<i32>>,
    /// The last health event, for messages.
    pub detail: String,
}

/// How a routing change splits traffic between releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// As before the change.
    Keep,
    /// By the number of serving instances of each release.
    ByCount,
    /// Per release, out of the sum.
    Split(BTreeMap<i64, u32>),
}

/// A preview listener (blue/green): the new release's instances on their own address.
#[derive(Debug, Clone)]
pub struct Preview {
    pub listen: SocketAddr,
    pub release: i64,
    pub ids: Vec<String>,
}

/// What a strategy can do to the instances of one service and their traffic.
pub trait Fleet: Sync {
    /// Every instance of the service, as last observed.
    fn instances(&self) -> Vec<Inst>;

    /// Start `n` instances of `release`, out of rotation, and wait until all are healthy by
    /// `deadline`. On failure the ones started are retired and the error says why.
    fn launch(
        &self,
        release: &Run,
        n: usize,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<String>, String>> + Send;

    /// Put `on` into rotation and `off` out of it with these weights, in one routing switch.
    fn switch(&self, on: &[String], off: &[String], weights: Weights);

    /// Take out of rotation, drain, stop and remove.
    fn retire(&self, ids: Vec<String>) -> impl Future<Output = ()> + Send;

    /// Retire `ids` after `after` (those still out of rotation then), in the background.
    fn retire_later(&self, ids: Vec<String>, after: Duration);

    /// While nothing can serve (a stop-first change), requests get this answer; `None` ends it.
    fn unavailable(&self, why: Option<String>);

    /// Keep each client on one release while traffic is split.
    fn sticky(&self, on: bool);

    /// The traffic counters of a release so far.
    fn metrics(&self, release: i64) -> Snapshot;

    /// Open (or with `None` close) the preview listener.
    fn preview(&self, p: Option<Preview>) -> impl Future<Output = Result<(), String>> + Send;

    /// Keep the data `old` leaves before `new` starts on it (exclusive volumes); what was kept.
    fn checkpoint(
        &self,
        new: &Run,
        old: &Run,
    ) -> impl Future<Output = Result<Vec<String>, String>> + Send;
}

/// Where a rollout tells what it does. A write that fails fails the step that made it.
pub trait Journal: Sync {
    /// Progress: step `n` (negative for notes of a rollback or an analysis) and what it does.
    fn step(&self, n: i64, detail: String) -> Result<(), String>;
    /// A recorded event of the service (`rollout.promoted`, `instance.stopped`, …).
    fn event(&self, kind: &str, message: &str) -> Result<(), String>;
    /// Tell the outside (webhooks) without waiting: a notification never blocks a rollback.
    fn notify(&self, event: &str, message: &str);
    /// One analysis window judged.
    fn verdict(&self, v: &Verdict) -> Result<(), String>;
    /// Ask the promotion gates (`rollout.pre_promote` webhooks); a refusal blocks it.
    fn gate(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The operator's requests to a running rollout (`recast promote | abort | pause | resume`).
#[derive(Debug, Default)]
pub struct Controls {
    promote: AtomicBool,
    abort: AtomicBool,
    paused: AtomicBool,
}

impl Controls {
    pub fn reset(&self) {
        for f in [&self.promote, &self.abort, &self.paused] {
            f.store(false, Ordering::SeqCst);
        }
    }
    pub fn promote(&self) {
        self.promote.store(true, Ordering::SeqCst);
    }
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }
    fn take_promote(&self) -> bool {
        self.promote.swap(false, Ordering::SeqCst)
    }
    fn take_abort(&self) -> bool {
        self.abort.swap(false, Ordering::SeqCst)
    }
}

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Succeeded,
    /// Back on the previous release (or, for a first release, nothing left running).
    RolledBack {
        reason: String,
    },
    /// Stopped where it failed (`auto_rollback = false`): nothing undone.
    Stopped {
        reason: String,
    },
}

/// One release replacing another (`old` is `None` for a service's first release).
pub struct Rollout<'a, F, J> {
    pub fleet: &'a F,
    pub journal: &'a J,
    pub controls: &'a Controls,
    pub new: &'a Run,
    pub old: Option<&'a Run>,
}

impl<F: Fleet, J: Journal> Rollout<'_, F, J> {
    /// Run the rollout to its end: it succeeds, rolls back, or (without auto_rollback) stops.
    pub async fn run(&self) -> End {
        self.controls.reset();
        let result = self.strategy().await;
        self.fleet.sticky(false);
        let reason = match result {
            Ok(()) => {
                self.fleet.switch(&[], &[], Weights::ByCount);
                return End::Succeeded;
            }
            Err(reason) => reason,
        };
        if !self.new.service.rollout.auto_rollback && self.old.is_some() {
            // Healthy new instances keep serving beside the old ones until someone rolls back
            // or applies again; broken ones go.
            let broken =
                self.ids(|i| i.release == self.new.number && (i.exited.is_some() || !i.healthy));
            self.fleet.retire(broken).await;
            let noted = self
                .journal
                .step(-1, format!("stopped (auto_rollback is off): {reason}"));
            return End::Stopped {
                reason: with_note(reason, noted),
            };
        }
        // The way back never waits for anything but instances: no analysis, no gate.
        let noted = self.journal.step(-1, format!("rolling back: {reason}"));
        let (took, restored) = rollback::restore(self).await;
        let noted = noted.and(restored).and_then(|()| match self.old {
            Some(o) => self.journal.step(
                -1,
                format!(
                    "all traffic back on release {} {:.2} ms after the failure",
                    o.number,
                    took.as_secs_f64() * 1000.0
                ),
            ),
            None => Ok(()),
        });
        End::RolledBack {
            reason: with_note(reason, noted),
        }
    }

    async fn strategy(&self) -> Result<(), String> {
        let Some(old) = self.old else {
            return first::run(self).await;
        };
        match &self.new.service.rollout.strategy {
            Strategy::Rolling { .. } => rolling::run(self, old).await,
            Strategy::BlueGreen { .. } => blue_green::run(self, old).await,
            Strategy::Canary { .. } => canary::run(self, old).await,
            Strategy::Recreate => recreate::run(self, old).await,
        }
    }

    fn ids(&self, f: impl Fn(&Inst) -> bool) -> Vec<String> {
        self.fleet
            .instances()
            .into_iter()
            .filter(|i| f(i))
            .map(|i| i.id)
            .collect()
    }

    fn count(&self, release: i64, f: impl Fn(&Inst) -> bool) -> usize {
        self.fleet
            .instances()
            .iter()
            .filter(|i| i.release == release && f(i))
            .count()
    }

    fn instances_wanted(&self) -> usize {
        self.new.service.instances as usize
    }

    fn progress_deadline(&self) -> Instant {
        Instant::now() + self.new.service.rollout.progress_deadline
    }

    /// Fail if the operator aborted or an instance of the new release exited or turned
    /// unhealthy after passing its checks; while the rollout is paused, wait here.
    async fn checkpoint(&self) -> Result<(), String> {
        loop {
            if self.controls.take_abort() {
                return Err("aborted by `recast abort`".into());
            }
            self.check_new()?;
            if !self.controls.paused() {
                return Ok(());
            }
            sleep(TICK).await;
        }
    }

    fn check_new(&self) -> Result<(), String> {
        for i in self
            .fleet
            .instances()
            .iter()
            .filter(|i| i.release == self.new.number)
        {
            if let Some(status) = i.exited {
                return Err(format!(
                    "instance {} exited with status {}",
                    i.id,
                    status.map_or_else(|| "unknown".into(), |s| s.to_string())
                ));
            }
            if i.failing {
                return Err(format!("instance {} became unhealthy: {}", i.id, i.detail));
            }
        }
        Ok(())
    }

    /// Stay `d` watching the new release; fail if an instance exits or turns unhealthy.
    async fn watch(&self, d: Duration) -> Result<(), String> {
        let until = Instant::now() + d;
        loop {
            self.checkpoint().await?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            sleep(TICK.min(until - now)).await;
        }
    }

    /// An analyzer of the new release against `stable`, when the rollout has an analysis.
    fn analyzer(&self, stable: Option<i64>) -> Option<Analyzer> {
        let a = self.new.service.rollout.analysis.clone()?;
        Some(Analyzer::new(
            a,
            self.fleet.metrics(self.new.number),
            stable.map(|s| self.fleet.metrics(s)).unwrap_or_default(),
        ))
    }

    /// Hold where the rollout is until `pause` has passed (not counting time paused by
    /// `recast pause`) or, without a pause, until `recast promote`. Meanwhile an exit or an
    /// unhealthy new instance fails it, `recast abort` fails it at once, and the analysis (if
    /// any) judges every interval against release `stable`.
    async fn hold(
        &self,
        pause: Option<Duration>,
        stable: Option<i64>,
        analyzer: &mut Option<Analyzer>,
    ) -> Result<(), String> {
        let mut remaining = pause;
        let mut last = Instant::now();
        loop {
            sleep(TICK).await;
            if self.controls.take_abort() {
                return Err("aborted by `recast abort`".into());
            }
            self.check_new()?;
            let paused = self.controls.paused();
            let now = Instant::now();
            if !paused {
                if self.controls.take_promote() {
                    self.journal.event(
                        "rollout.promoted",
                        &format!("release {} promoted by `recast promote`", self.new.number),
                    )?;
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
                let canary = self.fleet.metrics(self.new.number);
                let base = stable.map(|s| self.fleet.metrics(s)).unwrap_or_default();
                let (v, outcome) =
                    a.verdict(self.new.number, canary, base, crate::engine::now_ms());
                self.journal
                    .step(-2, format!("analysis {}: {}", v.result, v.reason))?;
                self.journal.verdict(&v)?;
                outcome?;
            }
        }
    }

    /// Bring the new release to `want` active instances (started healthy as needed), with
    /// these weights, in one routing switch.
    async fn grow(&self, want: usize, weights: Weights) -> Result<(), String> {
        let have = self.count(self.new.number, |i| i.active);
        let ids = if want > have {
            self.fleet
                .launch(self.new, want - have, self.progress_deadline())
                .await?
        } else {
            Vec::new()
        };
        self.fleet.switch(&ids, &[], weights);
        Ok(())
    }
}

/// What `recast plan` says an update of `svc` will do, step by step (`ready` tells when a new
/// instance counts as healthy, `deadline` when a stalled rollout goes back).
pub fn describe(svc: &recast_spec::Service, ready: &str, deadline: String) -> Vec<String> {
    match &svc.rollout.strategy {
        Strategy::Rolling { .. } => rolling::describe(svc, ready, deadline),
        Strategy::BlueGreen { .. } => blue_green::describe(svc, ready),
        Strategy::Canary { .. } => canary::describe(svc, ready, deadline),
        Strategy::Recreate => recreate::describe(svc, ready, deadline),
    }
}

fn with_note(reason: String, noted: Result<(), String>) -> String {
    match noted {
        Ok(()) => reason,
        Err(e) => format!("{reason} (and recording it failed: {e})"),
    }
}

fn format_duration(d: Duration) -> String {
    recast_spec::values::format_duration(d)
}
