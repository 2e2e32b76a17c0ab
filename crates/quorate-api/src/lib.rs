//! quorate-api: the operator surface of a quorate node, on axum, started as a node stage
//! ([`ApiPlugin`], a [`quorate_startup::Plugin`]).
//!
//! - Probes with Patroni's names and status codes for load balancers and orchestrators:
//!   `/role/{role}/primary`, `/replica` (`?lag=`), `/read-only`, `/health`, `/liveness`,
//!   `/readiness`, and the unscoped `/primary` and `/replica` when the node has one role.
//! - State: `/cluster`, `/roles`, `/history`, `/config` (secrets redacted).
//! - Admin: `POST /role/{role}/switchover`, `/failover`, `/failback`, `/maintenance`, through
//!   the node's shared admin layer ([`quorate_startup::admin::Admin`]: permission, policy,
//!   audit), behind a bearer token.
//! - `/metrics` (OpenMetrics, prometheus-client) and a live dashboard at `/` (server-rendered,
//!   updated over server-sent events).
//! - [`client`]: the HTTP client `quorate ctl` uses; [`ctl`]: its tables.
//!
//! ```no_run
//! # async fn run(config: quorate_startup::config::Validated) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let mut builder = quorate_startup::Node::builder(config.clone());
//! if let Some(api) = quorate_api::ApiPlugin::from_config(&config) {
//!     builder = builder.plugin(Arc::new(api));
//! }
//! let node = builder.start().await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod ctl;
mod dashboard;
mod metrics;
pub mod model;
mod server;
mod tracker;

use std::net::SocketAddr;
use std::sync::Mutex;

use async_trait::async_trait;
use quorate_startup::config::{ApiValidated, Validated};
use quorate_startup::{NodeContext, Plugin};
use quorate_types::Secret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors of the API crate: the server's start and the client's calls.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listen address could not be bound. Nothing started.
    #[error("api: cannot listen on {addr}: {reason} (change [api] listen, or stop what holds it)")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The client could not reach the API (connection refused, timeout). Retryable.
    #[error(
        "cannot reach the quorate API at {url}: {reason} (is the agent running with an [api] section?)"
    )]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API answered with an error; for an admin call nothing changed unless the status is
    /// 503 (then the outcome is unknown).
    #[error("{}: {}", .body.status, .body.message)]
    Status {
        /// The error body.
        body: model::ErrorBody,
    },
    /// The API answered something this client cannot read (a version mismatch?).
    #[error("unexpected answer from {url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// The API's settings: where to listen, the tokens, the limits.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Where it listens (`host:port`; port 0 picks a free one, see [`ApiPlugin::local_addr`]).
    pub listen: String,
    /// The operator token; `None` with auth off (loopback only, checked by the config).
    pub token: Option<Secret>,
    /// The read-only token.
    pub read_token: Option<Secret>,
    /// Whether admin calls need a token.
    pub auth: bool,
    /// The largest request body, in bytes.
    pub body_bytes_max: usize,
    /// Dashboard event streams open at once.
    pub sse_clients_max: usize,
}

impl ApiSettings {
    /// From the validated `[api]` section.
    pub fn from_section(a: &ApiValidated) -> ApiSettings {
        ApiSettings {
            listen: a.section.listen.clone(),
            token: a.token.clone(),
            read_token: a.read_token.clone(),
            auth: a.section.auth,
            body_bytes_max: a.section.body_bytes_max,
            sse_clients_max: a.section.sse_clients_max,
        }
    }
}

struct Running {
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The HTTP API as a node stage (`plugin:api`).
pub struct ApiPlugin {
    settings: ApiSettings,
    bound: Mutex<Option<SocketAddr>>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for ApiPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiPlugin")
            .field("listen", &self.settings.listen)
            .field("auth", &self.settings.auth)
            .finish_non_exhaustive()
    }
}

impl ApiPlugin {
    /// An API with these settings.
    pub fn new(settings: ApiSettings) -> ApiPlugin {
        ApiPlugin {
            settings,
            bound: Mutex::new(None),
            running: Mutex::new(None),
        }
    }

    /// The API the config's `[api]` section describes, if it has one.
    pub fn from_config(v: &Validated) -> Option<ApiPlugin> {
        v.api
            .as_ref()
            .map(|a| ApiPlugin::new(ApiSettings::from_section(a)))
    }

    /// The address it listens on, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Plugin for ApiPlugin {
    fn name(&self) -> &str {
        "api"
    }

    async fn start(&self, node: &NodeContext) -> Result<(), String> {
        let listener = tokio::net::TcpListener::bind(&self.settings.listen)
            .await
            .map_err(|e| {
                ApiError::Bind {
                    addr: self.settings.listen.clone(),
                    reason: e.to_string(),
                }
                .to_string()
            })?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = server::AppState::new(node.clone(), self.settings.clone(), &tasks, &cancel);
        let app = server::router(state);
        let stop = cancel.clone();
        // The server runs on a runtime of its own: a flood of probe or scrape requests then
        // queues behind its own workers, not in front of the node's Raft, lease and failover
        // tasks (measured: 64 connections probing every node moved the kill -9 failover
        // median by +13 % when they shared the node's runtime).
        let listener = listener.into_std().map_err(|e| e.to_string())?;
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 4)
            .clamp(1, 4);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("quorate-api")
            .enable_all()
            .build()
            .map_err(|e| format!("api: starting its runtime: {e}"))?;
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("quorate-api".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "api: the listener");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                        stop.cancelled().await;
                    });
                    if let Err(e) = serve.await {
                        tracing::warn!(error = %e, "api: the server stopped");
                    }
                });
                // Requests still running (an event stream) end with the runtime.
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                let _ = ended_tx.send(());
            })
            .map_err(|e| format!("api: starting its thread: {e}"))?;
        tasks.spawn(async move {
            let _ = ended_rx.await;
        });
        tracing::info!(%addr, "api: listening");
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        *self.running.lock().unwrap_or_else(|e| e.into_inner()) = Some(Running { cancel, tasks });
        Ok(())
    }

    async fn stop(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = running {
            r.cancel.cancel();
            r.tasks.close();
            // Open event streams end with the cancellation; bound the wait anyway.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), r.tasks.wait()).await;
        }
    }
}
