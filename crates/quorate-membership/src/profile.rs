//! Named timing profiles: `lan`, `wan`, `fast-lan`, with memberlist's numbers beside them.
//!
//! | setting | `fast-lan` | `lan` | `wan` | memberlist LAN | memberlist WAN |
//! |---|---|---|---|---|---|
//! | probe interval | 100 ms | 300 ms | 5 s | 1 s | 5 s |
//! | probe timeout (direct ack) | 50 ms | 150 ms | 3 s | 500 ms | 3 s |
//! | indirect probes | 3 | 3 | 3 | 3 | 3 |
//! | suspicion multiplier α | 4 | 4 | 6 | 4 | 6 |
//! | suspicion timeout, N ≤ 10 / 32 / 128 / 512 | 0.4 / 0.6 / 0.84 / 1.08 s | 1.2 / 1.8 / 2.5 / 3.3 s | 30 / 45 / 63 / 81 s | 4 / 6 / 8.4 / 10.8 s (floor; ceiling 6×) | 30 / 45 / 63 / 81 s (floor) |
//! | gossip interval × fan-out | 50 ms × 3 | 200 ms × 3 | 500 ms × 4 | 200 ms × 3 | 500 ms × 4 |
//! | push/pull full sync (× memberlist's scale beyond 32 members) | 10 s | 30 s | 60 s | 30 s | 60 s |
//! | reconnect to down members, re-tell suspected ones (up to fan-out each) | 250 ms | 500 ms | 5 s | (Serf: 30 s) | (Serf: 30 s) |
//! | local health max multiplier | 8 | 8 | 8 | 8 | 8 |
//! | leave propagation delay | 200 ms | 500 ms | 2 s | (Serf: 1 s) | (Serf: 1 s) |
//!
//! Suspicion timeout = α · max(1, log10 N) · probe interval (memberlist's formula for its
//! floor; foca applies it as a fixed timeout).
//!
//! **Why `lan` probes 3.3× as often as memberlist LAN.** Detection time is dominated by the
//! wait until some member probes the dead node (its p99 is ≈ 4.6 probe intervals, since each
//! of the N − 1 probers reaches it at a uniformly random point of its round-robin cycle) plus
//! the suspicion timeout. memberlist LAN therefore detects in ≈ 6–11 s at p99 for N = 32. With
//! a 300 ms interval and the suspicion timeout above, `lan` detects in ≈ 3–3.5 s at N = 32 for
//! ~7 messages per node per second, which a LAN carries easily. The short suspicion timeout is
//! safe because a suspected node is told directly by its suspector (Lifeguard's "buddy"
//! system) and refutes at once, and because a node that is itself slow stretches its own
//! timeouts (local health). `fast-lan` is for small clusters (3–7 nodes) on one switch that
//! want sub-second detection; `wan` keeps memberlist's WAN numbers.
//!
//! **Why reconnects are 20-60x as frequent as Serf's.** After a partition heals, each side holds
//! the other down (or still suspected, the buddy message that started the suspicion lost in the
//! partition), and only a reconnect (a small datagram to a down member, which renews itself on
//! reading it) or a repeated buddy message (which makes a suspected member refute) brings the
//! views back. With Serf's 30 s (quorate's `lan` once had 10 s) a 2 s cut of one node of three
//! left views wrong for up to 42 s in the simulation; with 500 ms every view is `Alive` again
//! within 2 s of the heal (`heal_every_view_is_alive_within_2s`, 100 seeds; p50 ~0.2 s, max
//! 1.7 s over 400 runs). The cost is up to fan-out small datagrams per interval while some
//! member is down or suspected, nothing otherwise.

use std::time::Duration;

/// The timing settings of the gossip protocol. Build one with [`Profile::lan`],
/// [`Profile::wan`], [`Profile::fast_lan`] or [`Profile::named`], then adjust fields if needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: &'static str,
    /// How often this node probes one member.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    pub probe_timeout: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: u8,
    /// α in `α · max(1, log10 N) · probe_interval`, the suspicion timeout.
    pub suspicion_mult: u8,
    /// How often queued updates are gossiped.
    pub gossip_interval: Duration,
    /// To how many members each gossip round goes.
    pub gossip_fanout: u8,
    /// How often this node exchanges its full state with a random member.
    pub push_pull_interval: Duration,
    /// How often this node contacts up to `gossip_fanout` random members it considers down, and
    /// re-tells up to as many suspected ones that it suspects them (heals partitions: both
    /// sides learn the other is back).
    pub reconnect_interval: Duration,
    /// The largest factor local health may stretch this node's timeouts by (1 disables it).
    pub local_health_max_multiplier: u8,
    /// How long a leaving node spreads its leave intent before it stops answering.
    pub leave_propagate_delay: Duration,
    /// First join retry delay (doubles up to `join_backoff_max`).
    pub join_backoff_initial: Duration,
    /// Largest join retry delay.
    pub join_backoff_max: Duration,
    /// How long two voters must disagree before a split-brain conflict is reported.
    pub conflict_grace: Duration,
}

