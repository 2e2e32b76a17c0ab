//! The dashboard at `/`: one server-rendered page (maud) whose live part is re-rendered on the
//! server and pushed over server-sent events (`/events`, event `snapshot`) on every node event
//! and every second; the page swaps it in with a plain `EventSource`. No JavaScript build, no
//! client-side templating: the server escapes everything it renders.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::stream::Stream;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use tokio::sync::broadcast;

use crate::server::{AppState, cluster_body, error, role_body};

/// How often the live part is pushed without an event (lease countdowns).
const REFRESH: Duration = Duration::from_secs(1);
/// History entries shown.
const HISTORY_SHOWN: usize = 10;

const STYLE: &str = r#"
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #6e7781; }
body { font-family: system-ui, sans-serif; margin: 0; padding: 0.75rem; max-width: 70rem; margin-inline: auto; }
h1 { font-size: 1.25rem; margin: 0 0 0.5rem; }
h2 { font-size: 1.05rem; margin: 1rem 0 0.4rem; }
section { border: 1px solid #8884; border-radius: 8px; padding: 0.5rem 0.75rem; margin-bottom: 0.75rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; padding: 0.25rem 0.5rem; border-bottom: 1px solid #8883; white-space: nowrap; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
.warn { color: var(--warn); font-weight: 600; } .muted { color: var(--muted); }
.pill { display: inline-block; padding: 0 0.45rem; border-radius: 999px; border: 1px solid currentColor; font-size: 0.8rem; }
#conn { float: right; font-size: 0.8rem; }
pre { white-space: pre-wrap; font-size: 0.8rem; margin: 0.25rem 0; }
"#;

const SCRIPT: &str = r#"
const live = document.getElementById('live');
const conn = document.getElementById('conn');
const es = new EventSource('/events');
es.addEventListener('snapshot', (e) => { live.innerHTML = e.data; conn.textContent = 'live'; conn.className = 'ok'; });
es.onerror = () => { conn.textContent = 'reconnecting'; conn.className = 'warn'; };
"#;

fn class_for(word: &str) -> &'static str {
    match word {
        "alive" | "passing" | "healthy" | "primary" | "yes" | "enabled" => "ok",
        "suspect" | "warning" | "paused" | "unknown" => "warn",
        _ if word.starts_with("healthy") => "ok",
        _ => "bad",
    }
}

