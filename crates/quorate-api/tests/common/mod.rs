//! Shared by the API tests: a 3-node in-process cluster with an API on each node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    unreachable_pub,
    reason = "test support; each test binary uses part of it"
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use quorate::Node;
use quorate::config::{ApiSection, RoleSection};
use quorate_api::ApiPlugin;
use quorate_api::client::{Answer, Client};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_types::Secret;

/// The role every node takes.
pub const ROLE: &str = "app";

/// Three nodes and their APIs.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub apis: Vec<Arc<ApiPlugin>>,
    pub token: Secret,
    pub read_token: Secret,
    pub _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn addr(&self, i: usize) -> String {
        self.apis[i].local_addr().expect("started").to_string()
    }

    /// A client of node `i` with the operator token.
    pub fn op(&self, i: usize) -> Client {
        Client::new(&self.addr(i), Some(self.token.clone()))
    }

    /// A client of node `i` without a token.
    pub fn anon(&self, i: usize) -> Client {
        Client::new(&self.addr(i), None)
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.context().config.node_id.as_str() == name)
            .expect("a node of the cluster")
    }

    pub async fn primary(&self) -> Option<String> {
        self.nodes[0]
            .status()
            .role(ROLE)
            .and_then(|r| r.primary.clone())
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.shutdown(Duration::from_secs(10)).await;
        }
    }
}

/// A new token file (mode 0600) and its token.
pub fn token_file(dir: &Path, name: &str) -> (PathBuf, Secret) {
    let p = dir.join(name);
    quorate::config::write_new_key_file(&p).unwrap();
    let t = std::fs::read_to_string(&p).unwrap().trim().to_owned();
    (p, Secret::new(t))
}

/// Three nodes with role `app` and an API each; `n3` is tagged `no-failover` (an unfit
/// candidate for the 412 case).
pub async fn start_cluster(name: &str) -> Cluster {
    start_cluster_with(name, None).await
}

/// A lag source reporting the same lag for every node.
struct FixedLag(u64);

impl quorate_failover::shell::LagSource for FixedLag {
    fn lag(&self, _node: &quorate_types::NodeId) -> Option<u64> {
        Some(self.0)
    }
}

/// [`start_cluster`], with a replication-lag source reporting `lag` for every node if given.
pub async fn start_cluster_with(name: &str, lag: Option<u64>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new(name, 3, dir.path()).unwrap();
    let (tf, token) = token_file(dir.path(), "api.token");
    let (rf, read_token) = token_file(dir.path(), "api-read.token");
    let mut starts = Vec::new();
    for i in 0..3 {
        let (tf, rf) = (tf.clone(), rf.clone());
        let path = write_config(&plan, i, dir.path(), |c| {
            c.roles.push(RoleSection::named(ROLE));
            if i == 2 {
                c.gossip.tags.insert("no-failover".into(), "true".into());
            }
            c.api = Some(ApiSection {
                listen: "127.0.0.1:0".into(),
                token_file: Some(tf),
                read_token_file: Some(rf),
                body_bytes_max: 4096,
                ..ApiSection::default()
            });
        })
        .unwrap();
        starts.push(tokio::spawn(async move {
            let config = quorate::config::load(&path).unwrap();
            let api = Arc::new(ApiPlugin::from_config(&config).expect("an [api] section"));
            let mut builder = Node::builder(config).status_file(false).plugin(api.clone());
            if let Some(lag) = lag {
                builder = builder.lag_source(
                    quorate_types::RoleName::new(ROLE).unwrap(),
                    Arc::new(FixedLag(lag)),
                );
            }
            let node = builder.start().await.unwrap();
            (node, api)
        }));
    }
    let (mut nodes, mut apis) = (Vec::new(), Vec::new());
    for s in starts {
        let (n, a) = s.await.unwrap();
        nodes.push(n);
        apis.push(a);
    }
    let c = Cluster {
        nodes,
        apis,
        token,
        read_token,
        _dir: dir,
    };
    until("a primary that every node sees", async || {
        let p = c.primary().await;
        p.is_some()
            && c.nodes
                .iter()
                .all(|n| n.status().role(ROLE).and_then(|r| r.primary.clone()) == p)
    })
    .await;
    c
}

/// Polls `f` until it holds, up to 60 s.
pub async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 60 s"));
}

/// The JSON body of `a`.
pub fn body<T: serde::de::DeserializeOwned>(a: &Answer) -> T {
    serde_json::from_slice(&a.body).unwrap_or_else(|e| {
        panic!(
            "{e}: status {} body {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        )
    })
}

/// One call without a body.
pub async fn call(c: &Client, method: Method, path: &str) -> Answer {
    c.request(method, path, None, &[]).await.unwrap()
}
