//! The nemesis: a seeded, printable schedule of faults ([`Schedule`]) generated from a
//! [`NemesisConfig`]; [`crate::Cluster::run_schedule`] applies it.
//!
//! Generation is a pure function of (seed, nodes, config): the same inputs give the same
//! schedule, and the schedule prints with its seed so a failure can be read and replayed.
//! Network faults act between *nodes* (clients keep reaching every node, as in Jepsen), except
//! `Pause`, which holds every message to and from the node, clients included.
// tidy:pure-core

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::clock::ClockRate;

/// One fault (or repair).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// Nodes in `left` and `right` cannot talk to each other (replaces any earlier partition).
    /// Random halves and isolating one node are both this.
    Partition {
        /// One side.
        left: Vec<String>,
        /// The other side.
        right: Vec<String>,
    },
    /// `left` and `right` cannot talk, but `bridge` talks to both (replaces any partition).
    Bridge {
        /// One side.
        left: Vec<String>,
        /// The node connected to both sides.
        bridge: String,
        /// The other side.
        right: Vec<String>,
    },
    /// Messages from `from` to `to` are dropped; the other direction works (replaces any
    /// partition).
    OneWay {
        /// Senders whose messages are dropped.
        from: Vec<String>,
        /// Receivers.
        to: Vec<String>,
    },
    /// Removes partitions and link latency and loss faults (not pauses, crashes or clocks).
    Heal,
    /// Stops the node's software; unsynced writes to its store are lost.
    Crash {
        /// The node.
        node: String,
    },
    /// Starts a crashed node again from its factory and persistent state.
    Restart {
        /// The node.
        node: String,
    },
    /// Holds every message to and from the node (as SIGSTOP would look from outside; the node's
    /// own timers keep running).
    Pause {
        /// The node.
        node: String,
    },
    /// Delivers the held messages and lets traffic flow again.
    Resume {
        /// The node.
        node: String,
    },
    /// Raises the maximum message latency between two nodes.
    SlowLink {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        /// New maximum latency.
        max_latency: Duration,
    },
    /// Makes the link between two nodes drop messages with this probability (per mille).
    /// turmoil has no TCP retransmission: a lost segment breaks that connection.
    LossyLink {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        /// Loss probability in 1/1000.
        loss_per_mille: u32,
    },
    /// Steps the node's wall clock by `offset_ms` from true time.
    ClockSkew {
        /// The node.
        node: String,
        /// Offset in milliseconds (negative: behind).
        offset_ms: i64,
    },
    /// Makes the node's clock (monotonic, wall and timers) run at `rate`.
    ClockRate {
        /// The node.
        node: String,
        /// The rate.
        rate: ClockRate,
    },
    /// Heals the network, resumes paused nodes, restarts crashed ones and resets every clock.
    RecoverAll,
}

fn list(nodes: &[String]) -> String {
    format!("[{}]", nodes.join(" "))
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { left, right } => {
                write!(f, "partition {} | {}", list(left), list(right))
            }
            Fault::Bridge {
                left,
                bridge,
                right,
            } => write!(f, "bridge {} <- {bridge} -> {}", list(left), list(right)),
            Fault::OneWay { from, to } => write!(f, "one-way drop {} -> {}", list(from), list(to)),
            Fault::Heal => write!(f, "heal network"),
            Fault::Crash { node } => write!(f, "crash {node}"),
            Fault::Restart { node } => write!(f, "restart {node}"),
            Fault::Pause { node } => write!(f, "pause {node}"),
            Fault::Resume { node } => write!(f, "resume {node}"),
            Fault::SlowLink { a, b, max_latency } => {
                write!(f, "slow link {a}-{b} up to {}ms", max_latency.as_millis())
            }
            Fault::LossyLink {
                a,
                b,
                loss_per_mille,
            } => write!(f, "lossy link {a}-{b} {loss_per_mille}/1000"),
            Fault::ClockSkew { node, offset_ms } => write!(f, "clock skew {node} {offset_ms:+}ms"),
            Fault::ClockRate { node, rate } => write!(f, "clock rate {node} {rate}"),
            Fault::RecoverAll => write!(f, "recover all (heal, resume, restart, reset clocks)"),
        }
    }
}