/// The live part of the page (also the payload of each `snapshot` event).
pub(crate) async fn live(s: &AppState) -> Markup {
    let c = cluster_body(s).await;
    let mut roles = Vec::new();
    for r in s.admin.roles() {
        roles.push(role_body(s, &r).await);
    }
    let mut history = Vec::new();
    for r in s.admin.roles() {
        history.extend(s.admin.history(r.as_str()).unwrap_or_default());
    }
    history.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
    history.truncate(HISTORY_SHOWN);
    let h = s.ctx.health.snapshot();
    let ms = |v: Option<u64>| v.map_or("–".to_owned(), |v| format!("{v} ms"));
    let quorum = if c.has_majority { "yes" } else { "no" };
    html! {
        section id="quorum" {
            h2 { "Cluster" }
            p {
                "Node " strong { (c.node) } " · quorum "
                span class=(class_for(quorum)) data-quorum=(quorum) { (quorum) }
                " (" (c.voters_reachable) "/" (c.voters) " voters) · split-brain "
                span class=(class_for(&c.split_brain)) { (c.split_brain) }
                @if let Some(co) = &c.coordination {
                    " · coordination leader "
                    strong { (co.leader.clone().unwrap_or_else(|| "none".into())) }
                    " (term " (co.term) ")"
                }
            }
            div class="scroll" { table {
                tr { th { "member" } th { "state" } th { "health" } th { "address" } th { "api" } }
                @for m in &c.members {
                    tr {
                        td { (m.id) }
                        td { span class=(class_for(&m.state)) { (m.state) } }
                        td { span class=(class_for(&m.health)) { (m.health) } }
                        td class="muted" { (m.address) }
                        td class="muted" { (m.api.clone().unwrap_or_default()) }
                    }
                }
            } }
        }
        section id="roles" {
            h2 { "Roles" }
            div class="scroll" { table {
                tr { th { "role" } th { "primary" } th { "token" } th { "lease left" } th { "automatic" } th { "here" } }
                @for r in &roles {
                    tr data-role=(r.role) data-holder=(r.holder.clone().unwrap_or_default()) {
                        td { strong { (r.role) } }
                        td { span class=(if r.holder.is_some() { "ok" } else { "bad" }) {
                            (r.holder.clone().unwrap_or_else(|| "none".into())) } }
                        td { (r.token.map_or("–".to_owned(), |t| t.to_string())) }
                        td { (ms(r.lease_remaining_ms)) " / " (r.lease_ttl_ms) " ms" }
                        td { span class=(class_for(r.automatic.as_deref().unwrap_or("unknown"))) {
                            (r.automatic.clone().unwrap_or_else(|| "unknown".into())) } }
                        td { (if r.acting_here { "primary" } else { "–" }) }
                    }
                }
            } }
            @for r in &roles {
                @if let Some(e) = &r.explain {
                    details { summary { "Candidates for " (r.role) } pre { (e) } }
                }
            }
        }
        section id="health" {
            h2 { "Health of " (c.node) " · " span class=(class_for(h.status.as_str())) { (h.status.as_str()) } }
            div class="scroll" { table {
                tr { th { "check" } th { "status" } th { "message" } }
                @for (id, chk) in &h.checks {
                    tr {
                        td { (id.to_string()) }
                        td { span class=(class_for(chk.status.as_str())) { (chk.status.as_str()) } }
                        td class="muted" { (chk.message) }
                    }
                }
                @if h.checks.is_empty() { tr { td colspan="3" class="muted" { "no checks configured" } } }
            } }
        }
        section id="history" {
            h2 { "Recent changes (as " (c.node) " recorded them)" }
            p class="muted" { "Durations are measured by the node that was promoted: open its dashboard for its own." }
            div class="scroll" { table {
                tr { th { "role" } th { "change" } th { "total" } th { "cause" } th { "token" } th { "detection" } th { "promotion" } }
                @for e in &history {
                    tr class="change" data-new=(e.new_primary.clone().unwrap_or_default()) {
                        td { (e.role) }
                        td { (e.old_primary.clone().unwrap_or_else(|| "none".into())) " → "
                             strong { (e.new_primary.clone().unwrap_or_else(|| "none".into())) } }
                        td { strong { (ms(e.total_ms)) } }
                        td { (e.cause) }
                        td { (e.token.map_or("–".to_owned(), |t| t.to_string())) }
                        td { (ms(e.detection_ms)) }
                        td { (ms(e.promotion_ms)) }
                    }
                }
                @if history.is_empty() { tr { td colspan="7" class="muted" { "no changes yet" } } }
            } }
        }
    }
}

/// `GET /`: the whole page, with the live part rendered in place.
pub(crate) async fn page(State(s): State<AppState>) -> Html<String> {
    let body = live(&s).await;
    let node = s.ctx.config.node_id.to_string();
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "quorate · " (node) }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    span id="conn" class="muted" { "connecting" }
                    h1 { "quorate · " (s.ctx.config.raw.cluster_name) }
                    div id="live" { (body) }
                    script { (PreEscaped(SCRIPT)) }
                }
            }
        }
        .into_string(),
    )
}

/// `GET /events`: the live part as `snapshot` events, bounded by `[api] sse_clients_max`.
pub(crate) async fn events(State(s): State<AppState>) -> Response {
    let Ok(permit) = std::sync::Arc::clone(&s.sse).try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{} dashboards are open, the most [api] sse_clients_max allows",
                s.settings.sse_clients_max
            ),
        );
    };
    let rx = s.ctx.events.subscribe();
    Sse::new(snapshots(s, rx, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn snapshots(
    s: AppState,
    rx: broadcast::Receiver<quorate_startup::NodeEvent>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (s, rx, permit, true);
    futures::stream::unfold(state, |(s, mut rx, permit, first)| async move {
        if !first {
            let mut tick = tokio::time::interval(REFRESH);
            tick.tick().await;
            tokio::select! {
                biased;
                () = s.cancel.cancelled() => return None,
                e = rx.recv() => {
                    if matches!(e, Err(broadcast::error::RecvError::Closed)) {
                        return None;
                    }
                    // Let the change settle into the components' views (a role change is
                    // reported before the status watch of every role has stepped).
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tick.tick() => {}
            }
        }
        let html = live(&s).await.into_string();
        let event = Event::default().event("snapshot").data(html);
        Some((Ok(event), (s, rx, permit, false)))
    })
}
