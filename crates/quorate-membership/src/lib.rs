//! quorate cluster membership: SWIM gossip on foca, with Lifeguard-style local health,
//! push/pull full-state sync, gossiped metadata, and the quorum / split-brain view.
//!
//! Layers:
//! - [`engine::Core`]: the sans-IO core (foca plus everything quorate adds), driven with `now`
//!   and a seeded RNG; decisions live in the pure modules [`local_health`] and [`quorum`];
//! - `node` (re-exported [`start`], [`MembershipHandle`]): the async shell that owns one UDP
//!   socket from a `quorate_wire::net::Net`, seals every datagram with `quorate-wire`, and
//!   publishes snapshots and events through the [`quorate_membership_api::Membership`] view;
//!
//! The deterministic discrete-event simulator of many cores that drives [`engine::Core`] is
//! test support and lives in `quorate_sim::membership`; the benchmark in
//! `quorate_bench::membership`.

pub mod config;
pub mod engine;
pub mod error;
pub mod ident;
pub mod local_health;
pub mod node;
pub mod profile;
pub mod quorum;
pub mod records;

pub use config::MembershipConfig;
pub use error::MembershipError;

pub use node::{MembershipHandle, Metrics, start};
pub use profile::Profile;
