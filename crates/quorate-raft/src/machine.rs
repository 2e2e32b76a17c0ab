//! The replicated state machine: key-value store with revisions, leases, lock and election
//! queues, and a bounded history of watch events. Deterministic: the same commands at the same
//! indexes give the same state on every node.
// tidy:pure-core

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use quorate_coord_api::{
    Compare, CompareOp, CompareTarget, CoordError, DeleteResponse, EventKind, KeyValue, LeaseId,
    PutResponse, Revision, Txn, TxnOp, TxnOpResult, TxnResponse, WatchEvent,
};
use quorate_types::FencingToken;
use serde::{Deserialize, Serialize};

/// Everything the leader proposes. Each command is applied at the log index of its entry;
/// that index is the revision of every change it makes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Write a key, attached to `lease` if given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// A compare-and-set transaction.
    Txn(Txn),
    /// Grant a lease. `id: None` lets the machine use the entry's index as the id.
    LeaseGrant {
        /// The id asked for (rejected if in use).
        id: Option<LeaseId>,
        /// Time to live, in milliseconds.
        ttl_ms: u64,
    },
    /// Renew a lease (its renew index becomes this entry's index).
    LeaseKeepAlive {
        /// The lease.
        id: LeaseId,
    },
    /// End a lease at a client's request.
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// End leases whose time ran out. Proposed by the leader only (from its `LeaseClock`).
    /// Each lease is ended only if its renew index still equals the one the leader judged,
    /// so a renew that commits in between wins.
    LeaseExpire {
        /// (lease, renew index the decision was based on).
        leases: Vec<(LeaseId, u64)>,
    },
    /// Join the queue of lock `name` with `lease` (idempotent per name and lease).
    Lock {
        /// The lock name.
        name: String,
        /// The lease holding the place.
        lease: LeaseId,
    },
    /// Leave a lock queue (release if holding). Only acts if `key` still has
    /// `create_revision`.
    Unlock {
        /// The lock key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
    },
    /// Join the queue of election `election` with `value` (idempotent per election and
    /// lease; again with a new value updates it).
    Campaign {
        /// The election name.
        election: String,
        /// The candidate's value.
        value: Vec<u8>,
        /// The lease holding the place.
        lease: LeaseId,
    },
    /// Change the leader's value; rejected unless `key` (with `create_revision`) leads.
    Proclaim {
        /// The leader key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
        /// The new value.
        value: Vec<u8>,
    },
    /// Leave an election (step down if leading). Only acts if `key` still has
    /// `create_revision`.
    Resign {
        /// The candidate key.
        key: String,
        /// Its create revision.
        create_revision: Revision,
    },
}

/// A place in a lock or election queue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueuePosition {
    /// The queue key of this holder.
    pub key: String,
    /// The lease it is attached to.
    pub lease: LeaseId,
    /// Revision at which the key was created (its place in the queue).
    pub create_revision: Revision,
    /// `Some(token)` if this key holds the lock / leads: the revision of the grant.
    pub token: Option<FencingToken>,
    /// When waiting: the key directly ahead in the queue (wait for its deletion).
    pub ahead: Option<String>,
}

/// What applying a command did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command was rejected; nothing changed.
    Rejected(CoordError),
    /// Result of `Put`.
    Put(PutResponse),
    /// Result of `Delete`.
    Delete(DeleteResponse),
    /// Result of `Txn`.
    Txn(TxnResponse),
    /// Result of `LeaseGrant` and `LeaseKeepAlive`.
    Lease {
        /// The lease.
        id: LeaseId,
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
    /// Result of `LeaseRevoke` and `LeaseExpire`: the leases that ended and how many keys
    /// went with them.
    LeasesEnded {
        /// The leases ended by this command (for `LeaseExpire`, those whose renew index still
        /// matched).
        ids: Vec<LeaseId>,
        /// Keys deleted with them.
        keys_deleted: u64,
    },
    /// Result of `Lock` and `Campaign`: the place in the queue.
    Queued(QueuePosition),
    /// Result of `Unlock`, `Proclaim`, `Resign`: applied at this revision (`changed` = false
    /// when the key was already gone, for `Unlock`/`Resign`).
    Done {
        /// The revision of the entry.
        revision: Revision,
        /// Whether anything changed.
        changed: bool,
    },
}

/// Limits of the machine. Part of the replicated configuration: every node must use the same
/// values (they decide which commands are rejected).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MachineLimits {
    /// The longest key, in bytes.
    pub key_bytes_max: usize,
    /// The largest value, in bytes.
    pub value_bytes_max: usize,
    /// The most keys stored (lock and election keys included).
    pub keys_max: u64,
    /// The most live leases.
    pub leases_max: u64,
    /// The most compares plus operations in one transaction.
    pub txn_ops_max: usize,
    /// The most keys one range read returns.
    pub range_keys_max: usize,
    /// The most watch events kept for watchers to resume from.
    pub history_events_max: u64,
    /// The shortest lease TTL, in milliseconds.
    pub lease_ttl_min_ms: u64,
    /// The longest lease TTL, in milliseconds.
    pub lease_ttl_max_ms: u64,
    /// The most bytes of keys and values stored (etcd's `--quota-backend-bytes`). A write of a
    /// user key that would grow the store past it is refused with `ResourceExhausted` (etcd's
    /// NOSPACE); reads, deletes and writes that do not grow the store still work, and so do the
    /// store's own keys (locks, elections, role leases), so that a full store never blocks a
    /// failover.
    pub store_bytes_max: u64,
}

