//! quorate-etcd: the coordination contract of quorate ([`quorate_coord_api::Coord`]) served by
//! a real etcd v3 cluster, through the maintained `etcd-client` crate (gRPC).
//!
//! - [`EtcdCoord`]: key-value with revisions, transactions, watches, leases, locks and
//!   elections with fencing tokens, cluster status and membership administration, on etcd.
//!   Several endpoints with failover, user/password authentication, TLS (feature `tls`).
//! - [`testkit`]: starts a real 1- or 3-member etcd cluster on free loopback ports in a
//!   temporary directory and tears it down on drop (tests and `cargo xtask bench`).
//! - [`mod@bench`]: the coordination benchmark run through the `Coord` trait, the same workload
//!   against etcd and quorate, interleaved, with a side-by-side table.
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

pub mod bench;
mod config;
mod convert;
mod coord;
mod error;
mod leases;
mod pool;
mod queue;
pub mod testkit;
#[cfg(feature = "tls")]
mod tls;
mod watch;

pub use config::{Credentials, EtcdConfig, TlsConfig};
pub use coord::EtcdCoord;
pub use error::EtcdError;
