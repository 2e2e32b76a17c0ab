//! The ingress role's terms: while this node holds the role, one task polls `getUpdates` and
//! answers the updates, and one sends what the outbox holds; both stop when the term ends.
//!
//! Safety of the hand-off:
//! - every poll asks Telegram to hold it at most `min(poll_timeout, lease window left -
//!   margin)`, in whole seconds, and the call is bounded to end before the lease window
//!   closes: a holder that dies or is cut off has no poll open at Telegram by the time the
//!   coordination store can grant the role to another node;
//! - a new holder first waits for the longest poll a previous holder that stepped down early
//!   (switchover, shutdown) may still have open at Telegram, plus a margin; then it raises the
//!   fence to its token, so from then on every write of an older term is refused;
//! - the offset (next `update_id`) moves only in a fenced transaction together with the
//!   replies it produced, so an update is answered in exactly one committed transaction: a
//!   holder that dies before committing leaves the update to its successor (no loss), one
//!   that committed leaves nothing to repeat;
//! - an operating command (`/switchover`, `/pause`, `/resume`) is claimed (offset moved past
//!   it, an `inflight` marker written) before it runs, so a failover never runs it twice; a
//!   successor that finds the marker tells the chat the outcome is unknown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use quorate_coord_api::TxnOp;
use quorate_failover::shell::PrimaryContext;
use quorate_startup::NodeContext;
use quorate_startup::admin::{Admin, Permission, Principal};
use quorate_types::{FencingToken, RoleName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertMapper, Limits, Throttle, compose};
use crate::api::{BotApi, CallError, Incoming};
use crate::commands;
use crate::error::TelegramError;
use crate::store::{
    Button, EntryKind, Inflight, OffsetRecord, OutboxEntry, Store, Takeover, encode, put,
};

/// Counters of one node's ingress (see [`crate::TelegramPlugin::stats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) terms: AtomicU64,
    pub(crate) polls: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) poll_errors: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) retry_after: AtomicU64,
    pub(crate) fenced: AtomicU64,
    pub(crate) posts: AtomicU64,
    pub(crate) refused_posts: AtomicU64,
}

/// What the terms share.
pub(crate) struct Shared {
    pub(crate) node: NodeContext,
    pub(crate) admin: Admin,
    pub(crate) api: BotApi,
    pub(crate) store: Store,
    pub(crate) role: RoleName,
    pub(crate) admins: BTreeSet<i64>,
    pub(crate) poll_timeout: Duration,
    pub(crate) short_poll_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) handoff_margin: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) batch_max: u8,
    pub(crate) outbox_max: u32,
    pub(crate) limits: Limits,
    pub(crate) counters: Arc<Counters>,
    pub(crate) mapper: std::sync::Mutex<AlertMapper>,
    pub(crate) alerts: bool,
    /// Operations one fenced transaction may carry (the store's `txn_ops_max` less the
    /// fence compare and the offset put).
    pub(crate) txn_ops: usize,
    /// Webhook mode (`None`: long polling).
    pub(crate) webhook: Option<crate::webhook::Webhook>,
}

/// Time a poll leaves between its end and the lease window's close (network latency to
/// Telegram and back, and our own scheduling).
const POLL_MARGIN: Duration = Duration::from_millis(100);

/// Retries of a store call inside a term, and the pause between them.
const STORE_RETRY: Duration = Duration::from_millis(100);

/// The longest a command may take (an operation waits for the failover manager's answer).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

async fn answer(shared: &Shared, chat: i64, cmd: commands::Command) -> String {
    let who = Shared::principal(chat);
    let run = commands::run(&shared.node, &shared.admin, &who, cmd);
    match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
        Ok(a) => a,
        Err(_) => format!(
            "❌ no answer within {COMMAND_TIMEOUT:?}: the node is busy or cannot reach the cluster; check /roles before repeating an operation"
        ),
    }
}

impl Shared {
    /// The longest a previous holder's poll may stay open at Telegram after it stepped down:
    /// its wait is at most `poll_timeout` and less than a lease, in whole seconds.
    pub(crate) fn handoff_guard(&self) -> Duration {
        if self.webhook.is_some() {
            // No poll to outlast: a request a previous holder still answers is fenced.
            return self.handoff_margin;
        }
        let secs = self.poll_timeout.min(self.lease_ttl).as_secs();
        Duration::from_secs(secs) + self.handoff_margin
    }

    fn principal(chat: i64) -> Principal {
        Principal::new(format!("telegram:chat {chat}"), Permission::Operate)
    }
}