impl MachineLimits {
    /// Limits for a LAN cluster: 1.5 MiB values (etcd's request limit), 1 KiB keys,
    /// 1,000,000 keys, 100,000 leases, 128 txn operations (etcd), 10,000 keys per range,
    /// 10,000 events of history, lease TTL 2 s (etcd's floor) to 1 day, 2 GiB of keys and
    /// values (etcd's default quota).
    pub fn lan() -> MachineLimits {
        MachineLimits {
            key_bytes_max: 1024,
            value_bytes_max: 1536 * 1024,
            keys_max: 1_000_000,
            leases_max: 100_000,
            txn_ops_max: 128,
            range_keys_max: 10_000,
            history_events_max: 10_000,
            lease_ttl_min_ms: 2_000,
            lease_ttl_max_ms: 86_400_000,
            store_bytes_max: 2 << 30,
        }
    }
}

/// A live lease as stored in the machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// Time to live, in milliseconds.
    pub ttl_ms: u64,
    /// Index of the entry that granted or last renewed it.
    pub renewed_at: u64,
    /// Keys attached to it.
    pub keys: BTreeSet<String>,
}

/// The replicated state machine. See the module docs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    limits: MachineLimits,
    /// Index of the last applied entry (the current revision).
    revision: u64,
    kv: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, LeaseState>,
    /// Queue key -> revision at which it became the head (its fencing token).
    grants: BTreeMap<String, u64>,
    /// Recently ended leases (bounded), to tell "expired" from "not found".
    ended: VecDeque<(LeaseId, bool)>,
    /// Watch history: every event with revision > `compacted`.
    history: VecDeque<WatchEvent>,
    compacted: u64,
    /// Bytes of keys and values stored (derived from `kv`: not in snapshots, recomputed).
    #[serde(skip)]
    bytes: u64,
}

/// The machine as snapshots before `store_bytes_max` encoded it (no format prefix): read so
/// that a data dir written by the previous version still starts.
#[derive(Deserialize)]
struct MachineV1 {
    limits: MachineLimitsV1,
    revision: u64,
    kv: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, LeaseState>,
    grants: BTreeMap<String, u64>,
    ended: VecDeque<(LeaseId, bool)>,
    history: VecDeque<WatchEvent>,
    compacted: u64,
}

/// [`MachineLimits`] before `store_bytes_max`.
#[derive(Deserialize)]
struct MachineLimitsV1 {
    key_bytes_max: usize,
    value_bytes_max: usize,
    keys_max: u64,
    leases_max: u64,
    txn_ops_max: usize,
    range_keys_max: usize,
    history_events_max: u64,
    lease_ttl_min_ms: u64,
    lease_ttl_max_ms: u64,
}

/// The first bytes of a snapshot in the current format (older snapshots have no prefix; their
/// first byte is the varint of `key_bytes_max`, never this sequence for any limit in use).
const SNAPSHOT_V2: &[u8; 4] = b"QSM\x02";

/// Bytes one key-value pair counts against `store_bytes_max`.
fn stored_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() as u64).saturating_add(value.len() as u64)
}

/// Prefix of every key the machine reserves for itself; clients may read and watch these keys
/// but not write them.
pub const RESERVED_PREFIX: &str = "__quorate/";
/// Prefix of lock queue keys: `__quorate/lock/<name>/<lease as 16 hex digits>`.
pub const LOCK_PREFIX: &str = "__quorate/lock/";
/// Prefix of election queue keys: `__quorate/election/<name>/<lease as 16 hex digits>`.
pub const ELECTION_PREFIX: &str = "__quorate/election/";
/// How many ended leases the machine remembers, to answer `LeaseExpired` rather than
/// `LeaseNotFound` for a recently expired lease.
const ENDED_LEASES_KEPT: usize = 1024;
/// The longest lock or election name, in bytes.
pub const QUEUE_NAME_BYTES_MAX: usize = 256;

/// The key of `lease`'s place in the queue `name` under `prefix` (`LOCK_PREFIX` or
/// `ELECTION_PREFIX`).
pub fn queue_key(prefix: &str, name: &str, lease: LeaseId) -> String {
    format!("{prefix}{name}/{:016x}", lease.0)
}

/// The queue prefix (`<prefix><name>/`) a queue key belongs to, if `key` is a queue key.
fn queue_of(key: &str) -> Option<&str> {
    if !(key.starts_with(LOCK_PREFIX) || key.starts_with(ELECTION_PREFIX)) {
        return None;
    }
    let (queue, lease) = key.rsplit_once('/')?;
    (lease.len() == 16 && lease.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| &key[..queue.len() + 1])
}

/// Whether `key` is a member of the queue with prefix `queue` (not of a deeper name).
fn in_queue(queue: &str, key: &str) -> bool {
    key.strip_prefix(queue)
        .is_some_and(|rest| rest.len() == 16 && !rest.contains('/'))
}

/// Working state of one `apply`.
struct Step {
    rev: u64,
    events: Vec<WatchEvent>,
    /// Queues whose membership changed and whose head must be re-evaluated.
    touched: BTreeSet<String>,
}

