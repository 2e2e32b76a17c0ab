//! Webhook mode: every node serves `webhook_listen`; the ingress role's holder points the
//! bot's webhook at its own `webhook_url` (`setWebhook`, one connection at a time, so updates
//! come in order) and answers what Telegram posts there.
//!
//! Safety of the hand-off, on top of the ingress module's fence and offset:
//! - an update is acknowledged (200) only after its fenced transaction committed; anything
//!   else (not the holder, lease window closed, fenced, store unreachable) gets 503, and
//!   Telegram delivers it again, to whichever URL the webhook then names;
//! - an update below the stored offset was already processed: acknowledged, not run again;
//! - requests are processed one at a time per node (the slot's lock), and a holder's slot is
//!   emptied when its term ends, so a deposed holder answers 503 from then on;
//! - a request without the configured secret in `X-Telegram-Bot-Api-Secret-Token` gets 401
//!   and changes nothing; a body that is not an update gets 400.
//!
//! Nobody calls `deleteWebhook`: the next holder's `setWebhook` replaces the URL, and a
//! webhook left pointing at a node that is gone only delays delivery until the next holder
//! sets its own (Telegram keeps the updates meanwhile).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use quorate_failover::shell::PrimaryContext;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::error::TelegramError;
use crate::ingress::{Shared, process};
use crate::store::OffsetRecord;

/// The header Telegram sends the secret in.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The largest update body accepted.
const BODY_BYTES_MAX: usize = 1 << 20;

/// This node's webhook: the secret, its URL, and the term that may answer now.
pub(crate) struct Webhook {
    pub(crate) url: String,
    secret: String,
    slot: tokio::sync::Mutex<Option<Active>>,
}

/// The holder's running term.
struct Active {
    ctx: PrimaryContext,
    rec: OffsetRecord,
}

impl Webhook {
    pub(crate) fn new(url: String, secret: String) -> Webhook {
        Webhook {
            url,
            secret,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// From now on, updates are answered under `ctx` from offset `rec`.
    pub(crate) async fn open(&self, ctx: PrimaryContext, rec: OffsetRecord) {
        *self.slot.lock().await = Some(Active { ctx, rec });
    }

    /// No more updates are answered here (waits for one under way).
    pub(crate) async fn close(&self) {
        *self.slot.lock().await = None;
    }
}

/// Serves the webhook on `listener` until `cancel` fires.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let app = axum::Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await;
    if let Err(e) = r {
        tracing::error!("telegram: the webhook server stopped: {e}");
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response {
    let mut r = (status, text).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    r
}

/// Constant-time equality (the secret must not leak through response timing).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hook) = shared.webhook.as_ref() else {
        return answer(StatusCode::NOT_FOUND, "no webhook here");
    };
    if method != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "POST updates here");
    }
    let secret = headers
        .get(SECRET_HEADER)
        .map(axum::http::HeaderValue::as_bytes);
    if !secret.is_some_and(|s| same(s, hook.secret.as_bytes())) {
        shared
            .counters
            .refused_posts
            .fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::UNAUTHORIZED, "wrong or missing secret token");
    }
    let Some(update) = api::parse_update(&body) else {
        shared
            .counters
            .refused_posts
            .fetch_add(1, Ordering::Relaxed);
        return answer(StatusCode::BAD_REQUEST, "not a Telegram update");
    };
    shared.counters.posts.fetch_add(1, Ordering::Relaxed);
    let mut slot = hook.slot.lock().await;
    let Some(active) = slot.as_mut() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "not the ingress holder");
    };
    if !active.ctx.is_valid() {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ingress lease is renewing",
        );
    }
    let token = active.ctx.token();
    match process(&shared, token, &mut active.rec, vec![update]).await {
        Ok(()) => answer(StatusCode::OK, "ok"),
        Err(TelegramError::Fenced { .. }) => {
            shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
            *slot = None;
            answer(StatusCode::SERVICE_UNAVAILABLE, "a newer holder took over")
        }
        Err(e) => {
            tracing::warn!("telegram: committing a webhook update: {e}");
            // Not committed, or not known to be: re-read the offset before the next one.
            if let Ok(Ok(r)) =
                tokio::time::timeout(shared.request_timeout, shared.store.offset()).await
            {
                active.rec = r;
            }
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "not committed; send it again",
            )
        }
    }
}

/// The webhook part of a term: point the webhook here (retrying while the term lasts), then
/// answer updates until the term ends. Returns false if the term ended first.
pub(crate) async fn run(
    shared: &Shared,
    hook: &Webhook,
    ctx: &PrimaryContext,
    stop: &CancellationToken,
) -> bool {
    let rec = loop {
        match shared.store.offset().await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("telegram: reading the offset: {e}");
                if !crate::ingress::sleep_or(stop, ctx, Duration::from_millis(100)).await {
                    return false;
                }
            }
        }
    };
    loop {
        if stop.is_cancelled() || ctx.cancellation().is_cancelled() {
            return false;
        }
        match shared
            .api
            .set_webhook(&hook.url, hook.secret(), shared.request_timeout)
            .await
        {
            Ok(()) => break,
            Err(api::CallError::RetryAfter(d)) => {
                shared.counters.retry_after.fetch_add(1, Ordering::Relaxed);
                if !crate::ingress::sleep_or(stop, ctx, d.min(Duration::from_secs(60))).await {
                    return false;
                }
            }
            Err(e) => {
                shared.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("telegram: setWebhook: {e}");
                if !crate::ingress::sleep_or(stop, ctx, shared.short_poll_interval).await {
                    return false;
                }
            }
        }
    }
    tracing::info!(url = %hook.url, "telegram: the webhook points at this node");
    hook.open(ctx.clone(), rec).await;
    tokio::select! {
        () = stop.cancelled() => {}
        () = ctx.demoted() => {}
    }
    hook.close().await;
    true
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
