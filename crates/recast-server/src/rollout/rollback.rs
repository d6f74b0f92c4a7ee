//! The way back: after a failed rollout (the old release at full strength, the new one gone),
//! on `recast rollback` (a warm release is a routing switch; otherwise it starts again), and
//! after a control-plane restart (the live release at full strength, nothing else).
//! None of these waits for an analysis or a gate: only for instances to be healthy.

use super::{Fleet, Journal, Rollout, Weights};
use crate::engine::Run;
use std::time::Duration;
use tokio::time::Instant;

/// Undo a failed rollout. Returns how long it took until no request went to the new release
/// any more, and whether recording what it did worked.
pub(super) async fn restore<F: Fleet, J: Journal>(
    r: &Rollout<'_, F, J>,
) -> (Duration, Result<(), String>) {
    let t0 = Instant::now();
    let new = r.new.number;
    let doomed = r.ids(|i| i.release == new);
    let mut noted = Ok(());
    let stop_first = r.new.service.stops_first() || r.old.is_some_and(|o| o.service.stops_first());
    if stop_first {
        // Recreate: the new release stops before the old one starts again.
        if let Some(o) = r.old {
            r.fleet.unavailable(Some(format!(
                "release {new} failed; release {} is starting again; retry shortly",
                o.number
            )));
        }
        let list = doomed.join(", ");
        r.fleet.retire(doomed.clone()).await;
        noted = r
            .journal
            .event("instance.stopped", &format!("instance(s) {list} stopped"));
    }
    let mut switched = None;
    if let Some(old) = r.old {
        // The warm old instances in, the new release out, in one switch.
        let warm = r.ids(|i| i.release == old.number && i.exited.is_none());
        if !warm.is_empty() {
            r.fleet.switch(&warm, &doomed, Weights::ByCount);
            switched = Some(t0.elapsed());
        }
        let want = old.service.instances as usize;
        if warm.len() < want {
            let deadline = Instant::now() + old.service.rollout.progress_deadline;
            if let Ok(ids) = r.fleet.launch(old, want - warm.len(), deadline).await {
                r.fleet.switch(&ids, &doomed, Weights::ByCount);
                switched.get_or_insert(t0.elapsed());
            }
        }
    }
    let switched = switched.unwrap_or_else(|| {
        r.fleet.switch(&[], &doomed, Weights::ByCount);
        t0.elapsed()
    });
    if let Err(e) = r.fleet.preview(None).await {
        noted = noted.and(Err(e));
    }
    r.fleet.retire(doomed).await;
    r.fleet.unavailable(None);
    (switched, noted)
}

/// `recast rollback` of a service whose releases may run side by side: all traffic to release
/// `to` (started again unless enough of it is still warm), then the release it left goes.
/// Returns whether it was warm (a routing switch only).
pub async fn switch_back<F: Fleet>(fleet: &F, to: &Run, from: i64) -> Result<bool, String> {
    let n = to.service.instances as usize;
    let warm: Vec<String> = fleet
        .instances()
        .into_iter()
        .filter(|i| i.release == to.number && i.healthy && i.exited.is_none())
        .map(|i| i.id)
        .collect();
    let was_warm = warm.len() >= n;
    let mut chosen = warm;
    if !was_warm {
        let deadline = Instant::now() + to.service.rollout.progress_deadline;
        chosen.extend(fleet.launch(to, n - chosen.len(), deadline).await?);
    }
    let others: Vec<String> = fleet
        .instances()
        .into_iter()
        .filter(|i| !chosen.contains(&i.id))
        .map(|i| i.id)
        .collect();
    fleet.switch(&chosen, &others, Weights::ByCount);
    let doomed = fleet
        .instances()
        .into_iter()
        .filter(|i| i.release == from)
        .map(|i| i.id)
        .collect();
    fleet.retire_later(doomed, Duration::ZERO);
    Ok(was_warm)
}

/// After a control-plane restart: the live release at full strength and in rotation, every
/// other instance (an interrupted rollout's, a warm blue one) retired. Instances of the live
/// release that still run are kept as they are, and what is in rotation stays there until the
/// live release is back at strength (a rollout cut after its last old instance went serves
/// from the new release meanwhile). Returns what it did.
pub async fn settle<F: Fleet>(fleet: &F, live: &Run) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let stale: Vec<String> = fleet
        .instances()
        .into_iter()
        .filter(|i| i.release != live.number || i.exited.is_some())
        .map(|i| i.id)
        .collect();
    let retire_stale = |notes: &mut Vec<String>| {
        if !stale.is_empty() {
            notes.push(format!(
                "retired instance(s) {} (not of live release {})",
                stale.join(", "),
                live.number
            ));
            fleet.switch(&[], &stale, Weights::ByCount);
        }
    };
    // A service that stops first never runs two releases at once, even after a restart.
    let stop_first = live.service.stops_first();
    if stop_first && !stale.is_empty() {
        retire_stale(&mut notes);
        fleet.retire(stale.clone()).await;
    }
    let kept: Vec<String> = fleet
        .instances()
        .into_iter()
        .filter(|i| !stale.contains(&i.id))
        .map(|i| i.id)
        .collect();
    fleet.switch(&kept, &[], Weights::ByCount);
    let want = live.service.instances as usize;
    if kept.len() < want {
        let deadline = Instant::now() + live.service.rollout.progress_deadline;
        let ids = fleet.launch(live, want - kept.len(), deadline).await?;
        notes.push(format!(
            "started {} instance(s) of release {}",
            ids.len(),
            live.number
        ));
        fleet.switch(&ids, &[], Weights::ByCount);
    }
    // Otherwise what served goes only once the live release is whole again.
    if !stop_first && !stale.is_empty() {
        retire_stale(&mut notes);
        fleet.retire(stale).await;
    }
    Ok(notes)
}
