//! Instances of a service: started, watched until healthy, supervised, retired.

use super::*;

impl Ctl {
    pub(crate) async fn start_instance(&self, svc: &Arc<Svc>, run: &Run) -> Result<String, String> {
        self.ensure_image(run).await?;
        let s = &run.service;
        let (secret_env, secret_files) = self.instance_secrets(run)?;
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
            attach: self.attach_for(&svc.project, s),
            secret_env,
            secret_files,
        };
        let rt = self.rt.clone();
        let inst = tokio::task::spawn_blocking(move || rt.start(&spec))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("starting an instance of release {}: {e}", run.number))?;
        if let Err(e) = self
            .state
            .add_instance(&inst.id, &svc.project, &svc.name, run.number)
        {
            // Unrecorded, it would be unknown to a restarted server: it goes at once.
            let rt = self.rt.clone();
            let gone = inst.clone();
            let deleted = tokio::task::spawn_blocking(move || rt.delete(&gone))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let also = deleted
                .err()
                .map(|d| format!("; removing it failed too: {d}"));
            return Err(format!(
                "recording instance {} failed: {e}{}",
                inst.id,
                also.unwrap_or_default()
            ));
        }
        let id = inst.id.clone();
        self.adopt(svc, inst, run.number, s.health.clone(), false, false);
        Ok(id)
    }

    /// Kill and delete instances at once (no drain: they are out of every routing table or
    /// their host stops acting for them); answers what failed, each naming its instance.
    pub(crate) async fn delete_instances(&self, gone: Vec<Instance>) -> Vec<String> {
        let rt = self.rt.clone();
        tokio::task::spawn_blocking(move || {
            gone.iter()
                .filter_map(|i| {
                    rt.delete(i)
                        .err()
                        .map(|e| format!("deleting instance {}: {e}", i.id))
                })
                .collect()
        })
        .await
        .unwrap_or_else(|e| vec![format!("deleting instances: {e}")])
    }

    /// Put a running instance under supervision.
    pub(super) fn adopt(
        &self,
        svc: &Arc<Svc>,
        inst: Instance,
        release: i64,
        health: recast_spec::Health,
        active: bool,
        healthy: bool,
    ) {
        lock(&svc.live).push(Live {
            inst,
            release,
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

    /// How long retiring an instance of `release` waits for its requests and connections: the
    /// release's `drain_timeout` (`DRAIN_TIMEOUT` if its record cannot be read).
    fn drain_timeout(&self, svc: &Svc, release: i64) -> Duration {
        match self.state.release(&svc.project, &svc.name, release) {
            Ok(Some(row)) => Run::from_row(&row).map_or(DRAIN_TIMEOUT, |r| r.service.drain_timeout),
            _ => DRAIN_TIMEOUT,
        }
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
        // The data plane keeps them (out of every table) for the drain.
        svc.publish();
        let mut tasks = Vec::new();
        for l in gone {
            let rt = self.rt.clone();
            let state = self.state.clone();
            let (plane, key) = (self.plane.clone(), svc.key());
            let drain = self.drain_timeout(svc, l.release);
            tasks.push(tokio::spawn(async move {
                let id = l.inst.id.clone();
                // Stopped anyway after the drain timeout, or when the data plane cannot say.
                let _drained =
                    tokio::task::spawn_blocking(move || plane.drain(&key, &id, drain)).await;
                let inst = l.inst.clone();
                let stopped = tokio::task::spawn_blocking(move || {
                    // The service's stop signal, SIGKILL after its stop_timeout.
                    rt.stop_gracefully(&inst);
                    rt.delete(&inst)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
                let forgotten = state.remove_instance(&l.inst.id).map_err(|e| e.to_string());
                stopped
                    .and(forgotten)
                    .map_err(|e| format!("retiring instance {}: {e}", l.inst.id))
            }));
        }
        for t in tasks {
            let done = t.await.map_err(|e| e.to_string()).and_then(|r| r);
            if let Err(e) = done {
                // Out of rotation already; what is left is reported, never silently kept.
                self.failed(svc, "instance.retire_failed", &e);
            }
        }
    }

    /// Start `n` instances of `run` in parallel and wait for all to be healthy by `deadline`.
    /// On failure the ones started are retired and the reason returned.
    pub(super) async fn start_healthy(
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

    /// Probe instances when due; take unhealthy or exited ones out of rotation (and back in
    /// when they recover). Runs forever.
    /// Once a second, make sure the data plane answers: one that crashed or was stopped is
    /// started again and told everything again (`recast_dataplane::Client`). Runs forever.
    pub async fn keep_data_plane(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let plane = self.plane.clone();
            let kept = tokio::task::spawn_blocking(move || plane.keep()).await;
            if let Ok(Err(e)) = kept {
                tracing::warn!("the data plane: {e}");
            }
        }
    }

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
}
