//! Lifeguard-style local health: a node that notices it is the slow one stretches its own
//! timeouts instead of declaring healthy peers down.
//!
//! foca has no Lifeguard, so the core keeps a saturating score `0..=max` (memberlist's
//! "awareness", Lifeguard's LHM) and multiplies this node's probe interval, probe timeout and
//! suspicion timeout by `score + 1`. What raises the score:
//! - a failed probe while another *different* peer also failed a probe within `window`
//!   (one dead peer is normal; several at once mean we are the problem), +1;
//! - a timer that fires later than `late_threshold` (the process was paused, starved, or its
//!   clock jumped), +1 plus one per whole probe interval of lateness;
//! - an ack that arrives after the probe timeout, +1;
//! - having to refute a suspicion about ourselves, +1.
//!
//! A successful probe lowers it by one. Time comes in as arguments.

// tidy:pure-core

use std::collections::VecDeque;
use std::time::Duration;

use quorate_types::NodeId;
use tokio::time::Instant;

/// How many recent probe failures are remembered.
const FAILURES_KEPT: usize = 16;

/// The local health score and its inputs.
#[derive(Debug, Clone)]
pub struct LocalHealth {
    score: u8,
    max: u8,
    window: Duration,
    late_threshold: Duration,
    probe_period: Duration,
    failures: VecDeque<(NodeId, Instant)>,
}

impl LocalHealth {
    /// `max_multiplier` 1 disables the mechanism (the multiplier stays 1).
    pub fn new(
        max_multiplier: u8,
        window: Duration,
        late_threshold: Duration,
        probe_period: Duration,
    ) -> Self {
        Self {
            score: 0,
            max: max_multiplier.saturating_sub(1),
            window,
            late_threshold,
            probe_period,
            failures: VecDeque::with_capacity(FAILURES_KEPT),
        }
    }

    /// The current score (0 = healthy).
    pub fn score(&self) -> u8 {
        self.score
    }

    /// The factor applied to this node's own timeouts.
    pub fn multiplier(&self) -> u32 {
        u32::from(self.score) + 1
    }

    fn raise(&mut self, by: u32) {
        let by = u8::try_from(by).unwrap_or(u8::MAX);
        self.score = self.score.saturating_add(by).min(self.max);
    }

    /// A probe of `peer` failed (no direct or indirect ack). Returns whether the score rose.
    pub fn probe_failed(&mut self, peer: &NodeId, now: Instant) -> bool {
        while self
            .failures
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > self.window)
        {
            self.failures.pop_front();
        }
        let others = self.failures.iter().any(|(p, _)| p != peer);
        if self.failures.len() == FAILURES_KEPT {
            self.failures.pop_front();
        }
        self.failures.push_back((peer.clone(), now));
        if others {
            self.raise(1);
        }
        others
    }

    /// A probe cycle ended with an ack.
    pub fn probe_succeeded(&mut self) {
        self.score = self.score.saturating_sub(1);
    }

    /// A timer fired `lateness` after its due time. Returns whether the score rose.
    pub fn timer_fired_late(&mut self, lateness: Duration) -> bool {
        if lateness <= self.late_threshold {
            return false;
        }
        let periods = if self.probe_period.is_zero() {
            0
        } else {
            u32::try_from(lateness.as_nanos() / self.probe_period.as_nanos()).unwrap_or(u32::MAX)
        };
        self.raise(periods.saturating_add(1));
        true
    }

    /// An ack arrived after the probe timeout.
    pub fn late_ack(&mut self) {
        self.raise(1);
    }

    /// This node had to refute a suspicion about itself.
    pub fn refuted(&mut self) {
        self.raise(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_dead_peer_does_not_raise_but_many_do() {
        let t0 = tokio::time::Instant::now();
        let mut h = LocalHealth::new(8, ms(3000), ms(100), ms(300));
        let a = NodeId::new("a").unwrap();
        let b = NodeId::new("b").unwrap();
        assert!(!h.probe_failed(&a, t0));
        assert!(!h.probe_failed(&a, t0 + ms(300)));
        assert_eq!(h.multiplier(), 1);
        assert!(h.probe_failed(&b, t0 + ms(600)));
        assert_eq!(h.score(), 1);
        // Outside the window the old failure is forgotten.
        assert!(!h.probe_failed(&a, t0 + ms(10_000)));
        h.probe_succeeded();
        h.probe_succeeded();
        assert_eq!(h.score(), 0);
    }

    #[test]
    fn late_timers_raise_by_lateness_and_saturate() {
        let mut h = LocalHealth::new(8, ms(3000), ms(100), ms(300));
        assert!(!h.timer_fired_late(ms(50)));
        assert!(h.timer_fired_late(ms(650)));
        assert_eq!(h.score(), 3);
        assert!(h.timer_fired_late(ms(60_000)));
        assert_eq!(h.score(), 7);
        assert_eq!(h.multiplier(), 8);
        h.late_ack();
        h.refuted();
        assert_eq!(h.score(), 7);
    }

    #[test]
    fn max_multiplier_one_disables() {
        let mut h = LocalHealth::new(1, ms(3000), ms(100), ms(300));
        h.timer_fired_late(ms(5000));
        h.late_ack();
        assert_eq!(h.multiplier(), 1);
    }
}
