//! quorate-testkit: what tests, benchmarks and the chaos harness share, kept out of the product
//! crates (test-only: `publish = false`, never a normal dependency of a product crate).
//!
//! - [`process`]: free loopback ports, peak RSS of a process, finding the built `quorate`
//!   binary, and [`process::poll_until`] (wait for a condition with a deadline, never a bare
//!   sleep);
//! - [`agents`]: `quorate agent` configs built from the agent's own serde types
//!   ([`quorate::config::AgentConfig`]), never with `format!`;
//! - [`etcd`]: real etcd clusters on loopback (Debian package `etcd-server`);
//! - [`redis`]: real Redis servers and Sentinels on loopback (Debian packages `redis-server`,
//!   `redis-sentinel`);
//! - [`fake_bot_api`]: an in-process fake of the Telegram Bot API.

pub mod agents;
mod error;
pub mod etcd;
pub mod fake_bot_api;
pub mod process;
pub mod redis;

pub use error::TestkitError;
