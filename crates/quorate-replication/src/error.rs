//! The one error type of the crate.
// tidy:pure-core

use quorate_types::NodeId;

/// Something a replica refused. Every variant says whether state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// A peer's timestamp is ahead of our physical clock by more than the configured bound.
    /// The update was rejected and nothing changed; the caller raises a clock alarm (the peer's
    /// clock, or ours, is wrong, and last-writer-wins would let it win every conflict).
    #[error(
        "clock: peer {peer} sent a timestamp {ahead_ms} ms ahead of our clock; the bound \
         [replication] max_clock_offset is {bound_ms} ms: fix the clock (NTP) on {peer} or here, \
         the update was rejected"
    )]
    ClockAhead {
        /// The node whose timestamp was rejected.
        peer: NodeId,
        /// How far ahead of our physical clock it was, in milliseconds.
        ahead_ms: u64,
        /// The configured bound, in milliseconds.
        bound_ms: u64,
    },
    /// A configuration value is out of range. Nothing was built.
    #[error("config: [replication] {field} = {value} is invalid: {fix}")]
    Config {
        /// The field name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What to do instead.
        fix: &'static str,
    },
    /// A value would grow beyond its bound (elements of a set, entries of a map, siblings of a
    /// register). The operation was refused and nothing changed.
    #[error(
        "{what} would hold {len} entries; the limit is {max}: remove entries or raise the limit"
    )]
    TooLarge {
        /// What would grow ("or-set elements", "map entries", "siblings").
        what: &'static str,
        /// How many entries it would hold.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key is longer than [`crate::KEY_BYTES_MAX`]. Nothing changed.
    #[error(
        "replicated key of {len} bytes is longer than the limit of {max} bytes: use a shorter key"
    )]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Two Merkle digests of different shapes were compared. Nothing changed; the peers run
    /// different digest configurations and must agree on `fanout` and `depth`.
    #[error(
        "digest shapes differ (ours fanout {ours_fanout} depth {ours_depth}, theirs fanout \
         {theirs_fanout} depth {theirs_depth}): configure the same digest on every replica"
    )]
    DigestShape {
        /// Our fanout.
        ours_fanout: u16,
        /// Our depth.
        ours_depth: u8,
        /// Their fanout.
        theirs_fanout: u16,
        /// Their depth.
        theirs_depth: u8,
    },
    /// A counter's running total for one node would pass `u64::MAX`. Nothing changed.
    #[error("counter: the running total of node {node} would overflow u64: use a new key")]
    CounterOverflow {
        /// The node whose total would overflow.
        node: NodeId,
    },
    /// A value could not be encoded for hashing (postcard failed). Nothing changed.
    #[error("encoding a replicated value for its digest failed: {0}")]
    Encode(String),
    /// The redb storage failed (open, read or commit). The write was not acknowledged; when
    /// opening, nothing was started.
    #[error("replication storage {path}: {detail}")]
    Storage {
        /// The database file (or keyspace table).
        path: String,
        /// What failed and what to do.
        detail: String,
    },
    /// A persisted or received value did not decode as the keyspace's merge type. Nothing
    /// changed.
    #[error(
        "keyspace {keyspace}: a stored or received value did not decode ({detail}): every node \
         must declare the keyspace with the same merge type"
    )]
    Decode {
        /// The keyspace.
        keyspace: String,
        /// The decoder's message.
        detail: String,
    },
    /// A call to a peer failed or timed out; the outcome at the peer is unknown (it may have
    /// applied the request). Retryable.
    #[error("replication peer {peer}: {reason}")]
    Peer {
        /// The peer (node id or address).
        peer: String,
        /// What failed.
        reason: String,
    },
    /// A bounded queue was full; the request was refused and nothing changed. Retry later.
    #[error("{what} is full ({max} entries): the replica is overloaded, retry later")]
    Busy {
        /// Which queue.
        what: &'static str,
        /// Its bound.
        max: usize,
    },
    /// The keyspace's task has stopped (shutdown or a fatal storage error). Nothing changed.
    #[error("keyspace {0} is stopped")]
    Stopped(String),
    /// No keyspace of this name runs on the node. Nothing changed.
    #[error("keyspace {0} is not declared on this node: declare it with the same name everywhere")]
    UnknownKeyspace(String),
    /// Leader mode: this node is not the keyspace's primary (or its term ended). Nothing
    /// changed; send the write to the role's primary.
    #[error("keyspace {keyspace}: this node is not the primary; write through the role's primary")]
    NotPrimary {
        /// The keyspace.
        keyspace: String,
    },
    /// Leader mode: a write or append carried a fencing token below the highest this replica
    /// has seen: it comes from a stale primary and was rejected. Nothing changed.
    #[error(
        "keyspace {keyspace}: fencing token {token} is stale (this replica has seen {highest}): \
         the write came from a demoted primary and was rejected"
    )]
    StaleToken {
        /// The keyspace.
        keyspace: String,
        /// The token the write carried.
        token: u64,
        /// The highest token this replica has seen.
        highest: u64,
    },
    /// Leader mode, sync replication: the write is durable at the primary but fewer than the
    /// required replicas confirmed it in time. It is not acknowledged: it may be lost in a
    /// failover, or may survive (outcome unknown).
    #[error(
        "keyspace {keyspace}: write {index} was persisted by {acked} replicas, {required} \
         required, within {timeout_ms} ms: not acknowledged (outcome unknown)"
    )]
    NotReplicated {
        /// The keyspace.
        keyspace: String,
        /// The log index of the write.
        index: u64,
        /// Replicas that confirmed it.
        acked: usize,
        /// Replicas required (`sync_replicas`).
        required: usize,
        /// The wait bound.
        timeout_ms: u64,
    },
}
