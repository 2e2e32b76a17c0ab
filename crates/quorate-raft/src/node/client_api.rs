//! The node's answers to remote client requests ([`ClientRequest`], kind `KIND_CLIENT_REQ`):
//! writes are proposed here if this node leads (else `NotLeader` names the leader; never
//! forwarded), reads are served by any node (a linearizable one after a read-index barrier),
//! and watch polls are answered from this node's applied history, held up to the asked wait
//! when there is nothing new. Every request is validated against the node's limits first; a
//! bad one gets a `CoordError`, nothing else happens.

use std::time::Duration;

use quorate_coord_api::{
    Consistency, CoordError, GetResponse, LeaseInfo, RangeResponse, Revision, TxnOp,
};
use quorate_wire::net::Net;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Core, Local};
use crate::backend::{election_leader, lock_grant};
use crate::machine::{ELECTION_PREFIX, LOCK_PREFIX, Machine, QUEUE_NAME_BYTES_MAX};
use crate::network::{ClientRequest, ClientResponse, ClientWrite, WatchBatch, WatchPoll};

/// Room left in a response frame for everything but the payload of keys and events.
const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

impl<N: Net> Core<N> {
    /// Answers one request of a client holding a client key (not the cluster key): reads,
    /// watches and writes of the application's own keys, locks and elections; never a
    /// membership change, a key under [`NodeConfig::client_protected_prefixes`](super::NodeConfig)
    /// (the cluster's own components' keys: failover roles, manual operations, Telegram
    /// offsets), a lock or election so named, or the lease holding one. Refusals are
    /// `PermissionDenied`; nothing changes.
    pub(super) async fn handle_as_client_key(
        &self,
        req: ClientRequest,
    ) -> Result<ClientResponse, CoordError> {
        client_key_may(&req, &self.client_protected)?;
        if let ClientRequest::Write(
            ClientWrite::LeaseRevoke { id } | ClientWrite::LeaseKeepAlive { id },
        ) = &req
        {
            // Read on this node: a write is proposed only here, on the leader, so this is
            // the state the write would meet (a lease gaining a protected key in between
            // needs the cluster key; see docs/security.md).
            let st = self.sm.lock();
            if let Some(l) = st.machine.lease(*id)
                && let Some(k) = l.keys.iter().find(|k| protected(k, &self.client_protected))
            {
                return Err(denied(format!(
                    "{id} holds {k:?}, a key of the cluster's own components"
                )));
            }
        }
        self.handle_client(req).await
    }