/// Runs terms while `cancel` is not cancelled: waits to be primary of the role, runs the
/// term, and waits for the next one.
pub(crate) async fn supervise(shared: Arc<Shared>, cancel: CancellationToken) {
    let Ok(mut rx) = shared.node.failover.primary(&shared.role) else {
        tracing::error!(role = %shared.role, "telegram: the ingress role is not managed by this node");
        return;
    };
    // A token found stale by the fence is not run again; a term resumed with the same token
    // (the manager kept the lease through a store election) is a new context and runs.
    let mut stale: Option<FencingToken> = None;
    loop {
        let ctx = loop {
            let current = rx.borrow_and_update().clone();
            if let Some(c) = current
                && c.is_valid()
                && Some(c.token()) != stale
            {
                break c;
            }
            // The lease window also reopens without a change of context (a late renew).
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        };
        shared.counters.terms.fetch_add(1, Ordering::Relaxed);
        let stop = cancel.child_token();
        let end = tokio::select! {
            end = run_term(&shared, &ctx, stop) => end,
            () = cancel.cancelled() => return,
        };
        if end == TermEnd::Stale {
            stale = Some(ctx.token());
        }
        tracing::info!(role = %shared.role, token = ctx.token().0, ?end, "telegram: ingress term over");
    }
}

/// Why a term's work ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TermEnd {
    /// The term ended, or the plugin stops.
    Over,
    /// A higher token holds the fence.
    Stale,
}

pub(crate) async fn sleep_or(stop: &CancellationToken, ctx: &PrimaryContext, d: Duration) -> bool {
    tokio::select! {
        biased;
        () = stop.cancelled() => false,
        () = ctx.demoted() => false,
        () = tokio::time::sleep(d) => true,
    }
}

async fn run_term(shared: &Shared, ctx: &PrimaryContext, stop: CancellationToken) -> TermEnd {
    let token = ctx.token();
    tracing::info!(role = %shared.role, token = token.0, "telegram: ingress term starts");
    // A previous holder that stepped down early may still have a poll open at Telegram.
    if !sleep_or(&stop, ctx, shared.handoff_guard()).await {
        return TermEnd::Over;
    }
    loop {
        if !ctx.is_valid() {
            return TermEnd::Over;
        }
        match shared.store.takeover(token).await {
            Ok(Takeover::Taken) => break,
            Ok(Takeover::Stale(t)) => {
                tracing::warn!(
                    token = token.0,
                    fence = t,
                    "telegram: a higher token took the ingress over; this term stands down"
                );
                shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
                return TermEnd::Stale;
            }
            Err(e) => {
                tracing::warn!("telegram: takeover: {e}");
                if !sleep_or(&stop, ctx, STORE_RETRY).await {
                    return TermEnd::Over;
                }
            }
        }
    }
    if let Err(e) = recover_inflight(shared, token).await {
        tracing::warn!("telegram: recovering claimed commands: {e}");
    }
    // Both loops watch the term themselves: the poll is dropped at once (its wait at
    // Telegram ends within the successor's hand-off guard); a send under way completes
    // (bounded by the lease window) and is acknowledged.
    let local = stop.child_token();
    let (polled, sent) = tokio::join!(
        async {
            let end = match &shared.webhook {
                Some(hook) => {
                    crate::webhook::run(shared, hook, ctx, &local).await;
                    TermEnd::Over
                }
                None => poll_loop(shared, ctx, &local).await,
            };
            local.cancel();
            end
        },
        async {
            let end = send_loop(shared, ctx, &local).await;
            local.cancel();
            end
        }
    );
    if polled == TermEnd::Stale || sent == TermEnd::Stale {
        TermEnd::Stale
    } else {
        TermEnd::Over
    }
}

async fn recover_inflight(shared: &Shared, token: FencingToken) -> Result<(), TelegramError> {
    for (key, i) in shared.store.inflight().await? {
        let reply = OutboxEntry {
            kind: EntryKind::Reply,
            chats: vec![i.chat],
            text: format!(
                "⚠️ the bot failed over while running {:?}: its outcome is unknown. Check /roles and /history before repeating it.",
                i.command
            ),
            group: String::new(),
            count: 1,
            sending: Vec::new(),
            buttons: Vec::new(),
        };
        let id = key.rsplit('/').next().unwrap_or("x").to_owned();
        shared
            .store
            .commit(
                token,
                vec![
                    put(
                        &shared.store.outbox_key(&format!("r-{id}-unknown")),
                        encode(&reply),
                    ),
                    TxnOp::Delete { key },
                ],
            )
            .await?;
    }
    Ok(())
}

