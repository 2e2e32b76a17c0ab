//! A multi-master keyspace on a running node: the async shell around [`Store`], [`Hlc`] and
//! [`MerkleDigest`].
//!
//! One task owns the keyspace. It takes local writes from a bounded queue, applies up to
//! `batch_max` of them, persists every changed state and the clock in **one** redb commit,
//! acknowledges the writers, and pushes the batch of deltas to every peer. Each peer has an
//! outbox task with a bounded queue: a push that fails (peer down, partitioned) is kept as a
//! **hint** (bounded in count by `hints_max` and in age by `hint_age_max`; the oldest go first
//! and are counted) and replayed when the peer answers again. **Anti-entropy** runs every
//! `anti_entropy_interval` with every peer, and at once with a peer that membership reports
//! up again (`MemberUp`/`MemberAlive`), or with every peer when the quorum or split-brain
//! view changes (a heal): digests are compared, and the states in differing buckets are
//! exchanged both ways, one frame at a time, repeating at once while a side had to truncate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quorate_membership_api::{MembershipEvent, MembershipEvents};
use quorate_types::NodeId;
use quorate_wire::net::Net;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::conflict::{ConflictLog, ConflictRecord};
use crate::crdt::Crdt;
use crate::digest::{DigestConfig, MerkleDigest};
use crate::error::ReplicationError;
use crate::hlc::{Hlc, HlcConfig, HlcTimestamp};
use crate::metrics::ReplicationMetrics;
use crate::msg::{EncodedEntry, Refusal, Request, Response};
use crate::node::{Inbound, NodeInner, ReplicationNode};
use crate::store::Store;

/// Bytes kept free in a frame for the envelope of a batch (keyspace name, node id, clock).
const ENVELOPE_BYTES: usize = 1024;

/// Settings of one multi-master keyspace. Every node declaring it must use the same name,
/// merge type and digest shape.
#[derive(Debug, Clone)]
pub struct MultiMasterConfig {
    /// The keyspace name (at most 128 bytes).
    pub name: String,
    /// The hybrid clock's bound on a peer's clock offset.
    pub hlc: HlcConfig,
    /// Keys held at most.
    pub keys_max: NonZeroUsize,
    /// Entries one value may hold ([`Crdt::size`]).
    pub value_size_max: NonZeroUsize,
    /// The digest shape for anti-entropy.
    pub digest: DigestConfig,
    /// Local writes queued before writers wait.
    pub write_queue_max: NonZeroUsize,
    /// Writes applied in one commit and pushed in one batch.
    pub batch_max: NonZeroUsize,
    /// Batches queued per peer before new ones are dropped (counted; anti-entropy repairs).
    pub push_queue_max: NonZeroUsize,
    /// Deltas held per unreachable peer.
    pub hints_max: NonZeroUsize,
    /// How long a hint is kept before it is dropped (anti-entropy repairs what it carried).
    pub hint_age_max: Duration,
    /// How often an outbox retries its hints while its peer is unreachable.
    pub hint_retry_interval: Duration,
    /// How often anti-entropy runs with every peer.
    pub anti_entropy_interval: Duration,
    /// Conflict records kept.
    pub conflict_log_max: NonZeroUsize,
}

impl MultiMasterConfig {
    /// LAN profile: 100k keys of up to 1,024 entries, a 16 x 16 x 16 digest (4,096 buckets),
    /// 1,024 queued writes, batches of 256, 64 queued batches and 65,536 hints (at most 3 h,
    /// Cassandra's hint window) per peer, hints retried every second, anti-entropy every 30 s,
    /// 1,024 conflict records.
    pub fn lan(name: impl Into<String>, hlc: HlcConfig) -> Self {
        let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        Self {
            name: name.into(),
            hlc,
            keys_max: nz(100_000),
            value_size_max: nz(1024),
            digest: DigestConfig::LAN,
            write_queue_max: nz(1024),
            batch_max: nz(256),
            push_queue_max: nz(64),
            hints_max: nz(65_536),
            hint_age_max: Duration::from_secs(3 * 3600),
            hint_retry_interval: Duration::from_secs(1),
            anti_entropy_interval: Duration::from_secs(30),
            conflict_log_max: nz(1024),
        }
    }
}

/// What a keyspace reports (for the node status, the API and the metrics adapter).
#[derive(Debug, Clone)]
pub struct KeyspaceStatus {
    /// The keyspace.
    pub name: String,
    /// Keys held.
    pub keys: usize,
    /// Counters and gauges (`hints_pending` is set).
    pub metrics: ReplicationMetrics,
    /// The most recent conflicts, oldest first.
    pub conflicts: Vec<ConflictRecord>,
    /// Conflict records dropped from the bounded log.
    pub conflicts_dropped: u64,
    /// Pushed batches dropped because a peer's queue was full.
    pub pushes_dropped: u64,
    /// Hints dropped (over `hints_max` or older than `hint_age_max`).
    pub hints_dropped: u64,
    /// Incoming merges refused by a limit (the keyspace stays behind on those keys).
    pub merges_refused: u64,
}

