//! The replication stage on real in-process nodes: each a one-voter quorate node (real Raft,
//! gossip, redb) whose `[replication]` section declares a leader-mode keyspace bound to a role
//! and a multi-master counter; two such nodes list each other as replication peers.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::path::Path;
use std::time::Duration;

use quorate_replication::LeaderRole;
use quorate_startup::Node;
use quorate_startup::config::parse_with;
use quorate_startup::replication::ReplicationStage;
use quorate_types::{NodeId, RoleName};

const KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, name: &str, repl: u16, peer: (&str, u16)) -> String {
    let (raft, gossip) = (port(), port());
    format!(
        r#"
cluster_name = "repl-stage"
node_id = "{name}"
data_dir = "{dir}"

[raft]
listen = "127.0.0.1:{raft}"
voters = {{ {name} = "127.0.0.1:{raft}" }}

[gossip]
listen = "127.0.0.1:{gossip}"
bootstrap = true

[[role]]
name = "db"

[replication]
listen = "127.0.0.1:{repl}"
peers = {{ {peer_name} = "127.0.0.1:{peer_port}" }}

[[replication.keyspace]]
name = "orders"
mode = "leader"
role = "db"

[[replication.keyspace]]
name = "hits"
mode = "multi_master"
type = "counter"
"#,
        dir = dir.join(name).display(),
        peer_name = peer.0,
        peer_port = peer.1,
    )
}

async fn start(text: &str) -> (Node, std::sync::Arc<ReplicationStage>) {
    let env = [("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned())];
    let v = parse_with(text, "node.toml", &env).unwrap();
    let (builder, stage) = ReplicationStage::attach(Node::builder(v).status_file(false));
    let node = builder.start().await.unwrap();
    (node, stage.unwrap())
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_starts_declared_keyspaces_binds_the_role_and_recovers_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (r1, r2) = (port(), port());
    let c1 = config(dir.path(), "n1", r1, ("n2", r2));
    let c2 = config(dir.path(), "n2", r2, ("n1", r1));
    let (node1, stage1) = start(&c1).await;
    let (node2, stage2) = start(&c2).await;
    assert!(
        node1.startup_report().to_string().contains("replication"),
        "{}",
        node1.startup_report()
    );
    let ks1 = stage1.keyspaces().unwrap();
    let ks2 = stage2.keyspaces().unwrap();

    // The leader-mode keyspace follows the role: promoted with the role's token.
    let role = RoleName::new("db").unwrap();
    let orders = ks1.leader["orders"].clone();
    let token = until("n1 primary of db and the keyspace promoted", || {
        let st = node1.failover().status(&role).unwrap().borrow().clone();
        let t = st.token.filter(|_| st.acting)?;
        (orders.status().role == LeaderRole::Primary(t.0)).then_some(t)
    })
    .await;
    orders
        .write(token, "o1", Some(b"paid".to_vec()))
        .await
        .unwrap();
    assert_eq!(orders.get("o1"), Some(b"paid".to_vec()));
    // The failover policy's lag source is the keyspace's (this node is primary: lag 0).
    assert_eq!(orders.lag_entries(&NodeId::new("n1").unwrap()), Some(0));

    // The multi-master counter replicates between the two nodes' stages.
    let hits1 = ks1.counter["hits"].clone();
    let hits2 = ks2.counter["hits"].clone();
    hits1
        .write("k", |c, ctx| c.increment(&ctx.node, 2))
        .await
        .unwrap();
    hits2
        .write("k", |c, ctx| c.increment(&ctx.node, 3))
        .await
        .unwrap();
    for h in [&hits1, &hits2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while h.get("k").await.unwrap().map(|c| c.value()) != Some(5) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "counter did not converge"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // The stage's metrics reach the node's exporter (quorate_replication_* in /metrics).
    let samples = node1.context().metric_sources.collect().await;
    let value = |family: &str, keyspace: &str| {
        samples
            .iter()
            .find(|m| m.family == family && m.labels.contains(&("keyspace", keyspace.to_owned())))
            .map(|m| m.value)
    };
    assert_eq!(value("replication_local_writes", "hits"), Some(1.0));
    assert!(value("replication_deltas_merged", "hits").unwrap_or(0.0) >= 1.0);
    assert_eq!(value("replication_keys", "hits"), Some(1.0));
    assert_eq!(value("replication_keys", "orders"), Some(1.0));
    assert_eq!(value("replication_stale_rejected", "orders"), Some(0.0));
    assert_eq!(
        value("replication_undelivered_age_seconds", "hits"),
        Some(0.0)
    );
    // Every replication metric the shipped alert rules use is exported by the stage (a
    // counter's family is named without `_total`; leader lag needs a replica, so node1's
    // view of `orders` has one).
    let rules = include_str!("../../../docs/alerts.yml");
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("quorate_replication_") {
            let family = format!("replication_{}", name.trim_end_matches("_total"));
            assert!(
                samples.iter().any(|m| m.family == family),
                "docs/alerts.yml uses quorate_{family}, which the replication stage does not export"
            );
        }
    }

    node2.shutdown(Duration::from_secs(10)).await;
    // Restart the stage on the running node: both keyspaces recover from replication.redb.
    drop((orders, hits1, hits2, ks1, ks2));
    quorate_startup::Plugin::stop(&*stage1).await;
    assert!(stage1.keyspaces().is_none(), "stopped");
    quorate_startup::Plugin::start(&*stage1, node1.context())
        .await
        .unwrap();
    let ks1 = stage1.keyspaces().unwrap();
    assert_eq!(ks1.leader["orders"].get("o1"), Some(b"paid".to_vec()));
    assert_eq!(
        ks1.counter["hits"]
            .get("k")
            .await
            .unwrap()
            .map(|c| c.value()),
        Some(5)
    );
    // Still primary of db: the restarted keyspace is promoted again with the same token.
    let orders = ks1.leader["orders"].clone();
    until("promoted again", || {
        (orders.status().role == LeaderRole::Primary(token.0)).then_some(())
    })
    .await;
    orders.write(token, "o2", None).await.unwrap();
    drop((orders, ks1));
    let report = node1.shutdown(Duration::from_secs(10)).await;
    assert!(report.within_budget, "{report:?}");
    assert!(stage1.keyspaces().is_none(), "stopped with the node");
}

#[test]
fn replication_config_problems_are_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "n1", 7400, ("n1", 7401))
        .replace("role = \"db\"", "role = \"nope\"")
        .replace("type = \"counter\"", "type = \"gcounter\"");
    let env = [("QUORATE_CLUSTER_KEY".to_owned(), KEY.to_owned())];
    let errs = parse_with(&text, "node.toml", &env).unwrap_err();
    let fields: Vec<&str> = errs.0.iter().map(|p| p.field.as_str()).collect();
    for f in [
        "replication.peers.n1",
        "replication.keyspace[0].role",
        "replication.keyspace[1].type",
    ] {
        assert!(fields.contains(&f), "{f} missing from {errs}");
    }
}
