//! Built-in checks: TCP connect, HTTP GET, Redis `PING`, PostgreSQL `SELECT 1`, MongoDB `ping`
//! (feature `mongodb`), disk free space, process memory (RSS) and an external command.
//!
//! Each is a [`quorate_health_api::HealthCheck`]; the monitor supplies the timeout, so none of
//! them waits on its own clock. Messages never contain passwords from connection strings.

mod command;
mod disk;
mod http;
mod memory;
#[cfg(feature = "mongodb")]
mod mongo;
mod postgres;
mod redis;
mod tcp;

pub use command::{CommandCheck, OUTPUT_BYTES_MAX_DEFAULT};
pub use disk::{DiskSpaceCheck, SpaceThreshold};
pub use http::HttpCheck;
pub use memory::MemoryCheck;
#[cfg(feature = "mongodb")]
pub use mongo::MongoCheck;
pub use postgres::PostgresCheck;
pub use redis::RedisCheck;
pub use tcp::TcpCheck;

use std::time::Duration;

/// Milliseconds as an observed value.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
