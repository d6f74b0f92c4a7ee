//! Blue/green: start the whole new release (green) beside the old one (blue), optionally on a
//! preview listener; hold until promoted (or `auto_promote_after`); switch all traffic in one
//! routing change; keep blue warm for `scale_down_delay` so a rollback is a switch back.

use super::{Fleet, Journal, Preview, Rollout, Weights, format_duration};
use crate::engine::Run;
use recast_spec::{Service, Strategy};

pub(super) async fn run<F: Fleet, J: Journal>(
    r: &Rollout<'_, F, J>,
    old: &Run,
) -> Result<(), String> {
    let Strategy::BlueGreen {
        preview_listen,
        auto_promote_after,
        scale_down_delay,
    } = r.new.service.rollout.strategy.clone()
    else {
        return Err("not a blue/green rollout".into());
    };
    let (new, n) = (r.new.number, r.instances_wanted());
    r.journal.step(
        1,
        format!("starting {n} green instance(s) of release {new}"),
    )?;
    let green = r.fleet.launch(r.new, n, r.progress_deadline()).await?;
    if let Some(listen) = preview_listen {
        r.fleet
            .preview(Some(Preview {
                listen,
                release: new,
                ids: green.clone(),
            }))
            .await?;
    }
    r.journal.step(
        2,
        match auto_promote_after {
            Some(d) => format!("green healthy; promoting in {}", format_duration(d)),
            None => "green healthy; waiting for `recast promote`".into(),
        },
    )?;
    // Judged on preview traffic while it waits, if there is an analysis block.
    let mut analyzer = r.analyzer(Some(old.number));
    r.hold(auto_promote_after, Some(old.number), &mut analyzer)
        .await?;
    r.journal.gate().await?;
    r.checkpoint().await?;
    r.fleet.preview(None).await?;
    // The switch: green in, blue out, in one table swap.
    // Everything not green: the old release and anything an earlier stopped rollout left.
    let blue = r.ids(|i| i.release != new);
    r.fleet.switch(&green, &blue, Weights::ByCount);
    r.journal.step(
        3,
        format!(
            "traffic switched to release {new}; release {} stays warm for {}",
            old.number,
            format_duration(scale_down_delay)
        ),
    )?;
    // With an analysis block, the first minutes after the switch are judged too; blue is still
    // warm, so a failure switches straight back.
    let mut after = r.analyzer(None);
    if let Some(settle) = after.as_ref().map(|a| a.settle_time()) {
        r.hold(Some(settle), None, &mut after).await?;
    }
    r.fleet.retire_later(blue, scale_down_delay);
    Ok(())
}

/// What `recast plan` says a blue/green rollout will do.
pub(super) fn describe(svc: &Service, ready: &str) -> Vec<String> {
    let Strategy::BlueGreen {
        preview_listen,
        auto_promote_after,
        scale_down_delay,
    } = &svc.rollout.strategy
    else {
        return Vec::new();
    };
    let mut v = vec![format!(
        "start {} green instance(s) beside the blue ones, {ready}",
        svc.instances
    )];
    if let Some(p) = preview_listen {
        v.push(format!("serve the green release on preview {p}"));
    }
    v.push(match auto_promote_after {
        Some(d) => format!("promote automatically after {}", format_duration(*d)),
        None => "wait for `recast promote`".into(),
    });
    v.push("switch all traffic to green at once".into());
    v.push(format!(
        "keep blue warm for {} (instant rollback), then drain and stop it",
        format_duration(*scale_down_delay)
    ));
    v
}
