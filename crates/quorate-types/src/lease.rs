//! The one implementation of lease arithmetic (design.md "Lease timing"): the clock-rate bound
//! [`Drift`], holder validity, leader expiry and new-leader expiry. Every crate that decides
//! when a lease ends (the failover policy and shell, the Raft lease clock and leader lease, the
//! dist-state sessions) calls these functions; none writes `ttl * (1 ± drift)` itself.
//!
//! Only monotonic durations are compared, and the *rates* of any two clocks differ by at most
//! `drift`; offsets never matter. Every result is rounded in the safe direction: what bounds a
//! holder (how long it may act) rounds **down**, what bounds a leader (how long it must wait
//! before it may expire a lease) rounds **up**.
//!
//! - Holder: a renew sent at `sent` and acknowledged keeps the holder valid until
//!   `sent + ttl * (1 - drift) - margin` ([`holder_deadline`]).
//! - Leader: it expires a lease no earlier than `received + ttl * (1 + drift)` by its own clock
//!   ([`leader_expiry`]), where `received >= sent` is when it accepted the last renew.
//! - New leader: it expires a lease at `max(received + ttl * (1 + drift), took_over + grace)`
//!   ([`new_leader_expiry`]), where `received` is when *it* received the entry of the last renew
//!   (after the holder sent it), or when it loaded the state if it has no record.
//!
//! ```
//! use std::time::Duration;
//! use quorate_types::lease::{Drift, holder_deadline, leader_expiry};
//!
//! let ms = Duration::from_millis;
//! let drift = Drift::DEFAULT; // 1 %
//! // The holder stops at 0 + 600 x 0.99 - 50 = 544 ms by its clock...
//! assert_eq!(holder_deadline(ms(0), ms(600), drift, ms(50)), ms(544));
//! // ...the leader, which received the renew later, expires it at 606 ms after that by its own.
//! assert_eq!(leader_expiry(ms(3), ms(600), drift), ms(609));
//! assert!(Drift::from_ppm(200_000).is_err()); // 20 %: such a clock is broken
//! ```

// tidy:pure-core

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TypesError;

/// One million: drift is counted in parts per million.
const PPM: u128 = 1_000_000;

/// A bound on how much the *rates* of any two nodes' monotonic clocks may differ, in parts per
/// million (10 000 = 1 %). At most [`Drift::MAX`] (10 %): a clock further off than that is
/// broken, and only fencing tokens protect against it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Drift(u32);

impl Drift {
    /// No drift at all (tests; real clocks always drift a little).
    pub const ZERO: Drift = Drift(0);
    /// The default bound, 1 % (10 000 ppm): ordinary quartz is within 0.01 %, NTP slews at most
    /// 0.05 %, so 1 % leaves a wide margin and costs 1 % of each lease.
    pub const DEFAULT: Drift = Drift(10_000);
    /// The largest accepted bound, 10 % (100 000 ppm).
    pub const MAX: Drift = Drift(100_000);

    /// A bound of `ppm` parts per million.
    ///
    /// # Errors
    /// [`TypesError::Drift`] when `ppm` is above [`Drift::MAX`].
    pub const fn from_ppm(ppm: u32) -> Result<Drift, TypesError> {
        if ppm > Drift::MAX.0 {
            Err(TypesError::Drift { ppm })
        } else {
            Ok(Drift(ppm))
        }
    }

    /// The bound in parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// `d * (1 - drift)`, rounded down: the shortest that `d` on one clock can last on another.
    pub fn slow(self, d: Duration) -> Duration {
        scale(d, PPM - u128::from(self.0), false)
    }

    /// `d * (1 + drift)`, rounded up: the longest that `d` on one clock can last on another.
    pub fn fast(self, d: Duration) -> Duration {
        scale(d, PPM + u128::from(self.0), true)
    }
}

impl TryFrom<u32> for Drift {
    type Error = TypesError;
    fn try_from(ppm: u32) -> Result<Drift, TypesError> {
        Drift::from_ppm(ppm)
    }
}

impl From<Drift> for u32 {
    fn from(d: Drift) -> u32 {
        d.0
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ppm", self.0)
    }
}

/// `d * num / PPM` on nanoseconds, rounding down or up, saturating at `Duration::MAX`.
fn scale(d: Duration, num: u128, round_up: bool) -> Duration {
    let nanos = d.as_nanos().saturating_mul(num);
    let mut q = nanos / PPM;
    if round_up && !nanos.is_multiple_of(PPM) {
        q = q.saturating_add(1);
    }
    let secs = q / 1_000_000_000;
    let sub = u32::try_from(q % 1_000_000_000).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, sub),
        Err(_) => Duration::MAX,
    }
}

/// The holder's validity window after it sent a renew: `ttl * (1 - drift) - margin`, rounded
/// down; zero when the margin eats the whole lease.
pub fn holder_window(ttl: Duration, drift: Drift, margin: Duration) -> Duration {
    drift.slow(ttl).saturating_sub(margin)
}

/// The instant (holder's clock) at which a holder whose renew sent at `sent` was acknowledged
/// must have stopped acting: `sent + ttl * (1 - drift) - margin`.
pub fn holder_deadline(sent: Duration, ttl: Duration, drift: Drift, margin: Duration) -> Duration {
    let deadline = sent.saturating_add(holder_window(ttl, drift, margin));
    debug_assert!(
        deadline <= sent.saturating_add(ttl),
        "a holder deadline past sent + ttl breaks the lease rule"
    );
    deadline
}

