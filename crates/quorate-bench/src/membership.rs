//! The membership benchmark (simulation): crash detection, traffic, convergence after a heal and
//! false downs under loss, for several cluster sizes, beside memberlist's LAN figures computed
//! from its formulas. Nothing here asserts timings; `cargo xtask bench membership` runs
//! `cargo run --release -p quorate-bench --bin bench_membership` and prints the table.

use std::fmt::Write as _;
use std::time::Duration;

use quorate_membership_api::MemberState;
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

use quorate_membership::Profile;
use quorate_sim::membership::{Seen, Sim, SimConfig};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Cluster sizes.
    pub sizes: Vec<usize>,
    /// Profile under test.
    pub profile: Profile,
    /// Seed of the whole run.
    pub seed: u64,
    /// Crashes measured per size (one cluster, one node crashed after another).
    pub crash_trials: usize,
    /// Partition/heal cycles measured per size.
    pub heal_trials: usize,
    /// Steady-state window for the traffic figures.
    pub traffic_window: Duration,
    /// Loss levels for the false-down count.
    pub loss_levels: Vec<f64>,
    /// Simulated time per loss level.
    pub loss_duration: Duration,
}

impl BenchConfig {
    /// The full benchmark: N = 8, 32, 128, 512.
    pub fn full() -> Self {
        Self {
            sizes: vec![8, 32, 128, 512],
            profile: Profile::lan(),
            seed: 1,
            crash_trials: 20,
            heal_trials: 3,
            traffic_window: Duration::from_secs(20),
            loss_levels: vec![0.01, 0.05, 0.10],
            loss_duration: Duration::from_secs(120),
        }
    }

    /// A tiny run that proves the benchmark still works (used as a test).
    pub fn tiny() -> Self {
        Self {
            sizes: vec![4, 8],
            profile: Profile::lan(),
            seed: 1,
            crash_trials: 2,
            heal_trials: 1,
            traffic_window: Duration::from_secs(2),
            loss_levels: vec![0.05],
            loss_duration: Duration::from_secs(10),
        }
    }
}

/// Figures for one cluster size.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeReport {
    /// Cluster size.
    pub n: usize,
    /// Time to form (everyone sees everyone alive), all joining through one seed.
    pub formation: Option<Duration>,
    /// Crash to first `MemberDown` anywhere: median over trials.
    pub detect_median: Duration,
    /// Same, 99th percentile (the maximum with fewer than 100 trials).
    pub detect_p99: Duration,
    /// Crash until every live member has it down: median over trials.
    pub all_know_median: Duration,
    /// Same, 99th percentile.
    pub all_know_p99: Duration,
    /// Crashes not detected by everyone within the time limit.
    pub undetected: usize,
    /// Datagrams sent per node per second in steady state.
    pub msgs_per_node_s: f64,
    /// Bytes (frame overhead included) sent per node per second in steady state.
    pub bytes_per_node_s: f64,
    /// Heal until everyone sees everyone alive: median over trials (`None`: did not converge).
    pub heal_median: Option<Duration>,
    /// (loss, false `MemberDown` events about live nodes, node-hours simulated).
    pub false_downs: Vec<(f64, usize, f64)>,
    /// memberlist LAN, from its formulas.
    pub memberlist: MemberlistLan,
}

/// memberlist's LAN profile, computed from its formulas (no simulation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberlistLan {
    /// Suspicion timeout floor `4 · max(1, log10 N) · 1 s` (reached after 2 confirmations).
    pub suspicion_min: Duration,
    /// Ceiling (6 × the floor) when no confirmation arrives.
    pub suspicion_max: Duration,
    /// Median detection: median wait for the first probe (0.69 s) + probe interval + floor.
    pub detect_median: Duration,
    /// p99 detection: p99 wait for the first probe (4.6 s) + probe interval + floor.
    pub detect_p99: Duration,
    /// Median detection plus gossip to 99.99 % of members (Serf's convergence model).
    pub all_know_median: Duration,
    /// Messages per node per second: ping + ack, plus push/pull.
    pub msgs_per_node_s: f64,
    /// Bytes per node per second (encrypted ping ≈ 90 B, ack ≈ 60 B, push/pull ≈ 60 B/member).
    pub bytes_per_node_s: f64,
    /// Bound on convergence after a heal: Serf's reconnect interval (30 s) + dissemination.
    pub heal_bound: Duration,
}

