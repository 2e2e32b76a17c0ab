//! Holder-side lease arithmetic of a session: when it must consider itself lost, when to send
//! the next renew, and what to do after a failed renew. Pure: time is an argument (a
//! `Duration` since the session's origin on the holder's monotonic clock).
//!
//! The rule is the one of "Lease timing" in the design brief; the arithmetic is the one
//! implementation in `quorate_types::lease` (shared with the failover manager and the Raft
//! lease clock): a renew sent at `sent` and acknowledged keeps the holder valid until
//!
//! ```text
//! sent + ttl * (1 - drift) - margin
//! ```
//!
//! while the coordination leader expires the lease no earlier than `received + ttl * (1 + drift)`
//! by its own clock. Since `received >= sent`, the holder stops before anyone else can be
//! granted what the lease held. Beyond the drift bound (a paused process, a clock at half
//! speed) only fencing tokens protect.

// tidy:pure-core

use std::time::Duration;

pub use quorate_types::lease::{Drift, holder_deadline, holder_window, leader_expiry};

/// The largest accepted renew jitter, 50 % of the renew interval.
pub const JITTER_PPM_MAX: u32 = 500_000;

/// The delay from a renew to the next: `ttl / 3`, made earlier by `jitter_sample_ppm` parts per
/// million of itself (drawn by the caller in `0..=jitter_ppm`; capped at [`JITTER_PPM_MAX`]).
/// Jitter only ever renews earlier, never later, so it cannot eat into the safety margin.
pub fn renew_delay(ttl: Duration, jitter_sample_ppm: u32) -> Duration {
    let base = ttl / 3;
    // Rounded down: jitter is never more than asked for.
    let early = base.as_nanos() * u128::from(jitter_sample_ppm.min(JITTER_PPM_MAX)) / 1_000_000;
    base.saturating_sub(Duration::from_nanos(
        u64::try_from(early).unwrap_or(u64::MAX),
    ))
}

/// Timing parameters of a session, independent of the TTL the backend granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Safety margin subtracted from the validity window (time to stop acting).
    pub margin: Duration,
    /// Bound on the clock-rate difference between any two nodes.
    pub drift: Drift,
    /// Wait between a failed renew and the next attempt.
    pub retry_interval: Duration,
    /// Give up one renew request after this long (and retry, if time remains).
    pub renew_timeout: Duration,
}

/// What the shell does after a renew failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again at this instant (still before the deadline).
    RetryAt(Duration),
    /// The error cannot be retried in time (or at all): the session is lost now.
    Lost,
}

/// The holder's view of its lease: until when it is valid, when to renew, by its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderClock {
    timing: Timing,
    ttl: Duration,
    last_ack_sent: Duration,
    valid_until: Duration,
}

impl HolderClock {
    /// A lease granted with `ttl` by a request sent at `sent`.
    pub fn granted(timing: Timing, ttl: Duration, sent: Duration) -> HolderClock {
        HolderClock {
            timing,
            ttl,
            last_ack_sent: sent,
            valid_until: holder_deadline(sent, ttl, timing.drift, timing.margin),
        }
    }

    /// The TTL of the last grant or renew.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the holder must consider the lease lost.
    pub fn deadline(&self) -> Duration {
        self.valid_until
    }

    /// Whether the holder may still act at `now`.
    pub fn is_valid(&self, now: Duration) -> bool {
        now < self.valid_until
    }

    /// Time left at `now` (zero once lost).
    pub fn remaining(&self, now: Duration) -> Duration {
        self.valid_until.saturating_sub(now)
    }

    /// When to send the next renew after the last acknowledged one.
    pub fn next_renew(&self, jitter_sample_ppm: u32) -> Duration {
        self.last_ack_sent
            .saturating_add(renew_delay(self.ttl, jitter_sample_ppm))
    }

    /// When a renew sent at `sent` is given up as lost (never after the deadline).
    pub fn renew_gives_up_at(&self, sent: Duration) -> Duration {
        sent.saturating_add(self.timing.renew_timeout)
            .min(self.valid_until)
    }

    /// A renew sent at `sent` was acknowledged with `ttl`. Validity becomes
    /// `max(current, sent + window)`: a late acknowledgement of an old renew never shortens it.
    pub fn acknowledged(&mut self, sent: Duration, ttl: Duration) {
        let until = holder_deadline(sent, ttl, self.timing.drift, self.timing.margin);
        if until >= self.valid_until {
            self.valid_until = until;
            self.ttl = ttl;
            self.last_ack_sent = self.last_ack_sent.max(sent);
        }
    }

