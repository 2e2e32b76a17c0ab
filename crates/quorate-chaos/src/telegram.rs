//! The Telegram ingress under real faults: three `quorate agent` processes, each in its own
//! network namespace, hold the `telegram-ingress` role; a fake Bot API
//! ([`quorate_testkit::fake_bot_api`]) listens on the world's bridge ([`World::BRIDGE_ADDR`]),
//! so every node reaches it, a partitioned one too (as Telegram stays reachable to a node cut
//! off from its peers: the hard case, where a stale holder could keep polling). A stream of
//! updates arrives while the holder is alternately killed (SIGKILL, then restarted) and
//! partitioned symmetrically from its peers (then healed). The report says what the caller
//! asserts: every update answered, none answered twice unmarked (a reply a kill cut off is sent
//! again marked as a possible repeat), no two polls open at once and no 409 from the fake,
//! every update confirmed; and measures the gap without a poller per hand-off.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use quorate_testkit::fake_bot_api::FakeApi;
use tokio::time::Instant;

use crate::world::{Cluster, ClusterSpec, TelegramSpec, World};

/// The ingress role.
const INGRESS: &str = "telegram-ingress";
/// The fake Bot API's port on the bridge.
const API_PORT: u16 = 8081;
/// Update `k` comes from chat `CHAT_BASE + k`, so its answers can be counted per update.
const CHAT_BASE: i64 = 1_000_000;
/// The longest wait for progress, a new holder or the final answers.
const WAIT: Duration = Duration::from_secs(120);

/// What to run.
#[derive(Clone, Debug)]
pub struct TelegramOptions {
    /// The `quorate` executable.
    pub agent_exe: PathBuf,
    /// Updates in the stream (one every 5 ms).
    pub updates: usize,
    /// Kills of the holder (each followed by its restart).
    pub kills: usize,
    /// Symmetric partitions of the holder (each healed once another node holds the role).
    pub partitions: usize,
    /// Print progress lines.
    pub verbose: bool,
    /// Keep the run's directory (configs, data, agents' output) when the trial fails.
    pub keep: bool,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct TelegramReport {
    /// Updates sent.
    pub updates: usize,
    /// Updates answered at least once.
    pub answered: usize,
    /// Chats answered more than once without the "may repeat" mark (processed twice).
    pub unmarked_repeats: Vec<i64>,
    /// Answers sent again, marked as possible repeats.
    pub marked_repeats: usize,
    /// Polls the fake saw arrive while another was open (Telegram would answer 409).
    pub overlaps: u64,
    /// Polls the fake answered with a 409.
    pub conflicts: usize,
    /// Pairs of polls whose times overlapped, described.
    pub overlapping_polls: Vec<String>,
    /// Updates the fake still holds unconfirmed at the end.
    pub unconfirmed: usize,
    /// The faults, in order: (kind, node).
    pub faults: Vec<(String, String)>,
    /// Per hand-off seen by the fake: from the last poll of one node to the first of the next,
    /// in milliseconds, sorted.
    pub gaps_ms: Vec<u64>,
    /// Push to first answer per update, in milliseconds, sorted.
    pub latency_ms: Vec<u64>,
    /// `getUpdates` calls in all.
    pub polls: usize,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

impl fmt::Display for TelegramReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kills = self.faults.iter().filter(|(k, _)| k == "kill").count();
        writeln!(
            f,
            "telegram ingress on real agents: {} updates, {} answered; {} faults ({kills} kills, {} symmetric partitions); {} hand-offs seen by the fake",
            self.updates,
            self.answered,
            self.faults.len(),
            self.faults.len() - kills,
            self.gaps_ms.len()
        )?;
        writeln!(
            f,
            "  gap without a poller per hand-off: median {} ms, p99 {} ms, max {} ms",
            pct(&self.gaps_ms, 0.5),
            pct(&self.gaps_ms, 0.99),
            self.gaps_ms.last().copied().unwrap_or(0)
        )?;
        writeln!(
            f,
            "  update push -> answer: median {} ms, p99 {} ms, max {} ms",
            pct(&self.latency_ms, 0.5),
            pct(&self.latency_ms, 0.99),
            self.latency_ms.last().copied().unwrap_or(0)
        )?;
        writeln!(
            f,
            "  answered twice unmarked: {}; marked repeats: {}; overlapping polls: {} (fake's count {}); 409s: {}; unconfirmed at the end: {}; polls: {}",
            self.unmarked_repeats.len(),
            self.marked_repeats,
            self.overlapping_polls.len(),
            self.overlaps,
            self.conflicts,
            self.unconfirmed,
            self.polls
        )?;
        for o in &self.overlapping_polls {
            writeln!(f, "  overlap: {o}")?;
        }
        write!(f, "  faults:")?;
        for (k, n) in &self.faults {
            write!(f, " {k} {n};")?;
        }
        Ok(())
    }
}

/// The node holding the ingress, per the status files.
fn holder(c: &Cluster, size: usize) -> Option<usize> {
    (0..size).find(|i| c.running(*i) && c.acting_in(*i, INGRESS) == Some(true))
}