/// What a local write may use: this node and a fresh clock reading.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// This node (the writer of dots and counter entries).
    pub node: NodeId,
    /// A timestamp above every one this node issued or observed (for LWW writes).
    pub ts: HlcTimestamp,
}

type WriteFn<V> = Box<dyn FnOnce(&mut V, &WriteCtx) -> Result<V, ReplicationError> + Send>;

enum Cmd<V> {
    Write {
        key: String,
        f: WriteFn<V>,
        reply: oneshot::Sender<Result<V, ReplicationError>>,
    },
    Get {
        key: String,
        reply: oneshot::Sender<Option<V>>,
    },
    Keys {
        reply: oneshot::Sender<Vec<(String, V)>>,
    },
    AntiEntropy {
        reply: oneshot::Sender<()>,
    },
    Status {
        reply: oneshot::Sender<KeyspaceStatus>,
    },
}

/// A handle to a running multi-master keyspace whose keys hold `V`. Cheap to clone.
pub struct Keyspace<V> {
    name: Arc<str>,
    tx: mpsc::Sender<Cmd<V>>,
}

impl<V> Clone for Keyspace<V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Keyspace<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .finish()
    }
}

impl<V: Crdt + Send + Sync + 'static> Keyspace<V> {
    async fn ask<T>(&self, cmd: Cmd<V>, rx: oneshot::Receiver<T>) -> Result<T, ReplicationError> {
        let stopped = || ReplicationError::Stopped(self.name.to_string());
        self.tx.send(cmd).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Applies a local write to `key`: `f` gets the key's current state (bottom if absent) and
    /// a [`WriteCtx`], mutates it with one of the type's mutators and returns the delta. The
    /// write is acknowledged (this returns the new state) once it is durable on this node; it
    /// is then pushed to every peer.
    ///
    /// ```no_run
    /// # async fn demo(ks: quorate_replication::Keyspace<quorate_replication::PnCounter>)
    /// # -> Result<(), quorate_replication::ReplicationError> {
    /// let state = ks.write("hits", |c, ctx| c.increment(&ctx.node, 1)).await?;
    /// assert!(state.value() >= 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// What `f` returned; [`ReplicationError::KeyTooLong`] / [`ReplicationError::TooLarge`]
    /// for a limit (nothing changed); [`ReplicationError::Storage`] when the commit failed
    /// (the keyspace stops); [`ReplicationError::Stopped`].
    pub async fn write<F>(&self, key: &str, f: F) -> Result<V, ReplicationError>
    where
        F: FnOnce(&mut V, &WriteCtx) -> Result<V, ReplicationError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Write {
            key: key.to_owned(),
            f: Box::new(f),
            reply,
        };
        self.ask(cmd, rx).await?
    }

    /// The state of `key` at this replica.
    ///
    /// # Errors
    /// [`ReplicationError::Stopped`].
    pub async fn get(&self, key: &str) -> Result<Option<V>, ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.ask(
            Cmd::Get {
                key: key.to_owned(),
                reply,
            },
            rx,
        )
        .await
    }

    /// Every key and state at this replica, in key order.
    ///
    /// # Errors
    /// [`ReplicationError::Stopped`].
    pub async fn entries(&self) -> Result<Vec<(String, V)>, ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Cmd::Keys { reply }, rx).await
    }

    /// Starts an anti-entropy round with every peer now (returns once it is queued).
    ///
    /// # Errors
    /// [`ReplicationError::Stopped`].
    pub async fn anti_entropy_now(&self) -> Result<(), ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Cmd::AntiEntropy { reply }, rx).await
    }

    /// The keyspace's status.
    ///
    /// # Errors
    /// [`ReplicationError::Stopped`].
    pub async fn status(&self) -> Result<KeyspaceStatus, ReplicationError> {
        let (reply, rx) = oneshot::channel();
        self.ask(Cmd::Status { reply }, rx).await
    }
}

