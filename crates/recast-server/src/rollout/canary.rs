//! Canary: each step moves that share of requests to the new release (on enough instances to
//! carry it) and holds it for `pause` (or until `recast promote`) under analysis; then the new
//! release takes everything and the old one is retired.

use super::{Fleet, Journal, Rollout, Weights, format_duration};
use crate::engine::Run;
use recast_spec::{Service, Strategy};
use std::collections::BTreeMap;

pub(super) async fn run<F: Fleet, J: Journal>(
    r: &Rollout<'_, F, J>,
    old: &Run,
) -> Result<(), String> {
    let Strategy::Canary { steps, sticky } = r.new.service.rollout.strategy.clone() else {
        return Err("not a canary rollout".into());
    };
    let (new, n) = (r.new.number, r.instances_wanted());
    let split = |w: u32| Weights::Split(BTreeMap::from([(old.number, 100 - w), (new, w)]));
    r.fleet.sticky(sticky);
    let mut analyzer = r.analyzer(Some(old.number));
    for (i, s) in steps.iter().enumerate() {
        let want = (n * usize::from(s.weight)).div_ceil(100).max(1);
        r.grow(want, split(u32::from(s.weight))).await?;
        if let Some(a) = analyzer.as_mut() {
            a.reset(r.fleet.metrics(new), r.fleet.metrics(old.number));
        }
        let hold = match s.pause {
            Some(p) => format!("for {}", format_duration(p)),
            None => "until `recast promote`".into(),
        };
        r.journal.step(
            i as i64 + 1,
            format!(
                "step {}/{}: {}% of requests to release {new} on {want} instance(s), {hold}",
                i + 1,
                steps.len(),
                s.weight,
            ),
        )?;
        r.journal
            .notify("rollout.step", &format!("step {} at {}%", i + 1, s.weight));
        r.hold(s.pause, Some(old.number), &mut analyzer).await?;
    }
    r.journal.gate().await?;
    r.checkpoint().await?;
    // Full strength, then everything to the new release.
    r.grow(n, split(100)).await?;
    r.journal.step(
        steps.len() as i64 + 1,
        format!(
            "100% of requests to release {new}; retiring release {}",
            old.number
        ),
    )?;
    r.journal.event(
        "rollout.promoted",
        &format!("release {new} takes all traffic"),
    )?;
    r.journal.notify("rollout.promoted", "takes all traffic");
    let old_ids = r.ids(|i| i.release == old.number);
    r.fleet.switch(&[], &old_ids, Weights::ByCount);
    r.fleet.retire(old_ids).await;
    Ok(())
}

/// What `recast plan` says a canary rollout will do.
pub(super) fn describe(svc: &Service, ready: &str, deadline: String) -> Vec<String> {
    let Strategy::Canary { steps, .. } = &svc.rollout.strategy else {
        return Vec::new();
    };
    let mut v = vec![format!("start canary instance(s), {ready}")];
    for s in steps {
        v.push(match s.pause {
            Some(p) => format!(
                "send {}% of requests to the new release for {}",
                s.weight,
                format_duration(p)
            ),
            None => format!(
                "send {}% of requests to the new release, then wait for `recast promote`",
                s.weight
            ),
        });
    }
    v.push("send 100% to the new release, drain and stop the old one".into());
    v.push(deadline);
    v
}