/// Waits for a holder other than `not` (any holder when `None`).
async fn wait_holder(c: &Cluster, size: usize, not: Option<usize>) -> Result<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let found = (0..size)
            .find(|i| Some(*i) != not && c.running(*i) && c.acting_in(*i, INGRESS) == Some(true));
        if let Some(i) = found {
            return Ok(i);
        }
        if Instant::now() > deadline {
            bail!("no new holder of {INGRESS} within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn answered(fake: &FakeApi) -> usize {
    let mut chats: Vec<i64> = fake
        .sent()
        .iter()
        .map(|s| s.chat)
        .filter(|c| *c >= CHAT_BASE)
        .collect();
    chats.sort_unstable();
    chats.dedup();
    chats.len()
}

/// Runs the trial (needs root: network namespaces).
pub async fn ingress_under_faults(opts: &TelegramOptions) -> Result<TelegramReport> {
    let size = 3;
    let mut c = Cluster::start(ClusterSpec {
        agent_exe: opts.agent_exe.clone(),
        size,
        flapping: false,
        equal_priority: true,
        verbose: opts.verbose,
        act_interval_ms: 50,
        telegram: Some(TelegramSpec {
            api_url: format!("http://{}:{API_PORT}", World::BRIDGE_ADDR),
            admin_chats: vec![1],
        }),
        http_app: false,
    })
    .await?;
    match trial(&mut c, opts).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let states: Vec<String> = (0..size)
                .map(|i| {
                    let st = std::fs::read_to_string(c.dir().join(c.name(i)).join("status.json"))
                        .unwrap_or_else(|e| format!("no status: {e}"));
                    format!("{}: {st}", c.name(i))
                })
                .collect();
            let kept = if opts.keep {
                let dir = c.keep();
                format!("; kept {}", dir.display())
            } else {
                String::new()
            };
            Err(e.context(format!("status files:\n{}{kept}", states.join("\n"))))
        }
    }
}

async fn trial(c: &mut Cluster, opts: &TelegramOptions) -> Result<TelegramReport> {
    let size = 3;
    // Until the fake listens the agents' calls are refused and retried, as when Telegram is
    // briefly unreachable.
    let listener = c.world().bind_on_bridge(API_PORT)?;
    let fake = FakeApi::start_on(
        tokio::net::TcpListener::from_std(listener).context("the fake's listener")?,
    );
    wait_holder(c, size, None).await?;

    let updates = opts.updates;
    let producer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(updates);
            for k in 0..updates {
                ids.push(fake.push_text(CHAT_BASE + k as i64, &format!("ping {k}")));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    let mut report = TelegramReport {
        updates,
        ..TelegramReport::default()
    };
    let faults = opts.kills + opts.partitions;
    let (mut kills, mut partitions) = (0, 0);
    for e in 0..faults {
        // Let the stream flow a little under the current holder.
        let target = (e + 1) * updates / (faults + 1);
        let deadline = Instant::now() + WAIT;
        while answered(&fake) < target {
            if Instant::now() > deadline {
                bail!(
                    "progress: {} of {target} answered within {WAIT:?}; {} polls, {} unconfirmed",
                    answered(&fake),
                    fake.polls().len(),
                    fake.unconfirmed()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let h = match holder(c, size) {
            Some(h) => h,
            None => wait_holder(c, size, None).await?,
        };
        let name = c.name(h).to_owned();
        let kill = (e % 2 == 0 && kills < opts.kills) || partitions >= opts.partitions;
        if kill {
            kills += 1;
            report.faults.push(("kill".into(), name));
            c.kill(h).await?;
            wait_holder(c, size, Some(h)).await?;
            let priority = c.priority(h);
            c.spawn(h, false, priority).await?;
        } else {
            partitions += 1;
            report.faults.push(("partition".into(), name));
            c.isolate_symmetric(h).await?;
            wait_holder(c, size, Some(h)).await?;
            c.heal_symmetric(h).await?;
        }
    }
    let ids = producer.await.context("the producer")?;
    let deadline = Instant::now() + WAIT;
    while answered(&fake) < updates || fake.unconfirmed() > 0 {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await?;

    let sent = fake.sent();
    let mut per_chat: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.chat >= CHAT_BASE) {
        per_chat.entry(s.chat).or_default().push(&s.text);
    }
    report.answered = per_chat.len();
    for (chat, texts) in &per_chat {
        let plain = texts.iter().filter(|t| !t.contains("may repeat")).count();
        if plain > 1 {
            report.unmarked_repeats.push(*chat);
        }
        report.marked_repeats += texts.len() - 1;
    }
    let mut polls = fake.polls();
    polls.sort_by_key(|p| p.start);
    report.polls = polls.len();
    report.overlaps = fake.overlaps();
    report.conflicts = polls.iter().filter(|p| p.outcome.contains("409")).count();
    for w in polls.windows(2) {
        if w[1].start < w[0].end {
            report.overlapping_polls.push(format!(
                "{} ({}, {:?}) and {} ({}, {:?})",
                w[0].agent,
                w[0].outcome,
                w[0].end - w[0].start,
                w[1].agent,
                w[1].outcome,
                w[1].end - w[1].start
            ));
        }
        if w[0].agent != w[1].agent {
            report.gaps_ms.push(
                u64::try_from((w[1].start.saturating_duration_since(w[0].end)).as_millis())
                    .unwrap_or(u64::MAX),
            );
        }
    }
    report.gaps_ms.sort_unstable();
    report.unconfirmed = fake.unconfirmed();
    let mut first: BTreeMap<i64, Instant> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.chat >= CHAT_BASE) {
        first.entry(s.chat).or_insert(s.at);
    }
    for (k, id) in ids.iter().enumerate() {
        if let (Some(p), Some(r)) = (fake.pushed_at(*id), first.get(&(CHAT_BASE + k as i64))) {
            report.latency_ms.push(
                u64::try_from(r.saturating_duration_since(p).as_millis()).unwrap_or(u64::MAX),
            );
        }
    }
    report.latency_ms.sort_unstable();
    Ok(report)
}
