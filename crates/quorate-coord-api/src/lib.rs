//! The coordination contract of quorate, in the shape of etcd's v3 API: a key-value store with
//! revisions, compare-and-set transactions, watches, leases, locks with fencing tokens,
//! elections, cluster status and membership administration. Plus [`conformance`], the suite
//! every backend runs against itself.
//!
//! Backends: `quorate-raft` (embedded, openraft) and, later, an etcd client. Component crates
//! (failover, state) depend on this trait only.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use quorate_coord_api::{Coord, CoordError, Compare, Txn, TxnOp};
//!
//! async fn primary_loop(coord: Arc<dyn Coord>) -> Result<(), CoordError> {
//!     // A session: one lease, kept alive every ttl/3.
//!     let lease = coord.lease_grant(Duration::from_secs(3)).await?;
//!     // Wait for the lock; the token fences every action of this holder.
//!     let lock = coord.lock("daily-report", lease.id).await?;
//!     // Write only while still holding (etcd's IsOwner inside a transaction).
//!     let txn = Txn {
//!         compares: vec![Compare::create_revision_eq(&lock.key, lock.create_revision)],
//!         success: vec![TxnOp::Put { key: "report/last".into(), value: b"done".to_vec(), lease: None }],
//!         failure: vec![],
//!     };
//!     let done = coord.txn(txn).await?;
//!     assert!(done.succeeded);
//!     coord.unlock(&lock).await?;
//!     coord.lease_revoke(lease.id).await?;
//!     Ok(())
//! }
//! ```

pub mod conformance;
mod error;
mod types;

use std::time::Duration;

use futures::stream::BoxStream;
use quorate_types::NodeId;

pub use error::CoordError;
pub use quorate_types::FencingToken;
pub use types::{
    Capabilities, ClusterStatus, Compare, CompareOp, CompareTarget, Consistency, DeleteResponse,
    ElectionLeader, EventKind, GetResponse, KeyValue, LeaderKey, LeaseGrant, LeaseId, LeaseInfo,
    LockGrant, PutResponse, RangeRequest, RangeResponse, Revision, Txn, TxnOp, TxnOpResult,
    TxnResponse, WatchEvent,
};

/// A stream of key changes in revision order. It ends after yielding an error (e.g.
/// [`CoordError::Compacted`] when the watcher fell too far behind).
pub type WatchStream = BoxStream<'static, Result<WatchEvent, CoordError>>;

/// A stream of an election's leadership: the current state first, then every change (new
/// leader, new proclaimed value, or no leader). It ends after yielding an error.
pub type ObserveStream = BoxStream<'static, Result<Option<ElectionLeader>, CoordError>>;

/// The coordination service. Usable as `Arc<dyn Coord>`.
///
/// All writes are linearizable: a successful write is durable on a majority and visible to
/// every later linearizable read. On [`CoordError::Timeout`] the outcome is unknown.
#[async_trait::async_trait]
pub trait Coord: Send + Sync {
    /// What this backend supports, and its limits.
    fn capabilities(&self) -> Capabilities;

    /// Writes `value` under `key`, attached to `lease` if given (the key is deleted when the
    /// lease ends). Fails with `LeaseNotFound` if the lease does not exist.
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError>;

    /// Reads one key.
    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError>;

    /// Reads keys by prefix, in key order.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError>;

    /// Deletes one key. Deleting a missing key succeeds with `prev: None`.
    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError>;

    /// Runs a compare-and-set transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError>;

    /// Streams changes of keys under `prefix`. With `from: Some(r)`, first replays every
    /// change at revision `>= r` still in the history (else fails with `Compacted`), then
    /// continues live; with `None`, only changes after the call.
    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError>;

    /// Grants a lease with this TTL (within `Capabilities::lease_ttl_min..=lease_ttl_max`).
    /// A backend may round the TTL up to its granularity (etcd counts whole seconds, so 1.5 s
    /// becomes 2 s; quorate-raft keeps milliseconds); [`LeaseGrant::ttl`] is the TTL granted,
    /// and holders must time their renewals from it, not from the TTL asked for.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError>;

    /// Renews a lease to its full TTL (one call; holders call it every ttl/3).
    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError>;

