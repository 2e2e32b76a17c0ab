//! Multi-master replicated data for quorate: the pure, deterministic core.
//!
//! - [`Hlc`]: a hybrid logical clock that takes physical time as an argument and rejects a
//!   peer whose clock runs beyond a configured bound ([`ReplicationError::ClockAhead`]).
//! - The merge types, all implementing [`Crdt`] (join, delta = a small state, bounded size):
//!   [`LwwRegister`], [`MvRegister`] (siblings, resolver callback), [`PnCounter`], [`OrSet`]
//!   (add-wins), [`LwwMap`], [`OrMap`], and [`Custom`] for an application's own join.
//! - [`Stability`]: when tombstones may be collected.
//! - [`Store`] (one keyspace in memory) and [`MerkleDigest`] (anti-entropy by digest diff).
//! - [`ConflictLog`] and [`ReplicationMetrics`]: what the node reports.
//!
//! The modules above are the pure core: they read no clock, open no socket and write no
//! file. Around them, the shell runs keyspaces on a node:
//! - [`ReplicationNode`]: one listener, one [`Transport`] (quorate-wire frames over TCP,
//!   authenticated, bounded), one [`ReplicaDb`] (redb), keyspaces routed by name;
//! - [`Keyspace`] (multi-master: push on write, hinted handoff, anti-entropy on a timer and
//!   on membership rejoin/heal) and [`LeaderKeyspace`] (leader mode: fenced writes through the
//!   primary, sync or async replication, lag, conflicts for a demoted primary's suffix).
//!
//! `docs/replication.md` says what each mode guarantees and how to choose a merge type.
//!
//! ```
//! use std::num::NonZeroU64;
//! use quorate_replication::{Crdt, Hlc, HlcConfig, LwwRegister};
//! use quorate_types::NodeId;
//!
//! let cfg = HlcConfig { max_offset_ms: NonZeroU64::new(500).unwrap() };
//! let mut clock_a = Hlc::new(NodeId::new("a").unwrap(), cfg);
//! let mut clock_b = Hlc::new(NodeId::new("b").unwrap(), cfg);
//! let (mut at_a, mut at_b) = (LwwRegister::bottom(), LwwRegister::bottom());
//!
//! let d1 = at_a.set(1u32, clock_a.now(1_300));     // a's clock runs 300 ms ahead
//! clock_b.observe(at_a.timestamp().unwrap(), 1_000).unwrap();
//! at_b.merge(&d1);
//! let d2 = at_b.set(2, clock_b.now(1_001));     // b saw 1, then wrote: 2 must win
//! at_a.merge(&d2);
//! assert_eq!(at_a.value(), Some(&2));
//! assert_eq!(at_a, at_b);
//! ```

mod conflict;
mod counter;
mod crdt;
mod custom;
mod digest;
mod disk;
mod dot;
mod error;
mod hlc;
mod leader;
mod lww;
mod map;
mod metrics;
mod mm;
pub mod msg;
mod mv;
mod node;
mod orset;
mod stability;
mod store;
mod transport;

pub use conflict::{ConflictLog, ConflictRecord, CrdtKind, Resolution, Version};
pub use counter::PnCounter;
pub use crdt::{Crdt, LawViolation, check_laws};
pub use custom::{Custom, CustomMerge};
pub use digest::{DIGEST_LEAVES_MAX, DigestConfig, Hash, MerkleDigest, value_hash};
pub use disk::ReplicaDb;
pub use dot::{CausalContext, Dot};
pub use error::ReplicationError;
pub use hlc::{Hlc, HlcConfig, HlcTimestamp};
pub use leader::{
    LeaderConfig, LeaderKeyspace, LeaderRole, LeaderStatus, ReplicaLag, SuffixConflict, SyncMode,
};
pub use lww::LwwRegister;
pub use map::{LwwMap, OrMap};
pub use metrics::ReplicationMetrics;
pub use mm::{Keyspace, KeyspaceStatus, MultiMasterConfig, WriteCtx};
pub use mv::MvRegister;
pub use node::{NodeConfig, ReplicationNode};
pub use orset::OrSet;
pub use stability::Stability;
pub use store::{KEY_BYTES_MAX, MergeOutcome, Store};
pub use transport::{Handler, InboundStats, Transport, TransportConfig};