impl Profile {
    /// LAN: faster than memberlist LAN (see the module docs for why and at what cost).
    pub fn lan() -> Self {
        Self {
            name: "lan",
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(150),
            indirect_probes: 3,
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_millis(500),
            local_health_max_multiplier: 8,
            leave_propagate_delay: Duration::from_millis(500),
            join_backoff_initial: Duration::from_millis(300),
            join_backoff_max: Duration::from_secs(10),
            conflict_grace: Duration::from_secs(3),
        }
    }

    /// WAN: memberlist's WAN numbers.
    pub fn wan() -> Self {
        Self {
            name: "wan",
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            indirect_probes: 3,
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            push_pull_interval: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(5),
            local_health_max_multiplier: 8,
            leave_propagate_delay: Duration::from_secs(2),
            join_backoff_initial: Duration::from_secs(1),
            join_backoff_max: Duration::from_secs(60),
            conflict_grace: Duration::from_secs(30),
        }
    }

    /// Fast LAN: small clusters on one switch, sub-second detection.
    pub fn fast_lan() -> Self {
        Self {
            name: "fast-lan",
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(50),
            indirect_probes: 3,
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(10),
            reconnect_interval: Duration::from_millis(250),
            local_health_max_multiplier: 8,
            leave_propagate_delay: Duration::from_millis(200),
            join_backoff_initial: Duration::from_millis(100),
            join_backoff_max: Duration::from_secs(5),
            conflict_grace: Duration::from_secs(1),
        }
    }

    /// The profile called `name` (`lan`, `wan`, `fast-lan`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "lan" => Some(Self::lan()),
            "wan" => Some(Self::wan()),
            "fast-lan" | "fast_lan" => Some(Self::fast_lan()),
            _ => None,
        }
    }

    /// The suspicion timeout for a cluster of `n` members.
    pub fn suspicion_timeout(&self, n: u32) -> Duration {
        let factor = f64::from(n.max(1)).log10().max(1.0);
        self.probe_interval
            .mul_f64(f64::from(self.suspicion_mult) * factor)
    }

    /// The push/pull interval for `n` members: scaled like memberlist's `pushPullScale`
    /// (× `ceil(log2 N − log2 32) + 1` beyond 32 members) so full syncs stay O(1) per second.
    pub fn push_pull_interval_for(&self, n: u32) -> Duration {
        if n <= 32 {
            return self.push_pull_interval;
        }
        let scale = (f64::from(n).log2() - 5.0).ceil() + 1.0;
        self.push_pull_interval.mul_f64(scale)
    }

    /// How many times an update is retransmitted for `n` members (memberlist:
    /// `RetransmitMult · ceil(log10(N + 1))`, with RetransmitMult 4).
    pub fn max_transmissions(n: u32) -> u8 {
        let v = 4.0 * (f64::from(n) + 1.0).log10().ceil();
        // At most 4 * 10 = 40 for u32 sizes; never 0.
        (v as u8).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_the_docs_match() {
        let lan = Profile::lan();
        assert_eq!(lan.suspicion_timeout(5), Duration::from_millis(1200));
        assert_eq!(lan.suspicion_timeout(32).as_millis(), 1806);
        assert_eq!(lan.suspicion_timeout(128).as_millis(), 2528);
        assert_eq!(lan.suspicion_timeout(512).as_millis(), 3251);
        assert_eq!(
            Profile::wan().suspicion_timeout(10),
            Duration::from_secs(30)
        );
        assert_eq!(Profile::fast_lan().suspicion_timeout(3).as_millis(), 400);
        assert_eq!(lan.push_pull_interval_for(32), Duration::from_secs(30));
        assert_eq!(lan.push_pull_interval_for(512), Duration::from_secs(150));
        assert_eq!(Profile::max_transmissions(9), 4);
        assert_eq!(Profile::max_transmissions(10), 8);
        assert_eq!(Profile::max_transmissions(512), 12);
        assert_eq!(Profile::named("fast-lan").map(|p| p.name), Some("fast-lan"));
        assert!(Profile::named("gigabit").is_none());
    }
}
