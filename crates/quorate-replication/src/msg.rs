//! The replication protocol's wire messages: one request and one response frame per call,
//! sealed by `quorate-wire` under kinds `0x0601` (request) and `0x0602` (response).
//!
//! This is the deliberate wire type of replication: values travel as postcard bytes of the
//! keyspace's merge type (multi-master) or as opaque application bytes (leader mode), so the
//! envelope does not depend on the merge type and a node can route a request by keyspace name
//! before decoding its values.

use quorate_wire::MessageKind;
use serde::{Deserialize, Serialize};

use crate::digest::MerkleDigest;
use crate::hlc::HlcTimestamp;

/// Replication request frames.
pub const KIND_REPL_REQ: MessageKind = MessageKind(0x0601);
/// Replication response frames.
pub const KIND_REPL_RESP: MessageKind = MessageKind(0x0602);
/// A one-way hello (empty payload, no answer): sent first on a fresh connection whose first
/// request is larger than [`PRE_AUTH_FRAME_BYTES_MAX`].
pub const KIND_REPL_HELLO: MessageKind = MessageKind(0x0603);
/// The largest frame a server accepts before a connection has delivered an authentic frame.
pub const PRE_AUTH_FRAME_BYTES_MAX: u32 = 64 * 1024;

/// A key with its value encoded as postcard bytes of the keyspace's merge type.
pub type EncodedEntry = (String, Vec<u8>);

/// A position in a leader-mode log: the index and the fencing token of the primary that
/// wrote the entry there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPos {
    /// The index (1-based; 0 is the empty log).
    pub index: u64,
    /// The fencing token of the writing primary.
    pub token: u64,
}

impl LogPos {
    /// The position of the empty log.
    pub const ZERO: LogPos = LogPos { index: 0, token: 0 };
}

/// One leader-mode write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Its position.
    pub pos: LogPos,
    /// The key.
    pub key: String,
    /// The new value, `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// When the primary accepted it, in the primary's wall-clock milliseconds (for lag in
    /// time and for the RPO of a failover).
    pub written_ms: u64,
}

/// A replication request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Multi-master: deltas pushed on write (or replayed from hints).
    Deltas {
        /// The keyspace.
        keyspace: String,
        /// The sending node.
        from: String,
        /// The sender's clock: every timestamp in the batch is at or below it.
        clock: HlcTimestamp,
        /// The deltas.
        batch: Vec<EncodedEntry>,
    },
    /// Multi-master anti-entropy, first step: the initiator's digest. The answer is
    /// [`Response::DigestDiff`].
    Digest {
        /// The keyspace.
        keyspace: String,
        /// The initiator.
        from: String,
        /// The initiator's clock.
        clock: HlcTimestamp,
        /// The initiator's Merkle digest.
        digest: MerkleDigest,
    },
    /// Multi-master anti-entropy, last step: the initiator's states in the differing buckets.
    Repair {
        /// The keyspace.
        keyspace: String,
        /// The initiator.
        from: String,
        /// The initiator's clock.
        clock: HlcTimestamp,
        /// Full states.
        entries: Vec<EncodedEntry>,
    },
    /// Leader mode: the primary's entries after `prev`.
    Append {
        /// The keyspace.
        keyspace: String,
        /// The primary.
        from: String,
        /// The primary's fencing token.
        token: u64,
        /// The position just before `entries` in the primary's log.
        prev: LogPos,
        /// The entries (possibly none: a heartbeat that carries the token).
        entries: Vec<LogEntry>,
        /// The primary's last position (for the replica's own lag).
        primary_last: LogPos,
        /// Each replica's persisted index as the primary knows it (lag at every node).
        matched: Vec<(String, u64)>,
    },
}

impl Request {
    /// The keyspace it addresses.
    pub fn keyspace(&self) -> &str {
        match self {
            Request::Deltas { keyspace, .. }
            | Request::Digest { keyspace, .. }
            | Request::Repair { keyspace, .. }
            | Request::Append { keyspace, .. } => keyspace,
        }
    }
}

/// Why a replica refused a request. Nothing changed at the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No keyspace of that name here.
    UnknownKeyspace,
    /// The keyspace's inbound queue is full.
    Busy,
    /// The sender's clock is beyond the HLC bound (a clock alarm at the replica).
    ClockAhead {
        /// How far ahead, in milliseconds.
        ahead_ms: u64,
    },
    /// Leader mode: the token is below the highest the replica has seen.
    StaleToken {
        /// The highest token the replica has seen.
        highest: u64,
    },
    /// Leader mode: the replica's log does not hold `prev`; `last` is its last position, so
    /// the primary resends from the common prefix.
    Mismatch {
        /// The replica's last position.
        last: LogPos,
    },
    /// The request was invalid for this keyspace (wrong mode, undecodable value, a limit).
    Invalid(String),
}

/// A replication response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied and persisted.
    Ack,
    /// Anti-entropy: the buckets where the digests differ, and the replica's states in them
    /// (at most one frame; `truncated` when some were left out for the next round).
    DigestDiff {
        /// The replica's clock: every timestamp in `entries` is at or below it.
        clock: HlcTimestamp,
        /// Differing buckets.
        buckets: Vec<u32>,
        /// The replica's states in them.
        entries: Vec<EncodedEntry>,
        /// Whether entries were left out to fit the frame.
        truncated: bool,
    },
    /// Leader mode: appended and persisted up to `last`.
    Appended {
        /// The replica's last position, now durable.
        last: LogPos,
    },
    /// Refused.
    Refused(Refusal),
}