impl<N: Net> ReplicationNode<N> {
    /// Starts multi-master keyspace `config.name` holding `V`: recovers its states and clock
    /// from the database, then serves. `membership` (optional) triggers anti-entropy on
    /// rejoin and heal.
    ///
    /// # Errors
    /// [`ReplicationError::Config`] for a bad name or a name already running;
    /// [`ReplicationError::Storage`] / [`ReplicationError::Decode`] when recovery fails.
    pub fn multi_master<V: Crdt + Send + Sync + 'static>(
        &self,
        config: MultiMasterConfig,
        membership: Option<MembershipEvents>,
    ) -> Result<Keyspace<V>, ReplicationError> {
        if config.name.is_empty() || config.name.len() > 128 {
            return Err(ReplicationError::Config {
                field: "keyspace name length",
                value: config.name.len() as u64,
                fix: "use a name of 1 to 128 bytes",
            });
        }
        let inner = self.inner.clone();
        let digest_bytes = postcard::to_allocvec(&MerkleDigest::build(config.digest, []))
            .map_err(|e| ReplicationError::Encode(e.to_string()))?
            .len();
        let payload_max = inner.config.transport.payload_bytes_max();
        if digest_bytes + ENVELOPE_BYTES > payload_max {
            return Err(ReplicationError::Config {
                field: "digest buckets",
                value: u64::from(config.digest.leaves()),
                fix: "the keyspace's Merkle digest does not fit one frame: use fewer buckets \
                      (fanout ^ depth) or raise frame_bytes_max",
            });
        }
        let (entries, clock) = inner.db.mm_load(&config.name)?;
        let mut store = Store::new(config.keys_max, config.value_size_max);
        for (k, bytes) in entries {
            let v: V = postcard::from_bytes(&bytes).map_err(|e| ReplicationError::Decode {
                keyspace: config.name.clone(),
                detail: e.to_string(),
            })?;
            store.merge(&k, &v)?;
        }
        let node = inner.config.node.clone();
        let hlc = match &clock {
            Some(last) => Hlc::resume(node.clone(), config.hlc, last),
            None => Hlc::new(node.clone(), config.hlc),
        };
        let inbound = inner.register(&config.name)?;
        let (tx, cmds) = mpsc::channel(config.write_queue_max.get());
        let (internal_tx, internal) = mpsc::channel(config.push_queue_max.get());
        let mut outboxes = BTreeMap::new();
        let epoch = Instant::now();
        for (peer, addr) in &inner.config.peers {
            if *peer == node {
                continue;
            }
            let (otx, orx) = mpsc::channel(config.push_queue_max.get());
            let hints = Arc::new(AtomicU64::new(0));
            let oldest = Arc::new(AtomicU64::new(0));
            let dropped = Arc::new(AtomicU64::new(0));
            let outbox = Outbox {
                inner: inner.clone(),
                keyspace: config.name.clone(),
                peer: peer.clone(),
                addr: addr.clone(),
                hints: VecDeque::new(),
                hints_gauge: hints.clone(),
                oldest_hint: oldest.clone(),
                epoch,
                hints_dropped: dropped.clone(),
                hints_max: config.hints_max.get(),
                hint_age_max: config.hint_age_max,
                retry: config.hint_retry_interval,
                back: internal_tx.clone(),
            };
            inner.tracker.spawn(outbox.run(orx));
            outboxes.insert(
                peer.clone(),
                PeerHandle {
                    tx: otx,
                    hints,
                    oldest_hint: oldest,
                    epoch,
                    hints_dropped: dropped,
                },
            );
        }
        let task = Task::<N, V> {
            budget: inner
                .config
                .transport
                .payload_bytes_max()
                .saturating_sub(ENVELOPE_BYTES)
                .max(1),
            inner: inner.clone(),
            store,
            hlc,
            conflicts: ConflictLog::new(config.conflict_log_max),
            metrics: ReplicationMetrics::default(),
            outboxes,
            pushes_dropped: 0,
            merges_refused: 0,
            again: BTreeSet::new(),
            config,
            _v: PhantomData,
        };
        let name: Arc<str> = task.config.name.as_str().into();
        inner
            .tracker
            .spawn(task.run(cmds, inbound, internal, membership));
        Ok(Keyspace { name, tx })
    }
}

struct PeerHandle {
    tx: mpsc::Sender<Outgoing>,
    hints: Arc<AtomicU64>,
    /// When the oldest hint was queued, in milliseconds since `epoch` plus one (0: no hint).
    oldest_hint: Arc<AtomicU64>,
    epoch: Instant,
    hints_dropped: Arc<AtomicU64>,
}

impl PeerHandle {
    /// How long the oldest write this peer has not received yet has waited.
    fn lag(&self, now: Instant) -> Duration {
        match self.oldest_hint.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            at => now
                .duration_since(self.epoch)
                .saturating_sub(Duration::from_millis(at - 1)),
        }
    }
}

