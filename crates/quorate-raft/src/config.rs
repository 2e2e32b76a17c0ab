//! Configuration of a Raft node: timing profiles (`lan`, `wan`), limits, and the mapping from
//! quorate node names to openraft's numeric ids.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::time::Duration;

use quorate_types::NodeId;
use quorate_types::lease::Drift;

use crate::error::NodeError;

/// Heartbeat and election timing. Named profiles carry their reasons; see [`Timing::lan`] and
/// [`Timing::wan`].
///
/// openraft 0.9 facts these numbers rest on (see `research/spike-openraft-turmoil-foca.md`): a
/// follower refuses to vote for `election_max` after the last heartbeat it accepted (openraft's
/// `leader_lease`). openraft's own election timer is off; `node/elector.rs` starts an election
/// after a pre-vote, once the node has heard no leader for `election_max + U(0, max - min)`.
/// Failover after a leader crash is therefore about `max + U(0, max - min)` minus the time
/// since the last heartbeat, plus a pre-vote, a vote and a commit (a few ms on a LAN); a split
/// vote adds `min + U(0, max - min)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Lower bound of the election timeout.
    pub election_min: Duration,
    /// Upper bound of the election timeout (also openraft's leader lease: followers refuse to
    /// vote for this long after the last heartbeat).
    pub election_max: Duration,
    /// Bound on the rate difference of any two nodes' monotonic clocks. The local leader lease
    /// is shortened by it and lease expiry lengthened.
    pub drift: Drift,
}

impl Timing {
    /// One data centre or LAN (RTT well below 5 ms): heartbeat 40 ms, election 200-300 ms.
    ///
    /// Reasons: a Raft leader crash must be repaired inside a role holder's lease window
    /// (544 ms in the failover `lan` profile, renewed every 100 ms) so that the crash of a Raft
    /// leader that is not the primary does not interrupt the primary: failover is about
    /// `300 + U(0, 100)` ms after the last heartbeat (median ~0.33 s in the simulation). A
    /// heartbeat of 40 ms is 8x a LAN RTT (room for fsync and scheduling on busy hosts); the
    /// election minimum of 200 ms is 5 heartbeats, and an election needs a quorum that heard
    /// nothing for 300 ms (the pre-vote), so one slow heartbeat never starts one; the local
    /// leader lease (300 ms minus drift and the 60 ms refresh lag: 237 ms) stays well above the
    /// idle quorum-ack age (~80 ms).
    pub fn lan() -> Self {
        Self {
            heartbeat: Duration::from_millis(40),
            election_min: Duration::from_millis(200),
            election_max: Duration::from_millis(300),
            drift: Drift::DEFAULT,
        }
    }

    /// Nodes in different regions (RTT up to ~150 ms): heartbeat 150 ms, election 1.0-1.5 s.
    ///
    /// Reasons: the heartbeat is about one WAN RTT (etcd's advice); the election minimum is
    /// about 7 RTTs (etcd asks for >= 10x RTT of the *timeout*, i.e. 1.5 s at the top) so a
    /// slow round trip does not depose a healthy leader; failover is about 1.5-2 s.
    pub fn wan() -> Self {
        Self {
            heartbeat: Duration::from_millis(150),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(1500),
            drift: Drift::DEFAULT,
        }
    }

    /// A profile by name (`"lan"` or `"wan"`).
    pub fn profile(name: &str) -> Result<Self, NodeError> {
        match name {
            "lan" => Ok(Self::lan()),
            "wan" => Ok(Self::wan()),
            other => Err(NodeError::Config(format!(
                "timing profile {other:?} is unknown: use \"lan\" or \"wan\""
            ))),
        }
    }

    /// The core tick period of openraft (`1.5 x heartbeat`): how stale
    /// `millis_since_quorum_ack` can be.
    pub fn refresh_lag(&self) -> Duration {
        self.heartbeat * 3 / 2
    }

