//! The distributed-state benchmark: `quorate-state`'s `Mutex` and `Semaphore` on a real etcd
//! cluster (through `quorate-etcd`) side by side with etcd's own lock recipe (the v3 `Lock`
//! service through `etcd-client`) on the same cluster, in one run:
//!
//! - lock + unlock cycles/s with 1 client, and with N clients (16 in the full run) on one lock;
//! - hand-off latency: from the holder's `unlock` call to the next waiter's grant (two clients
//!   taking turns, so every grant follows the other's unlock);
//! - semaphore acquire + release cycles/s with N clients (etcd has no semaphore recipe: that
//!   row has no etcd figure).
//!
//! Each figure is reported with the ratio quorate-state / etcd (above 1.0 = quorate-state is
//! faster, or for latency: below 1.0 = quorate-state is quicker). Nothing is asserted here.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, LockOptions};
use quorate_coord_api::Coord;
use quorate_state::{Mutex, Semaphore, Session, SessionConfig, StateError};
use quorate_testkit::etcd::EtcdCluster;
use tokio::sync::Mutex as AsyncMutex;

use crate::stats::Samples;

/// Sizes of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateBenchConfig {
    /// Lock + unlock cycles of the single client.
    pub single_cycles: u32,
    /// Lock + unlock cycles in all, shared by the contending clients.
    pub contended_cycles: u32,
    /// Contending clients (lock and semaphore).
    pub clients: usize,
    /// Hand-offs measured.
    pub handoffs: u32,
    /// Semaphore permits.
    pub permits: NonZeroU32,
    /// Semaphore acquire + release cycles in all.
    pub semaphore_cycles: u32,
    /// Session / lease TTL.
    pub ttl: Duration,
}

impl StateBenchConfig {
    /// The full run: 1,000 single cycles, 1,000 cycles by 16 clients, 200 hand-offs,
    /// 500 semaphore cycles by 16 clients on 4 permits.
    pub fn full() -> StateBenchConfig {
        StateBenchConfig {
            single_cycles: 1000,
            contended_cycles: 1000,
            clients: 16,
            handoffs: 200,
            permits: NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN),
            semaphore_cycles: 500,
            ttl: Duration::from_secs(10),
        }
    }

    /// A tiny run for CI (proves the benchmark still works).
    pub fn tiny() -> StateBenchConfig {
        StateBenchConfig {
            single_cycles: 10,
            contended_cycles: 16,
            clients: 4,
            handoffs: 4,
            permits: NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN),
            semaphore_cycles: 8,
            ttl: Duration::from_secs(5),
        }
    }
}

/// One row: a metric, the quorate-state figure and etcd's (if any).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// What is measured, with its unit.
    pub metric: String,
    /// quorate-state on etcd.
    pub quorate: f64,
    /// etcd's own recipe, if it has one.
    pub etcd: Option<f64>,
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StateReport {
    /// The rows, in run order.
    pub rows: Vec<Row>,
}

impl StateReport {
    /// The row named `metric`.
    pub fn get(&self, metric: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric == metric)
    }

    /// A text table with ratios.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<52} {:>14} {:>14} {:>8}\n",
            "metric", "quorate-state", "etcd recipe", "ratio"
        );
        for r in &self.rows {
            let (etcd, ratio) = match r.etcd {
                Some(e) if e > 0.0 => (format!("{e:.2}"), format!("{:.2}", r.quorate / e)),
                _ => ("n/a".to_owned(), "n/a".to_owned()),
            };
            s.push_str(&format!(
                "{:<52} {:>14.2} {:>14} {:>8}\n",
                r.metric, r.quorate, etcd, ratio
            ));
        }
        s
    }
}

/// An error of the benchmark (which side, what failed).
#[derive(Debug, thiserror::Error)]
pub enum StateBenchError {
    /// quorate-state failed.
    #[error("quorate-state: {0}")]
    State(#[from] StateError),
    /// The etcd client failed.
    #[error("etcd recipe: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The cluster could not be used.
    #[error("cluster: {0}")]
    Cluster(String),
}

fn secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(60)
}

