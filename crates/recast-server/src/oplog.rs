//! The operator's log: one `tracing` event per thing that matters (an apply received, a rollout
//! step, a verdict, a rollback, a guard action, a lease), with its facts as fields (`project`,
//! `service`, `release`, `apply`, `step`, …). This crate only emits; the binary installs the
//! subscriber that writes them to stderr (human lines, or JSON lines with `--log-format json`).
//!
//! Never a secret's value, a request body or an environment map: names, numbers, and the
//! messages the state records as events (which carry none, issue 16).

/// Recorded events whose log line is written where they happen, with more fields than an event
/// has: `rollout.started` (`Ctl::rollout`: from, to, strategy) and `analysis.verdict`
/// (`Journal::verdict`: the numbers).
const LOGGED_AT_SOURCE: [&str; 2] = ["rollout.started", "analysis.verdict"];

/// The log line of a recorded event `kind` of `project/service`: a warning when it tells of
/// trouble (a failure, a rollback, drift, a crash loop, an instance unhealthy or exited).
pub(crate) fn event(project: &str, service: &str, kind: &str, msg: &str) {
    if LOGGED_AT_SOURCE.contains(&kind) {
        return;
    }
    if trouble(kind, msg) {
        tracing::warn!(project, service, event = kind, "{msg}");
    } else {
        tracing::info!(project, service, event = kind, "{msg}");
    }
}

/// A rollout of `svc` to `release` begins (from the release live before, if any).
pub(crate) fn rollout_started(
    svc: &crate::engine::Svc,
    release: i64,
    from: Option<i64>,
    strategy: &str,
    apply: Option<u64>,
) {
    let (project, service) = (&svc.project, &svc.name);
    tracing::info!(
        project,
        service,
        release,
        from,
        strategy,
        apply,
        "rollout started"
    );
}

/// How an apply ended: its state, and why when it failed (the error the CLI is shown too).
pub(crate) fn apply_ended(a: &recast_api::v1::ApplyStatus) {
    let (project, apply, state) = (&a.project, a.id, a.state.as_str());
    let failed: Vec<&str> = a
        .services
        .iter()
        .filter(|s| !s.outcome.is_ok())
        .map(|s| s.service.as_str())
        .collect();
    if a.state == recast_api::v1::ApplyState::Succeeded {
        tracing::info!(project, apply, state, "apply finished");
    } else {
        let error = a.error.as_deref();
        let failed = failed.join(",");
        tracing::warn!(project, apply, state, error, failed, "apply failed");
    }
}

/// One analysis window judged: its result, why, and the numbers of both sides.
pub(crate) fn verdict(project: &str, service: &str, v: &crate::analysis::Verdict) {
    let (release, result, reason) = (v.release, v.result.as_str(), v.reason.as_str());
    let (c, s) = (&v.canary, &v.stable);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                project,
                service,
                release,
                result,
                reason,
                canary_requests = c.requests,
                canary_errors = c.errors,
                canary_error_rate = c.error_rate,
                canary_p99_ms = c.p99_ms,
                stable_requests = s.requests,
                stable_error_rate = s.error_rate,
                stable_p99_ms = s.p99_ms,
                "analysis verdict"
            )
        };
    }
    if v.result == recast_api::v1::VerdictResult::Fail {
        line!(warn);
    } else {
        line!(info);
    }
}

fn trouble(kind: &str, msg: &str) -> bool {
    kind.ends_with("failed")
        || matches!(
            kind,
            "rollout.rolled_back" | "instance.crash_loop" | "drift.detected"
        )
        || (kind == "instance.health" && !msg.contains(" is healthy"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn trouble_is_a_warning() {
        assert!(super::trouble("rollout.failed", "release 2: x"));
        assert!(super::trouble("guard.replace_failed", "x"));
        assert!(super::trouble("rollout.rolled_back", "release 2: x"));
        assert!(super::trouble(
            "instance.health",
            "instance a is unhealthy: 500"
        ));
        assert!(super::trouble(
            "instance.health",
            "instance a exited with status 1"
        ));
        assert!(!super::trouble(
            "instance.health",
            "instance a is healthy: 200"
        ));
        assert!(!super::trouble("rollout.finished", "release 2 is live"));
        assert!(!super::trouble(
            "instance.replaced",
            "instance a replaced by b (max_age)"
        ));
    }
}