/// A fault at a simulated time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// When to apply it (simulated time since start).
    pub at: Duration,
    /// What to apply.
    pub fault: Fault,
}

/// The kinds of fault a generated schedule may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// Two random halves.
    PartitionHalves,
    /// One node against the rest.
    Isolate,
    /// Two halves and a bridge node (needs 3 nodes).
    Bridge,
    /// A random one-way cut.
    OneWay,
    /// Heal the network (chosen only while it is faulted).
    Heal,
    /// Crash a node (restarts are scheduled too).
    Crash,
    /// Pause a node (resumes are scheduled too).
    Pause,
    /// Slow a link.
    SlowLink,
    /// Lossy link.
    LossyLink,
    /// Step a wall clock.
    ClockSkew,
    /// Change a clock rate.
    ClockRate,
}

/// What a generated schedule may do, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisConfig {
    /// Fault kinds to draw from (uniformly among those applicable at each step).
    pub kinds: BTreeSet<FaultKind>,
    /// Time of the first fault.
    pub start: Duration,
    /// No fault at or after this time; a `RecoverAll` is scheduled at `end`.
    pub end: Duration,
    /// Shortest gap between faults.
    pub interval_min: Duration,
    /// Longest gap between faults.
    pub interval_max: Duration,
    /// Most nodes crashed at once.
    pub crashed_max: usize,
    /// Most nodes paused at once.
    pub paused_max: usize,
    /// Largest maximum latency of a slowed link.
    pub slow_latency_max: Duration,
    /// Highest loss of a lossy link, per mille.
    pub loss_per_mille_max: u32,
    /// Largest wall-clock step either way, in milliseconds.
    pub clock_skew_max_ms: i64,
    /// Slowest clock rate drawn.
    pub clock_rate_min: ClockRate,
    /// Fastest clock rate drawn.
    pub clock_rate_max: ClockRate,
}

impl NemesisConfig {
    /// Partitions of every shape and heals; from 100 ms to 1 s, every 50-250 ms.
    pub fn partitions() -> Self {
        Self::with_kinds([
            FaultKind::PartitionHalves,
            FaultKind::Isolate,
            FaultKind::Bridge,
            FaultKind::OneWay,
            FaultKind::Heal,
        ])
    }

    /// Crashes and pauses (with restarts and resumes).
    pub fn process_faults() -> Self {
        Self::with_kinds([FaultKind::Crash, FaultKind::Pause])
    }

    /// Clock skew and rate changes.
    pub fn clocks() -> Self {
        Self::with_kinds([FaultKind::ClockSkew, FaultKind::ClockRate])
    }

    /// Every kind of fault.
    pub fn all() -> Self {
        Self::with_kinds([
            FaultKind::PartitionHalves,
            FaultKind::Isolate,
            FaultKind::Bridge,
            FaultKind::OneWay,
            FaultKind::Heal,
            FaultKind::Crash,
            FaultKind::Pause,
            FaultKind::SlowLink,
            FaultKind::LossyLink,
            FaultKind::ClockSkew,
            FaultKind::ClockRate,
        ])
    }

    /// The given kinds with the default timing and bounds.
    pub fn with_kinds(kinds: impl IntoIterator<Item = FaultKind>) -> Self {
        Self {
            kinds: kinds.into_iter().collect(),
            start: Duration::from_millis(100),
            end: Duration::from_secs(1),
            interval_min: Duration::from_millis(50),
            interval_max: Duration::from_millis(250),
            crashed_max: 1,
            paused_max: 1,
            slow_latency_max: Duration::from_millis(100),
            loss_per_mille_max: 200,
            clock_skew_max_ms: 10_000,
            clock_rate_min: ClockRate::from_ppm(500_000).unwrap_or(ClockRate::NORMAL),
            clock_rate_max: ClockRate::from_ppm(2_000_000).unwrap_or(ClockRate::NORMAL),
        }
    }

