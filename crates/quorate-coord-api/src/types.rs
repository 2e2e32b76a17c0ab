//! Data types of the coordination contract: revisions, leases, key-values, transactions, watch
//! events, lock and election grants, cluster status and backend capabilities.
//!
//! These types derive `Serialize`/`Deserialize` on purpose: they are the payload of the client
//! coordination RPC (message kinds 0x03xx) and of the replicated log of `quorate-raft`.

use std::fmt;
use std::time::Duration;

use quorate_types::{FencingToken, NodeId};
use serde::{Deserialize, Serialize};

/// A point in the history of the key space. Every change is stamped with a revision; revisions
/// strictly increase (in `quorate-raft` a revision is the Raft log index of the entry that made
/// the change, so revisions are not dense). `Revision(0)` means "never" (a missing key has
/// create and mod revision 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    pub fn next(self) -> Revision {
        Revision(self.0.saturating_add(1))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revision {}", self.0)
    }
}

/// Identifies a lease. Shown in hex, as etcd does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease {:016x}", self.0)
    }
}

/// A stored key with its value and history stamps (etcd's `mvccpb.KeyValue`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the put that created this key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last change of this key.
    pub mod_revision: Revision,
    /// Number of puts since creation (1 after the creating put).
    pub version: u64,
    /// The lease the key is attached to; the key is deleted when that lease ends.
    pub lease: Option<LeaseId>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    /// The read reflects every write acknowledged before it started (a quorum round trip on
    /// the leader). Fails with `NoQuorum`/`NotLeader` rather than return stale data.
    Linearizable,
    /// The read is served from this node's applied state: fast, may be stale, never blocks on
    /// the network (etcd's "serializable").
    Local,
}

/// Result of [`Coord::get`](crate::Coord::get).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResponse {
    /// The revision of the key space the read saw.
    pub revision: Revision,
    /// The key, if it exists.
    pub kv: Option<KeyValue>,
}

/// A prefix range read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// Every key starting with this prefix ("" = all keys).
    pub prefix: String,
    /// Only keys strictly greater than this one (to page through a large range).
    pub start_after: Option<String>,
    /// At most this many keys; `None` = the backend's `Capabilities::range_keys_max`.
    pub limit: Option<u32>,
    /// How fresh the read must be.
    pub consistency: Consistency,
}

impl RangeRequest {
    /// A linearizable read of every key under `prefix`, up to the backend's limit.
    pub fn prefix(prefix: impl Into<String>) -> RangeRequest {
        RangeRequest {
            prefix: prefix.into(),
            start_after: None,
            limit: None,
            consistency: Consistency::Linearizable,
        }
    }
}

/// Result of [`Coord::range`](crate::Coord::range).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The revision of the key space the read saw.
    pub revision: Revision,
    /// The keys, in key order.
    pub kvs: Vec<KeyValue>,
    /// More keys matched than were returned; continue with `start_after` = the last key.
    pub more: bool,
}

/// Result of [`Coord::put`](crate::Coord::put).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The revision of this write (the key's new `mod_revision`).
    pub revision: Revision,
    /// The key before the write, if it existed.
    pub prev: Option<KeyValue>,
}

/// Result of [`Coord::delete`](crate::Coord::delete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The revision of this delete.
    pub revision: Revision,
    /// The key that was deleted, or `None` if it did not exist (no event is emitted then).
    pub prev: Option<KeyValue>,
}

/// What a [`Compare`] looks at. A missing key has create/mod revision 0, version 0 and no
/// lease; a `Value` compare on a missing key is always false (as in etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value bytes.
    Value(Vec<u8>),
    /// The revision of the last change.
    ModRevision(Revision),
    /// The revision of creation (0 = the key does not exist).
    CreateRevision(Revision),
    /// The number of puts since creation.
    Version(u64),
    /// The attached lease (`None` = no lease).
    Lease(Option<LeaseId>),
}

/// How a [`Compare`] relates the stored value to the given one (`stored OP given`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Not equal.
    NotEqual,
    /// Stored is less than given.
    Less,
    /// Stored is greater than given.
    Greater,
}

/// One condition of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key compared.
    pub key: String,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
}

impl Compare {
    /// `value(key) == value`.
    pub fn value_eq(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Value(value.into()),
        }
    }
    /// `mod_revision(key) == rev`.
    pub fn mod_revision_eq(key: impl Into<String>, rev: Revision) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(rev),
        }
    }
    /// `create_revision(key) == rev`; with `Revision(0)` this means "the key does not exist".
    pub fn create_revision_eq(key: impl Into<String>, rev: Revision) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::CreateRevision(rev),
        }
    }
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare::create_revision_eq(key, Revision(0))
    }
    /// `lease(key) == lease`.
    pub fn lease_eq(key: impl Into<String>, lease: Option<LeaseId>) -> Compare {
        Compare {
            key: key.into(),
            op: CompareOp::Equal,
            target: CompareTarget::Lease(lease),
        }
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Write `value` under `key`, attached to `lease` if given.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease to attach the key to.
        lease: Option<LeaseId>,
    },
    /// Read one key.
    Get {
        /// The key.
        key: String,
    },
    /// Read keys by prefix, up to `limit` (or the backend limit).
    Range {
        /// The prefix.
        prefix: String,
        /// The most keys returned.
        limit: Option<u32>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
}

