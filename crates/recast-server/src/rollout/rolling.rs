//! Rolling: replace the old release's instances in batches bounded by `max_surge` (extra
//! instances at once) and `max_unavailable` (serving instances that may be missing), each batch
//! healthy (for `min_healthy_time`, and judged by the analysis if there is one) before the next.

use super::{Fleet, Journal, Rollout, Weights, format_duration};
use crate::engine::Run;
use recast_spec::{Count, Service, Strategy};
use tokio::time::Instant;

pub(super) async fn run<F: Fleet, J: Journal>(
    r: &Rollout<'_, F, J>,
    old: &Run,
) -> Result<(), String> {
    let Strategy::Rolling {
        max_surge,
        max_unavailable,
        min_healthy_time,
    } = r.new.service.rollout.strategy.clone()
    else {
        return Err("not a rolling rollout".into());
    };
    let (new, n) = (r.new.number, r.instances_wanted());
    let surge = max_surge.resolve(n as u32, true) as usize;
    let unavail = max_unavailable.resolve(n as u32, false) as usize;
    let progress = r.new.service.rollout.progress_deadline;
    let stalled = || {
        format!(
            "no progress within progress_deadline ({})",
            format_duration(progress)
        )
    };
    let mut deadline = r.progress_deadline();
    let mut k = 0;
    loop {
        r.checkpoint().await?;
        let old_ids = r.ids(|i| i.release != new);
        let new_ready = r.count(new, |i| i.active);
        if new_ready >= n && old_ids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(stalled());
        }
        // Old instances may go while enough instances serve without them.
        let removable = (old_ids.len() + new_ready)
            .saturating_sub(n.saturating_sub(unavail))
            .min(old_ids.len());
        if removable > 0 {
            k += 1;
            r.journal.step(
                k,
                format!("retiring {removable} instance(s) of release {}", old.number),
            )?;
            r.fleet.retire(old_ids[..removable].to_vec()).await;
            continue;
        }
        let all_new = r.count(new, |_| true);
        let add = (n + surge)
            .saturating_sub(old_ids.len() + all_new)
            .min(n - all_new)
            .max(usize::from(all_new < n && surge == 0 && unavail == 0));
        if add == 0 {
            return Err(
                "the rollout cannot make progress with these max_surge/max_unavailable settings"
                    .into(),
            );
        }
        k += 1;
        r.journal.step(
            k,
            format!("starting {add} instance(s) of release {new} ({new_ready}/{n} ready)"),
        )?;
        // The fleet gives up at the deadline itself: a start is never abandoned half-way.
        let ids = r.fleet.launch(r.new, add, deadline).await.map_err(|e| {
            if Instant::now() >= deadline {
                stalled()
            } else {
                e
            }
        })?;
        if !min_healthy_time.is_zero() {
            // The new instances must stay healthy this long before they count.
            r.watch(min_healthy_time).await?;
        }
        r.checkpoint().await?;
        r.fleet.switch(&ids, &[], Weights::ByCount);
        // With an analysis block, each batch is judged before the next one starts.
        let mut analyzer = r.analyzer(Some(old.number));
        if let Some(settle) = analyzer.as_ref().map(|a| a.settle_time()) {
            r.journal.step(
                k,
                format!("judging the batch for {}", format_duration(settle)),
            )?;
            r.hold(Some(settle), Some(old.number), &mut analyzer)
                .await?;
        }
        deadline = r.progress_deadline();
    }
}

/// What `recast plan` says a rolling rollout will do.
pub(super) fn describe(svc: &Service, ready: &str, deadline: String) -> Vec<String> {
    let Strategy::Rolling {
        max_surge,
        max_unavailable,
        min_healthy_time,
    } = &svc.rollout.strategy
    else {
        return Vec::new();
    };
    let n = svc.instances;
    let surge = max_surge.resolve(n, true);
    let unavail = max_unavailable.resolve(n, false);
    let batch = (surge + unavail).max(1);
    let batches = n.div_ceil(batch);
    let count = |c: &Count| match c {
        Count::Absolute(n) => n.to_string(),
        Count::Percent(p) => format!("{p}%"),
    };
    vec![
        format!(
            "rolling in {batches} batch(es) of up to {batch}: start {surge} new, {ready}{}, put in rotation, drain and stop old (max_surge {}, max_unavailable {})",
            if min_healthy_time.is_zero() {
                String::new()
            } else {
                format!(
                    " and stay healthy for {}",
                    format_duration(*min_healthy_time)
                )
            },
            count(max_surge),
            count(max_unavailable)
        ),
        deadline,
    ]
}
