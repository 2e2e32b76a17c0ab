//! The one error type of this crate (configuration). Coordination
//! calls themselves fail with [`quorate_coord_api::CoordError`].

/// Why setting up an etcd client failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The configuration is invalid. Nothing was started.
    #[error("quorate-etcd config: {}", problems.join("; "))]
    Config {
        /// Every problem found.
        problems: Vec<String>,
    },
}
