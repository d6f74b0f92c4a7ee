//! Operator commands (promote, abort, pause, rollback, destroy) and taking over after a restart.

use super::*;

impl Ctl {
    /// Ask the running rollout of `svc` to move on; an error when there is none.
    pub fn promote(&self, svc: &Svc) -> Result<(), ServerError> {
        Self::rolling_out(svc)?;
        svc.controls.promote();
        tracing::info!(project = %svc.project, service = %svc.name, "promotion requested");
        Ok(())
    }

    /// Roll the running rollout back at once.
    pub fn abort(&self, svc: &Svc) -> Result<(), ServerError> {
        Self::rolling_out(svc)?;
        svc.controls.abort();
        tracing::info!(project = %svc.project, service = %svc.name, "abort requested");
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

    pub(super) fn rolling_out(svc: &Svc) -> Result<(), ServerError> {
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
        let (project, service) = (&svc.project, &svc.name);
        tracing::info!(project, service, to, restore_volumes, "rollback requested");
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
        self.set_current(svc, None)?;
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
        let mut projects: Vec<String> = targets.iter().map(|s| s.project.clone()).collect();
        projects.dedup();
        for p in projects {
            let rows: Vec<RouteRow> = self
                .route_rows()
                .await
                .into_iter()
                .filter(|r| {
                    r.project == p && !(services.is_empty() || services.contains(&r.service))
                })
                .collect();
            self.serve_routes(&p, &rows)
                .await
                .map_err(ServerError::Runtime)?;
            self.state.set_routes(&p, &rows)?;
            if let Some(e) = self.recall_networks(Some(&p)).await.into_iter().next() {
                return Err(ServerError::Runtime(e));
            }
            // A whole project destroyed: no host acts for it any more.
            if services.is_empty() {
                self.state
                    .hand_over(&p, "", self.hosting.config.lease_time.as_millis() as i64)?;
            }
        }
        Ok(removed)
    }

    pub async fn route_rows(&self) -> Vec<RouteRow> {
        self.routes.lock().await.values().cloned().collect()
    }

    /// Take over what an earlier server left: running instances of live releases return to
    /// rotation as they are; interrupted rollouts are rolled back; missing instances are
    /// started again; routes listen again. Returns what it did.
    pub async fn recover(self: &Arc<Self>) -> Result<Vec<String>, String> {
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
        let mut notes: Vec<String> = found
            .cleaned
            .iter()
            .map(|(id, why)| format!("cleaned up instance {id}: {why}"))
            .collect();
        self.take_over(found.running, &mut notes).await?;
        // No rollout runs now: a preview an interrupted blue/green left goes before its
        // instances do.
        let plane = self.plane.clone();
        let closed = tokio::task::spawn_blocking(move || plane.close_previews())
            .await
            .map_err(|e| e.to_string())??;
        notes.extend(closed);
        // Routes of projects another host acts for now stop listening here.
        let routes = self.state.routes().map_err(|e| e.to_string())?;
        let mut others: Vec<String> = routes
            .into_iter()
            .map(|r| r.project)
            .filter(|p| !self.state.holds(p))
            .collect();
        others.dedup();
        for p in others {
            if let Err(e) = self.serve_routes(&p, &[]).await {
                notes.push(e);
            }
        }
        // What could not be brought back is in the notes; the guard keeps trying.
        self.restore(None, &mut notes).await?;
        Ok(notes)
    }

    /// Bring `only` (else every project this host acts for) back as recorded: interrupted
    /// rollouts ended, its network, live releases at full strength, routes listening. Answers
    /// the services that could not be brought back (said in `notes` too).
    pub(crate) async fn restore(
        self: &Arc<Self>,
        only: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        self.end_interrupted(only, notes)?;
        notes.extend(self.recall_networks(only).await);
        let failed = self.settle_live(only, notes).await?;
        self.listen_again(only, notes).await?;
        Ok(failed)
    }

    /// Whether `project` is one `restore(only)` brings back.
    pub(super) fn restoring(&self, only: Option<&str>, project: &str) -> bool {
        only.map_or_else(|| self.state.holds(project), |o| o == project)
    }

    /// Every running instance under supervision: a live release's in rotation as it is, any
    /// other (an interrupted rollout's, a warm blue one) out of it, for `settle_live` to retire.
    /// Instances of a project another host acts for now go.
    async fn take_over(
        self: &Arc<Self>,
        running: Vec<Instance>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        // What the data plane routes now served until the kill; it stays in rotation until
        // `settle_live` has the live release at strength (else a rollout cut after its last old
        // instance went would leave nothing to serve while the old release starts again).
        let plane = self.plane.clone();
        let routed = tokio::task::spawn_blocking(move || plane.routed())
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|e| {
                notes.push(format!("could not read what the data plane routes: {e}"));
                Default::default()
            });
        for inst in running {
            let recast_runtime::Owner::Service(owner) = inst.owner() else {
                // Not a service instance: a throwaway one whose command is gone goes.
                if inst.abandoned() {
                    notes.extend(self.delete_instances(vec![inst]).await);
                }
                continue;
            };
            let mut it = owner.rsplitn(3, '/');
            let (Some(Ok(n)), Some(s), Some(p)) =
                (it.next().map(str::parse::<i64>), it.next(), it.next())
            else {
                notes.push(format!(
                    "instance {} has an unreadable owner {owner}",
                    inst.id
                ));
                continue;
            };
            let (p, s) = (p.to_string(), s.to_string());
            if !self.state.holds(&p) {
                let id = inst.id.clone();
                notes.push(match self.delete_instances(vec![inst]).await.pop() {
                    None => format!(
                        "instance {id} of {p}/{s} went: this host no longer acts for project {p}"
                    ),
                    Some(e) => format!("instance {id} of {p}/{s}: {e}"),
                });
                continue;
            }
            let release = self
                .state
                .release(&p, &s, n)
                .map_err(|e| e.to_string())?
                .map(|r| Run::from_row(&r))
                .transpose()?;
            let live = self.state.current(&p, &s).map_err(|e| e.to_string())?;
            let is_live = live.is_some_and(|l| l.number == n);
            let svc = self.svc(&p, &s);
            match release {
                Some(run) => {
                    let active = is_live || routed.contains(&inst.id);
                    self.adopt(&svc, inst, n, run.service.health, active, true)
                }
                None => {
                    // No record of its release: nothing to run it by; it goes.
                    notes.push(format!(
                        "instance {} of {p}/{s} has no release {n}",
                        inst.id
                    ));
                    notes.extend(self.delete_instances(vec![inst]).await);
                }
            }
        }
        Ok(())
    }

