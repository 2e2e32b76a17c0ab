//! The ingress hand-off: three in-process nodes hold the `telegram-ingress` role; the fake Bot
//! API receives a stream of updates while the holder is stopped again and again, alternately
//! killed (its runtime dropped with every task and socket, no shutdown step) and stopped
//! gracefully (the role handed over), each time restarted on its data directory. Checked: every
//! update is answered, and committed exactly once (the fenced offset record counts them); a
//! repeated reply only where a send was cut by a kill, and then marked as a possible repeat; the
//! fake saw no two polls overlap and answered no 409. Printed: the gap without a poller per
//! hand-off (median, p99) and the update latency.
//!
//! `QUORATE_TG_UPDATES` (default 2000) and `QUORATE_TG_STOPS` (default 10) size the run.
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
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(120);
const CHAT_BASE: i64 = 1_000_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_survives_kills_and_handovers_without_loss_repeat_or_overlap() {
    let updates = env("QUORATE_TG_UPDATES", 2000);
    let stops = env("QUORATE_TG_STOPS", 10);
    let fake = FakeApi::start().await;
    let cluster = Cluster::new("tg-handoff", 3, |t| {
        t.api_url = Some(fake.url.clone());
        t.admin_chats = vec![1];
        t.chat_interval = Duration::from_millis(1);
        t.global_per_second = 1000;
        t.request_timeout = Duration::from_secs(1);
        t.short_poll_interval = Duration::from_millis(50);
    });
    let mut nodes: Vec<_> = cluster.start_all().await.into_iter().map(Some).collect();
    until("an ingress holder", WAIT, || {
        primary_of(&nodes, "telegram-ingress").is_some()
    })
    .await;

    // The stream: one update every 5 ms, each from its own chat (its answer names the chat).
    let producer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..updates {
                ids.push(fake.push_text(CHAT_BASE + k as i64, &format!("ping {k}")));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    let answered = |f: &FakeApi| support::answered_chats(f, CHAT_BASE);
    let mut stop_log = Vec::new();
    for e in 0..stops {
        // Let the stream flow a little under the current holder.
        let target = (e + 1) * updates / (stops + 1);
        let deadline = Instant::now() + WAIT;
        while answered(&fake) < target {
            assert!(
                Instant::now() < deadline,
                "progress: {} of {target} answered; {} polls, {} unconfirmed, stats {:?}",
                answered(&fake),
                fake.polls().len(),
                fake.unconfirmed(),
                nodes
                    .iter()
                    .flatten()
                    .map(|n| n.stats())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        until("a holder", WAIT, || {
            primary_of(&nodes, "telegram-ingress").is_some()
        })
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
        stop_log.push((holder.clone(), how, Instant::now()));
        nodes[i].take().unwrap().stop(how).await;
        until("a new holder", WAIT, || {
            primary_of(&nodes, "telegram-ingress").is_some_and(|p| p != holder)
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

    // Replies: one per update; a second only where a kill cut a send, and then marked.
    let sent = fake.sent();
    let mut per_chat: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.chat >= CHAT_BASE) {
        per_chat.entry(s.chat).or_default().push(&s.text);
    }
    assert_eq!(per_chat.len(), updates);
    let mut repeats = 0;
    for (chat, texts) in &per_chat {
        let plain = texts.iter().filter(|t| !t.contains("may repeat")).count();
        assert!(plain <= 1, "chat {chat} answered twice unmarked: {texts:?}");
        repeats += texts.len() - 1;
    }
    // A kill can cut one sending round (up to 32 concurrent sends) between the sends and their
    // acknowledgement; only those are sent again, each marked.
    let kills = stop_log.iter().filter(|(_, h, _)| *h == Stop::Kill).count();
    assert!(repeats <= kills * 32, "{repeats} repeats for {kills} kills");

    // No two polls overlapped, and the fake answered no 409.
    let polls = fake.polls();
    assert_eq!(fake.overlaps(), 0);
    assert!(
        !polls.iter().any(|p| p.outcome.contains("409")),
        "a 409 was answered"
    );
    let mut sorted = polls.clone();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        assert!(
            w[1].start >= w[0].end,
            "polls overlapped: {:?} and {:?}",
            w[0],
            w[1]
        );
    }

    // Gaps: per stop, from the last poll of the stopped holder to the first of its successor.
    let mut gaps = Vec::new();
    for w in sorted.windows(2) {
        if w[0].agent != w[1].agent {
            gaps.push(w[1].start - w[0].end);
        }
    }
    gaps.sort();
    let mut latency: Vec<Duration> = Vec::new();
    let first_reply: BTreeMap<i64, Instant> =
        sent.iter()
            .filter(|s| s.chat >= CHAT_BASE)
            .fold(BTreeMap::new(), |mut m, s| {
                m.entry(s.chat).or_insert(s.at);
                m
            });
    for (k, id) in ids.iter().enumerate() {
        if let (Some(p), Some(r)) = (
            fake.pushed_at(*id),
            first_reply.get(&(CHAT_BASE + k as i64)),
        ) {
            latency.push(r.saturating_duration_since(p));
        }
    }
    latency.sort();
    println!(
        "telegram ingress hand-off: {updates} updates, {} stops ({kills} kills, {} graceful), {} hand-offs seen by the fake",
        stop_log.len(),
        stop_log.len() - kills,
        gaps.len()
    );
    println!(
        "  gap without a poller per hand-off: median {} ms, p99 {} ms, max {} ms",
        pct(&gaps, 0.5).as_millis(),
        pct(&gaps, 0.99).as_millis(),
        gaps.last().copied().unwrap_or_default().as_millis()
    );
    println!(
        "  update push -> answer: median {} ms, p99 {} ms, max {} ms; repeated answers (marked) {repeats}; polls {}",
        pct(&latency, 0.5).as_millis(),
        pct(&latency, 0.99).as_millis(),
        latency.last().copied().unwrap_or_default().as_millis(),
        polls.len()
    );
    for n in nodes.into_iter().flatten() {
        n.stop(Stop::Graceful).await;
    }
}
