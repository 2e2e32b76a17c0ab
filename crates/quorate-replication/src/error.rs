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
}