    /// Answers one remote client request.
    pub(super) async fn handle_client(
        &self,
        req: ClientRequest,
    ) -> Result<ClientResponse, CoordError> {
        match req {
            ClientRequest::Write(w) => {
                self.check_write(&w)?;
                let cmd = w.into_command();
                self.check_size(&cmd)?;
                match self.propose_local(cmd).await {
                    Local::Done(r) => {
                        r.map(|(index, outcome)| ClientResponse::Written(index, outcome))
                    }
                    Local::Forward(l) => Err(self.not_leader(l.as_ref())),
                }
            }
            ClientRequest::Get { key, consistency } => {
                self.check_key(&key)?;
                self.read_machine(consistency, move |m| {
                    ClientResponse::Get(GetResponse {
                        revision: m.revision(),
                        kv: m.get(&key).cloned(),
                    })
                })
                .await
            }
            ClientRequest::Range(req) => {
                self.check_key(&req.prefix)?;
                if let Some(after) = &req.start_after {
                    self.check_key(after)?;
                }
                let budget = self.response_bytes_max();
                self.read_machine(req.consistency, move |m| {
                    let (mut kvs, mut more) =
                        m.range(&req.prefix, req.start_after.as_deref(), req.limit);
                    // Keep the answer within one frame: fewer keys, and `more` says so.
                    let mut bytes = 0usize;
                    let mut fit = kvs.len();
                    for (i, kv) in kvs.iter().enumerate() {
                        bytes = bytes.saturating_add(
                            postcard::experimental::serialized_size(kv).unwrap_or(usize::MAX),
                        );
                        if i > 0 && bytes > budget {
                            fit = i;
                            break;
                        }
                    }
                    if fit < kvs.len() {
                        kvs.truncate(fit);
                        more = true;
                    }
                    ClientResponse::Range(RangeResponse {
                        revision: m.revision(),
                        kvs,
                        more,
                    })
                })
                .await
            }
            ClientRequest::LeaseTimeToLive { id } => {
                let (ttl_ms, keys) = self
                    .read_machine(Consistency::Linearizable, move |m| match m.lease(id) {
                        Some(l) => Ok((l.ttl_ms, l.keys.iter().cloned().collect::<Vec<_>>())),
                        None => Err(m.lease_error(id)),
                    })
                    .await??;
                let remaining = {
                    let st = self.sm.lock();
                    st.lease_clock.remaining(id)
                };
                Ok(ClientResponse::LeaseInfo(LeaseInfo {
                    id,
                    granted_ttl: Duration::from_millis(ttl_ms),
                    remaining: remaining.unwrap_or(Duration::from_millis(ttl_ms)),
                    keys,
                }))
            }
            ClientRequest::Position { key, lease } => {
                self.check_key(&key)?;
                if !(key.starts_with(LOCK_PREFIX) || key.starts_with(ELECTION_PREFIX)) {
                    return Err(CoordError::invalid(format!(
                        "{key:?} is not a lock or election queue key (they start with {LOCK_PREFIX:?} or {ELECTION_PREFIX:?})"
                    )));
                }
                let (rev, pos) = self
                    .read_machine(Consistency::Linearizable, move |m| {
                        m.position(&key)
                            .map(|p| (m.revision(), p))
                            .ok_or_else(|| m.lease_error(lease))
                    })
                    .await??;
                Ok(ClientResponse::Position(rev, pos))
            }
            ClientRequest::LockHolder { name, consistency } => {
                check_name("lock", &name)?;
                self.read_machine(consistency, move |m| {
                    ClientResponse::LockHolder(m.lock_holder(&name).and_then(|pos| {
                        let token = pos.token?;
                        Some(lock_grant(&name, pos, token))
                    }))
                })
                .await
            }
            ClientRequest::Leader { election } => {
                check_name("election", &election)?;
                self.read_machine(Consistency::Linearizable, move |m| {
                    ClientResponse::Leader(m.revision(), election_leader(m, &election))
                })
                .await
            }
            ClientRequest::WatchPoll(p) => self.watch_poll(p).await.map(ClientResponse::Watch),
            ClientRequest::Status => Ok(ClientResponse::Status(self.status())),
            ClientRequest::Capabilities => Ok(ClientResponse::Capabilities(self.capabilities())),
            ClientRequest::Admin(a) => match self.admin_local(&a).await {
                Local::Done(r) => r.map(|()| ClientResponse::Admin),
                Local::Forward(l) => Err(self.not_leader(l.as_ref())),
            },
        }
    }

    /// The most payload bytes (keys, events) one client response carries.
    fn response_bytes_max(&self) -> usize {
        (self.limits.frame_bytes_max.get() as usize).saturating_sub(FRAME_OVERHEAD_BYTES)
    }

