//! The monitor through its public API, under paused tokio time (deterministic).
#![allow(clippy::unwrap_used, reason = "test")]

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_health::{
    CheckConfig, HealthError, HealthMonitor, MonitorConfig, Recovery, RecoveryContext,
    RecoveryPolicy,
};
use quorate_health_api::{
    CheckResult, ComponentType, Criticality, HealthCheck, HealthStatus, HealthView, ProbeGroups,
    Transition,
};
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::{Instant, sleep};

use HealthStatus::{Critical, Passing, Unknown, Warning};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// 1 s interval, 500 ms timeout, no jitter, thresholds 1/1.
fn cfg() -> CheckConfig {
    CheckConfig {
        interval: secs(1),
        timeout: ms(500),
        jitter: Duration::ZERO,
        failure_threshold: nz(1),
        success_threshold: nz(1),
        ..CheckConfig::fast()
    }
}

fn start() -> HealthMonitor {
    HealthMonitor::start(MonitorConfig::standard()).unwrap()
}

/// A check whose next result is set by the test; counts its runs.
#[derive(Clone)]
struct Scripted {
    status: Arc<Mutex<HealthStatus>>,
    runs: Arc<AtomicU64>,
}

impl Scripted {
    fn new(status: HealthStatus) -> Scripted {
        Scripted {
            status: Arc::new(Mutex::new(status)),
            runs: Arc::new(AtomicU64::new(0)),
        }
    }
    fn set(&self, status: HealthStatus) {
        *self.status.lock().unwrap() = status;
    }
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
    fn check(&self) -> impl HealthCheck {
        let me = self.clone();
        move || {
            let me = me.clone();
            async move {
                me.runs.fetch_add(1, Ordering::SeqCst);
                let status = *me.status.lock().unwrap();
                CheckResult::new(status, format!("scripted {status}"))
            }
        }
    }
}

fn status_of(monitor: &HealthMonitor, id: &str) -> HealthStatus {
    monitor.check(id).unwrap().status
}

