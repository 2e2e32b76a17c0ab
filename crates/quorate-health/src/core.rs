//! The pure decision core of the monitor: per-check flap damping, staleness, the run grid and
//! recovery backoff. No clock reads, no randomness, no I/O: `now` (a monotonic offset from the
//! monitor's start) and random samples come in as arguments.
// tidy:pure-core

use std::num::NonZeroU32;
use std::time::Duration;

use quorate_health_api::{
    CheckId, CheckResult, CheckSnapshot, ComponentType, HealthStatus, truncate_message,
};

use crate::config::CheckConfig;
use crate::error::fmt_duration;

/// A change of a check's visible (damped, staleness-applied) status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusChange {
    pub(crate) from: HealthStatus,
    pub(crate) to: HealthStatus,
    pub(crate) message: String,
}

/// The state of one check: Consul-style damping counters plus staleness.
///
/// Damping: a success (passing or warning result) increments the success counter and resets the
/// failure counter; a failure (critical or unknown result) does the opposite. The status follows
/// a success once `successes >= success_threshold`, a failure once `failures >=
/// failure_threshold`; otherwise it stays. Counters start at zero, so a new check needs
/// `success_threshold` passes before it passes (it starts in `initial_status`). Because the
/// success counter keeps counting while passing, passing <-> warning switches at once.
#[derive(Debug, Clone)]
pub(crate) struct CheckCore {
    snapshot: CheckSnapshot,
    damped: HealthStatus,
    initial_status: HealthStatus,
    failure_threshold: NonZeroU32,
    success_threshold: NonZeroU32,
    stale_after: Duration,
    stale_status: HealthStatus,
    /// Staleness counts from here: the last result, or the (re)enable time.
    reference_at: Duration,
}

impl CheckCore {
    pub(crate) fn new(
        id: CheckId,
        component_type: ComponentType,
        component_name: String,
        config: &CheckConfig,
        now: Duration,
    ) -> CheckCore {
        let mut snapshot =
            CheckSnapshot::new(id, component_type, component_name, config.initial_status);
        snapshot.criticality = config.criticality;
        snapshot.groups = config.groups;
        snapshot.last_change_at = Some(now);
        CheckCore {
            snapshot,
            damped: config.initial_status,
            initial_status: config.initial_status,
            failure_threshold: config.failure_threshold,
            success_threshold: config.success_threshold,
            stale_after: config.stale_after(),
            stale_status: config.stale_status,
            reference_at: now,
        }
    }