    /// Sets the fault window.
    #[must_use]
    pub fn window(mut self, start: Duration, end: Duration) -> Self {
        self.start = start;
        self.end = end;
        self
    }

    /// Sets the gap between faults.
    #[must_use]
    pub fn interval(mut self, min: Duration, max: Duration) -> Self {
        self.interval_min = min;
        self.interval_max = max;
        self
    }

    fn validate(&self, nodes: &[String]) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Config(format!("nemesis: {m}")));
        if nodes.is_empty() {
            return bad("no nodes to fault; add nodes before generating a schedule".into());
        }
        if self.interval_min.is_zero() || self.interval_min > self.interval_max {
            return bad(format!(
                "interval_min {:?} must be > 0 and <= interval_max {:?}",
                self.interval_min, self.interval_max
            ));
        }
        if self.start > self.end {
            return bad(format!(
                "start {:?} is after end {:?}",
                self.start, self.end
            ));
        }
        if self.clock_rate_min > self.clock_rate_max {
            return bad("clock_rate_min is above clock_rate_max".into());
        }
        Ok(())
    }
}

/// A seeded fault schedule; prints one fault per line with its time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it was generated from.
    pub seed: u64,
    /// The nodes it faults.
    pub nodes: Vec<String>,
    /// Faults in time order.
    pub faults: Vec<ScheduledFault>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "nemesis schedule (seed {}, nodes {}, {} faults):",
            self.seed,
            list(&self.nodes),
            self.faults.len()
        )?;
        for s in &self.faults {
            writeln!(f, "  @{:>6}ms  {}", s.at.as_millis(), s.fault)?;
        }
        Ok(())
    }
}

impl Schedule {
    /// A schedule with no faults.
    pub fn empty(seed: u64, nodes: &[String]) -> Self {
        Self {
            seed,
            nodes: nodes.to_vec(),
            faults: Vec::new(),
        }
    }

    /// A hand-written schedule.
    pub fn fixed(seed: u64, nodes: &[String], faults: Vec<ScheduledFault>) -> Self {
        let mut faults = faults;
        faults.sort_by_key(|f| f.at);
        Self {
            seed,
            nodes: nodes.to_vec(),
            faults,
        }
    }

    /// Generates a schedule from `seed` for `nodes`.
    ///
    /// # Errors
    /// [`SimError::Config`] when the config is inconsistent or `nodes` is empty.
    pub fn generate(seed: u64, nodes: &[String], cfg: &NemesisConfig) -> Result<Self, SimError> {
        cfg.validate(nodes)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
        let mut generator = Gen {
            nodes,
            crashed: BTreeSet::new(),
            paused: BTreeSet::new(),
            net_faulted: false,
        };
        let mut faults = Vec::new();
        let mut at = cfg.start;
        while at < cfg.end {
            if let Some(fault) = generator.next(&mut rng, cfg) {
                faults.push(ScheduledFault { at, fault });
            }
            let gap = rng.random_range(cfg.interval_min.as_millis()..=cfg.interval_max.as_millis());
            at += Duration::from_millis(u64::try_from(gap).unwrap_or(u64::MAX));
        }
        faults.push(ScheduledFault {
            at: cfg.end,
            fault: Fault::RecoverAll,
        });
        Ok(Self {
            seed,
            nodes: nodes.to_vec(),
            faults,
        })
    }
}

struct Gen<'n> {
    nodes: &'n [String],
    crashed: BTreeSet<String>,
    paused: BTreeSet<String>,
    net_faulted: bool,
}

