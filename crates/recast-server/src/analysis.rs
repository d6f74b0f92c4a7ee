//! Metric analysis: every `interval`, judge the new release's traffic over the last window against
//! the thresholds and against the stable release over the same window.
//!
//! Too little traffic (`min_requests`) is *inconclusive*, never a pass. A failure needs the new
//! release to break a threshold **and** do worse than the stable release in the same window (when
//! both fail alike, the release is not what is wrong). `failure_limit` failed and
//! `inconclusive_limit` inconclusive verdicts are tolerated; the next one rolls back.

pub use recast_api::v1::VerdictResult;
use recast_proxy::Snapshot;
use recast_spec::Analysis;
use serde::Serialize;
use std::time::Duration;
// The runtime's clock, so a paused test clock drives the analysis windows too.
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Numbers {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: f64,
}

impl Numbers {
    fn of(s: &Snapshot) -> Numbers {
        Numbers {
            requests: s.requests + s.connect_failures,
            errors: s.errors_5xx + s.connect_failures,
            error_rate: s.error_rate(),
            p99_ms: s.quantile(0.99).as_secs_f64() * 1000.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub at_ms: u64,
    pub release: i64,
    pub result: VerdictResult,
    pub reason: String,
    pub canary: Numbers,
    pub stable: Numbers,
}

/// Judge one window.
pub fn judge(a: &Analysis, canary: &Snapshot, stable: &Snapshot) -> (VerdictResult, String) {
    let (c, s) = (Numbers::of(canary), Numbers::of(stable));
    if c.requests < a.min_requests {
        return (
            VerdictResult::Inconclusive,
            format!(
                "{} requests, fewer than min_requests {}",
                c.requests, a.min_requests
            ),
        );
    }
    if let Some(max) = a.max_error_rate
        && c.error_rate > max
        && (s.requests == 0 || c.error_rate > s.error_rate)
    {
        return (
            VerdictResult::Fail,
            format!(
                "error rate {:.3} above max_error_rate {max} (stable {:.3})",
                c.error_rate, s.error_rate
            ),
        );
    }
    if let Some(max) = a.max_p99_latency {
        let max_ms = max.as_secs_f64() * 1000.0;
        if c.p99_ms > max_ms && (s.requests == 0 || c.p99_ms > s.p99_ms) {
            return (
                VerdictResult::Fail,
                format!(
                    "p99 {:.1} ms above max_p99_latency {:.0} ms (stable {:.1} ms)",
                    c.p99_ms, max_ms, s.p99_ms
                ),
            );
        }
    }
    (
        VerdictResult::Pass,
        format!(
            "error rate {:.3}, p99 {:.1} ms over {} requests",
            c.error_rate, c.p99_ms, c.requests
        ),
    )
}

/// Runs the analysis of one rollout.
pub struct Analyzer {
    pub spec: Analysis,
    failures: u32,
    inconclusive: u32,
    canary_at: Snapshot,
    stable_at: Snapshot,
    next: Instant,
}

impl Analyzer {
    pub fn new(spec: Analysis, canary: Snapshot, stable: Snapshot) -> Analyzer {
        let next = Instant::now() + spec.interval;
        Analyzer {
            spec,
            failures: 0,
            inconclusive: 0,
            canary_at: canary,
            stable_at: stable,
            next,
        }
    }

    /// Restart the window (the split changed).
    pub fn reset(&mut self, canary: Snapshot, stable: Snapshot) {
        self.canary_at = canary;
        self.stable_at = stable;
        self.next = Instant::now() + self.spec.interval;
    }

    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Judge the window ending now. `Err` carries the reason to roll back.
    pub fn verdict(
        &mut self,
        release: i64,
        canary: Snapshot,
        stable: Snapshot,
        now_ms: u64,
    ) -> (Verdict, Result<(), String>) {
        let (c, s) = (canary.since(&self.canary_at), stable.since(&self.stable_at));
        let (result, reason) = judge(&self.spec, &c, &s);
        let v = Verdict {
            at_ms: now_ms,
            release,
            result,
            reason: reason.clone(),
            canary: Numbers::of(&c),
            stable: Numbers::of(&s),
        };
        self.canary_at = canary;
        self.stable_at = stable;
        self.next = Instant::now() + self.spec.interval;
        let outcome = match result {
            VerdictResult::Fail => {
                self.failures += 1;
                if self.failures > self.spec.failure_limit {
                    Err(format!("analysis failed: {reason}"))
                } else {
                    Ok(())
                }
            }
            VerdictResult::Inconclusive => {
                self.inconclusive += 1;
                if self.inconclusive > self.spec.inconclusive_limit {
                    Err(format!(
                        "analysis inconclusive {} times in a row: {reason}",
                        self.inconclusive
                    ))
                } else {
                    Ok(())
                }
            }
            VerdictResult::Pass => {
                self.inconclusive = 0;
                Ok(())
            }
        };
        (v, outcome)
    }

    /// How long to judge after a switch (blue/green) or a batch (rolling): three windows.
    pub fn settle_time(&self) -> Duration {
        self.spec.interval * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_proxy::Metrics;

    fn spec() -> Analysis {
        Analysis {
            interval: Duration::from_millis(10),
            min_requests: 10,
            max_error_rate: Some(0.05),
            max_p99_latency: Some(Duration::from_millis(100)),
            failure_limit: 0,
            inconclusive_limit: 1,
        }
    }

    fn traffic(n: u64, errors: u64, ms: u64) -> Snapshot {
        let m = Metrics::default();
        for i in 0..n {
            m.record(
                if i < errors { 500 } else { 200 },
                Duration::from_millis(ms),
            );
        }
        m.snapshot()
    }

    #[test]
    fn verdicts() {
        let a = spec();
        assert_eq!(
            judge(&a, &traffic(5, 0, 1), &traffic(100, 0, 1)).0,
            VerdictResult::Inconclusive
        );
        assert_eq!(
            judge(&a, &traffic(100, 0, 1), &traffic(100, 0, 1)).0,
            VerdictResult::Pass
        );
        assert_eq!(
            judge(&a, &traffic(100, 30, 1), &traffic(100, 0, 1)).0,
            VerdictResult::Fail
        );
        // Both releases failing alike is not the new release's fault.
        assert_eq!(
            judge(&a, &traffic(100, 30, 1), &traffic(100, 40, 1)).0,
            VerdictResult::Pass
        );
        assert_eq!(
            judge(&a, &traffic(100, 0, 400), &traffic(100, 0, 1)).0,
            VerdictResult::Fail
        );
    }

    #[test]
    fn limits() {
        let mut z = Analyzer::new(spec(), Snapshot::default(), Snapshot::default());
        let (v, r) = z.verdict(2, Snapshot::default(), Snapshot::default(), 0);
        assert_eq!((v.result, r.is_ok()), (VerdictResult::Inconclusive, true));
        let (_, r) = z.verdict(2, Snapshot::default(), Snapshot::default(), 0);
        assert!(
            r.expect_err("second inconclusive")
                .starts_with("analysis inconclusive 2 times")
        );
    }
}
