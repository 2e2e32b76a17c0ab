//! quorate-telegram: a Telegram bot for a quorate cluster, itself highly available.
//!
//! [`TelegramPlugin`] is a node stage ([`quorate_startup::Plugin`]). On every node that has
//! a `[telegram]` section it:
//! - runs the **ingress** as a failover role (`telegram-ingress` by default): only the role's
//!   holder polls `getUpdates`, each poll ends before the holder's lease can, and the last
//!   processed `update_id` lives in the coordination store behind a fence of fencing tokens
//!   (a write carrying a lower token than the fence is refused), so a hand-off neither loses
//!   nor repeats an update (the `ingress` module docs spell out the argument);
//! - answers **commands** from the admin chats (`/status`, `/nodes`, `/roles`, `/history`,
//!   `/health`, `/explain`, `/switchover`, `/pause`, `/resume`); operations go through
//!   [`quorate_startup::admin::Admin`], so they get the same outcome and reason as on every
//!   other surface; other chats get a polite refusal and nothing else happens;
//! - turns this node's events into **alerts** (role changes with the measured failover time,
//!   quorum lost and regained, critical health transitions, a 409 from Telegram as
//!   split-brain suspicion), queued in an outbox in the coordination store keyed by event, and
//!   sent by the ingress holder alone, throttled to Telegram's limits and coalesced.
//!
//! ```no_run
//! # async fn run(v: quorate_startup::config::Validated) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let mut builder = quorate_startup::Node::builder(v.clone());
//! if let Some(t) = &v.telegram {
//!     builder = builder.plugin(Arc::new(quorate_telegram::TelegramPlugin::new(t.clone())));
//! }
//! let node = builder.start().await?;
//! # let _ = node; Ok(()) }
//! ```

mod alerts;
mod api;
mod commands;
mod error;
mod ingress;
mod store;
mod webhook;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_startup::config::TelegramSettings;
use quorate_startup::{NodeContext, NodeEvent, Plugin};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::TelegramError;

use crate::alerts::{AlertMapper, Draft, Limits};
use crate::ingress::{Counters, Shared};

/// Counters of this node's Telegram adapter, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TelegramStats {
    /// Terms of the ingress role this node ran.
    pub terms: u64,
    /// `getUpdates` calls made.
    pub polls: u64,
    /// Updates processed (answered and committed).
    pub processed: u64,
    /// Updates from chats not in the allow-list (refused).
    pub refused: u64,
    /// 409 Conflict answers to `getUpdates`: another process polls the token (split-brain
    /// suspicion; each one is also alerted).
    pub conflicts: u64,
    /// Failed polls (timeouts, network, 5xx).
    pub poll_errors: u64,
    /// Messages sent.
    pub sent: u64,
    /// Failed sends.
    pub send_errors: u64,
    /// 429 answers (flood control) honoured.
    pub retry_after: u64,
    /// Writes refused by the fence (a successor took over).
    pub fenced: u64,
    /// Alerts this node queued in the outbox.
    pub alerts_queued: u64,
    /// Webhook mode: updates posted to this node with the right secret.
    pub webhook_posts: u64,
    /// Webhook mode: requests refused (wrong or missing secret, not an update).
    pub webhook_refused: u64,
}

/// This node's Telegram counters for the metrics exporter: `quorate_telegram_events_total{event}`
/// (docs/api.md); `conflict` is Telegram's 409, a split-brain symptom.
struct StatsSource {
    counters: Arc<Counters>,
    alerts_queued: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait::async_trait]
impl quorate_startup::sources::MetricSource for StatsSource {
    async fn samples(&self) -> Vec<quorate_startup::sources::MetricSample> {
        let c = &self.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        [
            ("term", l(&c.terms)),
            ("poll", l(&c.polls)),
            ("processed", l(&c.processed)),
            ("refused", l(&c.refused)),
            ("conflict", l(&c.conflicts)),
            ("poll_error", l(&c.poll_errors)),
            ("sent", l(&c.sent)),
            ("send_error", l(&c.send_errors)),
            ("retry_after", l(&c.retry_after)),
            ("fenced", l(&c.fenced)),
            ("alert_queued", l(&self.alerts_queued)),
            ("webhook_post", l(&c.posts)),
            ("webhook_refused", l(&c.refused_posts)),
        ]
        .into_iter()
        .map(|(event, n)| {
            quorate_startup::sources::MetricSample::counter(
                "telegram_events",
                "This node's Telegram adapter: ingress terms, polls, updates processed and refused, \
                 409 conflicts (another poller: split-brain suspicion), poll and send errors, \
                 messages sent, 429 waits, fenced writes, alerts queued, webhook posts and refusals",
                vec![("event", event.to_owned())],
                n,
            )
        })
        .collect()
    }
}

/// Alerts waiting locally (the store was unreachable, e.g. this node is in a minority) at
/// most; beyond it the oldest are dropped and counted in the next alert.
const LOCAL_ALERTS_MAX: usize = 256;

/// The Telegram stage of a node. Cheap to share; `start` once.
pub struct TelegramPlugin {
    settings: TelegramSettings,
    counters: Arc<Counters>,
    alerts_queued: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for TelegramPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelegramPlugin")
            .field("role", &self.settings.role)
            .field("admin_chats", &self.settings.section.admin_chats)
            .finish_non_exhaustive()
    }
}

