//! Per-release request metrics: counters and a latency histogram, lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket upper bounds in microseconds: 50 µs doubling up to ~54 s.
const BUCKETS: usize = 21;

fn bucket_bound_us(i: usize) -> u64 {
    50u64 << i
}

#[derive(Default)]
pub struct Metrics {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    connect_failures: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

/// Counters at one moment; subtract two to get a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub requests: u64,
    pub errors_5xx: u64,
    pub connect_failures: u64,
    pub latency: [u64; BUCKETS],
}

impl Metrics {
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
        let us = latency.as_micros() as u64;
        let i = (0..BUCKETS)
            .find(|&i| us <= bucket_bound_us(i))
            .unwrap_or(BUCKETS - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
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

    /// The upper bound of the bucket holding the given quantile.
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
