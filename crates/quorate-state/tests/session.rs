//! Sessions under paused tokio time on the in-memory backend: the renew schedule (TTL/3 with
//! seeded jitter, never later), the holder-side deadline counted from the last renew SENT,
//! errors that end the session at once or are retried until the deadline, and close/drop
//! revoking the lease. Every instant is exact (paused time), so the checks are equalities.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Faulty, KeepAlive};
use quorate_clock::{SharedClock, SystemClock};
use quorate_coord_api::{Coord, CoordError};
use quorate_state::lease_math;
use quorate_state::{LostReason, Session, SessionConfig, StateError};

const TTL: Duration = Duration::from_secs(3);

fn config(seed: u64) -> SessionConfig {
    let mut c = SessionConfig::new(TTL);
    c.seed = Some(seed);
    c
}

async fn start(seed: u64) -> (Session, Arc<Faulty>, Arc<dyn Coord>) {
    let backend = common::local();
    let clock: SharedClock = SystemClock::shared();
    let f = Faulty::with_clock(Arc::clone(&backend), Arc::clone(&clock));
    let s = Session::start_with_clock(Arc::clone(&f) as Arc<dyn Coord>, config(seed), clock)
        .await
        .unwrap();
    (s, f, backend)
}

fn sends(f: &Faulty) -> Vec<Duration> {
    f.renewals.lock().unwrap().iter().map(|(t, _)| *t).collect()
}

#[tokio::test(start_paused = true)]
async fn renews_every_third_of_the_ttl_with_seeded_jitter_never_later() {
    let (s, f, _b) = start(7).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let times = sends(&f);
    assert!(f.renewals.lock().unwrap().iter().all(|(_, ok)| *ok));
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 28, "{} renewals in 30 s", times.len());
    for g in &gaps {
        assert!(
            *g <= TTL / 3 && *g >= (TTL / 3) * 9 / 10,
            "a renew gap of {g:?} is outside [0.9, 1.0] x ttl/3"
        );
    }
    assert!(gaps.iter().any(|g| *g < TTL / 3), "no jitter at all");
    let stats = s.stats();
    assert_eq!(stats.renewals_missed, 0);
    assert_eq!(stats.renewals_ok, stats.renewals_sent);
    assert!(s.is_alive());

    // The same seed gives the same schedule.
    let (_s2, f2, _b2) = start(7).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let gaps2: Vec<Duration> = sends(&f2).windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, gaps2);
}

#[tokio::test(start_paused = true)]
async fn lost_fires_at_the_deadline_counted_from_the_last_renew_sent() {
    let (s, f, backend) = start(1).await;
    // Answers arrive 200 ms after the backend renewed: validity counts from the send, so the
    // holder ends 200 ms earlier than it would counting from the answer.
    f.set_latency(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.stats().last_renew_latency, Duration::from_millis(200));
    f.set_keep_alive(KeepAlive::Hang);
    let reason = s.lost().await;
    assert!(
        matches!(reason, LostReason::DeadlinePassed { missed } if missed >= 1),
        "{reason:?}"
    );
    let last_ok = f.last_acknowledged().unwrap();
    let c = config(1);
    let window = lease_math::holder_window(TTL, c.drift, c.margin);
    let lost_at = s.lost_at().unwrap();
    assert!(
        lost_at >= last_ok + window && lost_at <= last_ok + window + Duration::from_millis(1),
        "lost at {:?} after the last acknowledged send, window {window:?}",
        lost_at - last_ok
    );
    // At that moment the backend still holds the lease: the holder stopped first.
    let info = backend.lease_time_to_live(s.lease()).await;
    assert!(
        info.is_ok(),
        "the lease expired before the holder's lost(): {info:?}"
    );
    assert!(!s.is_alive());
    assert!(matches!(
        s.check_alive(),
        Err(StateError::SessionLost { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_renew_error_ends_the_session_at_once() {
    let (s, f, _b) = start(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.set_keep_alive(KeepAlive::Refuse);
    let reason = s.lost().await;
    assert!(
        matches!(
            reason,
            LostReason::RenewFailed {
                error: CoordError::InvalidArgument { .. }
            }
        ),
        "{reason:?}"
    );
    let refused = *sends(&f).last().unwrap();
    assert_eq!(s.lost_at().unwrap(), refused);
    // The session revoked its lease on the way out (the backend is reachable).
    let gone = common::local_lease_gone(&f, s.lease()).await;
    assert!(gone);
}

#[tokio::test(start_paused = true)]
async fn retryable_renew_errors_are_retried_until_the_deadline() {
    let (s, f, _b) = start(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.set_keep_alive(KeepAlive::Unavailable);
    let reason = s.lost().await;
    let LostReason::DeadlinePassed { missed } = reason else {
        panic!("{reason:?}")
    };
    let c = config(3);
    // Retried every retry_interval between the first failure and the deadline.
    assert!(missed >= 10, "only {missed} retries");
    assert_eq!(s.stats().renewals_missed, missed);
    let last_ok = f.last_acknowledged().unwrap();
    let window = lease_math::holder_window(TTL, c.drift, c.margin);
    assert!(s.lost_at().unwrap() <= last_ok + window + Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn a_revoked_lease_ends_the_session_at_the_next_renew() {
    let (s, _f, backend) = start(4).await;
    backend.lease_revoke(s.lease()).await.unwrap();
    assert_eq!(s.lost().await, LostReason::Revoked);
}

#[tokio::test(start_paused = true)]
async fn close_and_drop_revoke_the_lease() {
    let (s, f, _b) = start(5).await;
    s.close().await;
    assert_eq!(s.lost_reason(), Some(LostReason::Closed));
    assert!(common::local_lease_gone(&f, s.lease()).await);

    let (s2, f2, _b2) = start(6).await;
    let lease = s2.lease();
    drop(s2);
    // The keeper revokes in the background; give it its turn.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(common::local_lease_gone(&f2, lease).await);
}

#[test]
fn configs_that_cannot_survive_one_slow_renew_are_refused() {
    let mut c = SessionConfig::new(Duration::from_secs(3));
    c.validate().unwrap();
    c.margin = Duration::from_secs(2);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("raise session.ttl"), "{e}");
    let mut c = SessionConfig::new(Duration::ZERO);
    c.retry_interval = Duration::from_millis(10);
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("session.ttl = 0")
    );
}