    fn check_key(&self, key: &str) -> Result<(), CoordError> {
        let max = self.machine_limits.key_bytes_max;
        if key.len() > max {
            return Err(CoordError::KeyTooLarge {
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CoordError> {
        let max = self.machine_limits.value_bytes_max;
        if value.len() > max {
            return Err(CoordError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// Size checks before a write reaches the log (the machine checks the rest).
    fn check_write(&self, w: &ClientWrite) -> Result<(), CoordError> {
        match w {
            ClientWrite::Put { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            ClientWrite::Delete { key } | ClientWrite::Unlock { key, .. } => self.check_key(key),
            ClientWrite::Resign { key, .. } => self.check_key(key),
            ClientWrite::Proclaim { key, value, .. } => {
                self.check_key(key)?;
                self.check_value(value)
            }
            ClientWrite::Campaign {
                election, value, ..
            } => {
                check_name("election", election)?;
                self.check_value(value)
            }
            ClientWrite::Lock { name, .. } => check_name("lock", name),
            ClientWrite::Txn(t) => {
                let ops = t.compares.len() + t.success.len() + t.failure.len();
                if ops > self.machine_limits.txn_ops_max {
                    return Err(CoordError::invalid(format!(
                        "transaction has {ops} compares and operations; the limit txn_ops_max is {}: split it",
                        self.machine_limits.txn_ops_max
                    )));
                }
                for op in t.success.iter().chain(&t.failure) {
                    if let TxnOp::Put { key, value, .. } = op {
                        self.check_key(key)?;
                        self.check_value(value)?;
                    }
                }
                Ok(())
            }
            ClientWrite::LeaseGrant { .. }
            | ClientWrite::LeaseKeepAlive { .. }
            | ClientWrite::LeaseRevoke { .. } => Ok(()),
        }
    }

    /// Runs `f` on the applied machine, after a linearizable barrier when asked.
    async fn read_machine<R>(
        &self,
        consistency: Consistency,
        f: impl FnOnce(&Machine) -> R,
    ) -> Result<R, CoordError> {
        if consistency == Consistency::Linearizable {
            self.linearizable_barrier().await?;
        }
        let st = self.sm.lock();
        Ok(f(&st.machine))
    }

    /// One watch long-poll: the events from the asked point on, at once if there are any,
    /// else when one is applied, else an empty batch when the wait runs out (after a read
    /// barrier that fails on a node cut off from the majority).
    async fn watch_poll(&self, p: WatchPoll) -> Result<WatchBatch, CoordError> {
        self.check_key(&p.prefix)?;
        let events_max = self.limits.watch_events_max.get();
        if p.max_events == 0 || p.max_events > events_max {
            return Err(CoordError::invalid(format!(
                "watch poll max_events = {} is outside 1..={events_max} (watch_events_max)",
                p.max_events
            )));
        }
        if p.wait > self.limits.watch_wait_max {
            return Err(CoordError::invalid(format!(
                "watch poll wait = {:?} exceeds the node's watch_wait_max = {:?}: ask for less and poll again",
                p.wait, self.limits.watch_wait_max
            )));
        }
        if p.from_revision == Revision(0) {
            return Err(CoordError::invalid(
                "watch poll from_revision = 0: revisions start at 1 (watch from the revision after a read)",
            ));
        }
        // Subscribe before reading, so nothing applied in between is missed.
        let mut rx = self.sm.subscribe();
        let deadline = Instant::now() + p.wait;
        let mut held = None;
        loop {
            let batch = {
                let st = self.sm.lock();
                let m = &st.machine;
                WatchBatch {
                    events: m.history_page(
                        &p.prefix,
                        p.from_revision,
                        p.skip,
                        p.max_events as usize,
                        self.response_bytes_max(),
                    )?,
                    revision: m.revision(),
                }
            };
            if !batch.events.is_empty() {
                return Ok(batch);
            }
            if Instant::now() >= deadline {
                if held.is_some() {
                    // Nothing came for a whole hold: prove this node is still with the
                    // majority, so a watcher of a cut-off node moves on (NotLeader/NoQuorum)
                    // rather than wait here for events that are applied elsewhere.
                    drop(held);
                    self.linearizable_barrier().await?;
                }
                return Ok(batch);
            }
            if held.is_none() {
                let permit = self.watch_holds.clone().try_acquire_owned().map_err(|_| {
                    CoordError::ResourceExhausted {
                        what: "held watch polls on this node (watch_polls_held_max)".to_owned(),
                        max: self.limits.watch_polls_held_max.get() as u64,
                    }
                })?;
                held = Some(permit);
            }
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => break,
                    Ok(Ok(ev)) => {
                        if ev.kv.key.starts_with(&p.prefix) && ev.revision() >= p.from_revision {
                            break;
                        }
                    }
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        return Err(CoordError::Unavailable {
                            reason: "the node is shutting down: poll another node".to_owned(),
                        });
                    }
                }
            }
        }
    }
}

/// Checks a lock or election name's length.
fn check_name(what: &str, name: &str) -> Result<(), CoordError> {
    if name.len() > QUEUE_NAME_BYTES_MAX {
        return Err(CoordError::invalid(format!(
            "{what} name of {} bytes exceeds the limit of {QUEUE_NAME_BYTES_MAX} bytes: use a shorter name",
            name.len()
        )));
    }
    Ok(())
}

fn denied(what: String) -> CoordError {
    CoordError::PermissionDenied {
        reason: format!("{what}: a client key may not change it (only the cluster key may)"),
    }
}

/// The name of a lock or election whose queue key `key` is, if it is one.
fn queue_name(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix(LOCK_PREFIX)
        .or_else(|| key.strip_prefix(ELECTION_PREFIX))?;
    rest.rsplit_once('/').map(|(name, _)| name)
}

/// Whether `key` belongs to the cluster's own components: under a protected prefix, or the
/// queue key of a lock or election whose name is.
fn protected(key: &str, prefixes: &[String]) -> bool {
    let name = queue_name(key).unwrap_or(key);
    prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

/// What a client key may not ask for, decided on the request alone (the lease rule needs the
/// machine: [`Core::handle_as_client_key`]).
fn client_key_may(req: &ClientRequest, prefixes: &[String]) -> Result<(), CoordError> {
    let key = |k: &str| {
        if protected(k, prefixes) {
            Err(denied(format!(
                "{k:?} is a key of the cluster's own components"
            )))
        } else {
            Ok(())
        }
    };
    match req {
        ClientRequest::Admin(_) => Err(denied("a membership change".to_owned())),
        ClientRequest::Write(w) => match w {
            ClientWrite::Put { key: k, .. } | ClientWrite::Delete { key: k } => key(k),
            ClientWrite::Unlock { key: k, .. }
            | ClientWrite::Resign { key: k, .. }
            | ClientWrite::Proclaim { key: k, .. } => key(k),
            ClientWrite::Campaign { election: n, .. } | ClientWrite::Lock { name: n, .. } => key(n),
            ClientWrite::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .try_for_each(|op| match op {
                    TxnOp::Put { key: k, .. } | TxnOp::Delete { key: k } => key(k),
                    TxnOp::Get { .. } | TxnOp::Range { .. } => Ok(()),
                }),
            ClientWrite::LeaseGrant { .. }
            | ClientWrite::LeaseKeepAlive { .. }
            | ClientWrite::LeaseRevoke { .. } => Ok(()),
        },
        ClientRequest::Get { .. }
        | ClientRequest::Range(_)
        | ClientRequest::LeaseTimeToLive { .. }
        | ClientRequest::Position { .. }
        | ClientRequest::LockHolder { .. }
        | ClientRequest::Leader { .. }
        | ClientRequest::WatchPoll(_)
        | ClientRequest::Status
        | ClientRequest::Capabilities => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes() -> Vec<String> {
        vec!["quorate/".to_owned()]
    }

    #[test]
    fn queue_keys_are_protected_by_their_name() {
        let p = prefixes();
        assert!(protected("quorate/failover/ops/db/request", &p));
        assert!(protected(
            "__quorate/election/quorate/failover/election/db/00000000000000ff",
            &p
        ));
        assert!(protected("__quorate/lock/quorate/x/00000000000000ff", &p));
        assert!(!protected("__quorate/lock/app/jobs/00000000000000ff", &p));
        assert!(!protected("app/quorate/x", &p));
        assert!(!protected("quorat", &p));
    }

    #[test]
    fn a_client_key_may_not_change_membership_or_the_clusters_keys() {
        use crate::network::AdminRequest;
        let p = prefixes();
        let put = |k: &str| {
            ClientRequest::Write(ClientWrite::Put {
                key: k.to_owned(),
                value: vec![],
                lease: None,
            })
        };
        assert!(client_key_may(&put("app/x"), &p).is_ok());
        for refused in [
            put("quorate/failover/ops/db/request"),
            ClientRequest::Write(ClientWrite::Campaign {
                election: "quorate/failover/election/db".to_owned(),
                value: vec![],
                lease: quorate_coord_api::LeaseId(1),
            }),
            ClientRequest::Write(ClientWrite::Txn(quorate_coord_api::Txn {
                compares: vec![],
                success: vec![],
                failure: vec![TxnOp::Delete {
                    key: "quorate/telegram/bot/offset".to_owned(),
                }],
            })),
            ClientRequest::Admin(AdminRequest::Remove {
                node: "n1".to_owned(),
            }),
        ] {
            assert!(
                matches!(
                    client_key_may(&refused, &p),
                    Err(CoordError::PermissionDenied { .. })
                ),
                "{refused:?}"
            );
        }
        assert!(
            client_key_may(
                &ClientRequest::Get {
                    key: "quorate/failover/ops/db/request".to_owned(),
                    consistency: Consistency::Linearizable
                },
                &p
            )
            .is_ok(),
            "reads are allowed"
        );
    }
}
