//! The crate's one error type.

use std::time::Duration;

/// What went wrong in the Redis adapter.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The adapter's configuration is invalid; nothing was started.
    #[error("redis config: {field}: {message}")]
    Config {
        /// The field (e.g. `redis.servers.n1`).
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A Redis command failed (the server answered with an error, or the connection broke).
    /// Retryable: the server's state may or may not have changed.
    #[error("redis {server}: {command} failed: {reason}")]
    Command {
        /// The server (`host:port`).
        server: String,
        /// The command (first word).
        command: String,
        /// The driver's message.
        reason: String,
    },
    /// A Redis command did not answer in time. Retryable: the server's state may or may not
    /// have changed.
    #[error(
        "redis {server}: {command} did not answer within {timeout:?} (raise [redis] command_timeout if the server is slow)"
    )]
    Timeout {
        /// The server (`host:port`).
        server: String,
        /// The command (first word).
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered something the adapter cannot read. Nothing was changed.
    #[error("redis {server}: unexpected answer to {command}: {reason}")]
    Protocol {
        /// The server (`host:port`).
        server: String,
        /// The command.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// The Sentinel-compatible listener could not bind. Nothing was started.
    #[error(
        "redis sentinel listener: cannot bind {addr}: {reason} (change [redis] sentinel_listen)"
    )]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        reason: String,
    },
}
