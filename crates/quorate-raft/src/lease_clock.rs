//! Leader-side lease expiry (design.md "Lease timing").
//!
//! Every node keeps one [`LeaseClock`] and feeds it every applied command with the local
//! monotonic time at which it applied it ([`LeaseClock::observe`]). The clock records, per
//! lease, when this node received the entry of the lease's last renew (grant or keep-alive).
//! The leader expires a lease at `received + ttl * (1 + drift)` by its own clock
//! (`quorate_types::lease::leader_expiry`): since the holder's validity ends at
//! `sent + ttl * (1 - drift) - margin` by the holder's clock and `received >= sent`, the holder
//! has stopped before anyone else can be granted the lease.
//!
//! When a node starts to act as leader (new term, or quorum regained) it calls
//! [`LeaseClock::took_over`]: each live lease then expires at
//! `max(received + ttl * (1 + drift), took_over + grace)` (`new_leader_expiry`), where
//! `received` is this node's own apply-time record and `grace` is [`GRACE_FRACTION`] of the
//! lease's TTL. The record alone is safe (the entry reached this node after the holder sent
//! it); the grace only makes deadlines later, and lets a holder whose renews could not commit
//! during the election reach the new leader before its lease ends. This replaces etcd's rule (a
//! full TTL from the takeover), which added a whole TTL to every failover where the primary
//! died with the Raft leader (issue 16). A node with no record of a lease (it restarted, or
//! installed a snapshot) treats the lease as renewed when it loaded that state
//! ([`LeaseClock::restored`]), and, for any other lease it finds without a matching record,
//! when it first notices (`now` in [`LeaseClock::expired`]): all of these are later than the
//! holder's send time, so all are safe.
//!
//! Recording at apply time rather than at append time only makes deadlines later (safe).
//! Time is an argument everywhere: a `Duration` since any fixed origin of one monotonic clock.
// tidy:pure-core

use std::collections::BTreeMap;
use std::time::Duration;

use quorate_coord_api::LeaseId;
use quorate_types::lease::{self, Drift};

use crate::machine::{Command, Machine, Outcome};

/// The most leases one `LeaseExpire` command ends (the rest go in the next one).
pub const EXPIRE_BATCH_MAX: usize = 1024;

/// How long the clock waits before proposing the expiry of a lease again, by default (the
/// first proposal may have failed, e.g. across a leader change).
pub const EXPIRE_RETRY_DEFAULT: Duration = Duration::from_millis(500);

/// The grace a new leader gives each lease, as a fraction of the lease's TTL (1/2): a holder
/// renews at least every third of its TTL (failover: a quarter; sessions: a third), so within
/// half a TTL of the takeover its next renew has reached the new leader.
pub const GRACE_FRACTION: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Record {
    /// Index of the renew entry this record is for.
    renewed_at: u64,
    /// Local time this node received (applied) it.
    received: Duration,
    /// The lease's TTL.
    ttl: Duration,
    /// When this node took over as leader while this record was current (the grace floor).
    took_over: Option<Duration>,
    /// Set once its expiry was proposed: do not propose again before this time.
    retry_at: Option<Duration>,
}

impl Record {
    fn fresh(renewed_at: u64, received: Duration, ttl: Duration) -> Record {
        Record {
            renewed_at,
            received,
            ttl,
            took_over: None,
            retry_at: None,
        }
    }

    fn expiry(&self, drift: Drift) -> Duration {
        match self.took_over {
            None => lease::leader_expiry(self.received, self.ttl, drift),
            Some(at) => lease::new_leader_expiry(
                self.received,
                self.ttl,
                drift,
                at,
                self.ttl / GRACE_FRACTION,
            ),
        }
    }
}

/// Per-node record of lease renew times; decides which leases the leader expires.
#[derive(Clone, Debug)]
pub struct LeaseClock {
    drift: Drift,
    expire_retry: Duration,
    records: BTreeMap<LeaseId, Record>,
}

impl LeaseClock {
    /// A clock with no records, allowing clock rates to differ by `drift`.
    pub fn new(drift: Drift) -> LeaseClock {
        LeaseClock {
            drift,
            expire_retry: EXPIRE_RETRY_DEFAULT,
            records: BTreeMap::new(),
        }
    }