/// A compare-and-set transaction: if every compare holds, run `success`, else `failure`.
/// All of it applies atomically at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// A put; the previous key if it existed.
    Put {
        /// The key before the put.
        prev: Option<KeyValue>,
    },
    /// A get.
    Get(Option<KeyValue>),
    /// A range read.
    Range {
        /// The keys.
        kvs: Vec<KeyValue>,
        /// More keys matched than were returned.
        more: bool,
    },
    /// A delete; the deleted key if it existed.
    Delete {
        /// The key before the delete.
        prev: Option<KeyValue>,
    },
}

/// Result of [`Coord::txn`](crate::Coord::txn).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// The revision the transaction applied at.
    pub revision: Revision,
    /// Whether every compare held (the `success` branch ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub results: Vec<TxnOpResult>,
}

/// The kind of a [`WatchEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (explicitly, or because its lease ended).
    Delete,
}

/// One change of one key, as delivered by a watch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after a put; for a delete, the key with an empty value, create revision 0,
    /// version 0, no lease, and `mod_revision` = the revision of the delete.
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A lease granted by [`Coord::lease_grant`](crate::Coord::lease_grant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The new lease.
    pub id: LeaseId,
    /// Its time to live. Its holder must treat it as valid only until
    /// `sent + ttl * (1 - drift) - margin`, where `sent` is when it sent the request.
    pub ttl: Duration,
}

/// Result of [`Coord::lease_time_to_live`](crate::Coord::lease_time_to_live).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The TTL it was granted (and is renewed to).
    pub granted_ttl: Duration,
    /// Time left before the serving node's lease clock ends it (an estimate for humans; never
    /// base safety on it).
    pub remaining: Duration,
    /// Keys attached to it.
    pub keys: Vec<String>,
}

/// A lock held (or waited for) by a lease. Returned by [`Coord::lock`](crate::Coord::lock).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockGrant {
    /// The lock name.
    pub name: String,
    /// The key representing this holder in the lock's queue (attached to `lease`).
    pub key: String,
    /// The lease the lock is held under; the lock is released when it ends.
    pub lease: LeaseId,
    /// Revision at which `key` was created; `Compare::create_revision_eq(key, this)` inside a
    /// [`Txn`] checks that this holder still holds (etcd's `IsOwner`).
    pub create_revision: Revision,
    /// The fencing token: the revision at which the lock was granted to this holder. Tokens
    /// strictly increase across grants. Protected resources must reject lower tokens.
    pub token: FencingToken,
}

/// Leadership in an election, returned by [`Coord::campaign`](crate::Coord::campaign).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaderKey {
    /// The election name.
    pub election: String,
    /// The key representing this candidate (attached to `lease`).
    pub key: String,
    /// The lease leadership is held under.
    pub lease: LeaseId,
    /// Revision at which `key` was created.
    pub create_revision: Revision,
    /// The fencing token: the revision at which this candidate became leader.
    pub token: FencingToken,
}

/// The current leader of an election, as seen by [`Coord::leader`](crate::Coord::leader) and
/// [`Coord::observe`](crate::Coord::observe).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionLeader {
    /// The leader's key.
    pub key: LeaderKey,
    /// The value it campaigned with or last proclaimed.
    pub value: Vec<u8>,
    /// Revision of the last change of the value.
    pub mod_revision: Revision,
}

/// Cluster status as seen by the node that answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// The leader this node knows of. `None` only while the store has no leader (no write can
    /// commit): the failover manager fills no vacant role meanwhile, so a backend that cannot
    /// name its leader should fail `status` with `Unsupported` rather than answer `None`.
    pub leader: Option<NodeId>,
    /// The current Raft term (or the backend's equivalent).
    pub term: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to this node's state machine.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members (learners).
    pub learners: Vec<NodeId>,
    /// On the leader: time since a quorum last acknowledged it. `None` on followers or when
    /// the backend cannot tell.
    pub quorum_contact_age: Option<Duration>,
}

impl ClusterStatus {
    /// Whether the answering node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader.as_ref() == Some(&self.node)
    }
}

/// What a backend supports and its limits. The conformance suite reads it to state backend
/// differences (e.g. a minimum lease TTL) instead of skipping checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Backend name for reports ("quorate-raft", "etcd").
    pub backend: String,
    /// The shortest TTL `lease_grant` accepts.
    pub lease_ttl_min: Duration,
    /// The longest TTL `lease_grant` accepts.
    pub lease_ttl_max: Duration,
    /// How long after `ttl` an unrenewed lease may still exist (clock drift allowance plus the
    /// expiry check period plus one commit); the suite waits up to `ttl + this` (with polling).
    pub lease_expiry_slack: Duration,
    /// The largest value accepted, in bytes.
    pub value_bytes_max: usize,
    /// The longest key accepted, in bytes.
    pub key_bytes_max: usize,
    /// The most operations (compares + ops of both branches) in one transaction.
    pub txn_ops_max: usize,
    /// The most keys one range read returns.
    pub range_keys_max: usize,
    /// How many past events the backend keeps for watches to resume from; writing more than
    /// this makes older revisions compacted. `None` if compaction is not bounded by a count.
    pub watch_history_events: Option<u64>,
    /// Whether membership administration (`add_learner`, ...) is supported.
    pub admin: bool,
}
