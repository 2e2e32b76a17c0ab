//! The one error type of this crate.

use std::net::SocketAddr;

use quorate_types::NodeId;

/// What went wrong starting or running membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Fatal, nothing started: the node has no seed to join through and is not the node that
    /// bootstraps the cluster.
    #[error(
        "membership config: no seeds and bootstrap = false: list at least one seed (host:port of a member), or set bootstrap = true on the first node"
    )]
    NoSeeds,
    /// Fatal, nothing started: the gossip address could not be bound.
    #[error("membership: cannot bind UDP {addr}: {source}: pick a free port or a local address")]
    Bind {
        /// The address in the config.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Fatal, nothing started: the address to advertise could not be worked out.
    #[error("membership config: advertise address: {0}")]
    Advertise(String),
    /// Fatal, nothing started: a config field is out of range; the message names it.
    #[error("membership config: {0}")]
    Config(String),
    /// Fatal, membership stopped: another process uses this node's id.
    #[error(
        "membership: node id {id} is also used by the process at {other}: give every node a unique node_id"
    )]
    DuplicateNodeId {
        /// Our id.
        id: NodeId,
        /// The other process's gossip address.
        other: SocketAddr,
    },
    /// Retryable: the metadata is larger than `meta_bytes_max` once encoded; nothing changed.
    #[error(
        "membership: metadata is {len} bytes encoded, limit meta_bytes_max = {max}: shorten tags or roles"
    )]
    MetaTooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The metadata failed validation; nothing changed.
    #[error("membership: metadata invalid: {0}")]
    Meta(#[from] quorate_types::TypesError),
    /// The wire layer refused the config.
    #[error("membership: wire: {0}")]
    Wire(#[from] quorate_wire::WireError),
    /// The membership task has stopped (after leave, shutdown or a fatal error).
    #[error("membership has stopped")]
    Stopped,
}
