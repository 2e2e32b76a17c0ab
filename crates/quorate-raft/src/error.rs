//! The one error type of quorate-raft ([`NodeError`]) and its mapping to `CoordError`.

/// Why starting or running a Raft node failed. Fatal variants mean the node must stop;
/// the others are reported to the caller and leave the node running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is invalid; the message names the field and the fix. Nothing started.
    #[error("raft config: {0}")]
    Config(String),
    /// Two node names map to the same Raft id (see `config::raft_id`). Nothing changed.
    #[error("node {new} has the same raft id {id} as member {existing}: rename one of them")]
    IdCollision {
        /// The node being added.
        new: String,
        /// The member it collides with.
        existing: String,
        /// The shared id.
        id: u64,
    },
    /// The redb database failed (open, read, write, commit). Fatal.
    #[error("raft storage at {path}: {reason}")]
    Storage {
        /// The database file (or "memory").
        path: String,
        /// What failed.
        reason: String,
    },
    /// Binding the Raft listener failed. Nothing started.
    #[error("raft listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// openraft refused to start or initialise the node.
    #[error("openraft: {0}")]
    Openraft(String),
}