    /// Checks `heartbeat < election_min < election_max` with room for the lease.
    pub fn validate(&self) -> Result<(), NodeError> {
        if self.heartbeat.is_zero() {
            return Err(NodeError::Config(
                "timing: heartbeat must be > 0".to_owned(),
            ));
        }
        if self.election_min < self.heartbeat * 3 {
            return Err(NodeError::Config(format!(
                "timing: election_min = {:?} is below the minimum 3 x heartbeat = {:?}",
                self.election_min,
                self.heartbeat * 3
            )));
        }
        if self.election_max <= self.election_min {
            return Err(NodeError::Config(format!(
                "timing: election_max = {:?} must exceed election_min = {:?}",
                self.election_max, self.election_min
            )));
        }
        let lease = crate::lease::LeaderLease::new(self);
        if lease.usable().is_zero() {
            return Err(NodeError::Config(format!(
                "timing: election_max = {:?} leaves no leader lease after the refresh lag {:?} and drift",
                self.election_max,
                self.refresh_lag()
            )));
        }
        Ok(())
    }
}

/// Limits of a Raft node; every queue, frame and batch is bounded here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame the Raft transport sends or accepts (bytes, header included).
    pub frame_bytes_max: NonZeroU32,
    /// The largest encoded command accepted for proposal (bytes). Larger ones fail with
    /// `InvalidArgument` before they reach the log. Must fit one frame with room to spare.
    pub command_bytes_max: NonZeroUsize,
    /// The most log entries in one AppendEntries RPC (openraft `max_payload_entries`). A batch
    /// that does not fit `frame_bytes_max` is halved (openraft's `PayloadTooLarge` hint).
    pub append_entries_max: NonZeroU64,
    /// The most queued storage writes (appends, votes) waiting for the group-commit writer.
    pub write_queue_max: NonZeroUsize,
    /// The most log operations merged into one durable redb transaction.
    pub group_commit_max: NonZeroUsize,
    /// Take a snapshot after this many applied entries since the last one.
    pub snapshot_every_entries: NonZeroU64,
    /// Entries kept in the log behind the snapshot (for slow followers); the log holds at most
    /// about `snapshot_every_entries + log_keep_entries` entries.
    pub log_keep_entries: u64,
    /// The largest snapshot chunk sent in one frame.
    pub snapshot_chunk_bytes: NonZeroUsize,
    /// How long one RPC to a peer may take before it counts as failed.
    pub rpc_timeout: Duration,
    /// How long a connect to a peer may take.
    pub connect_timeout: Duration,
    /// How long a forwarded client request may take at the leader.
    pub forward_timeout: Duration,
    /// Idle outbound connections kept per peer for reuse.
    pub idle_connections_per_peer: usize,
    /// The most inbound connections served at once; more are closed at accept.
    pub inbound_connections_max: NonZeroUsize,
    /// An inbound connection without a request for this long is closed.
    pub inbound_idle_timeout: Duration,
    /// How long a client write may wait for its commit before it reports `Timeout`.
    pub write_timeout: Duration,
    /// The longest a node holds a remote watch poll (`network::WatchPoll::wait`) that has no
    /// event to send yet; a poll asking for more is refused with `InvalidArgument`.
    pub watch_wait_max: Duration,
    /// The most events one watch poll may ask for (`network::WatchPoll::max_events`).
    pub watch_events_max: NonZeroU32,
    /// The most watch polls a node holds at once. Each held poll keeps one inbound
    /// connection, so this stays below `inbound_connections_max` (peers need the rest); a
    /// poll beyond it fails with `ResourceExhausted`.
    pub watch_polls_held_max: NonZeroUsize,
    /// An inbound connection that has not delivered an authentic frame this long after
    /// accept is closed (slowloris: a silent connection costs a slot only this long).
    pub pre_auth_timeout: Duration,
    /// The most inbound connections from one source IP address at once.
    pub inbound_per_ip_max: NonZeroUsize,
    /// The most inbound connections not yet authenticated at once; a new one closes the
    /// oldest. The rest of `inbound_connections_max` is left to authenticated peers.
    pub inbound_unauthenticated_max: NonZeroUsize,
    /// How long writing one reply to an inbound connection may take (a client that never
    /// reads is closed after this).
    pub send_timeout: Duration,
    /// At most one warning line per source address per this interval about bad inbound
    /// connections; the next line says how many were suppressed.
    pub warn_interval: Duration,
    /// First delay before a fresh connection to a peer that closed the last one unanswered
    /// (wrong key, clock skew, full); doubles per failure.
    pub reconnect_backoff_min: Duration,
    /// The largest reconnect delay.
    pub reconnect_backoff_max: Duration,
    /// The largest snapshot a node receives (bytes): an InstallSnapshot chunk ending past it
    /// is refused. Snapshots are held in memory whole while they are received.
    pub snapshot_bytes_max: NonZeroU64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: NonZeroU32::new(16 << 20).unwrap_or(NonZeroU32::MIN),
            command_bytes_max: NonZeroUsize::new(2 << 20).unwrap_or(NonZeroUsize::MIN),
            append_entries_max: NonZeroU64::new(256).unwrap_or(NonZeroU64::MIN),
            write_queue_max: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            group_commit_max: NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN),
            snapshot_every_entries: NonZeroU64::new(5000).unwrap_or(NonZeroU64::MIN),
            log_keep_entries: 1000,
            snapshot_chunk_bytes: NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN),
            rpc_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            forward_timeout: Duration::from_secs(5),
            idle_connections_per_peer: 16,
            inbound_connections_max: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            inbound_idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(5),
            watch_wait_max: Duration::from_secs(10),
            watch_events_max: NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN),
            watch_polls_held_max: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            // A peer authenticates in one round trip; 5 s leaves room for a loaded host.
            pre_auth_timeout: Duration::from_secs(5),
            // A peer keeps up to `idle_connections_per_peer` (16) pooled connections plus
            // a few in flight; nodes and clients on one host share an address.
            inbound_per_ip_max: NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            inbound_unauthenticated_max: NonZeroUsize::new(128).unwrap_or(NonZeroUsize::MIN),
            // A full 16 MiB frame at 10 MB/s takes 1.6 s.
            send_timeout: Duration::from_secs(10),
            warn_interval: Duration::from_secs(10),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            snapshot_bytes_max: NonZeroU64::new(1 << 30).unwrap_or(NonZeroU64::MIN),
        }
    }
}