enum Outgoing {
    Deltas {
        clock: HlcTimestamp,
        batch: Vec<EncodedEntry>,
    },
    Digest {
        clock: HlcTimestamp,
        digest: MerkleDigest,
    },
    Repair {
        clock: HlcTimestamp,
        entries: Vec<EncodedEntry>,
    },
}

/// What an outbox reports back to its keyspace task.
enum Back {
    DigestDiff {
        peer: NodeId,
        clock: HlcTimestamp,
        buckets: Vec<u32>,
        entries: Vec<EncodedEntry>,
        truncated: bool,
        bytes: u64,
    },
    ClockAlarm,
}

struct Task<N: Net, V> {
    inner: Arc<NodeInner<N>>,
    config: MultiMasterConfig,
    store: Store<V>,
    hlc: Hlc,
    conflicts: ConflictLog,
    metrics: ReplicationMetrics,
    outboxes: BTreeMap<NodeId, PeerHandle>,
    pushes_dropped: u64,
    merges_refused: u64,
    /// Peers to run anti-entropy with again at once (a side truncated its answer).
    again: BTreeSet<NodeId>,
    budget: usize,
    _v: PhantomData<fn() -> V>,
}

impl<N: Net, V: Crdt + Send + Sync + 'static> Task<N, V> {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd<V>>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut internal: mpsc::Receiver<Back>,
        membership: Option<MembershipEvents>,
    ) {
        let cancel = self.inner.cancel.clone();
        let mut tick = tokio::time::interval_at(
            Instant::now() + self.config.anti_entropy_interval,
            self.config.anti_entropy_interval,
        );
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (mtx, mut mrx) = mpsc::channel::<MembershipEvent>(16);
        if let Some(mut events) = membership {
            let cancel = cancel.clone();
            self.inner.tracker.spawn(async move {
                loop {
                    let ev = tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        ev = events.recv() => ev,
                    };
                    match ev {
                        Ok(ev) => {
                            if mtx.send(ev).await.is_err() {
                                return;
                            }
                        }
                        // Lagged: we missed events; a full anti-entropy covers them.
                        Err(quorate_membership_api::EventsError::Lagged(_)) => {
                            let heal = MembershipEvent::SplitBrainChanged(
                                quorate_membership_api::SplitBrainStatus::NotConfigured,
                            );
                            if mtx.send(heal).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
        loop {
            let r = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                Some(inb) = inbound.recv() => {
                    let resp = self.handle_inbound(inb.req);
                    let _ = inb.reply.send(resp);
                    Ok(())
                }
                Some(back) = internal.recv() => self.handle_back(back),
                Some(cmd) = cmds.recv() => self.handle_cmd(cmd, &mut cmds),
                Some(ev) = mrx.recv() => {
                    self.membership_event(ev);
                    Ok(())
                }
                _ = tick.tick() => self.anti_entropy(None),
            };
            if let Err(e) = r {
                tracing::error!(keyspace = %self.config.name, error = %e, "replication keyspace stopped");
                return;
            }
            if !self.again.is_empty() {
                let peers = std::mem::take(&mut self.again);
                for p in peers {
                    if let Err(e) = self.anti_entropy(Some(&p)) {
                        tracing::error!(keyspace = %self.config.name, error = %e, "replication keyspace stopped");
                        return;
                    }
                }
            }
        }
    }

    fn membership_event(&mut self, ev: MembershipEvent) {
        let r = match ev {
            MembershipEvent::MemberUp(m) | MembershipEvent::MemberAlive(m) => {
                if self.outboxes.contains_key(&m.id) {
                    self.anti_entropy(Some(&m.id))
                } else {
                    Ok(())
                }
            }
            MembershipEvent::QuorumChanged(_) | MembershipEvent::SplitBrainChanged(_) => {
                self.anti_entropy(None)
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(keyspace = %self.config.name, error = %e, "anti-entropy not started");
        }
    }

    fn physical(&self) -> u64 {
        self.inner.now_ms()
    }

    fn encode(&self, v: &V) -> Result<Vec<u8>, ReplicationError> {
        postcard::to_allocvec(v).map_err(|e| ReplicationError::Encode(e.to_string()))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, ReplicationError> {
        postcard::from_bytes(bytes).map_err(|e| ReplicationError::Decode {
            keyspace: self.config.name.clone(),
            detail: e.to_string(),
        })
    }

    fn record(&mut self, conflict: Option<ConflictRecord>) {
        if let Some(c) = conflict {
            self.metrics.record_conflict(&c);
            self.conflicts.push(c);
        }
    }

    /// Persists the states of `keys` and the clock (one durable commit). An error is fatal.
    fn persist(&self, keys: &BTreeSet<String>) -> Result<(), ReplicationError> {
        let mut rows = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.store.get(k) {
                rows.push((k.clone(), self.encode(v)?));
            }
        }
        self.inner
            .db
            .mm_commit(&self.config.name, &rows, &self.hlc.last())
    }

    fn handle_cmd(
        &mut self,
        first: Cmd<V>,
        cmds: &mut mpsc::Receiver<Cmd<V>>,
    ) -> Result<(), ReplicationError> {
        let mut writes = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write { key, f, reply } => writes.push((key, f, reply)),
                Cmd::Get { key, reply } => {
                    let _ = reply.send(self.store.get(&key).cloned());
                }
                Cmd::Keys { reply } => {
                    let _ = reply.send(
                        self.store
                            .iter()
                            .map(|(k, v)| (k.to_owned(), v.clone()))
                            .collect(),
                    );
                }
                Cmd::AntiEntropy { reply } => {
                    self.anti_entropy(None)?;
                    let _ = reply.send(());
                }
                Cmd::Status { reply } => {
                    let _ = reply.send(self.status());
                }
            }
            if writes.len() < self.config.batch_max.get() {
                next = cmds.try_recv().ok();
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let mut changed = BTreeSet::new();
        let mut batch: Vec<EncodedEntry> = Vec::new();
        let mut acks = Vec::new();
        for (key, f, reply) in writes {
            match self.apply_local(&key, f) {
                Ok((delta, bytes)) => {
                    changed.insert(key.clone());
                    batch.push((key.clone(), bytes));
                    acks.push((key, reply));
                    drop(delta);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if let Err(e) = self.persist(&changed) {
            for (_, reply) in acks {
                let _ = reply.send(Err(e.clone()));
            }
            return Err(e);
        }
        for (key, reply) in acks {
            let state = self.store.get(&key).cloned().unwrap_or_else(V::bottom);
            let _ = reply.send(Ok(state));
        }
        self.metrics.local_writes = self.metrics.local_writes.saturating_add(batch.len() as u64);
        let clock = self.hlc.last();
        for chunk in chunk_by_bytes(batch, self.budget) {
            self.push(Outgoing::Deltas {
                clock: clock.clone(),
                batch: chunk,
            });
        }
        Ok(())
    }

    /// Runs a local write against the key's state; returns the delta and its encoding.
    fn apply_local(&mut self, key: &str, f: WriteFn<V>) -> Result<(V, Vec<u8>), ReplicationError> {
        let ts = self.hlc.now(self.physical());
        let ctx = WriteCtx {
            node: self.inner.config.node.clone(),
            ts,
        };
        let mut scratch = self.store.get(key).cloned().unwrap_or_else(V::bottom);
        let delta = f(&mut scratch, &ctx)?;
        let bytes = self.encode(&delta)?;
        if bytes.len() + key.len() > self.budget {
            return Err(ReplicationError::TooLarge {
                what: "encoded delta bytes",
                len: bytes.len() + key.len(),
                max: self.budget,
            });
        }
        let out = self.store.merge(key, &delta)?;
        self.record(out.conflict);
        Ok((delta, bytes))
    }

    fn push(&mut self, msg: Outgoing) {
        let mut sent = false;
        for h in self.outboxes.values() {
            let m = match &msg {
                Outgoing::Deltas { clock, batch } => Outgoing::Deltas {
                    clock: clock.clone(),
                    batch: batch.clone(),
                },
                Outgoing::Digest { clock, digest } => Outgoing::Digest {
                    clock: clock.clone(),
                    digest: digest.clone(),
                },
                Outgoing::Repair { clock, entries } => Outgoing::Repair {
                    clock: clock.clone(),
                    entries: entries.clone(),
                },
            };
            if h.tx.try_send(m).is_err() {
                self.pushes_dropped = self.pushes_dropped.saturating_add(1);
            } else {
                sent = true;
            }
        }
        if sent && let Outgoing::Deltas { batch, .. } = &msg {
            self.metrics.deltas_sent = self.metrics.deltas_sent.saturating_add(batch.len() as u64);
        }
    }

    /// Merges encoded states from `from` (checked against the clock bound first). Returns the
    /// keys that changed; a limit refusal skips the key and is counted.
    fn merge_remote(
        &mut self,
        clock: &HlcTimestamp,
        entries: &[EncodedEntry],
    ) -> Result<Result<BTreeSet<String>, Refusal>, ReplicationError> {
        let phys = self.physical();
        if let Err(ReplicationError::ClockAhead { ahead_ms, .. }) = self.hlc.observe(clock, phys) {
            self.metrics.clock_alarms = self.metrics.clock_alarms.saturating_add(1);
            tracing::warn!(keyspace = %self.config.name, peer = %clock.node, ahead_ms,
                "replication: a peer's clock is beyond the bound; its update was rejected");
            return Ok(Err(Refusal::ClockAhead { ahead_ms }));
        }
        let mut decoded = Vec::with_capacity(entries.len());
        for (k, bytes) in entries {
            match self.decode(bytes) {
                Ok(v) => decoded.push((k, v)),
                Err(e) => return Ok(Err(Refusal::Invalid(e.to_string()))),
            }
        }
        let mut changed = BTreeSet::new();
        for (k, v) in decoded {
            match self.store.merge(k, &v) {
                Ok(out) => {
                    if out.changed {
                        changed.insert(k.clone());
                    }
                    self.record(out.conflict);
                }
                Err(e) => {
                    self.merges_refused = self.merges_refused.saturating_add(1);
                    tracing::warn!(keyspace = %self.config.name, key = %k, error = %e,
                        "replication: an incoming merge was refused by a limit");
                }
            }
        }
        self.metrics.deltas_merged = self
            .metrics
            .deltas_merged
            .saturating_add(entries.len() as u64);
        self.persist(&changed)?;
        Ok(Ok(changed))
    }

    fn handle_inbound(&mut self, req: Request) -> Response {
        match self.try_inbound(req) {
            Ok(r) => r,
            Err(e) => {
                // A storage failure: refuse; the run loop notices on the next local commit.
                tracing::error!(keyspace = %self.config.name, error = %e, "replication: inbound request failed");
                Response::Refused(Refusal::Invalid(e.to_string()))
            }
        }
    }

    fn try_inbound(&mut self, req: Request) -> Result<Response, ReplicationError> {
        match req {
            Request::Deltas { clock, batch, .. } => {
                Ok(match self.merge_remote(&clock, &batch)? {
                    Ok(_) => Response::Ack,
                    Err(r) => Response::Refused(r),
                })
            }
            Request::Repair { clock, entries, .. } => {
                Ok(match self.merge_remote(&clock, &entries)? {
                    Ok(changed) => {
                        self.metrics.keys_repaired = self
                            .metrics
                            .keys_repaired
                            .saturating_add(changed.len() as u64);
                        Response::Ack
                    }
                    Err(r) => Response::Refused(r),
                })
            }
            Request::Digest { clock, digest, .. } => {
                let phys = self.physical();
                if let Err(ReplicationError::ClockAhead { ahead_ms, .. }) =
                    self.hlc.observe(&clock, phys)
                {
                    self.metrics.clock_alarms = self.metrics.clock_alarms.saturating_add(1);
                    return Ok(Response::Refused(Refusal::ClockAhead { ahead_ms }));
                }
                let ours = self.store.digest(self.config.digest)?;
                let buckets = match ours.diff(&digest) {
                    Ok(b) => b,
                    Err(e) => return Ok(Response::Refused(Refusal::Invalid(e.to_string()))),
                };
                let (entries, truncated) = self.entries_for(&buckets, &BTreeMap::new())?;
                let bytes = entries
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
                self.metrics.anti_entropy_bytes =
                    self.metrics.anti_entropy_bytes.saturating_add(bytes as u64);
                Ok(Response::DigestDiff {
                    clock: self.hlc.last(),
                    buckets,
                    entries,
                    truncated,
                })
            }
            Request::Append { .. } => Ok(Response::Refused(Refusal::Invalid(
                "an Append was sent to a multi-master keyspace: declare the keyspace with the \
                 same mode on every node"
                    .to_owned(),
            ))),
        }
    }

    /// Our encoded states in `buckets`, whole buckets first (in bucket order, so that each
    /// round completes some buckets and the next digest no longer lists them), at most one
    /// frame's worth; `known` holds the peer's states, which are not sent back when equal.
    fn entries_for(
        &self,
        buckets: &[u32],
        known: &BTreeMap<&str, &[u8]>,
    ) -> Result<(Vec<EncodedEntry>, bool), ReplicationError> {
        let mut all = self.store.entries_in_buckets(self.config.digest, buckets);
        all.sort_by_cached_key(|(k, _)| (self.config.digest.bucket_of(k), k.clone()));
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut truncated = false;
        for (k, v) in all {
            let bytes = self.encode(&v)?;
            if known
                .get(k.as_str())
                .is_some_and(|b| *b == bytes.as_slice())
            {
                continue;
            }
            let cost = k.len() + bytes.len() + 8;
            if used + cost > self.budget {
                truncated = true;
                break;
            }
            used += cost;
            out.push((k, bytes));
        }
        Ok((out, truncated))
    }

    fn handle_back(&mut self, back: Back) -> Result<(), ReplicationError> {
        match back {
            Back::ClockAlarm => {
                self.metrics.clock_alarms = self.metrics.clock_alarms.saturating_add(1);
                Ok(())
            }
            Back::DigestDiff {
                peer,
                clock,
                buckets,
                entries,
                truncated,
                bytes,
            } => {
                self.metrics.anti_entropy_bytes =
                    self.metrics.anti_entropy_bytes.saturating_add(bytes);
                if let Ok(changed) = self.merge_remote(&clock, &entries)? {
                    self.metrics.keys_repaired = self
                        .metrics
                        .keys_repaired
                        .saturating_add(changed.len() as u64);
                }
                if buckets.is_empty() {
                    return Ok(());
                }
                let known: BTreeMap<&str, &[u8]> = entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                let (ours, our_truncated) = self.entries_for(&buckets, &known)?;
                if !ours.is_empty()
                    && let Some(h) = self.outboxes.get(&peer)
                {
                    let bytes = ours.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                    self.metrics.anti_entropy_bytes =
                        self.metrics.anti_entropy_bytes.saturating_add(bytes as u64);
                    if h.tx
                        .try_send(Outgoing::Repair {
                            clock: self.hlc.last(),
                            entries: ours,
                        })
                        .is_err()
                    {
                        self.pushes_dropped = self.pushes_dropped.saturating_add(1);
                    }
                }
                if truncated || our_truncated {
                    self.again.insert(peer);
                }
                Ok(())
            }
        }
    }

    /// Starts a round with `peer`, or with every peer.
    fn anti_entropy(&mut self, peer: Option<&NodeId>) -> Result<(), ReplicationError> {
        let digest = self.store.digest(self.config.digest)?;
        let clock = self.hlc.last();
        for (p, h) in &self.outboxes {
            if peer.is_some_and(|want| want != p) {
                continue;
            }
            self.metrics.anti_entropy_rounds = self.metrics.anti_entropy_rounds.saturating_add(1);
            let msg = Outgoing::Digest {
                clock: clock.clone(),
                digest: digest.clone(),
            };
            if h.tx.try_send(msg).is_err() {
                self.pushes_dropped = self.pushes_dropped.saturating_add(1);
            }
        }
        Ok(())
    }

    fn status(&self) -> KeyspaceStatus {
        let mut metrics = self.metrics.clone();
        metrics.hints_pending = self
            .outboxes
            .values()
            .map(|h| h.hints.load(Ordering::Relaxed))
            .sum();
        let now = Instant::now();
        metrics.lag_ms = self
            .outboxes
            .values()
            .map(|h| u64::try_from(h.lag(now).as_millis()).unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0);
        KeyspaceStatus {
            name: self.config.name.clone(),
            keys: self.store.len(),
            metrics,
            conflicts: self.conflicts.entries().cloned().collect(),
            conflicts_dropped: self.conflicts.dropped(),
            pushes_dropped: self.pushes_dropped,
            hints_dropped: self
                .outboxes
                .values()
                .map(|h| h.hints_dropped.load(Ordering::Relaxed))
                .sum(),
            merges_refused: self.merges_refused,
        }
    }
}

/// Splits entries into batches whose keys and values fit `budget` bytes.
fn chunk_by_bytes(entries: Vec<EncodedEntry>, budget: usize) -> Vec<Vec<EncodedEntry>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0usize;
    for e in entries {
        let cost = e.0.len() + e.1.len() + 8;
        if !cur.is_empty() && used + cost > budget {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        used += cost;
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The sender to one peer for one keyspace, with its hints.
struct Outbox<N: Net> {
    inner: Arc<NodeInner<N>>,
    keyspace: String,
    peer: NodeId,
    addr: String,
    /// Deltas not delivered yet, oldest first, with when they were queued.
    hints: VecDeque<(Instant, HlcTimestamp, EncodedEntry)>,
    hints_gauge: Arc<AtomicU64>,
    oldest_hint: Arc<AtomicU64>,
    epoch: Instant,
    hints_dropped: Arc<AtomicU64>,
    hints_max: usize,
    hint_age_max: Duration,
    retry: Duration,
    back: mpsc::Sender<Back>,
}

impl<N: Net> Outbox<N> {
    async fn run(mut self, mut rx: mpsc::Receiver<Outgoing>) {
        let cancel = self.inner.cancel.clone();
        let mut retry = tokio::time::interval(self.retry);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                msg = rx.recv() => match msg {
                    None => return,
                    Some(m) => self.send(m).await,
                },
                _ = retry.tick(), if !self.hints.is_empty() => {
                    self.flush_hints().await;
                }
            }
        }
    }

    fn request(&self, m: Outgoing) -> Request {
        let from = self.inner.config.node.to_string();
        let keyspace = self.keyspace.clone();
        match m {
            Outgoing::Deltas { clock, batch } => Request::Deltas {
                keyspace,
                from,
                clock,
                batch,
            },
            Outgoing::Digest { clock, digest } => Request::Digest {
                keyspace,
                from,
                clock,
                digest,
            },
            Outgoing::Repair { clock, entries } => Request::Repair {
                keyspace,
                from,
                clock,
                entries,
            },
        }
    }

    async fn call(&self, req: &Request) -> Result<Response, ReplicationError> {
        self.inner.transport.call(&self.addr, req).await
    }

    async fn send(&mut self, m: Outgoing) {
        match m {
            Outgoing::Deltas { clock, batch } => {
                if !self.hints.is_empty() {
                    // Keep order: queue behind the hints, then try to deliver them all.
                    self.hint(&clock, batch);
                    self.flush_hints().await;
                    return;
                }
                let req = self.request(Outgoing::Deltas {
                    clock: clock.clone(),
                    batch: batch.clone(),
                });
                match self.call(&req).await {
                    Ok(Response::Ack) => {}
                    Ok(Response::Refused(Refusal::ClockAhead { .. })) => {
                        let _ = self.back.try_send(Back::ClockAlarm);
                        self.hint(&clock, batch);
                    }
                    Ok(_) | Err(_) => self.hint(&clock, batch),
                }
            }
            Outgoing::Digest { clock, digest } => {
                let req = self.request(Outgoing::Digest { clock, digest });
                let bytes = postcard::to_allocvec(&req).map(|b| b.len()).unwrap_or(0) as u64;
                match self.call(&req).await {
                    Ok(Response::DigestDiff {
                        clock,
                        buckets,
                        entries,
                        truncated,
                    }) => {
                        // The peer answers: deliver what it missed while down first.
                        self.flush_hints().await;
                        let _ = self
                            .back
                            .send(Back::DigestDiff {
                                peer: self.peer.clone(),
                                clock,
                                buckets,
                                entries,
                                truncated,
                                bytes,
                            })
                            .await;
                    }
                    Ok(other) => {
                        tracing::debug!(peer = %self.peer, response = ?other, "anti-entropy refused");
                    }
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "anti-entropy failed");
                    }
                }
            }
            Outgoing::Repair { clock, entries } => {
                let req = self.request(Outgoing::Repair { clock, entries });
                if let Err(e) = self.call(&req).await {
                    tracing::debug!(peer = %self.peer, error = %e, "anti-entropy repair failed");
                }
            }
        }
    }

    fn hint(&mut self, clock: &HlcTimestamp, batch: Vec<EncodedEntry>) {
        let now = Instant::now();
        for e in batch {
            if self.hints.len() >= self.hints_max {
                self.hints.pop_front();
                self.hints_dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.hints.push_back((now, clock.clone(), e));
        }
        self.publish_hints();
    }

    /// Publishes the hint count and the oldest hint's age for `status`.
    fn publish_hints(&self) {
        self.hints_gauge
            .store(self.hints.len() as u64, Ordering::Relaxed);
        let oldest = self.hints.front().map_or(0, |(at, _, _)| {
            u64::try_from(at.duration_since(self.epoch).as_millis())
                .unwrap_or(u64::MAX - 1)
                .saturating_add(1)
        });
        self.oldest_hint.store(oldest, Ordering::Relaxed);
    }

    /// Delivers hints in frame-sized batches, oldest first; stops at the first failure.
    async fn flush_hints(&mut self) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.hints.front() {
            if now.duration_since(*at) > self.hint_age_max {
                self.hints.pop_front();
                self.hints_dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                break;
            }
        }
        let budget = self
            .inner
            .config
            .transport
            .payload_bytes_max()
            .saturating_sub(ENVELOPE_BYTES)
            .max(1);
        while !self.hints.is_empty() {
            // A batch carries the newest clock of its hints: every hinted timestamp is at or
            // below the clock of the push that carried it.
            let mut batch = Vec::new();
            let mut clock: Option<HlcTimestamp> = None;
            let mut used = 0usize;
            for (_, c, (k, v)) in self.hints.iter() {
                let cost = k.len() + v.len() + 8;
                if !batch.is_empty() && used + cost > budget {
                    break;
                }
                used += cost;
                batch.push((k.clone(), v.clone()));
                if clock.as_ref().is_none_or(|m| c > m) {
                    clock = Some(c.clone());
                }
            }
            let Some(clock) = clock else { break };
            let n = batch.len();
            let req = self.request(Outgoing::Deltas { clock, batch });
            match self.call(&req).await {
                Ok(Response::Ack) => {
                    self.hints.drain(..n);
                }
                _ => break,
            }
        }
        self.publish_hints();
    }
}
