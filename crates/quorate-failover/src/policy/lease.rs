//! Holder-side lease arithmetic: when a primary must stop acting, and the timing config checks.
//!
//! Design rule ("Lease timing" in the design brief): only monotonic durations are compared and
//! clock *rates* may differ by at most `drift`. A holder's validity starts when it *sends* a
//! renew (or the campaign that granted the lease), by its own clock, and it stops acting at
//!
//! ```text
//! sent + ttl * (1 - drift) - margin
//! ```
//!
//! while the coordination leader expires the lease no earlier than `received + ttl * (1 + drift)`
//! by its clock. Since `received >= sent` and the two clocks advance at rates within `drift` of
//! each other, the holder has stopped before anyone else can be granted the lease. Beyond the
//! drift bound (a paused VM, a 0.5x clock) no timing rule helps: fencing tokens do.
//!
//! The arithmetic itself is `quorate_types::lease` (the one implementation, shared with the Raft
//! lease clock and dist-state sessions); this module holds the role's timing config and the
//! holder's state.

// tidy:pure-core

use std::time::Duration;

use quorate_types::lease::{self, Drift};

use crate::error::{ConfigErrors, FailoverError};

/// Timing of a role's primary lease.
///
/// Build one from a profile ([`LeaseConfig::lan`], [`LeaseConfig::wan`]) and adjust fields;
/// [`LeaseConfig::validate`] checks the invariants below and reports every violation at once.
///
/// Invariants (checked):
/// - `ttl > 0`, `renew_interval > 0`, `renew_timeout > 0`, `margin > 0`;
/// - `drift <= Drift::MAX` (10 %, guaranteed by the type);
/// - the holder's validity window `ttl * (1 - drift) - margin` is positive;
/// - `2 * renew_interval + renew_timeout <= window`: one renew may be lost and the next one,
///   sent on schedule, still completes before the holder must stop (the same idea as Patroni's
///   `loop_wait + 2 * retry_timeout <= ttl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease time-to-live as granted by the coordination backend.
    pub ttl: Duration,
    /// Time between two renews sent by the holder. After a renew fails, the next one is sent
    /// a quarter of this later ([`LeaseConfig::retry_interval`]).
    pub renew_interval: Duration,
    /// Time after which one renew request is given up as lost.
    pub renew_timeout: Duration,
    /// Safety margin subtracted from the validity window: covers the time between deciding to
    /// stop and having stopped (hook latency, scheduling).
    pub margin: Duration,
    /// Bound on the clock-rate difference between any two nodes.
    pub drift: Drift,
}

impl LeaseConfig {
    /// LAN profile: failover in about a second on a healthy local network.
    ///
    /// `ttl` 600 ms, renew every 100 ms with a 100 ms timeout, margin 50 ms, drift 1 %:
    /// validity window 544 ms, so one lost renew is survived (2 x 100 + 100 = 300 ms), and a
    /// coordination leader election (about 0.3-0.4 s in the Raft `lan` profile) fits between
    /// the last renew and the holder deadline, so it does not interrupt the primary.
    pub fn lan() -> Self {
        LeaseConfig {
            ttl: Duration::from_millis(600),
            renew_interval: Duration::from_millis(100),
            renew_timeout: Duration::from_millis(100),
            margin: Duration::from_millis(50),
            drift: Drift::DEFAULT,
        }
    }

    /// WAN profile: tolerant of latency spikes, failover in about six seconds.
    ///
    /// `ttl` 5 s, renew every 1 s with a 1 s timeout, margin 250 ms, drift 1 %: validity
    /// window 4.7 s, two renews may be lost.
    pub fn wan() -> Self {
        LeaseConfig {
            ttl: Duration::from_secs(5),
            renew_interval: Duration::from_secs(1),
            renew_timeout: Duration::from_secs(1),
            margin: Duration::from_millis(250),
            drift: Drift::DEFAULT,
        }
    }

    /// The wait after a failed or timed-out renew before the next one: `renew_interval / 4`
    /// (at least 1 ms). A holder whose store is changing leader gets its lease back as soon as
    /// the new leader answers, rather than a whole interval later.
    pub fn retry_interval(&self) -> Duration {
        (self.renew_interval / 4).max(Duration::from_millis(1))
    }

    /// `ttl * (1 - drift)`, rounded down: the shortest the lease can last by the holder's clock.
    pub fn ttl_slow(&self) -> Duration {
        self.drift.slow(self.ttl)
    }

    /// `ttl * (1 + drift)`, rounded up: how long the coordination leader must wait, by its own
    /// clock, after it received the last renew before it may expire the lease.
    pub fn ttl_fast(&self) -> Duration {
        self.drift.fast(self.ttl)
    }

