//! Locks and elections on etcd, by the documented recipe of etcd's `concurrency` package
//! (the one etcd's own Lock and Election services run): every waiter puts one key
//! `<prefix><name>/<lease in hex>` attached to its lease; the owner is the key with the
//! smallest create revision; waiters are served in create-revision order (FIFO); a waiter
//! watches for the deletion of the keys ahead of it and re-checks its own key (the fix for
//! the bug Jepsen found in etcd 3.4.3's lock).
//!
//! This runs in the client rather than through etcd's Lock/Election RPCs because the
//! contract needs two things those services do not give: a waiter whose future is dropped
//! stays queued (etcd's services delete the waiter key when the RPC is cancelled), and the
//! fencing token is the exact revision of the grant, the same number `quorate-raft` gives:
//! the waiter's create revision if nobody was ahead of it, else the revision of the deletion
//! that removed the last key ahead of it. It is found from etcd's history (a read at the
//! create revision, then a watch from the revision after it). If that history was compacted,
//! the token is the revision of a read that saw the key at the head of its queue, which still
//! lies between this grant and the next, so tokens keep strictly increasing.

use std::collections::BTreeSet;
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use futures::StreamExt;
use quorate_coord_api::{
    Consistency, CoordError, ElectionLeader, EventKind, FencingToken, LeaderKey, LeaseId,
    ObserveStream, Revision,
};

use crate::convert::{self, prefix_end};
use crate::coord::EtcdCoord;
use crate::pool::Repeat;
use crate::watch::Watcher;

/// One waiter of a lock or election queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Waiter {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) create: Revision,
    pub(crate) modified: Revision,
    pub(crate) lease: Option<LeaseId>,
}

/// The key of `lease`'s place in queue `name` (etcd's own layout: lease id in lower-case hex).
pub(crate) fn queue_key(prefix: &str, name: &str, lease: LeaseId) -> String {
    format!("{prefix}{name}/{:x}", lease.0)
}

/// The queue prefix of `name`.
pub(crate) fn queue_prefix(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}/")
}