fn deleted_event(key: &str, rev: u64) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: Revision(0),
            mod_revision: Revision(rev),
            version: 0,
            lease: None,
        },
    }
}

fn cmp_holds<T: Ord + ?Sized>(stored: &T, op: CompareOp, given: &T) -> bool {
    match op {
        CompareOp::Equal => stored == given,
        CompareOp::NotEqual => stored != given,
        CompareOp::Less => stored < given,
        CompareOp::Greater => stored > given,
    }
}

impl Machine {
    /// An empty machine at revision 0.
    pub fn new(limits: MachineLimits) -> Machine {
        Machine {
            limits,
            revision: 0,
            kv: BTreeMap::new(),
            leases: BTreeMap::new(),
            grants: BTreeMap::new(),
            ended: VecDeque::new(),
            history: VecDeque::new(),
            compacted: 0,
            bytes: 0,
        }
    }

    /// Bytes of keys and values stored now (counted against `store_bytes_max`).
    pub fn stored_bytes(&self) -> u64 {
        self.bytes
    }

    /// The limits this machine enforces.
    pub fn limits(&self) -> &MachineLimits {
        &self.limits
    }

    /// The current revision: the index of the last applied entry.
    pub fn revision(&self) -> Revision {
        Revision(self.revision)
    }

    /// Events up to and including this revision are no longer in the watch history.
    pub fn compacted(&self) -> Revision {
        Revision(self.compacted)
    }

    /// Records that a log entry without a command (blank, membership) at `index` was applied,
    /// so that [`Machine::revision`] stays the last applied index. Ignores stale indexes.
    pub fn skip(&mut self, index: u64) {
        self.revision = self.revision.max(index);
    }

    /// Serializes the whole machine (postcard) for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        // Serializing plain maps, strings and integers into a Vec cannot fail.
        let mut out = SNAPSHOT_V2.to_vec();
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// Rebuilds a machine from [`Machine::snapshot`] bytes. Fails on bytes that do not decode.
    pub fn restore(bytes: &[u8]) -> Result<Machine, CoordError> {
        let bad = |e: postcard::Error| CoordError::Internal {
            reason: format!(
                "state machine snapshot does not decode ({e}): the snapshot is corrupt or from an incompatible version"
            ),
        };
        let mut machine: Machine = match bytes.strip_prefix(SNAPSHOT_V2.as_slice()) {
            Some(v2) => postcard::from_bytes(v2).map_err(bad)?,
            None => {
                let v1: MachineV1 = postcard::from_bytes(bytes).map_err(bad)?;
                let l = v1.limits;
                Machine {
                    limits: MachineLimits {
                        key_bytes_max: l.key_bytes_max,
                        value_bytes_max: l.value_bytes_max,
                        keys_max: l.keys_max,
                        leases_max: l.leases_max,
                        txn_ops_max: l.txn_ops_max,
                        range_keys_max: l.range_keys_max,
                        history_events_max: l.history_events_max,
                        lease_ttl_min_ms: l.lease_ttl_min_ms,
                        lease_ttl_max_ms: l.lease_ttl_max_ms,
                        store_bytes_max: MachineLimits::lan().store_bytes_max,
                    },
                    revision: v1.revision,
                    kv: v1.kv,
                    leases: v1.leases,
                    grants: v1.grants,
                    ended: v1.ended,
                    history: v1.history,
                    compacted: v1.compacted,
                    bytes: 0,
                }
            }
        };
        machine.bytes = machine
            .kv
            .values()
            .map(|kv| stored_bytes(&kv.key, &kv.value))
            .fold(0, u64::saturating_add);
        // A snapshot comes from disk or from the leader: check it whole instead of trusting it
        // (the per-apply checks below are debug assertions and look only at what changed).
        if let Some(v) = machine.invariant_violation() {
            return Err(CoordError::Internal {
                reason: format!(
                    "state machine snapshot breaks an invariant ({v}): the snapshot is corrupt"
                ),
            });
        }
        Ok(machine)
    }

    /// The first broken structural invariant of the whole machine, if any: bounds, every key
    /// (see [`Machine::key_violation`]), every lease's keys, history order.
    fn invariant_violation(&self) -> Option<String> {
        self.bounds_violation()
            .or_else(|| self.kv.keys().find_map(|k| self.key_violation(k)))
            .or_else(|| {
                self.leases.iter().find_map(|(id, lease)| {
                    lease.keys.iter().find_map(|k| {
                        (self.kv.get(k).and_then(|kv| kv.lease) != Some(*id))
                            .then(|| format!("{id} lists key {k:?}, which is not attached to it"))
                    })
                })
            })
            .or_else(|| {
                self.grants
                    .keys()
                    .find(|k| !self.kv.contains_key(*k))
                    .map(|k| format!("grant for missing key {k:?}"))
            })
            .or_else(|| {
                let mut prev = self.compacted;
                self.history.iter().find_map(|e| {
                    let rev = e.kv.mod_revision.0;
                    let bad = rev <= self.compacted || rev < prev || rev > self.revision;
                    prev = rev;
                    bad.then(|| {
                        format!(
                            "history event at revision {rev} is out of order (compacted {}, \
                             revision {})",
                            self.compacted, self.revision
                        )
                    })
                })
            })
    }