fn reply(chat: i64, text: String) -> OutboxEntry {
    OutboxEntry {
        kind: EntryKind::Reply,
        chats: vec![chat],
        text,
        group: String::new(),
        count: 1,
        sending: Vec::new(),
        buttons: Vec::new(),
    }
}

async fn poll_loop(shared: &Shared, ctx: &PrimaryContext, stop: &CancellationToken) -> TermEnd {
    let token = ctx.token();
    let mut rec = loop {
        match shared.store.offset().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("telegram: reading the offset: {e}");
                if !sleep_or(stop, ctx, STORE_RETRY).await {
                    return TermEnd::Over;
                }
            }
        }
    };
    loop {
        if stop.is_cancelled() || ctx.cancellation().is_cancelled() {
            return TermEnd::Over;
        }
        if !ctx.is_valid() {
            // The lease window closed with a renew still out: act no more until it is back
            // (or the term ends).
            if !sleep_or(stop, ctx, Duration::from_millis(10)).await {
                return TermEnd::Over;
            }
            continue;
        }
        let left = ctx.valid_until().saturating_sub(ctx.now());
        let budget = left.saturating_sub(POLL_MARGIN);
        if budget.is_zero() {
            // A renew is due; wait for it (or for the term to end).
            if !sleep_or(stop, ctx, Duration::from_millis(10)).await {
                return TermEnd::Over;
            }
            continue;
        }
        let wait = shared.poll_timeout.min(budget.saturating_sub(POLL_MARGIN));
        let wait_s = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
        let bound = (Duration::from_secs(u64::from(wait_s)) + shared.request_timeout).min(budget);
        shared.counters.polls.fetch_add(1, Ordering::Relaxed);
        let r = tokio::select! {
            biased;
            () = stop.cancelled() => return TermEnd::Over,
            () = ctx.demoted() => return TermEnd::Over,
            r = shared.api.get_updates(rec.next, wait_s, shared.batch_max, bound) => r,
        };
        match r {
            Ok(updates) => {
                if !ctx.is_valid() {
                    // Not processed: asked for again from the stored offset.
                    continue;
                }
                let empty = updates.is_empty();
                match process(shared, token, &mut rec, updates).await {
                    Ok(()) => {}
                    Err(TelegramError::Fenced { .. }) => {
                        shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
                        return TermEnd::Stale;
                    }
                    Err(e) => {
                        // Not committed (or not known to be): ask again from the stored offset.
                        tracing::warn!("telegram: committing a batch: {e}");
                        loop {
                            match shared.store.offset().await {
                                Ok(r) => {
                                    rec = r;
                                    break;
                                }
                                Err(_) => {
                                    if !sleep_or(stop, ctx, STORE_RETRY).await {
                                        return TermEnd::Over;
                                    }
                                }
                            }
                        }
                    }
                }
                if empty && wait_s == 0 && !sleep_or(stop, ctx, shared.short_poll_interval).await {
                    return TermEnd::Over;
                }
            }
            Err(CallError::Conflict(d)) => {
                let n = shared.counters.conflicts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    conflicts = n,
                    "telegram: getUpdates got 409 ({d}): another process polls this bot's token"
                );
                if shared.alerts {
                    let draft = shared
                        .mapper
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .conflict(&d, n, quorate_startup::report::unix_ms_now());
                    let _ = shared.store.put_if_absent(&draft.id, &draft.entry).await;
                }
                if !sleep_or(stop, ctx, shared.short_poll_interval).await {
                    return TermEnd::Over;
                }
            }
            Err(CallError::RetryAfter(d)) => {
                shared.counters.retry_after.fetch_add(1, Ordering::Relaxed);
                if !sleep_or(stop, ctx, d.min(Duration::from_secs(600))).await {
                    return TermEnd::Over;
                }
            }
            Err(e) => {
                shared.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("telegram: getUpdates: {e}");
                if !sleep_or(stop, ctx, shared.short_poll_interval).await {
                    return TermEnd::Over;
                }
            }
        }
    }
}

