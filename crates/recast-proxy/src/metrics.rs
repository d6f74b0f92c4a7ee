//! Per-release request metrics: counters and a latency histogram, lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram buckets: `FINITE` buckets with upper bounds of 50 µs doubling up to ~52.4 s
/// ([`bucket_bound_us`]), then one overflow bucket for anything slower.
pub const BUCKETS: usize = FINITE + 1;
const FINITE: usize = 21;

/// The upper bound of bucket `i` in microseconds (`i < BUCKETS - 1`; the last bucket has none).
pub fn bucket_bound_us(i: usize) -> u64 {
    50u64 << i
}

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    connect_failures: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    /// Sum of all recorded latencies, in microseconds.
    latency_sum_us: AtomicU64,
}

/// Counters at one moment; subtract two to get a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors_5xx: u64,
    pub connect_failures: u64,
    /// Requests per latency bucket (not cumulative); the last is the overflow bucket.
    pub latency: [u64; BUCKETS],
    /// Sum of the recorded latencies, in microseconds.
    pub latency_sum_us: u64,
}

impl Metrics {
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros() as u64;
        let i = (0..FINITE)
            .find(|&i| us <= bucket_bound_us(i))
            .unwrap_or(FINITE);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut latency = [0; BUCKETS];
        for (i, b) in self.latency.iter().enumerate() {
            latency[i] = b.load(Ordering::Relaxed);
        }
        Snapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors_5xx: self.errors_5xx.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            latency,
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut latency = [0; BUCKETS];
        for (i, l) in latency.iter_mut().enumerate() {
            *l = self.latency[i].saturating_sub(earlier.latency[i]);
        }
        Snapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            connect_failures: self
                .connect_failures
                .saturating_sub(earlier.connect_failures),
            latency,
            latency_sum_us: self.latency_sum_us.saturating_sub(earlier.latency_sum_us),
        }
    }

    /// Failed requests (5xx and connection failures) over all attempts.
    pub fn error_rate(&self) -> f64 {
        let total = self.requests + self.connect_failures;
        if total == 0 {
            0.0
        } else {
            (self.errors_5xx + self.connect_failures) as f64 / total as f64
        }
    }

    /// The upper bound of the bucket holding the given quantile (for the overflow bucket, twice
    /// the largest finite bound: "slower than that").
    pub fn quantile(&self, q: f64) -> Duration {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let want = ((total as f64) * q).ceil() as u64;
        let mut acc = 0;
        for (i, n) in self.latency.iter().enumerate() {
            acc += n;
            if acc >= want {
                return Duration::from_micros(bucket_bound_us(i));
            }
        }
        Duration::from_micros(bucket_bound_us(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_bucket_and_the_sum() {
        let m = Metrics::default();
        m.record(200, Duration::from_micros(40));
        m.record(200, Duration::from_secs(30));
        m.record(200, Duration::from_secs(90));
        let s = m.snapshot();
        assert_eq!(s.latency[0], 1, "{s:?}");
        // 30 s is above 26.2 s and at most 52.4 s.
        assert_eq!(bucket_bound_us(20), 52_428_800);
        assert_eq!(s.latency[20], 1, "{s:?}");
        assert_eq!(s.latency[BUCKETS - 1], 1, "90 s overflows: {s:?}");
        assert_eq!(s.latency_sum_us, 40 + 120_000_000);
        assert_eq!(s.since(&s).latency_sum_us, 0);
    }
}
