//! A service's first release: start every instance, then route to them.

use super::{Fleet, Journal, Rollout, Weights};

pub(super) async fn run<F: Fleet, J: Journal>(r: &Rollout<'_, F, J>) -> Result<(), String> {
    let (n, number) = (r.instances_wanted(), r.new.number);
    r.journal
        .step(1, format!("starting {n} instance(s) of release {number}"))?;
    let ids = r.fleet.launch(r.new, n, r.progress_deadline()).await?;
    r.checkpoint().await?;
    r.fleet.switch(&ids, &[], Weights::ByCount);
    r.journal.step(
        2,
        format!("{n} instance(s) of release {number} healthy and in rotation"),
    )
}
