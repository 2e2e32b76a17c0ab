//! A remote client of a quorate-raft cluster over the same authenticated transport: proposes
//! commands and reads keys linearizably, following `NotLeader` hints and rotating over the
//! nodes it knows. Used by the simulation scenarios and the benchmark; the API layer may use it
//! for a `quorate ctl` later.

use std::sync::Arc;
use std::time::Duration;

use quorate_coord_api::{CoordError, KeyValue};
use quorate_wire::net::Net;

use crate::machine::{Command, Outcome};
use crate::network::{CallError, Request, Response, Transport, TransportConfig};

/// A client of a cluster whose nodes listen on `addrs`.
pub struct RemoteClient<N: Net> {
    transport: Arc<Transport<N>>,
    addrs: Vec<String>,
    /// Index into `addrs` of the node tried first.
    current: usize,
    timeout: Duration,
}

impl<N: Net> std::fmt::Debug for RemoteClient<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("addrs", &self.addrs)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl<N: Net> RemoteClient<N> {
    /// A client of the nodes at `addrs`, each call bounded by `config.rpc_timeout`.
    pub fn new(net: N, config: TransportConfig, addrs: Vec<String>) -> Self {
        let timeout = config.rpc_timeout;
        Self {
            transport: Arc::new(Transport::new(net, config)),
            addrs,
            current: 0,
            timeout,
        }
    }

    /// The node tried first (the last one that answered).
    pub fn current(&self) -> Option<&str> {
        self.addrs.get(self.current).map(String::as_str)
    }

    /// One attempt at the current node. Errors: the node's own `CoordError`s; a call that may
    /// have reached the node but got no answer is `Timeout` (unknown outcome); a call that
    /// certainly did not reach it is `Unavailable`.
    async fn call(&mut self, req: &Request) -> Result<Response, CoordError> {
        let addr = self
            .addrs
            .get(self.current)
            .cloned()
            .ok_or_else(|| CoordError::invalid("RemoteClient has no node addresses"))?;
        match self.transport.call(&addr, req, Some(self.timeout)).await {
            Ok(r) => Ok(r),
            Err(CallError::Unreachable { reason, .. }) => Err(CoordError::Unavailable {
                reason: format!("{addr}: {reason}"),
            }),
            Err(CallError::TooLarge { source, .. }) => Err(CoordError::invalid(source.to_string())),
            Err(e) => Err(CoordError::Timeout {
                what: e.to_string(),
            }),
        }
    }

    fn follow(&mut self, e: &CoordError) {
        let hinted = match e {
            CoordError::NotLeader {
                leader_addr: Some(a),
                ..
            } => self.addrs.iter().position(|x| x == a),
            _ => None,
        };
        self.current = hinted.unwrap_or((self.current + 1) % self.addrs.len().max(1));
    }

    /// Proposes `cmd`, trying up to `attempts` nodes. Only errors that prove nothing happened
    /// (`NotLeader`, `NoQuorum`, `Unavailable`) move on to another node; a `Timeout` is
    /// returned at once, since the command may have been applied, but the next call starts at
    /// another node (the one that timed out may be hung, and would cost every call the full
    /// timeout).
    pub async fn propose(
        &mut self,
        cmd: &Command,
        attempts: usize,
    ) -> Result<(u64, Outcome), CoordError> {
        let mut last = CoordError::Unavailable {
            reason: "no attempt made".to_owned(),
        };
        let req = Request::Propose(cmd.clone());
        for _ in 0..attempts.max(1) {
            let r = match self.call(&req).await {
                Ok(Response::Propose(r)) => r,
                Ok(_) => Err(CoordError::Internal {
                    reason: "wrong response type".to_owned(),
                }),
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_retryable() && !e.outcome_unknown() => {
                    self.follow(&e);
                    last = e;
                }
                Err(e @ CoordError::Timeout { .. }) => {
                    self.follow(&e);
                    return Err(e);
                }
                other => return other,
            }
        }
        Err(last)
    }

    /// Reads `key` linearizably (any node; followers use a read index), trying up to
    /// `attempts` nodes. Returns the revision read at and the key.
    pub async fn get(
        &mut self,
        key: &str,
        attempts: usize,
    ) -> Result<(u64, Option<KeyValue>), CoordError> {
        let mut last = CoordError::Unavailable {
            reason: "no attempt made".to_owned(),
        };
        let req = Request::Get(key.to_owned());
        for _ in 0..attempts.max(1) {
            let r = match self.call(&req).await {
                Ok(Response::Get(r)) => r,
                Ok(_) => Err(CoordError::Internal {
                    reason: "wrong response type".to_owned(),
                }),
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_retryable() => {
                    self.follow(&e);
                    last = e;
                }
                other => return other,
            }
        }
        Err(last)
    }
}
