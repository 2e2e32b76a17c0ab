//! Webhook mode: three in-process nodes serve the webhook; the ingress holder points the
//! fake Bot API's webhook at itself, and the fake posts every update there (one at a time, in
//! order, again until answered 2xx, as Telegram does). While updates stream in, the holder is
//! killed and stopped gracefully in turn. Checked: every update is answered and committed
//! exactly once (the fenced offset record counts them), each hand-off moves the webhook to the
//! new holder, a node that is not the holder answers 503 (so Telegram keeps the update), and a
//! request without the secret, or with a body that is no update, changes nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test"
)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::fake_api::FakeApi;
use support::{Cluster, Stop, primary_of, until};

const WAIT: Duration = Duration::from_secs(120);
const CHAT_BASE: i64 = 2_000_000;
const SECRET: &str = "s3cret_webhook-TOKEN";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_hands_off_without_loss_or_repeat_and_refuses_strangers() {
    let updates = 240usize;
    let stops = 4usize;
    let fake = FakeApi::start().await;
    let ports: Vec<u16> = (0..3)
        .map(|_| quorate_testports::free_port().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, SECRET).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/telegram"))
        .collect();
    let cluster = Cluster::new_each("tg-webhook", 3, |i, t| {
        t.api_url = Some(fake.url.clone());
        t.admin_chats = vec![1];
        t.mode = "webhook".to_owned();
        t.webhook_url = Some(urls[i].clone());
        t.webhook_listen = Some(format!("127.0.0.1:{}", ports[i]));
        t.webhook_secret_file = Some(secret.clone());
        t.chat_interval = Duration::from_millis(1);
        t.global_per_second = 1000;
        t.request_timeout = Duration::from_secs(1);
    });
    let mut nodes: Vec<_> = cluster.start_all().await.into_iter().map(Some).collect();
    until("an ingress holder", WAIT, || {
        primary_of(&nodes, "telegram-ingress").is_some()
    })
    .await;
    fake.until("the webhook set", WAIT, |f| !f.webhook_calls().is_empty())
        .await;

    // Strangers: no secret, a wrong one, a body that is no update. Nothing is processed.
    let http = reqwest::Client::new();
    let forged = serde_json::json!({
        "update_id": 1,
        "message": {"message_id": 1, "date": 1_700_000_000,
            "chat": {"id": 777, "type": "private", "first_name": "op"},
            "text": "/status"}
    });
    for (secret, body) in [
        (None, forged.to_string()),
        (Some("wrong"), forged.to_string()),
        (Some(SECRET), "{\"not\": \"an update\"}".to_owned()),
    ] {
        for url in &urls {
            let mut req = http.post(url).body(body.clone());
            if let Some(s) = secret {
                req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
            }
            let status = req.send().await.unwrap().status().as_u16();
            let want = if secret == Some(SECRET) { 400 } else { 401 };
            assert_eq!(status, want, "{url} with secret {secret:?}");
        }
    }
    // A node that does not hold the ingress answers 503: Telegram keeps the update.
    let holder = primary_of(&nodes, "telegram-ingress").unwrap();
    let other = (0..3).find(|i| cluster.plan.names[*i] != holder).unwrap();
    let status = http
        .post(&urls[other])
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body(forged.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 503, "a node that is not the holder took an update");
    let refused: u64 = nodes
        .iter()
        .flatten()
        .map(|n| n.stats().webhook_refused)
        .sum();
    assert_eq!(refused, 9);

    // The stream, with stops of the holder.
    let producer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..updates {
                ids.push(fake.push_text(CHAT_BASE + k as i64, &format!("ping {k}")));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ids
        })
    };
    let answered = |f: &FakeApi| support::answered_chats(f, CHAT_BASE);
    for e in 0..stops {
        let target = (e + 1) * updates / (stops + 1);
        fake.until("progress", WAIT, |f| answered(f) >= target)
            .await;
        let holder = primary_of(&nodes, "telegram-ingress").expect("a holder");
        let i = cluster
            .plan
            .names
            .iter()
            .position(|n| *n == holder)
            .unwrap();
        let how = if e % 2 == 0 {
            Stop::Kill
        } else {
            Stop::Graceful
        };
        let calls = fake.webhook_calls().len();
        nodes[i].take().unwrap().stop(how).await;
        until("a new holder", WAIT, || {
            primary_of(&nodes, "telegram-ingress").is_some_and(|p| p != holder)
        })
        .await;
        let successor = primary_of(&nodes, "telegram-ingress").unwrap();
        let j = cluster
            .plan
            .names
            .iter()
            .position(|n| *n == successor)
            .unwrap();
        fake.until("the webhook moved", WAIT, |f| {
            f.webhook_calls()[calls..]
                .iter()
                .any(|c| *c == format!("set {}", urls[j]))
        })
        .await;
        nodes[i] = Some(cluster.start(i).await);
    }
    let ids = producer.await.unwrap();
    fake.until("every update answered", WAIT, |f| answered(f) >= updates)
        .await;

    // Exactly once: the fenced offset record counted every update once.
    let ctx = &nodes.iter().flatten().next().unwrap().ctx;
    let rec = support::offset_record(ctx).await;
    assert_eq!(rec["processed"].as_u64(), Some(updates as u64), "{rec}");
    assert_eq!(rec["next"].as_i64(), ids.last().map(|l| l + 1), "{rec}");
    // Every update answered; at most once unmarked (a send cut by a kill is repeated by the
    // successor, marked "may repeat").
    let mut per_chat: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    for s in fake.sent().iter().filter(|s| s.chat >= CHAT_BASE) {
        let e = per_chat.entry(s.chat).or_default();
        if s.text.contains("may repeat") {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    assert_eq!(per_chat.len(), updates);
    assert!(
        per_chat.values().all(|(plain, _)| *plain <= 1),
        "an update answered twice unmarked"
    );
    // Nothing of the strangers' requests was processed (it would have been answered).
    assert!(fake.sent_to(777).is_empty(), "{:?}", fake.sent_to(777));

    let deliveries = fake.deliveries();
    let not_taken = deliveries.iter().filter(|d| d.status != 200).count();
    println!(
        "telegram webhook: {updates} updates, {stops} stops, {} deliveries ({not_taken} not taken: holder gone or not the holder), webhook calls {:?}",
        deliveries.len(),
        fake.webhook_calls()
    );
    for n in nodes.into_iter().flatten() {
        n.stop(Stop::Graceful).await;
    }
}
