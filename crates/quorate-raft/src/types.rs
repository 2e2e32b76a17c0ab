//! The openraft type configuration of quorate: what the log carries and how nodes are named.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::machine::{Command, Outcome};

openraft::declare_raft_types!(
    /// openraft's types for quorate: log entries carry a [`Command`], the state machine answers
    /// with [`Applied`], nodes are numbered by [`crate::config::raft_id`] and described by
    /// [`PeerNode`], and the runtime is [`crate::rt::QuorateRt`] (seedable RNG).
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::rt::QuorateRt,
);

/// What applying one log entry produced: the machine's outcome for a command, `None` for
/// entries openraft writes itself (a new leader's blank entry, membership changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Option<Outcome>);

/// A member as stored in the Raft membership: its quorate name and its Raft address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    /// The quorate node name (a valid `quorate_types::NodeId`).
    pub name: String,
    /// Where its Raft listener is (`host:port`).
    pub addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// A log id of this configuration.
pub type LogId = openraft::LogId<u64>;
/// A vote of this configuration.
pub type Vote = openraft::Vote<u64>;
/// A log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// The stored membership of this configuration.
pub type StoredMembership = openraft::StoredMembership<u64, PeerNode>;
/// The raft handle of this configuration.
pub type Raft = openraft::Raft<TypeConfig>;
/// openraft's storage error of this configuration.
pub type StorageError = openraft::StorageError<u64>;
