//! The one percentile definition behind every published figure: an HDR histogram
//! (`hdrhistogram`, 3 significant digits) of microsecond samples, read with
//! `value_at_quantile` (nearest rank, reported as the highest value equivalent to the sample
//! at that rank, so a reported p99 is never below the true one by more than 0.1%).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Significant digits kept by every histogram (0.1% resolution).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency samples in microseconds.
#[derive(Clone, Debug)]
pub struct Samples {
    hist: Histogram<u64>,
}

impl Default for Samples {
    fn default() -> Self {
        Self::new()
    }
}

impl Samples {
    /// An empty set of samples (auto-resizing: any `u64` microseconds fits).
    pub fn new() -> Samples {
        let mut hist = Histogram::new(SIGNIFICANT_DIGITS)
            .unwrap_or_else(|_| unreachable!("3 significant digits is a valid setting"));
        hist.auto(true);
        Samples { hist }
    }

    /// Records one sample of `us` microseconds.
    pub fn record_us(&mut self, us: u64) {
        // With auto-resize on, recording cannot fail for a u64.
        let _ = self.hist.record(us);
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every sample of `other` (e.g. one load task's samples into the run's).
    pub fn merge(&mut self, other: &Samples) {
        // Both auto-resize: adding cannot fail for lack of range.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// No samples.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The `q` quantile (0..=1) in microseconds; `None` without samples.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q.clamp(0.0, 1.0)))
    }

    /// The `q` quantile as a duration (zero without samples).
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.quantile_us(q).unwrap_or(0))
    }

    /// The `q` quantile in milliseconds (0 without samples).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile_us(q).unwrap_or(0) as f64 / 1000.0
    }
}

impl FromIterator<Duration> for Samples {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Self {
        let mut s = Samples::new();
        for d in iter {
            s.record(d);
        }
        s
    }
}

/// The `q` quantile of `durations` (zero when empty).
pub fn quantile(durations: &[Duration], q: f64) -> Duration {
    durations.iter().copied().collect::<Samples>().quantile(q)
}

/// The `q` quantile of millisecond values (`None` when empty); values are recorded at
/// microsecond resolution.
pub fn quantile_ms(values_ms: &[f64], q: f64) -> Option<f64> {
    let mut s = Samples::new();
    for v in values_ms {
        s.record_us((v.max(0.0) * 1000.0).round() as u64);
    }
    s.quantile_us(q).map(|us| us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_within_the_histogram_precision() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p50 = quantile(&d, 0.5).as_secs_f64() * 1000.0;
        let p99 = quantile(&d, 0.99).as_secs_f64() * 1000.0;
        assert!((50.0..=50.05).contains(&p50), "{p50}");
        assert!((99.0..=99.1).contains(&p99), "{p99}");
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        assert_eq!(quantile_ms(&[], 0.5), None);
        let max = quantile_ms(&[1.0, 2.0, 1500.0], 1.0).expect("samples");
        assert!((1500.0..=1501.5).contains(&max), "{max}");
    }
}
