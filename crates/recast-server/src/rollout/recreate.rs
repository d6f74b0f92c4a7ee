//! Recreate: drain and stop every old instance, keep the data it leaves (exclusive volumes),
//! then start the new release. Requests get a clear "starting" answer while nothing serves.

use super::{Fleet, Journal, Rollout, Weights};
use crate::engine::Run;
use recast_spec::Service;

pub(super) async fn run<F: Fleet, J: Journal>(
    r: &Rollout<'_, F, J>,
    old: &Run,
) -> Result<(), String> {
    r.fleet.unavailable(Some(format!(
        "release {} is starting in place of release {} (a recreate rollout stops the old release first); retry shortly",
        r.new.number, old.number
    )));
    let result = replace(r, old).await;
    r.fleet.unavailable(None);
    result
}

async fn replace<F: Fleet, J: Journal>(r: &Rollout<'_, F, J>, old: &Run) -> Result<(), String> {
    let (new, n) = (r.new.number, r.instances_wanted());
    let old_ids = r.ids(|i| i.release != new);
    r.journal.step(
        1,
        format!(
            "stopping {} instance(s) of release {} (recreate: no instance serves until release {new} is healthy)",
            old_ids.len(),
            old.number,
        ),
    )?;
    let list = old_ids.join(", ");
    r.fleet.retire(old_ids).await;
    r.journal
        .event("instance.stopped", &format!("instance(s) {list} stopped"))?;
    if r.new.service.exclusive_volumes().next().is_some() {
        r.journal
            .step(2, "snapshotting exclusive volume(s)".into())?;
        for kept in r.fleet.checkpoint(r.new, old).await? {
            r.journal.step(2, kept)?;
        }
    }
    r.checkpoint().await?;
    r.journal
        .step(3, format!("starting {n} instance(s) of release {new}"))?;
    let ids = r.fleet.launch(r.new, n, r.progress_deadline()).await?;
    r.checkpoint().await?;
    r.journal.event(
        "instance.started",
        &format!("instance(s) {} of release {new} started", ids.join(", ")),
    )?;
    r.fleet.switch(&ids, &[], Weights::ByCount);
    r.journal.step(
        4,
        format!("{n} instance(s) of release {new} healthy and in rotation"),
    )
}

/// What `recast plan` says a recreate rollout will do.
pub(super) fn describe(svc: &Service, ready: &str, deadline: String) -> Vec<String> {
    let mut v = vec!["drain and stop every old instance (downtime: the route answers 503 until the new release is healthy)".to_string()];
    let exclusive: Vec<&str> = svc.exclusive_volumes().map(|v| v.name.as_str()).collect();
    if !exclusive.is_empty() {
        v.push(format!(
            "snapshot exclusive volume(s) {} (the last {} kept; `recast rollback --restore-volumes` restores)",
            exclusive.join(", "),
            crate::engine::KEEP_SNAPSHOTS
        ));
    }
    v.push(format!(
        "start {} new instance(s), {ready}, then route traffic to them",
        svc.instances
    ));
    v.push(format!(
        "{deadline}: the new release stops, then the old one starts again"
    ));
    v
}
