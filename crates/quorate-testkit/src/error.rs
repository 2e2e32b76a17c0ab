//! The one error type of the test kit.

use std::path::PathBuf;
use std::time::Duration;

use quorate_coord_api::CoordError;
use quorate_etcd::EtcdError;

/// Why starting a test cluster, a process or a benchmark failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A setting is invalid. Nothing was started.
    #[error("config: {}", problems.join("; "))]
    Config {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The `etcd` binary was not found. Nothing was started.
    #[error(
        "the etcd server binary {binary:?} was not found ({reason}): install it (Debian: apt-get install etcd-server, or `cargo xtask setup`) or set QUORATE_ETCD_BIN to its path"
    )]
    EtcdMissing {
        /// The binary looked for.
        binary: PathBuf,
        /// What the lookup said.
        reason: String,
    },
    /// A file-system or process operation failed.
    #[error("{what}: {reason}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        reason: String,
    },
    /// A member did not become healthy in time. The cluster was torn down.
    #[error("member {member} did not become healthy within {waited:?}: {last}; its log is {log:?}")]
    NotHealthy {
        /// The member's name.
        member: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last error seen.
        last: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A coordination call failed during setup or a benchmark.
    #[error("{what}: {source}")]
    Coord {
        /// What was being done.
        what: String,
        /// The error.
        source: CoordError,
    },
    /// The etcd client rejected its configuration.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl TestkitError {
    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, e: &dyn std::fmt::Display) -> TestkitError {
        TestkitError::Io {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    /// A coordination failure while doing `what`.
    pub fn coord(what: impl Into<String>, source: CoordError) -> TestkitError {
        TestkitError::Coord {
            what: what.into(),
            source,
        }
    }
}
