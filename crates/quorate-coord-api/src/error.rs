//! The one error type of the coordination contract.

use quorate_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::types::{LeaseId, Revision};

/// Why a coordination call failed. Each variant says whether state may have changed.
///
/// Retryable errors ([`CoordError::is_retryable`]) may succeed later or on another node;
/// the rest need a different request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CoordError {
    /// This node is not the leader and did not forward the request. Nothing changed.
    /// Retry on `leader_hint` (or any node when unknown).
    #[error("not the leader: retry on {}", leader_hint.as_ref().map_or("another node (leader unknown)".to_owned(), |n| format!("node {n}")))]
    NotLeader {
        /// The leader this node believes in, if any.
        leader_hint: Option<NodeId>,
        /// Its client address, if known.
        leader_addr: Option<String>,
    },
    /// The node cannot reach a majority of voters (or its leader lease ran out), so it refuses
    /// linearizable reads and writes. Nothing changed. Retry later or on the majority side.
    #[error(
        "no quorum: this node cannot reach a majority of voters; retry later or on another node"
    )]
    NoQuorum,
    /// The lease does not exist (never granted, revoked, or expired long ago). Nothing changed.
    #[error("{id} not found: grant a new lease")]
    LeaseNotFound {
        /// The lease.
        id: LeaseId,
    },
    /// The lease expired (its keys, locks and leaderships are gone). Nothing changed by this
    /// call. Grant a new lease.
    #[error("{id} expired: its keys were deleted; grant a new lease")]
    LeaseExpired {
        /// The lease.
        id: LeaseId,
    },
    /// The requested revision is no longer in the watch history (or the watcher fell behind
    /// it). Nothing changed. Re-read the current state and watch from its revision.
    #[error(
        "{requested} is compacted (history starts after {compacted}): read the current state and watch from its revision"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// Events up to and including this revision are gone.
        compacted: Revision,
    },
    /// No answer in time: the write MAY OR MAY NOT have been applied (unknown outcome).
    /// Read back before retrying a non-idempotent write.
    #[error("timed out waiting for {what}: the outcome is unknown; read back before retrying")]
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// The request is malformed or not allowed. Nothing changed.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A value exceeds `value_bytes_max`. Nothing changed.
    #[error(
        "value of {len} bytes exceeds the limit value_bytes_max = {max}: store less or raise the limit"
    )]
    ValueTooLarge {
        /// The value's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key exceeds `key_bytes_max`. Nothing changed.
    #[error("key of {len} bytes exceeds the limit key_bytes_max = {max}: use a shorter key")]
    KeyTooLarge {
        /// The key's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A configured capacity (number of keys, leases, ...) is reached. Nothing changed.
    #[error("{what} limit of {max} reached: delete some or raise the limit")]
    ResourceExhausted {
        /// Which capacity.
        what: String,
        /// The limit.
        max: u64,
    },
    /// `proclaim` by a candidate that is not (any more) the election's leader. Nothing changed.
    /// (`unlock` of a lock key that no longer exists is not an error: see `Coord::unlock`.)
    #[error("{key} is not the current holder: {reason}")]
    NotHolder {
        /// The key of the would-be holder.
        key: String,
        /// Why.
        reason: String,
    },
    /// An admin call named a node that is not a member (or not in the needed state). Nothing
    /// changed.
    #[error("unknown node {node}: {reason}")]
    UnknownNode {
        /// The node named.
        node: String,
        /// What was expected.
        reason: String,
    },
    /// The caller's credential does not allow this request (e.g. a client key asking for a
    /// membership change, or writing a key the cluster's own components own). Nothing
    /// changed.
    #[error("permission denied: {reason}")]
    PermissionDenied {
        /// What was refused and why.
        reason: String,
    },
    /// The backend does not support this operation. Nothing changed.
    #[error("unsupported by this backend: {what}")]
    Unsupported {
        /// The operation.
        what: String,
    },
    /// The node is shutting down or not initialised. Nothing changed. Retry on another node.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A fault inside the backend (storage failure, broken invariant). State is unknown; the
    /// node should be considered failed.
    #[error("internal error: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
}

impl CoordError {
    /// Whether the same request may succeed later or on another node.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CoordError::NotLeader { .. }
                | CoordError::NoQuorum
                | CoordError::Timeout { .. }
                | CoordError::Unavailable { .. }
        )
    }

    /// Whether the call may have changed state (the outcome is unknown).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            CoordError::Timeout { .. } | CoordError::Internal { .. }
        )
    }

    /// Shorthand for [`CoordError::InvalidArgument`].
    pub fn invalid(reason: impl Into<String>) -> CoordError {
        CoordError::InvalidArgument {
            reason: reason.into(),
        }
    }
}
