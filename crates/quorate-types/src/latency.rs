//! One fixed-bucket latency histogram for the numbers the node exports (lease renewals,
//! coordination requests): lock-free, only growing, read as a [`LatencySnapshot`] that
//! `quorate-api` encodes as a Prometheus histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Latencies of successful operations in fixed buckets, plus a count of failed ones.
#[derive(Debug, Default)]
pub struct LatencyStats {
    /// Per bucket of [`LATENCY_BUCKETS_SECONDS`] (not cumulative), then the overflow.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
    failed: AtomicU64,
}

impl LatencyStats {
    /// Counts one successful operation that took `latency`.
    pub fn record(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts one failed operation.
    pub fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_SECONDS.len() + 1);
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS_SECONDS
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        LatencySnapshot {
            buckets,
            count: cumulative,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// A [`LatencyStats`] read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySnapshot {
    /// `(upper bound in seconds, operations at most that slow)`, cumulative, ending with
    /// `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Successful operations.
    pub count: u64,
    /// Their summed latency, in seconds.
    pub sum_seconds: f64,
    /// Failed operations.
    pub failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_the_overflow() {
        let s = LatencyStats::default();
        s.record(Duration::from_micros(500));
        s.record(Duration::from_millis(3));
        s.record(Duration::from_secs(2));
        s.record_failure();
        let snap = s.snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.failed, 1);
        assert_eq!(snap.buckets.first(), Some(&(0.001, 1)));
        assert_eq!(snap.buckets.get(2), Some(&(0.005, 2)));
        assert_eq!(snap.buckets.last(), Some(&(f64::INFINITY, 3)));
        assert!((snap.sum_seconds - 2.0035).abs() < 1e-9);
    }
}
