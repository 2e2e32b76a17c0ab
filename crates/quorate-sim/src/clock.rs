//! Injectable clocks: [`Clock`] is what components read time through; [`SystemClock`] is the
//! production clock and [`SimClock`] the simulated one with a per-node offset and rate.
//!
//! The trait, [`SharedClock`] and [`SystemClock`] live in the production crate `quorate-clock`
//! and are re-exported here unchanged; only [`SimClock`] (turmoil's time source) is defined here.
//!
//! Two readings exist:
//! - [`Clock::now`]: monotonic time since the clock's origin. Leases, heartbeats and deadlines
//!   use it. It never jumps; under simulation its *rate* can differ from real time.
//! - [`Clock::wall`]: the wall clock, for timestamps shown to humans. It can jump (skew).
//!
//! Timers go through [`Clock::sleep`] so that a clock running at half speed also fires its timers
//! at half speed, as `libfaketime` does to a real process.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{SimError, lock};

pub use quorate_clock::{Clock, SharedClock, SystemClock};

/// A clock rate relative to real (simulated) time, in parts per million: 1_000_000 is normal,
/// 500_000 runs at half speed, 1_010_000 is 1 % fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClockRate(u32);

impl ClockRate {
    /// The normal rate, 1.0x.
    pub const NORMAL: ClockRate = ClockRate(1_000_000);
    /// The slowest rate accepted, 0.01x.
    pub const MIN_PPM: u32 = 10_000;
    /// The fastest rate accepted, 100x.
    pub const MAX_PPM: u32 = 100_000_000;

    /// A rate in parts per million of real time.
    ///
    /// # Errors
    /// [`SimError::Config`] when outside `MIN_PPM..=MAX_PPM` (a stopped clock never fires a timer).
    pub fn from_ppm(ppm: u32) -> Result<Self, SimError> {
        if (Self::MIN_PPM..=Self::MAX_PPM).contains(&ppm) {
            Ok(Self(ppm))
        } else {
            Err(SimError::Config(format!(
                "clock rate {ppm} ppm is outside {}..={} ppm (0.01x..100x)",
                Self::MIN_PPM,
                Self::MAX_PPM
            )))
        }
    }

    /// The rate in parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// Converts a real duration into the duration this clock sees.
    pub fn real_to_local(self, real: Duration) -> Duration {
        nanos(real.as_nanos() * u128::from(self.0) / 1_000_000)
    }

    /// Converts a local duration into the real duration it takes (rounded up).
    pub fn local_to_real(self, local: Duration) -> Duration {
        nanos((local.as_nanos() * 1_000_000).div_ceil(u128::from(self.0)))
    }
}

impl fmt::Display for ClockRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}x", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Where a [`SimClock`] reads real (simulated) time from.
#[derive(Clone, Copy, Debug)]
enum TimeSource {
    /// turmoil's global simulated time (`turmoil::sim_elapsed`); same for every host.
    Turmoil,
    /// tokio time since an origin (a paused-time test without turmoil).
    Tokio(tokio::time::Instant),
}

#[derive(Debug)]
struct SimClockState {
    /// Real time at the last rate change.
    anchor_real: Duration,
    /// Local monotonic time at the last rate change.
    anchor_local: Duration,
    rate: ClockRate,
    /// Wall-clock step added on top of the monotonic reading, in milliseconds.
    wall_offset_ms: i64,
    /// Wall time at local time zero, as a duration since the UNIX epoch.
    epoch: Duration,
    /// Last real time seen (used when no time source is reachable, e.g. outside a host).
    last_real: Duration,
}

/// A simulated clock with a per-node wall offset and rate, shared between a node and the harness.
///
/// Clones share state: the harness keeps one clone and skews it while the node reads another.
/// Monotonic time is piecewise linear in real time: `now = anchor_local + rate * (real -
/// anchor_real)`; a rate change re-anchors, so `now` never jumps. The wall clock is
/// `epoch + now + wall_offset`, so a skew steps it and a rate change makes it drift.
/// [`Clock::sleep`] converts local durations at the rate in force when the timer is created.
#[derive(Clone, Debug)]
pub struct SimClock {
    source: TimeSource,
    state: Arc<Mutex<SimClockState>>,
}

impl SimClock {
    /// A clock on turmoil's global simulated time; `epoch` is the wall time at simulated zero.
    pub fn turmoil(epoch: SystemTime) -> Self {
        Self::with_source(TimeSource::Turmoil, epoch)
    }

    /// A clock on tokio time (for paused-time tests without turmoil); origin is now.
    pub fn tokio(epoch: SystemTime) -> Self {
        Self::with_source(TimeSource::Tokio(tokio::time::Instant::now()), epoch)
    }

