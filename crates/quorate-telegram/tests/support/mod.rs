//! Test support: the fake Bot API, and in-process quorate nodes with the Telegram stage, each
//! on its own runtime thread so that a test can stop one gracefully or kill it (its runtime
//! is dropped with every task and socket, as a crash would), and start it again on the same
//! data directory.
#![allow(dead_code, reason = "each test binary uses part of the support")]

pub(crate) use quorate_testkit::fake_bot_api as fake_api;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quorate::config::{RoleSection, TelegramSection};
use quorate_startup::{Node, NodeContext};
use quorate_telegram::{TelegramPlugin, TelegramStats};
use quorate_testkit::agents::{LoopbackPlan, write_config};
use tokio::sync::oneshot;

pub(crate) const TOKEN: &str = "123456:TEST_token-abcdefghijklmnopqrstuvwxyz";

/// How a node is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `Node::shutdown`: roles handed over first.
    Graceful,
    /// Every task and socket dropped at once.
    Kill,
}

pub(crate) struct Running {
    stop: Option<oneshot::Sender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub(crate) ctx: NodeContext,
    pub(crate) plugin: Arc<TelegramPlugin>,
}

impl Running {
    pub(crate) fn stats(&self) -> TelegramStats {
        self.plugin.stats()
    }

    /// Stops the node and waits for its thread.
    pub(crate) async fn stop(mut self, how: Stop) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(how);
        }
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || {
                let _ = t.join();
            })
            .await
            .expect("join");
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) plan: LoopbackPlan,
    pub(crate) configs: Vec<PathBuf>,
}

impl Cluster {
    /// `n` node configs with the role `app` and a `[telegram]` section made by `telegram`.
    pub(crate) fn new(name: &str, n: usize, telegram: impl Fn(&mut TelegramSection)) -> Cluster {
        Self::new_each(name, n, |_, t| telegram(t))
    }

    /// Like [`Cluster::new`], with node `i`'s section made by `telegram(i, ..)`.
    pub(crate) fn new_each(
        name: &str,
        n: usize,
        telegram: impl Fn(usize, &mut TelegramSection),
    ) -> Cluster {
        Self::configured(name, n, |i, c| {
            if let Some(t) = c.telegram.as_mut() {
                telegram(i, t);
            }
        })
    }

    /// `n` node configs with the role `app` and a `[telegram]` section (no admin chats), then
    /// changed by `config(i, ..)`.
    pub(crate) fn configured(
        name: &str,
        n: usize,
        config: impl Fn(usize, &mut quorate::config::AgentConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = LoopbackPlan::new(name, n, dir.path()).expect("plan");
        let token = dir.path().join("bot.token");
        std::fs::write(&token, TOKEN).expect("token");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
        }
        let configs = (0..n)
            .map(|i| {
                write_config(&plan, i, dir.path(), |c| {
                    c.roles.push(RoleSection::named("app"));
                    c.telegram = Some(TelegramSection::new(token.clone(), vec![]));
                    config(i, c);
                })
                .expect("config")
            })
            .collect();
        Cluster { dir, plan, configs }
    }

    /// Starts node `i` on its own runtime thread.
    pub(crate) async fn start(&self, i: usize) -> Running {
        let path = self.configs[i].clone();
        let (stop_tx, stop_rx) = oneshot::channel::<Stop>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("node-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("runtime");
                let how = rt.block_on(async move {
                    let v = quorate::config::load(&path).expect("valid config");
                    let plugin =
                        Arc::new(TelegramPlugin::new(v.telegram.clone().expect("[telegram]")));
                    let node = Node::builder(v)
                        .status_file(false)
                        .plugin(plugin.clone())
                        .start()
                        .await
                        .expect("node starts");
                    let _ = ready_tx.send((node.context().clone(), plugin));
                    let how = stop_rx.await.unwrap_or(Stop::Kill);
                    if how == Stop::Graceful {
                        node.shutdown(Duration::from_secs(20)).await;
                        None
                    } else {
                        Some(node)
                    }
                });
                // A kill: the node is dropped, and its runtime with every task and socket,
                // without any shutdown step.
                {
                    let _inside = rt.enter();
                    drop(how);
                }
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("thread");
        let (ctx, plugin) = ready_rx.await.expect("node started");
        Running {
            stop: Some(stop_tx),
            thread: Some(thread),
            ctx,
            plugin,
        }
    }

    /// Starts every node (concurrently: they wait for each other to form the cluster).
    pub(crate) async fn start_all(&self) -> Vec<Running> {
        let n = self.configs.len();
        let starts = (0..n).map(|i| self.start(i));
        futures::future::join_all(starts).await
    }
}

/// The node (index) that holds `role`, as node `nodes[0]`... sees it (any running node).
pub(crate) fn primary_of(nodes: &[Option<Running>], role: &str) -> Option<String> {
    let role = quorate::types::RoleName::new(role).ok()?;
    nodes.iter().flatten().find_map(|n| {
        let st = n.ctx.failover.status(&role).ok()?;
        let st = st.borrow().clone();
        st.acting.then(|| n.ctx.config.node_id.to_string())
    })
}

/// Waits until `f` holds, checking every 20 ms, up to `limit`.
pub(crate) async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ingress's fenced offset record (`next`, `processed`), read linearizably through `ctx`.
pub(crate) async fn offset_record(ctx: &NodeContext) -> serde_json::Value {
    let kv = ctx
        .coord
        .get(
            "quorate/telegram/telegram-ingress/offset",
            quorate::coord_api::Consistency::Linearizable,
        )
        .await
        .expect("read the offset")
        .kv
        .expect("offset record");
    serde_json::from_slice(&kv.value).expect("offset record JSON")
}

/// How many chats at or above `base` got at least one message.
pub(crate) fn answered_chats(fake: &fake_api::FakeApi, base: i64) -> usize {
    let mut chats: Vec<i64> = fake
        .sent()
        .iter()
        .map(|s| s.chat)
        .filter(|c| *c >= base)
        .collect();
    chats.sort_unstable();
    chats.dedup();
    chats.len()
}