/// Answers a batch and commits it: replies and the new offset in one fenced transaction;
/// each operating command claimed in its own transaction before it runs.
pub(crate) async fn process(
    shared: &Shared,
    token: FencingToken,
    rec: &mut OffsetRecord,
    updates: Vec<Incoming>,
) -> Result<(), TelegramError> {
    let mut ops: Vec<TxnOp> = Vec::new();
    let mut next = *rec;
    let offset_op = |r: &OffsetRecord| put(&shared.store.offset_key(), encode(r));
    // Button presses to answer once their outcome is committed (the answer only ends the
    // spinner in the operator's app; the outcome comes as a message).
    let mut presses: Vec<(String, String)> = Vec::new();
    for u in updates {
        if u.id < next.next {
            continue;
        }
        if let Some(id) = &u.callback {
            let notice = match (u.chat, &u.text) {
                (Some(chat), Some(t)) if shared.admins.contains(&chat) => {
                    format!("running {t}; the outcome follows in the chat")
                }
                _ => "this chat may not operate the bot; nothing changed".to_owned(),
            };
            presses.push((id.clone(), notice));
        }
        let after = OffsetRecord {
            next: u.id + 1,
            processed: next.processed + 1,
        };
        if ops.len() + 3 > shared.txn_ops {
            // A transaction has a size limit: commit what is done so far.
            ops.push(offset_op(&next));
            shared.store.commit(token, std::mem::take(&mut ops)).await?;
            *rec = next;
        }
        let out_key = shared.store.outbox_key(&format!("r-{:012}", u.id));
        match (u.chat, u.text) {
            (Some(chat), _) if !shared.admins.contains(&chat) => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                ops.push(put(&out_key, encode(&reply(chat, refusal(chat)))));
            }
            (Some(chat), Some(text)) => match commands::parse(&text) {
                Ok(cmd) if cmd.operates() => {
                    // Claim: everything before it, the offset past it and the marker.
                    let marker = shared.store.inflight_key(u.id);
                    ops.push(offset_op(&after));
                    ops.push(put(
                        &marker,
                        encode(&Inflight {
                            chat,
                            command: text.clone(),
                        }),
                    ));
                    shared.store.commit(token, std::mem::take(&mut ops)).await?;
                    *rec = after;
                    let text = answer(shared, chat, cmd).await;
                    shared
                        .store
                        .commit(
                            token,
                            vec![
                                put(&out_key, encode(&reply(chat, text))),
                                TxnOp::Delete { key: marker },
                            ],
                        )
                        .await?;
                }
                Ok(cmd) => {
                    let text = answer(shared, chat, cmd).await;
                    ops.push(put(&out_key, encode(&reply(chat, text))));
                }
                Err(help) => ops.push(put(&out_key, encode(&reply(chat, help)))),
            },
            // Photos, stickers, other update kinds: consumed without an answer.
            _ => {}
        }
        next = after;
        shared.counters.processed.fetch_add(1, Ordering::Relaxed);
    }
    if next != *rec {
        ops.push(offset_op(&next));
        shared.store.commit(token, ops).await?;
        *rec = next;
    }
    for (id, notice) in presses {
        if let Err(e) = shared
            .api
            .answer_callback(&id, &notice, shared.request_timeout)
            .await
        {
            // Harmless: the button's spinner stops by itself after a while.
            tracing::debug!("telegram: answerCallbackQuery: {e}");
        }
    }
    Ok(())
}

/// The answer to a chat that is not an admin chat: polite, and nothing else happens.
pub(crate) fn refusal(chat: i64) -> String {
    format!(
        "Sorry, this bot only takes commands from its operators' chats, and it changed nothing. (This chat's id is {chat}; an operator can add it to [telegram] admin_chats.)"
    )
}

/// Messages sent per round at most (one per chat; concurrently).
const ROUND_MAX: usize = 32;