    /// Sets how long [`LeaseClock::expire_command`] waits before proposing the expiry of the
    /// same lease again (default [`EXPIRE_RETRY_DEFAULT`]); at least 1 ms.
    pub fn with_expire_retry(mut self, retry: Duration) -> LeaseClock {
        self.expire_retry = retry.max(Duration::from_millis(1));
        self
    }

    /// The drift bound this clock allows.
    pub fn drift(&self) -> Drift {
        self.drift
    }

    /// Feeds one applied command: `index` is its log index, `outcome` what the machine
    /// returned, `now` this node's monotonic time.
    pub fn observe(&mut self, index: u64, cmd: &Command, outcome: &Outcome, now: Duration) {
        match (cmd, outcome) {
            (
                Command::LeaseGrant { .. } | Command::LeaseKeepAlive { .. },
                Outcome::Lease { id, ttl_ms },
            ) => {
                self.records.insert(
                    *id,
                    Record::fresh(index, now, Duration::from_millis(*ttl_ms)),
                );
            }
            (_, Outcome::LeasesEnded { ids, .. }) => {
                for id in ids {
                    self.records.remove(id);
                }
            }
            _ => {}
        }
    }

    /// Replaces every record: each live lease of `machine` counts as renewed at `now`. Used
    /// after `machine` was loaded without observing its entries (node start, snapshot install).
    pub fn restored(&mut self, machine: &Machine, now: Duration) {
        self.records = machine
            .leases()
            .map(|(id, l)| {
                (
                    id,
                    Record::fresh(l.renewed_at, now, Duration::from_millis(l.ttl_ms)),
                )
            })
            .collect();
    }

    /// This node starts to act as leader at `now`: every live lease expires at
    /// `max(its own record's leader expiry, now + ttl / GRACE_FRACTION)` (see the module docs).
    /// Leases without a record get one at `now`; pending expiry proposals are forgotten (they
    /// were made in another term).
    pub fn took_over(&mut self, machine: &Machine, now: Duration) {
        self.sync(machine, now);
        for r in self.records.values_mut() {
            r.took_over = Some(now);
            r.retry_at = None;
        }
    }

    /// The leases of `machine` whose time ran out at `now`, with the renew index the decision
    /// is based on (whether or not their expiry was already proposed). Leases without a
    /// matching record get one at `now`; records of leases no longer in the machine are
    /// dropped.
    pub fn expired(&mut self, machine: &Machine, now: Duration) -> Vec<(LeaseId, u64)> {
        self.sync(machine, now);
        self.records
            .iter()
            .filter(|(_, r)| now >= r.expiry(self.drift))
            .map(|(id, r)| (*id, r.renewed_at))
            .collect()
    }

    /// The `LeaseExpire` command the leader should propose at `now`, if any lease ran out
    /// and its expiry was not proposed within the last expire-retry period (at most
    /// [`EXPIRE_BATCH_MAX`] leases). Marks them, so [`LeaseClock::next_deadline`] moves on.
    pub fn expire_command(&mut self, machine: &Machine, now: Duration) -> Option<Command> {
        self.sync(machine, now);
        let retry_at = now.saturating_add(self.expire_retry);
        let drift = self.drift;
        let mut leases = Vec::new();
        for (id, r) in &mut self.records {
            let due = now >= r.expiry(drift) && r.retry_at.is_none_or(|at| now >= at);
            if due && leases.len() < EXPIRE_BATCH_MAX {
                r.retry_at = Some(retry_at);
                leases.push((*id, r.renewed_at));
            }
        }
        (!leases.is_empty()).then_some(Command::LeaseExpire { leases })
    }

    /// Makes the records match the machine's live leases (see [`LeaseClock::expired`]).
    fn sync(&mut self, machine: &Machine, now: Duration) {
        let mut records = BTreeMap::new();
        for (id, lease) in machine.leases() {
            let ttl = Duration::from_millis(lease.ttl_ms);
            let record = match self.records.get(&id) {
                Some(r) if r.renewed_at == lease.renewed_at && r.ttl == ttl => *r,
                _ => Record::fresh(lease.renewed_at, now, ttl),
            };
            records.insert(id, record);
        }
        self.records = records;
    }