/// The instant (leader's clock) before which a leader must not expire a lease whose last renew
/// it received at `received`: `received + ttl * (1 + drift)`, rounded up.
pub fn leader_expiry(received: Duration, ttl: Duration, drift: Drift) -> Duration {
    let expiry = received.saturating_add(drift.fast(ttl));
    debug_assert!(
        expiry >= received.saturating_add(ttl),
        "a leader expiry before received + ttl breaks the lease rule"
    );
    expiry
}

/// The expiry a node uses from the moment it starts to act as leader (`took_over`, its clock):
/// the later of [`leader_expiry`] by its own record of when it received the lease's last renew
/// (`received`; the time it loaded the state when it has no record) and `took_over + grace`.
///
/// Why this is safe: the entry of the last renew reached this node after the holder sent it, so
/// `received >= sent` holds for this node's record exactly as for the old leader's, and the
/// holder-side rule ([`holder_deadline`]) has stopped the holder before `leader_expiry`. The
/// grace only makes the expiry later. It exists for availability: a holder whose renews could
/// not commit during the election gets `grace` to reach the new leader before its lease ends,
/// instead of a full TTL for everyone (etcd's rule), which would add a TTL to every failover
/// where the primary died together with the Raft leader.
pub fn new_leader_expiry(
    received: Duration,
    ttl: Duration,
    drift: Drift,
    took_over: Duration,
    grace: Duration,
) -> Duration {
    let expiry = leader_expiry(received, ttl, drift).max(took_over.saturating_add(grace));
    debug_assert!(expiry >= leader_expiry(received, ttl, drift));
    expiry
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn drift_is_bounded_and_round_trips() {
        assert_eq!(Drift::from_ppm(100_000), Ok(Drift::MAX));
        assert_eq!(
            Drift::from_ppm(100_001),
            Err(TypesError::Drift { ppm: 100_001 })
        );
        let e = Drift::from_ppm(500_000).unwrap_err().to_string();
        assert!(e.contains("500000") && e.contains("100000"), "{e}");
        assert_eq!(Drift::DEFAULT.ppm(), 10_000);
        assert_eq!(Drift::default(), Drift::ZERO);
        let json = serde_json::to_string(&Drift::DEFAULT).unwrap();
        assert_eq!(json, "10000");
        assert!(serde_json::from_str::<Drift>("100001").is_err());
        assert_eq!(Drift::DEFAULT.to_string(), "10000 ppm");
    }

    #[test]
    fn rounding_is_in_the_safe_direction() {
        let d = Drift::from_ppm(1).unwrap();
        // 1 ns x (1 ± 1e-6): the holder side rounds down, the leader side up.
        assert_eq!(d.slow(Duration::from_nanos(1)), Duration::ZERO);
        assert_eq!(d.fast(Duration::from_nanos(1)), Duration::from_nanos(2));
        assert_eq!(Drift::ZERO.fast(ms(600)), ms(600));
        assert_eq!(Drift::DEFAULT.slow(ms(600)), ms(594));
        assert_eq!(Drift::DEFAULT.fast(ms(600)), ms(606));
        assert_eq!(Drift::MAX.fast(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn the_three_rules() {
        let d = Drift::DEFAULT;
        assert_eq!(holder_window(ms(600), d, ms(50)), ms(544));
        assert_eq!(holder_window(ms(600), d, ms(600)), Duration::ZERO);
        assert_eq!(holder_deadline(ms(100), ms(600), d, ms(50)), ms(644));
        assert_eq!(leader_expiry(ms(100), ms(600), d), ms(706));
        // The record decides when it is later than the grace...
        assert_eq!(
            new_leader_expiry(ms(100), ms(600), d, ms(200), ms(150)),
            ms(706)
        );
        // ...and the grace when the election outlasted the lease.
        assert_eq!(
            new_leader_expiry(ms(100), ms(600), d, ms(1_100), ms(150)),
            ms(1_250)
        );
    }

    proptest! {
        /// Within the drift bound the holder has always stopped, in real time, before any
        /// leader (old or new) may expire the lease: holder clock at rate `h`, leader clock at
        /// rate `l`, both within `drift` of real time... expressed relative to each other.
        #[test]
        fn holder_stops_before_any_leader_expires(
            ttl_ms in 1u64..100_000,
            margin_ms in 0u64..1_000,
            ppm in 0u32..=100_000,
            sent_ms in 0u64..1_000_000,
            delay_ms in 0u64..10_000,
            took_over_ms in 0u64..2_000_000,
            grace_ms in 0u64..10_000,
        ) {
            let drift = Drift::from_ppm(ppm).unwrap();
            let (ttl, margin) = (ms(ttl_ms), ms(margin_ms));
            let window = holder_window(ttl, drift, margin);
            // The holder's window measured on the fastest other clock is still shorter than
            // the leader's wait measured on its own: window * (1 + drift) <= ttl * (1 + drift)
            // and window / (1 - drift) <= ttl.
            prop_assert!(window <= drift.slow(ttl));
            prop_assert!(holder_deadline(ms(sent_ms), ttl, drift, margin) < ms(sent_ms) + ttl + Duration::from_nanos(1));
            let received = ms(sent_ms + delay_ms);
            let old = leader_expiry(received, ttl, drift);
            let new = new_leader_expiry(received, ttl, drift, ms(took_over_ms), ms(grace_ms));
            prop_assert!(old >= received + ttl);
            prop_assert!(new >= old);
        }
    }
}
