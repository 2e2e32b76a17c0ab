//! `quorate agent`: config -> [`Node::builder`] -> run until SIGTERM or Ctrl-C, printing every
//! node event as one JSON line on stdout (`quorate demo` and the tests read them). The first
//! signal starts a graceful shutdown (roles handed over first, within `[startup]
//! stop_budget`); a second one stops at once. SIGHUP reads the config file again and takes its
//! cluster keys ([`Node::reload_keys`]: a key rotation without a restart).

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;
use quorate_startup::config::Validated;
use quorate_startup::{Node, NodeEvent};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::broadcast;

/// Prints one event line on stdout (flushed at once: `quorate demo` reads it live).
fn emit(e: &NodeEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", e.to_line());
    let _ = out.flush();
}

/// Loads the config at `config` and runs the agent until a signal.
pub async fn run(config: &Path) -> Result<()> {
    let v = quorate_startup::config::load(config)?;
    run_validated(v, config).await
}

/// Runs the agent on a validated config (read from `config`, which SIGHUP reads again).
async fn run_validated(v: Validated, config: &Path) -> Result<()> {
    let budget = v.startup.stop_budget;
    let api = quorate_api::ApiPlugin::from_config(&v);
    let telegram = v.telegram.clone();
    let redis = quorate_redis::RedisConfig::from_agent(&v)?;
    let mut builder = Node::builder(v);
    // The Telegram bot, when configured: a stage after the roles (its ingress is a role).
    if let Some(t) = telegram {
        builder = builder.plugin(std::sync::Arc::new(quorate_telegram::TelegramPlugin::new(
            t,
        )));
    }
    // `[redis]`: the Redis adapter's hooks, lag source and plugin for its role.
    if let Some(config) = redis {
        builder = quorate_redis::RedisAdapter::new(config)?.install(builder);
    }
    // `[replication]`: the declared keyspaces, started as a stage; leader-mode ones feed
    // their role's lag source.
    let (mut builder, _replication) =
        quorate_startup::replication::ReplicationStage::attach(builder);
    if let Some(api) = api {
        builder = builder.plugin(std::sync::Arc::new(api));
    }
    // Every event from the first stage on, printed as it happens (stages included), so a
    // supervisor or test sees how far startup got.
    let mut events = builder.events();
    let mut start = Box::pin(builder.start());
    let node = loop {
        tokio::select! {
            r = &mut start => match r {
                Ok(node) => break node,
                Err(e) => {
                    while let Ok(ev) = events.try_recv() {
                        emit(&ev);
                    }
                    eprint!("startup report:\n{}", e.report);
                    return Err(anyhow::anyhow!("{e}"));
                }
            },
            e = events.recv() => {
                if let Ok(e) = e {
                    emit(&e);
                }
            }
        }
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut failure = None;
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    emit(&e);
                    if let NodeEvent::ComponentFailed { component, reason } = e {
                        failure = Some(format!("{component} stopped ({reason}); the agent stopped with it"));
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // The outcome is a node event (printed by the arm above): the keys taken, or
                // why the file was refused (every problem, each naming its field).
                let fresh = quorate_startup::config::load(config).map_err(|e| e.to_string());
                match fresh {
                    Ok(fresh) => {
                        let _ = node.reload_keys(&fresh);
                    }
                    Err(e) => node.report_reload(&Err(e)),
                }
            }
        }
    }
    let node_name = node.context().config.node_id.to_string();
    emit(&NodeEvent::Stopping {
        node: node_name.clone(),
    });
    let mut shutdown = Box::pin(node.shutdown(budget));
    // Print the events of the shutdown (role hand-off) while it runs; a second signal forces.
    loop {
        tokio::select! {
            report = &mut shutdown => {
                for (role, outcome) in &report.handovers {
                    tracing::info!("shutdown: {role}: {outcome:?}");
                }
                if !report.within_budget {
                    tracing::warn!("shutdown: the stop budget {budget:?} ran out");
                }
                break;
            }
            e = events.recv() => {
                if let Ok(e) = e {
                    emit(&e);
                }
            }
            _ = term.recv() => {
                eprintln!("quorate agent: second signal: stopping now");
                std::process::exit(1);
            }
            _ = int.recv() => {
                eprintln!("quorate agent: second signal: stopping now");
                std::process::exit(1);
            }
        }
    }
    emit(&NodeEvent::Stopped { node: node_name });
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
