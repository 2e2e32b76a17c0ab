//! The planned hand-off benchmark (`cargo xtask bench rolling-restart`): three agents in
//! network namespaces, the role's application acting every 10 ms while primary (each action
//! stamped with its fencing token in the hook log). Each node in turn gets SIGTERM (a graceful
//! shutdown hands its role over first) and is restarted; like an operator's rolling restart, the
//! next SIGTERM waits until the primary sees every other node as a candidate again (status.json
//! `candidates`: the restarted one has finished starting); after the hand-offs, the same run
//! measures unplanned kill -9 failovers for comparison. Per hand-off, the role's unavailability
//! is the gap in the application's actions: from the old term's last action to the new term's
//! first. The hook-log checker counts overlapping primaries (must be zero). Timings are
//! reported, never asserted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::hooklog::{self, Kind};
use crate::world::{Cluster, ClusterSpec, FAILOVER, SETTLE};

/// What to run.
#[derive(Clone, Debug)]
pub struct RollingOptions {
    /// The `quorate` executable.
    pub agent_exe: PathBuf,
    /// Planned hand-offs (SIGTERM of the primary, then its restart).
    pub handoffs: u32,
    /// Unplanned failovers (SIGKILL of the primary) measured in the same run.
    pub kills: u32,
    /// Print progress lines.
    pub verbose: bool,
}

/// One measured role change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// From the old term's last action to the new term's first, in milliseconds.
    pub unavailable_ms: u64,
    /// From the signal to the new term's first action, in milliseconds.
    pub signal_to_action_ms: u64,
    /// The new term's token and holder.
    pub token: u64,
    /// The node that holds the new term.
    pub node: String,
    /// Why the role moved, as the new primary printed it (`manual switchover` for a
    /// hand-off that worked as planned), with its measured detection and promotion times.
    pub cause: Option<String>,
    /// Detection and promotion, as the new primary measured them, in milliseconds.
    pub detection_ms: Option<u64>,
    /// See `detection_ms`.
    pub promotion_ms: Option<u64>,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        write!(
            f,
            "{:>5} ms unavailable, token {} on {}, cause {}, detection {}, promotion {}",
            self.unavailable_ms,
            self.token,
            self.node,
            self.cause.as_deref().unwrap_or("-"),
            ms(self.detection_ms),
            ms(self.promotion_ms)
        )
    }
}

/// The results.
#[derive(Clone, Debug, Default)]
pub struct RollingReport {
    /// Per planned hand-off.
    pub handoffs: Vec<Gap>,
    /// Per kill -9.
    pub kills: Vec<Gap>,
    /// The hook-log checker over the whole run (overlapping primaries are violations).
    pub check: hooklog::Report,
}

fn summary(gaps: &[Gap]) -> String {
    let v: Vec<f64> = gaps.iter().map(|g| g.unavailable_ms as f64).collect();
    let s: Vec<f64> = gaps.iter().map(|g| g.signal_to_action_ms as f64).collect();
    let q = |v: &[f64], q| {
        quorate_bench::stats::quantile_ms(v, q).map_or("-".to_owned(), |x| format!("{x:.0} ms"))
    };
    format!(
        "{} trials; unavailability median {} p99 {} max {}; signal to first action median {} p99 {}",
        gaps.len(),
        q(&v, 0.5),
        q(&v, 0.99),
        q(&v, 1.0),
        q(&s, 0.5),
        q(&s, 0.99)
    )
}

impl fmt::Display for RollingReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "planned hand-off (SIGTERM, restart): {}",
            summary(&self.handoffs)
        )?;
        writeln!(
            f,
            "unplanned failover (kill -9):       {}",
            summary(&self.kills)
        )?;
        writeln!(f, "hook-log check over the whole run: {}", self.check)?;
        for (i, g) in self.handoffs.iter().enumerate() {
            writeln!(f, "  hand-off {:>2}: {g}", i + 1)?;
        }
        for (i, g) in self.kills.iter().enumerate() {
            writeln!(f, "  kill     {:>2}: {g}", i + 1)?;
        }
        Ok(())
    }
}

