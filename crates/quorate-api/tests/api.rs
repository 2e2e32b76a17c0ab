//! The HTTP API over real HTTP on loopback, served by three in-process nodes (real Raft, gossip
//! and failover managers on loopback sockets): the probes and their status codes, headers and
//! bodies; the state endpoints; the admin calls with their authentication and audit; the bad
//! input table; `quorate ctl`'s tables; `/metrics` through `promtool check metrics`; the
//! dashboard's event stream showing a switchover without a reload.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ROLE, body, call, start_cluster, start_cluster_with, token_file, until};
use hyper::Method;
use quorate::Node;
use quorate::config::ApiSection;
use quorate_api::client::Client;
use quorate_api::ctl::{self, CtlCommand};
use quorate_api::model::{
    AdminReply, ClusterBody, ErrorBody, HealthBody, ProbeBody, RoleBody, TOKEN_HEADER,
};
use quorate_api::{ApiError, ApiPlugin};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use quorate_types::Secret;

/// One bad-input case: what, the client, the path, the body, the status, a phrase of the error.
type Case<'a> = (&'a str, Client, &'a str, Option<String>, u16, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_state_admin_and_bad_input_over_http() {
    let c = start_cluster("quorate-api-test").await;
    let primary = c.primary().await.unwrap();
    let p = c.index_of(&primary);

    // --- Probes: exactly the holder answers 200 on /primary, with its token in a header.
    let mut tokens = Vec::new();
    for i in 0..3 {
        let a = call(&c.anon(i), Method::GET, "/role/app/primary").await;
        let b: ProbeBody = body(&a);
        assert_eq!(b.role, ROLE);
        if i == p {
            assert_eq!(a.status, 200, "{b:?}");
            assert_eq!(b.state, "primary");
            let header: u64 = a.headers[TOKEN_HEADER].to_str().unwrap().parse().unwrap();
            assert_eq!(Some(header), b.token);
            tokens.push(header);
        } else {
            assert_eq!(a.status, 503, "{b:?}");
            assert!(a.headers.get(TOKEN_HEADER).is_none());
            assert_eq!(b.state, "replica");
            assert!(b.reason.unwrap().contains(&primary));
        }
        // HEAD and OPTIONS: the same status, an empty body.
        for m in [Method::HEAD, Method::OPTIONS] {
            let h = call(&c.anon(i), m.clone(), "/role/app/primary").await;
            assert_eq!(h.status, a.status, "{m}");
            assert!(h.body.is_empty(), "{m}: {:?}", h.body);
        }
        // The one-role aliases answer like the scoped probes.
        let alias = call(&c.anon(i), Method::GET, "/primary").await;
        assert_eq!(alias.status, a.status);
        let replica = call(&c.anon(i), Method::GET, "/role/app/replica").await;
        assert_eq!(replica.status, if i == p { 503 } else { 200 });
        let alias = call(&c.anon(i), Method::GET, "/replica?lag=1MB").await;
        assert_eq!(alias.status, replica.status);
        let ro = call(&c.anon(i), Method::GET, "/role/app/read-only").await;
        assert_eq!(ro.status, 200);
        let bad_lag = call(&c.anon(i), Method::GET, "/role/app/replica?lag=lots").await;
        assert_eq!(bad_lag.status, 400);
        assert!(body::<ErrorBody>(&bad_lag).message.contains("lag"));
    }
    assert_eq!(tokens.len(), 1, "exactly one node answers 200 on /primary");

    // --- Health, liveness, readiness.
    let h = call(&c.anon(0), Method::GET, "/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["content-type"], "application/health+json");
    assert_eq!(body::<HealthBody>(&h).status, "pass");
    assert_eq!(call(&c.anon(0), Method::GET, "/liveness").await.status, 200);
    assert_eq!(
        call(&c.anon(0), Method::GET, "/readiness").await.status,
        200
    );

    // --- State.
    let cl: ClusterBody = c.anon(1).cluster().await.unwrap();
    assert_eq!(cl.members.len(), 3);
    assert!(cl.members.iter().all(|m| m.state == "alive"), "{cl:?}");
    assert!(cl.members.iter().all(|m| m.api.is_some()), "{cl:?}");
    assert!(cl.has_majority);
    assert_eq!(cl.split_brain, "healthy");
    assert!(cl.coordination.as_ref().unwrap().leader.is_some());
    let roles: Vec<RoleBody> = c.anon(1).roles().await.unwrap();
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].holder.as_deref(), Some(primary.as_str()));
    assert_eq!(roles[0].token, Some(tokens[0]));
    assert!(
        roles[0]
            .lease_remaining_ms
            .is_some_and(|l| l <= roles[0].lease_ttl_ms)
    );
    let n3 = roles[0].candidates.iter().find(|x| x.node == "n3").unwrap();
    assert!(!n3.candidate);
    assert!(
        n3.reasons.iter().any(|r| r.contains("no-failover")),
        "{n3:?}"
    );

    // --- /config: a token is needed; the redacted config shows no key.
    assert_eq!(call(&c.anon(0), Method::GET, "/config").await.status, 401);
    let reader = Client::new(&c.addr(0), Some(c.read_token.clone()));
    let conf = call(&reader, Method::GET, "/config").await;
    assert_eq!(conf.status, 200);
    let text = String::from_utf8_lossy(&conf.body);
    assert!(text.contains("\"node_id\":\"n1\""), "{text}");
    assert!(!text.contains(c.token.expose()), "the API token leaked");
    let key = std::fs::read_to_string(c._dir.path().join("cluster.key")).unwrap();
    assert!(!text.contains(key.trim()), "the cluster key leaked");

    // --- Bad input: each case gets its 4xx JSON error, and nothing changes.
    let unfit_reason = n3.reasons.join("; ");
    let other = (0..3).find(|&i| i != p && i != 2).unwrap();
    let other_name = format!("n{}", other + 1);
    let big = format!("{{\"candidate\":\"{}\"}}", "x".repeat(5000));
    let wrong = Client::new(&c.addr(0), Some(Secret::new("not-the-token-at-all")));
    let cases: Vec<Case<'_>> = vec![
        (
            "malformed JSON",
            c.op(0),
            "/role/app/switchover",
            Some("{\"candidate\":".into()),
            400,
            "not valid JSON",
        ),
        (
            "unknown field",
            c.op(0),
            "/role/app/switchover",
            Some("{\"scheduled_at\":\"now\"}".into()),
            400,
            "scheduled_at",
        ),
        (
            "oversized body",
            c.op(0),
            "/role/app/switchover",
            Some(big),
            413,
            "body_bytes_max",
        ),
        (
            "unknown role",
            c.op(0),
            "/role/nope/switchover",
            Some("{}".into()),
            404,
            "app",
        ),
        (
            "missing token",
            c.anon(0),
            "/role/app/switchover",
            Some("{}".into()),
            401,
            "Bearer",
        ),
        (
            "wrong token",
            wrong,
            "/role/app/switchover",
            Some("{}".into()),
            401,
            "not valid",
        ),
        (
            "read-only token",
            reader.clone(),
            "/role/app/failback",
            Some("{}".into()),
            403,
            "operate",
        ),
        (
            "read-only token cancels",
            reader.clone(),
            "/role/app/cancel",
            None,
            403,
            "operate",
        ),
        (
            "cancel with a field",
            c.op(0),
            "/role/app/cancel",
            Some("{\"role\":\"app\"}".into()),
            400,
            "role",
        ),
        (
            "unfit candidate",
            c.op(0),
            "/role/app/switchover",
            Some("{\"candidate\":\"n3\"}".into()),
            412,
            unfit_reason.as_str(),
        ),
        (
            "stale leader",
            c.op(0),
            "/role/app/switchover",
            Some(format!("{{\"leader\":\"{other_name}\"}}")),
            412,
            "is not the primary",
        ),
        (
            "failover with a primary",
            c.op(0),
            "/role/app/failover",
            Some("{}".into()),
            412,
            primary.as_str(),
        ),
        (
            "zero pause",
            c.op(0),
            "/role/app/maintenance",
            Some("{\"on\":true,\"ttl\":\"0s\"}".into()),
            400,
            "above zero",
        ),
        (
            "bad pause",
            c.op(0),
            "/role/app/maintenance",
            Some("{\"on\":true,\"ttl\":\"soon\"}".into()),
            400,
            "ttl",
        ),
        (
            "stale failback approval",
            c.op(0),
            "/role/app/failback",
            Some(format!("{{\"candidate\":\"{other_name}\"}}")),
            412,
            "the failback asked for was to",
        ),
        (
            "zero postponement",
            c.op(0),
            "/role/app/failback/postpone",
            Some("{\"ttl\":\"0s\"}".into()),
            400,
            "above zero",
        ),
        (
            "postponement with an unknown field",
            c.op(0),
            "/role/app/failback/postpone",
            Some("{\"for\":\"1h\"}".into()),
            400,
            "for",
        ),
        (
            "maintenance without a body",
            c.op(0),
            "/role/app/maintenance",
            None,
            400,
            "on",
        ),
        (
            "no such endpoint",
            c.op(0),
            "/role/app/explode",
            Some("{}".into()),
            404,
            "docs/api.md",
        ),
    ];
    for (what, client, path, b, status, needle) in cases {
        let a = client
            .request(Method::POST, path, b.map(String::into_bytes), &[])
            .await
            .unwrap();
        let e: ErrorBody = body(&a);
        assert_eq!(a.status, status, "{what}: {e:?}");
        assert_eq!(e.status, status, "{what}");
        assert!(
            e.message.contains(needle),
            "{what}: {:?} lacks {needle:?}",
            e.message
        );
        if status == 401 {
            assert!(a.headers.contains_key("www-authenticate"), "{what}");
        }
    }
    let h = c.anon(0).history(None).await.unwrap();
    assert_eq!(
        c.primary().await.as_deref(),
        Some(primary.as_str()),
        "nothing moved: {h:#?}"
    );

    // --- Maintenance on and off.
    let r = c.op(0).maintenance(ROLE, true, Some("10m")).await.unwrap();
    assert_eq!(r.status, 200);
    let role = c.op(0).role(ROLE).await.unwrap();
    assert_eq!(role.automatic.as_deref(), Some("paused"));
    let r = c.op(0).maintenance(ROLE, false, None).await.unwrap();
    assert_eq!(r.status, 200);
    // --- Failbacks postponed: done, reported in words; nothing moves.
    let r = c.op(0).postpone_failback(ROLE, Some("10m")).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.outcome
            .message
            .contains("postponement of app's failback by 600s"),
        "{r:?}"
    );

    // --- Cancel with no hand-off under way: done, and the holder keeps the role.
    let r = c.op(0).cancel(ROLE).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(c.primary().await.as_deref(), Some(primary.as_str()));

    // --- A switchover over HTTP moves the role, confirmed before the reply.
    let r: AdminReply = c.op(0).switchover(ROLE, Some(&other_name)).await.unwrap();
    assert_eq!(r.outcome.chosen.as_deref(), Some(other_name.as_str()));
    assert!(r.status == 200 || r.status == 202, "{r:?}");
    until("the switchover", async || {
        let a = call(&c.anon(other), Method::GET, "/role/app/primary").await;
        a.status == 200
    })
    .await;
    let a = call(&c.anon(other), Method::GET, "/role/app/primary").await;
    let new_token: u64 = a.headers[TOKEN_HEADER].to_str().unwrap().parse().unwrap();
    assert!(new_token > tokens[0], "fencing tokens increase");
    until("the old primary answering 503", async || {
        call(&c.anon(p), Method::GET, "/role/app/primary")
            .await
            .status
            == 503
    })
    .await;

    // --- History: the switchover, with its measured durations, on the new primary (recorded
    // once its promotion is done, which may be just after the probe turned 200).
    let mut h = Vec::new();
    until("the switchover in the new primary's history", async || {
        h = c.anon(other).history(Some(ROLE)).await.unwrap();
        h.last()
            .is_some_and(|e| e.new_primary.as_deref() == Some(other_name.as_str()))
    })
    .await;
    let last = h.last().unwrap();
    assert_eq!(
        last.new_primary.as_deref(),
        Some(other_name.as_str()),
        "{h:#?}"
    );
    assert_eq!(last.cause, "manual switchover");
    assert_eq!(last.token, Some(new_token));
    assert!(last.total_ms.is_some(), "{last:?}");

    // --- quorate ctl: tables and JSON.
    let list = ctl::run(&c.op(0), &CtlCommand::List, false).await.unwrap();
    assert!(
        list.contains("member") && list.contains(&other_name),
        "{list}"
    );
    let hist = ctl::run(&c.op(other), &CtlCommand::History { role: None }, false)
        .await
        .unwrap();
    assert!(hist.contains("manual switchover"), "{hist}");
    let explain = ctl::run(&c.op(0), &CtlCommand::Explain { role: ROLE.into() }, false)
        .await
        .unwrap();
    assert!(explain.contains("tagged no-failover"), "{explain}");
    let json = ctl::run(&c.op(0), &CtlCommand::Explain { role: ROLE.into() }, true)
        .await
        .unwrap();
    let parsed: RoleBody = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.role, ROLE);
    let e = ctl::run(
        &c.anon(0),
        &CtlCommand::Failback {
            role: ROLE.into(),
            candidate: None,
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ApiError::Status { ref body } if body.status == 401),
        "{e}"
    );

    // --- Metrics: OpenMetrics on request, the holder's role gauge, promtool's lint of the
    // Prometheus text format.
    let om = c
        .anon(other)
        .request(
            Method::GET,
            "/metrics",
            None,
            &[(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            )],
        )
        .await
        .unwrap();
    assert_eq!(om.status, 200);
    assert!(
        om.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let om = String::from_utf8(om.body.to_vec()).unwrap();
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let m = call(&c.anon(other), Method::GET, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body.to_vec()).unwrap();
    assert!(
        text.contains("quorate_role_primary{role=\"app\"} 1"),
        "{text}"
    );
    assert!(text.contains("quorate_coordination_has_leader 1"), "{text}");
    assert!(text.contains("quorate_membership_has_majority 1"), "{text}");
    assert!(
        text.contains("quorate_api_admin_requests_total") || other != 0,
        "{text}"
    );
    assert!(
        text.contains("quorate_role_lease_renew_latency_seconds_count{role=\"app\"}"),
        "{text}"
    );
    // The store's request latency: a series per operation, and this node's requests counted
    // (its failover loop reads and renews through the same timed store).
    let answered: u64 = text
        .lines()
        .filter(|l| l.starts_with("quorate_coordination_request_duration_seconds_count{op="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(answered > 0, "no store request counted:\n{text}");
    // The Raft port's counters: the peers' connections were accepted.
    let accepted: u64 = text
        .lines()
        .find(|l| l.starts_with("quorate_raft_inbound_events_total{event=\"accepted\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(accepted > 0, "no accepted Raft connection counted:\n{text}");
    // The elector's counters are exported, every event (zero until an election is needed).
    for event in [
        "prevote_round",
        "prevote_round_won",
        "election_started",
        "prevote_granted",
        "prevote_refused",
    ] {
        assert!(
            text.contains(&format!(
                "quorate_raft_election_events_total{{event=\"{event}\"}}"
            )),
            "no {event} series:\n{text}"
        );
    }
    // No lag source for the role: no lag series (an absent lag is not a zero lag).
    assert!(!text.contains("quorate_role_replication_lag{"), "{text}");
    for op in quorate_startup::metered::METERED_OPS {
        assert!(
            text.contains(&format!(
                "quorate_coordination_request_failures_total{{op=\"{op}\"}}"
            )),
            "{op} missing:\n{text}"
        );
    }
    // Every metric the shipped alert rules use is in the scrape (the replication families come
    // from the `[replication]` stage, which this cluster does not run: quorate-startup's
    // replication test checks those).
    let rules = include_str!("../../../docs/alerts.yml");
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word
            .strip_prefix("quorate_")
            .filter(|n| !n.starts_with("replication_"))
        {
            let family = name.trim_end_matches("_bucket");
            assert!(
                text.contains(&format!("quorate_{family}")),
                "docs/alerts.yml uses quorate_{name}, which /metrics does not have"
            );
        }
    }
    promtool_check_metrics(&text);

    c.stop().await;
}

/// With a lag source for the role, each node exports its lag as the failover policy sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_a_lag_source_exports_each_node_s_replication_lag() {
    let c = start_cluster_with("quorate-api-lag", Some(4096)).await;
    for i in 0..3 {
        let m = call(&c.anon(i), Method::GET, "/metrics").await;
        let text = String::from_utf8(m.body.to_vec()).unwrap();
        assert!(
            text.contains("quorate_role_replication_lag{role=\"app\"} 4096"),
            "node {i}:\n{text}"
        );
        promtool_check_metrics(&text);
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_switchover_without_a_reload() {
    let c = start_cluster("quorate-api-dash").await;
    let primary = c.primary().await.unwrap();
    let page = call(&c.anon(0), Method::GET, "/").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("EventSource('/events')"), "{html}");
    assert!(
        html.contains(&format!("data-holder=\"{primary}\"")),
        "{html}"
    );
    assert!(html.contains("name=\"viewport\""), "usable on a phone");

    // Read the event stream as a browser would, across a switchover.
    let stream = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/events")
        .header("host", c.addr(0))
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let mut seen = String::new();
    let next_snapshot = async |body: &mut hyper::body::Incoming, seen: &mut String| -> String {
        use http_body_util::BodyExt as _;
        loop {
            if let Some(end) = seen.find("\n\n") {
                let event: String = seen.drain(..end + 2).collect();
                if event.contains("event: snapshot") {
                    return event;
                }
                continue;
            }
            let frame = body.frame().await.expect("the stream stays open").unwrap();
            if let Ok(data) = frame.into_data() {
                seen.push_str(&String::from_utf8_lossy(&data));
            }
        }
    };
    let first = next_snapshot(&mut body, &mut seen).await;
    assert!(
        first.contains(&format!("data-holder=\"{primary}\"")),
        "{first}"
    );

    let target = if primary == "n1" { "n2" } else { "n1" };
    c.op(0).switchover(ROLE, Some(target)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = next_snapshot(&mut body, &mut seen).await;
            if e.contains(&format!("data-holder=\"{target}\"")) && e.contains("manual switchover") {
                return;
            }
        }
    })
    .await
    .expect("the new holder and the change appear in the stream");
    c.stop().await;
}

/// `promtool check metrics` on a scrape; promtool comes from Debian's `prometheus` package
/// (`cargo xtask setup`). Missing: a failure under CI, a note otherwise.
fn promtool_check_metrics(text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing ({e}): install Debian's prometheus package (cargo xtask setup)"
            );
            eprintln!("promtool is missing ({e}): `promtool check metrics` not run");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- scrape:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_the_api_stage_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let plan = LoopbackPlan::new("quorate-api-port", 1, dir.path()).unwrap();
    let (tf, _) = token_file(dir.path(), "api.token");
    let path = write_config(&plan, 0, dir.path(), |c| {
        c.api = Some(ApiSection {
            listen: taken.local_addr().unwrap().to_string(),
            token_file: Some(tf),
            ..ApiSection::default()
        });
    })
    .unwrap();
    let config = quorate::config::load(&path).unwrap();
    let api = Arc::new(ApiPlugin::from_config(&config).unwrap());
    let e = Node::builder(config)
        .status_file(false)
        .plugin(api)
        .start()
        .await
        .unwrap_err();
    assert_eq!(e.stage, "plugin:api");
    assert!(e.cause.contains("cannot listen"), "{}", e.cause);
}