    /// The holder's validity window after a renew is sent: `ttl * (1 - drift) - margin`
    /// (zero when the margin eats the whole lease; [`validate`](Self::validate) rejects that).
    pub fn window(&self) -> Duration {
        lease::holder_window(self.ttl, self.drift, self.margin)
    }

    /// The instant (holder's monotonic clock) at which a holder whose renew was sent at `sent`
    /// and acknowledged must stop acting: `sent + ttl * (1 - drift) - margin`.
    pub fn holder_deadline(&self, sent: Duration) -> Duration {
        lease::holder_deadline(sent, self.ttl, self.drift, self.margin)
    }

    /// The instant (coordination leader's clock) before which the leader must not expire a lease
    /// whose last renew it received at `received`: `received + ttl * (1 + drift)`.
    pub fn leader_expiry(&self, received: Duration) -> Duration {
        lease::leader_expiry(received, self.ttl, self.drift)
    }

    /// Checks the invariants listed on the type; reports every violation at once.
    pub fn validate(&self) -> Result<(), FailoverError> {
        let mut errors = ConfigErrors::default();
        self.collect_errors("lease", &mut errors);
        errors.into_result()
    }

    /// Adds every violated invariant to `errors`, with fields prefixed by `section`.
    pub(crate) fn collect_errors(&self, section: &str, errors: &mut ConfigErrors) {
        let zero = Duration::ZERO;
        for (name, value) in [
            ("ttl", self.ttl),
            ("renew_interval", self.renew_interval),
            ("renew_timeout", self.renew_timeout),
            ("margin", self.margin),
        ] {
            if value == zero {
                errors.push(
                    format!("{section}.{name}"),
                    format!("{section}.{name} = 0 ms; it must be positive"),
                );
            }
        }
        if self.ttl > zero && self.window() == zero {
            errors.push(
                format!("{section}.margin"),
                format!(
                    "{section}.margin = {} ms leaves no validity window: lease ttl {} ms x (1 - drift) \
                     = {} ms must exceed the margin; raise {section}.ttl or lower {section}.margin",
                    self.margin.as_millis(),
                    self.ttl.as_millis(),
                    self.ttl_slow().as_millis()
                ),
            );
        } else if self.window() > zero {
            let needed = self
                .renew_interval
                .saturating_mul(2)
                .saturating_add(self.renew_timeout);
            if needed > self.window() {
                errors.push(
                    format!("{section}.renew_interval"),
                    format!(
                        "{section}.renew_interval: 2 x renew_interval ({} ms) + renew_timeout ({} ms) = {} ms exceeds \
                         the validity window ttl x (1 - drift) - margin = {} ms, so one lost renew \
                         would demote the primary; renew more often or raise {section}.ttl",
                        self.renew_interval.as_millis(),
                        self.renew_timeout.as_millis(),
                        needed.as_millis(),
                        self.window().as_millis()
                    ),
                );
            }
        }
    }
}

/// The holder's view of its lease: until when it may act, by its own monotonic clock.
///
/// Feed it the *send* time of every request that was acknowledged (the campaign that granted
/// the lease, then each renew); ask [`is_valid`](Self::is_valid) before every action. An
/// acknowledgement of an old renew never shortens validity, and a renew that is not
/// acknowledged before the deadline is lost: the holder must demote at [`valid_until`].
///
/// [`valid_until`]: Self::valid_until
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderLease {
    timing: LeaseConfig,
    valid_until: Option<Duration>,
}

impl HolderLease {
    /// A holder that holds nothing yet.
    pub fn new(timing: LeaseConfig) -> Self {
        HolderLease {
            timing,
            valid_until: None,
        }
    }

    /// The timing this holder uses.
    pub fn timing(&self) -> &LeaseConfig {
        &self.timing
    }

    /// A request sent at `sent` (holder's clock) that grants or renews the lease was
    /// acknowledged. Validity becomes `max(current, sent + window)`.
    pub fn acknowledged(&mut self, sent: Duration) {
        let until = self.timing.holder_deadline(sent);
        self.valid_until = Some(self.valid_until.map_or(until, |cur| cur.max(until)));
    }

    /// Whether the holder may still act at `now`.
    pub fn is_valid(&self, now: Duration) -> bool {
        self.valid_until.is_some_and(|until| now < until)
    }

    /// The instant at which the holder must have stopped acting, if it holds the lease.
    pub fn valid_until(&self) -> Option<Duration> {
        self.valid_until
    }

    /// Time left at `now` before the holder must stop (zero when expired or not held).
    pub fn remaining(&self, now: Duration) -> Duration {
        self.valid_until
            .map_or(Duration::ZERO, |until| until.saturating_sub(now))
    }

    /// The lease was given up (resigned, revoked, demoted): nothing is valid any more.
    pub fn clear(&mut self) {
        self.valid_until = None;
    }
}