impl MemberlistLan {
    /// The figures for `n` members.
    pub fn for_size(n: usize) -> Self {
        let nf = n.max(1) as f64;
        let probe = 1.0;
        let floor = 4.0 * nf.log10().max(1.0) * probe;
        // Serf's logistic model: rounds of 200 ms with fan-out 3 to reach 99.99 %.
        let c = 3.0 * 0.5;
        let rounds = ((nf + 1.0) * 9999.0).ln() / c;
        let dissemination = rounds.ceil() * 0.2;
        let detect_median = 0.69 * probe + probe + floor;
        let detect_p99 = 4.6 * probe + probe + floor;
        // pushPullScale: x(ceil(log2 N - log2 32) + 1) beyond 32 members.
        let scale = if n <= 32 {
            1.0
        } else {
            (nf.log2() - 32f64.log2()).ceil() + 1.0
        };
        let push_pull = 30.0 * scale;
        let msgs = 2.0 + 2.0 / push_pull;
        let bytes = 90.0 + 60.0 + 2.0 * nf * 60.0 / push_pull;
        let secs = Duration::from_secs_f64;
        Self {
            suspicion_min: secs(floor),
            suspicion_max: secs(floor * 6.0),
            detect_median: secs(detect_median),
            detect_p99: secs(detect_p99),
            all_know_median: secs(detect_median + dissemination),
            msgs_per_node_s: msgs,
            bytes_per_node_s: bytes,
            heal_bound: secs(30.0 + dissemination),
        }
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    crate::stats::quantile(v, p)
}

const TICK: Duration = Duration::from_millis(20);

fn form(n: usize, profile: &Profile, seed: u64) -> (Sim, Option<Duration>) {
    let mut cfg = SimConfig::new(n, profile.clone(), seed);
    cfg.start_stagger = Duration::from_millis(5);
    let mut sim = Sim::new(cfg);
    sim.start_all();
    let all: Vec<usize> = (0..n).collect();
    let t = sim.run_until(Duration::from_secs(300), Duration::from_millis(100), |s| {
        s.all_see(&all, &all, MemberState::Alive)
    });
    (sim, t)
}

/// Runs the benchmark for one size.
pub fn run_size(n: usize, cfg: &BenchConfig) -> SizeReport {
    let seed = cfg.seed.wrapping_mul(7919).wrapping_add(n as u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sim, formation) = form(n, &cfg.profile, seed);
    let start_traffic = sim.elapsed();
    // Let join gossip die down, then measure steady state.
    sim.run_for(Duration::from_secs(10));
    sim.reset_traffic();
    sim.run_for(cfg.traffic_window);
    let secs = cfg.traffic_window.as_secs_f64() * n as f64;
    let msgs = sim.traffic().iter().map(|t| t.msgs).sum::<u64>() as f64 / secs;
    let bytes = sim.traffic().iter().map(|t| t.bytes).sum::<u64>() as f64 / secs;
    let _ = start_traffic;

    // Crash detection: crash one node after another in the same cluster.
    let mut alive: Vec<usize> = (0..n).collect();
    let mut first = Vec::new();
    let mut all_know = Vec::new();
    let mut undetected = 0;
    let trials = cfg.crash_trials.min(n.saturating_sub(3));
    for _ in 0..trials {
        sim.run_for(Duration::from_millis(rng.random_range(0..1000)));
        let pick = rng.random_range(1..alive.len());
        let victim = alive.remove(pick);
        sim.clear_events();
        sim.crash(victim);
        let live = alive.clone();
        let t = sim.run_until(Duration::from_secs(120), TICK, |s| {
            s.all_see(&live, &[victim], MemberState::Down)
        });
        match t {
            Some(t) => all_know.push(t),
            None => undetected += 1,
        }
        let crash_at = sim.elapsed() - t.unwrap_or(Duration::from_secs(120));
        if let Some(e) = sim
            .events()
            .iter()
            .find(|e| e.subject == victim && e.seen == Seen::Down)
        {
            first.push(e.at.saturating_sub(crash_at));
        }
    }

    // Convergence after a heal, on a fresh cluster: split in two halves long enough for each
    // to declare the other down, heal, wait for everyone alive again.
    let mut heals = Vec::new();
    let (mut hsim, _) = form(n, &cfg.profile, seed ^ 0x4ea1);
    let everyone: Vec<usize> = (0..n).collect();
    for _ in 0..cfg.heal_trials {
        let groups: Vec<u8> = (0..n).map(|i| u8::from(i >= n / 2)).collect();
        hsim.partition(groups);
        let split = cfg.profile.suspicion_timeout(n as u32) * 3 + Duration::from_secs(5);
        hsim.run_for(split);
        hsim.heal();
        if let Some(t) = hsim.run_until(Duration::from_secs(120), TICK, |s| {
            s.all_see(&everyone, &everyone, MemberState::Alive)
        }) {
            heals.push(t);
        }
    }
    let heal_median = if heals.len() == cfg.heal_trials && !heals.is_empty() {
        Some(percentile(&mut heals, 0.5))
    } else {
        None
    };

    // False downs: fresh cluster per loss level, formed on a clean network.
    let mut false_downs = Vec::new();
    for (k, loss) in cfg.loss_levels.iter().enumerate() {
        let (mut s, _) = form(n, &cfg.profile, seed ^ (k as u64 + 1).wrapping_mul(0x9e37));
        s.clear_events();
        s.set_loss(*loss);
        s.run_for(cfg.loss_duration);
        let count = s.events().iter().filter(|e| e.seen == Seen::Down).count();
        let node_hours = n as f64 * cfg.loss_duration.as_secs_f64() / 3600.0;
        false_downs.push((*loss, count, node_hours));
    }

    SizeReport {
        n,
        formation,
        detect_median: percentile(&mut first.clone(), 0.5),
        detect_p99: percentile(&mut first, 0.99),
        all_know_median: percentile(&mut all_know.clone(), 0.5),
        all_know_p99: percentile(&mut all_know, 0.99),
        undetected,
        msgs_per_node_s: msgs,
        bytes_per_node_s: bytes,
        heal_median,
        false_downs,
        memberlist: MemberlistLan::for_size(n),
    }
}

/// Runs every size.
pub fn run(cfg: &BenchConfig) -> Vec<SizeReport> {
    cfg.sizes.iter().map(|n| run_size(*n, cfg)).collect()
}

fn s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Renders reports as a Markdown table (ours, then memberlist LAN from its formulas).
pub fn render(cfg: &BenchConfig, reports: &[SizeReport]) -> String {
    let mut out = String::new();
    let p = &cfg.profile;
    let _ = writeln!(
        out,
        "membership benchmark (simulation, profile `{}`: probe {:?}, timeout {:?}, suspicion mult {}; seed {}; {} crash trials, {} heal trials, {:?} per loss level)\n",
        p.name,
        p.probe_interval,
        p.probe_timeout,
        p.suspicion_mult,
        cfg.seed,
        cfg.crash_trials,
        cfg.heal_trials,
        cfg.loss_duration
    );
    let _ = writeln!(
        out,
        "| N | who | formation | detect median | detect p99 | all know median | all know p99 | msgs/node/s | bytes/node/s | heal converge | false downs {} |",
        cfg.loss_levels
            .iter()
            .map(|l| format!("{:.0}%", l * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in reports {
        let fd = r
            .false_downs
            .iter()
            .map(|(_, c, h)| format!("{c} ({:.1} node-h)", h))
            .collect::<Vec<_>>()
            .join(" / ");
        let undetected = if r.undetected > 0 {
            format!(" ({} undetected)", r.undetected)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | quorate `{}` | {} | {} | {} | {}{} | {} | {:.1} | {:.0} | {} | {} |",
            r.n,
            p.name,
            r.formation.map_or("> 300 s".to_owned(), s),
            s(r.detect_median),
            s(r.detect_p99),
            s(r.all_know_median),
            undetected,
            s(r.all_know_p99),
            r.msgs_per_node_s,
            r.bytes_per_node_s,
            r.heal_median.map_or("not converged".to_owned(), s),
            fd
        );
        let m = &r.memberlist;
        let _ = writeln!(
            out,
            "| {} | memberlist LAN (formula) | - | {} | {} | {} | - | {:.1} | {:.0} | <= {} | not computable (suspicion {}..{}) |",
            r.n,
            s(m.detect_median),
            s(m.detect_p99),
            s(m.all_know_median),
            m.msgs_per_node_s,
            m.bytes_per_node_s,
            s(m.heal_bound),
            s(m.suspicion_min),
            s(m.suspicion_max)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs_and_renders() {
        let cfg = BenchConfig::tiny();
        let reports = run(&cfg);
        assert_eq!(reports.len(), 2);
        for r in &reports {
            assert!(r.formation.is_some(), "{r:?}");
            assert!(r.msgs_per_node_s > 0.0);
            assert_eq!(r.false_downs.len(), 1);
        }
        let table = render(&cfg, &reports);
        assert!(table.contains("memberlist LAN (formula)"));
        assert_eq!(table.lines().filter(|l| l.starts_with("| 8 |")).count(), 2);
    }

    #[test]
    fn memberlist_formulas_match_the_anchors() {
        let m = MemberlistLan::for_size(8);
        assert_eq!(m.suspicion_min, Duration::from_secs(4));
        assert_eq!(m.suspicion_max, Duration::from_secs(24));
        let m = MemberlistLan::for_size(100);
        assert_eq!(m.suspicion_min, Duration::from_secs(8));
        assert!((m.msgs_per_node_s - 2.0).abs() < 0.1);
    }
}