    /// A renew failed at `now`; `retryable` says whether the same request may succeed later.
    /// Retries only if the retry can be sent before the deadline.
    pub fn failed(&self, now: Duration, retryable: bool) -> AfterFailure {
        let at = now.saturating_add(self.timing.retry_interval);
        if retryable && at < self.valid_until {
            AfterFailure::RetryAt(at)
        } else {
            AfterFailure::Lost
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing {
            margin: ms(50),
            drift: Drift::DEFAULT,
            retry_interval: ms(20),
            renew_timeout: ms(200),
        }
    }

    #[test]
    fn deadline_counts_from_the_send_time() {
        let d = Drift::DEFAULT;
        // 1 s ttl, 1 % drift, 50 ms margin: window 990 - 50 = 940 ms.
        assert_eq!(holder_window(ms(1000), d, ms(50)), ms(940));
        assert_eq!(holder_deadline(ms(100), ms(1000), d, ms(50)), ms(1040));
        // The holder's end is always before the leader's earliest expiry of the same renew.
        for sent in [0, 7, 999, 123_456] {
            let holder = holder_deadline(ms(sent), ms(1000), d, ms(50));
            assert!(holder < leader_expiry(ms(sent), ms(1000), d));
        }
        // A margin larger than the lease leaves nothing, not an underflow.
        assert_eq!(holder_window(ms(100), d, ms(500)), Duration::ZERO);
    }

    #[test]
    fn jitter_only_renews_earlier() {
        assert_eq!(renew_delay(ms(900), 0), ms(300));
        assert_eq!(renew_delay(ms(900), 100_000), ms(270));
        assert_eq!(renew_delay(ms(900), u32::MAX), ms(150));
    }

    #[test]
    fn late_acknowledgement_never_shortens_validity() {
        let mut c = HolderClock::granted(timing(), ms(1000), ms(0));
        assert_eq!(c.deadline(), ms(940));
        c.acknowledged(ms(300), ms(1000));
        assert_eq!(c.deadline(), ms(1240));
        assert_eq!(c.next_renew(0), ms(300) + ms(1000) / 3);
        c.acknowledged(ms(200), ms(1000));
        assert_eq!(c.deadline(), ms(1240));
        assert!(c.is_valid(ms(1239)));
        assert!(!c.is_valid(ms(1240)));
        assert_eq!(c.remaining(ms(1300)), Duration::ZERO);
    }

    proptest::proptest! {
        /// For any TTL, drift, margin and send time, the holder's end comes strictly before the
        /// earliest instant a leader that received the renew no earlier could expire the lease;
        /// and no acknowledgement order can move the holder's end past its latest send's.
        #[test]
        fn the_holder_always_stops_before_the_leader_may_expire(
            ttl_ms in 1u64..600_000,
            drift_ppm in 0u32..=Drift::MAX.ppm(),
            margin_ms in 1u64..10_000,
            sends in proptest::collection::vec(0u64..1_000_000, 1..8),
        ) {
            let (ttl, margin) = (ms(ttl_ms), ms(margin_ms));
            let drift = Drift::from_ppm(drift_ppm).unwrap();
            for &sent in &sends {
                let holder = holder_deadline(ms(sent), ttl, drift, margin);
                proptest::prop_assert!(holder < leader_expiry(ms(sent), ttl, drift));
            }
            let t = Timing { margin, drift, retry_interval: ms(1), renew_timeout: ms(1) };
            let mut c = HolderClock::granted(t, ttl, ms(0));
            for &sent in &sends {
                c.acknowledged(ms(sent), ttl);
            }
            let latest = sends.iter().copied().max().unwrap_or(0);
            proptest::prop_assert_eq!(c.deadline(), holder_deadline(ms(latest), ttl, drift, margin));
        }
    }

    #[test]
    fn failures_retry_only_while_time_remains() {
        let c = HolderClock::granted(timing(), ms(1000), ms(0));
        assert_eq!(c.failed(ms(500), true), AfterFailure::RetryAt(ms(520)));
        assert_eq!(c.failed(ms(500), false), AfterFailure::Lost);
        assert_eq!(c.failed(ms(920), true), AfterFailure::Lost);
        assert_eq!(c.renew_gives_up_at(ms(100)), ms(300));
        assert_eq!(c.renew_gives_up_at(ms(900)), ms(940));
    }
}