/// Whether `key` is a waiter of the queue `queue` (not of a deeper name).
pub(crate) fn in_queue(queue: &str, key: &str) -> bool {
    key.strip_prefix(queue)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The name of the queue a waiter key belongs to, if `key` is one under `prefix`.
pub(crate) fn name_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    let (name, lease) = rest.rsplit_once('/')?;
    (!name.is_empty() && !lease.is_empty() && lease.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(name)
}

impl EtcdCoord {
    pub(crate) fn check_queue_name(
        &self,
        what: &str,
        prefix: &str,
        name: &str,
    ) -> Result<(), CoordError> {
        if name.is_empty() {
            return Err(CoordError::invalid(format!(
                "the {what} name is empty: give a name"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(CoordError::invalid(format!(
                "{what} name {name:?} contains a control character: use printable characters"
            )));
        }
        self.check_key(&queue_key(prefix, name, LeaseId(u64::MAX)))
    }

    /// The waiters of `queue` in queue order, and the revision read.
    pub(crate) async fn read_queue(
        &self,
        queue: &str,
        at: Option<Revision>,
        consistency: Consistency,
    ) -> Result<(Revision, Vec<Waiter>), CoordError> {
        let max = self.pool.config().queue_keys_max.get();
        let start = queue.as_bytes().to_vec();
        let end = prefix_end(queue.as_bytes());
        let local = consistency == Consistency::Local;
        let mut resp = self
            .pool
            .call_via("read lock/election queue", Repeat::Safe, local, |mut c| {
                let (start, end) = (start.clone(), end.clone());
                async move {
                    let mut opts = GetOptions::new()
                        .with_range(end)
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(i64::from(max));
                    if consistency == Consistency::Local {
                        opts = opts.with_serializable();
                    }
                    if let Some(at) = at {
                        opts = opts.with_revision(convert::rev_i64(at));
                    }
                    c.get(start, Some(opts)).await
                }
            })
            .await?;
        if resp.more() {
            return Err(CoordError::ResourceExhausted {
                what: format!("waiters of {queue:?} read at once (queue_keys_max)"),
                max: u64::from(max),
            });
        }
        let revision = convert::header_rev(resp.header());
        let mut waiters = Vec::new();
        for k in resp.take_kvs() {
            let kv = convert::kv(&k)?;
            if in_queue(queue, &kv.key) {
                waiters.push(Waiter {
                    key: kv.key,
                    value: kv.value,
                    create: kv.create_revision,
                    modified: kv.mod_revision,
                    lease: kv.lease,
                });
            }
        }
        Ok((revision, waiters))
    }

    /// Puts `lease`'s waiter key in queue `name` unless it is there already. Returns the key,
    /// its create revision and, when known, the keys ahead of it at that revision.
    pub(crate) async fn enqueue(
        &self,
        prefix: &str,
        name: &str,
        lease: LeaseId,
        value: Vec<u8>,
        update_value: bool,
    ) -> Result<(String, Revision, Option<BTreeSet<String>>), CoordError> {
        let lease_id = convert::lease_i64(lease)?;
        let queue = queue_prefix(prefix, name);
        let key = queue_key(prefix, name, lease);
        let max = self.pool.config().queue_keys_max.get();
        let resp = self
            .pool
            .call("enqueue", Repeat::IfNotSent, |mut c| {
                let (key, queue, value) = (key.clone(), queue.clone(), value.clone());
                async move {
                    let end = prefix_end(queue.as_bytes());
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([
                            TxnOp::put(
                                key.clone(),
                                value,
                                Some(PutOptions::new().with_lease(lease_id)),
                            ),
                            TxnOp::get(
                                queue,
                                Some(
                                    GetOptions::new()
                                        .with_range(end)
                                        .with_keys_only()
                                        .with_limit(i64::from(max)),
                                ),
                            ),
                        ])
                        .or_else([TxnOp::get(key, None)]);
                    c.txn(txn).await
                }
            })
            .await
            .map_err(|e| self.lease_error(e, lease))?;
        let revision = convert::header_rev(resp.header());
        let results = resp.op_responses();
        if resp.succeeded() {
            let Some(etcd_client::TxnOpResponse::Get(range)) = results.get(1) else {
                return Err(internal("enqueue: etcd sent no range result"));
            };
            if range.more() {
                return Err(CoordError::ResourceExhausted {
                    what: format!("waiters of {queue:?} read at once (queue_keys_max)"),
                    max: u64::from(max),
                });
            }
            let mut ahead = BTreeSet::new();
            for k in range.kvs() {
                let k = convert::key_string(k.key())?;
                if k != key && in_queue(&queue, &k) {
                    ahead.insert(k);
                }
            }
            return Ok((key, revision, Some(ahead)));
        }
        // Already queued (a retry, or a campaign again): resume the same place.
        let Some(etcd_client::TxnOpResponse::Get(get)) = results.first() else {
            return Err(internal("enqueue: etcd sent no get result"));
        };
        let Some(existing) = convert::kv_opt(get.kvs().first())? else {
            return Err(internal("enqueue: the key was neither absent nor present"));
        };
        let create = existing.create_revision;
        if update_value && existing.value != value {
            self.put_if_created_at(&key, create, value, lease, None)
                .await?;
        }
        let ahead = match self
            .read_queue(&queue, Some(create), Consistency::Linearizable)
            .await
        {
            Ok((_, waiters)) => Some(
                waiters
                    .into_iter()
                    .filter(|w| w.create < create)
                    .map(|w| w.key)
                    .collect(),
            ),
            Err(CoordError::Compacted { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok((key, create, ahead))
    }

    /// Writes `value` to `key` if it still has create revision `create` and, when `queue` is
    /// given, nothing in that queue is older (it leads). Returns the write's revision.
    pub(crate) async fn put_if_created_at(
        &self,
        key: &str,
        create: Revision,
        value: Vec<u8>,
        lease: LeaseId,
        queue: Option<&str>,
    ) -> Result<Option<Revision>, CoordError> {
        let lease_id = convert::lease_i64(lease)?;
        let resp = self
            .pool
            .call("proclaim", Repeat::Safe, |mut c| {
                let (key, value) = (key.to_owned(), value.clone());
                let queue = queue.map(str::to_owned);
                async move {
                    let mut when = vec![Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        convert::rev_i64(create),
                    )];
                    if let Some(queue) = queue {
                        // Every waiter of the queue is at least as young: this key leads.
                        let end = prefix_end(queue.as_bytes());
                        when.push(
                            Compare::create_revision(
                                queue,
                                CompareOp::Greater,
                                convert::rev_i64(create) - 1,
                            )
                            .with_range(end),
                        );
                    }
                    let txn = Txn::new().when(when).and_then([TxnOp::put(
                        key,
                        value,
                        Some(PutOptions::new().with_lease(lease_id)),
                    )]);
                    c.txn(txn).await
                }
            })
            .await
            .map_err(|e| self.lease_error(e, lease))?;
        Ok(resp.succeeded().then(|| convert::header_rev(resp.header())))
    }

    /// Deletes `key` if it still has create revision `create`. Returns the revision.
    pub(crate) async fn delete_if_created_at(
        &self,
        key: &str,
        create: Revision,
    ) -> Result<Revision, CoordError> {
        let resp = self
            .pool
            .call("dequeue", Repeat::Safe, |mut c| {
                let key = key.to_owned();
                async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            convert::rev_i64(create),
                        )])
                        .and_then([TxnOp::delete(key, None)]);
                    c.txn(txn).await
                }
            })
            .await?;
        Ok(convert::header_rev(resp.header()))
    }

    /// Waits until `key` (created at `create`) heads `queue`; returns the grant revision.
    /// `ahead`: the keys ahead of it at revision `create`, if known.
    pub(crate) async fn wait_grant(
        &self,
        queue: &str,
        key: &str,
        create: Revision,
        lease: Option<LeaseId>,
        ahead: Option<BTreeSet<String>>,
    ) -> Result<Revision, CoordError> {
        match ahead {
            Some(a) if a.is_empty() => Ok(create),
            Some(a) => match self
                .wait_grant_from(queue, key, lease, create.next(), a)
                .await
            {
                Err(CoordError::Compacted { .. }) => {
                    self.wait_grant_now(queue, key, create, lease).await
                }
                r => r,
            },
            None => self.wait_grant_now(queue, key, create, lease).await,
        }
    }

    /// `wait_grant` without history: from a fresh read of the queue.
    async fn wait_grant_now(
        &self,
        queue: &str,
        key: &str,
        create: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Revision, CoordError> {
        match self.ahead_now(queue, key, create, lease).await? {
            Ok(head_at) => Ok(head_at),
            Err((from, ahead)) => self.wait_grant_from(queue, key, lease, from, ahead).await,
        }
    }

    /// Watches `queue` from `from` until every key in `ahead` is deleted (the grant) or `key`
    /// is (the waiter is gone).
    async fn wait_grant_from(
        &self,
        queue: &str,
        key: &str,
        lease: Option<LeaseId>,
        from: Revision,
        mut ahead: BTreeSet<String>,
    ) -> Result<Revision, CoordError> {
        let mut watcher = Watcher::open(Arc::clone(&self.pool), queue, Some(from)).await?;
        loop {
            for ev in watcher.next_batch().await? {
                if ev.kind != EventKind::Delete {
                    continue;
                }
                if ev.kv.key == key {
                    return Err(self.waiter_gone(key, lease).await);
                }
                if ahead.remove(&ev.kv.key) && ahead.is_empty() {
                    return Ok(ev.revision());
                }
            }
        }
    }

    /// Reads the queue now: `Ok(revision)` if `key` heads it, else `Err((next revision, keys
    /// ahead))`.
    #[allow(clippy::type_complexity, reason = "a private two-way result")]
    async fn ahead_now(
        &self,
        queue: &str,
        key: &str,
        create: Revision,
        lease: Option<LeaseId>,
    ) -> Result<Result<Revision, (Revision, BTreeSet<String>)>, CoordError> {
        let (at, waiters) = self
            .read_queue(queue, None, Consistency::Linearizable)
            .await?;
        if !waiters.iter().any(|w| w.key == key) {
            return Err(self.waiter_gone(key, lease).await);
        }
        let ahead: BTreeSet<String> = waiters
            .into_iter()
            .filter(|w| w.create < create)
            .map(|w| w.key)
            .collect();
        Ok(if ahead.is_empty() {
            Ok(at)
        } else {
            Err((at.next(), ahead))
        })
    }

    /// The error for a waiter whose key vanished while it waited.
    async fn waiter_gone(&self, key: &str, lease: Option<LeaseId>) -> CoordError {
        if let Some(lease) = lease {
            match self.lease_alive(lease).await {
                Ok(false) => return self.leases.missing(lease),
                Ok(true) => {}
                Err(e) => return e,
            }
        }
        CoordError::NotHolder {
            key: key.to_owned(),
            reason: "its waiter key was deleted while it waited (unlocked or resigned elsewhere)"
                .into(),
        }
    }

    /// The head of `queue` with its grant revision, if any.
    pub(crate) async fn holder(
        &self,
        queue: &str,
        consistency: Consistency,
    ) -> Result<Option<(Waiter, Revision)>, CoordError> {
        let (at, waiters) = self.read_queue(queue, None, consistency).await?;
        let Some(head) = waiters.into_iter().next() else {
            return Ok(None);
        };
        let token = self.head_token(queue, &head, at).await?;
        Ok(Some((head, token)))
    }

    /// The grant revision of `head`, known to head its queue at revision `at`. Every deletion
    /// it waited for is in etcd's history, so this does not wait for anything new; if the
    /// history is gone (or slow), `at` is used (see the module docs).
    async fn head_token(
        &self,
        queue: &str,
        head: &Waiter,
        at: Revision,
    ) -> Result<Revision, CoordError> {
        let ahead = match self
            .read_queue(queue, Some(head.create), Consistency::Linearizable)
            .await
        {
            Ok((_, waiters)) => waiters
                .into_iter()
                .filter(|w| w.create < head.create)
                .map(|w| w.key)
                .collect::<BTreeSet<_>>(),
            Err(CoordError::Compacted { .. }) => return Ok(at),
            Err(e) => return Err(e),
        };
        if ahead.is_empty() {
            return Ok(head.create);
        }
        let wait = self.pool.config().request_timeout;
        let found = tokio::time::timeout(
            wait,
            self.wait_grant_from(queue, &head.key, None, head.create.next(), ahead),
        )
        .await;
        match found {
            Ok(Ok(token)) if token <= at => Ok(token),
            Ok(Err(e))
                if !matches!(
                    e,
                    CoordError::Compacted { .. } | CoordError::NotHolder { .. }
                ) =>
            {
                Err(e)
            }
            _ => Ok(at),
        }
    }

    /// Streams the leadership of `election`: the state now, then every change.
    pub(crate) async fn observe_queue(&self, election: &str) -> Result<ObserveStream, CoordError> {
        let queue = queue_prefix(&self.pool.config().election_prefix, election);
        let (at, waiters) = self
            .read_queue(&queue, None, Consistency::Linearizable)
            .await?;
        let first = match waiters.first() {
            Some(head) => {
                let token = self.head_token(&queue, head, at).await?;
                Some(election_leader(election, head, token))
            }
            None => None,
        };
        let watcher = Watcher::open(Arc::clone(&self.pool), &queue, Some(at.next())).await?;
        let state = Observe {
            watcher,
            queue,
            waiters,
            last: first.clone(),
            pending: std::collections::VecDeque::from([first]),
            done: false,
            election: election.to_owned(),
        };
        Ok(futures::stream::unfold(state, |mut s| async move {
            if s.done {
                return None;
            }
            loop {
                if let Some(item) = s.pending.pop_front() {
                    return Some((Ok(item), s));
                }
                if let Err(e) = s.step().await {
                    s.done = true;
                    return Some((Err(e), s));
                }
            }
        })
        .boxed())
    }
}

/// A [`LeaderKey`] for an election head.
pub(crate) fn leader_key(election: &str, head: &Waiter, token: Revision) -> LeaderKey {
    LeaderKey {
        election: election.to_owned(),
        key: head.key.clone(),
        lease: head.lease.unwrap_or(LeaseId(0)),
        create_revision: head.create,
        token: FencingToken(token.0),
    }
}

/// The [`ElectionLeader`] for an election head.
pub(crate) fn election_leader(election: &str, head: &Waiter, token: Revision) -> ElectionLeader {
    ElectionLeader {
        key: leader_key(election, head, token),
        value: head.value.clone(),
        mod_revision: head.modified,
    }
}

/// The state of an observe stream: the queue as last seen and what to emit.
struct Observe {
    watcher: Watcher,
    queue: String,
    waiters: Vec<Waiter>,
    last: Option<ElectionLeader>,
    pending: std::collections::VecDeque<Option<ElectionLeader>>,
    done: bool,
    election: String,
}

impl Observe {
    /// Applies the next etcd response; queues an item per revision that changed leadership.
    async fn step(&mut self) -> Result<(), CoordError> {
        let batch = self.watcher.next_batch().await?;
        let mut i = 0;
        while i < batch.len() {
            let at = batch[i].revision();
            while i < batch.len() && batch[i].revision() == at {
                let ev = &batch[i];
                i += 1;
                if !in_queue(&self.queue, &ev.kv.key) {
                    continue;
                }
                match ev.kind {
                    EventKind::Delete => self.waiters.retain(|w| w.key != ev.kv.key),
                    EventKind::Put => {
                        if let Some(w) = self.waiters.iter_mut().find(|w| w.key == ev.kv.key) {
                            w.value = ev.kv.value.clone();
                            w.modified = ev.kv.mod_revision;
                            w.lease = ev.kv.lease;
                        } else {
                            self.waiters.push(Waiter {
                                key: ev.kv.key.clone(),
                                value: ev.kv.value.clone(),
                                create: ev.kv.create_revision,
                                modified: ev.kv.mod_revision,
                                lease: ev.kv.lease,
                            });
                            self.waiters.sort_by_key(|w| w.create);
                        }
                    }
                }
            }
            let now = match self.waiters.first() {
                None => None,
                Some(head) => {
                    let token = match &self.last {
                        Some(l)
                            if l.key.key == head.key && l.key.create_revision == head.create =>
                        {
                            Revision(l.key.token.0)
                        }
                        // It became the head at this revision.
                        _ => at,
                    };
                    Some(election_leader(&self.election, head, token))
                }
            };
            if now != self.last {
                self.last = now.clone();
                self.pending.push_back(now);
            }
        }
        Ok(())
    }
}

fn internal(reason: &str) -> CoordError {
    CoordError::Internal {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_follow_etcds_layout() {
        let k = queue_key("__quorate/lock/", "jobs", LeaseId(0x694d_7e3a_11f0));
        assert_eq!(k, "__quorate/lock/jobs/694d7e3a11f0");
        assert!(in_queue("__quorate/lock/jobs/", &k));
        assert!(!in_queue(
            "__quorate/lock/jobs/",
            "__quorate/lock/jobs/sub/12"
        ));
        assert!(!in_queue("__quorate/lock/jo/", &k));
        assert_eq!(name_of("__quorate/lock/", &k), Some("jobs"));
        assert_eq!(
            name_of("__quorate/lock/", "__quorate/lock/a/b/ff"),
            Some("a/b")
        );
        assert_eq!(name_of("__quorate/lock/", "user/key"), None);
    }
}
