//! [`EtcdCoord`]: the [`Coord`] trait on etcd v3.
//!
//! Mapping, call by call: `put`/`get`/`range`/`delete`/`txn` are etcd's KV calls (a `Local`
//! read is etcd's serializable read; `Linearizable` is etcd's default read). `watch` is an
//! etcd watch (see [`crate::watch`]). Leases are etcd leases (TTLs in whole seconds, rounded
//! up). Locks and elections follow etcd's recipe in the client (see [`crate::queue`]).
//! `status` is etcd's maintenance `Status` of the answering member plus its member list;
//! membership administration is etcd's `MemberAdd` (as learner), `MemberPromote`,
//! `MemberRemove`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn as EtcdTxn};
use etcd_client::{LeaseTimeToLiveOptions, MemberAddOptions, TxnOp as EtcdTxnOp};
use quorate_coord_api::{
    Capabilities, ClusterStatus, Compare as CoordCompare, CompareOp as CoordCompareOp,
    CompareTarget, Consistency, Coord, CoordError, DeleteResponse, ElectionLeader, GetResponse,
    LeaderKey, LeaseGrant, LeaseId, LeaseInfo, LockGrant, ObserveStream, PutResponse, RangeRequest,
    RangeResponse, Revision, Txn, TxnOp, TxnOpResult, TxnResponse, WatchStream,
};
use quorate_types::{FencingToken, NodeId};

use crate::config::EtcdConfig;
use crate::convert::{self, prefix_end, prefix_start};
use crate::error::EtcdError;
use crate::leases::LeaseBook;
use crate::pool::{LEASE_MISSING, Pool, Repeat};
use crate::queue::{self, queue_prefix};
use crate::watch::Watcher;

/// A [`Coord`] served by an etcd cluster. Cheap to clone (clones share connections).
///
/// Create one per process (or one per preferred member with [`EtcdConfig::rotated`]); it
/// connects lazily on first use, so `new` does not fail when etcd is down.
#[derive(Clone)]
pub struct EtcdCoord {
    pub(crate) pool: Arc<Pool>,
    pub(crate) leases: Arc<LeaseBook>,
    /// Members added by `add_learner` before they started (and so have no name yet).
    added: Arc<Mutex<BTreeMap<NodeId, u64>>>,
}

impl std::fmt::Debug for EtcdCoord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCoord")
            .field("endpoints", &self.pool.config().endpoints)
            .field("preferred", &self.pool.preferred_url())
            .finish_non_exhaustive()
    }
}