    /// The deadline of lease `id` by this clock, if recorded.
    pub fn deadline(&self, id: LeaseId) -> Option<Duration> {
        self.records.get(&id).map(|r| r.expiry(self.drift))
    }

    /// When the leader should next call [`LeaseClock::expire_command`]: the earliest deadline
    /// of a lease whose expiry is not proposed yet, or the retry time of one that is.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.records
            .values()
            .map(|r| match r.retry_at {
                Some(at) => at,
                None => r.expiry(self.drift),
            })
            .min()
    }

    /// Time left before lease `id` expires by this clock at `now`.
    pub fn remaining(&self, id: LeaseId, now: Duration) -> Option<Duration> {
        self.deadline(id).map(|d| d.saturating_sub(now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use crate::machine::MachineLimits;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    struct Node {
        machine: Machine,
        clock: LeaseClock,
        index: u64,
    }

    impl Node {
        fn new() -> Node {
            Node {
                machine: Machine::new(MachineLimits::lan()),
                clock: LeaseClock::new(Drift::DEFAULT),
                index: 0,
            }
        }
        fn apply(&mut self, cmd: Command, now: Duration) -> Outcome {
            self.index += 1;
            let (outcome, _) = self.machine.apply(self.index, &cmd);
            self.clock.observe(self.index, &cmd, &outcome, now);
            outcome
        }
        fn grant(&mut self, ttl_ms: u64, now: Duration) -> LeaseId {
            match self.apply(Command::LeaseGrant { id: None, ttl_ms }, now) {
                Outcome::Lease { id, .. } => id,
                other => panic!("grant failed: {other:?}"),
            }
        }
    }

    #[test]
    fn expires_at_received_plus_stretched_ttl() {
        let mut n = Node::new();
        let id = n.grant(10_000, ms(1_000));
        // 10 s * 1.01 = 10.1 s after receipt.
        assert_eq!(n.clock.deadline(id), Some(ms(11_100)));
        assert!(n.clock.expired(&n.machine, ms(11_099)).is_empty());
        assert_eq!(n.clock.expired(&n.machine, ms(11_100)), vec![(id, 1)]);
        assert_eq!(n.clock.remaining(id, ms(6_100)), Some(ms(5_000)));
    }

    #[test]
    fn keep_alive_moves_the_deadline_and_guards_the_expire_entry() {
        let mut n = Node::new();
        let id = n.grant(2_000, ms(0));
        let stale = n.clock.expire_command(&n.machine, ms(2_020)).unwrap();
        // A renew commits before the leader's expire entry: the expire must not end the lease.
        n.apply(Command::LeaseKeepAlive { id }, ms(2_010));
        assert_eq!(n.clock.deadline(id), Some(ms(4_030)));
        let outcome = n.apply(stale, ms(2_030));
        assert_eq!(
            outcome,
            Outcome::LeasesEnded {
                ids: vec![],
                keys_deleted: 0
            }
        );
        assert!(n.machine.lease(id).is_some());
        let cmd = n.clock.expire_command(&n.machine, ms(4_030)).unwrap();
        let outcome = n.apply(cmd, ms(4_031));
        assert_eq!(
            outcome,
            Outcome::LeasesEnded {
                ids: vec![id],
                keys_deleted: 0
            }
        );
        assert_eq!(n.clock.next_deadline(), None);
    }

    #[test]
    fn new_leader_uses_its_own_receive_times() {
        // Leader A and follower B apply the same entries at different local times (B's clock
        // origin differs; only durations matter).
        let mut a = Node::new();
        let mut b = Node::new();
        let cmd = Command::LeaseGrant {
            id: None,
            ttl_ms: 3_000,
        };
        let oa = a.apply(cmd.clone(), ms(100));
        let ob = b.apply(cmd, ms(50_120));
        assert_eq!(oa, ob);
        let Outcome::Lease { id, .. } = oa else {
            panic!("grant failed")
        };
        // A dies; B leads. B's deadline counts from B's receipt, not from a fresh TTL.
        assert_eq!(b.clock.deadline(id), Some(ms(50_120 + 3_030)));
        assert!(b.clock.expired(&b.machine, ms(53_149)).is_empty());
        assert_eq!(b.clock.expired(&b.machine, ms(53_150)).len(), 1);
    }

    #[test]
    fn restart_counts_from_load_time_and_unknown_leases_from_first_sight() {
        let mut n = Node::new();
        let id = n.grant(2_000, ms(0));
        // The node restarts: a fresh clock, state loaded at t=9 s (its own new origin).
        let mut fresh = LeaseClock::new(Drift::DEFAULT);
        fresh.restored(&n.machine, ms(9_000));
        assert_eq!(fresh.deadline(id), Some(ms(11_020)));
        // A clock never told about the lease records it at first sight.
        let mut blind = LeaseClock::new(Drift::DEFAULT);
        assert!(blind.expired(&n.machine, ms(500)).is_empty());
        assert_eq!(blind.deadline(id), Some(ms(2_520)));
    }

    #[test]
    fn a_proposed_expiry_is_retried_only_after_the_retry_period() {
        let mut n = Node::new();
        n.clock = LeaseClock::new(Drift::ZERO).with_expire_retry(ms(300));
        let id = n.grant(2_000, ms(0));
        assert_eq!(n.clock.next_deadline(), Some(ms(2_000)));
        let first = n.clock.expire_command(&n.machine, ms(2_000));
        assert_eq!(
            first,
            Some(Command::LeaseExpire {
                leases: vec![(id, 1)]
            })
        );
        // The proposal is in flight (or was lost): no hot loop of re-proposals.
        assert_eq!(n.clock.expire_command(&n.machine, ms(2_001)), None);
        assert_eq!(n.clock.next_deadline(), Some(ms(2_300)));
        assert!(n.clock.expire_command(&n.machine, ms(2_300)).is_some());
        // `expired` reports it either way.
        assert_eq!(n.clock.expired(&n.machine, ms(2_301)), vec![(id, 1)]);
    }

    #[test]
    fn revoke_drops_the_record() {
        let mut n = Node::new();
        let id = n.grant(2_000, ms(0));
        n.apply(Command::LeaseRevoke { id }, ms(10));
        assert_eq!(n.clock.deadline(id), None);
    }

    #[test]
    fn a_new_leader_keeps_its_records_and_adds_only_the_grace() {
        // B received the grant at 1 s (3 s TTL): by its record the lease ends at 4.03 s.
        let mut b = Node::new();
        let id = b.grant(3_000, ms(1_000));
        // B takes over quickly: its record decides, the grace (1.5 s) ends earlier.
        b.clock.took_over(&b.machine, ms(1_200));
        assert_eq!(b.clock.deadline(id), Some(ms(4_030)));
        // B takes over after a long election: the lease gets the grace from the takeover,
        // not a full TTL (etcd's rule would give 7 s + 3 s).
        b.clock.took_over(&b.machine, ms(7_000));
        assert_eq!(b.clock.deadline(id), Some(ms(8_500)));
        assert!(b.clock.expire_command(&b.machine, ms(8_499)).is_none());
        assert_eq!(
            b.clock.expire_command(&b.machine, ms(8_500)),
            Some(Command::LeaseExpire {
                leases: vec![(id, 1)]
            })
        );
        // A renew after the takeover counts from its own receipt again.
        b.apply(Command::LeaseKeepAlive { id }, ms(8_000));
        assert_eq!(b.clock.deadline(id), Some(ms(11_030)));
    }

    #[test]
    fn a_takeover_forgets_pending_expiry_proposals() {
        let mut n = Node::new();
        let id = n.grant(2_000, ms(0));
        assert!(n.clock.expire_command(&n.machine, ms(2_020)).is_some());
        // The proposal was lost with the old term; the new term decides afresh at its deadline.
        n.clock.took_over(&n.machine, ms(2_100));
        assert_eq!(n.clock.next_deadline(), Some(ms(3_100)));
        assert_eq!(n.clock.deadline(id), Some(ms(3_100)));
    }
}