async fn send_loop(shared: &Shared, ctx: &PrimaryContext, stop: &CancellationToken) -> TermEnd {
    let token = ctx.token();
    let start = Instant::now();
    let mut throttle = Throttle::new(shared.limits);
    let mut changes = shared
        .node
        .coord
        .watch(&shared.store.outbox_prefix(), None)
        .await
        .ok();
    loop {
        if stop.is_cancelled() || ctx.cancellation().is_cancelled() {
            return TermEnd::Over;
        }
        if !ctx.is_valid() {
            // The lease window closed with a renew still out: act no more until it is back
            // (or the term ends).
            if !sleep_or(stop, ctx, Duration::from_millis(10)).await {
                return TermEnd::Over;
            }
            continue;
        }
        let pending = match shared.store.outbox(shared.outbox_max).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("telegram: reading the outbox: {e}");
                if !sleep_or(stop, ctx, STORE_RETRY).await {
                    return TermEnd::Over;
                }
                continue;
            }
        };
        // This round: every chat that may be sent to now (one message each), oldest first.
        let now = start.elapsed();
        let mut chats: Vec<i64> = Vec::new();
        for s in &pending {
            for c in &s.entry.chats {
                if !chats.contains(c) {
                    chats.push(*c);
                }
            }
        }
        let mut round: Vec<(i64, String, Vec<String>)> = Vec::new();
        let mut soonest: Option<Duration> = None;
        let mut planned = throttle.clone();
        for chat in chats {
            if round.len() >= ROUND_MAX {
                break;
            }
            let at = planned.ready_at(chat, now);
            if at > now {
                soonest = Some(soonest.map_or(at, |s| s.min(at)));
                continue;
            }
            let touched = round
                .iter()
                .flat_map(|(_, _, k)| k)
                .collect::<BTreeSet<_>>()
                .len();
            let room = shared.txn_ops.saturating_sub(touched);
            if room == 0 {
                break;
            }
            if let Some((text, keys)) = compose(chat, &pending, room) {
                planned.sent(chat, now);
                round.push((chat, text, keys));
            }
        }
        if round.is_empty() {
            // Until a chat may be sent to, or the outbox changes.
            let wait = soonest.map_or(Duration::from_secs(1), |s| s.saturating_sub(now));
            let changed = async {
                match changes.as_mut() {
                    Some(w) => {
                        if w.next().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return TermEnd::Over,
                () = ctx.demoted() => return TermEnd::Over,
                () = changed => {}
                () = tokio::time::sleep(wait.clamp(Duration::from_millis(1), Duration::from_secs(1))) => {}
            }
            continue;
        }
        // The intent: a successor finding it marks its resend as a possible repeat.
        let mut entries: std::collections::BTreeMap<String, OutboxEntry> = pending
            .iter()
            .filter(|s| round.iter().any(|(_, _, k)| k.contains(&s.key)))
            .map(|s| (s.key.clone(), s.entry.clone()))
            .collect();
        for (chat, _, keys) in &round {
            for k in keys {
                if let Some(e) = entries.get_mut(k)
                    && !e.sending.contains(chat)
                {
                    e.sending.push(*chat);
                }
            }
        }
        let intent = entries.iter().map(|(k, e)| put(k, encode(e))).collect();
        match shared.store.commit(token, intent).await {
            Ok(()) => {}
            Err(TelegramError::Fenced { .. }) => return TermEnd::Stale,
            Err(e) => {
                tracing::warn!("telegram: marking sends: {e}");
                continue;
            }
        }
        let left = ctx
            .valid_until()
            .saturating_sub(ctx.now())
            .saturating_sub(POLL_MARGIN);
        // A send must end before the lease window closes; too little left: the marks stay
        // (a resend says it may repeat) and the round is tried again.
        let bound = shared.request_timeout.min(left);
        if bound < Duration::from_millis(20) {
            continue;
        }
        let sent_at = start.elapsed();
        // A message with buttons is always sent alone (see `compose`).
        let buttons = |keys: &[String]| -> Vec<Button> {
            match keys {
                [k] => entries
                    .get(k)
                    .map(|e| e.buttons.clone())
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        let results = futures::future::join_all(round.iter().map(|(chat, text, keys)| {
            let buttons = buttons(keys);
            async move { shared.api.send(*chat, text, &buttons, bound).await }
        }))
        .await;
        for ((chat, _, keys), r) in round.iter().zip(results) {
            let chat = *chat;
            let (ack, keep_marker) = match &r {
                Ok(()) => {
                    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                    throttle.sent(chat, sent_at);
                    (true, false)
                }
                Err(CallError::RetryAfter(d)) => {
                    shared.counters.retry_after.fetch_add(1, Ordering::Relaxed);
                    throttle.retry_after(chat, start.elapsed(), *d);
                    (false, false)
                }
                Err(CallError::Permanent(d)) => {
                    shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        chat,
                        "telegram: Telegram refused a message for good, dropped for this chat: {d}"
                    );
                    (true, false)
                }
                Err(e) => {
                    // It may have arrived (a timeout): keep the mark, so the resend says so.
                    shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(chat, "telegram: sendMessage: {e}");
                    throttle.retry_after(chat, start.elapsed(), shared.short_poll_interval);
                    (false, matches!(e, CallError::Timeout))
                }
            };
            for k in keys {
                if let Some(e) = entries.get_mut(k) {
                    if ack {
                        e.chats.retain(|c| *c != chat);
                    }
                    if !keep_marker {
                        e.sending.retain(|c| *c != chat);
                    }
                }
            }
        }
        let done: Vec<TxnOp> = entries
            .into_iter()
            .map(|(k, e)| {
                if e.chats.is_empty() {
                    TxnOp::Delete { key: k }
                } else {
                    put(&k, encode(&e))
                }
            })
            .collect();
        // Recorded even when the term just ended (the fence still holds this token until a
        // successor takes over, which waits for the hand-off guard first).
        if let Err(e) = shared.store.commit(token, done).await {
            tracing::warn!("telegram: recording sends: {e}");
        }
    }
}
