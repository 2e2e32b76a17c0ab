//! quorate-chaos: the real-process chaos harness (test-only: `publish = false`, never a normal
//! dependency of a product crate). Used by `crates/quorate/tests/chaos.rs`
//! (`cargo xtask chaos`) and the failover benchmark (`crates/quorate/benches/failover.rs`,
//! `cargo xtask bench failover`).
//!
//! - [`world`]: a private network of namespaces, the agents in it, and the faults (SIGKILL,
//!   SIGSTOP, nftables partitions, a slowed clock);
//! - [`haproxy`]: HAProxy in front of the agents' applications under kills and partitions;
//! - [`hooklog`]: the hook-log checker (one primary acting at a time; stale actions fenced);
//! - [`rolling`]: the planned hand-off benchmark (SIGTERM each node in turn);
//! - [`telegram`]: the Telegram ingress under kills and symmetric partitions of its holder,
//!   against a fake Bot API on the world's bridge;
//! - [`redis_partition`]: lost acknowledged Redis writes under a partition, quorate vs Sentinel
//!   (part of `cargo xtask bench redis`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a test harness: progress lines are its interface"
)]

pub mod haproxy;
pub mod hooklog;
pub mod redis_partition;
pub mod rolling;
pub mod telegram;
pub mod world;