#[track_caller]
fn assert_config_error(result: Result<(), HealthError>, field: &str) {
    match result {
        Err(HealthError::InvalidConfig { field: f, .. }) if f == field => {}
        other => panic!("expected an InvalidConfig error on {field}, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn registration_errors_are_clear() {
    let m = start();
    let ok = || async { CheckResult::passing("ok") };
    m.register("a", ComponentType::Internal, "a", ok, cfg())
        .unwrap();

    let dup = m
        .register("a", ComponentType::Internal, "a", ok, cfg())
        .unwrap_err();
    assert!(matches!(&dup, HealthError::DuplicateCheck { id } if id.as_str() == "a"));
    assert!(dup.to_string().contains("already registered"), "{dup}");

    let bad_id = m
        .register("a b", ComponentType::Internal, "a", ok, cfg())
        .unwrap_err();
    assert!(
        matches!(bad_id, HealthError::InvalidCheckId(_)),
        "{bad_id:?}"
    );

    let zero = CheckConfig {
        interval: Duration::ZERO,
        ..cfg()
    };
    assert_config_error(
        m.register("b", ComponentType::Internal, "b", ok, zero),
        "interval",
    );
    let huge = CheckConfig {
        interval: secs(100_000),
        timeout: secs(1),
        ..cfg()
    };
    assert_config_error(
        m.register("b", ComponentType::Internal, "b", ok, huge),
        "interval",
    );
    let no_timeout = CheckConfig {
        timeout: Duration::ZERO,
        ..cfg()
    };
    assert_config_error(
        m.register("b", ComponentType::Internal, "b", ok, no_timeout),
        "timeout",
    );
    let long_timeout = CheckConfig {
        timeout: secs(2),
        ..cfg()
    };
    let err = m
        .register("b", ComponentType::Internal, "b", ok, long_timeout)
        .unwrap_err();
    assert!(
        err.to_string().contains("b.timeout")
            && err.to_string().contains("must not exceed interval = 1s"),
        "{err}"
    );
    let jitter = CheckConfig {
        jitter: secs(2),
        ..cfg()
    };
    assert_config_error(
        m.register("b", ComponentType::Internal, "b", ok, jitter),
        "jitter",
    );
    let stale = CheckConfig {
        stale_status: Passing,
        ..cfg()
    };
    assert_config_error(
        m.register("b", ComponentType::Internal, "b", ok, stale),
        "stale_status",
    );

    let live_db = CheckConfig {
        groups: ProbeGroups::BOTH,
        ..cfg()
    };
    let err = m
        .register("db", ComponentType::Database, "db", ok, live_db.clone())
        .unwrap_err();
    assert!(
        matches!(err, HealthError::LivenessDependsOnExternal { .. }),
        "{err:?}"
    );
    // Internal components may be in liveness.
    m.register("proc", ComponentType::Internal, "p", ok, live_db)
        .unwrap();

    for e in [
        m.deregister("nope"),
        m.enable("nope"),
        m.disable("nope"),
        m.set_recovery("nope", Recovery::new(RecoveryPolicy::standard())),
    ] {
        assert!(
            matches!(e, Err(HealthError::UnknownCheck { ref id }) if id == "nope"),
            "{e:?}"
        );
    }
    assert!(matches!(
        m.run_now("nope").await,
        Err(HealthError::UnknownCheck { .. })
    ));
    assert!(matches!(
        m.history("nope"),
        Err(HealthError::UnknownCheck { .. })
    ));

    let bad_policy = RecoveryPolicy {
        backoff_max: ms(1),
        ..RecoveryPolicy::standard()
    };
    assert_config_error(
        m.set_recovery("a", Recovery::new(bad_policy)),
        "recovery.backoff_max",
    );
    // Nothing of the failed registrations stuck.
    assert_eq!(m.overall().checks.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn limits_and_monitor_config_errors() {
    let m = HealthMonitor::start(MonitorConfig {
        checks_max: NonZeroUsize::new(2).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    let ok = || async { CheckResult::passing("ok") };
    m.register("a", ComponentType::Internal, "a", ok, cfg())
        .unwrap();
    m.register("b", ComponentType::Internal, "b", ok, cfg())
        .unwrap();
    let err = m
        .register("c", ComponentType::Internal, "c", ok, cfg())
        .unwrap_err();
    assert!(
        matches!(err, HealthError::TooManyChecks { max: 2, .. }),
        "{err:?}"
    );
    m.deregister("a").unwrap();
    m.register("c", ComponentType::Internal, "c", ok, cfg())
        .unwrap();

    let err = HealthMonitor::start(MonitorConfig {
        message_bytes_max: NonZeroUsize::new(4).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap_err();
    assert!(err.to_string().contains("message_bytes_max"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn new_check_shows_initial_status_until_proven() {
    let m = start();
    let s = Scripted::new(Passing);
    let config = CheckConfig {
        success_threshold: nz(2),
        initial_status: Unknown,
        ..cfg()
    };
    m.register("c", ComponentType::Internal, "c", s.check(), config)
        .unwrap();
    assert_eq!(status_of(&m, "c"), Unknown);
    assert_eq!(m.overall().readiness, Unknown);
    sleep(ms(500)).await; // run 1 at t=0
    assert_eq!((s.runs(), status_of(&m, "c")), (1, Unknown));
    sleep(secs(1)).await; // run 2 at t=1
    assert_eq!((s.runs(), status_of(&m, "c")), (2, Passing));
}

#[tokio::test(start_paused = true)]
async fn thresholds_damp_both_ways() {
    let m = start();
    let s = Scripted::new(Passing);
    let config = CheckConfig {
        failure_threshold: nz(3),
        success_threshold: nz(2),
        ..cfg()
    };
    m.register("c", ComponentType::Internal, "c", s.check(), config)
        .unwrap();
    sleep(ms(1500)).await; // runs at 0 and 1
    assert_eq!(status_of(&m, "c"), Passing);

    s.set(Critical);
    sleep(secs(2)).await; // failures at 2 and 3
    assert_eq!(
        status_of(&m, "c"),
        Passing,
        "2 failures < failure_threshold 3"
    );
    let snap = m.check("c").unwrap();
    assert_eq!(
        (snap.consecutive_failures, snap.last_result),
        (2, Some(Critical))
    );
    sleep(secs(1)).await; // third failure at 4
    assert_eq!(status_of(&m, "c"), Critical);

    s.set(Passing);
    sleep(secs(1)).await; // one success at 5
    assert_eq!(
        status_of(&m, "c"),
        Critical,
        "1 success < success_threshold 2"
    );
    sleep(secs(1)).await; // second at 6
    assert_eq!(status_of(&m, "c"), Passing);
    let history = m.history("c").unwrap();
    assert_eq!(history.len(), 7);
    assert_eq!(history[4].damped, Critical);
}

#[tokio::test(start_paused = true)]
async fn hung_check_times_out_without_blocking_others() {
    let m = start();
    let hung = || async {
        std::future::pending::<()>().await;
        CheckResult::passing("never")
    };
    m.register("hung", ComponentType::Internal, "h", hung, cfg())
        .unwrap();
    let s = Scripted::new(Passing);
    m.register("ok", ComponentType::Internal, "o", s.check(), cfg())
        .unwrap();
    sleep(ms(600)).await;
    let snap = m.check("hung").unwrap();
    assert_eq!(snap.status, Critical);
    assert_eq!(snap.message, "timed out after 500ms");
    assert_eq!(snap.last_duration, Some(ms(500)));
    sleep(secs(5)).await;
    assert_eq!(s.runs(), 6, "the healthy check kept its schedule");
    assert_eq!(status_of(&m, "ok"), Passing);
    let stats = m.stats();
    assert_eq!(stats.timeouts, 6);
    assert_eq!(m.history("hung").unwrap().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn panicking_check_is_critical() {
    let m = start();
    let boom = || async {
        if true {
            panic!("database handle poisoned");
        }
        CheckResult::passing("unreachable")
    };
    m.register("boom", ComponentType::Internal, "b", boom, cfg())
        .unwrap();
    let snap = m.run_now("boom").await.unwrap();
    assert_eq!(snap.status, Critical);
    assert_eq!(snap.message, "check panicked: database handle poisoned");
    assert_eq!(m.stats().panics, 1);
}

#[tokio::test(start_paused = true)]
async fn stale_when_runs_starve_then_fresh_again() {
    let m = HealthMonitor::start(MonitorConfig {
        concurrent_runs_max: NonZeroUsize::new(1).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    let s = Scripted::new(Passing);
    m.register("fast", ComponentType::Internal, "f", s.check(), cfg())
        .unwrap();
    let slow = || async {
        sleep(secs(60)).await;
        CheckResult::passing("late")
    };
    let slow_cfg = CheckConfig {
        interval: secs(10),
        timeout: secs(10),
        ..cfg()
    };
    m.register("slow", ComponentType::Internal, "s", slow, slow_cfg)
        .unwrap();

    sleep(ms(500)).await; // fast ran at 0, slow holds the only slot until 10
    assert_eq!(status_of(&m, "fast"), Passing);
    let mut events = m.transitions();
    sleep(secs(2)).await; // t = 2.5: 2.5 s without a result < 3 x 1 s
    assert!(!m.check("fast").unwrap().stale);
    sleep(secs(1)).await; // t = 3.5
    let snap = m.check("fast").unwrap();
    assert!(snap.stale);
    assert_eq!(snap.status, Unknown);
    assert!(
        snap.message.starts_with("stale: no result for 3s"),
        "{}",
        snap.message
    );
    assert_eq!(m.overall().readiness, Unknown);
    let t = events.try_recv().unwrap();
    assert_eq!((t.check.as_str(), t.from, t.to), ("fast", Passing, Unknown));
    assert_eq!(t.at, secs(3));

    sleep(secs(7)).await; // t = 10.5: slow timed out at 10, fast ran right after
    let snap = m.check("fast").unwrap();
    assert!(!snap.stale);
    assert_eq!(snap.status, Passing);
    assert_eq!(status_of(&m, "slow"), Critical);
    assert!(m.stats().skipped_slots > 0);
}

#[tokio::test(start_paused = true)]
async fn non_critical_failure_degrades_critical_failure_fails() {
    let m = start();
    let cache = Scripted::new(Critical);
    let db = Scripted::new(Passing);
    let non_critical = CheckConfig {
        criticality: Criticality::NonCritical,
        ..cfg()
    };
    m.register(
        "cache",
        ComponentType::Cache,
        "redis",
        cache.check(),
        non_critical,
    )
    .unwrap();
    m.register("db", ComponentType::Database, "pg", db.check(), cfg())
        .unwrap();
    sleep(ms(500)).await;
    let snap = m.overall();
    assert_eq!(
        status_of(&m, "cache"),
        Critical,
        "the check itself shows its status"
    );
    assert_eq!((snap.status, snap.readiness), (Warning, Warning));
    assert_eq!((snap.healthy, snap.total), (1, 2));
    assert!(snap.status.is_healthy());

    db.set(Critical);
    sleep(secs(1)).await;
    assert_eq!(m.overall().status, Critical);
}

#[tokio::test(start_paused = true)]
async fn liveness_ignores_readiness_only_checks() {
    let m = start();
    let db = Scripted::new(Critical);
    let worker = Scripted::new(Passing);
    m.register("db", ComponentType::Database, "pg", db.check(), cfg())
        .unwrap();
    let live = CheckConfig {
        groups: ProbeGroups::BOTH,
        ..cfg()
    };
    m.register(
        "worker",
        ComponentType::Internal,
        "loop",
        worker.check(),
        live,
    )
    .unwrap();
    sleep(ms(500)).await;
    let snap = m.overall();
    assert_eq!(
        (snap.liveness, snap.readiness, snap.status),
        (Passing, Critical, Critical)
    );
    worker.set(Critical);
    sleep(secs(1)).await;
    assert_eq!(m.overall().liveness, Critical);
}

fn counting_recovery(
    attempts: &Arc<AtomicUsize>,
    hooks: &Arc<AtomicUsize>,
    policy: RecoveryPolicy,
    succeed_on: usize,
) -> Recovery {
    let a = Arc::clone(attempts);
    let h = Arc::clone(hooks);
    Recovery::new(policy)
        .action(move |ctx: RecoveryContext| {
            let n = a.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                assert!(ctx.attempt <= ctx.attempts_max);
                if n == succeed_on {
                    Ok(())
                } else {
                    Err(format!("attempt {} failed", ctx.attempt))
                }
            }
        })
        .on_recovered(move |t: Transition| {
            h.fetch_add(1, Ordering::SeqCst);
            async move {
                assert_eq!(t.from, Critical);
            }
        })
}

#[tokio::test(start_paused = true)]
async fn recovery_runs_once_per_transition_with_bounded_retries() {
    let m = start();
    let s = Scripted::new(Passing);
    m.register("svc", ComponentType::Internal, "svc", s.check(), cfg())
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let policy = RecoveryPolicy {
        attempts_max: nz(3),
        backoff_initial: secs(1),
        backoff_max: secs(30),
        attempt_timeout: secs(5),
    };
    m.set_recovery(
        "svc",
        counting_recovery(&attempts, &hooks, policy, usize::MAX),
    )
    .unwrap();
    sleep(ms(500)).await;
    s.set(Critical);
    sleep(secs(1)).await; // critical at t=1: attempts at 1, 2 (after 1 s), 4 (after 2 s)
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    sleep(secs(30)).await; // stays critical, one episode only
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "attempts_max bounds the retries"
    );
    let stats = m.stats();
    assert_eq!((stats.recoveries_started, stats.recoveries_gave_up), (1, 1));
    assert_eq!(hooks.load(Ordering::SeqCst), 0);

    s.set(Passing);
    sleep(secs(1)).await;
    assert_eq!(hooks.load(Ordering::SeqCst), 1, "recovered hook fires once");
    sleep(secs(5)).await;
    assert_eq!(hooks.load(Ordering::SeqCst), 1);

    s.set(Critical);
    sleep(secs(30)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        6,
        "a new transition starts a new episode"
    );
    assert_eq!(m.stats().recoveries_started, 2);
}

#[tokio::test(start_paused = true)]
async fn recovery_stops_on_success_or_when_the_check_recovers() {
    let m = start();
    let s = Scripted::new(Critical);
    m.register("svc", ComponentType::Internal, "svc", s.check(), cfg())
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let policy = RecoveryPolicy {
        attempts_max: nz(10),
        backoff_initial: secs(5),
        backoff_max: secs(5),
        attempt_timeout: secs(1),
    };
    // Succeeds on the second attempt.
    m.set_recovery(
        "svc",
        counting_recovery(&attempts, &hooks, policy.clone(), 2),
    )
    .unwrap();
    sleep(secs(20)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(m.stats().recoveries_succeeded, 1);

    // Never succeeds, but the check recovers during the backoff: the episode stops.
    let attempts = Arc::new(AtomicUsize::new(0));
    m.set_recovery(
        "svc",
        counting_recovery(&attempts, &hooks, policy, usize::MAX),
    )
    .unwrap();
    s.set(Passing);
    sleep(secs(1)).await;
    assert_eq!(hooks.load(Ordering::SeqCst), 1);
    s.set(Critical);
    sleep(secs(1)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    s.set(Passing);
    sleep(secs(30)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "recovery cancelled once the check passed"
    );
    assert_eq!(hooks.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn recovery_attempt_timeout_counts_as_failure() {
    let m = start();
    let s = Scripted::new(Critical);
    m.register("svc", ComponentType::Internal, "svc", s.check(), cfg())
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&attempts);
    let policy = RecoveryPolicy {
        attempts_max: nz(2),
        backoff_initial: secs(1),
        backoff_max: secs(1),
        attempt_timeout: secs(2),
    };
    let hang = Recovery::new(policy).action(move |_ctx: RecoveryContext| {
        a.fetch_add(1, Ordering::SeqCst);
        async {
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    m.set_recovery("svc", hang).unwrap();
    sleep(secs(30)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(m.stats().recoveries_gave_up, 1);
}

#[tokio::test(start_paused = true)]
async fn thousand_checks_run_on_their_grid_without_drift() {
    const CHECKS: usize = 1000;
    let m = HealthMonitor::start(MonitorConfig {
        seed: 7,
        concurrent_runs_max: NonZeroUsize::new(CHECKS).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    let origin = Instant::now();
    let times: Vec<Arc<Mutex<Vec<Duration>>>> = (0..CHECKS)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let config = CheckConfig {
        jitter: secs(1),
        ..cfg()
    };
    for (i, t) in times.iter().enumerate() {
        let t = Arc::clone(t);
        let check = move || {
            t.lock().unwrap().push(origin.elapsed());
            async { CheckResult::passing("ok") }
        };
        m.register(
            &format!("c{i}"),
            ComponentType::Internal,
            "c",
            check,
            config.clone(),
        )
        .unwrap();
    }
    sleep(secs(30)).await;
    let mut phases = std::collections::BTreeSet::new();
    for (i, t) in times.iter().enumerate() {
        let t = t.lock().unwrap();
        assert!(
            (29..=30).contains(&t.len()),
            "check {i} ran {} times",
            t.len()
        );
        assert!(t[0] <= secs(1), "check {i} first ran at {:?}", t[0]);
        for (k, at) in t.iter().enumerate() {
            assert_eq!(*at, t[0] + secs(1) * k as u32, "check {i} run {k} drifted");
        }
        phases.insert(t[0]);
    }
    assert!(
        phases.len() > CHECKS / 2,
        "jitter spreads the phases: {} distinct",
        phases.len()
    );
    let stats = m.stats();
    assert_eq!(stats.skipped_slots, 0);
    // Phases have nanosecond resolution, tokio timers fire on whole milliseconds.
    assert!(
        stats.lateness_max <= ms(1),
        "lateness {:?}",
        stats.lateness_max
    );
    assert_eq!(m.overall().healthy, CHECKS);
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_schedule() {
    async fn first_runs(seed: u64) -> Vec<Duration> {
        let m = HealthMonitor::start(MonitorConfig {
            seed,
            ..MonitorConfig::standard()
        })
        .unwrap();
        let config = CheckConfig {
            jitter: secs(1),
            ..cfg()
        };
        for i in 0..5 {
            m.register(
                &format!("c{i}"),
                ComponentType::Internal,
                "c",
                || async { CheckResult::passing("ok") },
                config.clone(),
            )
            .unwrap();
        }
        sleep(ms(1100)).await;
        let out = (0..5)
            .map(|i| m.check(&format!("c{i}")).unwrap().last_run_at.unwrap())
            .collect();
        m.shutdown().await;
        out
    }
    let a = first_runs(42).await;
    let b = first_runs(42).await;
    let c = first_runs(43).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(start_paused = true)]
async fn disable_stops_runs_and_enable_restarts_from_initial_status() {
    let m = start();
    let s = Scripted::new(Passing);
    let other = Scripted::new(Critical);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    m.register("other", ComponentType::Internal, "o", other.check(), cfg())
        .unwrap();
    sleep(ms(2500)).await;
    assert_eq!(s.runs(), 3);
    m.disable("c").unwrap();
    m.disable("c").unwrap(); // idempotent
    m.disable("other").unwrap();
    sleep(secs(10)).await;
    assert_eq!(s.runs(), 3, "a disabled check does not run");
    let snap = m.overall();
    assert!(!snap.check("c").unwrap().enabled);
    assert_eq!(
        (snap.total, snap.status),
        (0, Passing),
        "disabled checks are not aggregated"
    );
    assert!(matches!(
        m.run_now("c").await,
        Err(HealthError::CheckDisabled { .. })
    ));

    m.enable("c").unwrap();
    assert_eq!(
        status_of(&m, "c"),
        Unknown,
        "re-enabled: back to the initial status"
    );
    sleep(ms(500)).await;
    assert_eq!((s.runs(), status_of(&m, "c")), (4, Passing));
}

#[tokio::test(start_paused = true)]
async fn disable_monitor_pauses_everything() {
    let m = start();
    let s = Scripted::new(Passing);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    sleep(ms(1500)).await;
    assert_eq!(s.runs(), 2);
    m.disable_monitor();
    assert!(!m.is_monitor_enabled());
    assert!(matches!(
        m.run_now("c").await,
        Err(HealthError::MonitorDisabled)
    ));
    sleep(secs(10)).await;
    assert_eq!(s.runs(), 2);
    let snap = m.check("c").unwrap();
    assert!(!snap.stale, "no staleness while the monitor is disabled");
    assert_eq!(snap.status, Passing, "statuses freeze");
    // Registering while disabled works; the check waits for enable.
    m.register("later", ComponentType::Internal, "l", s.check(), cfg())
        .unwrap();
    sleep(secs(2)).await;
    assert_eq!(s.runs(), 2);
    m.enable_monitor();
    assert_eq!(status_of(&m, "c"), Unknown);
    sleep(ms(500)).await;
    assert_eq!(s.runs(), 4);
    assert_eq!(m.overall().status, Passing);
}

#[tokio::test(start_paused = true)]
async fn subscription_sees_every_transition_in_order() {
    let m = start();
    let mut events = m.transitions();
    let s = Scripted::new(Passing);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    let script = [
        Passing, Critical, Critical, Warning, Passing, Unknown, Critical, Passing,
    ];
    for status in script {
        s.set(status);
        sleep(secs(1)).await;
    }
    let mut seen = Vec::new();
    loop {
        match events.try_recv() {
            Ok(t) => seen.push(t),
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    let tos: Vec<_> = seen.iter().map(|t| t.to).collect();
    assert_eq!(
        tos,
        [
            Passing, Critical, Warning, Passing, Unknown, Critical, Passing
        ]
    );
    let mut prev = Unknown;
    for (i, t) in seen.iter().enumerate() {
        assert_eq!(t.seq, i as u64 + 1, "sequence numbers are contiguous");
        assert_eq!(t.from, prev, "each transition starts where the last ended");
        prev = t.to;
    }
    assert!(seen.windows(2).all(|w| w[0].at < w[1].at));
    assert_eq!(seen[1].overall, Critical);
    assert_eq!(seen[1].message, "scripted critical");
}

#[tokio::test(start_paused = true)]
async fn watch_publishes_throttled_snapshots_and_transitions_at_once() {
    let m = start();
    let mut watch = m.watch();
    let s = Scripted::new(Passing);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    watch.changed().await.unwrap();
    let first = watch.borrow_and_update().clone();
    assert!(first.check("c").is_some());
    sleep(ms(500)).await;
    let snap = watch.borrow_and_update().clone();
    assert_eq!(snap.status, Passing);
    assert!(snap.generation >= first.generation);
    s.set(Critical);
    sleep(secs(1)).await;
    let after = watch.borrow_and_update().clone();
    assert_eq!(after.status, Critical);
    assert!(after.generation > snap.generation);
    assert_eq!(after.check("c").unwrap().last_change_at, Some(secs(1)));
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_is_respected() {
    let m = HealthMonitor::start(MonitorConfig {
        concurrent_runs_max: NonZeroUsize::new(3).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    for i in 0..10 {
        let (f, p) = (Arc::clone(&in_flight), Arc::clone(&peak));
        let check = move || {
            let (f, p) = (Arc::clone(&f), Arc::clone(&p));
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                sleep(ms(400)).await;
                f.fetch_sub(1, Ordering::SeqCst);
                CheckResult::passing("ok")
            }
        };
        m.register(&format!("c{i}"), ComponentType::Internal, "c", check, cfg())
            .unwrap();
    }
    sleep(secs(10)).await;
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    let stats = m.stats();
    assert!(stats.runs_completed > 30);
    assert!(
        stats.lateness_max > Duration::ZERO,
        "queued runs start late"
    );
    assert_eq!(m.overall().healthy, 10);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded() {
    let m = HealthMonitor::start(MonitorConfig {
        history_len: NonZeroUsize::new(4).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    let s = Scripted::new(Passing);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    sleep(ms(9500)).await;
    let h = m.history("c").unwrap();
    assert_eq!(h.len(), 4);
    assert_eq!(
        h.iter().map(|r| r.at).collect::<Vec<_>>(),
        [secs(6), secs(7), secs(8), secs(9)]
    );
    assert_eq!(m.check("c").unwrap().runs, 10);
}

#[tokio::test(start_paused = true)]
async fn messages_are_truncated_to_the_limit() {
    let m = HealthMonitor::start(MonitorConfig {
        message_bytes_max: NonZeroUsize::new(32).unwrap(),
        ..MonitorConfig::standard()
    })
    .unwrap();
    m.register(
        "c",
        ComponentType::Internal,
        "c",
        || async { CheckResult::warning("é".repeat(100)) },
        cfg(),
    )
    .unwrap();
    let snap = m.run_now("c").await.unwrap();
    assert!(
        snap.message.len() <= 32 && snap.message.ends_with("..."),
        "{}",
        snap.message
    );
}

#[tokio::test(start_paused = true)]
async fn run_now_runs_at_once_and_deregister_abandons_waiters() {
    let m = start();
    let s = Scripted::new(Critical);
    let config = CheckConfig {
        interval: secs(60),
        timeout: secs(30),
        ..cfg()
    };
    m.register("c", ComponentType::Internal, "c", s.check(), config.clone())
        .unwrap();
    sleep(secs(1)).await;
    assert_eq!(s.runs(), 1);
    s.set(Passing);
    let snap = m.run_now("c").await.unwrap();
    assert_eq!((snap.status, snap.runs, s.runs()), (Passing, 2, 2));

    let slow = || async {
        sleep(secs(20)).await;
        CheckResult::passing("slow")
    };
    m.register("slow", ComponentType::Internal, "s", slow, config)
        .unwrap();
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.run_now("slow").await })
    };
    sleep(secs(1)).await;
    m.deregister("slow").unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, HealthError::RunAbandoned { .. }), "{err:?}");
    assert!(m.check("slow").is_err());
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_scheduler() {
    let m = start();
    let s = Scripted::new(Passing);
    m.register("c", ComponentType::Internal, "c", s.check(), cfg())
        .unwrap();
    sleep(ms(1500)).await;
    m.shutdown().await;
    let runs = s.runs();
    sleep(secs(10)).await;
    assert_eq!(s.runs(), runs);
    assert!(matches!(m.run_now("c").await, Err(HealthError::Stopped)));
    let err = m
        .register("d", ComponentType::Internal, "d", s.check(), cfg())
        .unwrap_err();
    assert_eq!(err, HealthError::Stopped);
}

/// Truly concurrent: two worker threads, real time, registrations racing the scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_register_and_deregister_while_running() {
    let m = start();
    let fast = CheckConfig {
        interval: ms(5),
        timeout: ms(5),
        jitter: ms(5),
        ..cfg()
    };
    let s = Scripted::new(Passing);
    for i in 0..20 {
        m.register(
            &format!("stable{i}"),
            ComponentType::Internal,
            "s",
            s.check(),
            fast.clone(),
        )
        .unwrap();
    }
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let m = m.clone();
        let s = s.clone();
        let fast = fast.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                let id = format!("w{worker}-{n}");
                m.register(&id, ComponentType::Internal, "t", s.check(), fast.clone())
                    .unwrap();
                if n % 3 == 0 {
                    m.disable(&id).unwrap();
                    m.enable(&id).unwrap();
                }
                if n % 4 == 0 {
                    // Either a result or "abandoned" if the deregister below wins the race.
                    let _ = tokio::time::timeout(Duration::from_secs(5), m.run_now(&id)).await;
                }
                tokio::task::yield_now().await;
                m.deregister(&id).unwrap();
                assert!(matches!(
                    m.deregister(&id),
                    Err(HealthError::UnknownCheck { .. })
                ));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = m.overall();
    assert_eq!(snap.checks.len(), 20);
    assert!(
        snap.checks
            .keys()
            .all(|id| id.as_str().starts_with("stable"))
    );
    // The stable checks keep running after the churn.
    let before = s.runs();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.runs() < before + 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "stable checks stopped running"
        );
        tokio::time::sleep(ms(5)).await;
    }
    m.shutdown().await;
    assert_eq!(m.stats().running, 0);
}
