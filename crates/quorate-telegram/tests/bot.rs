//! The bot on three in-process nodes against the fake Bot API: every command's reply, the same
//! outcome and reason as the shared admin layer, a chat outside the allow-list changing
//! nothing, alerts on a switchover and a burst of health alerts coalesced, and the ingress
//! riding out injected 409, 429, 5xx and timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

mod support;

use std::time::Duration;

use quorate::report::NodeEvent;
use quorate::startup::admin::{Admin, AdminRequest, Permission, Principal};
use quorate::types::RoleName;
use support::fake_api::{FakeApi, Fault};
use support::{Cluster, Stop, primary_of, until};

const ADMIN: i64 = 42;
const GROUP: i64 = -100_777;
const STRANGER: i64 = 999;
const WAIT: Duration = Duration::from_secs(60);

/// Alerts (every line stamped with a time of day) reach the admin chats between replies.
fn is_alert(m: &str) -> bool {
    m.lines().all(|l| l.contains(" UTC"))
}

/// Sends `text` from `chat` and returns the next message the bot sends to `chat` that is not
/// an alert.
async fn ask(fake: &FakeApi, chat: i64, text: &str) -> String {
    let before = fake.sent_to(chat).len();
    fake.push_text(chat, text);
    let reply = |f: &FakeApi| {
        f.sent_to(chat)
            .into_iter()
            .skip(before)
            .find(|m| !is_alert(m))
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while reply(fake).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply to {text:?} within {WAIT:?}; the chat got {:#?}; polls {}",
            fake.sent_to(chat),
            fake.polls().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reply(fake).unwrap()
}

#[track_caller]
fn has(reply: &str, parts: &[&str]) {
    for p in parts {
        assert!(reply.contains(p), "expected {p:?} in the reply:\n{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_replies_readably_and_strangers_change_nothing() {
    let fake = FakeApi::start().await;
    let cluster = Cluster::new("tg-commands", 3, |t| {
        t.api_url = Some(fake.url.clone());
        t.admin_chats = vec![ADMIN, GROUP];
        t.chat_interval = Duration::from_millis(20);
    });
    let nodes: Vec<_> = cluster.start_all().await.into_iter().map(Some).collect();
    until("an ingress holder", WAIT, || {
        primary_of(&nodes, "telegram-ingress").is_some()
    })
    .await;
    until("an app primary", WAIT, || {
        primary_of(&nodes, "app").is_some()
    })
    .await;
    let mut audits: Vec<_> = nodes
        .iter()
        .flatten()
        .map(|n| n.ctx.events.subscribe())
        .collect();

    has(
        &ask(&fake, ADMIN, "/help").await,
        &["/switchover <role> [node]", "/pause"],
    );
    has(
        &ask(&fake, ADMIN, "/status").await,
        &[
            "cluster tg-commands",
            "coordination: leader n",
            "3 voters",
            "members: 3 of 3 alive",
            "roles:",
            "• app: primary n",
        ],
    );
    has(
        &ask(&fake, GROUP, "/nodes@quorate_bot").await,
        &["3 members:", "• n1: alive", "voter", "can take app"],
    );
    has(
        &ask(&fake, ADMIN, "/roles").await,
        &["• app: primary n", "• telegram-ingress: primary n"],
    );
    has(
        &ask(&fake, ADMIN, "/history").await,
        &["app: ", "change(s) recorded", "telegram-ingress: "],
    );
    has(
        &ask(&fake, ADMIN, "/history nope").await,
        &["❌ unknown role \"nope\""],
    );
    has(
        &ask(&fake, ADMIN, "/health").await,
        &["health of n", "checks passing"],
    );
    has(
        &ask(&fake, ADMIN, "/explain app").await,
        &["app: primary: n", "automatic failover on", "candidate #1"],
    );
    has(
        &ask(&fake, ADMIN, "/explain nope").await,
        &["❌ unknown role \"nope\": this node manages app, telegram-ingress"],
    );
    has(
        &ask(&fake, ADMIN, "hello").await,
        &["I only understand commands"],
    );
    has(
        &ask(&fake, ADMIN, "/frobnicate").await,
        &["unknown command /frobnicate", "/status"],
    );
    has(
        &ask(&fake, ADMIN, "/pause app soon").await,
        &["\"soon\" is not a duration"],
    );

    // A stranger's operations are refused politely; nothing runs, nothing is audited.
    let app = RoleName::new("app").unwrap();
    let primary = primary_of(&nodes, "app").unwrap();
    for cmd in ["/switchover app", "/pause app 1h", "/resume app", "/status"] {
        has(
            &ask(&fake, STRANGER, cmd).await,
            &["Sorry", "changed nothing", "999"],
        );
    }
    assert_eq!(primary_of(&nodes, "app").as_deref(), Some(primary.as_str()));
    let explained = nodes[0]
        .as_ref()
        .unwrap()
        .ctx
        .failover
        .explain(&app)
        .await
        .unwrap();
    assert!(
        explained.to_string().contains("automatic failover on"),
        "{explained}"
    );

    // Operations: the same outcome and reason as the admin layer gives directly.
    let admin = Admin::new(nodes[0].as_ref().unwrap().ctx.clone());
    let direct = admin
        .run(
            &Principal::new("test:direct", Permission::Operate),
            AdminRequest::Switchover {
                role: "app".into(),
                to: Some("stranger".into()),
            },
        )
        .await
        .unwrap_err();
    let via_bot = ask(&fake, ADMIN, "/switchover app stranger").await;
    assert_eq!(via_bot, format!("❌ {direct}"));
    has(
        &ask(&fake, ADMIN, "/pause app 10m").await,
        &["✅ pause of app for 600s: done"],
    );
    has(&ask(&fake, ADMIN, "/explain app").await, &["paused until"]);
    has(
        &ask(&fake, ADMIN, "/resume app").await,
        &["✅ resume of app: done"],
    );
    let moved = ask(&fake, ADMIN, "/switchover app").await;
    has(&moved, &["✅ switchover of app: done, n", "chosen"]);
    let chosen = moved
        .split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(chosen, primary);
    until("the switchover", WAIT, || {
        primary_of(&nodes, "app").as_deref() == Some(chosen.as_str())
    })
    .await;
    // The switchover is alerted to both admin chats, with its measured time.
    // (The old primary is named when the new one saw it; after a resign it may see none.)
    let alert = format!(" → {chosen} (");
    let deadline = tokio::time::Instant::now() + WAIT;
    while ![ADMIN, GROUP].iter().all(|c| {
        fake.sent_to(*c)
            .iter()
            .any(|m| m.contains("🔁 app: ") && m.contains(&alert))
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {alert:?} alert within {WAIT:?}; the admin chat got {:#?}",
            fake.sent_to(ADMIN)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The audit trail names the chat for each operation, and never the stranger.
    let mut whos = Vec::new();
    for rx in &mut audits {
        while let Ok(e) = rx.try_recv() {
            if let NodeEvent::Admin(a) = e {
                whos.push(a.who);
            }
        }
    }
    assert!(whos.iter().any(|w| w == "telegram:chat 42"), "{whos:?}");
    assert!(!whos.iter().any(|w| w.contains("999")), "{whos:?}");
    assert_eq!(fake.overlaps(), 0, "no two polls overlapped");
    for n in nodes.into_iter().flatten() {
        assert_eq!(n.stats().conflicts, 0);
        n.stop(Stop::Graceful).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_ridden_out_409_is_alerted_and_retry_after_is_honoured() {
    let fake = FakeApi::start().await;
    let cluster = Cluster::new("tg-faults", 1, |t| {
        t.api_url = Some(fake.url.clone());
        t.admin_chats = vec![ADMIN];
        t.chat_interval = Duration::from_millis(20);
        // Long enough for a loaded machine (a 300 ms bound timed every poll out there and
        // the test never saw its update), short enough that the hung poll below ends soon.
        t.request_timeout = Duration::from_secs(2);
    });
    let node = cluster.start(0).await;
    let nodes = vec![Some(node)];
    until("an ingress holder", WAIT, || {
        primary_of(&nodes, "telegram-ingress").is_some()
    })
    .await;
    has(&ask(&fake, ADMIN, "/roles").await, &["• app: primary n1"]);

    // 5xx and a poll that never answers: the next polls go on.
    fake.inject("getupdates", Fault::ServerError);
    fake.inject("getupdates", Fault::Hang(Duration::from_secs(30)));
    has(&ask(&fake, ADMIN, "/roles").await, &["• app: primary n1"]);
    let n = nodes[0].as_ref().unwrap();
    assert!(n.stats().poll_errors >= 2, "{:?}", n.stats());

    // 429 on a send: the message waits retry_after and then goes; none is sent early.
    fake.inject("sendmessage", Fault::RetryAfter(2));
    has(&ask(&fake, ADMIN, "/roles").await, &["• app: primary n1"]);
    assert_eq!(fake.early_sends(), 0);
    assert!(n.stats().retry_after >= 1);

    // A 409 (another process polling the token) is counted and alerted.
    fake.inject("getupdates", Fault::Conflict);
    fake.until("the split-brain alert", WAIT, |f| {
        f.sent_to(ADMIN)
            .iter()
            .any(|m| m.contains("split-brain suspicion") && m.contains("409"))
    })
    .await;
    assert_eq!(n.stats().conflicts, 1);
    // ... and exported (quorate_telegram_events_total{event="conflict"} in /metrics).
    let samples = n.ctx.metric_sources.collect().await;
    let conflicts = samples
        .iter()
        .find(|m| {
            m.family == "telegram_events" && m.labels == vec![("event", "conflict".to_owned())]
        })
        .map(|m| m.value);
    assert_eq!(conflicts, Some(1.0), "{samples:?}");

    // A burst of 100 critical-health events: coalesced, and every one accounted for.
    let before = fake.sent_to(ADMIN).len();
    for i in 0..100 {
        let _ = n.ctx.events.send(NodeEvent::Health {
            check: format!("c{}", i % 10),
            from: "passing".into(),
            to: "critical".into(),
        });
    }
    let count = |msgs: &[String]| -> u32 {
        msgs.iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.contains(": check c"))
            .map(|l| {
                1 + l
                    .split("(and ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    fake.until("100 alerts delivered", WAIT, |f| {
        count(&f.sent_to(ADMIN)[before..]) >= 100
    })
    .await;
    let msgs = fake.sent_to(ADMIN)[before..].to_vec();
    assert_eq!(count(&msgs), 100, "nothing lost, nothing twice: {msgs:#?}");
    assert!(msgs.len() < 50, "coalesced: {} messages", msgs.len());
    assert_eq!(fake.overlaps(), 0);

    // The fence: once a higher token holds it (as a successor's takeover would), this term's
    // writes are refused: the update is neither committed nor answered, and the term stands
    // down.
    let offset_key = "quorate/telegram/telegram-ingress/offset";
    let read_offset = async || -> serde_json::Value {
        let kv = n
            .ctx
            .coord
            .get(offset_key, quorate::coord_api::Consistency::Linearizable)
            .await
            .unwrap()
            .kv
            .unwrap();
        serde_json::from_slice(&kv.value).unwrap()
    };
    n.ctx
        .coord
        .put(
            "quorate/telegram/telegram-ingress/fence",
            (u64::MAX / 2).to_be_bytes().to_vec(),
            None,
        )
        .await
        .unwrap();
    let before = read_offset().await;
    let answers = fake.sent_to(ADMIN).len();
    let id = fake.push_text(ADMIN, "/status");
    until("the stale term to stand down", WAIT, || {
        n.stats().fenced >= 1
    })
    .await;
    let after = read_offset().await;
    assert_eq!(before, after, "nothing committed under the lower token");
    assert!(after["next"].as_i64().unwrap() <= id);
    assert_eq!(fake.sent_to(ADMIN).len(), answers, "no answer sent");
    for n in nodes.into_iter().flatten() {
        n.stop(Stop::Graceful).await;
    }
}
