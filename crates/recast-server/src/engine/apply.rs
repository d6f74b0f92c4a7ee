//! Applying a spec: build, test, plan, then a rollout per changed service, recorded.

use super::*;
use crate::record::SealedSecret;
use recast_api::v1::Promotion;

/// How an apply goes besides its spec: the sealed secrets, a promotion, a saved plan's
/// fingerprint.
pub(super) struct How {
    secrets: BTreeMap<String, SealedSecret>,
    promote: Option<Promotion>,
    expect_plan: Option<String>,
}

/// A new release of a service: its settings, image digest, sealed secrets, and who made it.
pub(super) struct NewService<'a> {
    model: &'a Service,
    digest: &'a str,
    secrets: BTreeMap<String, SealedSecret>,
    by: &'a str,
}

impl Ctl {
    /// Start applying a spec. Fails at once if the spec is invalid, a secret has no value or
    /// another apply of the same project is running.
    pub fn start_apply(self: &Arc<Self>, input: ApplyInput) -> Result<u64, ServerError> {
        // Location, message and hint only: the API never echoes a spec file's content.
        let project = recast_spec::load_with(&input.path, &input.inputs).map_err(|d| {
            ServerError::Invalid(format!("the spec is invalid:\n{}", d.without_source()))
        })?;
        crate::project::environment_chosen(&project).map_err(ServerError::Invalid)?;
        let sealed = self.seal_secrets(&project, &input.secrets)?;
        let promote = input.promote;
        let expect_plan = input.expect_plan;
        let identity = crate::project::Identity::of(&project);
        let name = identity.name.clone();
        // Another host acting for it: refused now, naming that host.
        if !self.state.holds(&name)
            && let Some(l) = self.state.lease(&name)?
            && l.expires_ms > self.state.db_now_ms()?
            && let Some(elsewhere) = self.held_elsewhere(&name)
        {
            return Err(ServerError::Conflict(elsewhere));
        }
        let id = self.next_apply.fetch_add(1, Ordering::Relaxed);
        let moved = self.reserve(&name, &identity, id)?;
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
        tracing::info!(project = %name, apply = id, "apply received");
        let ctl = self.clone();
        tokio::spawn(async move {
            let result = match ctl.act_for(&name).await {
                Ok(()) => crate::project::claim(&ctl.state, &identity)
                    .map_err(|e| e.to_string())
                    .map(drop),
                Err(e) => Err(e),
            };
            let result = match result {
                Ok(()) => {
                    let how = How {
                        secrets: sealed,
                        promote,
                        expect_plan,
                    };
                    ctl.apply(id, project, &name, how).await
                }
                Err(e) => Err(e),
            };
            ctl.apply_ended(id, result);
            lock(&ctl.applying).remove(&name);
        });
        Ok(id)
    }

    /// Mark `name` as being applied by apply `id` — refused while it moves to another host or
    /// another apply runs — and claim (or check) its spec directory; what moved, if it did.
    fn reserve(
        &self,
        name: &str,
        identity: &crate::project::Identity,
        id: u64,
    ) -> Result<Option<String>, ServerError> {
        let mut applying = lock(&self.applying);
        if let Some(to) = lock(&self.hosting.moving).get(name) {
            return Err(ServerError::Conflict(format!(
                "project {name} is being moved to host {to}\n  hint: apply there once it serves it (`recast hosts`)"
            )));
        }
        if let Some(other) = applying.get(name) {
            let started = lock(&self.applies)
                .get(other)
                .map(|a| a.started_ms)
                .unwrap_or(0);
            return Err(ServerError::Conflict(format!(
                "an apply of project \"{name}\" is already running (apply {other}, started {}s ago)\n  hint: wait for it, or follow it with `recast status`",
                now_ms().saturating_sub(started) / 1000
            )));
        }
        // Under the lock, so two directories cannot claim one name at once. A project new to
        // this host is claimed once its lease is taken (`act_for`).
        let ownership = if self.state.holds(name) {
            crate::project::claim(&self.state, identity)?
        } else {
            crate::project::check(&self.state, identity)?
        };
        applying.insert(name.to_string(), id);
        Ok(match ownership {
            crate::project::Ownership::Moved { from } => Some(format!(
                "project {name} moved from {from} to {}",
                identity.dir.display()
            )),
            _ => None,
        })
    }

