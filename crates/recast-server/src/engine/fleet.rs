//! The engine's side of a rollout: the local [`Fleet`] (instances run by the runtime behind
//! recast's proxy) and the [`Journal`] that records a rollout in the state store, the apply's
//! log and the project's webhooks.

use super::{Ctl, Svc, hook_body, lock};
use crate::analysis::Verdict;
use crate::engine::Run;
use crate::rollout::{Fleet, Inst, Journal, Preview, Weights};
use recast_dataplane::proto as dp;
use recast_proxy::Snapshot;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One service's instances on this machine.
pub(crate) struct LocalFleet {
    pub ctl: Arc<Ctl>,
    pub svc: Arc<Svc>,
}

impl Fleet for LocalFleet {
    fn instances(&self) -> Vec<Inst> {
        lock(&self.svc.live)
            .iter()
            .map(|l| Inst {
                id: l.inst.id.clone(),
                release: l.release,
                active: l.active,
                healthy: l.healthy,
                failing: l.unhealthy(),
                exited: l.exited,
                detail: l.detail(),
            })
            .collect()
    }

    async fn launch(
        &self,
        release: &Run,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<String>, String> {
        self.ctl
            .start_healthy(&self.svc, release, n, deadline.into_std())
            .await
    }

    fn switch(&self, on: &[String], off: &[String], weights: Weights) {
        self.svc.switch(on, off, weights);
    }

    async fn retire(&self, ids: Vec<String>) {
        self.ctl.retire(&self.svc, ids).await;
    }

    fn retire_later(&self, ids: Vec<String>, after: Duration) {
        let (ctl, svc) = (self.ctl.clone(), self.svc.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            // Not while another rollout decides about them.
            let _busy = svc.busy.lock().await;
            let still: Vec<String> = lock(&svc.live)
                .iter()
                .filter(|l| !l.active && ids.contains(&l.inst.id))
                .map(|l| l.inst.id.clone())
                .collect();
            ctl.retire(&svc, still).await;
        });
    }

    fn unavailable(&self, why: Option<String>) {
        self.svc.set_unavailable(why);
    }

    fn sticky(&self, on: bool) {
        self.svc.set_sticky(on);
    }

    fn metrics(&self, release: i64) -> Snapshot {
        self.svc.metrics(release)
    }

    async fn preview(&self, p: Option<Preview>) -> Result<(), String> {
        let preview = p.map(|p| dp::PreviewState {
            listen: p.listen,
            release: p.release,
            backends: p.ids,
        });
        let (plane, key) = (self.ctl.plane.clone(), self.svc.key());
        tokio::task::spawn_blocking(move || plane.set_preview(&key, preview))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn checkpoint(&self, new: &Run, old: &Run) -> Result<Vec<String>, String> {
        let taken = self
            .ctl
            .snapshot_volumes(&self.svc, &new.service, new.number, Some(old.number))
            .await?;
        Ok(taken
            .iter()
            .map(|s| format!("volume {} copied to {}", s.volume, s.path))
            .collect())
    }
}

/// Where one rollout is recorded.
pub(crate) struct Record<'a> {
    pub ctl: &'a Ctl,
    pub svc: &'a Svc,
    pub rollout: i64,
    pub release: i64,
    pub apply: Option<u64>,
    /// The step running (its number, what it does, since when), for the log's step lines.
    pub current: std::sync::Mutex<Option<(i64, String, Instant)>>,
}

impl Record<'_> {
    /// Log the end of the step running, if any (a new step begins, or the rollout ended).
    pub(crate) fn finish(&self) {
        if let Some((step, detail, since)) = lock(&self.current).take() {
            let (project, service, release) = (&self.svc.project, &self.svc.name, self.release);
            let ms = since.elapsed().as_millis() as u64;
            tracing::info!(
                project,
                service,
                release,
                step,
                detail,
                ms,
                "rollout step finished"
            );
        }
    }

    /// The log line of a step: a new step (`n > 0`) ends the one before; `-1` tells of a
    /// rollback (a warning); `-2`, an analysis, is logged by `verdict` with its numbers.
    fn log_step(&self, n: i64, detail: &str) {
        let (project, service, release, apply) =
            (&self.svc.project, &self.svc.name, self.release, self.apply);
        if n > 0 {
            self.finish();
            tracing::info!(
                project,
                service,
                release,
                apply,
                step = n,
                detail,
                "rollout step started"
            );
            *lock(&self.current) = Some((n, detail.to_string(), Instant::now()));
        } else if n == -1 {
            self.finish();
            tracing::warn!(project, service, release, apply, detail, "rollback step");
        }
    }
}

impl Journal for Record<'_> {
    fn step(&self, n: i64, detail: String) -> Result<(), String> {
        self.log_step(n, &detail);
        if let Some(a) = self.apply {
            self.ctl.log(a, format!("{}: {detail}", self.svc.name));
        }
        *lock(&self.svc.rollout) = Some(detail.clone());
        self.ctl
            .state
            .rollout_step(self.rollout, n, &detail)
            .map_err(|e| format!("recording the rollout: {e}"))
    }

    fn event(&self, kind: &str, message: &str) -> Result<(), String> {
        self.ctl.try_event(self.svc, kind, message)
    }

    fn notify(&self, event: &str, message: &str) {
        self.ctl.hook(self.svc, event, self.release, message);
    }

    fn verdict(&self, v: &Verdict) -> Result<(), String> {
        crate::oplog::verdict(&self.svc.project, &self.svc.name, v);
        lock(&self.svc.verdicts).push(v.clone());
        let json = serde_json::to_string(v).map_err(|e| e.to_string())?;
        self.ctl.try_event(self.svc, "analysis.verdict", &json)
    }

    async fn gate(&self) -> Result<(), String> {
        let hooks: Vec<recast_spec::Webhook> = lock(&self.ctl.hooks)
            .get(&self.svc.project)
            .cloned()
            .unwrap_or_default();
        for h in hooks
            .into_iter()
            .filter(|h| h.events.iter().any(|e| e == "rollout.pre_promote"))
        {
            let body = hook_body(
                "rollout.pre_promote",
                self.svc,
                self.release,
                "promotion requested",
            );
            let name = h.name.clone();
            let r = tokio::task::spawn_blocking(move || super::call_hook(&h, &body))
                .await
                .map_err(|e| e.to_string())?;
            r.map_err(|e| format!("pre_promote webhook {name} blocked the promotion: {e}"))?;
        }
        Ok(())
    }
}
