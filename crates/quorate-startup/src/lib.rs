//! quorate-startup: the node assembly. [`Node::builder`] starts a quorate node from one
//! validated config ([`config`]) in ordered stages with readiness conditions ([`node`]),
//! publishes a typed [`NodeStatus`] and [`NodeEvent`] stream ([`report`]), tells systemd what it
//! is doing ([`notify`]), runs a role's hooks as commands for sidecar use ([`hooks`]), and stops
//! gracefully, handing its roles to the best candidate first ([`Node::shutdown`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = quorate_startup::config::load(std::path::Path::new("node.toml"))?;
//! let node = quorate_startup::Node::builder(config).start().await?;
//! print!("{}", node.startup_report());
//! let role = quorate_types::RoleName::new("worker")?;
//! node.run_while_primary(&role, |ctx| async move {
//!     // Act as primary; pass ctx.token() to every resource written.
//!     let _ = ctx.token();
//! })
//! .await?;
//! node.shutdown(std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod config;
pub mod hooks;
pub mod metered;
pub mod node;
pub mod notify;
pub mod replication;
pub mod report;
pub mod sources;

pub use admin::{
    Admin, AdminError, AdminOutcome, AdminRequest, AdminStatus, HistoryEntry, Permission,
    Principal, RoleExplanation,
};
pub use node::{
    HandoverOutcome, KeysReloaded, Node, NodeBuilder, NodeContext, Plugin, ShutdownReport,
    StartupError,
};
pub use report::{NodeEvent, NodeStatus, StartupReport};