impl TelegramPlugin {
    /// The stage for a validated `[telegram]` section.
    pub fn new(settings: TelegramSettings) -> TelegramPlugin {
        TelegramPlugin {
            settings,
            counters: Arc::new(Counters::default()),
            alerts_queued: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    /// This node's counters.
    pub fn stats(&self) -> TelegramStats {
        let c = &self.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        TelegramStats {
            terms: l(&c.terms),
            polls: l(&c.polls),
            processed: l(&c.processed),
            refused: l(&c.refused),
            conflicts: l(&c.conflicts),
            poll_errors: l(&c.poll_errors),
            sent: l(&c.sent),
            send_errors: l(&c.send_errors),
            retry_after: l(&c.retry_after),
            fenced: l(&c.fenced),
            alerts_queued: l(&self.alerts_queued),
            webhook_posts: l(&c.posts),
            webhook_refused: l(&c.refused_posts),
        }
    }

    fn shared(&self, node: &NodeContext) -> Result<Shared, TelegramError> {
        let s = &self.settings.section;
        let role = self.settings.role.clone();
        let section = node
            .config
            .raw
            .roles
            .iter()
            .find(|r| r.name == role.as_str())
            .ok_or_else(|| {
                TelegramError::Config(format!(
                    "the ingress role {role} is not among this node's roles"
                ))
            })?;
        let lease_ttl = section.role_config(node.config.profile.is_wan()).lease.ttl;
        let agent = format!(
            "quorate-telegram/{} (node {})",
            env!("CARGO_PKG_VERSION"),
            node.config.node_id
        );
        let api = api::BotApi::new(self.settings.token.expose(), s.api_url.as_deref(), &agent)?;
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| {
                u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
            });
        Ok(Shared {
            node: node.clone(),
            admin: quorate_startup::admin::Admin::new(node.clone()),
            api,
            store: store::Store::new(node.coord.clone(), role.as_str()),
            role,
            admins: s.admin_chats.iter().copied().collect(),
            poll_timeout: s.poll_timeout,
            short_poll_interval: s.short_poll_interval,
            request_timeout: s.request_timeout,
            handoff_margin: s.handoff_margin,
            lease_ttl,
            batch_max: s.batch_max,
            outbox_max: s.outbox_max,
            limits: Limits {
                chat_interval: s.chat_interval,
                group_per_minute: s.group_per_minute,
                global_per_second: s.global_per_second,
            },
            counters: Arc::clone(&self.counters),
            mapper: Mutex::new(AlertMapper::new(
                node.config.node_id.to_string(),
                incarnation,
                s.admin_chats.clone(),
            )),
            alerts: s.alerts,
            txn_ops: node
                .coord
                .capabilities()
                .txn_ops_max
                .saturating_sub(2)
                .max(4),
            webhook: match (&s.webhook_url, &self.settings.webhook_secret) {
                (Some(url), Some(secret)) if s.mode == "webhook" => Some(webhook::Webhook::new(
                    url.clone(),
                    secret.expose().to_owned(),
                )),
                _ => None,
            },
        })
    }
}

#[async_trait::async_trait]
impl Plugin for TelegramPlugin {
    fn name(&self) -> &str {
        "telegram"
    }

    async fn start(&self, node: &NodeContext) -> Result<(), String> {
        let shared = Arc::new(self.shared(node).map_err(|e| e.to_string())?);
        node.metric_sources.register(
            "telegram",
            Arc::new(StatsSource {
                counters: Arc::clone(&self.counters),
                alerts_queued: Arc::clone(&self.alerts_queued),
            }),
        );
        if shared.webhook.is_some() {
            let addr = self
                .settings
                .section
                .webhook_listen
                .clone()
                .unwrap_or_default();
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| format!("telegram.webhook_listen {addr}: {e}"))?;
            self.tracker.spawn(webhook::serve(
                listener,
                Arc::clone(&shared),
                self.cancel.clone(),
            ));
        }
        if shared.alerts {
            let events = node.events.subscribe();
            self.tracker.spawn(alert_source(
                Arc::clone(&shared),
                events,
                Arc::clone(&self.alerts_queued),
                self.cancel.clone(),
            ));
        }
        self.tracker
            .spawn(ingress::supervise(shared, self.cancel.clone()));
        Ok(())
    }

    async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Every node turns its own events into alerts and queues them in the outbox (an alert id
/// names its event, so an event reported by several nodes is queued once). Alerts that cannot
/// be written (no majority) wait here, bounded, and are written once the store answers.
async fn alert_source(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<NodeEvent>,
    queued: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
) {
    let start = Instant::now();
    let mut waiting: std::collections::VecDeque<Draft> = std::collections::VecDeque::new();
    let mut dropped = 0u64;
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            e = events.recv() => match e {
                Ok(e) => {
                    let draft = shared
                        .mapper
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .map(&e, start.elapsed(), quorate_startup::report::unix_ms_now());
                    if let Some(d) = draft {
                        if waiting.len() >= LOCAL_ALERTS_MAX {
                            waiting.pop_front();
                            dropped += 1;
                        }
                        waiting.push_back(d);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => dropped += n,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = retry.tick() => {}
        }
        while let Some(d) = waiting.front() {
            let mut d = d.clone();
            if dropped > 0 {
                d.entry.text.push_str(&format!(
                    " ({dropped} earlier alert(s) of this node were dropped: the store was unreachable too long)"
                ));
            }
            match tokio::time::timeout(
                shared.request_timeout,
                shared.store.put_if_absent(&d.id, &d.entry),
            )
            .await
            {
                Ok(Ok(new)) => {
                    if new {
                        queued.fetch_add(1, Ordering::Relaxed);
                    }
                    dropped = 0;
                    waiting.pop_front();
                }
                _ => break,
            }
        }
    }
}
