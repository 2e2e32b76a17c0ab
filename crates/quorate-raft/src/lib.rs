//! quorate-raft: the embedded consensus backend of quorate. openraft 0.9 (storage-v2) with the
//! log, vote and snapshots in redb, Raft and client RPC over authenticated `quorate-wire`
//! frames, a leader lease for split-brain safety, and the coordination state machine
//! ([`machine`]) served as `quorate_coord_api::Coord` through [`backend::Backend`].

pub mod backend;
pub mod client;
pub mod config;
pub mod error;
pub mod lease;
pub mod lease_clock;
mod lease_glue;
pub mod machine;
pub mod network;
pub mod node;
pub mod rt;
pub mod sm;
pub mod store;
pub mod types;

pub use config::{Limits, Timing, raft_id};
pub use error::NodeError;
pub use node::{CLIENT_PROTECTED_PREFIXES, ClusterView, NodeConfig, RaftNode};
pub use store::Storage;
pub use types::{Applied, PeerNode, TypeConfig};
