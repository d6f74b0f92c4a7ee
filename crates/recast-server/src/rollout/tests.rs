//! Every strategy against every failure at every step, on a fake fleet and a paused clock.
//! After each case: how it ended must match what the fleet is left with; during it the fake
//! checked its invariants on every call (capacity when retiring, never an empty table while the
//! old release is fine, no old instance hurt); a rollback never waits for an analysis.

use super::fake::{FakeFleet, Fault, START, Script};
use super::{Controls, End, Rollout, rollback};
use crate::engine::Run;
use recast_image::Digest;
use std::time::Duration;
use tokio::time::Instant;

const S: fn(f64) -> Duration = Duration::from_secs_f64;

/// A strategy under test: its rollout block, instance count, and what it promises.
struct Shape {
    name: &'static str,
    instances: usize,
    rollout: &'static str,
    /// Instances that must still serve when it retires an old one.
    floor: usize,
    stop_first: bool,
    analysis: bool,
    manual: bool,
    first: bool,
}

const ANALYSIS: &str = r#"
    analysis {
      interval         = "5s"
      min_requests     = 20
      max_error_rate   = 0.05
      failure_limit    = 0
      inconclusive_limit = 1
    }"#;

fn shapes() -> Vec<Shape> {
    let s = |name, instances, rollout: &'static str, floor, analysis, manual| Shape {
        name,
        instances,
        rollout,
        floor,
        stop_first: false,
        analysis,
        manual,
        first: false,
    };
    vec![
        s(
            "rolling surge 1",
            3,
            r#"strategy = "rolling"
    max_surge = 1
    max_unavailable = 0"#,
            3,
            false,
            false,
        ),
        s(
            "rolling unavailable 1",
            3,
            r#"strategy = "rolling"
    max_surge = 0
    max_unavailable = 1"#,
            2,
            false,
            false,
        ),
        s(
            "rolling 25% min_healthy",
            4,
            r#"strategy = "rolling"
    max_surge = "25%"
    max_unavailable = "25%"
    min_healthy_time = "2s""#,
            3,
            false,
            false,
        ),
        s(
            "rolling analysis",
            2,
            leak(format!(r#"strategy = "rolling"{ANALYSIS}"#)),
            2,
            true,
            false,
        ),
        s(
            "blue_green auto",
            2,
            r#"strategy = "blue_green"
    auto_promote_after = "5s"
    scale_down_delay = "10s""#,
            2,
            false,
            false,
        ),
        s(
            "blue_green manual analysis",
            2,
            leak(format!(r#"strategy = "blue_green"{ANALYSIS}"#)),
            2,
            true,
            true,
        ),
        s(
            "canary",
            4,
            leak(format!(
                r#"strategy = "canary"
    step {{
      weight = 10
      pause  = "10s"
    }}
    step {{
      weight = 50
      pause  = "10s"
    }}{ANALYSIS}"#
            )),
            4,
            true,
            false,
        ),
        s(
            "canary manual",
            2,
            r#"strategy = "canary"
    step { weight = 50 }"#,
            2,
            false,
            true,
        ),
        Shape {
            stop_first: true,
            ..s("recreate", 2, r#"strategy = "recreate""#, 0, false, false)
        },
        Shape {
            first: true,
            ..s(
                "first release",
                3,
                r#"strategy = "rolling""#,
                0,
                false,
                false,
            )
        },
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// What happens during a case.
#[derive(Debug, Clone)]
enum Event {
    Nothing,
    Fault(usize, Fault),
    ErrorRate,
    NoTraffic,
    GateRefuses,
    Abort(Duration),
    Pause(Duration, Duration),
    /// The control plane stops after this many fleet calls.
    Restart(usize),
}

fn run_of(number: i64, instances: usize, rollout: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = format!(
        r#"image "app" {{
  from = "scratch"
  cmd  = ["/app"]
}}
service "app" {{
  image     = image.app
  instances = {instances}
  port      = 8080
  env       = {{ RELEASE = "{number}" }}
  health {{
    http = "/healthz"
  }}
  rollout {{
    progress_deadline = "20s"
    {rollout}
  }}
}}
"#
    );
    let path = dir.path().join("recast.hcl");
    std::fs::write(&path, spec).expect("write spec");
    let project = recast_spec::load(&path).unwrap_or_else(|d| panic!("{d}\n{rollout}"));
    Run {
        number,
        digest: Digest::of(number.to_string().as_bytes()),
        image_name: "app:latest".into(),
        service: project.services["app"].clone(),
        source: None,
        secrets: Default::default(),
    }
}

/// Run one case; the reasons it is wrong, if any.
async fn case(shape: &Shape, event: &Event) -> Vec<String> {
    let n = shape.instances;
    let old = run_of(1, n, shape.rollout);
    let new = run_of(2, n, shape.rollout);
    let mut script = Script::default();
    match event {
        Event::Fault(k, f) => script.faults.push((*k, *f)),
        Event::ErrorRate => script.error_rate = 0.5,
        Event::NoTraffic => script.no_traffic = true,
        Event::GateRefuses => script.gate_refuses = true,
        _ => {}
    }
    let fleet = FakeFleet::new(2, script, shape.floor, !shape.stop_first && !shape.first);
    if !shape.first {
        fleet.seed(1, n);
    }
    let controls = Controls::default();
    let rollout = Rollout {
        fleet: &fleet,
        journal: &fleet,
        controls: &controls,
        new: &new,
        old: (!shape.first).then_some(&old),
    };
    let t0 = Instant::now();
    let bound = S(20.0) * (n as u32 + 3) + S(120.0);
    let mut aborted_at = None;
    let operator = async {
        let mut t = Duration::ZERO;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t += Duration::from_millis(100);
            match event {
                Event::Abort(at) if t == *at => {
                    controls.abort();
                    aborted_at = Some(Instant::now());
                }
                Event::Pause(at, _) if t == *at => controls.pause(true),
                Event::Pause(at, d) if t == *at + *d => controls.pause(false),
                Event::Restart(k) if fleet.calls() >= *k => return,
                _ => {}
            }
            // An operator who promotes when the rollout waits for it.
            let waits = fleet
                .steps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last()
                .is_some_and(|s| s.contains("`recast promote`"));
            if shape.manual && waits && t.as_millis().is_multiple_of(1000) {
                controls.promote();
            }
        }
    };
    let ended = tokio::select! {
        end = tokio::time::timeout(bound, rollout.run()) => match end {
            Ok(end) => Some(end),
            Err(_) => return vec![format!("did not end within {bound:?}")],
        },
        () = operator => None,
    };
    let took = t0.elapsed();
    let mut wrong = fleet.violations();
    if ended.is_none() {
        // The control plane came back: the interrupted rollout goes, the live release stays.
        if let Err(e) = rollback::settle(&fleet, &old).await {
            wrong.push(format!("settling after a restart failed: {e}"));
        }
    }
    let serving = fleet.serving();
    let n_of = |r: i64| serving.get(&r).copied().unwrap_or(0);
    match &ended {
        None => {
            if n_of(1) != n || fleet.releases_present() != vec![1] {
                wrong.push(format!(
                    "after a restart: serving {serving:?}, releases {:?}",
                    fleet.releases_present()
                ));
            }
        }
        Some(End::Succeeded) => {
            tokio::time::sleep(S(31.0)).await;
            fleet.run_timers();
            let gated = shape.rollout.contains("blue_green") || shape.rollout.contains("canary");
            let must_fail = match event {
                Event::GateRefuses => gated,
                Event::ErrorRate | Event::NoTraffic => shape.analysis,
                _ => false,
            };
            if must_fail {
                wrong.push(format!("succeeded despite {event:?}"));
            }
            if matches!(event, Event::Fault(_, Fault::NeverHealthy)) {
                wrong.push("succeeded with an instance that never became healthy".into());
            }
            if let Some(at) = aborted_at {
                wrong.push(format!(
                    "succeeded although aborted {:?} after start",
                    at - t0
                ));
            }
            let faulted = fleet.fault_seen().is_some();
            if (!faulted && n_of(2) != n) || fleet.releases_present() != vec![2] {
                wrong.push(format!(
                    "succeeded leaving serving {serving:?}, releases {:?}",
                    fleet.releases_present()
                ));
            }
        }
        Some(End::RolledBack { reason }) => {
            if matches!(event, Event::Nothing | Event::Pause(..)) {
                wrong.push(format!("rolled back without a cause: {reason}"));
            }
            let back = if shape.first { 0 } else { n };
            if n_of(1) != back || fleet.releases_present().contains(&2) {
                wrong.push(format!(
                    "rolled back ({reason}) leaving serving {serving:?}, releases {:?}",
                    fleet.releases_present()
                ));
            }
            if fleet.unavailable() {
                wrong.push("still answering unavailable after the rollback".into());
            }
            if let (Some(seen), Some(out)) = (fleet.fault_seen().or(aborted_at), fleet.new_out_at())
            {
                let lag = out.saturating_duration_since(seen);
                if lag > START + S(1.0) {
                    wrong.push(format!(
                        "the new release served {lag:?} after the failure was visible"
                    ));
                }
            }
            if fleet.verdicts_after_fault() > 0 {
                wrong.push(
                    "an analysis verdict came after the failure: the rollback waited for it".into(),
                );
            }
        }
        Some(End::Stopped { reason }) => {
            wrong.push(format!("stopped with auto_rollback on: {reason}"))
        }
    }
    if took > bound {
        wrong.push(format!("took {took:?}, more than {bound:?}"));
    }
    wrong
}

fn events(shape: &Shape) -> Vec<Event> {
    let n = shape.instances;
    let mut v = vec![
        Event::Nothing,
        Event::GateRefuses,
        Event::Pause(S(1.0), S(3.0)),
    ];
    for k in [0, n - 1] {
        for t in [0.3, 3.0, 9.0] {
            v.push(Event::Fault(k, Fault::Exits(S(t))));
        }
        for t in [2.0, 6.0, 14.0] {
            v.push(Event::Fault(k, Fault::TurnsUnhealthy(S(t))));
        }
        v.push(Event::Fault(k, Fault::NeverHealthy));
    }
    if shape.analysis {
        v.extend([Event::ErrorRate, Event::NoTraffic]);
    }
    for t in [0.5, 2.0, 4.0, 12.0] {
        v.push(Event::Abort(S(t)));
    }
    if !shape.first {
        for k in [1, 2, 3, 5, 8, 13, 21, 34, 55] {
            v.push(Event::Restart(k));
        }
    }
    v
}

#[tokio::test(start_paused = true)]
async fn every_strategy_survives_every_failure_at_every_step() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for shape in shapes() {
        for event in events(&shape) {
            cases += 1;
            for w in case(&shape, &event).await {
                failures.push(format!("{} / {event:?}: {w}", shape.name));
            }
        }
    }
    assert!(cases >= 200, "only {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
