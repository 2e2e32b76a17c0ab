//! quorate-redis: a Redis server per node, managed as a quorate role. The role's primary runs
//! its server as the master, every other node's server replicates from it:
//!
//! - **promote** (with the fencing token): other reachable masters are paused, then
//!   `REPLICAOF NO ONE`, the acknowledged-write settings (`min-replicas-to-write`, when on),
//!   `CLIENT UNPAUSE`, and the token written to `quorate:fencing-token` (only ever upwards),
//!   so clients and tools see which term they talk to;
//! - **demote** (run by the failover manager at the holder deadline, before the lease can be
//!   granted elsewhere): `CLIENT PAUSE WRITE` at once; the server then follows the new primary
//!   (`REPLICAOF host port`, then `CLIENT UNPAUSE`: a replica refuses writes itself);
//! - **every other node**: a follower loop reads every server's `INFO replication` each
//!   `poll_interval`, keeps a master that is not the primary's paused, and points the local
//!   server at the primary; the primary's loop points every other reachable server at itself
//!   (a restarted old master is fenced that way);
//! - **lag**: each server's replication offset behind the highest offset seen is the role's
//!   lag source ([`RedisAdapter::lag`]): a replica further behind than `max_lag_bytes`, or
//!   unreachable, is not a candidate and `explain` says why;
//! - **discovery**: a Sentinel-compatible listener ([`sentinel`]) answers
//!   `SENTINEL get-master-addr-by-name`.
//!
//! The agent turns it on with a `[redis]` section ([`RedisConfig::from_agent`]); an embedding
//! service calls [`RedisAdapter::install`] on its node builder. See docs/redis.md.

mod adapter;
pub mod config;
mod error;
pub mod info;
pub mod sentinel;
mod server;

pub use adapter::RedisAdapter;
pub use config::{AckMode, RedisConfig, SentinelConfig, ServerAddr};
pub use error::RedisError;
