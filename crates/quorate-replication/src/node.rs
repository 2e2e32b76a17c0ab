//! The replication node: one listener, one transport, one redb database, and a router that
//! hands each inbound request to the task of the keyspace it names.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use quorate_types::NodeId;
use quorate_wire::WallClock;
use quorate_wire::net::{Listener, Net};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::disk::ReplicaDb;
use crate::error::ReplicationError;
use crate::msg::{Refusal, Request, Response};
use crate::transport::{Handler, Transport, TransportConfig};

/// Settings of a replication node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeId,
    /// The replication listen address (`host:port`; port 0 picks one).
    pub listen: String,
    /// The replication address of every other node that replicates with this one.
    pub peers: BTreeMap<NodeId, String>,
    /// Transport limits and the cluster's wire settings.
    pub transport: TransportConfig,
    /// Inbound requests queued per keyspace; more are refused as busy.
    pub inbound_queue_max: NonZeroUsize,
}

/// An inbound request with the way to answer it.
pub(crate) struct Inbound {
    pub(crate) req: Request,
    pub(crate) reply: oneshot::Sender<Response>,
}

pub(crate) struct NodeInner<N: Net> {
    pub(crate) config: NodeConfig,
    pub(crate) transport: Arc<Transport<N>>,
    pub(crate) db: ReplicaDb,
    pub(crate) router: Mutex<BTreeMap<String, mpsc::Sender<Inbound>>>,
    pub(crate) wall: WallClock,
    pub(crate) tracker: TaskTracker,
    pub(crate) cancel: CancellationToken,
}

impl<N: Net> NodeInner<N> {
    /// Registers keyspace `name`'s inbound queue.
    pub(crate) fn register(&self, name: &str) -> Result<mpsc::Receiver<Inbound>, ReplicationError> {
        let mut router = self.router.lock().unwrap_or_else(|p| p.into_inner());
        if router.get(name).is_some_and(|tx| !tx.is_closed()) {
            return Err(ReplicationError::Config {
                field: "keyspace name",
                value: 0,
                fix: "a keyspace of this name already runs on this node; declare each once",
            });
        }
        let (tx, rx) = mpsc::channel(self.config.inbound_queue_max.get());
        router.insert(name.to_owned(), tx);
        Ok(rx)
    }

    pub(crate) fn now_ms(&self) -> u64 {
        (self.wall)()
    }
}

struct Router<N: Net> {
    inner: Arc<NodeInner<N>>,
}

impl<N: Net> Handler for Router<N> {
    async fn handle(&self, req: Request) -> Response {
        let tx = {
            let router = self.inner.router.lock().unwrap_or_else(|p| p.into_inner());
            router.get(req.keyspace()).cloned()
        };
        let Some(tx) = tx else {
            return Response::Refused(Refusal::UnknownKeyspace);
        };
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Inbound { req, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Response::Refused(Refusal::Busy),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Response::Refused(Refusal::UnknownKeyspace);
            }
        }
        rx.await.unwrap_or(Response::Refused(Refusal::Invalid(
            "keyspace stopped".to_owned(),
        )))
    }
}

/// A running replication node. Keyspaces are started on it with
/// [`ReplicationNode::multi_master`] and [`ReplicationNode::leader`].
pub struct ReplicationNode<N: Net> {
    pub(crate) inner: Arc<NodeInner<N>>,
    local_addr: SocketAddr,
}

impl<N: Net> std::fmt::Debug for ReplicationNode<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationNode")
            .field("node", &self.inner.config.node)
            .field("addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl<N: Net> ReplicationNode<N> {
    /// Binds the listener and starts serving.
    ///
    /// # Errors
    /// [`ReplicationError::Peer`] when the listen address cannot be bound.
    pub async fn start(
        net: N,
        config: NodeConfig,
        db: ReplicaDb,
    ) -> Result<Self, ReplicationError> {
        let listener = net
            .bind_tcp(&config.listen)
            .await
            .map_err(|e| ReplicationError::Peer {
                peer: config.listen.clone(),
                reason: format!("cannot bind the replication listener: {e}"),
            })?;
        let local_addr = listener.local_addr().map_err(|e| ReplicationError::Peer {
            peer: config.listen.clone(),
            reason: e.to_string(),
        })?;
        let wall = config.transport.wire.wall_clock.clone();
        let transport = Arc::new(Transport::new(net, config.transport.clone()));
        let inner = Arc::new(NodeInner {
            config,
            transport: transport.clone(),
            db,
            router: Mutex::new(BTreeMap::new()),
            wall,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        });
        let handler = Arc::new(Router {
            inner: inner.clone(),
        });
        inner.tracker.spawn(transport.serve(
            listener,
            handler,
            inner.tracker.clone(),
            inner.cancel.clone(),
        ));
        Ok(Self { inner, local_addr })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node.
    pub fn node(&self) -> &NodeId {
        &self.inner.config.node
    }

    /// The transport (for its inbound counters).
    pub fn transport(&self) -> &Transport<N> {
        &self.inner.transport
    }

    /// Stops every keyspace and the listener and waits for their tasks. Acknowledged writes
    /// are already durable; queued pushes and hints are dropped (anti-entropy repairs them).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl<N: Net> Drop for ReplicationNode<N> {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}