    /// Record how apply `id` ended.
    fn apply_ended(&self, id: u64, result: Result<(), String>) {
        let mut applies = lock(&self.applies);
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
            crate::oplog::apply_ended(a);
        }
    }

    pub fn apply_status(&self, id: u64) -> Option<ApplyStatus> {
        lock(&self.applies).get(&id).cloned()
    }

    pub(super) fn log(&self, apply: u64, msg: String) {
        if let Some(a) = lock(&self.applies).get_mut(&apply) {
            a.log.push(LogLine {
                at_ms: now_ms(),
                message: msg,
            });
        }
    }

    pub(super) fn outcome(&self, apply: u64, o: ServiceOutcome) {
        if let Some(a) = lock(&self.applies).get_mut(&apply) {
            a.services.push(o);
        }
    }

    pub(super) async fn apply(
        self: &Arc<Self>,
        apply: u64,
        project: Project,
        name: &str,
        how: How,
    ) -> Result<(), String> {
        let How {
            secrets,
            promote,
            expect_plan,
        } = how;
        lock(&self.hooks).insert(
            name.to_string(),
            project.webhooks.values().cloned().collect(),
        );
        lock(&self.guards).insert(name.to_string(), project.guard.clone());
        let plan = self
            .prepare(
                apply,
                &project,
                name,
                &secrets,
                promote.as_ref(),
                expect_plan,
            )
            .await?;
        // Routes first, so that traffic flows as soon as instances are healthy.
        self.sync_routes(name, &project).await?;
        let mut tasks = Vec::new();
        for sp in plan.services {
            let ctl = self.clone();
            let name = name.to_string();
            let svc_model = project.services.get(&sp.service).cloned();
            let service = sp.service.clone();
            let svc_secrets: BTreeMap<String, SealedSecret> = svc_model
                .iter()
                .flat_map(|m| m.secrets())
                .filter_map(|n| Some((n.to_string(), secrets.get(n)?.clone())))
                .collect();
            let by = match &promote {
                Some(p) => format!("promote-release from {}", p.from),
                None => "apply".to_string(),
            };
            tasks.push((
                service,
                tokio::spawn(async move {
                    let outcome = ctl
                        .change_service(apply, &name, sp, svc_model, svc_secrets, &by)
                        .await;
                    ctl.outcome(apply, outcome);
                }),
            ));
        }
        for (service, t) in tasks {
            if let Err(e) = t.await {
                // A rollout task that panicked: its service is reported failed, never missing.
                self.outcome(
                    apply,
                    ServiceOutcome {
                        service,
                        release: None,
                        outcome: ServiceChange::Failed,
                        reason: Some(format!("the rollout task failed: {e}")),
                    },
                );
            }
        }
        Ok(())
    }

    /// What apply `apply` does to one service of its plan: nothing, remove it, or roll out a
    /// new release.
    async fn change_service(
        self: &Arc<Self>,
        apply: u64,
        name: &str,
        sp: plan::ServicePlan,
        svc_model: Option<Service>,
        secrets: BTreeMap<String, SealedSecret>,
        by: &str,
    ) -> ServiceOutcome {
        let svc = self.svc(name, &sp.service);
        match (sp.action, svc_model) {
            (Action::Unchanged, _) => ServiceOutcome {
                service: sp.service.clone(),
                release: sp.current_release,
                outcome: ServiceChange::Unchanged,
                reason: None,
            },
            (Action::Remove, _) => {
                self.log(apply, format!("removing service {}", sp.service));
                match self.destroy_service(&svc, false).await {
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
            (_, Some(model)) => {
                let new = NewService {
                    model: &model,
                    digest: sp.digest.as_deref().unwrap_or_default(),
                    secrets,
                    by,
                };
                self.deploy(apply, &svc, new).await
            }
            (_, None) => ServiceOutcome {
                service: sp.service.clone(),
                release: None,
                outcome: ServiceChange::Failed,
                reason: Some("not in the spec".into()),
            },
        }
    }

    /// Build (or, for a promotion, take the other environment's digest), plan, test and push:
    /// the plan to roll out, or why the apply stops here.
    async fn prepare(
        &self,
        apply: u64,
        project: &Project,
        name: &str,
        secrets: &BTreeMap<String, SealedSecret>,
        promote: Option<&Promotion>,
        expect_plan: Option<String>,
    ) -> Result<plan::Plan, String> {
        // A promotion builds nothing: the service runs the digest live in the other environment.
        let (built, digests) = match promote {
            None => {
                let built = self.build_images(apply, project, name).await?;
                let digests: BTreeMap<String, String> = built
                    .iter()
                    .map(|b| (b.image.clone(), b.digest.to_string()))
                    .collect();
                (built, digests)
            }
            Some(p) => {
                let digest = self.promotion_source(project, name, p)?;
                self.log(
                    apply,
                    format!("promoting {} at {digest} from {}", p.service, p.from),
                );
                let image = project.services[&p.service].image.clone();
                (Vec::new(), BTreeMap::from([(image, digest)]))
            }
        };
        let recorded =
            plan::Recorded::gather(&self.state, name, project).map_err(|e| e.to_string())?;
        let mut plan = plan::plan(
            project,
            name,
            &digests,
            &crate::record::secret_digests(secrets),
            &recorded,
        );
        if let Some(p) = promote {
            plan.services.retain(|s| s.service == p.service);
        }
        if let Some(want) = expect_plan
            && plan.fingerprint() != want
        {
            return Err("the saved plan no longer holds: the spec, an image, a secret or the state moved since it was made\n  hint: make a new one with `recast plan -out FILE`".into());
        }
        let refusals = plan.refusals();
        if !refusals.is_empty() {
            return Err(format!(
                "refused by the require block of environment {}:\n  {}",
                project.environment.as_deref().unwrap_or(""),
                refusals.join("\n  ")
            ));
        }
        for sp in &plan.services {
            if let Some(v) = &sp.verified {
                self.log(apply, format!("{}: {v}", sp.service));
            }
        }
        self.test_images(apply, project, &plan, &built).await?;
        self.push_images(apply, project, name, &plan, &built)
            .await?;
        Ok(plan)
    }

    /// Make the listening routes match the project's spec.
    pub(super) async fn sync_routes(&self, project: &str, spec: &Project) -> Result<(), String> {
        let rows: Vec<RouteRow> = spec
            .routes
            .values()
            .map(|r| RouteRow {
                project: project.into(),
                name: r.name.clone(),
                listen: r.listen.to_string(),
                service: r.service.clone(),
                timeout_ms: r.timeout.as_millis().max(1) as u64,
                protocol: r.protocol,
            })
            .collect();
        let services: Vec<Service> = spec.services.values().cloned().collect();
        self.sync_network(project, &services).await?;
        self.serve_routes(project, &rows).await?;
        self.state
            .set_routes(project, &rows)
            .map_err(|e| e.to_string())
    }

    /// Roll a service out to a new release.
    pub(super) async fn deploy(
        self: &Arc<Self>,
        apply: u64,
        svc: &Arc<Svc>,
        new: NewService<'_>,
    ) -> ServiceOutcome {
        let NewService {
            model,
            digest,
            secrets,
            by,
        } = new;
        let fail = |reason: String| ServiceOutcome {
            service: svc.name.clone(),
            release: None,
            outcome: ServiceChange::Failed,
            reason: Some(reason),
        };
        let spec_hash = crate::record::canonical_hash(
            model,
            digest,
            &model.image,
            &crate::record::secret_digests(&secrets),
        );
        let record = ReleaseRecord::from_spec(model, digest, &model.image)
            .with_source(self.image_source(&svc.project, &model.image, digest))
            .with_secrets(secrets);
        let json = record.to_json();
        let rel = match self.state.new_release(&NewRelease {
            project: &svc.project,
            service: &svc.name,
            digest,
            image: &model.image,
            spec: &json,
            spec_hash: &spec_hash,
            by,
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
    pub(super) async fn rollout(
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
        crate::oplog::rollout_started(svc, new.number, old.map(|o| o.number), strategy, apply);
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
            current: Default::default(),
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
        record.finish();
        *lock(&svc.rollout) = None;
        match end {
            End::Succeeded => {
                let live = self
                    .set_current(svc, Some(new.number))
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
    pub(super) fn end_rollout(
        &self,
        svc: &Svc,
        rid: i64,
        release: i64,
        state: RolloutState,
        detail: &str,
    ) {
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
            let (project, service) = (&svc.project, &svc.name);
            tracing::error!(
                project,
                service,
                release,
                "recording the end of the rollout: {e}"
            );
        }
    }

    /// Record an event; a failed write is an error the caller decides about.
    pub(crate) fn try_event(&self, svc: &Svc, kind: &str, msg: &str) -> Result<(), String> {
        crate::oplog::event(&svc.project, &svc.name, kind, msg);
        self.state
            .event(&svc.project, &svc.name, kind, msg)
            .map(drop)
            .map_err(|e| format!("recording event {kind}: {e}"))
    }

    /// Fire-and-forget webhooks for `event` (never waited on, so they cannot block a rollback).
    pub(super) fn hook(&self, svc: &Svc, event: &str, release: i64, message: &str) {
        let hooks: Vec<recast_spec::Webhook> = lock(&self.hooks)
            .get(&svc.project)
            .cloned()
            .unwrap_or_default();
        for h in hooks
            .into_iter()
            .filter(|h| h.events.iter().any(|e| e == event))
        {
            let body = hook_body(event, svc, release, message);
            let what = format!(
                "{}/{}: webhook {} on {event}",
                svc.project, svc.name, h.name
            );
            tokio::task::spawn_blocking(move || {
                // A notification never blocks a rollout; a failed one is said, not retried.
                if let Err(e) = call_hook(&h, &body) {
                    tracing::warn!("{what} failed: {e}");
                }
            });
        }
    }

    /// Build the project's images (the base tags as recast.lock pins them).
    async fn build_images(
        &self,
        apply: u64,
        project: &Project,
        name: &str,
    ) -> Result<Vec<build::Built>, String> {
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
            let (image, digest, cached) = (&b.image, b.digest.to_string(), b.cached);
            tracing::info!(project = %name, apply, image, digest, cached, "image built");
        }
        Ok(built)
    }

    /// Test every image a changing service will run; the first failure stops the apply.
    async fn test_images(
        &self,
        apply: u64,
        project: &Project,
        plan: &plan::Plan,
        built: &[build::Built],
    ) -> Result<(), String> {
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
            let checks = outcome.checks.len();
            tracing::info!(apply, image = %img, checks, "image passed its test");
        }
        Ok(())
    }
}
