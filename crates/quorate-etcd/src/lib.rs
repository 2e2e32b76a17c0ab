//! quorate-etcd: the coordination contract of quorate ([`quorate_coord_api::Coord`]) served by
//! a real etcd v3 cluster, through the maintained `etcd-client` crate (gRPC).
//!
//! - [`EtcdCoord`]: key-value with revisions, transactions, watches, leases, locks and
//!   elections with fencing tokens, cluster status and membership administration, on etcd.
//!   Several endpoints with failover, user/password authentication, TLS (feature `tls`).
//!
//! Test support is not here: the etcd cluster launcher is `quorate_testkit::etcd` and the
//! side-by-side benchmark is `quorate_bench::coord` (both test-only crates).
//!
//! ```no_run
//! use std::sync::Arc;
//! use quorate_coord_api::{Consistency, Coord};
//! use quorate_etcd::{EtcdConfig, EtcdCoord};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = EtcdConfig::etcd_defaults(["http://127.0.0.1:2379", "http://127.0.0.1:22379"]);
//! let coord: Arc<dyn Coord> = Arc::new(EtcdCoord::new(config)?);
//! coord.put("greeting", b"hello".to_vec(), None).await?;
//! let got = coord.get("greeting", Consistency::Linearizable).await?;
//! assert_eq!(got.kv.map(|kv| kv.value), Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```

mod config;
mod convert;
mod coord;
mod error;
mod leases;
mod pool;
mod queue;
#[cfg(feature = "tls")]
mod tls;
mod watch;

pub use config::{Credentials, EtcdConfig, TlsConfig};
pub use coord::EtcdCoord;
pub use error::EtcdError;
/// etcd-client TLS options built from a [`TlsConfig`] (what [`EtcdCoord`] uses), for callers that
/// also talk to etcd directly.
#[cfg(feature = "tls")]
pub use tls::options as tls_options;