    /// Ends a lease now, deleting its keys and releasing its locks and leaderships.
    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError>;

    /// Shows a lease: TTL, time left, attached keys.
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError>;

    /// Acquires the lock `name` for `lease`, waiting in FIFO order behind earlier waiters.
    /// Calling it again with the same name and lease (e.g. after a timeout) resumes the same
    /// place in the queue. If the future is dropped while waiting, the waiter stays queued
    /// until its lease ends or it is `unlock`ed. Fails with `LeaseExpired`/`LeaseNotFound` if
    /// the lease ends while waiting.
    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError>;

    /// Releases a lock (or leaves its queue). Unlocking a key that no longer exists succeeds.
    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError>;

    /// The current holder of lock `name`, if any.
    async fn lock_holder(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError>;

    /// Campaigns in election `election` with `value`, waiting (FIFO) until this lease leads.
    /// Campaigning again with the same lease resumes (and updates the value).
    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<LeaderKey, CoordError>;

    /// Changes the value of a leadership without re-election. Fails with `NotHolder` if `leader`
    /// no longer leads.
    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError>;

    /// Gives up leadership (or leaves the queue); the next candidate leads.
    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError>;

    /// The current leader of `election`, if any (linearizable).
    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError>;

    /// Streams leadership changes of `election`: the current state first, then every change.
    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError>;

    /// The cluster as seen by the answering node.
    async fn status(&self) -> Result<ClusterStatus, CoordError>;

    /// Adds `node` (reachable at `addr`) as a learner: it receives the log but does not vote.
    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError>;

    /// Promotes a learner to voter (joint consensus). Fails with `UnknownNode` if `node` is not
    /// a learner.
    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError>;

    /// Removes a voter or learner from the cluster. Fails with `UnknownNode` if not a member.
    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_to_retry_and_whether_state_may_have_changed() {
        let node = NodeId::new("n2").unwrap();
        let cases = [
            (CoordError::NoQuorum, true, false),
            (
                CoordError::Timeout {
                    what: "commit".into(),
                },
                true,
                true,
            ),
            (
                CoordError::Internal {
                    reason: "disk".into(),
                },
                false,
                true,
            ),
            (CoordError::invalid("bad"), false, false),
            (CoordError::LeaseExpired { id: LeaseId(1) }, false, false),
            (
                CoordError::NotLeader {
                    leader_hint: Some(node),
                    leader_addr: None,
                },
                true,
                false,
            ),
        ];
        for (e, retry, unknown) in cases {
            assert_eq!(e.is_retryable(), retry, "{e:?}");
            assert_eq!(e.outcome_unknown(), unknown, "{e:?}");
        }
    }

    #[test]
    fn messages_name_the_fix() {
        let hint = CoordError::NotLeader {
            leader_hint: Some(NodeId::new("n2").unwrap()),
            leader_addr: None,
        };
        assert_eq!(hint.to_string(), "not the leader: retry on node n2");
        let none = CoordError::NotLeader {
            leader_hint: None,
            leader_addr: None,
        };
        assert!(none.to_string().contains("leader unknown"));
        let big = CoordError::ValueTooLarge { len: 10, max: 5 };
        assert!(big.to_string().contains("value_bytes_max = 5"));
        assert_eq!(LeaseId(255).to_string(), "lease 00000000000000ff");
    }

    #[test]
    fn helpers_build_etcd_style_compares() {
        assert_eq!(
            Compare::absent("k"),
            Compare::create_revision_eq("k", Revision(0))
        );
        assert_eq!(Revision(u64::MAX).next(), Revision(u64::MAX));
        let status = ClusterStatus {
            node: NodeId::new("a").unwrap(),
            leader: Some(NodeId::new("a").unwrap()),
            term: 1,
            commit_index: 3,
            applied_index: 3,
            voters: vec![NodeId::new("a").unwrap()],
            learners: vec![],
            quorum_contact_age: None,
        };
        assert!(status.is_leader());
    }

    #[test]
    fn coord_is_usable_as_a_trait_object() {
        fn takes(_: Option<std::sync::Arc<dyn Coord>>) {}
        takes(None);
    }
}
