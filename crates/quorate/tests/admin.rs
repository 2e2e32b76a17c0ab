//! The shared admin operations ([`quorate::startup::admin`]) on three in-process nodes over
//! loopback: the permission check, the policy's refusals with their reasons and HTTP statuses,
//! a switchover that moves the role, and the audit record of each request (refusals included).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::time::Duration;

use quorate::Node;
use quorate::config::RoleSection;
use quorate::report::NodeEvent;
use quorate::startup::admin::{Admin, AdminError, AdminRequest, Permission, Principal};
use quorate::types::RoleName;
use quorate_testkit::agents::{LoopbackPlan, write_config};

const ROLE: &str = "app";

async fn primary_of(node: &Node, role: &RoleName) -> Option<String> {
    node.status()
        .role(role.as_str())
        .and_then(|r| r.primary.clone())
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within 60 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_operations_check_permission_explain_refusals_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let plan = LoopbackPlan::new("quorate-admin-test", 3, dir.path()).unwrap();
    let mut nodes = Vec::new();
    let starts = (0..3).map(|i| {
        let path = write_config(&plan, i, dir.path(), |c| {
            c.roles.push(RoleSection::named(ROLE));
        })
        .unwrap();
        async move {
            let config = quorate::config::load(&path).unwrap();
            Node::builder(config).status_file(false).start().await
        }
    });
    for n in futures_join(starts).await {
        nodes.push(n.unwrap());
    }
    let role = RoleName::new(ROLE).unwrap();
    let mut primary = None;
    until("a primary", async || {
        primary = primary_of(&nodes[0], &role).await;
        primary.is_some()
    })
    .await;
    let primary = primary.unwrap();
    let admin = Admin::new(nodes[0].context().clone());
    let mut audit = nodes[0].events();

    // Read-only callers may not operate; the refusal is audited.
    let reader = Principal::new("test:reader", Permission::Read);
    let r = admin
        .run(
            &reader,
            AdminRequest::Failback {
                role: ROLE.into(),
                to: None,
            },
        )
        .await;
    let e = r.unwrap_err();
    assert!(matches!(e, AdminError::Forbidden { .. }), "{e}");
    assert_eq!(e.http_status(), 403);
    let seen = next_audit(&mut audit).await;
    assert_eq!(seen.who, "test:reader");
    assert_eq!(seen.result, Err(e));

    let operator = Principal::new("test:operator", Permission::Operate);
    // An unknown role names the known ones.
    let e = admin
        .run(
            &operator,
            AdminRequest::Resume {
                role: "nope".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 404);
    assert!(e.to_string().contains(ROLE), "{e}");
    // A switchover to a node that is not a member is refused by the policy, with the reason.
    let e = admin
        .run(
            &operator,
            AdminRequest::Switchover {
                role: ROLE.into(),
                to: Some("stranger".into()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 412, "{e}");
    assert!(e.to_string().contains("stranger"), "{e}");
    // A manual failover while a primary exists is refused and names the primary.
    let e = admin
        .run(
            &operator,
            AdminRequest::Failover {
                role: ROLE.into(),
                to: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 412, "{e}");
    assert!(e.to_string().contains(&primary), "{e}");
    // A switchover moves the role to the chosen node.
    let done = admin
        .run(
            &operator,
            AdminRequest::Switchover {
                role: ROLE.into(),
                to: None,
            },
        )
        .await
        .unwrap();
    let chosen = done
        .chosen
        .clone()
        .expect("a switchover names its successor");
    assert_ne!(chosen, primary);
    until("the switchover", async || {
        primary_of(&nodes[0], &role).await.as_deref() == Some(chosen.as_str())
    })
    .await;
    // Every request above is in the audit trail, in order.
    let mut whats = Vec::new();
    while whats.len() < 4 {
        let a = next_audit(&mut audit).await;
        whats.push((a.request.to_string(), a.result.is_ok()));
    }
    assert_eq!(
        whats,
        vec![
            ("resume of nope".to_owned(), false),
            ("switchover of app to stranger".to_owned(), false),
            ("failover of app".to_owned(), false),
            ("switchover of app".to_owned(), true),
        ]
    );
    for n in nodes {
        n.shutdown(Duration::from_secs(10)).await;
    }
}

async fn next_audit(
    rx: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
) -> quorate::startup::admin::AdminAudit {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let NodeEvent::Admin(a) = rx.recv().await.expect("events") {
                return a;
            }
        }
    })
    .await
    .expect("an audit record")
}

/// Runs the futures concurrently (the nodes wait for each other to form the cluster).
async fn futures_join<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
