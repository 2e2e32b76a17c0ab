//! `quorate-clock`: the clock every time-dependent quorate component reads time through.
//!
//! [`Clock`] is the seam: production code gets a [`SystemClock`] (tokio's monotonic time and the
//! system wall clock), simulations inject `quorate_sim::SimClock` (a per-node offset and rate),
//! so a node whose clock runs at 0.5x can be tested without touching the code under test.
//!
//! Two readings exist:
//! - [`Clock::now`]: monotonic time since the clock's origin. Leases, heartbeats and deadlines
//!   use it. It never jumps; under simulation its *rate* can differ from real time.
//! - [`Clock::wall`]: the wall clock, for timestamps shown to humans. It can jump (skew).
//!
//! Timers go through [`Clock::sleep`] so that a clock running at half speed also fires its timers
//! at half speed, as `libfaketime` does to a real process.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of monotonic and wall time, injected into components.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use quorate_clock::{Clock, SharedClock, SystemClock};
///
/// // A component takes a clock at construction and reads time only through it.
/// struct Lease { clock: SharedClock, expires_at: Duration }
/// impl Lease {
///     fn new(clock: SharedClock, ttl: Duration) -> Self {
///         let expires_at = clock.now() + ttl;
///         Lease { clock, expires_at }
///     }
///     fn valid(&self) -> bool { self.clock.now() < self.expires_at }
/// }
/// let lease = Lease::new(SystemClock::shared(), Duration::from_secs(10));
/// assert!(lease.valid());
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Monotonic time since this clock's origin; never goes backwards.
    fn now(&self) -> Duration;
    /// Wall-clock time; may jump in either direction.
    fn wall(&self) -> SystemTime;
    /// A timer that fires after `local` has passed on this clock.
    fn sleep(&self, local: Duration) -> tokio::time::Sleep;
    /// A timer that fires when [`Clock::now`] reaches `deadline`.
    fn sleep_until(&self, deadline: Duration) -> tokio::time::Sleep {
        self.sleep(deadline.saturating_sub(self.now()))
    }
}

/// A clock shared between a component and its owner (a harness keeps a handle to skew it).
pub type SharedClock = Arc<dyn Clock>;

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn wall(&self) -> SystemTime {
        (**self).wall()
    }
    fn sleep(&self, local: Duration) -> tokio::time::Sleep {
        (**self).sleep(local)
    }
    fn sleep_until(&self, deadline: Duration) -> tokio::time::Sleep {
        (**self).sleep_until(deadline)
    }
}

/// The production clock: tokio's monotonic time and the system wall clock.
///
/// Monotonic time comes from `tokio::time::Instant`, so under a paused tokio runtime
/// (`start_paused = true`) it is virtual too.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    /// A new clock behind an `Arc`, ready to inject.
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
    fn sleep(&self, local: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_tokio_time() {
        let clock = SystemClock::new();
        clock.sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), Duration::from_millis(250));
        clock.sleep_until(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), Duration::from_secs(1));
        let shared: SharedClock = Arc::new(clock);
        shared.sleep(Duration::from_millis(500)).await;
        assert_eq!(shared.now(), Duration::from_millis(1_500));
    }
}
