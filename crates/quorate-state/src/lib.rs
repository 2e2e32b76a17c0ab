//! Distributed state for applications, on any `quorate_coord_api::Coord` backend (embedded Raft
//! or etcd): sessions that say when they are lost, locks with fencing tokens and guarded
//! writes, elections for application tasks, and a fenced-resource helper.
//!
//! The one promise: [`Session::lost`] (and so [`LockGuard::lost`] and
//! [`Leadership::lost`]) fires at the holder-side deadline `last renew sent + ttl*(1-drift) -
//! margin` at the latest, by this process's monotonic clock, which is before the backend can
//! expire the lease as long as clock rates differ by less than `drift`. Beyond that bound
//! (a paused process, a clock at half speed) only fencing protects: pass
//! [`LockGuard::fencing_token`] to the resource and guard it with [`Fenced`], or write through
//! [`LockGuard::put_if_owner`]. See `docs/state.md`.
//!
//! ```no_run
//! # async fn demo(coord: std::sync::Arc<dyn quorate_coord_api::Coord>) -> Result<(), quorate_state::StateError> {
//! use std::time::Duration;
//! use quorate_state::{Mutex, Session, SessionConfig};
//! let session = Session::start(coord, SessionConfig::new(Duration::from_secs(3))).await?;
//! let guard = Mutex::new(session.clone(), "daily-report").lock().await?;
//! tokio::select! {
//!     reason = guard.lost() => eprintln!("lock lost, stopped: {reason}"),
//!     r = guard.put_if_owner("report/last", b"done".to_vec()) => { r?; }
//! }
//! guard.unlock().await?;
//! session.close().await;
//! # Ok(()) }
//! ```

mod admin;
mod election;
mod error;
mod fenced;
pub mod lease_math;
mod lock;
mod map;
mod semaphore;
mod session;

pub use admin::{Admin, LockInfo, SESSIONS_PREFIX, SessionInfo};
pub use election::{Election, Leadership};
pub use error::StateError;
pub use fenced::Fenced;
pub use lock::{LockGuard, LockOptions, Mutex};
pub use map::{Change, Counter, StateMap, StateMapConfig, Versioned};
pub use semaphore::{PERMITS_MAX, Permit, SEMAPHORE_PREFIX, Semaphore};
pub use session::{LostReason, Session, SessionConfig, SessionStats};