    pub(crate) fn snapshot(&self) -> &CheckSnapshot {
        &self.snapshot
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> HealthStatus {
        self.snapshot.status
    }

    /// Apply one result completed at `now`.
    pub(crate) fn apply(
        &mut self,
        result: &CheckResult,
        now: Duration,
        message_bytes_max: usize,
    ) -> Option<StatusChange> {
        let s = &mut self.snapshot;
        s.runs = s.runs.saturating_add(1);
        s.last_run_at = Some(now);
        s.last_duration = Some(result.duration);
        s.observed_value = result.observed_value;
        s.last_result = Some(result.status);
        s.message.clear();
        s.message.push_str(&result.message);
        truncate_message(&mut s.message, message_bytes_max);
        self.reference_at = now;
        if result.status.is_healthy() {
            s.consecutive_successes = s.consecutive_successes.saturating_add(1);
            s.consecutive_failures = 0;
            if s.consecutive_successes >= self.success_threshold.get() {
                self.damped = result.status;
            }
        } else {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.consecutive_successes = 0;
            if s.consecutive_failures >= self.failure_threshold.get() {
                self.damped = result.status;
            }
        }
        s.stale = false;
        let message = s.message.clone();
        let change = self.set_visible(self.damped, now, message);
        self.debug_check("apply");
        change
    }

    /// When this check becomes stale if no result arrives.
    pub(crate) fn stale_deadline(&self) -> Duration {
        self.reference_at.saturating_add(self.stale_after)
    }

    /// Mark the check stale if its last result (or enable time) is too old at `now`.
    pub(crate) fn refresh_staleness(&mut self, now: Duration) -> Option<StatusChange> {
        if self.snapshot.stale || now < self.stale_deadline() {
            self.debug_check("refresh_staleness");
            return None;
        }
        self.snapshot.stale = true;
        let message = format!(
            "stale: no result for {} (limit {})",
            fmt_duration(now.saturating_sub(self.reference_at)),
            fmt_duration(self.stale_after)
        );
        self.snapshot.message.clone_from(&message);
        let change = self.set_visible(self.stale_status, now, message);
        self.debug_check("refresh_staleness");
        change
    }

    /// Back to the initial state at `now` (used when a check is (re)enabled): initial status,
    /// counters zero, not stale, staleness counted from `now`.
    pub(crate) fn reset(&mut self, now: Duration, reason: &str) -> Option<StatusChange> {
        self.damped = self.initial_status;
        self.snapshot.consecutive_successes = 0;
        self.snapshot.consecutive_failures = 0;
        self.snapshot.stale = false;
        self.reference_at = now;
        let change = self.set_visible(self.initial_status, now, reason.to_owned());
        self.debug_check("reset");
        change
    }

    /// Asserts the damping invariants in debug builds (tests and simulations; see
    /// [`CheckCore::invariant_violation`]).
    fn debug_check(&self, after: &str) {
        #[cfg(debug_assertions)]
        {
            let v = self.invariant_violation();
            debug_assert!(
                v.is_none(),
                "health check core invariant broken after {after} ({}): {}",
                self.snapshot.id,
                v.unwrap_or_default()
            );
        }
        let _ = after;
    }

    /// The first broken damping invariant, if any: at most one counter is running, the
    /// visible status is the stale status when stale and the damped status otherwise, and a
    /// counter at its threshold has moved the damped status to its side.
    #[cfg_attr(
        not(debug_assertions),
        allow(dead_code, reason = "only the debug_assert! invariant checks call it")
    )]
    fn invariant_violation(&self) -> Option<String> {
        let s = &self.snapshot;
        let (ok, bad) = (s.consecutive_successes, s.consecutive_failures);
        if ok > 0 && bad > 0 {
            return Some(format!(
                "consecutive successes {ok} and failures {bad} are both counting"
            ));
        }
        let visible = if s.stale {
            self.stale_status
        } else {
            self.damped
        };
        if s.status != visible {
            return Some(format!(
                "visible status {} is not the {} status {visible}",
                s.status,
                if s.stale { "stale" } else { "damped" }
            ));
        }
        if ok >= self.success_threshold.get() && !self.damped.is_healthy() {
            return Some(format!(
                "{ok} successes reached the threshold but the damped status is {}",
                self.damped
            ));
        }
        if bad >= self.failure_threshold.get() && self.damped.is_healthy() {
            return Some(format!(
                "{bad} failures reached the threshold but the damped status is {}",
                self.damped
            ));
        }
        None
    }

    pub(crate) fn set_enabled(&mut self, enabled: bool) {
        self.snapshot.enabled = enabled;
    }

    fn set_visible(
        &mut self,
        to: HealthStatus,
        now: Duration,
        message: String,
    ) -> Option<StatusChange> {
        let from = self.snapshot.status;
        if from == to {
            return None;
        }
        self.snapshot.status = to;
        self.snapshot.last_change_at = Some(now);
        Some(StatusChange { from, to, message })
    }
}

/// The first due time of a check registered at `now`: a phase in `[0, jitter]` chosen by
/// `sample` (a uniformly random `u64`).
pub(crate) fn first_due(now: Duration, jitter: Duration, sample: u64) -> Duration {
    let span = jitter.as_nanos().saturating_add(1);
    let phase = u128::from(sample) % span;
    now.saturating_add(Duration::from_nanos(
        u64::try_from(phase).unwrap_or(u64::MAX),
    ))
}