/// Runs the benchmark (needs root: network namespaces).
pub async fn rolling_restart(opts: &RollingOptions) -> Result<RollingReport> {
    let mut c = Cluster::start(ClusterSpec {
        agent_exe: opts.agent_exe.clone(),
        size: 3,
        flapping: false,
        equal_priority: true,
        verbose: opts.verbose,
        act_interval_ms: 10,
        telegram: None,
        http_app: false,
    })
    .await?;
    let mut report = RollingReport::default();
    let r = steps(&mut c, opts, &mut report).await;
    // The new primaries' own account of each change (their event lines outlive the run).
    for g in report.handoffs.iter_mut().chain(report.kills.iter_mut()) {
        if let Some(rc) = c.role_change(g.token, &g.node) {
            g.cause = Some(rc.cause);
            g.detection_ms = rc.detection_ms;
            g.promotion_ms = rc.promotion_ms;
        }
    }
    let stopped = c.shutdown().await;
    report.check = c.check()?;
    if std::env::var_os("QUORATE_BENCH_KEEP").is_some() && r.is_ok() && stopped.is_ok() {
        println!("(agents' files kept in {})", c.keep().display());
        return Ok(report);
    }
    if r.is_err() || stopped.is_err() {
        let kept = c.keep();
        r.with_context(|| format!("rolling-restart bench failed (files in {})", kept.display()))?;
        stopped.with_context(|| format!("stopping the agents (files in {})", kept.display()))?;
    }
    Ok(report)
}

/// The gap between the last action of `old` and the first of the next term, and from
/// `signal_ns` to that first action.
fn gap(c: &Cluster, old: u64, signal_ns: u64) -> Result<Option<Gap>> {
    let log = c.log()?;
    let last_old = log
        .iter()
        .filter(|e| e.kind == Kind::Act && e.token == old)
        .map(|e| e.at_ns)
        .max();
    let first_new = log
        .iter()
        .filter(|e| e.kind == Kind::Act && e.token > old)
        .min_by_key(|e| e.at_ns);
    Ok(match (last_old, first_new) {
        (Some(l), Some(f)) => Some(Gap {
            unavailable_ms: f.at_ns.saturating_sub(l) / 1_000_000,
            signal_to_action_ms: f.at_ns.saturating_sub(signal_ns) / 1_000_000,
            token: f.token,
            node: f.node.clone(),
            cause: None,
            detection_ms: None,
            promotion_ms: None,
        }),
        _ => None,
    })
}

async fn first_new_action(c: &Cluster, old: u64, signal_ns: u64) -> Result<Gap> {
    let deadline = tokio::time::Instant::now() + FAILOVER;
    loop {
        if let Some(g) = gap(c, old, signal_ns)? {
            return Ok(g);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no action by a new term after token {old} within {FAILOVER:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn steps(c: &mut Cluster, opts: &RollingOptions, report: &mut RollingReport) -> Result<()> {
    for n in 0..opts.handoffs {
        let p = c.wait_stable(SETTLE).await?;
        // As an operator's rolling restart does: the next node is stopped only once the
        // restarted one is back and eligible (the primary sees a successor in every peer).
        c.wait_successors(p, SETTLE).await?;
        let old = c.term_of(p)?.context("the primary has no term")?;
        let at = crate::world::now_ns();
        c.say(&format!(
            "hand-off {}: SIGTERM of primary {}",
            n + 1,
            c.name(p)
        ));
        c.terminate(p).await?;
        let g = first_new_action(c, old, at).await?;
        c.say(&format!("unavailable {} ms", g.unavailable_ms));
        report.handoffs.push(g);
        let prio = c.priority(p);
        c.spawn(p, false, prio).await?;
    }
    for n in 0..opts.kills {
        let p = c.wait_stable(SETTLE).await?;
        c.wait_successors(p, SETTLE).await?;
        let old = c.term_of(p)?.context("the primary has no term")?;
        c.say(&format!("kill {}: SIGKILL of primary {}", n + 1, c.name(p)));
        let at = c.kill(p).await?;
        let g = first_new_action(c, old, at).await?;
        report.kills.push(g);
        let prio = c.priority(p);
        c.spawn(p, false, prio).await?;
    }
    Ok(())
}
