//! Service-manager notification (systemd's `sd_notify` protocol, through the `sd-notify`
//! crate): `READY=1` once every stage is ready, `STATUS=` per stage, `STOPPING=1` and
//! `EXTEND_TIMEOUT_USEC` during a hand-off, and `WATCHDOG=1` only while the decision loops
//! make progress, so a stuck loop gets the process restarted (`WatchdogSec=` in the unit;
//! `docs/quorate.service`).

use std::sync::Arc;
use std::time::Duration;

use quorate_failover::shell::RoleStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use sd_notify::NotifyState;

/// Where notifications go.
pub trait Notifier: Send + Sync {
    /// Sends `states` (errors are ignored: a service manager that is not listening must not
    /// stop the node).
    fn notify(&self, states: &[NotifyState<'_>]);
    /// The watchdog's period, when the service manager asked for one (`WATCHDOG_USEC`).
    fn watchdog_interval(&self) -> Option<Duration>;
}

/// systemd's `NOTIFY_SOCKET` (a no-op when it is not set).
#[derive(Clone, Copy, Debug, Default)]
pub struct SdNotifier;

impl Notifier for SdNotifier {
    fn notify(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!("sd_notify: {e}");
        }
    }

    fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled()
    }
}

/// A notifier that discards everything (embedding without a service manager, tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn notify(&self, _: &[NotifyState<'_>]) {}
    fn watchdog_interval(&self) -> Option<Duration> {
        None
    }
}

/// The sum of the decision steps of every role (see `RoleStatus::steps`).
fn steps(roles: &[watch::Receiver<RoleStatus>]) -> u64 {
    roles
        .iter()
        .map(|r| r.borrow().steps)
        .fold(0u64, u64::wrapping_add)
}

/// Whether the watchdog should ping now: the decision loops advanced since the last ping (or
/// there are no roles, when the node's own liveness is all there is to report).
pub fn should_ping(last: u64, now: u64, roles: usize) -> bool {
    roles == 0 || now != last
}

/// Pings `WATCHDOG=1` every half `interval` while the decision loops advance. A loop that stops
/// advancing stops the pings, and the service manager restarts the process after `interval`.
pub fn spawn_watchdog(
    tracker: &TaskTracker,
    cancel: CancellationToken,
    notifier: Arc<dyn Notifier>,
    roles: Vec<watch::Receiver<RoleStatus>>,
    interval: Duration,
) {
    tracker.spawn(async move {
        let period = (interval / 2).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        let mut last = steps(&roles);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    let now = steps(&roles);
                    if should_ping(last, now, roles.len()) {
                        notifier.notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!("watchdog: no decision step in {period:?}; not pinging (the service manager will restart this node)");
                    }
                    last = now;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Notifier for Recorder {
        fn notify(&self, states: &[NotifyState<'_>]) {
            let mut v = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            v.extend(states.iter().map(ToString::to_string));
        }
        fn watchdog_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
    }

    /// A stuck decision loop stops the pings: with paused time, the loop advances for a while,
    /// then stops; pings stop with it.
    #[tokio::test(start_paused = true)]
    async fn a_stuck_decision_loop_stops_the_watchdog_pings() {
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = watch::channel(RoleStatus::default());
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        spawn_watchdog(
            &tracker,
            cancel.clone(),
            rec.clone(),
            vec![rx],
            Duration::from_secs(1),
        );
        let count = |rec: &Recorder| {
            rec.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|s| s.as_str() == "WATCHDOG=1")
                .count()
        };
        // The decision loop steps every 100 ms for 3 s.
        for i in 1..=30u64 {
            tx.send_modify(|s| s.steps = i);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let while_alive = count(&rec);
        assert!(while_alive >= 5, "pings while the loop runs: {while_alive}");
        // It stops: no more pings from the next tick on.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let at_stall = count(&rec);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(count(&rec), at_stall, "no ping while the loop is stuck");
        // It resumes: pings resume.
        tx.send_modify(|s| s.steps = 31);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(count(&rec) > at_stall);
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[test]
    fn pings_need_progress_unless_there_are_no_roles() {
        assert!(should_ping(3, 4, 1));
        assert!(!should_ping(4, 4, 2));
        assert!(should_ping(4, 4, 0));
    }
}