    fn with_source(source: TimeSource, epoch: SystemTime) -> Self {
        let epoch = epoch.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self {
            source,
            state: Arc::new(Mutex::new(SimClockState {
                anchor_real: Duration::ZERO,
                anchor_local: Duration::ZERO,
                rate: ClockRate::NORMAL,
                wall_offset_ms: 0,
                epoch,
                last_real: Duration::ZERO,
            })),
        }
    }

    /// This clock as a [`SharedClock`] to hand to a component.
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }

    /// Reads the time source; outside a turmoil host falls back to the last time seen.
    fn real_now(&self, st: &mut SimClockState) -> Duration {
        let real = match self.source {
            TimeSource::Turmoil => turmoil::sim_elapsed(),
            TimeSource::Tokio(origin) => {
                Some(tokio::time::Instant::now().saturating_duration_since(origin))
            }
        };
        if let Some(r) = real {
            st.last_real = st.last_real.max(r);
        }
        st.last_real
    }

    fn local_at(st: &SimClockState, real: Duration) -> Duration {
        st.anchor_local + st.rate.real_to_local(real.saturating_sub(st.anchor_real))
    }

    /// Changes the rate from real time `at` on (the harness passes the simulation's elapsed time).
    pub fn set_rate_at(&self, at: Duration, rate: ClockRate) {
        let mut st = lock(&self.state);
        st.last_real = st.last_real.max(at);
        let real = st.last_real;
        st.anchor_local = Self::local_at(&st, real);
        st.anchor_real = real;
        st.rate = rate;
    }

    /// Changes the rate from the current time of this clock's source.
    pub fn set_rate(&self, rate: ClockRate) {
        let at = {
            let mut st = lock(&self.state);
            self.real_now(&mut st)
        };
        self.set_rate_at(at, rate);
    }

    /// Sets the wall-clock step (positive: ahead, negative: behind). Monotonic time is unchanged.
    pub fn set_wall_offset_ms(&self, offset_ms: i64) {
        lock(&self.state).wall_offset_ms = offset_ms;
    }

    /// The rate in force.
    pub fn rate(&self) -> ClockRate {
        lock(&self.state).rate
    }

    /// The wall-clock step in force, in milliseconds.
    pub fn wall_offset_ms(&self) -> i64 {
        lock(&self.state).wall_offset_ms
    }
}

impl Clock for SimClock {
    fn now(&self) -> Duration {
        let mut st = lock(&self.state);
        let real = self.real_now(&mut st);
        Self::local_at(&st, real)
    }

    fn wall(&self) -> SystemTime {
        let mut st = lock(&self.state);
        let real = self.real_now(&mut st);
        let base = st.epoch + Self::local_at(&st, real);
        let off = Duration::from_millis(st.wall_offset_ms.unsigned_abs());
        let wall = if st.wall_offset_ms >= 0 {
            base.saturating_add(off)
        } else {
            base.saturating_sub(off)
        };
        UNIX_EPOCH + wall
    }

    fn sleep(&self, local: Duration) -> tokio::time::Sleep {
        let rate = lock(&self.state).rate;
        tokio::time::sleep(rate.local_to_real(local))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn rate_conversions_round_trip() {
        let half = ClockRate::from_ppm(500_000).unwrap();
        assert_eq!(
            half.real_to_local(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            half.local_to_real(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        assert_eq!(half.to_string(), "0.500000x");
        assert!(matches!(ClockRate::from_ppm(0), Err(SimError::Config(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn sim_clock_rate_and_skew() {
        let clock = SimClock::tokio(UNIX_EPOCH + Duration::from_secs(1_000));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(clock.now(), Duration::from_secs(10));
        clock.set_rate(ClockRate::from_ppm(500_000).unwrap());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(clock.now(), Duration::from_secs(15));
        assert_eq!(clock.wall(), UNIX_EPOCH + Duration::from_secs(1_015));
        clock.set_wall_offset_ms(-5_000);
        assert_eq!(clock.wall(), UNIX_EPOCH + Duration::from_secs(1_010));
        assert_eq!(
            clock.now(),
            Duration::from_secs(15),
            "skew leaves monotonic"
        );
        // A 1 s local timer takes 2 s of real time at half speed.
        let start = tokio::time::Instant::now();
        clock.sleep(Duration::from_secs(1)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(clock.now(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_tokio_time() {
        let clock = SystemClock::new();
        clock.sleep(Duration::from_millis(250)).await;
        assert_eq!(clock.now(), Duration::from_millis(250));
        clock.sleep_until(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), Duration::from_secs(1));
    }
}