impl Limits {
    /// Checks that one command and one snapshot chunk fit a frame, and that timeouts are set.
    pub fn validate(&self) -> Result<(), NodeError> {
        let frame = u64::from(self.frame_bytes_max.get());
        if frame > u64::from(quorate_wire::FRAME_BYTES_LIMIT) {
            return Err(NodeError::Config(format!(
                "limits: frame_bytes_max = {frame} exceeds the wire limit {}",
                quorate_wire::FRAME_BYTES_LIMIT
            )));
        }
        if self.command_bytes_max.get() as u64 + 64 * 1024 > frame {
            return Err(NodeError::Config(format!(
                "limits: command_bytes_max = {} + 64 KiB of framing does not fit \
                 frame_bytes_max = {frame}: lower the one or raise the other",
                self.command_bytes_max
            )));
        }
        if self.snapshot_chunk_bytes.get() as u64 + 64 * 1024 > frame {
            return Err(NodeError::Config(format!(
                "limits: snapshot_chunk_bytes = {} + 64 KiB does not fit frame_bytes_max = {frame}",
                self.snapshot_chunk_bytes
            )));
        }
        if self.rpc_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.forward_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return Err(NodeError::Config(
                "limits: rpc_timeout, connect_timeout, forward_timeout and write_timeout must be > 0"
                    .to_owned(),
            ));
        }
        if self.watch_polls_held_max >= self.inbound_connections_max {
            return Err(NodeError::Config(format!(
                "limits: watch_polls_held_max = {} must be below inbound_connections_max = {} \
                 (peers need connections too): lower the one or raise the other",
                self.watch_polls_held_max, self.inbound_connections_max
            )));
        }
        if self.watch_wait_max.is_zero() || self.watch_wait_max > Duration::from_secs(300) {
            return Err(NodeError::Config(format!(
                "limits: watch_wait_max = {:?} must be between 1 ms and 300 s",
                self.watch_wait_max
            )));
        }
        if self.pre_auth_timeout.is_zero() || self.pre_auth_timeout > self.inbound_idle_timeout {
            return Err(NodeError::Config(format!(
                "limits: pre_auth_timeout = {:?} must be > 0 and at most inbound_idle_timeout = {:?}",
                self.pre_auth_timeout, self.inbound_idle_timeout
            )));
        }
        let slots = self.inbound_connections_max.get();
        if self.inbound_per_ip_max.get() > slots || self.inbound_unauthenticated_max.get() > slots {
            return Err(NodeError::Config(format!(
                "limits: inbound_per_ip_max = {} and inbound_unauthenticated_max = {} must not \
                 exceed inbound_connections_max = {slots}",
                self.inbound_per_ip_max, self.inbound_unauthenticated_max
            )));
        }
        if self.send_timeout.is_zero() || self.warn_interval.is_zero() {
            return Err(NodeError::Config(
                "limits: send_timeout and warn_interval must be > 0".to_owned(),
            ));
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_max < self.reconnect_backoff_min
        {
            return Err(NodeError::Config(format!(
                "limits: reconnect_backoff_min = {:?} must be > 0 and at most \
                 reconnect_backoff_max = {:?}",
                self.reconnect_backoff_min, self.reconnect_backoff_max
            )));
        }
        if self.snapshot_bytes_max.get() < self.snapshot_chunk_bytes.get() as u64 {
            return Err(NodeError::Config(format!(
                "limits: snapshot_bytes_max = {} is below snapshot_chunk_bytes = {}",
                self.snapshot_bytes_max, self.snapshot_chunk_bytes
            )));
        }
        Ok(())
    }
}

