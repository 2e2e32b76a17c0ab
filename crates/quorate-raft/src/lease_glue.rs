//! Glue between the state machine store and [`crate::lease_clock::LeaseClock`]: every node
//! feeds it applied commands with the local apply time (after the entry was received: safe),
//! and the leader asks it which leases to expire. Time is read from the node's injected clock
//! (`quorate_clock::SharedClock`: tokio time in production, a `SimClock` with its own rate in
//! the simulation), so a Raft leader whose clock runs fast or slow expires leases accordingly.

use std::time::Duration;

use quorate_clock::SharedClock;
use quorate_coord_api::LeaseId;
use quorate_types::lease::Drift;

use crate::lease_clock::LeaseClock;
use crate::machine::{Command, Machine, Outcome};

/// The lease clock of one node, reading time from the node's clock.
#[derive(Debug)]
pub(crate) struct LeaseTracker {
    clock: SharedClock,
    leases: LeaseClock,
}

impl LeaseTracker {
    /// A tracker on `clock`, allowing `drift` of clock-rate drift.
    pub(crate) fn new(clock: SharedClock, drift: Drift) -> Self {
        Self {
            clock,
            leases: LeaseClock::new(drift),
        }
    }

    /// This node's monotonic time now.
    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }

    /// Records an applied command, at the current time.
    pub(crate) fn applied(&mut self, index: u64, cmd: &Command, outcome: &Outcome) {
        let t = self.now();
        self.leases.observe(index, cmd, outcome, t);
    }

    /// Resets the records after the machine was loaded from a snapshot.
    pub(crate) fn restored(&mut self, machine: &Machine) {
        let t = self.now();
        self.leases.restored(machine, t);
    }

    /// This node starts to act as leader now (see [`LeaseClock::took_over`]).
    pub(crate) fn took_over(&mut self, machine: &Machine) {
        let t = self.now();
        self.leases.took_over(machine, t);
    }

    /// The expiry command for leases due now, if any.
    pub(crate) fn expire_command(&mut self, machine: &Machine) -> Option<Command> {
        let t = self.now();
        self.leases.expire_command(machine, t)
    }

    /// When the next lease runs out, if any (this clock's time).
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.leases.next_deadline()
    }

    /// Time left of lease `id` now.
    pub(crate) fn remaining(&self, id: LeaseId) -> Option<Duration> {
        self.leases.remaining(id, self.now())
    }
}
