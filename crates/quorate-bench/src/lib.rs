//! quorate-bench: every benchmark of quorate, kept out of the product crates (test-only:
//! `publish = false`, never a normal dependency of a product crate). `cargo xtask bench NAME`
//! runs the binaries in `src/bin/` in release; the `tests/` here run each one tiny in CI, so
//! they keep working (figures are reported, never asserted).
//!
//! - [`stats`]: the one percentile definition (an HDR histogram) used by every figure;
//! - [`coord`]: the coordination workload through the `Coord` trait, any [`coord::BenchTarget`]
//!   (etcd from `quorate_testkit::etcd`, quorate agents from [`agents`]), interleaved, with a
//!   side-by-side table;
//! - [`agents`]: three `quorate agent` processes on loopback as a benchmark target;
//! - [`raft`]: the in-process 3-node quorate-raft benchmark;
//! - [`replication`]: replicated keyspaces (leader and multi-master) on loopback nodes;
//! - [`state`]: quorate-state's locks and semaphores beside etcd's own lock recipe;
//! - [`health`]: the health monitor's overhead;
//! - [`membership`]: simulated detection time, traffic and convergence for N = 8..512;
//! - [`redis`]: Redis failover managed by quorate vs Redis Sentinel (defaults and tuned).

pub mod agents;
pub mod coord;
pub mod health;
pub mod membership;
pub mod raft;
pub mod redis;
pub mod replication;
pub mod state;
pub mod stats;

/// Where a benchmark binary writes its table when `--out` is not given: `file` in the build's
/// target directory (`CARGO_TARGET_DIR` when set, as cargo builds there, else the workspace's
/// `target/`).
pub fn default_out(file: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
        })
        .join(file)
}