    /// Sizes within the configured limits (cheap: checked after every apply in debug builds).
    fn bounds_violation(&self) -> Option<String> {
        let l = &self.limits;
        let over = |what: &str, n: usize, max: u64| {
            (n as u64 > max).then(|| format!("{what} {n} exceed the limit {max}"))
        };
        over("keys", self.kv.len(), l.keys_max)
            .or_else(|| over("leases", self.leases.len(), l.leases_max))
            .or_else(|| over("history events", self.history.len(), l.history_events_max))
    }

    /// What is wrong with `key`, if anything: its stored copy names it, its revisions are
    /// ordered and not in the future, its lease lists it, a queue key has a lease, and its
    /// queue's grant is held by the head only.
    fn key_violation(&self, key: &str) -> Option<String> {
        if let Some(kv) = self.kv.get(key) {
            if kv.key != key {
                return Some(format!("key {key:?} stores a value for {:?}", kv.key));
            }
            if kv.create_revision > kv.mod_revision || kv.mod_revision.0 > self.revision {
                return Some(format!(
                    "key {key:?}: create revision {} and mod revision {} are not ordered \
                     at or below the applied revision {}",
                    kv.create_revision.0, kv.mod_revision.0, self.revision
                ));
            }
            if kv.version == 0 {
                return Some(format!("key {key:?} has version 0"));
            }
            if let Some(l) = kv.lease
                && !self.leases.get(&l).is_some_and(|s| s.keys.contains(key))
            {
                return Some(format!("key {key:?} is on {l}, which does not list it"));
            }
        } else if self.grants.contains_key(key) {
            return Some(format!("grant for missing key {key:?}"));
        }
        let queue = queue_of(key)?;
        if self.kv.get(key).is_some_and(|kv| kv.lease.is_none()) {
            return Some(format!("queue key {key:?} has no lease"));
        }
        let members = self.queue_members(queue);
        if let Some(head) = members.first()
            && !self.grants.contains_key(&head.key)
        {
            return Some(format!(
                "head {:?} of queue {queue:?} holds no grant",
                head.key
            ));
        }
        members.iter().skip(1).find_map(|w| {
            self.grants
                .contains_key(&w.key)
                .then(|| format!("waiter {:?} of queue {queue:?} holds a grant", w.key))
        })
    }

