//! quorate: the binary's library part. `quorate agent` runs one node from a validated TOML
//! config ([`config`]), wiring health ([`quorate_health`]), membership
//! ([`quorate_membership`]), embedded coordination ([`quorate_raft`]) and failover
//! ([`quorate_failover`]) in that order ([`agent`]); role hooks can be shell commands
//! ([`hooks`]); `quorate demo` starts three agents on loopback ([`demo`]); `quorate status`
//! prints a node's view ([`status`]).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: printing is its interface"
)]

/// The components, re-exported: the facade an embedding service depends on.
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
pub use quorate_types as types;
pub use quorate_wire as wire;

pub mod agent;
pub mod config;
pub mod demo;
pub mod hooks;
pub mod report;
pub mod status;