    /// Rollouts the earlier server left unfinished are recorded as ended. Making the new release
    /// current is a rollout's commit point: one that got that far succeeded (only its last
    /// records were missing); any other is recorded as rolled back.
    fn end_interrupted(&self, only: Option<&str>, notes: &mut Vec<String>) -> Result<(), String> {
        const WHY: &str = "interrupted: the server stopped during the rollout";
        for r in self
            .state
            .unfinished_rollouts()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|r| self.restoring(only, &r.project))
        {
            let live = self
                .state
                .current(&r.project, &r.service)
                .map_err(|e| e.to_string())?
                .is_some_and(|c| c.number == r.to_release);
            let (state, outcome, reason, kind, what) = if live {
                let done = "done (recorded after a server restart)";
                (
                    RolloutState::Succeeded,
                    ReleaseOutcome::Succeeded,
                    None,
                    "rollout.finished",
                    done,
                )
            } else {
                let back = "rolled back after a server restart";
                (
                    RolloutState::RolledBack,
                    ReleaseOutcome::RolledBack,
                    Some(WHY),
                    "rollout.rolled_back",
                    back,
                )
            };
            self.state
                .finish_rollout(r.id, state, reason.unwrap_or(what))
                .and_then(|()| {
                    self.state
                        .set_outcome(&r.project, &r.service, r.to_release, outcome, reason)
                })
                .map_err(|e| e.to_string())?;
            let svc = self.svc(&r.project, &r.service);
            self.try_event(&svc, kind, &format!("release {}: {what}", r.to_release))?;
            notes.push(format!(
                "the interrupted rollout of {}/{} to release {}: {what}",
                r.project, r.service, r.to_release
            ));
        }
        Ok(())
    }

    /// Every live release at full strength and nothing else running, through the same
    /// `rollback::settle` the strategy tests check after a simulated restart.
    async fn settle_live(
        self: &Arc<Self>,
        only: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<String>, String> {
        let mut failed = Vec::new();
        for (p, s) in self.state.all_services().map_err(|e| e.to_string())? {
            if !self.restoring(only, &p) {
                continue;
            }
            let Some(cur) = self.state.current(&p, &s).map_err(|e| e.to_string())? else {
                // No live release (an interrupted first rollout): nothing of it may run.
                let svc = self.svc(&p, &s);
                let all = svc.ids(|_| true);
                if !all.is_empty() {
                    notes.push(format!(
                        "{p}/{s}: retired {} (no live release)",
                        all.join(", ")
                    ));
                    svc.switch(&[], &all, Weights::ByCount);
                    self.retire(&svc, all).await;
                }
                continue;
            };
            let run = Run::from_row(&cur)?;
            let fleet = fleet::LocalFleet {
                ctl: self.clone(),
                svc: self.svc(&p, &s),
            };
            match rollout::rollback::settle(&fleet, &run).await {
                Ok(done) => notes.extend(done.into_iter().map(|d| format!("{p}/{s}: {d}"))),
                Err(e) => {
                    notes.push(format!("could not restore {p}/{s}: {e}"));
                    failed.push(format!("{p}/{s}: {e}"));
                }
            }
        }
        Ok(failed)
    }

    /// Routes the data plane serves as recorded (those it serves already keep listening).
    async fn listen_again(
        &self,
        only: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        let mut by_project: BTreeMap<String, Vec<RouteRow>> = BTreeMap::new();
        for row in self.state.routes().map_err(|e| e.to_string())? {
            if !self.restoring(only, &row.project) {
                continue;
            }
            by_project.entry(row.project.clone()).or_default().push(row);
        }
        for (project, rows) in by_project {
            if let Err(e) = self.serve_routes(&project, &rows).await {
                notes.push(e);
            }
        }
        Ok(())
    }
}