/// openraft's numeric id of a quorate node: FNV-1a (64 bit) of its name.
///
/// Every node derives the same number from the same name without coordination, so configs
/// list only names. A collision (two names with one number) is detected when the second node
/// is added and refused with [`NodeError::IdCollision`].
pub fn raft_id(node: &NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_validate() {
        Timing::lan().validate().unwrap_or_else(|e| panic!("{e}"));
        Timing::wan().validate().unwrap_or_else(|e| panic!("{e}"));
        assert!(Timing::profile("moon").is_err());
    }

    #[test]
    fn bad_timing_is_named() {
        let t = Timing {
            election_min: Duration::from_millis(100),
            ..Timing::lan()
        };
        let err = t
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("election_min"), "{err}");
    }

    #[test]
    fn default_limits_validate_and_small_frames_are_refused() {
        Limits::default()
            .validate()
            .unwrap_or_else(|e| panic!("{e}"));
        let small = Limits {
            frame_bytes_max: NonZeroU32::new(1 << 20).unwrap_or(NonZeroU32::MIN),
            ..Limits::default()
        };
        let err = small
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("command_bytes_max"), "{err}");
    }

    #[test]
    fn watch_poll_bounds_are_validated() {
        let err = |l: Limits| {
            l.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let held = Limits {
            watch_polls_held_max: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            ..Limits::default()
        };
        assert!(err(held).contains("watch_polls_held_max"));
        let zero = Limits {
            watch_wait_max: Duration::ZERO,
            ..Limits::default()
        };
        assert!(err(zero).contains("watch_wait_max"));
        let long = Limits {
            watch_wait_max: Duration::from_secs(3600),
            ..Limits::default()
        };
        assert!(err(long).contains("watch_wait_max"));
    }

    #[test]
    fn raft_ids_are_stable() {
        let a = NodeId::new("n1").unwrap_or_else(|e| panic!("{e}"));
        let b = NodeId::new("n2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raft_id(&a), raft_id(&a.clone()));
        assert_ne!(raft_id(&a), raft_id(&b));
    }
}