/// The due time after `prev_due` on the grid `prev_due + k x interval`: the next grid point,
/// or the first one after `now` if the schedule fell behind (missed slots are skipped, never
/// bunched). The grid never drifts, whatever the lateness of a run.
pub(crate) fn next_due(prev_due: Duration, interval: Duration, now: Duration) -> Duration {
    let next = prev_due.saturating_add(interval);
    if next > now {
        return next;
    }
    let step = interval.as_nanos().max(1);
    let behind = now.saturating_sub(prev_due).as_nanos();
    let k = behind / step + 1;
    let offset = step.saturating_mul(k);
    prev_due.saturating_add(Duration::from_nanos(
        u64::try_from(offset).unwrap_or(u64::MAX),
    ))
}

/// Wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed:
/// `initial x 2^(attempt-1)`, capped at `max`.
pub(crate) fn backoff_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << shift).min(max)
}

/// A fixed-size latency histogram (log2 buckets with 8 linear sub-buckets, in nanoseconds):
/// bounded memory, ~12% resolution, enough for a p99.
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB as usize;

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
            max: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return usize::try_from(v).unwrap_or(0);
        }
        let log = 63 - u64::from(v.leading_zeros());
        let sub = (v >> (log - u64::from(SUB_BITS))) & (SUB - 1);
        usize::try_from((log - u64::from(SUB_BITS) + 1) * SUB + sub).unwrap_or(BUCKETS - 1)
    }

    /// Upper bound of the values that land in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let log = i / SUB + u64::from(SUB_BITS) - 1;
        let sub = i % SUB;
        let base = 1u64 << log;
        let width = base >> SUB_BITS;
        base.saturating_add((sub + 1).saturating_mul(width)) - 1
    }

    pub(crate) fn record(&mut self, value: Duration) {
        let v = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        let i = Self::index(v).min(BUCKETS - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The `q`-quantile (`0.0..=1.0`), rounded up to its bucket's upper bound (never above max).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_nanos(Self::upper(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use HealthStatus::*;

    fn core(failures: u32, successes: u32, initial: HealthStatus) -> CheckCore {
        let config = CheckConfig {
            failure_threshold: NonZeroU32::new(failures).unwrap(),
            success_threshold: NonZeroU32::new(successes).unwrap(),
            initial_status: initial,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            stale_after_intervals: NonZeroU32::new(3).unwrap(),
            ..CheckConfig::fast()
        };
        CheckCore::new(
            CheckId::new("c").unwrap(),
            ComponentType::Internal,
            "c".into(),
            &config,
            Duration::ZERO,
        )
    }

    /// Feed `results` one per second; assert the visible status after each.
    #[track_caller]
    fn check(core: &mut CheckCore, steps: &[(HealthStatus, HealthStatus)]) {
        for (i, (result, expected)) in steps.iter().enumerate() {
            let now = Duration::from_secs(i as u64 + 1);
            core.apply(&CheckResult::new(*result, "r"), now, 1024);
            assert_eq!(
                core.status(),
                *expected,
                "step {i}: after a {result} result"
            );
        }
    }

    fn panic_message(f: impl FnOnce()) -> String {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(()) => String::new(),
            Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
        }
    }

    /// The core checks its damping invariants after every input (debug builds: tests and
    /// simulations); counters or a status broken behind its back stop the next input.
    #[test]
    fn debug_invariants_fire_on_a_broken_core() {
        if !cfg!(debug_assertions) {
            return;
        }
        let mut c = core(2, 2, Critical);
        check(&mut c, &[(Passing, Critical), (Passing, Passing)]);
        // Broken: both counters running.
        c.snapshot.consecutive_failures = 7;
        let msg = panic_message(|| {
            c.refresh_staleness(Duration::from_secs(2));
        });
        assert!(
            msg.contains("health check core invariant broken after refresh_staleness (c)")
                && msg.contains("successes 2 and failures 7 are both counting"),
            "{msg}"
        );
        // Broken: marked stale without showing the stale status.
        let mut c = core(1, 1, Critical);
        check(&mut c, &[(Passing, Passing)]);
        c.snapshot.stale = true;
        let msg = panic_message(|| {
            c.refresh_staleness(Duration::from_secs(2));
        });
        assert!(msg.contains("is not the stale status"), "{msg}");
    }

    #[test]
    fn failure_threshold_delays_critical() {
        let mut c = core(3, 1, Unknown);
        check(
            &mut c,
            &[
                (Passing, Passing),
                (Critical, Passing),
                (Critical, Passing),
                (Critical, Critical),
            ],
        );
        assert_eq!(c.snapshot().consecutive_failures, 3);
    }

    #[test]
    fn success_threshold_delays_passing() {
        let mut c = core(1, 3, Unknown);
        check(
            &mut c,
            &[
                (Critical, Critical),
                (Passing, Critical),
                (Passing, Critical),
                (Passing, Passing),
            ],
        );
        assert_eq!(c.snapshot().consecutive_successes, 3);
    }

    #[test]
    fn each_result_resets_the_opposite_counter() {
        // Flapping never reaches either threshold of 2.
        let mut c = core(2, 2, Unknown);
        check(
            &mut c,
            &[
                (Passing, Unknown),
                (Critical, Unknown),
                (Passing, Unknown),
                (Critical, Unknown),
            ],
        );
        assert_eq!(
            (
                c.snapshot().consecutive_successes,
                c.snapshot().consecutive_failures
            ),
            (0, 1)
        );
    }

    #[test]
    fn warning_switches_at_once_after_proven_and_unknown_counts_as_failure() {
        let mut c = core(2, 2, Unknown);
        check(
            &mut c,
            &[
                (Passing, Unknown),
                (Passing, Passing),
                (Warning, Warning),
                (Passing, Passing),
                (Unknown, Passing),
                (Unknown, Unknown),
            ],
        );
    }

    #[test]
    fn initial_status_holds_until_proven() {
        let mut c = core(1, 2, Critical);
        assert_eq!(c.status(), Critical);
        check(&mut c, &[(Passing, Critical), (Passing, Passing)]);
        let mut c = core(3, 1, Passing);
        check(&mut c, &[(Critical, Passing)]);
    }

    #[test]
    fn transition_reports_from_to_and_message() {
        let mut c = core(1, 1, Unknown);
        let change = c
            .apply(
                &CheckResult::critical("connection refused"),
                Duration::from_secs(5),
                1024,
            )
            .unwrap();
        assert_eq!(
            change,
            StatusChange {
                from: Unknown,
                to: Critical,
                message: "connection refused".into()
            }
        );
        assert_eq!(c.snapshot().last_change_at, Some(Duration::from_secs(5)));
        assert!(
            c.apply(
                &CheckResult::critical("again"),
                Duration::from_secs(6),
                1024
            )
            .is_none()
        );
        assert_eq!(c.snapshot().last_change_at, Some(Duration::from_secs(5)));
        assert_eq!(c.snapshot().runs, 2);
    }

    #[test]
    fn staleness_after_k_intervals_and_fresh_result_clears_it() {
        let mut c = core(1, 1, Unknown);
        c.apply(&CheckResult::passing("ok"), Duration::from_secs(1), 1024);
        assert_eq!(c.stale_deadline(), Duration::from_secs(4));
        assert!(c.refresh_staleness(Duration::from_millis(3999)).is_none());
        assert!(!c.snapshot().stale);
        let change = c.refresh_staleness(Duration::from_secs(4)).unwrap();
        assert_eq!((change.from, change.to), (Passing, Unknown));
        assert!(
            change.message.contains("stale: no result for 3s"),
            "{}",
            change.message
        );
        assert!(c.snapshot().stale);
        // Idempotent while stale.
        assert!(c.refresh_staleness(Duration::from_secs(10)).is_none());
        // A fresh pass: damped status was Passing, so it shows again at once.
        let change = c
            .apply(&CheckResult::passing("ok"), Duration::from_secs(11), 1024)
            .unwrap();
        assert_eq!((change.from, change.to), (Unknown, Passing));
        assert!(!c.snapshot().stale);
    }

    #[test]
    fn never_run_check_goes_stale_from_its_registration() {
        let mut c = core(1, 1, Passing);
        assert!(c.refresh_staleness(Duration::from_secs(2)).is_none());
        let change = c.refresh_staleness(Duration::from_secs(3)).unwrap();
        assert_eq!(change.to, Unknown);
    }

    #[test]
    fn reset_returns_to_initial_status() {
        let mut c = core(1, 1, Unknown);
        c.apply(&CheckResult::passing("ok"), Duration::from_secs(1), 1024);
        let change = c.reset(Duration::from_secs(2), "enabled").unwrap();
        assert_eq!((change.from, change.to), (Passing, Unknown));
        assert_eq!(c.snapshot().consecutive_successes, 0);
        assert_eq!(c.stale_deadline(), Duration::from_secs(5));
    }

    #[test]
    fn messages_are_truncated() {
        let mut c = core(1, 1, Unknown);
        c.apply(
            &CheckResult::passing("x".repeat(100)),
            Duration::from_secs(1),
            20,
        );
        assert_eq!(c.snapshot().message.len(), 20);
        assert!(c.snapshot().message.ends_with("..."));
    }

    #[test]
    fn grid_never_drifts_and_skips_missed_slots() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // On time or late within the interval: exactly one interval later.
        assert_eq!(next_due(s(10), s(1), s(10)), s(11));
        assert_eq!(next_due(s(10), s(1), ms(10_900)), s(11));
        // Fell 3.5 intervals behind: the next slot after now, on the same grid.
        assert_eq!(next_due(s(10), s(1), ms(13_500)), s(14));
        assert_eq!(next_due(s(10), s(1), s(11)), s(12));
        // Many steps accumulate no error.
        let mut due = ms(7);
        for _ in 0..10_000 {
            due = next_due(due, ms(333), due);
        }
        assert_eq!(due, ms(7 + 333 * 10_000));
    }

    #[test]
    fn first_due_phase_stays_within_jitter() {
        let j = Duration::from_millis(200);
        for sample in [0, 1, 199_999_999, 200_000_000, 200_000_001, u64::MAX] {
            let due = first_due(Duration::from_secs(1), j, sample);
            assert!(due >= Duration::from_secs(1) && due <= Duration::from_millis(1200));
        }
        assert_eq!(
            first_due(Duration::from_secs(1), Duration::ZERO, 12345),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        let delays: Vec<_> = (1..=6).map(|a| backoff_delay(s(1), s(10), a)).collect();
        assert_eq!(delays, [s(1), s(2), s(4), s(8), s(10), s(10)]);
        assert_eq!(backoff_delay(s(1), s(10), u32::MAX), s(10));
    }

    #[test]
    fn histogram_quantiles_within_resolution() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        let p99 = h.quantile(0.99).as_micros() as f64;
        assert!((990.0..=990.0 * 1.13).contains(&p99), "p99 {p99}");
        let p50 = h.quantile(0.5).as_micros() as f64;
        assert!((500.0..=500.0 * 1.13).contains(&p50), "p50 {p50}");
        assert_eq!(h.quantile(1.0), h.max());
        assert_eq!(Histogram::new().quantile(0.99), Duration::ZERO);
        for v in [0u64, 1, 7, 8, 9, 1023, 1024, u64::MAX / 2] {
            let i = Histogram::index(v);
            assert!(Histogram::upper(i) >= v, "v {v} bucket {i}");
        }
    }
}