impl EtcdCoord {
    /// A client for the cluster at `config.endpoints` (validated here; connects lazily).
    pub fn new(config: EtcdConfig) -> Result<EtcdCoord, EtcdError> {
        let leases = Arc::new(LeaseBook::new(config.leases_remembered.get()));
        Ok(EtcdCoord {
            pool: Arc::new(Pool::new(config)?),
            leases,
            added: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// A second client of the same cluster that prefers another endpoint but shares this
    /// one's lease memory (so `LeaseExpired` is reported for leases either granted).
    pub fn sibling(&self, config: EtcdConfig) -> Result<EtcdCoord, EtcdError> {
        Ok(EtcdCoord {
            pool: Arc::new(Pool::new(config)?),
            leases: Arc::clone(&self.leases),
            added: Arc::clone(&self.added),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        self.pool.config()
    }

    /// The endpoint calls go to first now (the last one that answered).
    pub fn preferred_endpoint(&self) -> String {
        self.pool.preferred_url().to_owned()
    }

    /// Compacts etcd's history up to `revision` (events before it are gone: watches from an
    /// older revision fail with `Compacted`). etcd-specific, for operators and tests.
    pub async fn compact(&self, revision: Revision) -> Result<(), CoordError> {
        self.pool
            .call("compact", Repeat::Safe, |mut c| async move {
                c.compact(convert::rev_i64(revision), None).await
            })
            .await
            .map(|_| ())
    }

    pub(crate) fn check_key(&self, key: &str) -> Result<(), CoordError> {
        if key.is_empty() {
            return Err(CoordError::invalid(
                "the key is empty: give a non-empty key",
            ));
        }
        let max = self.config().key_bytes_max;
        if key.len() > max {
            return Err(CoordError::KeyTooLarge {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_user_key(&self, key: &str) -> Result<(), CoordError> {
        self.check_key(key)?;
        let reserved = &self.config().reserved_prefix;
        if !reserved.is_empty() && key.starts_with(reserved.as_str()) {
            return Err(CoordError::invalid(format!(
                "key {key:?} is under the reserved prefix {reserved:?} (locks and elections): use lock/campaign, or another key"
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CoordError> {
        let max = self.config().value_bytes_max;
        if value.len() > max {
            return Err(CoordError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// Replaces the "lease not found" marker with the right error for `lease`.
    pub(crate) fn lease_error(&self, e: CoordError, lease: LeaseId) -> CoordError {
        if e == LEASE_MISSING {
            self.leases.missing(lease)
        } else {
            e
        }
    }

    fn lease_error_opt(&self, e: CoordError, lease: Option<LeaseId>) -> CoordError {
        match lease {
            Some(l) => self.lease_error(e, l),
            None => e,
        }
    }

    /// Whether etcd still knows `lease`.
    pub(crate) async fn lease_alive(&self, lease: LeaseId) -> Result<bool, CoordError> {
        let id = convert::lease_i64(lease)?;
        let resp = self
            .pool
            .call("lease time-to-live", Repeat::Safe, |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        Ok(resp.ttl() > 0)
    }

    fn range_limit(&self, limit: Option<u32>) -> Result<i64, CoordError> {
        let max = self.config().range_keys_max;
        match limit {
            Some(0) => Err(CoordError::invalid(
                "range limit is 0: give at least 1, or None",
            )),
            Some(l) => Ok(i64::from(l).min(i64::try_from(max).unwrap_or(i64::MAX))),
            None => Ok(i64::try_from(max).unwrap_or(i64::MAX)),
        }
    }

    fn etcd_compare(&self, c: &CoordCompare) -> Result<Compare, CoordError> {
        self.check_key(&c.key)?;
        let op = match c.op {
            CoordCompareOp::Equal => CompareOp::Equal,
            CoordCompareOp::NotEqual => CompareOp::NotEqual,
            CoordCompareOp::Less => CompareOp::Less,
            CoordCompareOp::Greater => CompareOp::Greater,
        };
        let key = c.key.clone();
        Ok(match &c.target {
            CompareTarget::Value(v) => Compare::value(key, op, v.clone()),
            CompareTarget::ModRevision(r) => Compare::mod_revision(key, op, convert::rev_i64(*r)),
            CompareTarget::CreateRevision(r) => {
                Compare::create_revision(key, op, convert::rev_i64(*r))
            }
            CompareTarget::Version(v) => {
                Compare::version(key, op, i64::try_from(*v).unwrap_or(i64::MAX))
            }
            CompareTarget::Lease(l) => {
                let id = match l {
                    Some(l) => convert::lease_i64(*l).unwrap_or(i64::MAX),
                    None => 0,
                };
                Compare::lease(key, op, id)
            }
        })
    }

    fn etcd_op(&self, op: &TxnOp) -> Result<EtcdTxnOp, CoordError> {
        Ok(match op {
            TxnOp::Put { key, value, lease } => {
                self.check_user_key(key)?;
                self.check_value(value)?;
                let id = lease.map(convert::lease_i64).transpose()?.unwrap_or(0);
                EtcdTxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(id).with_prev_key()),
                )
            }
            TxnOp::Get { key } => {
                self.check_key(key)?;
                EtcdTxnOp::get(key.clone(), None)
            }
            TxnOp::Range { prefix, limit } => EtcdTxnOp::get(
                prefix_start(prefix),
                Some(
                    GetOptions::new()
                        .with_range(prefix_end(prefix.as_bytes()))
                        .with_limit(self.range_limit(*limit)?),
                ),
            ),
            TxnOp::Delete { key } => {
                self.check_user_key(key)?;
                EtcdTxnOp::delete(key.clone(), Some(DeleteOptions::new().with_prev_key()))
            }
        })
    }

    fn member_node_id(name: &str, id: u64) -> NodeId {
        NodeId::new(name).unwrap_or_else(|_| {
            NodeId::new(format!("{id:x}")).expect("a number in hex is a valid node id")
        })
    }

    /// The etcd member id of `node`: a member named so, one whose id in hex is `node`, or one
    /// this client added (unstarted members have no name yet).
    async fn member_id(&self, node: &NodeId) -> Result<(u64, bool), CoordError> {
        let members = self
            .pool
            .call("member list", Repeat::Safe, |mut c| async move {
                c.member_list().await
            })
            .await?;
        let added = self.added.lock().ok().and_then(|m| m.get(node).copied());
        members
            .members()
            .iter()
            .find(|m| {
                m.name() == node.as_str()
                    || format!("{:x}", m.id()) == node.as_str()
                    || Some(m.id()) == added
            })
            .map(|m| (m.id(), m.is_learner()))
            .ok_or_else(|| CoordError::UnknownNode {
                node: node.to_string(),
                reason: "no etcd member has this name or id (see `etcdctl member list`)".into(),
            })
    }
}

fn whole_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn ttl_of(secs: i64) -> Duration {
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn admin_error(node: &NodeId, e: CoordError) -> CoordError {
    match e {
        CoordError::UnknownNode { reason, .. } => CoordError::UnknownNode {
            node: node.to_string(),
            reason,
        },
        other => other,
    }
}

#[async_trait::async_trait]
impl Coord for EtcdCoord {
    fn capabilities(&self) -> Capabilities {
        let c = self.config();
        Capabilities {
            backend: "etcd".into(),
            lease_ttl_min: c.lease_ttl_min,
            lease_ttl_max: c.lease_ttl_max,
            lease_expiry_slack: c.lease_expiry_slack,
            value_bytes_max: c.value_bytes_max,
            key_bytes_max: c.key_bytes_max,
            txn_ops_max: c.txn_ops_max,
            range_keys_max: c.range_keys_max,
            watch_history_events: None,
            admin: true,
        }
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<PutResponse, CoordError> {
        self.check_user_key(key)?;
        self.check_value(&value)?;
        let id = lease.map(convert::lease_i64).transpose()?.unwrap_or(0);
        let resp = self
            .pool
            .call("put", Repeat::IfNotSent, |mut c| {
                let value = value.clone();
                async move {
                    c.put(
                        key,
                        value,
                        Some(PutOptions::new().with_lease(id).with_prev_key()),
                    )
                    .await
                }
            })
            .await
            .map_err(|e| self.lease_error_opt(e, lease))?;
        Ok(PutResponse {
            revision: convert::header_rev(resp.header()),
            prev: convert::kv_opt(resp.prev_key())?,
        })
    }

    async fn get(&self, key: &str, consistency: Consistency) -> Result<GetResponse, CoordError> {
        self.check_key(key)?;
        let local = consistency == Consistency::Local;
        let resp = self
            .pool
            .call_via("get", Repeat::Safe, local, |mut c| async move {
                let opts = match consistency {
                    Consistency::Linearizable => None,
                    Consistency::Local => Some(GetOptions::new().with_serializable()),
                };
                c.get(key, opts).await
            })
            .await?;
        Ok(GetResponse {
            revision: convert::header_rev(resp.header()),
            kv: convert::kv_opt(resp.kvs().first())?,
        })
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, CoordError> {
        let limit = self.range_limit(req.limit)?;
        let mut start = prefix_start(&req.prefix);
        if let Some(after) = &req.start_after {
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            start = start.max(next);
        }
        let end = prefix_end(req.prefix.as_bytes());
        let consistency = req.consistency;
        let local = consistency == Consistency::Local;
        let mut resp = self
            .pool
            .call_via("range", Repeat::Safe, local, |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let mut opts = GetOptions::new().with_range(end).with_limit(limit);
                    if consistency == Consistency::Local {
                        opts = opts.with_serializable();
                    }
                    c.get(start, Some(opts)).await
                }
            })
            .await?;
        let kvs = resp
            .take_kvs()
            .iter()
            .map(convert::kv)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResponse {
            revision: convert::header_rev(resp.header()),
            kvs,
            more: resp.more(),
        })
    }

    async fn delete(&self, key: &str) -> Result<DeleteResponse, CoordError> {
        self.check_user_key(key)?;
        let resp = self
            .pool
            .call("delete", Repeat::IfNotSent, |mut c| async move {
                c.delete(key, Some(DeleteOptions::new().with_prev_key()))
                    .await
            })
            .await?;
        Ok(DeleteResponse {
            revision: convert::header_rev(resp.header()),
            prev: convert::kv_opt(resp.prev_kvs().first())?,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, CoordError> {
        let ops = txn.compares.len() + txn.success.len() + txn.failure.len();
        let max = self.config().txn_ops_max;
        if ops > max {
            return Err(CoordError::invalid(format!(
                "the transaction has {ops} compares and operations; the limit is txn_ops_max = {max}: split it"
            )));
        }
        let compares = txn
            .compares
            .iter()
            .map(|c| self.etcd_compare(c))
            .collect::<Result<Vec<_>, _>>()?;
        let success = txn
            .success
            .iter()
            .map(|o| self.etcd_op(o))
            .collect::<Result<Vec<_>, _>>()?;
        let failure = txn
            .failure
            .iter()
            .map(|o| self.etcd_op(o))
            .collect::<Result<Vec<_>, _>>()?;
        let writes = txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|o| matches!(o, TxnOp::Put { .. } | TxnOp::Delete { .. }));
        let repeat = if writes {
            Repeat::IfNotSent
        } else {
            Repeat::Safe
        };
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|o| match o {
                TxnOp::Put { lease, .. } => *lease,
                _ => None,
            });
        let resp = self
            .pool
            .call("txn", repeat, |mut c| {
                let t = EtcdTxn::new()
                    .when(compares.clone())
                    .and_then(success.clone())
                    .or_else(failure.clone());
                async move { c.txn(t).await }
            })
            .await
            .map_err(|e| self.lease_error_opt(e, lease))?;
        let branch = if resp.succeeded() {
            &txn.success
        } else {
            &txn.failure
        };
        let mut results = Vec::with_capacity(branch.len());
        for (op, r) in branch.iter().zip(resp.op_responses()) {
            use etcd_client::TxnOpResponse as R;
            results.push(match (op, r) {
                (TxnOp::Put { .. }, R::Put(p)) => TxnOpResult::Put {
                    prev: convert::kv_opt(p.prev_key())?,
                },
                (TxnOp::Get { .. }, R::Get(g)) => {
                    TxnOpResult::Get(convert::kv_opt(g.kvs().first())?)
                }
                (TxnOp::Range { .. }, R::Get(g)) => TxnOpResult::Range {
                    kvs: g.kvs().iter().map(convert::kv).collect::<Result<_, _>>()?,
                    more: g.more(),
                },
                (TxnOp::Delete { .. }, R::Delete(d)) => TxnOpResult::Delete {
                    prev: convert::kv_opt(d.prev_kvs().first())?,
                },
                (op, _) => {
                    return Err(CoordError::Internal {
                        reason: format!("etcd answered {op:?} with a result of another kind"),
                    });
                }
            });
        }
        Ok(TxnResponse {
            revision: convert::header_rev(resp.header()),
            succeeded: resp.succeeded(),
            results,
        })
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<WatchStream, CoordError> {
        let watcher = Watcher::open(Arc::clone(&self.pool), prefix, from).await?;
        Ok(watcher.into_stream())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, CoordError> {
        let c = self.config();
        if ttl < c.lease_ttl_min || ttl > c.lease_ttl_max {
            return Err(CoordError::invalid(format!(
                "lease TTL {ttl:?} is outside {:?}..={:?} (etcd's minimum is 1.5 x its election timeout): choose a TTL in range",
                c.lease_ttl_min, c.lease_ttl_max
            )));
        }
        let secs = whole_seconds(ttl);
        let resp = self
            .pool
            .call("lease grant", Repeat::IfNotSent, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(CoordError::Unavailable {
                reason: format!("etcd refused the lease: {}", resp.error()),
            });
        }
        let id = convert::lease_of(resp.id()).ok_or_else(|| CoordError::Internal {
            reason: "etcd granted lease id 0".into(),
        })?;
        let ttl = ttl_of(resp.ttl());
        self.leases.granted(id, ttl);
        Ok(LeaseGrant { id, ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<LeaseGrant, CoordError> {
        let lid = convert::lease_i64(id)?;
        self.pool
            .call("lease keep-alive", Repeat::Safe, |mut c| async move {
                // One renewal: etcd-client sends the first request and waits for its answer
                // (ttl <= 0 there is "lease not found").
                c.lease_keep_alive(lid).await.map(|_| ())
            })
            .await
            .map_err(|e| self.lease_error(e, id))?;
        let ttl = match self.leases.ttl(id) {
            Some(ttl) => ttl,
            None => self.lease_time_to_live(id).await?.granted_ttl,
        };
        Ok(LeaseGrant { id, ttl })
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, CoordError> {
        let lid = convert::lease_i64(id)?;
        let resp = self
            .pool
            .call("lease revoke", Repeat::IfNotSent, |mut c| async move {
                c.lease_revoke(lid).await
            })
            .await
            .map_err(|e| self.lease_error(e, id))?;
        self.leases.revoked(id);
        Ok(convert::header_rev(resp.header()))
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<LeaseInfo, CoordError> {
        let lid = convert::lease_i64(id)?;
        let resp = self
            .pool
            .call("lease time-to-live", Repeat::Safe, |mut c| async move {
                c.lease_time_to_live(lid, Some(LeaseTimeToLiveOptions::new().with_keys()))
                    .await
            })
            .await
            .map_err(|e| self.lease_error(e, id))?;
        if resp.ttl() <= 0 {
            return Err(self.leases.missing(id));
        }
        let keys = resp
            .keys()
            .iter()
            .map(|k| convert::key_string(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LeaseInfo {
            id,
            granted_ttl: ttl_of(resp.granted_ttl()),
            remaining: ttl_of(resp.ttl()),
            keys,
        })
    }

    async fn lock(&self, name: &str, lease: LeaseId) -> Result<LockGrant, CoordError> {
        let prefix = self.config().lock_prefix.clone();
        self.check_queue_name("lock", &prefix, name)?;
        let (key, create, ahead) = self
            .enqueue(&prefix, name, lease, Vec::new(), false)
            .await?;
        let queue = queue_prefix(&prefix, name);
        let token = self
            .wait_grant(&queue, &key, create, Some(lease), ahead)
            .await?;
        Ok(LockGrant {
            name: name.to_owned(),
            key,
            lease,
            create_revision: create,
            token: FencingToken(token.0),
        })
    }

    async fn unlock(&self, lock: &LockGrant) -> Result<Revision, CoordError> {
        let prefix = &self.config().lock_prefix;
        if queue::name_of(prefix, &lock.key).is_none() {
            return Err(CoordError::invalid(format!(
                "{:?} is not a lock key under {prefix:?} (give the grant lock returned)",
                lock.key
            )));
        }
        self.delete_if_created_at(&lock.key, lock.create_revision)
            .await
    }

    async fn lock_holder(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<Option<LockGrant>, CoordError> {
        let prefix = self.config().lock_prefix.clone();
        self.check_queue_name("lock", &prefix, name)?;
        let queue = queue_prefix(&prefix, name);
        Ok(self
            .holder(&queue, consistency)
            .await?
            .map(|(head, token)| LockGrant {
                name: name.to_owned(),
                key: head.key,
                lease: head.lease.unwrap_or(LeaseId(0)),
                create_revision: head.create,
                token: FencingToken(token.0),
            }))
    }

    async fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<LeaderKey, CoordError> {
        let prefix = self.config().election_prefix.clone();
        self.check_queue_name("election", &prefix, election)?;
        self.check_value(&value)?;
        let (key, create, ahead) = self.enqueue(&prefix, election, lease, value, true).await?;
        let queue = queue_prefix(&prefix, election);
        let token = self
            .wait_grant(&queue, &key, create, Some(lease), ahead)
            .await?;
        Ok(LeaderKey {
            election: election.to_owned(),
            key,
            lease,
            create_revision: create,
            token: FencingToken(token.0),
        })
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<Revision, CoordError> {
        self.check_value(&value)?;
        let prefix = &self.config().election_prefix;
        let Some(name) = queue::name_of(prefix, &leader.key) else {
            return Err(CoordError::invalid(format!(
                "{:?} is not an election key (proclaim takes the key campaign returned)",
                leader.key
            )));
        };
        let queue = queue_prefix(prefix, name);
        let done = self
            .put_if_created_at(
                &leader.key,
                leader.create_revision,
                value,
                leader.lease,
                Some(&queue),
            )
            .await
            .map_err(|e| match e {
                CoordError::LeaseExpired { .. } | CoordError::LeaseNotFound { .. } => {
                    CoordError::NotHolder {
                        key: leader.key.clone(),
                        reason: format!("its {e}"),
                    }
                }
                e => e,
            })?;
        done.ok_or_else(|| CoordError::NotHolder {
            key: leader.key.clone(),
            reason: "it does not lead this election (resigned, lease ended, or not yet elected)"
                .into(),
        })
    }

    async fn resign(&self, leader: &LeaderKey) -> Result<Revision, CoordError> {
        let prefix = &self.config().election_prefix;
        if queue::name_of(prefix, &leader.key).is_none() {
            return Err(CoordError::invalid(format!(
                "{:?} is not an election key (resign takes the key campaign returned)",
                leader.key
            )));
        }
        self.delete_if_created_at(&leader.key, leader.create_revision)
            .await
    }

    async fn leader(&self, election: &str) -> Result<Option<ElectionLeader>, CoordError> {
        let prefix = self.config().election_prefix.clone();
        self.check_queue_name("election", &prefix, election)?;
        let queue = queue_prefix(&prefix, election);
        Ok(self
            .holder(&queue, Consistency::Linearizable)
            .await?
            .map(|(head, token)| queue::election_leader(election, &head, token)))
    }

    async fn observe(&self, election: &str) -> Result<ObserveStream, CoordError> {
        let prefix = self.config().election_prefix.clone();
        self.check_queue_name("election", &prefix, election)?;
        self.observe_queue(election).await
    }

    async fn status(&self) -> Result<ClusterStatus, CoordError> {
        let probe_key = format!("{}status-probe", self.config().reserved_prefix);
        let (status, members, contact) = self
            .pool
            .call("status", Repeat::Safe, |mut c| {
                let probe_key = probe_key.clone();
                async move {
                    let s = c.status().await?;
                    let m = c.member_list().await?;
                    let me = s.header().map_or(0, etcd_client::ResponseHeader::member_id);
                    // etcd does not report when its leader last heard from a quorum. On the
                    // leader, a linearizable read needs a quorum round (ReadIndex), so the
                    // time since that read was sent bounds the contact age from above.
                    let contact = if s.leader() == me && me != 0 {
                        let sent = tokio::time::Instant::now();
                        c.get(probe_key, None).await?;
                        Some(sent)
                    } else {
                        None
                    };
                    Ok((s, m, contact))
                }
            })
            .await?;
        let name_of = |id: u64| {
            members.members().iter().find(|m| m.id() == id).map_or_else(
                || Self::member_node_id("", id),
                |m| Self::member_node_id(m.name(), id),
            )
        };
        let me = status
            .header()
            .map_or(0, etcd_client::ResponseHeader::member_id);
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for m in members.members() {
            let id = Self::member_node_id(m.name(), m.id());
            if m.is_learner() {
                learners.push(id);
            } else {
                voters.push(id);
            }
        }
        Ok(ClusterStatus {
            node: name_of(me),
            leader: (status.leader() != 0).then(|| name_of(status.leader())),
            term: status.raft_term(),
            // etcd reads the two indexes one after the other; applied <= committed always.
            commit_index: status.raft_index().max(status.raft_applied_index()),
            applied_index: status.raft_applied_index(),
            voters,
            learners,
            quorum_contact_age: contact.map(|sent| sent.elapsed()),
        })
    }

    async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), CoordError> {
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(CoordError::invalid(format!(
                "etcd needs the new member's peer URL, e.g. http://10.0.0.4:2380; got {addr:?}"
            )));
        }
        let resp = self
            .pool
            .call("member add", Repeat::IfNotSent, |mut c| {
                let addr = addr.clone();
                async move {
                    c.member_add([addr], Some(MemberAddOptions::new().with_is_learner()))
                        .await
                }
            })
            .await?;
        if let (Some(m), Ok(mut added)) = (resp.member(), self.added.lock()) {
            added.insert(node, m.id());
        }
        Ok(())
    }

    async fn promote_voter(&self, node: NodeId) -> Result<(), CoordError> {
        let (id, learner) = self.member_id(&node).await?;
        if !learner {
            return Err(CoordError::UnknownNode {
                node: node.to_string(),
                reason: "it is already a voter (only learners can be promoted)".into(),
            });
        }
        self.pool
            .call("member promote", Repeat::IfNotSent, |mut c| async move {
                c.member_promote(id).await
            })
            .await
            .map_err(|e| admin_error(&node, e))?;
        Ok(())
    }

    async fn remove_node(&self, node: NodeId) -> Result<(), CoordError> {
        let (id, _) = self.member_id(&node).await?;
        self.pool
            .call("member remove", Repeat::IfNotSent, |mut c| async move {
                c.member_remove(id).await
            })
            .await
            .map_err(|e| admin_error(&node, e))?;
        if let Ok(mut added) = self.added.lock() {
            added.remove(&node);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{in_queue, queue_key};

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_of(-1), Duration::ZERO);
    }

    #[test]
    fn member_ids_become_node_ids() {
        assert_eq!(EtcdCoord::member_node_id("etcd-0", 5).as_str(), "etcd-0");
        assert_eq!(EtcdCoord::member_node_id("", 0xabc).as_str(), "abc");
        assert_eq!(EtcdCoord::member_node_id("Bad Name", 0x10).as_str(), "10");
        assert!(in_queue("l/x/", &queue_key("l/", "x", LeaseId(1))));
    }

    #[test]
    fn user_keys_under_the_reserved_prefix_are_refused() {
        let coord = EtcdCoord::new(EtcdConfig::etcd_defaults(["http://127.0.0.1:1"]))
            .expect("valid config");
        assert!(matches!(
            coord.check_user_key("__quorate/lock/x/1"),
            Err(CoordError::InvalidArgument { .. })
        ));
        assert_eq!(coord.check_user_key("app/x"), Ok(()));
        assert!(matches!(
            coord.check_key(&"k".repeat(5000)),
            Err(CoordError::KeyTooLarge { len: 5000, .. })
        ));
    }
}
