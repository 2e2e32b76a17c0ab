//! [`Cluster`]: a turmoil simulation of N restartable nodes and some clients, built from a seed
//! by [`ClusterBuilder`], driven by a step loop and faulted by a [`Schedule`].
//!
//! Each node is registered with a factory `Fn(NodeCtx) -> Future`. The harness keeps the node's
//! persistent state outside the factory ([`MemStore`], a state directory, its [`SimClock`]), so
//! a crash drops the running software (and the store's unsynced writes) and a restart calls the
//! factory again with the same state and the next incarnation number.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::SimError;
use crate::clock::{ClockRate, SimClock};
use crate::nemesis::{Fault, Schedule};
use crate::net::TurmoilNet;
use crate::store::MemStore;

/// What a host or client future returns (turmoil's result type).
pub type HostResult = Result<(), Box<dyn std::error::Error>>;

/// Everything a node's factory gets on each (re)start.
#[derive(Clone, Debug)]
pub struct NodeCtx {
    /// The node's host name (`n1`, ...); other hosts reach it at `"{name}:{port}"`.
    pub name: String,
    /// Position in registration order, from 0.
    pub index: usize,
    /// 0 on the first start, +1 on each restart.
    pub incarnation: u64,
    /// A seed for this incarnation's RNGs (derived from the cluster seed, index, incarnation).
    pub seed: u64,
    /// Sockets in the simulated network.
    pub net: TurmoilNet,
    /// The node's clock (skewable by the nemesis).
    pub clock: SimClock,
    /// Persistent key-value state that survives restarts (unsynced writes die in a crash).
    pub store: MemStore,
    /// A real directory that survives restarts (for redb files and the like); removed with the
    /// cluster. A crash does not lose unsynced file writes (the process does not really die).
    pub state_dir: PathBuf,
}

/// What a client future gets.
#[derive(Clone, Debug)]
pub struct ClientCtx {
    /// The client's host name.
    pub name: String,
    /// A seed for the client's RNG.
    pub seed: u64,
    /// Sockets in the simulated network.
    pub net: TurmoilNet,
}

/// Settings of a simulation; every one has a deterministic default.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    seed: u64,
    tick: Duration,
    latency_min: Duration,
    latency_max: Duration,
    duration: Duration,
    epoch: SystemTime,
    tcp_capacity: Option<usize>,
    random_order: bool,
}

impl ClusterBuilder {
    /// A builder for seed `seed`: tick 1 ms, link latency 1-5 ms, at most 60 s simulated, wall
    /// clock starting at 2023-11-14T22:13:20Z (fixed, so histories do not depend on the day).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            tick: Duration::from_millis(1),
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(5),
            duration: Duration::from_secs(60),
            epoch: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tcp_capacity: None,
            random_order: false,
        }
    }

    /// Simulated time per step.
    #[must_use]
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Message latency range of every link.
    #[must_use]
    pub fn link_latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency_min = min;
        self.latency_max = max;
        self
    }

    /// Longest simulated run; stepping past it is an error.
    #[must_use]
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Wall-clock time at simulated zero.
    #[must_use]
    pub fn epoch(mut self, epoch: SystemTime) -> Self {
        self.epoch = epoch;
        self
    }

    /// Per-host TCP buffer capacity (turmoil's default is 64 segments).
    #[must_use]
    pub fn tcp_capacity(mut self, capacity: usize) -> Self {
        self.tcp_capacity = Some(capacity);
        self
    }

    /// Shuffles the order hosts are polled in each step (seeded) to explore more interleavings.
    #[must_use]
    pub fn random_order(mut self, on: bool) -> Self {
        self.random_order = on;
        self
    }

    /// Builds the simulation.
    ///
    /// # Errors
    /// [`SimError::Config`] when the tick is zero or the latency range is inverted.
    pub fn build<'a>(self) -> Result<Cluster<'a>, SimError> {
        if self.tick.is_zero() {
            return Err(SimError::Config("cluster: tick must be > 0".into()));
        }
        if self.latency_min > self.latency_max {
            return Err(SimError::Config(format!(
                "cluster: link latency min {:?} is above max {:?}",
                self.latency_min, self.latency_max
            )));
        }
        let mut b = turmoil::Builder::new();
        b.rng_seed(self.seed)
            .tick_duration(self.tick)
            .min_message_latency(self.latency_min)
            .max_message_latency(self.latency_max)
            .simulation_duration(self.duration)
            .epoch(self.epoch);
        if let Some(c) = self.tcp_capacity {
            b.tcp_capacity(c);
        }
        if self.random_order {
            b.enable_random_order();
        }
        Ok(Cluster {
            sim: b.build(),
            cfg: self,
            nodes: Vec::new(),
            clients: Vec::new(),
            cuts: BTreeSet::new(),
            paused: BTreeSet::new(),
            applied: BTreeMap::new(),
            slow: BTreeSet::new(),
            lossy: BTreeSet::new(),
            state_root: None,
        })
    }
}

