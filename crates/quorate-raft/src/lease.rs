//! The leader lease: whether a Raft leader may still act (serve linearizable reads and writes,
//! report itself leader) given how long ago a quorum last acknowledged it.
//!
//! Why it is needed: openraft 0.9 has no check-quorum step-down, so a leader cut off from its
//! followers stays `Leader` until the partition heals. Followers refuse to vote for
//! `election_max` after the last heartbeat they accepted (openraft's `leader_lease`), and
//! `millis_since_quorum_ack` is counted from the *send* time of the newest AppendEntries a
//! quorum acknowledged. So no other leader can exist before `send + election_max` (by the
//! followers' clocks). The leader stops at
//! `send + election_max * (1 - drift) - refresh_lag` by its own clock, where `refresh_lag`
//! (`1.5 x heartbeat`, openraft's core tick) covers the staleness of the metric, and the age is
//! advanced by the time since the metric was observed, measured on the node's injected clock
//! (`quorate_clock::Clock`), so a simulation can run the leader's clock fast or slow.
//!
//! This is the holder rule of `quorate_types::lease` with the Raft leadership as the lease:
//! TTL `election_max`, margin `refresh_lag`: `usable = holder_window(election_max, drift,
//! refresh_lag)`, rounded down.
// tidy:pure-core

use std::time::Duration;

use quorate_types::lease::holder_window;

use crate::config::Timing;

/// The leader-lease arithmetic for one timing profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderLease {
    usable: Duration,
}

impl LeaderLease {
    /// The lease for `timing`.
    pub fn new(timing: &Timing) -> Self {
        Self {
            usable: holder_window(timing.election_max, timing.drift, timing.refresh_lag()),
        }
    }

    /// How long after the last quorum-acknowledged send the leader may act.
    pub fn usable(&self) -> Duration {
        self.usable
    }

    /// The estimated age of the last quorum acknowledgement: the metric's value plus the time
    /// since it was observed. `None` without a value (not leader, or no ack yet).
    pub fn ack_age(ack_ms: Option<u64>, since_observed: Duration) -> Option<Duration> {
        ack_ms.map(|ms| Duration::from_millis(ms) + since_observed)
    }

    /// Whether a leader whose quorum ack is `age` old may still act. A leader with no ack yet
    /// (just elected, `None`) may not.
    pub fn valid(&self, age: Option<Duration>) -> bool {
        age.is_some_and(|a| a < self.usable)
    }

    /// How long from now the lease stays valid (`None` if it is not valid now).
    pub fn remaining(&self, age: Option<Duration>) -> Option<Duration> {
        let a = age?;
        (a < self.usable).then(|| self.usable - a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(timing: Timing, ack_ms: Option<u64>, since_ms: u64, want: bool) {
        let lease = LeaderLease::new(&timing);
        let age = LeaderLease::ack_age(ack_ms, Duration::from_millis(since_ms));
        assert_eq!(lease.valid(age), want, "ack {ack_ms:?} + {since_ms} ms");
    }

    #[test]
    fn lan_lease_is_election_max_minus_lag_and_drift() {
        // 300 ms - 1 % (3 ms) - 60 ms.
        assert_eq!(
            LeaderLease::new(&Timing::lan()).usable(),
            Duration::from_millis(237)
        );
    }

    #[test]
    fn validity() {
        check(Timing::lan(), Some(40), 0, true);
        check(Timing::lan(), Some(200), 36, true);
        check(Timing::lan(), Some(200), 37, false);
        check(Timing::lan(), Some(10), 300, false);
        check(Timing::lan(), None, 0, false);
        check(Timing::wan(), Some(1000), 100, true);
    }

    #[test]
    fn remaining_counts_down() {
        let lease = LeaderLease::new(&Timing::lan());
        assert_eq!(
            lease.remaining(Some(Duration::from_millis(20))),
            Some(Duration::from_millis(217))
        );
        assert_eq!(lease.remaining(Some(Duration::from_millis(237))), None);
    }
}
