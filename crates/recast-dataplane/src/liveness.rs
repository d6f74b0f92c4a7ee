//! The data plane's own check that every instance in rotation still accepts connections, so an
//! instance that dies leaves rotation even while no control plane is there to notice: a TCP
//! connect to its port every `interval`, `threshold` failures in a row take it out, one success
//! puts it back. The control plane's health checks (http, exec, …) decide everything else.

use crate::plane::{Plane, lock};
use crate::proto::{Backend, Target};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const TICK: Duration = Duration::from_millis(100);

pub(crate) async fn run(plane: Arc<Plane>) {
    let mut next: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let now = Instant::now();
        // Every instance in a group, due for a probe.
        let mut due: Vec<(String, Backend, Duration)> = Vec::new();
        {
            let svcs = lock(&plane.services);
            for (key, svc) in svcs.iter() {
                let every = Duration::from_millis(svc.state.liveness.interval_ms.max(100));
                let timeout = Duration::from_millis(svc.state.liveness.timeout_ms.max(50));
                for g in &svc.state.groups {
                    for id in &g.backends {
                        let Some((spec, _)) = svc.backends.get(id) else {
                            continue;
                        };
                        let at = next.entry(id.clone()).or_insert(now + every);
                        if *at <= now {
                            *at = now + every;
                            due.push((key.clone(), spec.clone(), timeout));
                        }
                    }
                }
            }
        }
        next.retain(|_, at| *at + Duration::from_secs(60) > now);
        if due.is_empty() {
            continue;
        }
        let results = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(key, b, timeout)| {
                    let netns = match &b.target {
                        Target::Netns { path } => Some(path.clone()),
                        Target::Host => None,
                    };
                    let ok = recast_runtime::connect_to(netns.as_deref(), b.port, timeout).is_ok();
                    (key, b.id, ok)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        apply(&plane, results);
    }
}

/// Count the results; republish a service whose set of live instances changed.
fn apply(plane: &Plane, results: Vec<(String, String, bool)>) {
    let mut svcs = lock(&plane.services);
    let mut changed: Vec<String> = Vec::new();
    for (key, id, ok) in results {
        let Some(svc) = svcs.get_mut(&key) else {
            continue;
        };
        let was_down = svc.is_down(&id);
        if ok {
            svc.failures.remove(&id);
        } else {
            *svc.failures.entry(id.clone()).or_default() += 1;
        }
        if was_down != svc.is_down(&id) {
            eprintln!(
                "recast dataplane: instance {id} of {key} {}",
                if was_down {
                    "accepts connections again: back in rotation"
                } else {
                    "refuses connections: out of rotation"
                }
            );
            changed.push(key);
        }
    }
    changed.dedup();
    for key in changed {
        if let Some(svc) = svcs.get(&key) {
            svc.publish();
        }
    }
}