#[derive(Clone, Copy)]
enum Choice {
    Kind(FaultKind),
    Restart,
    Resume,
}

impl Gen<'_> {
    fn next(&mut self, rng: &mut StdRng, cfg: &NemesisConfig) -> Option<Fault> {
        let n = self.nodes.len();
        let mut choices: Vec<Choice> = Vec::new();
        for &k in &cfg.kinds {
            let ok = match k {
                FaultKind::PartitionHalves | FaultKind::Isolate | FaultKind::OneWay => n >= 2,
                FaultKind::Bridge => n >= 3,
                FaultKind::Heal => self.net_faulted,
                FaultKind::Crash => self.crashed.len() < cfg.crashed_max && self.up().len() > 1,
                FaultKind::Pause => self.paused.len() < cfg.paused_max && !self.up().is_empty(),
                FaultKind::SlowLink | FaultKind::LossyLink => n >= 2,
                FaultKind::ClockSkew | FaultKind::ClockRate => true,
            };
            if ok {
                choices.push(Choice::Kind(k));
            }
        }
        if cfg.kinds.contains(&FaultKind::Crash) && !self.crashed.is_empty() {
            choices.push(Choice::Restart);
        }
        if cfg.kinds.contains(&FaultKind::Pause) && !self.paused.is_empty() {
            choices.push(Choice::Resume);
        }
        let choice = *choices.choose(rng)?;
        let mut shuffled = self.nodes.to_vec();
        shuffled.shuffle(rng);
        let pick_from = |set: &BTreeSet<String>, rng: &mut StdRng| {
            set.iter().cloned().collect::<Vec<_>>().choose(rng).cloned()
        };
        let fault = match choice {
            Choice::Restart => {
                let node = pick_from(&self.crashed, rng)?;
                self.crashed.remove(&node);
                Fault::Restart { node }
            }
            Choice::Resume => {
                let node = pick_from(&self.paused, rng)?;
                self.paused.remove(&node);
                Fault::Resume { node }
            }
            Choice::Kind(k) => self.kind(k, shuffled, rng, cfg)?,
        };
        Some(fault)
    }

    fn up(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !self.crashed.contains(*n) && !self.paused.contains(*n))
            .cloned()
            .collect()
    }

    fn kind(
        &mut self,
        k: FaultKind,
        mut shuffled: Vec<String>,
        rng: &mut StdRng,
        cfg: &NemesisConfig,
    ) -> Option<Fault> {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        Some(match k {
            FaultKind::PartitionHalves => {
                self.net_faulted = true;
                let right = shuffled.split_off(shuffled.len() / 2);
                Fault::Partition {
                    left: sorted(shuffled),
                    right: sorted(right),
                }
            }
            FaultKind::Isolate => {
                self.net_faulted = true;
                let right = shuffled.split_off(1);
                Fault::Partition {
                    left: shuffled,
                    right: sorted(right),
                }
            }
            FaultKind::Bridge => {
                self.net_faulted = true;
                let bridge = shuffled.pop()?;
                let right = shuffled.split_off(shuffled.len() / 2);
                Fault::Bridge {
                    left: sorted(shuffled),
                    bridge,
                    right: sorted(right),
                }
            }
            FaultKind::OneWay => {
                self.net_faulted = true;
                let cut = rng.random_range(1..shuffled.len());
                let to = shuffled.split_off(cut);
                Fault::OneWay {
                    from: sorted(shuffled),
                    to: sorted(to),
                }
            }
            FaultKind::Heal => {
                self.net_faulted = false;
                Fault::Heal
            }
            FaultKind::Crash => {
                let node = self.up().choose(rng)?.clone();
                self.crashed.insert(node.clone());
                Fault::Crash { node }
            }
            FaultKind::Pause => {
                let node = self.up().choose(rng)?.clone();
                self.paused.insert(node.clone());
                Fault::Pause { node }
            }
            FaultKind::SlowLink => {
                self.net_faulted = true;
                let ms = rng.random_range(1..=cfg.slow_latency_max.as_millis().max(1));
                Fault::SlowLink {
                    a: shuffled[0].clone(),
                    b: shuffled[1].clone(),
                    max_latency: Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)),
                }
            }
            FaultKind::LossyLink => {
                self.net_faulted = true;
                Fault::LossyLink {
                    a: shuffled[0].clone(),
                    b: shuffled[1].clone(),
                    loss_per_mille: rng.random_range(1..=cfg.loss_per_mille_max.clamp(1, 1000)),
                }
            }
            FaultKind::ClockSkew => Fault::ClockSkew {
                node: shuffled[0].clone(),
                offset_ms: rng.random_range(-cfg.clock_skew_max_ms..=cfg.clock_skew_max_ms),
            },
            FaultKind::ClockRate => Fault::ClockRate {
                node: shuffled[0].clone(),
                rate: ClockRate::from_ppm(
                    rng.random_range(cfg.clock_rate_min.ppm()..=cfg.clock_rate_max.ppm()),
                )
                .ok()?,
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3", "n4", "n5"].map(String::from).to_vec()
    }

    #[test]
    fn same_seed_same_schedule_and_it_prints() {
        let a = Schedule::generate(7, &nodes(), &NemesisConfig::all()).unwrap();
        let b = Schedule::generate(7, &nodes(), &NemesisConfig::all()).unwrap();
        let c = Schedule::generate(8, &nodes(), &NemesisConfig::all()).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let text = a.to_string();
        assert!(text.starts_with("nemesis schedule (seed 7, nodes [n1 n2 n3 n4 n5]"));
        assert!(text.contains("recover all"), "{text}");
        assert_eq!(a.faults.last().map(|f| &f.fault), Some(&Fault::RecoverAll));
    }

    #[test]
    fn crashes_stay_within_bounds_and_are_restarted() {
        let cfg = NemesisConfig::process_faults().window(Duration::ZERO, Duration::from_secs(20));
        for seed in 0..20 {
            let s = Schedule::generate(seed, &nodes(), &cfg).unwrap();
            let mut down = BTreeSet::new();
            for f in &s.faults {
                match &f.fault {
                    Fault::Crash { node } | Fault::Pause { node } => {
                        assert!(down.insert(node.clone()), "{s}");
                    }
                    Fault::Restart { node } | Fault::Resume { node } => {
                        assert!(down.remove(node), "{s}");
                    }
                    _ => {}
                }
                assert!(down.len() <= 2, "{s}");
            }
        }
    }

    #[test]
    fn partitions_cover_every_node_once() {
        let cfg = NemesisConfig::partitions().window(Duration::ZERO, Duration::from_secs(10));
        let s = Schedule::generate(3, &nodes(), &cfg).unwrap();
        let mut shapes = BTreeSet::new();
        for f in &s.faults {
            let (mut all, shape) = match &f.fault {
                Fault::Partition { left, right } => ([left.clone(), right.clone()].concat(), 0),
                Fault::Bridge {
                    left,
                    bridge,
                    right,
                } => (
                    [left.clone(), vec![bridge.clone()], right.clone()].concat(),
                    1,
                ),
                Fault::OneWay { from, to } => ([from.clone(), to.clone()].concat(), 2),
                _ => continue,
            };
            shapes.insert(shape);
            all.sort();
            assert_eq!(all, nodes());
        }
        assert_eq!(shapes.len(), 3, "{s}");
    }

    #[test]
    fn bad_config_is_an_error() {
        let cfg = NemesisConfig::partitions().interval(Duration::ZERO, Duration::ZERO);
        assert!(matches!(
            Schedule::generate(1, &nodes(), &cfg),
            Err(SimError::Config(_))
        ));
        assert!(matches!(
            Schedule::generate(1, &[], &NemesisConfig::partitions()),
            Err(SimError::Config(_))
        ));
    }
}
