//! Glue between the state machine store and [`crate::lease_clock::LeaseClock`]: every node
//! feeds it applied commands with the local apply time (after the entry was received: safe),
//! and the leader asks it which leases to expire. Time is converted from tokio's monotonic
//! clock (paused and simulated in tests) to a `Duration` since this node's start.

use std::time::Duration;

use quorate_coord_api::LeaseId;
use tokio::time::Instant;

use crate::lease_clock::LeaseClock;
use crate::machine::{Command, Machine, Outcome};

/// The lease clock of one node, with its time origin.
#[derive(Debug)]
pub(crate) struct LeaseTracker {
    origin: Instant,
    clock: LeaseClock,
}

impl LeaseTracker {
    /// A tracker whose clock starts at `origin`, allowing `drift_ppm` of clock-rate drift.
    pub(crate) fn new(origin: Instant, drift_ppm: u32) -> Self {
        Self {
            origin,
            clock: LeaseClock::new(drift_ppm),
        }
    }

    fn since(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.origin)
    }

    /// Records an applied command.
    pub(crate) fn applied(&mut self, index: u64, cmd: &Command, outcome: &Outcome, now: Instant) {
        let t = self.since(now);
        self.clock.observe(index, cmd, outcome, t);
    }

    /// Resets the records after the machine was loaded from a snapshot.
    pub(crate) fn restored(&mut self, machine: &Machine, now: Instant) {
        let t = self.since(now);
        self.clock.restored(machine, t);
    }

    /// The expiry command for leases due at `now`, if any.
    pub(crate) fn expire_command(&mut self, machine: &Machine, now: Instant) -> Option<Command> {
        let t = self.since(now);
        self.clock.expire_command(machine, t)
    }

    /// When the next lease runs out, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.clock.next_deadline().map(|d| self.origin + d)
    }

    /// Time left of lease `id` at `now`.
    pub(crate) fn remaining(&self, id: LeaseId, now: Instant) -> Option<Duration> {
        self.clock.remaining(id, self.since(now))
    }
}
