//! The one error type of this crate (configuration, the test kit, the benchmark). Coordination
//! calls themselves fail with [`quorate_coord_api::CoordError`].

use std::path::PathBuf;
use std::time::Duration;

use quorate_coord_api::CoordError;

/// Why setting up an etcd client, an etcd test cluster or a benchmark failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The configuration is invalid. Nothing was started.
    #[error("quorate-etcd config: {}", problems.join("; "))]
    Config {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The `etcd` binary was not found. Nothing was started.
    #[error(
        "the etcd server binary {binary:?} was not found ({reason}): install it (Debian: apt-get install etcd-server) or set QUORATE_ETCD_BIN to its path"
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
    /// An etcd member did not become healthy in time. The cluster was torn down.
    #[error(
        "etcd member {member} did not become healthy within {waited:?}: {last}; its log is {log:?}"
    )]
    NotHealthy {
        /// The member's name.
        member: String,
        /// How long it was waited for.
        waited: Duration,
        /// The last error seen.
        last: String,
        /// Its log file (kept for the post-mortem while the cluster lives).
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
}

impl EtcdError {
    pub(crate) fn io(what: impl Into<String>, e: &std::io::Error) -> EtcdError {
        EtcdError::Io {
            what: what.into(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn coord(what: impl Into<String>, source: CoordError) -> EtcdError {
        EtcdError::Coord {
            what: what.into(),
            source,
        }
    }
}