    /// Applies `cmd` as the entry at log `index`. Never panics; a bad command yields
    /// `Outcome::Rejected` and changes nothing but the revision. Returns the watch events of
    /// the changes, in order (all at revision `index`).
    pub fn apply(&mut self, index: u64, cmd: &Command) -> (Outcome, Vec<WatchEvent>) {
        if index <= self.revision {
            return (
                Outcome::Rejected(CoordError::invalid(format!(
                    "log index {index} is not after the applied revision {}",
                    self.revision
                ))),
                Vec::new(),
            );
        }
        self.revision = index;
        let mut step = Step {
            rev: index,
            events: Vec::new(),
            touched: BTreeSet::new(),
        };
        let outcome = match self.dispatch(&mut step, cmd) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Rejected(e),
        };
        self.settle_queues(&mut step);
        let events = step.events;
        self.record_history(&events);
        // Invariants of what this entry changed (the whole machine is checked on restore).
        #[cfg(debug_assertions)]
        {
            let v = self
                .bounds_violation()
                .or_else(|| events.iter().find_map(|e| self.key_violation(&e.kv.key)));
            debug_assert!(
                v.is_none(),
                "raft state machine invariant broken after applying index {index}: {}",
                v.unwrap_or_default()
            );
        }
        (outcome, events)
    }

    fn dispatch(&mut self, step: &mut Step, cmd: &Command) -> Result<Outcome, CoordError> {
        match cmd {
            Command::Put { key, value, lease } => {
                self.check_user_key(key)?;
                self.check_value(value)?;
                self.check_lease(*lease)?;
                self.check_room_for(std::iter::once(key.as_str()))?;
                self.check_space(self.growth(key, value))?;
                let prev = self.put_inner(step, key, value.clone(), *lease);
                Ok(Outcome::Put(PutResponse {
                    revision: Revision(step.rev),
                    prev,
                }))
            }
            Command::Delete { key } => {
                self.check_user_key(key)?;
                let prev = self.delete_inner(step, key);
                Ok(Outcome::Delete(DeleteResponse {
                    revision: Revision(step.rev),
                    prev,
                }))
            }
            Command::Txn(txn) => self.txn(step, txn),
            Command::LeaseGrant { id, ttl_ms } => self.lease_grant(step, *id, *ttl_ms),
            Command::LeaseKeepAlive { id } => {
                let rev = step.rev;
                match self.leases.get_mut(id) {
                    Some(lease) => {
                        lease.renewed_at = rev;
                        Ok(Outcome::Lease {
                            id: *id,
                            ttl_ms: lease.ttl_ms,
                        })
                    }
                    None => Err(self.lease_error(*id)),
                }
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(self.lease_error(*id));
                }
                let keys_deleted = self.end_lease(step, *id, false);
                Ok(Outcome::LeasesEnded {
                    ids: vec![*id],
                    keys_deleted,
                })
            }
            Command::LeaseExpire { leases } => {
                let mut ids = Vec::new();
                let mut keys_deleted = 0;
                for (id, renewed_at) in leases {
                    if self
                        .leases
                        .get(id)
                        .is_some_and(|l| l.renewed_at == *renewed_at)
                    {
                        keys_deleted += self.end_lease(step, *id, true);
                        ids.push(*id);
                    }
                }
                Ok(Outcome::LeasesEnded { ids, keys_deleted })
            }
            Command::Lock { name, lease } => {
                self.enqueue(step, LOCK_PREFIX, name, *lease, Vec::new(), false)
            }
            Command::Campaign {
                election,
                value,
                lease,
            } => self.enqueue(step, ELECTION_PREFIX, election, *lease, value.clone(), true),
            Command::Unlock {
                key,
                create_revision,
            } => self.dequeue(step, LOCK_PREFIX, key, *create_revision),
            Command::Resign {
                key,
                create_revision,
            } => self.dequeue(step, ELECTION_PREFIX, key, *create_revision),
            Command::Proclaim {
                key,
                create_revision,
                value,
            } => {
                if !key.starts_with(ELECTION_PREFIX) || queue_of(key).is_none() {
                    return Err(CoordError::invalid(format!(
                        "{key:?} is not an election key (proclaim takes the key campaign returned)"
                    )));
                }
                self.check_value(value)?;
                let current = self.kv.get(key);
                let leads = current.is_some_and(|kv| kv.create_revision == *create_revision)
                    && self.grants.contains_key(key);
                let Some(kv) = current.filter(|_| leads) else {
                    return Err(CoordError::NotHolder {
                        key: key.clone(),
                        reason: "it does not lead this election (resigned, lease ended, or not yet elected)".into(),
                    });
                };
                let lease = kv.lease;
                self.put_inner(step, key, value.clone(), lease);
                Ok(Outcome::Done {
                    revision: Revision(step.rev),
                    changed: true,
                })
            }
        }
    }

    fn check_key(&self, key: &str) -> Result<(), CoordError> {
        if key.is_empty() {
            return Err(CoordError::invalid(
                "the key is empty: give a non-empty key",
            ));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(CoordError::KeyTooLarge {
                len: key.len(),
                max: self.limits.key_bytes_max,
            });
        }
        Ok(())
    }

    fn check_user_key(&self, key: &str) -> Result<(), CoordError> {
        self.check_key(key)?;
        if key.starts_with(RESERVED_PREFIX) {
            return Err(CoordError::invalid(format!(
                "key {key:?} is under the reserved prefix {RESERVED_PREFIX:?} (locks and elections): use lock/campaign, or another key"
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CoordError> {
        if value.len() > self.limits.value_bytes_max {
            return Err(CoordError::ValueTooLarge {
                len: value.len(),
                max: self.limits.value_bytes_max,
            });
        }
        Ok(())
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), CoordError> {
        match lease {
            Some(id) if !self.leases.contains_key(&id) => Err(self.lease_error(id)),
            _ => Ok(()),
        }
    }

    /// How much writing `value` at `key` would grow the store (negative: shrink).
    fn growth(&self, key: &str, value: &[u8]) -> i128 {
        let old = self
            .kv
            .get(key)
            .map_or(0, |kv| stored_bytes(key, &kv.value));
        i128::from(stored_bytes(key, value)) - i128::from(old)
    }

    /// How much running a transaction branch would grow the store (negative: shrink).
    fn branch_growth(&self, branch: &[TxnOp]) -> i128 {
        branch
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => self.growth(key, value),
                TxnOp::Delete { key } => self
                    .kv
                    .get(key)
                    .map_or(0, |kv| -(stored_bytes(key, &kv.value) as i128)),
                TxnOp::Get { .. } | TxnOp::Range { .. } => 0,
            })
            .sum()
    }

    /// A node's own store quota, checked on the leader before it proposes a user write
    /// (`Put`, or a `Txn` whose branch that would run now grows the store): fails (NOSPACE)
    /// when the write would take the stored bytes past `quota`. Everything else passes, so
    /// locks, elections and role leases are never refused, and neither are deletes and
    /// writes that do not grow the store. The apply-time limit
    /// ([`MachineLimits::store_bytes_max`]) stays the hard limit every node applies alike;
    /// this one is a node setting, so nodes may differ in it without diverging.
    pub fn admit(&self, cmd: &Command, quota: u64) -> Result<(), CoordError> {
        let growth = match cmd {
            Command::Put { key, value, .. } => self.growth(key, value),
            Command::Txn(t) => {
                let branch = if t.compares.iter().all(|c| self.compare(c)) {
                    &t.success
                } else {
                    &t.failure
                };
                self.branch_growth(branch)
            }
            _ => return Ok(()),
        };
        if growth > 0 && i128::from(self.bytes).saturating_add(growth) > i128::from(quota) {
            return Err(CoordError::ResourceExhausted {
                what: format!(
                    "store quota (store_bytes_max in the agent config: bytes of stored keys and values; {} stored, this write adds {growth}: NOSPACE; delete keys or raise the quota)",
                    self.bytes
                ),
                max: quota,
            });
        }
        Ok(())
    }

    /// Fails (NOSPACE) if user writes growing the store by `growth` bytes would take it past
    /// `store_bytes_max`. Writes that do not grow it always pass, so a full store can be
    /// cleaned up with deletes and smaller overwrites.
    fn check_space(&self, growth: i128) -> Result<(), CoordError> {
        if growth > 0
            && i128::from(self.bytes).saturating_add(growth)
                > i128::from(self.limits.store_bytes_max)
        {
            return Err(CoordError::ResourceExhausted {
                what: format!(
                    "store_bytes_max (bytes of stored keys and values; {} stored, this write adds {growth}: NOSPACE)",
                    self.bytes
                ),
                max: self.limits.store_bytes_max,
            });
        }
        Ok(())
    }

    /// Fails if creating the absent ones among `keys` would exceed `keys_max`.
    fn check_room_for<'a>(&self, keys: impl Iterator<Item = &'a str>) -> Result<(), CoordError> {
        let new: BTreeSet<&str> = keys.filter(|k| !self.kv.contains_key(*k)).collect();
        let total = (self.kv.len() as u64).saturating_add(new.len() as u64);
        if total > self.limits.keys_max {
            return Err(CoordError::ResourceExhausted {
                what: "keys_max (stored keys)".into(),
                max: self.limits.keys_max,
            });
        }
        Ok(())
    }

    /// The error for a lease that is not live: expired (if recently expired) or not found.
    pub fn lease_error(&self, id: LeaseId) -> CoordError {
        if self.ended.iter().any(|(e, expired)| *e == id && *expired) {
            CoordError::LeaseExpired { id }
        } else {
            CoordError::LeaseNotFound { id }
        }
    }

    fn put_inner(
        &mut self,
        step: &mut Step,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Option<KeyValue> {
        let prev = self.kv.get(key).cloned();
        if let Some(old) = prev.as_ref().and_then(|p| p.lease)
            && Some(old) != lease
            && let Some(l) = self.leases.get_mut(&old)
        {
            l.keys.remove(key);
        }
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.insert(key.to_owned());
        }
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev
                .as_ref()
                .map_or(Revision(step.rev), |p| p.create_revision),
            mod_revision: Revision(step.rev),
            version: prev.as_ref().map_or(1, |p| p.version.saturating_add(1)),
            lease,
        };
        step.events.push(WatchEvent {
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        let old = prev.as_ref().map_or(0, |p| stored_bytes(key, &p.value));
        self.bytes = self
            .bytes
            .saturating_sub(old)
            .saturating_add(stored_bytes(key, &kv.value));
        self.kv.insert(key.to_owned(), kv);
        if prev.is_none()
            && let Some(queue) = queue_of(key)
        {
            step.touched.insert(queue.to_owned());
        }
        prev
    }

    fn delete_inner(&mut self, step: &mut Step, key: &str) -> Option<KeyValue> {
        let prev = self.kv.remove(key)?;
        self.bytes = self.bytes.saturating_sub(stored_bytes(key, &prev.value));
        if let Some(l) = prev.lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
        if let Some(queue) = queue_of(key) {
            self.grants.remove(key);
            step.touched.insert(queue.to_owned());
        }
        step.events.push(deleted_event(key, step.rev));
        Some(prev)
    }

    /// Ends lease `id`, deleting its keys. Returns how many keys went.
    fn end_lease(&mut self, step: &mut Step, id: LeaseId, expired: bool) -> u64 {
        let Some(lease) = self.leases.remove(&id) else {
            return 0;
        };
        let mut deleted = 0;
        for key in &lease.keys {
            if self.delete_inner(step, key).is_some() {
                deleted += 1;
            }
        }
        self.ended.push_back((id, expired));
        while self.ended.len() > ENDED_LEASES_KEPT {
            self.ended.pop_front();
        }
        deleted
    }

    fn lease_grant(
        &mut self,
        step: &mut Step,
        id: Option<LeaseId>,
        ttl_ms: u64,
    ) -> Result<Outcome, CoordError> {
        let (min, max) = (self.limits.lease_ttl_min_ms, self.limits.lease_ttl_max_ms);
        if ttl_ms < min || ttl_ms > max {
            return Err(CoordError::invalid(format!(
                "lease TTL {ttl_ms} ms is outside {min}..={max} ms: pick a TTL in that range"
            )));
        }
        if self.leases.len() as u64 >= self.limits.leases_max {
            return Err(CoordError::ResourceExhausted {
                what: "leases_max (live leases)".into(),
                max: self.limits.leases_max,
            });
        }
        let id = match id {
            Some(LeaseId(0)) => {
                return Err(CoordError::invalid(
                    "lease id 0 is reserved: give another id or none",
                ));
            }
            Some(id) if self.leases.contains_key(&id) => {
                return Err(CoordError::invalid(format!(
                    "{id} is already in use: give another id or none"
                )));
            }
            Some(id) => id,
            None => {
                // The entry's index, or the next free id after it (explicit ids may collide).
                let mut id = step.rev.max(1);
                while self.leases.contains_key(&LeaseId(id)) {
                    id = id.wrapping_add(1).max(1);
                }
                LeaseId(id)
            }
        };
        self.leases.insert(
            id,
            LeaseState {
                ttl_ms,
                renewed_at: step.rev,
                keys: BTreeSet::new(),
            },
        );
        Ok(Outcome::Lease { id, ttl_ms })
    }

    fn check_queue_name(&self, prefix: &str, name: &str) -> Result<(), CoordError> {
        let what = if prefix == LOCK_PREFIX {
            "lock"
        } else {
            "election"
        };
        if name.is_empty() || name.len() > QUEUE_NAME_BYTES_MAX {
            return Err(CoordError::invalid(format!(
                "{what} name {name:?} must be 1 to {QUEUE_NAME_BYTES_MAX} bytes long"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(CoordError::invalid(format!(
                "{what} name {name:?} contains a control character: use printable characters"
            )));
        }
        self.check_key(&queue_key(prefix, name, LeaseId(0)))
    }

    fn enqueue(
        &mut self,
        step: &mut Step,
        prefix: &str,
        name: &str,
        lease: LeaseId,
        value: Vec<u8>,
        update_value: bool,
    ) -> Result<Outcome, CoordError> {
        self.check_queue_name(prefix, name)?;
        self.check_value(&value)?;
        self.check_lease(Some(lease))?;
        let key = queue_key(prefix, name, lease);
        match self.kv.get(&key) {
            Some(kv) => {
                if update_value && kv.value != value {
                    self.put_inner(step, &key, value, Some(lease));
                }
            }
            None => {
                self.check_room_for(std::iter::once(key.as_str()))?;
                self.put_inner(step, &key, value, Some(lease));
            }
        }
        // Settle now so the position reports a grant made by this very entry.
        self.settle_queues(step);
        self.position(&key)
            .map(Outcome::Queued)
            .ok_or_else(|| CoordError::Internal {
                reason: format!("queue key {key:?} missing right after it was written"),
            })
    }

    fn dequeue(
        &mut self,
        step: &mut Step,
        prefix: &str,
        key: &str,
        create_revision: Revision,
    ) -> Result<Outcome, CoordError> {
        if !key.starts_with(prefix) || queue_of(key).is_none() {
            return Err(CoordError::invalid(format!(
                "{key:?} is not a key under {prefix:?} (give the key lock/campaign returned)"
            )));
        }
        let matches = self
            .kv
            .get(key)
            .is_some_and(|kv| kv.create_revision == create_revision);
        if matches {
            self.delete_inner(step, key);
        }
        Ok(Outcome::Done {
            revision: Revision(step.rev),
            changed: matches,
        })
    }

    /// Grants every touched queue whose head has no grant yet, at this step's revision.
    fn settle_queues(&mut self, step: &mut Step) {
        for queue in std::mem::take(&mut step.touched) {
            let head = self.queue_members(&queue).first().map(|kv| kv.key.clone());
            if let Some(head) = head {
                self.grants.entry(head).or_insert(step.rev);
            }
        }
    }

    /// Members of a queue, in queue order (create revision).
    fn queue_members(&self, queue: &str) -> Vec<&KeyValue> {
        let mut members: Vec<&KeyValue> = self
            .kv
            .range::<str, _>((std::ops::Bound::Included(queue), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(queue))
            .filter(|(k, _)| in_queue(queue, k))
            .map(|(_, kv)| kv)
            .collect();
        members.sort_by_key(|kv| kv.create_revision);
        members
    }

    fn record_history(&mut self, events: &[WatchEvent]) {
        self.history.extend(events.iter().cloned());
        while self.history.len() as u64 > self.limits.history_events_max {
            let Some(dropped) = self.history.pop_front() else {
                break;
            };
            let rev = dropped.kv.mod_revision.0;
            self.compacted = self.compacted.max(rev);
            // Drop the rest of that revision too: a revision is in the history whole or not.
            while self
                .history
                .front()
                .is_some_and(|e| e.kv.mod_revision.0 == rev)
            {
                self.history.pop_front();
            }
        }
    }

    // ---- reads ----

    /// One key.
    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.kv.get(key)
    }

    /// Keys under `prefix` after `start_after`, in key order, at most `limit` (capped by
    /// `range_keys_max`); the flag says whether more matched.
    pub fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<u32>,
    ) -> (Vec<KeyValue>, bool) {
        use std::ops::Bound;
        let limit = limit
            .map_or(self.limits.range_keys_max, |l| l as usize)
            .min(self.limits.range_keys_max);
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut iter = self
            .kv
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone());
        let kvs: Vec<KeyValue> = iter.by_ref().take(limit).collect();
        let more = iter.next().is_some();
        (kvs, more)
    }

    /// Number of stored keys.
    pub fn key_count(&self) -> usize {
        self.kv.len()
    }

    /// A live lease.
    pub fn lease(&self, id: LeaseId) -> Option<&LeaseState> {
        self.leases.get(&id)
    }

    /// Every live lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &LeaseState)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// The place of a queue key (lock or election key), if it exists.
    pub fn position(&self, key: &str) -> Option<QueuePosition> {
        let kv = self.kv.get(key)?;
        let queue = queue_of(key)?;
        let lease = kv.lease?;
        let token = self.grants.get(key).map(|rev| FencingToken(*rev));
        let ahead = if token.is_some() {
            None
        } else {
            self.queue_members(queue)
                .into_iter()
                .take_while(|m| m.create_revision < kv.create_revision)
                .last()
                .map(|m| m.key.clone())
        };
        Some(QueuePosition {
            key: key.to_owned(),
            lease,
            create_revision: kv.create_revision,
            token,
            ahead,
        })
    }

    /// The holder of lock `name`.
    pub fn lock_holder(&self, name: &str) -> Option<QueuePosition> {
        self.queue_head(&format!("{LOCK_PREFIX}{name}/"))
            .map(|(pos, _)| pos)
    }

    /// The leader of election `election`, with its key-value (value = proclaimed value).
    pub fn election_leader(&self, election: &str) -> Option<(QueuePosition, &KeyValue)> {
        self.queue_head(&format!("{ELECTION_PREFIX}{election}/"))
    }

    fn queue_head(&self, queue: &str) -> Option<(QueuePosition, &KeyValue)> {
        let head = *self.queue_members(queue).first()?;
        let pos = self.position(&head.key)?;
        Some((pos, head))
    }

    /// One page of the watch history for a resumable poll: the events under `prefix` at
    /// revision `>= from`, in order, without the first `skip` events at `from` (delivered
    /// before), at most `max_events` of them and, after the first, no more than `bytes_max`
    /// encoded bytes in all. Fails with `Compacted` as [`Machine::history_since`] does.
    pub fn history_page(
        &self,
        prefix: &str,
        from: Revision,
        skip: u32,
        max_events: usize,
        bytes_max: usize,
    ) -> Result<Vec<WatchEvent>, CoordError> {
        if self.compacted > 0 && from.0 <= self.compacted {
            return Err(CoordError::Compacted {
                requested: from,
                compacted: Revision(self.compacted),
            });
        }
        let start = self.history.partition_point(|e| e.kv.mod_revision < from);
        let mut out = Vec::new();
        let mut skipped = 0;
        let mut bytes = 0usize;
        for e in self.history.range(start..) {
            if !e.kv.key.starts_with(prefix) {
                continue;
            }
            if e.kv.mod_revision == from && skipped < skip {
                skipped += 1;
                continue;
            }
            let len = postcard::experimental::serialized_size(e).unwrap_or(usize::MAX);
            if out.len() >= max_events || (!out.is_empty() && bytes.saturating_add(len) > bytes_max)
            {
                break;
            }
            bytes = bytes.saturating_add(len);
            out.push(e.clone());
        }
        Ok(out)
    }

    /// Watch history: every event under `prefix` at revision `>= from`, in order. Fails with
    /// `Compacted` if events at `from` may be gone.
    pub fn history_since(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<Vec<WatchEvent>, CoordError> {
        if self.compacted > 0 && from.0 <= self.compacted {
            return Err(CoordError::Compacted {
                requested: from,
                compacted: Revision(self.compacted),
            });
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.kv.mod_revision >= from && e.kv.key.starts_with(prefix))
            .cloned()
            .collect())
    }
}

impl Machine {
    fn txn(&mut self, step: &mut Step, txn: &Txn) -> Result<Outcome, CoordError> {
        let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
        if ops > self.limits.txn_ops_max {
            return Err(CoordError::invalid(format!(
                "transaction has {ops} compares and operations; the limit txn_ops_max is {}: split it",
                self.limits.txn_ops_max
            )));
        }
        for c in &txn.compares {
            self.check_key(&c.key)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Put { key, value, .. } => {
                    self.check_user_key(key)?;
                    self.check_value(value)?;
                }
                TxnOp::Delete { key } => self.check_user_key(key)?,
                TxnOp::Get { key } => self.check_key(key)?,
                TxnOp::Range { .. } => {}
            }
        }
        let succeeded = txn.compares.iter().all(|c| self.compare(c));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // Everything that can fail is checked before the first change: a txn is all or nothing.
        for op in branch {
            if let TxnOp::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }
        self.check_room_for(branch.iter().filter_map(|op| match op {
            TxnOp::Put { key, .. } => Some(key.as_str()),
            _ => None,
        }))?;
        self.check_space(self.branch_growth(branch))?;
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            results.push(match op {
                TxnOp::Put { key, value, lease } => TxnOpResult::Put {
                    prev: self.put_inner(step, key, value.clone(), *lease),
                },
                TxnOp::Get { key } => TxnOpResult::Get(self.kv.get(key).cloned()),
                TxnOp::Range { prefix, limit } => {
                    let (kvs, more) = self.range(prefix, None, *limit);
                    TxnOpResult::Range { kvs, more }
                }
                TxnOp::Delete { key } => TxnOpResult::Delete {
                    prev: self.delete_inner(step, key),
                },
            });
        }
        Ok(Outcome::Txn(TxnResponse {
            revision: Revision(step.rev),
            succeeded,
            results,
        }))
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.kv.get(&c.key);
        match &c.target {
            CompareTarget::Value(v) => kv.is_some_and(|kv| cmp_holds(&kv.value[..], c.op, &v[..])),
            CompareTarget::ModRevision(r) => {
                cmp_holds(&kv.map_or(Revision(0), |kv| kv.mod_revision), c.op, r)
            }
            CompareTarget::CreateRevision(r) => {
                cmp_holds(&kv.map_or(Revision(0), |kv| kv.create_revision), c.op, r)
            }
            CompareTarget::Version(v) => cmp_holds(&kv.map_or(0, |kv| kv.version), c.op, v),
            CompareTarget::Lease(l) => cmp_holds(&kv.and_then(|kv| kv.lease), c.op, l),
        }
    }
}
