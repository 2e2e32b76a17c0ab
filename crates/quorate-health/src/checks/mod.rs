//! Built-in checks: TCP connect, disk free space, process memory (RSS) and an external command,
//! always; HTTP GET (feature `http`), Redis `PING` (feature `redis`), PostgreSQL `SELECT 1`
//! (feature `postgres`) and MongoDB `ping` (feature `mongodb`) when their feature is on.
//!
//! Each is a [`quorate_health_api::HealthCheck`]; the monitor supplies the timeout, so none of
//! them waits on its own clock. Messages never contain passwords from connection strings.

mod command;
mod disk;
#[cfg(feature = "http")]
mod http;
mod memory;
#[cfg(feature = "mongodb")]
mod mongo;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod tcp;

pub use command::{CommandCheck, OUTPUT_BYTES_MAX_DEFAULT};
pub use disk::{DiskSpaceCheck, SpaceThreshold};
#[cfg(feature = "http")]
pub use http::HttpCheck;
pub use memory::MemoryCheck;
#[cfg(feature = "mongodb")]
pub use mongo::MongoCheck;
#[cfg(feature = "postgres")]
pub use postgres::PostgresCheck;
#[cfg(feature = "redis")]
pub use redis::RedisCheck;
pub use tcp::TcpCheck;

use std::time::Duration;

/// Milliseconds as an observed value.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
