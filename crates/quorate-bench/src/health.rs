//! The monitor's overhead benchmark: many trivial checks on a real multi-thread runtime,
//! reporting CPU per 1,000 check runs per second and scheduling lateness. Called by
//! `cargo xtask bench health` (through `src/bin/bench_health.rs`); timings are reported, never asserted.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use quorate_health_api::{CheckResult, ComponentType};

use quorate_health::{CheckConfig, HealthMonitor, MonitorConfig};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Registered checks.
    pub checks: usize,
    /// Interval of every check.
    pub interval: Duration,
    /// Measured time (after two intervals of warm-up).
    pub duration: Duration,
    /// Tokio worker threads.
    pub worker_threads: usize,
}

impl BenchConfig {
    /// 1,000 checks at 1 s for 10 s on 2 worker threads: 1,000 checks per second.
    #[must_use]
    pub const fn standard() -> BenchConfig {
        BenchConfig {
            checks: 1000,
            interval: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            worker_threads: 2,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// The configuration.
    pub config: BenchConfig,
    /// Runs completed during the measured window.
    pub runs: u64,
    /// Measured wall time.
    pub wall: Duration,
    /// Process CPU time (user + system, all threads) during the window.
    pub cpu: Duration,
    /// Check runs per second achieved.
    pub runs_per_sec: f64,
    /// CPU used per 1,000 runs per second, as percent of one core.
    pub cpu_percent_per_1000_runs_per_sec: f64,
    /// CPU per run.
    pub cpu_per_run: Duration,
    /// Scheduling lateness (run start - due time), whole run.
    pub lateness_p50: Duration,
    /// 99th percentile lateness.
    pub lateness_p99: Duration,
    /// Largest lateness.
    pub lateness_max: Duration,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "health bench: {} checks every {:?} for {:?} on {} threads: {} runs ({:.0}/s), \
             CPU {:?} = {:.2}% of a core per 1,000 runs/s ({:?} per run); \
             lateness p50 {:?} p99 {:?} max {:?}",
            self.config.checks,
            self.config.interval,
            self.wall,
            self.config.worker_threads,
            self.runs,
            self.runs_per_sec,
            self.cpu,
            self.cpu_percent_per_1000_runs_per_sec,
            self.cpu_per_run,
            self.lateness_p50,
            self.lateness_p99,
            self.lateness_max,
        )
    }
}

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn bench_error(reason: String) -> anyhow::Error {
    anyhow::anyhow!("health bench: tokio runtime: {reason}")
}

/// Run the benchmark. Call it from synchronous code (it builds its own runtime).
pub fn run(config: BenchConfig) -> anyhow::Result<BenchReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| bench_error(format!("cannot build a runtime: {e}")))?;
    runtime.block_on(async {
        let monitor = HealthMonitor::start(MonitorConfig {
            checks_max: NonZeroUsize::new(config.checks.max(1)).unwrap_or(NonZeroUsize::MIN),
            concurrent_runs_max: NonZeroUsize::new(config.checks.max(1))
                .unwrap_or(NonZeroUsize::MIN),
            ..MonitorConfig::standard()
        })?;
        // Thresholds of 1: every check turns passing on its first run, inside the warm-up, so
        // the measured window is the steady state (no transitions).
        let check_config = CheckConfig {
            interval: config.interval,
            timeout: config.interval,
            jitter: config.interval,
            failure_threshold: NonZeroU32::MIN,
            success_threshold: NonZeroU32::MIN,
            ..CheckConfig::fast()
        };
        for i in 0..config.checks {
            monitor.register(
                &format!("bench-{i}"),
                ComponentType::Internal,
                "bench",
                || async { CheckResult::passing("ok") },
                check_config.clone(),
            )?;
        }
        // Warm-up: every check has run once (phases lie within one interval).
        tokio::time::sleep(config.interval.saturating_mul(2)).await;
        let runs_before = monitor.stats().runs_completed;
        let cpu_before = process_cpu();
        let start = tokio::time::Instant::now();
        tokio::time::sleep(config.duration).await;
        let wall = start.elapsed();
        let cpu = process_cpu().saturating_sub(cpu_before);
        let stats = monitor.stats();
        monitor.shutdown().await;
        let runs = stats.runs_completed - runs_before;
        let runs_per_sec = runs as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE);
        let core_percent = cpu.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE) * 100.0;
        Ok(BenchReport {
            config: config.clone(),
            runs,
            wall,
            cpu,
            runs_per_sec,
            cpu_percent_per_1000_runs_per_sec: if runs_per_sec > 0.0 {
                core_percent / (runs_per_sec / 1000.0)
            } else {
                0.0
            },
            cpu_per_run: if runs > 0 {
                cpu / u32::try_from(runs).unwrap_or(u32::MAX)
            } else {
                Duration::ZERO
            },
            lateness_p50: stats.lateness_p50,
            lateness_p99: stats.lateness_p99,
            lateness_max: stats.lateness_max,
        })
    })
}