async fn etcd_client(cluster: &EtcdCluster) -> Result<Client, StateBenchError> {
    let opts = cluster
        .connect_options()
        .map_err(|e| StateBenchError::Cluster(e.to_string()))?;
    Ok(Client::connect(cluster.client_urls(), opts).await?)
}

/// Runs every workload on `cluster`: quorate-state through `coord`, etcd's recipe through its
/// own client.
pub async fn run(
    cluster: &EtcdCluster,
    coord: Arc<dyn Coord>,
    config: &StateBenchConfig,
) -> Result<StateReport, StateBenchError> {
    let mut report = StateReport::default();
    let session_config = SessionConfig::new(config.ttl);

    // 1 client.
    let q = {
        let s = Session::start(Arc::clone(&coord), session_config.clone()).await?;
        let m = Mutex::new(s.clone(), "bench/state/single");
        let t = Instant::now();
        for _ in 0..config.single_cycles {
            m.lock().await?.unlock().await?;
        }
        let r = f64::from(config.single_cycles) / t.elapsed().as_secs_f64();
        s.close().await;
        r
    };
    let e = {
        let mut c = etcd_client(cluster).await?;
        let lease = c.lease_grant(secs(config.ttl) * 10, None).await?.id();
        let t = Instant::now();
        for _ in 0..config.single_cycles {
            let held = c
                .lock(
                    "bench/etcd/single",
                    Some(LockOptions::new().with_lease(lease)),
                )
                .await?;
            c.unlock(held.key().to_vec()).await?;
        }
        let r = f64::from(config.single_cycles) / t.elapsed().as_secs_f64();
        c.lease_revoke(lease).await?;
        r
    };
    report.rows.push(Row {
        metric: "lock+unlock, 1 client: cycles/s".into(),
        quorate: q,
        etcd: Some(e),
    });

    // N clients on one lock.
    let n = config.clients.max(1);
    let per = config
        .contended_cycles
        .div_ceil(u32::try_from(n).unwrap_or(1));
    let q = {
        let mut sessions = Vec::new();
        for _ in 0..n {
            sessions.push(Session::start(Arc::clone(&coord), session_config.clone()).await?);
        }
        let t = Instant::now();
        let tasks: Vec<_> = sessions
            .iter()
            .map(|s| {
                let m = Mutex::new(s.clone(), "bench/state/contended");
                tokio::spawn(async move {
                    for _ in 0..per {
                        m.lock().await?.unlock().await?;
                    }
                    Ok::<(), StateError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await
                .map_err(|e| StateBenchError::Cluster(e.to_string()))??;
        }
        let r = f64::from(per) * n as f64 / t.elapsed().as_secs_f64();
        for s in sessions {
            s.close().await;
        }
        r
    };
    let e = {
        let mut clients = Vec::new();
        for _ in 0..n {
            let mut c = etcd_client(cluster).await?;
            let lease = c.lease_grant(secs(config.ttl) * 10, None).await?.id();
            clients.push((c, lease));
        }
        let t = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(mut c, lease)| {
                tokio::spawn(async move {
                    for _ in 0..per {
                        let held = c
                            .lock(
                                "bench/etcd/contended",
                                Some(LockOptions::new().with_lease(lease)),
                            )
                            .await?;
                        c.unlock(held.key().to_vec()).await?;
                    }
                    c.lease_revoke(lease).await?;
                    Ok::<(), etcd_client::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await
                .map_err(|e| StateBenchError::Cluster(e.to_string()))??;
        }
        f64::from(per) * n as f64 / t.elapsed().as_secs_f64()
    };
    report.rows.push(Row {
        metric: format!("lock+unlock, {n} clients on one lock: cycles/s"),
        quorate: q,
        etcd: Some(e),
    });

    // Hand-off latency.
    let q = handoff_quorate(&coord, &session_config, config.handoffs).await?;
    let e = handoff_etcd(cluster, config).await?;
    for (label, quantile) in [("p50", 0.5), ("p99", 0.99)] {
        report.rows.push(Row {
            metric: format!("hand-off unlock -> next grant, {label}: ms"),
            quorate: q.quantile_ms(quantile),
            etcd: Some(e.quantile_ms(quantile)),
        });
    }

    // Semaphore.
    let per = config
        .semaphore_cycles
        .div_ceil(u32::try_from(n).unwrap_or(1));
    let sem = Semaphore::new(
        Arc::clone(&coord),
        "bench-state",
        config.permits,
        session_config.clone(),
    )?;
    let t = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let sem = sem.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    sem.acquire().await?.release().await?;
                }
                Ok::<(), StateError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| StateBenchError::Cluster(e.to_string()))??;
    }
    report.rows.push(Row {
        metric: format!(
            "semaphore acquire+release, {n} clients, {} permits: cycles/s",
            config.permits
        ),
        quorate: f64::from(per) * n as f64 / t.elapsed().as_secs_f64(),
        etcd: None,
    });
    Ok(report)
}

/// Two clients take turns; each records, on its grant, the time since the other's unlock began.
async fn handoff_quorate(
    coord: &Arc<dyn Coord>,
    config: &SessionConfig,
    handoffs: u32,
) -> Result<Samples, StateBenchError> {
    let released: Arc<AsyncMutex<(Option<Instant>, Samples, u32)>> =
        Arc::new(AsyncMutex::new((None, Samples::new(), 0)));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let s = Session::start(Arc::clone(coord), config.clone()).await?;
        let released = Arc::clone(&released);
        tasks.push(tokio::spawn(async move {
            let m = Mutex::new(s.clone(), "bench/state/handoff");
            loop {
                let g = m.lock().await?;
                {
                    let mut r = released.lock().await;
                    if let Some(at) = r.0.take() {
                        r.1.record(at.elapsed());
                        r.2 += 1;
                    }
                    if r.2 >= handoffs {
                        drop(r);
                        g.unlock().await?;
                        break;
                    }
                    r.0 = Some(Instant::now());
                }
                g.unlock().await?;
            }
            s.close().await;
            Ok::<(), StateError>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StateBenchError::Cluster(e.to_string()))??;
    }
    let samples = released.lock().await.1.clone();
    Ok(samples)
}

async fn handoff_etcd(
    cluster: &EtcdCluster,
    config: &StateBenchConfig,
) -> Result<Samples, StateBenchError> {
    let released: Arc<AsyncMutex<(Option<Instant>, Samples, u32)>> =
        Arc::new(AsyncMutex::new((None, Samples::new(), 0)));
    let handoffs = config.handoffs;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut c = etcd_client(cluster).await?;
        let lease = c.lease_grant(secs(config.ttl) * 10, None).await?.id();
        let released = Arc::clone(&released);
        tasks.push(tokio::spawn(async move {
            loop {
                let held = c
                    .lock(
                        "bench/etcd/handoff",
                        Some(LockOptions::new().with_lease(lease)),
                    )
                    .await?;
                let done = {
                    let mut r = released.lock().await;
                    if let Some(at) = r.0.take() {
                        r.1.record(at.elapsed());
                        r.2 += 1;
                    }
                    let done = r.2 >= handoffs;
                    if !done {
                        r.0 = Some(Instant::now());
                    }
                    done
                };
                c.unlock(held.key().to_vec()).await?;
                if done {
                    break;
                }
            }
            c.lease_revoke(lease).await?;
            Ok::<(), etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| StateBenchError::Cluster(e.to_string()))??;
    }
    let samples = released.lock().await.1.clone();
    Ok(samples)
}