#[derive(Debug)]
struct NodeSlot {
    name: String,
    clock: SimClock,
    store: MemStore,
    crashed: bool,
}

/// The state a link between two hosts is in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LinkState {
    Healthy,
    Cut,
    OneWay { from: String, to: String },
    Held,
}

/// A simulated cluster. Nodes and clients must all be added before the first fault.
pub struct Cluster<'a> {
    sim: turmoil::Sim<'a>,
    cfg: ClusterBuilder,
    nodes: Vec<NodeSlot>,
    clients: Vec<String>,
    /// Directed node pairs whose messages are dropped.
    cuts: BTreeSet<(String, String)>,
    paused: BTreeSet<String>,
    /// The link states pushed to turmoil, keyed by ordered host pair.
    applied: BTreeMap<(String, String), LinkState>,
    slow: BTreeSet<(String, String)>,
    lossy: BTreeSet<(String, String)>,
    state_root: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Cluster<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.cfg.seed)
            .field("elapsed", &self.sim.elapsed())
            .field("nodes", &self.nodes)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// SplitMix64: derives independent seeds from one.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<'a> Cluster<'a> {
    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.sim.elapsed()
    }

    /// Node names in registration order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The clock of node `name`.
    pub fn clock(&self, name: &str) -> Option<SimClock> {
        self.slot(name).map(|n| n.clock.clone())
    }

    /// The persistent store of node `name`.
    pub fn store(&self, name: &str) -> Option<MemStore> {
        self.slot(name).map(|n| n.store.clone())
    }

    /// Whether node `name` is crashed.
    pub fn is_crashed(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|n| n.crashed)
    }

    /// The turmoil simulation, for anything this API does not cover.
    pub fn sim(&mut self) -> &mut turmoil::Sim<'a> {
        &mut self.sim
    }

    fn slot(&self, name: &str) -> Option<&NodeSlot> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn check_new_name(&self, name: &str) -> Result<(), SimError> {
        let taken = self.slot(name).is_some() || self.clients.iter().any(|c| c == name);
        if name.is_empty() || taken || name.parse::<std::net::IpAddr>().is_ok() {
            return Err(SimError::Config(format!(
                "host name `{name}` is empty, an IP address or already used; pick a new name"
            )));
        }
        Ok(())
    }

    /// Adds a node started (and restarted) by `factory`.
    ///
    /// # Errors
    /// [`SimError::Config`] for a duplicate name, [`SimError::Io`] if the state directory cannot
    /// be created.
    pub fn add_node<F, Fut>(&mut self, name: &str, factory: F) -> Result<(), SimError>
    where
        F: Fn(NodeCtx) -> Fut + 'a,
        Fut: Future<Output = HostResult> + 'static,
    {
        self.check_new_name(name)?;
        let io = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| SimError::Io { path, source }
        };
        if self.state_root.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("quorate-sim-")
                .tempdir()
                .map_err(io(&std::env::temp_dir()))?;
            self.state_root = Some(dir);
        }
        let state_dir = self
            .state_root
            .as_ref()
            .map(|d| d.path().join(name))
            .unwrap_or_default();
        std::fs::create_dir_all(&state_dir).map_err(io(&state_dir))?;
        let index = self.nodes.len();
        let clock = SimClock::turmoil(self.cfg.epoch);
        let store = MemStore::new();
        let incarnation = Rc::new(Cell::new(0u64));
        let base = NodeCtx {
            name: name.to_owned(),
            index,
            incarnation: 0,
            seed: 0,
            net: TurmoilNet,
            clock: clock.clone(),
            store: store.clone(),
            state_dir,
        };
        let seed = self.cfg.seed;
        self.sim.host(name, move || {
            let inc = incarnation.get();
            incarnation.set(inc + 1);
            let mut ctx = base.clone();
            ctx.incarnation = inc;
            ctx.seed = mix(mix(seed ^ mix(index as u64)) ^ inc);
            crate::net::WithCloser::new(factory(ctx))
        });
        self.nodes.push(NodeSlot {
            name: name.to_owned(),
            clock,
            store,
            crashed: false,
        });
        self.sync_links();
        Ok(())
    }

    /// Adds `count` nodes named `n1`, `n2`, ... with one factory; returns their names.
    ///
    /// # Errors
    /// As [`Cluster::add_node`].
    pub fn add_nodes<F, Fut>(&mut self, count: usize, factory: F) -> Result<Vec<String>, SimError>
    where
        F: Fn(NodeCtx) -> Fut + 'a,
        Fut: Future<Output = HostResult> + 'static,
    {
        let factory = Rc::new(factory);
        let mut names = Vec::with_capacity(count);
        for i in 1..=count {
            let name = format!("n{i}");
            let f = Rc::clone(&factory);
            self.add_node(&name, move |ctx| f(ctx))?;
            names.push(name);
        }
        Ok(names)
    }

    /// Adds a client: a future that runs once; the run is finished when every client is.
    ///
    /// # Errors
    /// [`SimError::Config`] for a duplicate name.
    pub fn add_client<F, Fut>(&mut self, name: &str, client: F) -> Result<(), SimError>
    where
        F: FnOnce(ClientCtx) -> Fut,
        Fut: Future<Output = HostResult> + 'static,
    {
        self.check_new_name(name)?;
        let seed = mix(self.cfg.seed ^ mix(0x636c_6965_6e74 + self.clients.len() as u64));
        let ctx = ClientCtx {
            name: name.to_owned(),
            seed,
            net: TurmoilNet,
        };
        self.sim.client(name, client(ctx));
        self.clients.push(name.to_owned());
        self.sync_links();
        Ok(())
    }

    /// Advances the simulation one tick; `Ok(true)` once every client has finished.
    ///
    /// # Errors
    /// [`SimError::Simulation`] when a host or client returned an error or the run exceeded its
    /// duration.
    pub fn step(&mut self) -> Result<bool, SimError> {
        self.sim.step().map_err(|e| SimError::Simulation {
            at: self.sim.elapsed(),
            reason: e.to_string(),
        })
    }

    /// Steps until simulated time reaches `t` (whether or not clients have finished).
    ///
    /// # Errors
    /// As [`Cluster::step`].
    pub fn run_until(&mut self, t: Duration) -> Result<(), SimError> {
        while self.sim.elapsed() < t {
            self.step()?;
        }
        Ok(())
    }

    /// Steps until every client has finished.
    ///
    /// # Errors
    /// As [`Cluster::step`].
    pub fn run_clients(&mut self) -> Result<(), SimError> {
        while !self.step()? {}
        Ok(())
    }

    /// Applies each fault of `schedule` at its time, then steps until every client has finished.
    ///
    /// # Errors
    /// As [`Cluster::step`] and [`Cluster::apply`].
    pub fn run_schedule(&mut self, schedule: &Schedule) -> Result<(), SimError> {
        for f in &schedule.faults {
            self.run_until(f.at)?;
            self.apply(&f.fault)?;
        }
        self.run_clients()
    }

    fn need(&self, name: &str) -> Result<usize, SimError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| SimError::UnknownNode(name.to_owned()))
    }

    /// Applies one fault now.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`] when the fault names a node that was not added.
    pub fn apply(&mut self, fault: &Fault) -> Result<(), SimError> {
        tracing::debug!(at = ?self.elapsed(), %fault, "nemesis");
        let cross = |a: &[String], b: &[String]| {
            let mut cuts = BTreeSet::new();
            for x in a {
                for y in b {
                    cuts.insert((x.clone(), y.clone()));
                    cuts.insert((y.clone(), x.clone()));
                }
            }
            cuts
        };
        match fault {
            Fault::Partition { left, right } | Fault::Bridge { left, right, .. } => {
                for n in left.iter().chain(right) {
                    self.need(n)?;
                }
                self.cuts = cross(left, right);
                self.sync_links();
            }
            Fault::OneWay { from, to } => {
                for n in from.iter().chain(to) {
                    self.need(n)?;
                }
                self.cuts = from
                    .iter()
                    .flat_map(|f| to.iter().map(move |t| (f.clone(), t.clone())))
                    .collect();
                self.sync_links();
            }
            Fault::Heal => self.heal(),
            Fault::Crash { node } => self.crash(node)?,
            Fault::Restart { node } => self.restart(node)?,
            Fault::Pause { node } => {
                self.need(node)?;
                self.paused.insert(node.clone());
                self.sync_links();
            }
            Fault::Resume { node } => {
                self.need(node)?;
                self.paused.remove(node);
                self.sync_links();
            }
            Fault::SlowLink { a, b, max_latency } => {
                self.need(a)?;
                self.need(b)?;
                self.sim
                    .set_link_latency(a.as_str(), b.as_str(), *max_latency);
                self.slow.insert((a.clone(), b.clone()));
            }
            Fault::LossyLink {
                a,
                b,
                loss_per_mille,
            } => {
                self.need(a)?;
                self.need(b)?;
                let p = f64::from((*loss_per_mille).min(1000)) / 1000.0;
                self.sim.set_link_fail_rate(a.as_str(), b.as_str(), p);
                self.lossy.insert((a.clone(), b.clone()));
            }
            Fault::ClockSkew { node, offset_ms } => {
                let i = self.need(node)?;
                self.nodes[i].clock.set_wall_offset_ms(*offset_ms);
            }
            Fault::ClockRate { node, rate } => {
                let i = self.need(node)?;
                let at = self.elapsed();
                self.nodes[i].clock.set_rate_at(at, *rate);
            }
            Fault::RecoverAll => {
                self.heal();
                self.paused.clear();
                self.sync_links();
                for n in self.node_names() {
                    self.restart(&n)?;
                }
                let at = self.elapsed();
                for n in &self.nodes {
                    n.clock.set_rate_at(at, ClockRate::NORMAL);
                    n.clock.set_wall_offset_ms(0);
                }
            }
        }
        Ok(())
    }

    /// Crashes node `name` (no-op if already crashed); its store loses unsynced writes.
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub fn crash(&mut self, name: &str) -> Result<(), SimError> {
        let i = self.need(name)?;
        if !self.nodes[i].crashed {
            crate::net::begin_crash();
            self.sim.crash(name);
            crate::net::finish_crash();
            self.nodes[i].store.lose_unsynced();
            self.nodes[i].crashed = true;
        }
        Ok(())
    }

    /// Restarts a crashed node from its factory (no-op if running).
    ///
    /// # Errors
    /// [`SimError::UnknownNode`].
    pub fn restart(&mut self, name: &str) -> Result<(), SimError> {
        let i = self.need(name)?;
        if self.nodes[i].crashed {
            self.sim.bounce(name);
            self.nodes[i].crashed = false;
        }
        Ok(())
    }

    /// Removes partitions and link latency and loss faults (pauses stay).
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.sync_links();
        for (a, b) in std::mem::take(&mut self.slow) {
            self.sim
                .set_link_latency(a.as_str(), b.as_str(), self.cfg.latency_min);
            self.sim
                .set_link_max_message_latency(a.as_str(), b.as_str(), self.cfg.latency_max);
        }
        for (a, b) in std::mem::take(&mut self.lossy) {
            self.sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
        }
    }

    /// Pushes the desired state of every host pair to turmoil (only the pairs that changed).
    fn sync_links(&mut self) {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .chain(self.clients.iter().cloned())
            .collect();
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                let ab = self.cuts.contains(&(a.clone(), b.clone()));
                let ba = self.cuts.contains(&(b.clone(), a.clone()));
                let want = match (ab, ba) {
                    (true, true) => LinkState::Cut,
                    (true, false) => LinkState::OneWay {
                        from: a.clone(),
                        to: b.clone(),
                    },
                    (false, true) => LinkState::OneWay {
                        from: b.clone(),
                        to: a.clone(),
                    },
                    (false, false) if self.paused.contains(a) || self.paused.contains(b) => {
                        LinkState::Held
                    }
                    (false, false) => LinkState::Healthy,
                };
                let key = (a.clone(), b.clone());
                let have = self
                    .applied
                    .get(&key)
                    .cloned()
                    .unwrap_or(LinkState::Healthy);
                if have == want {
                    continue;
                }
                let (x, y) = (a.as_str(), b.as_str());
                match have {
                    LinkState::Held => self.sim.release(x, y),
                    LinkState::Cut | LinkState::OneWay { .. } => self.sim.repair(x, y),
                    LinkState::Healthy => {}
                }
                match &want {
                    LinkState::Cut => self.sim.partition(x, y),
                    LinkState::OneWay { from, to } => {
                        self.sim.partition_oneway(from.as_str(), to.as_str());
                    }
                    LinkState::Held => self.sim.hold(x, y),
                    LinkState::Healthy => {}
                }
                self.applied.insert(key, want);
            }
        }
    }
}
