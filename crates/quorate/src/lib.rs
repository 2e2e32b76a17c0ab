//! quorate: the facade and the binary's library part.
//!
//! - The facade re-exports the components (`quorate::health`, `quorate::raft`,
//!   `quorate::failover`, ...) and the node assembly ([`startup`], [`Node`]); the etcd backend
//!   only with the `etcd` feature.
//! - `quorate agent` ([`agent`]) is clap + config -> [`Node::builder`], printing the node's
//!   events as JSON lines; `quorate demo` starts three agents on loopback ([`demo`]);
//!   `quorate status` prints a node's view and says when it is stale ([`status`]).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: printing is its interface"
)]

/// The components, re-exported: the facade an embedding service depends on.
pub use quorate_api as api;
pub use quorate_coord_api as coord_api;
#[cfg(feature = "etcd")]
/// The etcd coordination backend (feature `etcd`).
pub use quorate_etcd as etcd;
pub use quorate_failover as failover;
pub use quorate_health as health;
pub use quorate_health_api as health_api;
pub use quorate_membership as membership;
pub use quorate_membership_api as membership_api;
pub use quorate_raft as raft;
pub use quorate_redis as redis;
/// The Telegram bot stage.
pub use quorate_telegram as telegram;
pub use quorate_types as types;
pub use quorate_wire as wire;

pub use quorate_startup as startup;
pub use quorate_startup::{Node, config, report};

pub mod agent;
pub mod demo;
pub mod status;
